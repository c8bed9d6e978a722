/* The remote package-layer cache (L3). Objects are `{s3_prefix}l2/{key}.zst`: the layer's image,
 * zstd-compressed, with the image's sha256 and size in its metadata (`x-amz-meta-sha256`,
 * `x-amz-meta-size`) and, with cache_signing_key_file, an HMAC-SHA256 over (key, sha256, size)
 * in `x-amz-meta-signature`. HTTP and SigV4 request signing are libcurl's (CURLOPT_AWS_SIGV4,
 * path-style URLs, the payload's sha256 in x-amz-content-sha256); every transfer runs in a child
 * (child.c) so that the loop never waits on the network, with bounded connect and transfer
 * times. A download streams through zstd into the staging directory, and counts as a hit only
 * when its size, sha256 (and signature, when signing) match: the caller renames it into place
 * after that. An upload compresses into a temporary file first (S3 wants the length up front).
 * Failures (auth, 5xx, timeouts, truncation, a wrong hash) are logged once each with the
 * reason, counted, and shown by `sbx status`; credentials never reach a log line, the status or
 * an error. */
#include "remote.h"

#include <ctype.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "child.h"
#include "install.h"

#define REMOTE_CONNECT_S 10L
#define REMOTE_TRANSFER_S 900L
#define REMOTE_LOW_SPEED 1024L /* bytes/s, over REMOTE_LOW_SPEED_S: a stalled transfer ends */
#define REMOTE_LOW_SPEED_S 30L
#define REMOTE_CHILD_WALL_S 1200u
#define UPLOAD_LEVEL 3
/* An empty body's sha256: what a GET or HEAD signs as its payload. */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static struct {
    bool on;
    char endpoint[512]; /* no trailing slash */
    char sigv4[96];     /* aws:amz:REGION:s3 */
    char bucket[256];
    char prefix[256];
    char where[900]; /* for the log and status: s3://bucket/prefix at endpoint */
    char id[256], secret[256], token[4096];
    unsigned char sign_key[512];
    size_t sign_key_len;
} R;

static struct {
    uint64_t hits, misses, errors, uploads, upload_errors;
    bool reached;     /* the last transfer got an answer (any HTTP status) */
    bool answered_ok; /* ...and it was not an auth or server error */
    char last_error[300];
} S;

/* ---- settings and credentials -------------------------------------------------------------- */

static bool name_ok(const char *s, const char *extra, size_t max)
{
    size_t n = strlen(s);
    if (!n || n > max)
        return false;
    for (const char *c = s; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr(extra, *c))
            return false;
    return true;
}

/* One `key = value` of [section] in an AWS shared credentials file. */
static void ini_get(const char *path, const char *section, const char *key, char *out, size_t n)
{
    cleanup_fclose FILE *f = fopen(path, "re");
    if (f)
        setvbuf(f, NULL, _IONBF, 0); /* no copy of the secrets in a stdio buffer */
    char line[4608];
    bool in = false;
    while (f && fgets(line, sizeof line, f)) {
        char *s = line + strspn(line, " \t");
        s[strcspn(s, "\r\n")] = '\0';
        if (*s == '[') {
            char *e = strchr(s, ']');
            in = e && (size_t)(e - s - 1) == strlen(section) &&
                 !strncmp(s + 1, section, strlen(section));
            continue;
        }
        size_t kl = strlen(key);
        if (!in || strncmp(s, key, kl) || !strchr(" \t=", s[kl]))
            continue;
        char *v = strchr(s, '=');
        if (!v)
            continue;
        v += 1 + strspn(v + 1, " \t");
        size_t vl = strlen(v);
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            v[--vl] = '\0';
        snprintf(out, n, "%s", v);
    }
    explicit_bzero(line, sizeof line);
}

/* The environment's keys, else the shared credentials file's ($AWS_PROFILE or default). */
static void load_credentials(void)
{
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    if (id && *id && secret && *secret) {
        snprintf(R.id, sizeof R.id, "%s", id);
        snprintf(R.secret, sizeof R.secret, "%s", secret);
        const char *t = getenv("AWS_SESSION_TOKEN");
        snprintf(R.token, sizeof R.token, "%s", t ? t : "");
        /* Out of sbxd's environment: its children (and /proc/PID/environ) need not have them. */
        unsetenv("AWS_SECRET_ACCESS_KEY");
        unsetenv("AWS_SESSION_TOKEN");
        return;
    }
    char path[PATH_MAX];
    const char *file = getenv("AWS_SHARED_CREDENTIALS_FILE"), *home = getenv("HOME");
    if (file && *file)
        snprintf(path, sizeof path, "%s", file);
    else if (home && *home)
        snprintf(path, sizeof path, "%s/.aws/credentials", home);
    else
        return;
    const char *profile = getenv("AWS_PROFILE");
    if (!profile || !*profile)
        profile = "default";
    ini_get(path, profile, "aws_access_key_id", R.id, sizeof R.id);
    ini_get(path, profile, "aws_secret_access_key", R.secret, sizeof R.secret);
    ini_get(path, profile, "aws_session_token", R.token, sizeof R.token);
}

static int load_signing_key(sbx_err *err)
{
    if (!cfg.cache_signing_key_file[0])
        return 0;
    cleanup_close int fd = open(cfg.cache_signing_key_file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return sbx_fail(err, errno, "cache_signing_key_file `%s`: %s", cfg.cache_signing_key_file,
                        strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size < 16 || (size_t)st.st_size > sizeof R.sign_key)
        return sbx_fail(err, EINVAL, "cache_signing_key_file `%s`: 16-%zu bytes of key expected",
                        cfg.cache_signing_key_file, sizeof R.sign_key);
    if (st.st_mode & 077)
        return sbx_fail(err, EPERM,
                        "cache_signing_key_file `%s`: others may read it (chmod 600 it)",
                        cfg.cache_signing_key_file);
    ssize_t r = read(fd, R.sign_key, (size_t)st.st_size);
    if (r != st.st_size)
        return sbx_fail(err, EIO, "read `%s`", cfg.cache_signing_key_file);
    R.sign_key_len = (size_t)r;
    return 0;
}

bool remote_enabled(void)
{
    return R.on;
}

void remote_forget(void)
{
    explicit_bzero(&R, sizeof R);
}

/* Printable ASCII without spaces: nothing that could end a header line or hide in one. */
static bool token_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

void remote_init(void)
{
    if (!cfg.s3_bucket[0])
        return;
    sbx_err err = {0};
    if (!name_ok(cfg.s3_bucket, ".-_", 63) || !name_ok(cfg.s3_region, "-", 63) ||
        (cfg.s3_prefix[0] && !name_ok(cfg.s3_prefix, "-_./", 200)) || strstr(cfg.s3_prefix, "..")) {
        slog("warning: remote cache off: s3_bucket, s3_region or s3_prefix has characters S3 "
             "names do not (letters, digits and -_./ only)");
        return;
    }
    if (cfg.s3_endpoint_url[0]) {
        const char *e = cfg.s3_endpoint_url;
        if ((strncmp(e, "https://", 8) && strncmp(e, "http://", 7)) || !token_ok(e) ||
            strpbrk(e, "@?#")) {
            slog("warning: remote cache off: s3_endpoint_url is not an http(s) URL of a host "
                 "(no user, query or fragment)");
            return;
        }
        snprintf(R.endpoint, sizeof R.endpoint, "%s", cfg.s3_endpoint_url);
    } else {
        snprintf(R.endpoint, sizeof R.endpoint, "https://s3.%s.amazonaws.com", cfg.s3_region);
    }
    size_t el = strlen(R.endpoint);
    while (el && R.endpoint[el - 1] == '/')
        R.endpoint[--el] = '\0';
    snprintf(R.sigv4, sizeof R.sigv4, "aws:amz:%s:s3", cfg.s3_region);
    snprintf(R.bucket, sizeof R.bucket, "%s", cfg.s3_bucket);
    /* A prefix is a folder: `a/b/`, never `/a`. */
    size_t pl = strlen(cfg.s3_prefix);
    if (cfg.s3_prefix[0] == '/' || strstr(cfg.s3_prefix, "//")) {
        slog("warning: remote cache off: s3_prefix may not start with `/` or hold `//`");
        return;
    }
    snprintf(R.prefix, sizeof R.prefix, "%s%s", cfg.s3_prefix,
             pl && cfg.s3_prefix[pl - 1] != '/' ? "/" : "");
    snprintf(R.where, sizeof R.where, "s3://%s/%s at %s", R.bucket, R.prefix, R.endpoint);
    load_credentials();
    if (!token_ok(R.id) || !token_ok(R.secret) || !token_ok(R.token)) {
        explicit_bzero(&R, sizeof R);
        slog("warning: remote cache off: the credentials hold spaces or control characters");
        return;
    }
    if (!R.id[0] || !R.secret[0]) {
        slog("warning: remote cache %s off: no credentials (AWS_ACCESS_KEY_ID and "
             "AWS_SECRET_ACCESS_KEY, or the shared credentials file)",
             R.where);
        return;
    }
    if (load_signing_key(&err) < 0) {
        slog("warning: remote cache %s off: %s", R.where, err.msg);
        return;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        slog("warning: remote cache %s off: libcurl would not start", R.where);
        return;
    }
    /* Nothing may read the credentials out of a core dump or /proc/PID/mem. */
    prctl(PR_SET_DUMPABLE, 0);
    R.on = true;
    slog("remote cache: %s (uploads: %u at once; entries %s)", R.where,
         cfg.max_concurrent_s3_uploads, R.sign_key_len ? "signed, and checked" : "unsigned");
}

/* ---- what the children do ----------------------------------------------------------------- */

static void object_url(const char *key, char *out, size_t n)
{
    snprintf(out, n, "%s/%s/%sl2/%s.zst", R.endpoint, R.bucket, R.prefix, key);
}

/* hex HMAC-SHA256 over what an entry claims, or "" without a key; -1 when it cannot be made
 * (then nothing may be trusted or sent as signed). */
static int entry_signature(const char *key, const char *sha256, uint64_t size, char out[65])
{
    out[0] = '\0';
    if (!R.sign_key_len)
        return 0;
    char text[256];
    int n = snprintf(text, sizeof text, "exec-sandbox layer 1\n%s\n%s\n%llu\n", key, sha256,
                     (unsigned long long)size);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (!HMAC(EVP_sha256(), R.sign_key, (int)R.sign_key_len, (unsigned char *)text, (size_t)n, mac,
              &len) ||
        len != 32)
        return -1;
    sbx_hex(mac, 32, out);
    return 0;
}

static void easy_free(CURL **h)
{
    if (*h)
        curl_easy_cleanup(*h);
}
static void slist_free(struct curl_slist **l)
{
    curl_slist_free_all(*l);
}
#define cleanup_easy __attribute__((cleanup(easy_free)))
#define cleanup_slist __attribute__((cleanup(slist_free)))

/* A signed request for url; payload_sha256: the body's (hex), signed as x-amz-content-sha256. */
static CURL *easy(const char *url, struct curl_slist **hdrs, const char *payload_sha256)
{
    CURL *h = curl_easy_init();
    char line[4200];
    if (!h)
        return NULL;
    snprintf(line, sizeof line, "x-amz-content-sha256: %s", payload_sha256);
    *hdrs = curl_slist_append(*hdrs, line);
    if (R.token[0]) {
        snprintf(line, sizeof line, "x-amz-security-token: %s", R.token);
        *hdrs = curl_slist_append(*hdrs, line);
    }
    explicit_bzero(line, sizeof line);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, REMOTE_CONNECT_S);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, REMOTE_TRANSFER_S);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, REMOTE_LOW_SPEED);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, REMOTE_LOW_SPEED_S);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, R.sigv4);
    curl_easy_setopt(h, CURLOPT_USERNAME, R.id);
    curl_easy_setopt(h, CURLOPT_PASSWORD, R.secret);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
    return h;
}

struct download {
    const char *key, *dir;
    int out;
    ZSTD_DStream *z;
    EVP_MD_CTX *md;
    uint8_t *buf;
    size_t last; /* ZSTD_decompressStream's last hint: 0 once a frame ended */
    uint64_t plain;
    bool too_big, write_failed;
    char meta_sha[72], meta_size[32], meta_sig[72];
};

static size_t dl_header(char *b, size_t sz, size_t n, void *arg)
{
    struct download *d = arg;
    size_t len = sz * n;
    static const struct {
        const char *name;
        size_t off, cap;
    } want[] = {
        {"x-amz-meta-sha256:", offsetof(struct download, meta_sha), 72},
        {"x-amz-meta-size:", offsetof(struct download, meta_size), 32},
        {"x-amz-meta-signature:", offsetof(struct download, meta_sig), 72},
    };
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        size_t nl = strlen(want[i].name);
        if (len <= nl || strncasecmp(b, want[i].name, nl))
            continue;
        const char *v = b + nl;
        size_t vl = len - nl;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        char *dst = (char *)d + want[i].off;
        snprintf(dst, want[i].cap, "%.*s", (int)(vl < want[i].cap ? vl : want[i].cap - 1), v);
    }
    return len;
}

static size_t dl_write(char *b, size_t sz, size_t n, void *arg)
{
    struct download *d = arg;
    ZSTD_inBuffer in = {b, sz * n, 0};
    while (in.pos < in.size) {
        ZSTD_outBuffer out = {d->buf, ZSTD_DStreamOutSize(), 0};
        size_t r = ZSTD_decompressStream(d->z, &out, &in);
        if (ZSTD_isError(r))
            return 0;
        d->last = r;
        d->plain += out.pos;
        if (d->plain > INSTALL_TREE_MAX) {
            d->too_big = true;
            return 0;
        }
        if (out.pos && sbx_write_all(d->out, d->buf, out.pos) < 0) {
            d->write_failed = true;
            return 0;
        }
        EVP_DigestUpdate(d->md, d->buf, out.pos);
    }
    return sz * n;
}

/* Prints `hit SHA SIZE`, `miss` or `error CLASS: WHY`, CLASS being net (no answer), HTTP (an
 * answer, but no), bad (an object that is not to be trusted) or local. */
static int download_body(void *arg)
{
    struct download *d = arg;
    char url[1200], path[PATH_MAX];
    signal(SIGPIPE, SIG_IGN);
    object_url(d->key, url, sizeof url);
    snprintf(path, sizeof path, "%s/" LAYER_FILE, d->dir);
    d->out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    d->z = ZSTD_createDStream();
    d->md = EVP_MD_CTX_new();
    d->buf = malloc(ZSTD_DStreamOutSize());
    if (d->out < 0 || !d->z || !d->md || !d->buf ||
        EVP_DigestInit_ex(d->md, EVP_sha256(), NULL) != 1) {
        dprintf(1, "error local: cannot set up the download\n");
        return 0;
    }
    d->last = 1;
    cleanup_slist struct curl_slist *hdrs = NULL;
    cleanup_easy CURL *h = easy(url, &hdrs, EMPTY_SHA256);
    if (!h) {
        dprintf(1, "error local: out of memory\n");
        return 0;
    }
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, dl_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, d);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, dl_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (code == 404) {
        dprintf(1, "miss\n");
        return 0;
    }
    if (rc == CURLE_HTTP_RETURNED_ERROR) {
        dprintf(1, "error HTTP %ld\n", code);
        return 0;
    }
    if (d->too_big) {
        dprintf(1, "error bad: the object holds more than a layer may\n");
        return 0;
    }
    if (d->write_failed || rc == CURLE_WRITE_ERROR) {
        dprintf(1, "error %s\n",
                d->write_failed ? "local: cannot write the layer"
                                : "bad: the object does not decompress");
        return 0;
    }
    if (rc != CURLE_OK) {
        dprintf(1, "error net: %s\n", curl_easy_strerror(rc));
        return 0;
    }
    unsigned char md[32];
    char sha[65], sig[65];
    EVP_DigestFinal_ex(d->md, md, NULL);
    sbx_hex(md, 32, sha);
    unsigned long long want = strtoull(d->meta_size, NULL, 10);
    if (d->last != 0)
        dprintf(1, "error bad: the object is truncated (its zstd frame does not end)\n");
    else if (!d->meta_sha[0] || !d->meta_size[0])
        dprintf(1, "error bad: the object has no sha256/size metadata\n");
    else if (d->plain != want)
        dprintf(1, "error bad: size %llu, not the %llu its metadata says\n",
                (unsigned long long)d->plain, want);
    else if (strcmp(sha, d->meta_sha))
        dprintf(1, "error bad: its sha256 is not the one its metadata says\n");
    else if (!R.sign_key_len)
        dprintf(1, "hit %s %llu\n", sha, (unsigned long long)d->plain);
    else if (entry_signature(d->key, sha, d->plain, sig) < 0)
        dprintf(1, "error local: cannot compute the signature\n");
    else if (!d->meta_sig[0])
        dprintf(1, "error bad: the object is not signed (cache_signing_key_file is set)\n");
    else if (strlen(d->meta_sig) != 64 || CRYPTO_memcmp(sig, d->meta_sig, 64))
        dprintf(1, "error bad: the object's signature is wrong\n");
    else
        dprintf(1, "hit %s %llu\n", sha, (unsigned long long)d->plain);
    return 0;
}

struct upload_job {
    const char *key, *tmp, *sha256;
    uint64_t size;
};

/* Compress path into tmp (fd), returning the compressed bytes' sha256 and length. */
/* Compress the image (fd 0, opened by sbxd when the upload was queued) into tmp, returning the
 * compressed bytes' sha256 and length; -1 unless the image is the one the entry describes. */
static int compress_into(const struct upload_job *u, int tmp, char hex[65], uint64_t *len)
{
    const int in = 0;
    ZSTD_CStream *z = ZSTD_createCStream();
    EVP_MD_CTX *md = EVP_MD_CTX_new(), *plain = EVP_MD_CTX_new();
    uint64_t plain_len = 0;
    size_t inl = ZSTD_CStreamInSize(), outl = ZSTD_CStreamOutSize();
    uint8_t *ib = malloc(inl), *ob = malloc(outl);
    if (!z || !md || !plain || !ib || !ob || ZSTD_initCStream(z, UPLOAD_LEVEL) != 0 ||
        EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestInit_ex(plain, EVP_sha256(), NULL) != 1)
        return -1;
    *len = 0;
    for (bool end = false; !end;) {
        ssize_t r = read(in, ib, inl);
        if (r < 0)
            return -1;
        end = r == 0;
        EVP_DigestUpdate(plain, ib, (size_t)r);
        plain_len += (uint64_t)r;
        ZSTD_inBuffer zin = {ib, (size_t)r, 0};
        size_t left;
        do {
            ZSTD_outBuffer zout = {ob, outl, 0};
            left = end ? ZSTD_endStream(z, &zout) : ZSTD_compressStream(z, &zout, &zin);
            if (ZSTD_isError(left) || sbx_write_all(tmp, ob, zout.pos) < 0)
                return -1;
            EVP_DigestUpdate(md, ob, zout.pos);
            *len += zout.pos;
        } while (end ? left != 0 : zin.pos < zin.size);
    }
    unsigned char d[32];
    char ph[65];
    EVP_DigestFinal_ex(plain, d, NULL);
    sbx_hex(d, 32, ph);
    if (plain_len != u->size || strcmp(ph, u->sha256))
        return -1; /* not the image this entry's metadata (and signature) describe */
    EVP_DigestFinal_ex(md, d, NULL);
    sbx_hex(d, 32, hex);
    return 0;
}

/* Prints `ok` or `error WHY`. */
static int upload_body(void *arg)
{
    const struct upload_job *u = arg;
    int tmp = open(u->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    char hex[65], url[1200], line[160], sig[65];
    uint64_t len = 0;
    signal(SIGPIPE, SIG_IGN);
    if (tmp < 0 || compress_into(u, tmp, hex, &len) < 0) {
        if (tmp >= 0)
            unlink(u->tmp);
        dprintf(1, "error local: cannot compress the layer, or it is not the one built\n");
        return 0;
    }
    unlink(u->tmp); /* the fd is enough from here on */
    FILE *body = fdopen(tmp, "rb");
    if (!body || fseek(body, 0, SEEK_SET) < 0) {
        dprintf(1, "error local: out of memory\n");
        return 0;
    }
    object_url(u->key, url, sizeof url);
    cleanup_slist struct curl_slist *hdrs = NULL;
    snprintf(line, sizeof line, "x-amz-meta-sha256: %s", u->sha256);
    hdrs = curl_slist_append(hdrs, line);
    snprintf(line, sizeof line, "x-amz-meta-size: %llu", (unsigned long long)u->size);
    hdrs = curl_slist_append(hdrs, line);
    if (entry_signature(u->key, u->sha256, u->size, sig) < 0) {
        dprintf(1, "error local: cannot compute the signature\n");
        return 0;
    }
    if (sig[0]) {
        snprintf(line, sizeof line, "x-amz-meta-signature: %s", sig);
        hdrs = curl_slist_append(hdrs, line);
    }
    hdrs = curl_slist_append(hdrs, "Content-Type: application/zstd");
    cleanup_easy CURL *h = easy(url, &hdrs, hex);
    if (!h) {
        dprintf(1, "error local: out of memory\n");
        return 0;
    }
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READDATA, body);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (rc == CURLE_HTTP_RETURNED_ERROR)
        dprintf(1, "error HTTP %ld\n", code);
    else if (rc != CURLE_OK)
        dprintf(1, "error net: %s\n", curl_easy_strerror(rc));
    else
        dprintf(1, "ok %llu\n", (unsigned long long)len);
    return 0;
}

/* ---- bookkeeping ---------------------------------------------------------------------------- */

/* Whether the store answered, and how, from a child's line: an HTTP error means it answered no
 * (a 404 only to a download: a miss); `net` that it did not answer; `bad` and `local` say
 * nothing of the store's health. */
static void note(const char *what, const char *line, bool failed)
{
    bool http = !strncmp(line, "error HTTP ", 11), net = !strncmp(line, "error net:", 10);
    if (!failed || http || net) {
        S.reached = !net;
        S.answered_ok = !failed;
    }
    if (failed) {
        snprintf(S.last_error, sizeof S.last_error, "%s: %s", what,
                 !strncmp(line, "error ", 6) ? line + 6
                 : line[0]                   ? line
                                             : "its child failed");
        slog("remote cache: %s", S.last_error);
    }
}

struct remote_fetch {
    child *c;
    char key[65];
    remote_fetched cb;
    void *owner;
};

static void fetched(void *owner, bool ok, const char *line)
{
    remote_fetch *f = owner;
    remote_result r = REMOTE_FAILED;
    char sha[65] = "";
    unsigned long long size = 0;
    if (ok && sscanf(line, "hit %64[0-9a-f] %llu", sha, &size) == 2 && strlen(sha) == 64)
        r = REMOTE_HIT;
    else if (ok && !strcmp(line, "miss"))
        r = REMOTE_MISS;
    if (r == REMOTE_HIT)
        S.hits++;
    else if (r == REMOTE_MISS)
        S.misses++;
    else
        S.errors++;
    char what[96];
    snprintf(what, sizeof what, "download of layer %.16s", f->key);
    note(what, line, r == REMOTE_FAILED);
    remote_fetched cb = f->cb;
    void *o = f->owner;
    free(f);
    cb(o, r, sha, size);
}

remote_fetch *remote_fetch_start(const char *key, const char *dir, remote_fetched cb, void *owner)
{
    if (!R.on)
        return NULL;
    remote_fetch *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    snprintf(f->key, sizeof f->key, "%s", key);
    f->cb = cb;
    f->owner = owner;
    struct download d = {.key = f->key, .dir = dir, .out = -1};
    sbx_err err = {0};
    f->c = child_start("remote cache: download", download_body, &d, -1, -1, REMOTE_CHILD_WALL_S,
                       fetched, f, &err);
    if (!f->c) {
        slog("remote cache: download of layer %.16s: %s", key, err.msg);
        free(f);
        return NULL;
    }
    return f;
}

void remote_fetch_cancel(remote_fetch *f)
{
    child_cancel(f->c);
    free(f);
}

typedef struct upload {
    char key[65], sha256[65], tmp[PATH_MAX + 32];
    uint64_t size;
    int fd;   /* the image, opened when queued: what is sent is what was built */
    child *c; /* NULL while queued */
    struct upload *next;
} upload;

static upload *uploads; /* queued and in flight, in order */
static unsigned in_flight, seq;

static void upload_pump(void);

static void unlink_upload(upload *u)
{
    for (upload **p = &uploads; *p; p = &(*p)->next)
        if (*p == u) {
            *p = u->next;
            break;
        }
    if (u->fd >= 0)
        close(u->fd);
    free(u);
}

static void uploaded(void *owner, bool ok, const char *line)
{
    upload *u = owner;
    in_flight--;
    unlink(u->tmp); /* gone already, unless the child died first */
    unsigned long long len = 0;
    bool done = ok && sscanf(line, "ok %llu", &len) == 1;
    char what[96];
    snprintf(what, sizeof what, "upload of layer %.16s", u->key);
    note(what, line, !done);
    if (done) {
        S.uploads++;
        slog("remote cache: layer %.16s uploaded (%llu KiB compressed)", u->key, len >> 10);
    } else {
        S.upload_errors++;
    }
    unlink_upload(u);
    upload_pump();
}

static void upload_pump(void)
{
    for (upload *u = uploads, *next; u && in_flight < cfg.max_concurrent_s3_uploads; u = next) {
        next = u->next;
        if (u->c)
            continue;
        struct upload_job j = {u->key, u->tmp, u->sha256, u->size};
        sbx_err err = {0};
        u->c = child_start("remote cache: upload", upload_body, &j, u->fd, -1, REMOTE_CHILD_WALL_S,
                           uploaded, u, &err);
        if (!u->c) {
            slog("remote cache: upload of layer %.16s: %s", u->key, err.msg);
            S.upload_errors++;
            unlink_upload(u);
            continue;
        }
        close(u->fd); /* the child has it */
        u->fd = -1;
        in_flight++;
    }
}

void remote_upload(const char *key, const char *path, const char *sha256, uint64_t size)
{
    if (!R.on)
        return;
    for (upload *u = uploads; u; u = u->next)
        if (!strcmp(u->key, key))
            return; /* on its way already */
    upload *u = calloc(1, sizeof *u), **tail = &uploads;
    if (!u)
        return;
    u->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (u->fd < 0) {
        slog("remote cache: upload of layer %.16s: open `%s`: %s", key, path, strerror(errno));
        free(u);
        return;
    }
    snprintf(u->key, sizeof u->key, "%s", key);
    snprintf(u->sha256, sizeof u->sha256, "%s", sha256);
    u->size = size;
    /* Beside the layer's cache directory, named like staging (cleaned if sbxd dies). */
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 0;
    const char *up = dl ? memrchr(path, '/', (size_t)dl) : NULL;
    snprintf(u->tmp, sizeof u->tmp, "%.*s/.tmp-%d-up%u", up ? (int)(up - path) : dl, path,
             (int)getpid(), ++seq);
    while (*tail)
        tail = &(*tail)->next;
    *tail = u;
    upload_pump();
}

void remote_status(Sbx__Control__StatusReply *s)
{
    static Sbx__Control__RemoteCacheInfo info;
    sbx__control__remote_cache_info__init(&info);
    info.enabled = R.on;
    info.location = R.on ? R.where : "";
    info.reachable = S.reached && S.answered_ok;
    info.last_error = S.last_error;
    info.hits = S.hits;
    info.misses = S.misses;
    info.errors = S.errors;
    info.uploads_done = S.uploads;
    info.uploads_failed = S.upload_errors;
    info.uploads_in_flight = in_flight;
    unsigned q = 0;
    for (upload *u = uploads; u; u = u->next)
        q += !u->c;
    info.uploads_queued = q;
    info.max_concurrent_uploads = cfg.max_concurrent_s3_uploads;
    info.signed_entries = R.sign_key_len != 0;
    s->remote_cache = &info;
}

void remote_stop(void)
{
    while (uploads) {
        upload *u = uploads;
        if (u->c) {
            child_cancel(u->c);
            unlink(u->tmp);
        }
        uploads = u->next;
        if (u->fd >= 0)
            close(u->fd);
        free(u);
    }
    in_flight = 0;
    explicit_bzero(&R, sizeof R);
}
