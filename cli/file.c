/* libsbx's file transfers in a session: uploads and downloads in zstd chunks with a size and
 * SHA-256 check, and directory listings. A download never leaves a partial local file, and never
 * lets the daemon make it hold more than the file cap. */
#include "libsbx_int.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <zstd.h>

#define ZSTD_LEVEL 3 /* fast; the socket is local, so more effort would cost more than it saves */

/* Report an error that was kept aside while the transfer was brought to its end. */
static int give(sbx_err *err, const sbx_err *kept)
{
    if (err)
        *err = *kept;
    return -1;
}

#define SHA256_LEN 32

static void md_freep(EVP_MD_CTX **m)
{
    EVP_MD_CTX_free(*m);
}
#define cleanup_md __attribute__((cleanup(md_freep)))
static void cctx_freep(ZSTD_CCtx **z)
{
    ZSTD_freeCCtx(*z);
}
#define cleanup_cctx __attribute__((cleanup(cctx_freep)))
static void dctx_freep(ZSTD_DCtx **z)
{
    ZSTD_freeDCtx(*z);
}
#define cleanup_dctx __attribute__((cleanup(dctx_freep)))

static EVP_MD_CTX *sha_new(void)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    if (m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(m);
        return NULL;
    }
    return m;
}

static int sha_final(EVP_MD_CTX *m, uint8_t out[SHA256_LEN])
{
    unsigned n = 0;
    return EVP_DigestFinal_ex(m, out, &n) == 1 && n == SHA256_LEN ? 0 : -1;
}

static int check_file_args(sbx_client *c, const char *session_id, const char *guest_path,
                           sbx_err *err)
{
    sbx_err why_err = {0};
    if (check_session_id(session_id, err) < 0)
        return -1;
    if (limits_check_guest_path(guest_path, &why_err) < 0)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    return client_ready(c, err);
}

/* A reply for request id (or for the whole connection) that has already arrived; *out stays
 * NULL when there is none yet. Lets an upload stop as soon as sbxd has refused it, instead of
 * sending up to 50 MiB into the void. Replies to older requests are dropped, as
 * client_recv_for does. */
static int early_reply(sbx_client *c, uint64_t id, Sbx__Control__Reply **out, sbx_err *err)
{
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (frame_reader_pending(&c->rd) == 0 && poll(&p, 1, 0) <= 0)
            return 0;
        if (client_recv(c, -1, out, err) < 0)
            return -1;
        if ((*out)->id == id || (*out)->id == 0)
            return 0;
        sbx__control__reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
}

/* Where the bytes of an upload come from: memory, or a file read a second time. */
struct upload_src {
    const uint8_t *mem; /* the bytes, or NULL to read fd */
    int fd;
    const char *name; /* the file, for messages */
};

static int src_read(struct upload_src *s, uint64_t off, uint8_t *buf, size_t n,
                    const uint8_t **data, sbx_err *err)
{
    if (s->mem) {
        *data = s->mem + off;
        return 0;
    }
    for (size_t got = 0; got < n;) {
        ssize_t r = read(s->fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sbx_fail(err, SBX_ERR_LOCAL_FILE, "read `%s`: %s", s->name, strerror(errno));
        if (r == 0)
            return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%s` got shorter while it was being sent",
                            s->name);
        got += (size_t)r;
    }
    *data = buf;
    return 0;
}

/* FileWrite then the chunks, back to back, then wait for FileDone. When the source fails
 * half-way the upload is ended early with a short last chunk: sbxd then refuses it on the size
 * (and writes nothing), which keeps the connection in step; the local error is what we report. */
static int upload(sbx_client *c, const char *session_id, const char *guest_path, uint64_t size,
                  const uint8_t sha[SHA256_LEN], struct upload_src *src, sbx_err *err)
{
    cleanup_cctx ZSTD_CCtx *z = ZSTD_createCCtx();
    cleanup_md EVP_MD_CTX *md = sha_new();
    size_t zcap = ZSTD_compressBound(SBX_FILE_CHUNK);
    cleanup_free uint8_t *zbuf = malloc(zcap);
    cleanup_free uint8_t *rbuf = src->mem ? NULL : malloc(SBX_FILE_CHUNK);
    if (!z || !md || !zbuf || (!src->mem && !rbuf))
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");

    Sbx__Control__FileWrite fw = SBX__CONTROL__FILE_WRITE__INIT;
    fw.session_id = (char *)session_id;
    fw.path = (char *)guest_path;
    fw.size = size;
    fw.sha256.data = (uint8_t *)sha;
    fw.sha256.len = SHA256_LEN;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_WRITE;
    rq.file_write = &fw;
    if (client_send(c, &rq, err) < 0) {
        return sbx_wrap(err, "upload");
    }

    sbx_err local = {0};
    bool local_failed = false;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    for (uint64_t off = 0;;) {
        size_t n = size - off > SBX_FILE_CHUNK ? SBX_FILE_CHUNK : (size_t)(size - off);
        const uint8_t *data = (const uint8_t *)"";
        if (src_read(src, off, rbuf, n, &data, &local) < 0) {
            local_failed = true;
            data = (const uint8_t *)"";
            n = 0;
        } else if (EVP_DigestUpdate(md, data, n) != 1) {
            local_failed = true;
            sbx_fail(&local, SBX_ERR_INTERNAL, "sha256 failed");
            n = 0;
        }
        size_t zn = ZSTD_compressCCtx(z, zbuf, zcap, data, n, ZSTD_LEVEL);
        if (ZSTD_isError(zn)) /* only for bad arguments; nothing to send that would be right */
            return sbx_fail(err, SBX_ERR_INTERNAL, "zstd: %s", ZSTD_getErrorName(zn));
        off += n;
        Sbx__Files__FileChunk ch = SBX__FILES__FILE_CHUNK__INIT;
        ch.zdata.data = zbuf;
        ch.zdata.len = zn;
        ch.last = local_failed || off == size;
        Sbx__Control__Request crq = SBX__CONTROL__REQUEST__INIT;
        crq.id = rq.id;
        crq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_CHUNK;
        crq.file_chunk = &ch;
        if (client_send(c, &crq, err) < 0) {
            return sbx_wrap(err, "upload");
        }
        if (ch.last)
            break;
        if (early_reply(c, rq.id, &r, err) < 0) {
            return sbx_wrap(err, "upload");
        }
        if (r)
            break;
    }
    if (!local_failed && !r) {
        uint8_t got[SHA256_LEN];
        if (sha_final(md, got) < 0) {
            local_failed = true;
            sbx_fail(&local, SBX_ERR_INTERNAL, "sha256 failed");
        } else if (memcmp(got, sha, SHA256_LEN)) {
            /* sbxd will find the same mismatch and refuse; say what really happened. */
            local_failed = true;
            sbx_fail(&local, SBX_ERR_LOCAL_FILE, "`%s` changed while it was being sent", src->name);
        }
    }
    if (!r && client_recv_for(c, rq.id, -1, &r, err) < 0) {
        return sbx_wrap(err, "upload");
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_FILE_DONE) {
        if (local_failed)
            return give(err, &local);
        const Sbx__Files__FileDone *d = r->file_done;
        if (d->size != size || d->sha256.len != SHA256_LEN || memcmp(d->sha256.data, sha, 32))
            return sbx_fail(err, SBX_ERR_PROTOCOL,
                            "upload: sbxd confirmed %llu bytes with a different sha256 than the "
                            "%llu bytes sent",
                            (unsigned long long)d->size, (unsigned long long)size);
        return 0;
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_ERROR) {
        if (local_failed)
            return give(err, &local);
        return reply_error(c, r->error, err);
    }
    return unexpected(c, r, "waiting for an upload to finish", err);
}

static int file_write(sbx_client *c, const char *session_id, const char *guest_path,
                      const void *data, size_t len, sbx_err *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (len > SBX_MAX_FILE)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%zu bytes is over the file limit of %u (50 MiB)",
                        len, SBX_MAX_FILE);
    if (!data && len)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "no data given");
    uint8_t sha[SHA256_LEN];
    unsigned n = 0;
    if (EVP_Digest(len ? data : "", len, sha, &n, EVP_sha256(), NULL) != 1)
        return sbx_fail(err, SBX_ERR_INTERNAL, "sha256 failed");
    struct upload_src src = {.mem = len ? data : (const uint8_t *)"", .fd = -1, .name = "data"};
    return upload(c, session_id, guest_path, len, sha, &src, err);
}

int sbx_file_write(sbx_client *c, const char *session_id, const char *guest_path, const void *data,
                   size_t len, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(file_write(c, session_id, guest_path, data, len, &e), &e, err);
}

static int file_write_path(sbx_client *c, const char *session_id, const char *guest_path,
                           const char *local_path, sbx_err *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (!local_path || !*local_path)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "no local file given");
    cleanup_close int fd = open(local_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "open `%s`: %s", local_path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "stat `%s`: %s", local_path, strerror(errno));
    /* It is read twice (hash, then send): that takes a file that stays put. */
    if (!S_ISREG(st.st_mode))
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%s` is not a regular file", local_path);
    if ((uint64_t)st.st_size > SBX_MAX_FILE)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "`%s` is %lld bytes; the file limit is %u (50 MiB)",
                        local_path, (long long)st.st_size, SBX_MAX_FILE);

    /* Pass one: size and sha256, which FileWrite announces before the first chunk. */
    cleanup_md EVP_MD_CTX *md = sha_new();
    cleanup_free uint8_t *buf = malloc(SBX_FILE_CHUNK);
    if (!md || !buf)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    uint64_t size = 0;
    for (;;) {
        ssize_t r = read(fd, buf, SBX_FILE_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sbx_fail(err, SBX_ERR_LOCAL_FILE, "read `%s`: %s", local_path, strerror(errno));
        if (r == 0)
            break;
        size += (uint64_t)r;
        if (size > SBX_MAX_FILE)
            return sbx_fail(err, SBX_ERR_VM_CONFIG,
                            "`%s` grew over the file limit of %u bytes (50 MiB)", local_path,
                            SBX_MAX_FILE);
        if (EVP_DigestUpdate(md, buf, (size_t)r) != 1)
            return sbx_fail(err, SBX_ERR_INTERNAL, "sha256 failed");
    }
    uint8_t sha[SHA256_LEN];
    if (sha_final(md, sha) < 0)
        return sbx_fail(err, SBX_ERR_INTERNAL, "sha256 failed");
    if (lseek(fd, 0, SEEK_SET) < 0)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "seek `%s`: %s", local_path, strerror(errno));
    struct upload_src src = {.fd = fd, .name = local_path};
    return upload(c, session_id, guest_path, size, sha, &src, err);
}

int sbx_file_write_path(sbx_client *c, const char *session_id, const char *guest_path,
                        const char *local_path, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(file_write_path(c, session_id, guest_path, local_path, &e), &e, err);
}

/* Where the bytes of a download go: a growing buffer, or a file. */
struct download_sink {
    uint8_t *buf; /* memory: owned until handed to the caller */
    size_t len, cap;
    int fd; /* file, when >= 0 */
    const char *name;
};

static int sink_put(struct download_sink *s, const uint8_t *d, size_t n, sbx_err *err)
{
    if (s->fd >= 0) {
        for (size_t done = 0; done < n;) {
            ssize_t w = write(s->fd, d + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return sbx_fail(err, SBX_ERR_LOCAL_FILE, "write `%s`: %s", s->name,
                                strerror(errno));
            done += (size_t)w;
        }
        return 0;
    }
    if (s->len + n + 1 > s->cap) { /* + 1: the NUL sbx_file_read adds */
        size_t ncap = s->cap ? s->cap : 65536;
        while (ncap < s->len + n + 1)
            ncap *= 2;
        if (ncap > SBX_MAX_FILE + 1u)
            ncap = SBX_MAX_FILE + 1u;
        uint8_t *nb = realloc(s->buf, ncap);
        if (!nb)
            return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory for the file");
        s->buf = nb;
        s->cap = ncap;
    }
    memcpy(s->buf + s->len, d, n);
    s->len += n;
    return 0;
}

/* The daemon broke the transfer's rules: nothing more on this connection can be trusted. */
__attribute__((format(printf, 3, 4))) static int bad_transfer(sbx_client *c, sbx_err *err,
                                                              const char *fmt, ...)
{
    c->broken = true;
    if (err) {
        char msg[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        sbx_fail(err, SBX_ERR_PROTOCOL, "download: %s", msg);
    }
    return -1;
}

/* FileRead, then chunks until FileDone. Each chunk is checked to be one zstd frame of at most
 * SBX_FILE_CHUNK bytes and decompressed into a buffer of that size, so a hostile daemon or
 * guest cannot make us allocate more than the 50 MiB cap in total. A sink that fails (disk
 * full) does not stop the reading: the rest is drained so the connection stays usable. */
static int download(sbx_client *c, const char *session_id, const char *guest_path,
                    struct download_sink *sink, sbx_err *err)
{
    cleanup_dctx ZSTD_DCtx *z = ZSTD_createDCtx();
    cleanup_md EVP_MD_CTX *md = sha_new();
    cleanup_free uint8_t *buf = malloc(SBX_FILE_CHUNK);
    if (!z || !md || !buf)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    Sbx__Control__FileRead fr = SBX__CONTROL__FILE_READ__INIT;
    fr.session_id = (char *)session_id;
    fr.path = (char *)guest_path;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_READ;
    rq.file_read = &fr;
    if (client_send(c, &rq, err) < 0) {
        return sbx_wrap(err, "download");
    }
    uint64_t total = 0;
    bool last_seen = false, sink_failed = false;
    sbx_err local = {0};
    for (;;) {
        cleanup_reply Sbx__Control__Reply *r = NULL;
        if (client_recv_for(c, rq.id, -1, &r, err) < 0) {
            return sbx_wrap(err, "download");
        }
        switch (r->body_case) {
        case SBX__CONTROL__REPLY__BODY_FILE_CHUNK: {
            const ProtobufCBinaryData *zd = &r->file_chunk->zdata;
            if (last_seen)
                return bad_transfer(c, err, "sbxd sent a chunk after the last one");
            size_t fsz = ZSTD_findFrameCompressedSize(zd->data, zd->len);
            if (ZSTD_isError(fsz) || fsz != zd->len)
                return bad_transfer(c, err, "a chunk from sbxd is not one zstd frame");
            unsigned long long cs = ZSTD_getFrameContentSize(zd->data, zd->len);
            if (cs != ZSTD_CONTENTSIZE_UNKNOWN && cs > SBX_FILE_CHUNK)
                return bad_transfer(c, err, "a chunk from sbxd holds %llu bytes (limit %u)", cs,
                                    SBX_FILE_CHUNK);
            size_t n = ZSTD_decompressDCtx(z, buf, SBX_FILE_CHUNK, zd->data, zd->len);
            if (ZSTD_isError(n))
                return bad_transfer(c, err, "a chunk from sbxd does not decompress: %s",
                                    ZSTD_getErrorName(n));
            if (total + n > SBX_MAX_FILE)
                return bad_transfer(c, err, "sbxd sent more than the file limit of %u bytes",
                                    SBX_MAX_FILE);
            total += n;
            if (EVP_DigestUpdate(md, buf, n) != 1)
                return sbx_fail(err, SBX_ERR_INTERNAL, "sha256 failed");
            if (!sink_failed && sink_put(sink, buf, n, &local) < 0)
                sink_failed = true;
            last_seen = r->file_chunk->last;
            break;
        }
        case SBX__CONTROL__REPLY__BODY_FILE_DONE: {
            if (sink_failed)
                return give(err, &local);
            const Sbx__Files__FileDone *d = r->file_done;
            uint8_t got[SHA256_LEN];
            if (sha_final(md, got) < 0)
                return sbx_fail(err, SBX_ERR_INTERNAL, "sha256 failed");
            if (d->size != total || d->sha256.len != SHA256_LEN ||
                memcmp(d->sha256.data, got, SHA256_LEN)) {
                char hg[2 * SHA256_LEN + 1];
                sbx_hex(got, SHA256_LEN, hg);
                return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT,
                                "download of `%s` is damaged: received %llu bytes with sha256 %s, "
                                "sbxd announced %llu bytes%s",
                                guest_path, (unsigned long long)total, hg,
                                (unsigned long long)d->size,
                                d->size == total ? " with another sha256" : "");
            }
            return 0;
        }
        case SBX__CONTROL__REPLY__BODY_ERROR:
            if (sink_failed)
                return give(err, &local);
            return reply_error(c, r->error, err);
        default:
            return unexpected(c, r, "waiting for a download", err);
        }
    }
}

static int file_read(sbx_client *c, const char *session_id, const char *guest_path, char **data,
                     size_t *len, sbx_err *err)
{
    *data = NULL;
    *len = 0;
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    struct download_sink s = {.fd = -1};
    if (download(c, session_id, guest_path, &s, err) < 0 ||
        (!s.buf && sink_put(&s, (const uint8_t *)"", 0, err) < 0)) {
        free(s.buf);
        return -1;
    }
    s.buf[s.len] = '\0';
    *data = (char *)s.buf;
    *len = s.len;
    return 0;
}

int sbx_file_read(sbx_client *c, const char *session_id, const char *guest_path, char **data,
                  size_t *len, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(file_read(c, session_id, guest_path, data, len, &e), &e, err);
}

/* The file a download is written to until it has checked out. Preferably an unnamed O_TMPFILE,
 * which the kernel removes by itself if we die half-way; else a hidden name beside the target. */
struct part_file {
    int fd;
    char path[PATH_MAX]; /* the named temporary file while it exists, else "" */
};

static void part_file_cleanup(struct part_file *p)
{
    if (p->fd >= 0)
        close(p->fd);
    if (p->path[0])
        unlink(p->path);
}
#define cleanup_part __attribute__((cleanup(part_file_cleanup)))

/* A fresh hidden name beside the target: DIR/.BASE.sbx-XXXXXXXX. */
static int part_name(char *out, size_t n, const char *dir, const char *base)
{
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != sizeof rnd)
        rnd = (uint32_t)now_ms() ^ ((uint32_t)getpid() << 16);
    int r = snprintf(out, n, "%s/.%.200s.sbx-%08x", dir, base, rnd);
    return r < 0 || (size_t)r >= n ? -1 : 0;
}

static int file_read_path(sbx_client *c, const char *session_id, const char *guest_path,
                          const char *local_path, sbx_err *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (!local_path || !*local_path)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "no local file given");
    struct stat st;
    if (stat(local_path, &st) == 0 && S_ISDIR(st.st_mode))
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%s` is a directory", local_path);
    char dir[PATH_MAX];
    const char *slash = strrchr(local_path, '/');
    const char *base = slash ? slash + 1 : local_path;
    if (!*base)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%s` names a directory", local_path);
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == local_path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - local_path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - local_path), local_path);
    else
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%.200s...`: path too long", local_path);

    cleanup_part struct part_file part = {.fd = -1};
    /* Giving the unnamed file a name later goes through /proc (linkat without privileges). */
    bool unnamed = access("/proc/self/fd", X_OK) == 0;
    if (unnamed) {
        part.fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
        if (part.fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
            return sbx_fail(err, SBX_ERR_LOCAL_FILE, "create a file in `%s`: %s", dir,
                            strerror(errno));
        unnamed = part.fd >= 0;
    }
    for (int tries = 0; part.fd < 0; tries++) {
        if (part_name(part.path, sizeof part.path, dir, base) < 0)
            return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%.200s...`: path too long", dir);
        part.fd = open(part.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (part.fd < 0) {
            int e = errno;
            part.path[0] = '\0';
            if (e != EEXIST || tries > 16)
                return sbx_fail(err, SBX_ERR_LOCAL_FILE, "create a file in `%s`: %s", dir,
                                strerror(e));
        }
    }

    struct download_sink s = {.fd = part.fd, .name = local_path};
    if (download(c, session_id, guest_path, &s, err) < 0)
        return -1;
    if (fsync(part.fd) < 0)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "write `%s`: %s", local_path, strerror(errno));
    if (unnamed) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", part.fd);
        for (int tries = 0;; tries++) {
            if (part_name(part.path, sizeof part.path, dir, base) < 0)
                return sbx_fail(err, SBX_ERR_LOCAL_FILE, "`%.200s...`: path too long", dir);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, part.path, AT_SYMLINK_FOLLOW) == 0)
                break;
            int e = errno;
            part.path[0] = '\0';
            if (e != EEXIST || tries > 16)
                return sbx_fail(err, SBX_ERR_LOCAL_FILE, "create a file in `%s`: %s", dir,
                                strerror(e));
        }
    }
    if (rename(part.path, local_path) < 0)
        return sbx_fail(err, SBX_ERR_LOCAL_FILE, "rename to `%s`: %s", local_path, strerror(errno));
    part.path[0] = '\0';
    return 0;
}

int sbx_file_read_path(sbx_client *c, const char *session_id, const char *guest_path,
                       const char *local_path, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(file_read_path(c, session_id, guest_path, local_path, &e), &e, err);
}

static int file_list(sbx_client *c, const char *session_id, const char *path, sbx_file_entry **out,
                     size_t *n, sbx_err *err)
{
    *out = NULL;
    *n = 0;
    if (!path)
        path = "";
    if (*path) {
        if (check_file_args(c, session_id, path, err) < 0)
            return -1;
    } else if (check_session_id(session_id, err) < 0) {
        return -1;
    }
    Sbx__Control__FileList fl = SBX__CONTROL__FILE_LIST__INIT;
    fl.session_id = (char *)session_id;
    fl.path = (char *)path;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_LIST;
    rq.file_list = &fl;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, -1, "list files", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_FILE_LISTING)
        return unexpected(c, r, "waiting for a file listing", err);
    const Sbx__Files__FileListing *ls = r->file_listing;
    if (ls->n_entries == 0)
        return 0;
    /* One allocation: the entries, then their names. Bounded by the reply's frame cap. */
    size_t bytes = ls->n_entries * sizeof(sbx_file_entry);
    for (size_t i = 0; i < ls->n_entries; i++)
        bytes += (ls->entries[i]->name ? strlen(ls->entries[i]->name) : 0) + 1;
    sbx_file_entry *e = malloc(bytes);
    if (!e)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    char *names = (char *)(e + ls->n_entries);
    for (size_t i = 0; i < ls->n_entries; i++) {
        const Sbx__Files__FileEntry *fe = ls->entries[i];
        size_t len = fe->name ? strlen(fe->name) : 0;
        memcpy(names, fe->name ? fe->name : "", len + 1);
        e[i].name = names;
        e[i].is_dir = fe->is_dir;
        e[i].size = fe->is_dir ? 0 : fe->size;
        names += len + 1;
    }
    *out = e;
    *n = ls->n_entries;
    return 0;
}

int sbx_file_list(sbx_client *c, const char *session_id, const char *path, sbx_file_entry **out,
                  size_t *n, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(file_list(c, session_id, path, out, n, &e), &e, err);
}

void sbx_file_list_free(sbx_file_entry *entries)
{
    free(entries);
}
