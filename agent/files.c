/* File transfer and listing, confined to the sandbox home (/home/user). It must never resolve a
 * path outside the home nor act on one with root's privileges.
 *
 * The home belongs to the code, which may have filled it with symlinks to anywhere, FIFOs, or
 * directories renamed under our feet. So every path is resolved by the kernel with openat2()
 * RESOLVE_BENEATH (plus no magic links, no other mounts) from a descriptor of the home, and
 * all filesystem work runs with the sandbox user's fsuid/fsgid: root's privileges never apply
 * to a path the code controls, and what gets created belongs to the user.
 *
 * One transfer at a time; a new FileWrite or FileRead abandons the one in progress (it answers
 * that one with a Failure). Transfers and listings may run while an exec runs: they touch
 * nothing of it. A FileRead is pumped from the main loop while the channel's queue is short, so
 * a 50 MiB file never sits in memory and the exec's output keeps flowing. */
#include "agent.h"
#include "sbx_limits.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <zstd.h>
#include <zstd_errors.h>

/* The low-level SHA-256 of libcrypto: the EVP interface would link all of OpenSSL's provider
 * machinery (4 MB, and dlopen) into the static agent for the same function. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define FILES_LIST_MAX 10000u
/* A listing must fit one frame the host accepts (FRAME_MAX_AGENT) with room to spare. */
#define FILES_LIST_BYTES (2u << 20)
/* A FileRead sends its next chunk only while less than this is queued for the host. */
#define FILES_READ_QUEUE (1u << 20)

static struct {
    enum { XFER_NONE, XFER_WRITE, XFER_READ } kind;
    uint64_t id;
    int dir; /* write: the target's folder */
    int fd;  /* write: the temporary file; read: the file */
    char name[SBX_MAX_PATH + 1], tmp[64];
    uint64_t size, done; /* write: announced size; both: bytes so far */
    uint64_t max;        /* read: the most bytes the host takes */
    uint8_t want[SHA256_DIGEST_LENGTH];
    SHA256_CTX sha;
    int carry; /* read: a byte read ahead to learn whether the chunk is the last, or -1 */
} x = {.dir = -1, .fd = -1, .carry = -1};

/* A FileWrite that failed (up front or midway): the rest of its chunks, which the host sends
 * regardless, are dropped quietly until the last one (one Failure per transfer is enough). */
static uint64_t refused_id;
static bool refused;

static int home_fd = -1;
static uint8_t plain[SBX_FILE_CHUNK];
static uint8_t packed[ZSTD_COMPRESSBOUND(SBX_FILE_CHUNK)];
static ZSTD_DCtx *dctx;
static ZSTD_CCtx *cctx;

/* ---- as the sandbox user ------------------------------------------------------------------- */

static int as_user(sbx_err *err)
{
    setfsgid(AGENT_GID);
    setfsuid(AGENT_UID);
    /* Both calls report the old value; asking with an invalid id reports the current one. */
    if (setfsuid((uid_t)-1) != AGENT_UID || setfsgid((gid_t)-1) != AGENT_GID)
        return sbx_fail(err, EPERM, "cannot take the sandbox user's file identity");
    return 0;
}

static void as_root(void)
{
    setfsuid(0);
    setfsgid(0);
}

static int open_home(sbx_err *err)
{
    if (home_fd < 0)
        home_fd = open(AGENT_HOME, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (home_fd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", AGENT_HOME, strerror(errno));
    return 0;
}

static int open_beneath(const char *path, uint64_t flags, uint64_t mode)
{
    struct open_how how = {
        .flags = flags | O_CLOEXEC,
        .mode = mode,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    return (int)syscall(SYS_openat2, home_fd, path, &how, sizeof how);
}

static int path_fail(sbx_err *err, const char *path, int e)
{
    if (e == EXDEV)
        return sbx_fail(err, e, "`%s` leads outside %s", path, AGENT_HOME);
    if (e == ELOOP)
        return sbx_fail(err, e, "`%s`: too many symlinks or a magic link", path);
    return sbx_fail(err, e, "`%s`: %s", path, strerror(e));
}

/* The shared check (relative, at most SBX_MAX_PATH bytes, no empty, `.` or `..` component);
 * a listing may also name the home itself with "". (A NUL cannot reach here: the dispatcher
 * refuses a message whose strings are cut short by one.) */
static int path_check(const char *path, bool may_be_empty, sbx_err *err)
{
    sbx_err why_err = {0};
    if (may_be_empty && !*path)
        return 0;
    if (limits_check_guest_path(path, &why_err) < 0)
        return sbx_fail(err, EINVAL, "%s", why_err.msg);
    return 0;
}

/* The folder that will hold `path`, created (as the user) where missing, and the last
 * component in *name. Each step is resolved from the home again, beneath it. */
static int open_parent(const char *path, char *name, sbx_err *err)
{
    char prefix[SBX_MAX_PATH + 1];
    const char *slash = strrchr(path, '/');
    snprintf(name, SBX_MAX_PATH + 1, "%s", slash ? slash + 1 : path);
    int dir = open_beneath(".", O_PATH | O_DIRECTORY, 0);
    if (dir < 0)
        return path_fail(err, ".", errno);
    if (!slash)
        return dir;
    size_t end = (size_t)(slash - path);
    for (size_t i = 0; i <= end;) {
        size_t n = strcspn(path + i, "/");
        memcpy(prefix, path, i + n);
        prefix[i + n] = '\0';
        int next = open_beneath(prefix, O_PATH | O_DIRECTORY, 0);
        if (next < 0 && errno == ENOENT) {
            char comp[SBX_MAX_PATH + 1];
            memcpy(comp, path + i, n);
            comp[n] = '\0';
            if (mkdirat(dir, comp, 0755) < 0 && errno != EEXIST) {
                int e = errno;
                close(dir);
                return path_fail(err, prefix, e);
            }
            next = open_beneath(prefix, O_PATH | O_DIRECTORY, 0);
        }
        int e = errno;
        close(dir);
        if (next < 0)
            return path_fail(err, prefix, e);
        dir = next;
        i += n + 1;
    }
    return dir;
}

/* ---- transfers ------------------------------------------------------------------------------ */

static void xfer_end(void)
{
    if (x.kind == XFER_WRITE && x.fd >= 0 && as_user(NULL) == 0) {
        if (unlinkat(x.dir, x.tmp, 0) < 0)
            agent_log("remove `%s`: %s", x.tmp, strerror(errno));
    }
    as_root();
    if (x.fd >= 0)
        close(x.fd);
    if (x.dir >= 0)
        close(x.dir);
    x.fd = x.dir = x.carry = -1;
    x.kind = XFER_NONE;
    OPENSSL_cleanse(&x.sha, sizeof x.sha);
}

static void xfer_fail(struct chan *c, uint64_t id, const char *what, const sbx_err *err)
{
    chan_failure(c, id, "%s: %s", what, err->msg);
    xfer_end();
}

void files_abort(void)
{
    if (x.kind != XFER_NONE)
        agent_log("file transfer %llu abandoned", (unsigned long long)x.id);
    xfer_end();
}

static void abandon_previous(struct chan *c)
{
    if (x.kind == XFER_NONE)
        return;
    chan_failure(c, x.id, "file %s of `%s` abandoned: a new transfer started",
                 x.kind == XFER_WRITE ? "write" : "read", x.name);
    xfer_end();
}

static void send_done(struct chan *c, uint64_t id, uint64_t size, const uint8_t *digest)
{
    Sbx__Files__FileDone d = SBX__FILES__FILE_DONE__INIT;
    d.size = size;
    d.sha256.data = (uint8_t *)digest;
    d.sha256.len = SHA256_DIGEST_LENGTH;
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_FILE_DONE;
    m.file_done = &d;
    chan_send(c, &m);
}

void files_write(struct chan *c, uint64_t id, const Sbx__Agent__FileWrite *w)
{
    abandon_previous(c);
    refused = false;
    sbx_err err = {0};
    if (path_check(w->path, false, &err) < 0)
        goto fail;
    if (w->size > SBX_MAX_FILE) {
        sbx_fail(&err, EFBIG, "`%s`: %llu bytes is over the limit of %u MiB", w->path,
                 (unsigned long long)w->size, SBX_MAX_FILE >> 20);
        goto fail;
    }
    if (w->sha256.len != SHA256_DIGEST_LENGTH) {
        sbx_fail(&err, EINVAL, "sha256 of %zu bytes (32 expected)", w->sha256.len);
        goto fail;
    }
    if (open_home(&err) < 0 || as_user(&err) < 0)
        goto fail;
    x.kind = XFER_WRITE;
    x.id = id;
    x.size = w->size;
    x.done = 0;
    memcpy(x.want, w->sha256.data, sizeof x.want);
    SHA256_Init(&x.sha);
    x.dir = open_parent(w->path, x.name, &err);
    if (x.dir < 0)
        goto fail;
    /* A temporary name beside the target: the rename at the end is atomic, and a failure
     * leaves no partial file under the real name. */
    for (unsigned i = 0; i < 100 && x.fd < 0; i++) {
        snprintf(x.tmp, sizeof x.tmp, ".sbx-upload-%llu-%u", (unsigned long long)id, i);
        x.fd = openat(x.dir, x.tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (x.fd < 0 && errno != EEXIST)
            break;
    }
    if (x.fd < 0) {
        path_fail(&err, w->path, errno);
        goto fail;
    }
    as_root();
    return;
fail:
    x.id = id;
    refused_id = id;
    refused = true;
    xfer_fail(c, id, "file write", &err);
}

static int write_all(int fd, const uint8_t *p, size_t n, sbx_err *err)
{
    if (sbx_write_all(fd, p, n) < 0)
        return sbx_fail(err, errno, "write: %s", strerror(errno));
    return 0;
}

/* One chunk: exactly one zstd frame of at most SBX_FILE_CHUNK bytes. */
static ssize_t unpack_chunk(const ProtobufCBinaryData *z, sbx_err *err)
{
    if (!dctx && !(dctx = ZSTD_createDCtx()))
        return sbx_fail(err, ENOMEM, "out of memory");
    size_t framed = ZSTD_findFrameCompressedSize(z->data, z->len);
    if (ZSTD_isError(framed) || framed != z->len)
        return sbx_fail(err, EINVAL, "chunk of %zu bytes is not one zstd frame", z->len);
    unsigned long long want = ZSTD_getFrameContentSize(z->data, z->len);
    if (want == ZSTD_CONTENTSIZE_ERROR ||
        (want != ZSTD_CONTENTSIZE_UNKNOWN && want > SBX_FILE_CHUNK))
        return sbx_fail(err, EINVAL, "chunk announces %llu bytes (the limit is %u)", want,
                        SBX_FILE_CHUNK);
    size_t n = ZSTD_decompressDCtx(dctx, plain, sizeof plain, z->data, z->len);
    if (ZSTD_isError(n))
        return sbx_fail(err, EINVAL, "zstd: %s%s", ZSTD_getErrorName(n),
                        ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? " (over 256 KiB)"
                                                                            : "");
    return (ssize_t)n;
}

void files_chunk(struct chan *c, uint64_t id, const Sbx__Files__FileChunk *k)
{
    if (x.kind != XFER_WRITE || x.id != id) {
        if (refused && refused_id == id)
            refused = !k->last;
        else
            chan_failure(c, id, "file chunk without a file write of that id in progress");
        return;
    }
    sbx_err err = {0};
    ssize_t n = unpack_chunk(&k->zdata, &err);
    if (n < 0)
        goto fail;
    if (x.done + (uint64_t)n > x.size) {
        sbx_fail(&err, EFBIG, "more than the %llu bytes announced", (unsigned long long)x.size);
        goto fail;
    }
    if (write_all(x.fd, plain, (size_t)n, &err) < 0)
        goto fail;
    SHA256_Update(&x.sha, plain, (size_t)n);
    x.done += (uint64_t)n;
    if (!k->last)
        return;
    if (x.done != x.size) {
        sbx_fail(&err, EINVAL, "%llu bytes received, %llu announced", (unsigned long long)x.done,
                 (unsigned long long)x.size);
        goto fail;
    }
    uint8_t got[SHA256_DIGEST_LENGTH];
    SHA256_Final(got, &x.sha);
    if (memcmp(got, x.want, sizeof got) != 0) {
        sbx_fail(&err, EINVAL, "sha256 does not match the content received");
        goto fail;
    }
    if (fchmod(x.fd, 0644) < 0) {
        sbx_fail(&err, errno, "chmod: %s", strerror(errno));
        goto fail;
    }
    if (as_user(&err) < 0)
        goto fail;
    if (renameat(x.dir, x.tmp, x.dir, x.name) < 0) {
        path_fail(&err, x.name, errno);
        goto fail;
    }
    as_root();
    close(x.fd);
    x.fd = -1; /* renamed: nothing to remove */
    send_done(c, id, x.done, got);
    xfer_end();
    return;
fail:
    refused_id = id;
    refused = !k->last;
    xfer_fail(c, id, "file write", &err);
}

void files_read(struct chan *c, uint64_t id, const Sbx__Agent__FileRead *r)
{
    abandon_previous(c);
    sbx_err err = {0};
    x.id = id;
    snprintf(x.name, sizeof x.name, "%s", r->path);
    if (path_check(r->path, false, &err) < 0 || open_home(&err) < 0 || as_user(&err) < 0)
        goto fail;
    /* Non-blocking: a FIFO planted under the name must not hang the agent in open(). */
    x.fd = open_beneath(r->path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0);
    if (x.fd < 0) {
        path_fail(&err, r->path, errno);
        goto fail;
    }
    as_root();
    struct stat st;
    if (fstat(x.fd, &st) < 0) {
        sbx_fail(&err, errno, "stat `%s`: %s", r->path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        sbx_fail(&err, EINVAL, "`%s` is not a regular file", r->path);
        goto fail;
    }
    /* Only sbxd asks for more than the usual limit (a package tree); clients cannot. */
    x.max = r->max_bytes ? (r->max_bytes < SBX_MAX_LAYER_TAR ? r->max_bytes : SBX_MAX_LAYER_TAR)
                         : SBX_MAX_FILE;
    if ((uint64_t)st.st_size > x.max) {
        sbx_fail(&err, EFBIG, "`%s` holds %llu bytes, over the limit of %llu MiB", r->path,
                 (unsigned long long)st.st_size, (unsigned long long)x.max >> 20);
        goto fail;
    }
    x.kind = XFER_READ;
    x.done = 0;
    x.carry = -1;
    SHA256_Init(&x.sha);
    return;
fail:
    xfer_fail(c, id, "file read", &err);
}

bool files_ready(const struct chan *c)
{
    return x.kind == XFER_READ && chan_queued(c) < FILES_READ_QUEUE;
}

static ssize_t read_some(int fd, uint8_t *p, size_t n)
{
    for (;;) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

/* The next chunk: fills `plain`, sets *last when the file ends with it. */
static ssize_t read_chunk(bool *last, sbx_err *err)
{
    size_t len = 0;
    if (x.carry >= 0) {
        plain[len++] = (uint8_t)x.carry;
        x.carry = -1;
    }
    *last = false;
    while (len < sizeof plain) {
        ssize_t r = read_some(x.fd, plain + len, sizeof plain - len);
        if (r < 0)
            return sbx_fail(err, errno, "read `%s`: %s", x.name, strerror(errno));
        if (r == 0) {
            *last = true;
            return (ssize_t)len;
        }
        len += (size_t)r;
    }
    uint8_t next;
    ssize_t r = read_some(x.fd, &next, 1);
    if (r < 0)
        return sbx_fail(err, errno, "read `%s`: %s", x.name, strerror(errno));
    if (r == 0)
        *last = true;
    else
        x.carry = next;
    return (ssize_t)len;
}

void files_pump(struct chan *c)
{
    /* A few chunks per turn of the loop, so the exec and the host channel are served between. */
    for (int turn = 0; turn < 4 && files_ready(c); turn++) {
        sbx_err err = {0};
        bool last;
        ssize_t n = read_chunk(&last, &err);
        if (n < 0)
            goto fail;
        if (x.done + (uint64_t)n > x.max) {
            sbx_fail(&err, EFBIG, "`%s` grew over the limit of %llu MiB while being read", x.name,
                     (unsigned long long)x.max >> 20);
            goto fail;
        }
        x.done += (uint64_t)n;
        SHA256_Update(&x.sha, plain, (size_t)n);
        if (!cctx && !(cctx = ZSTD_createCCtx())) {
            sbx_fail(&err, ENOMEM, "out of memory");
            goto fail;
        }
        /* Level 1: under TCG the guest CPU is the bottleneck, not the channel. */
        size_t z = ZSTD_compressCCtx(cctx, packed, sizeof packed, plain, (size_t)n, 1);
        if (ZSTD_isError(z)) {
            sbx_fail(&err, EIO, "zstd: %s", ZSTD_getErrorName(z));
            goto fail;
        }
        Sbx__Files__FileChunk k = SBX__FILES__FILE_CHUNK__INIT;
        k.zdata.data = packed;
        k.zdata.len = z;
        k.last = last;
        Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
        m.id = x.id;
        m.body_case = SBX__AGENT__GUEST_MSG__BODY_FILE_CHUNK;
        m.file_chunk = &k;
        chan_send(c, &m);
        if (last) {
            uint8_t digest[SHA256_DIGEST_LENGTH];
            SHA256_Final(digest, &x.sha);
            send_done(c, x.id, x.done, digest);
            xfer_end();
        }
        continue;
    fail:
        xfer_fail(c, x.id, "file read", &err);
        return;
    }
}

/* ---- listing -------------------------------------------------------------------------------- */

struct entry {
    char *name;
    bool is_dir;
    uint64_t size;
};

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

void files_list(struct chan *c, uint64_t id, const Sbx__Agent__FileList *l)
{
    sbx_err err = {0};
    struct entry *e = NULL;
    size_t n = 0, bytes = 0;
    DIR *d = NULL;
    if (path_check(l->path, true, &err) < 0 || open_home(&err) < 0 || as_user(&err) < 0)
        goto out;
    const char *path = *l->path ? l->path : ".";
    int fd = open_beneath(path, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) {
        path_fail(&err, path, errno);
        goto out;
    }
    if (!(d = fdopendir(fd))) {
        close(fd);
        sbx_fail(&err, errno, "read folder `%s`: %s", path, strerror(errno));
        goto out;
    }
    if (!(e = calloc(FILES_LIST_MAX, sizeof *e))) {
        sbx_fail(&err, ENOMEM, "out of memory");
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        size_t len = strlen(de->d_name);
        if (n == FILES_LIST_MAX || bytes + len + 32 > FILES_LIST_BYTES) {
            agent_log("listing of `%s` cut at %zu entries", path, n);
            break;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if (!(e[n].name = strdup(de->d_name))) {
            sbx_fail(&err, ENOMEM, "out of memory");
            goto out;
        }
        e[n].is_dir = S_ISDIR(st.st_mode);
        e[n].size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
        bytes += len + 32;
        n++;
    }
    as_root();
    qsort(e, n, sizeof *e, entry_cmp);
    Sbx__Files__FileEntry *fe = calloc(n ? n : 1, sizeof *fe);
    Sbx__Files__FileEntry **fp = calloc(n ? n : 1, sizeof *fp);
    if (!fe || !fp) {
        free(fe);
        free(fp);
        sbx_fail(&err, ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        sbx__files__file_entry__init(&fe[i]);
        fe[i].name = e[i].name;
        fe[i].is_dir = e[i].is_dir;
        fe[i].size = e[i].size;
        fp[i] = &fe[i];
    }
    Sbx__Files__FileListing ls = SBX__FILES__FILE_LISTING__INIT;
    ls.n_entries = n;
    ls.entries = fp;
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_LISTING;
    m.listing = &ls;
    chan_send(c, &m);
    free(fe);
    free(fp);
out:
    as_root();
    if (err.msg[0])
        chan_failure(c, id, "file list: %s", err.msg);
    if (d)
        closedir(d);
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}
