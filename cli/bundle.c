/* Asset bundles: `sbx bundle` packs the guest kernel, initramfs and images of one architecture
 * into exec-sandbox-assets-<version>-<arch>.tar.zst with a SHA256SUMS beside it (libarchive and
 * its zstd filter); `sbx prefetch` fetches one (libcurl, or a local directory), checks the
 * bundle's sha256 while it streams in and every file's against the bundle's own SHA256SUMS, and
 * only then moves them into the content-hashed cache and points the images at them. A prefetch
 * that fails leaves the images as they were; one that finds everything present says so.
 *
 * Inside a bundle: `SHA256SUMS` (`<hex>  <file>` per asset), `images.list` (`<image> <file>`
 * per image name: vmlinux, initramfs.cpio, <language>.sqfs), then the assets under their
 * content-hashed names (as CACHE/artefacts holds them). */
#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "arch.h"
#include "paths.h"
#include "sbx.h"

#define ASSET_MAX (4ull << 30) /* bytes of one asset */
#define MAX_ASSETS 16
#define FETCH_CONNECT_S 15L
#define FETCH_LOW_SPEED_S 60L

static const char *const image_names[] = {"vmlinux", "initramfs.cpio", "python.sqfs",
                                          "javascript.sqfs", "raw.sqfs"};

typedef struct {
    char image[64];  /* vmlinux, python.sqfs... */
    char file[128];  /* its content-hashed name */
    char sha256[65]; /* of the file */
} asset;

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sbx: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_SANDBOX;
}

static void hexdigest(EVP_MD_CTX *md, char out[65])
{
    unsigned char d[32];
    EVP_DigestFinal_ex(md, d, NULL);
    sbx_hex(d, 32, out);
}

static int file_sha256(const char *path, char out[65], uint64_t *size)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    static unsigned char buf[1 << 20];
    *size = 0;
    if (fd < 0 || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return -1;
    }
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        EVP_DigestUpdate(md, buf, (size_t)r);
        *size += (uint64_t)r;
    }
    hexdigest(md, out);
    EVP_MD_CTX_free(md);
    return r < 0 ? -1 : 0;
}

/* The architecture a command is for: --arch (an alias is accepted), else the host's. */
static const char *arch_of(const char *arch_opt, const char *cmd)
{
    const char *a = arch_opt ? arch_canonical(arch_opt) : arch_host();
    if (!a || !arch_qemu_binary(a))
        fprintf(stderr, "sbx: %s: architecture `%s` has no guests here (x86_64 or aarch64)\n", cmd,
                arch_opt ? arch_opt : arch_host());
    return a && arch_qemu_binary(a) ? a : NULL;
}

static void bundle_name(const char *version, const char *arch, char *out, size_t n)
{
    snprintf(out, n, "exec-sandbox-assets-%s-%s.tar.zst", version, arch);
}

static bool plain_name(const char *s)
{
    return *s && *s != '.' && strlen(s) < 128 && !strchr(s, '/') &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
               strlen(s);
}

/* Options: `--name value` or `--name=value`; -q. 0, or -1 after a usage message. */
static int opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t nl = strlen(name);
    if (strncmp(argv[*i], name, nl))
        return 0;
    if (argv[*i][nl] == '=') {
        *val = argv[*i] + nl + 1;
        return 1;
    }
    if (argv[*i][nl])
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "sbx: %s needs a value\n", name);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

/* ---- sbx bundle ----------------------------------------------------------------------------- */

/* A read-only regular file's header: every entry of a bundle is one (mtime 0: the same assets
 * give the same bundle). */
static int entry_header(struct archive *a, const char *name, uint64_t size)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0444);
    archive_entry_set_mtime(e, 0, 0);
    int rc = archive_write_header(a, e) == ARCHIVE_OK ? 0 : -1;
    archive_entry_free(e);
    return rc;
}

static int add_entry(struct archive *a, const char *name, const void *data, size_t len)
{
    return entry_header(a, name, len) == 0 &&
                   (!len || archive_write_data(a, data, len) == (la_ssize_t)len)
               ? 0
               : -1;
}

static int add_file(struct archive *a, const char *name, const char *path, uint64_t size)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = fd >= 0 && entry_header(a, name, size) == 0 ? 0 : -1;
    static char buf[1 << 20];
    ssize_t r;
    while (rc == 0 && (r = read(fd, buf, sizeof buf)) > 0)
        if (archive_write_data(a, buf, (size_t)r) != r)
            rc = -1;
    return rc;
}

int cmd_bundle(int argc, char **argv)
{
    const char *images = getenv("EXEC_SANDBOX_IMAGES_DIR"), *out = NULL, *version = SBX_VERSION;
    char cache[PATH_MAX], dflt[PATH_MAX + 16];
    const char *arch_opt = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = opt(argc, argv, &i, "--images-dir", &images)) ||
            (r = opt(argc, argv, &i, "--out", &out)) ||
            (r = opt(argc, argv, &i, "--version", &version)) ||
            (r = opt(argc, argv, &i, "--arch", &arch_opt))) {
            if (r < 0)
                return EXIT_USAGE;
            continue;
        }
        fprintf(stderr,
                "sbx: bundle: unknown argument `%s` (sbx bundle --out DIR "
                "[--images-dir DIR] [--version V] [--arch A])\n",
                argv[i]);
        return EXIT_USAGE;
    }
    const char *arch = arch_of(arch_opt, "bundle");
    if (!arch)
        return EXIT_USAGE;
    if (!out || !plain_name(version)) {
        fprintf(stderr, "sbx: bundle: --out DIR is needed; the version is a plain name\n");
        return EXIT_USAGE;
    }
    if (!images) {
        sbx_err err = {0};
        if (paths_cache_dir(cache, sizeof cache, &err) < 0)
            return fail("bundle: %s", err.msg);
        if (arch_images_dir(cache, arch, dflt, sizeof dflt) < 0)
            return fail("bundle: cache path too long");
        images = dflt;
    }
    asset as[ARRAY_LEN(image_names)];
    char sums[4096] = "", list[4096] = "";
    size_t sl = 0, ll = 0;
    uint64_t sizes[ARRAY_LEN(image_names)];
    char paths[ARRAY_LEN(image_names)][PATH_MAX];
    for (size_t i = 0; i < ARRAY_LEN(image_names); i++) {
        char p[PATH_MAX + 80];
        snprintf(p, sizeof p, "%s/%s", images, image_names[i]);
        if (!realpath(p, paths[i]))
            return fail("bundle: `%s` is missing: build the assets first (make assets)", p);
        const char *base = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
        if (!plain_name(base))
            return fail("bundle: `%s`: not a plain file name", base);
        snprintf(as[i].image, sizeof as[i].image, "%s", image_names[i]);
        snprintf(as[i].file, sizeof as[i].file, "%s", base);
        if (file_sha256(paths[i], as[i].sha256, &sizes[i]) < 0)
            return fail("bundle: read `%s`: %s", paths[i], strerror(errno));
        sl += (size_t)snprintf(sums + sl, sizeof sums - sl, "%s  %s\n", as[i].sha256, base);
        ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s %s\n", image_names[i], base);
    }
    if (paths_mkdir_p(out, 0755) < 0)
        return fail("bundle: create `%s`: %s", out, strerror(errno));
    char name[256], final[PATH_MAX + 300], tmp[PATH_MAX + 310];
    bundle_name(version, arch, name, sizeof name);
    snprintf(final, sizeof final, "%s/%s", out, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    struct archive *a = archive_write_new();
    int bad = !a || archive_write_add_filter_zstd(a) != ARCHIVE_OK ||
              archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
              archive_write_open_filename(a, tmp) != ARCHIVE_OK ||
              add_entry(a, "SHA256SUMS", sums, sl) < 0 || add_entry(a, "images.list", list, ll) < 0;
    for (size_t i = 0; !bad && i < ARRAY_LEN(image_names); i++)
        bad = add_file(a, as[i].file, paths[i], sizes[i]) < 0;
    if (!bad)
        bad = archive_write_close(a) != ARCHIVE_OK;
    const char *why = bad && a ? archive_error_string(a) : NULL;
    if (bad) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", why ? why : strerror(errno));
        archive_write_free(a);
        unlink(tmp);
        return fail("bundle: write `%s`: %s", tmp, msg);
    }
    archive_write_free(a);
    char hex[65], sp[PATH_MAX + 300];
    uint64_t total;
    if (file_sha256(tmp, hex, &total) < 0 || rename(tmp, final) < 0)
        return fail("bundle: `%s`: %s", final, strerror(errno));
    snprintf(sp, sizeof sp, "%s/SHA256SUMS", out);
    FILE *f = fopen(sp, "we");
    if (!f || fprintf(f, "%s  %s\n", hex, name) < 0 || fclose(f) != 0)
        return fail("bundle: write `%s`: %s", sp, strerror(errno));
    printf("%s (%llu MiB, %zu assets)\n%s\n", final, (unsigned long long)total >> 20,
           ARRAY_LEN(image_names), sp);
    return 0;
}

/* ---- sbx prefetch --------------------------------------------------------------------------- */

struct sink {
    int fd;
    EVP_MD_CTX *md;
    uint64_t got, max;
    bool too_big;
};

static size_t sink_write(char *b, size_t sz, size_t n, void *arg)
{
    struct sink *s = arg;
    size_t len = sz * n;
    if (s->got + len > s->max) {
        s->too_big = true;
        return 0;
    }
    if (sbx_write_all(s->fd, b, len) < 0)
        return 0;
    EVP_DigestUpdate(s->md, b, len);
    s->got += len;
    return len;
}

static int show_progress(void *arg, curl_off_t total, curl_off_t now, curl_off_t ut, curl_off_t un)
{
    static time_t last;
    time_t t = time(NULL);
    if (total > 0 && (t != last || now == total)) {
        last = t;
        int w = (int)(40 * now / total);
        fprintf(stderr, "\r[%-40.*s] %3d%% %lld/%lld MiB", w,
                "########################################", (int)(100 * now / total),
                (long long)now >> 20, (long long)total >> 20);
    }
    return 0;
}

/* base/name into fd (hashed into hex). A URL base goes through libcurl; anything else is a
 * directory. 0, or -1 with the reason in why. */
static int fetch(const char *base, const char *name, int fd, uint64_t max, bool progress,
                 char hex[65], char *why, size_t wn)
{
    char src[PATH_MAX + 300];
    snprintf(src, sizeof src, "%s/%s", base, name);
    struct sink s = {.fd = fd, .md = EVP_MD_CTX_new(), .max = max};
    if (!s.md || EVP_DigestInit_ex(s.md, EVP_sha256(), NULL) != 1) {
        snprintf(why, wn, "out of memory");
        return -1;
    }
    int rc = 0;
    if (strncmp(base, "http://", 7) && strncmp(base, "https://", 8)) {
        cleanup_close int in = open(src, O_RDONLY | O_CLOEXEC);
        static char buf[1 << 20];
        ssize_t r = in < 0 ? -1 : 0;
        while (in >= 0 && (r = read(in, buf, sizeof buf)) > 0)
            if (sink_write(buf, 1, (size_t)r, &s) != (size_t)r)
                break;
        if (in < 0)
            snprintf(why, wn, "`%s`: not found (%s)", src, strerror(errno)), rc = -1;
        else if (r != 0 || s.too_big)
            snprintf(why, wn, "`%s`: %s", src, s.too_big ? "too big" : strerror(errno)), rc = -1;
    } else {
        CURL *h = curl_easy_init();
        if (!h) {
            EVP_MD_CTX_free(s.md);
            snprintf(why, wn, "out of memory");
            return -1;
        }
        curl_easy_setopt(h, CURLOPT_URL, src);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, FETCH_CONNECT_S);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, FETCH_LOW_SPEED_S);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
        if (progress) {
            curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, show_progress);
            curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        }
        CURLcode c = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(h);
        if (progress)
            fputc('\n', stderr);
        if (c == CURLE_HTTP_RETURNED_ERROR)
            snprintf(why, wn, "HTTP %ld for %s", code, src), rc = -1;
        else if (c == CURLE_PARTIAL_FILE)
            snprintf(why, wn, "%s: truncated (%s)", src, curl_easy_strerror(c)), rc = -1;
        else if (s.too_big)
            snprintf(why, wn, "%s: over %llu MiB", src, (unsigned long long)max >> 20), rc = -1;
        else if (c != CURLE_OK)
            snprintf(why, wn, "%s: connection: %s", src, curl_easy_strerror(c)), rc = -1;
    }
    hexdigest(s.md, hex);
    EVP_MD_CTX_free(s.md);
    return rc;
}

/* The hash SHA256SUMS (text) gives file, into hex; -1 when it names it not. */
static int sums_lookup(const char *sums, const char *file, char hex[65])
{
    for (const char *l = sums; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        char h[65], f[160];
        if (sscanf(l, "%64[0-9a-f]  %159[^\n]", h, f) == 2 && strlen(h) == 64 && !strcmp(f, file)) {
            memcpy(hex, h, 65);
            return 0;
        }
    }
    return -1;
}

static void rm_staging(const char *dir)
{
    paths_rm_tree_at(AT_FDCWD, dir, 1);
}

/* Read the bundle at path: its manifests, and every asset into staging, checked. */
static int unpack(const char *path, const char *staging, asset *as, size_t *n, char *why, size_t wn)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_zstd(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, path, 1 << 20) != ARCHIVE_OK) {
        snprintf(why, wn, "the bundle does not open: %s", archive_error_string(a));
        archive_read_free(a);
        return -1;
    }
    char sums[8192] = "", list[8192] = "";
    size_t nfiles = 0;
    int rc = 0;
    struct archive_entry *e;
    while (rc == 0 && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        la_int64_t size = archive_entry_size(e);
        bool text = !strcmp(name, "SHA256SUMS") || !strcmp(name, "images.list");
        if (archive_entry_filetype(e) != AE_IFREG || !plain_name(name) || size < 0 ||
            (uint64_t)size > (text ? 8000 : ASSET_MAX)) {
            snprintf(why, wn, "the bundle holds `%.100s`, which is not an asset file", name);
            rc = -1;
            break;
        }
        if (text) {
            char *dst = !strcmp(name, "SHA256SUMS") ? sums : list;
            if (archive_read_data(a, dst, (size_t)size) != size)
                snprintf(why, wn, "the bundle's %s is truncated", name), rc = -1;
            dst[size] = '\0';
            continue;
        }
        char want[65], got[65], out[PATH_MAX + 200];
        if (sums_lookup(sums, name, want) < 0 || nfiles == MAX_ASSETS) {
            snprintf(why, wn, "`%s` is not in the bundle's SHA256SUMS", name);
            rc = -1;
            break;
        }
        snprintf(out, sizeof out, "%s/%s", staging, name);
        cleanup_close int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        static char buf[1 << 20];
        la_ssize_t r;
        uint64_t total = 0;
        while (fd >= 0 && (r = archive_read_data(a, buf, sizeof buf)) > 0) {
            if (sbx_write_all(fd, buf, (size_t)r) < 0)
                break;
            EVP_DigestUpdate(md, buf, (size_t)r);
            total += (uint64_t)r;
        }
        hexdigest(md, got);
        EVP_MD_CTX_free(md);
        if (fd < 0 || total != (uint64_t)size) {
            snprintf(why, wn, "`%s`: truncated in the bundle (%s)", name,
                     fd < 0 ? strerror(errno) : archive_error_string(a));
            rc = -1;
        } else if (strcmp(got, want)) {
            snprintf(why, wn, "`%s`: sha256 mismatch (the bundle says %.12s..., it is %.12s...)",
                     name, want, got);
            rc = -1;
        } else {
            snprintf(as[nfiles].file, sizeof as[nfiles].file, "%s", name);
            memcpy(as[nfiles].sha256, got, 65);
            nfiles++;
        }
    }
    if (rc == 0 && archive_errno(a) && archive_error_string(a))
        snprintf(why, wn, "the bundle: %s", archive_error_string(a)), rc = -1;
    archive_read_free(a);
    if (rc < 0)
        return -1;
    /* Every image maps to a file that was there and checked. */
    *n = 0;
    for (const char *l = list; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "") {
        char img[64], file[128];
        if (sscanf(l, "%63s %127s", img, file) != 2)
            continue;
        size_t k = 0;
        while (k < nfiles && strcmp(as[k].file, file))
            k++;
        if (k == nfiles || !plain_name(img) || *n == MAX_ASSETS) {
            snprintf(why, wn, "images.list names `%.60s`, which the bundle lacks", file);
            return -1;
        }
        asset tmp = as[k];
        snprintf(tmp.image, sizeof tmp.image, "%s", img);
        as[k] = as[*n];
        as[(*n)++] = tmp;
    }
    if (*n < ARRAY_LEN(image_names)) {
        snprintf(why, wn, "the bundle's images.list names %zu images, not %zu", *n,
                 ARRAY_LEN(image_names));
        return -1;
    }
    return 0;
}

/* Whether imgs/<image> already points at artefacts/<file> holding that sha256. */
static bool present(const char *cache, const char *imgs, const asset *x)
{
    char link[PATH_MAX + 100], target[PATH_MAX], want[PATH_MAX + 200], hex[65];
    snprintf(link, sizeof link, "%s/%s", imgs, x->image);
    snprintf(want, sizeof want, "%s/artefacts/%s", cache, x->file);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0)
        return false;
    target[n] = '\0';
    uint64_t size;
    return !strcmp(target, want) && file_sha256(want, hex, &size) == 0 && !strcmp(hex, x->sha256);
}

int cmd_prefetch(int argc, char **argv)
{
    const char *from = getenv("EXEC_SANDBOX_ASSET_BASE_URL"), *version = NULL, *arch_opt = NULL;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        int r;
        if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) {
            quiet = true;
            continue;
        }
        if ((r = opt(argc, argv, &i, "--from", &from)) ||
            (r = opt(argc, argv, &i, "--version", &version)) ||
            (r = opt(argc, argv, &i, "--arch", &arch_opt))) {
            if (r < 0)
                return EXIT_USAGE;
            continue;
        }
        fprintf(stderr,
                "sbx: prefetch: unknown argument `%s` (sbx prefetch [--from URL|PATH] "
                "[--arch A] [--version V] [-q])\n",
                argv[i]);
        return EXIT_USAGE;
    }
    const char *offline = getenv("EXEC_SANDBOX_OFFLINE");
    if (offline && !strcmp(offline, "1"))
        return fail("prefetch: offline (EXEC_SANDBOX_OFFLINE=1): nothing is downloaded");
    if (!from || !*from)
        return fail("prefetch: no --from URL|PATH and no EXEC_SANDBOX_ASSET_BASE_URL");
    if (!version)
        version = getenv("EXEC_SANDBOX_ASSET_VERSION");
    if (!version || !*version)
        version = SBX_VERSION;
    char name[256], cache[PATH_MAX], why[900] = "";
    const char *arch = arch_of(arch_opt, "prefetch");
    if (!arch)
        return EXIT_USAGE;
    if (!plain_name(version))
        return fail("prefetch: the version is a plain name");
    bundle_name(version, arch, name, sizeof name);
    sbx_err err = {0};
    if (paths_cache_dir(cache, sizeof cache, &err) < 0)
        return fail("prefetch: %s", err.msg);
    char arte[PATH_MAX + 20], imgs[PATH_MAX + 20], staging[PATH_MAX + 64];
    snprintf(arte, sizeof arte, "%s/artefacts", cache);
    if (arch_images_dir(cache, arch, imgs, sizeof imgs) < 0)
        return fail("prefetch: cache path too long");
    if (paths_mkdir_p(arte, 0755) < 0 || paths_mkdir_p(imgs, 0755) < 0)
        return fail("prefetch: create `%s`: %s", arte, strerror(errno));
    snprintf(staging, sizeof staging, "%s/.prefetch-%d", arte, (int)getpid());
    rm_staging(staging);
    if (mkdir(staging, 0700) < 0)
        return fail("prefetch: create `%s`: %s", staging, strerror(errno));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* The manifest, then the bundle, hashed as it comes. */
    char sums_path[PATH_MAX + 80], bundle[PATH_MAX + 80], hex[65], want[65];
    snprintf(sums_path, sizeof sums_path, "%s/SHA256SUMS", staging);
    snprintf(bundle, sizeof bundle, "%s/bundle.tar.zst", staging);
    cleanup_close int sf = open(sums_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cleanup_close int bf = open(bundle, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    char sums[8192] = "";
    int rc = sf < 0 || bf < 0 ? -1 : 0;
    if (rc < 0)
        snprintf(why, sizeof why, "create in `%s`: %s", staging, strerror(errno));
    if (rc == 0)
        rc = fetch(from, "SHA256SUMS", sf, sizeof sums - 1, false, hex, why, sizeof why);
    if (rc == 0) {
        ssize_t r = pread(sf, sums, sizeof sums - 1, 0);
        sums[r > 0 ? r : 0] = '\0';
        if (sums_lookup(sums, name, want) < 0)
            snprintf(why, sizeof why, "%s/SHA256SUMS does not list %s", from, name), rc = -1;
    }
    /* On a terminal: what is fetched, and a progress bar; otherwise only the outcome. */
    bool tty = !quiet && isatty(STDERR_FILENO);
    if (rc == 0 && tty)
        fprintf(stderr, "sbx: prefetch: %s/%s\n", from, name);
    if (rc == 0)
        rc = fetch(from, name, bf, ASSET_MAX * 2, tty, hex, why, sizeof why);
    if (rc == 0 && strcmp(hex, want))
        snprintf(why, sizeof why, "%s: sha256 mismatch (SHA256SUMS says %.12s..., it is %.12s...)",
                 name, want, hex),
            rc = -1;
    asset as[MAX_ASSETS];
    size_t n = 0;
    if (rc == 0)
        rc = unpack(bundle, staging, as, &n, why, sizeof why);
    if (rc < 0) {
        rm_staging(staging);
        return fail("prefetch: %s", why);
    }
    /* All checked: the files first (content-hashed names: one already there is the same), then
     * each image's link, replaced by a rename. */
    unsigned installed = 0;
    for (size_t i = 0; i < n; i++) {
        if (present(cache, imgs, &as[i]))
            continue;
        char from_p[PATH_MAX + 200], to_p[PATH_MAX + 200], link_tmp[PATH_MAX + 200],
            link_p[PATH_MAX + 100];
        snprintf(from_p, sizeof from_p, "%s/%s", staging, as[i].file);
        snprintf(to_p, sizeof to_p, "%s/%s", arte, as[i].file);
        snprintf(link_tmp, sizeof link_tmp, "%s/.%s.%d", imgs, as[i].image, (int)getpid());
        snprintf(link_p, sizeof link_p, "%s/%s", imgs, as[i].image);
        unlink(link_tmp);
        if (rename(from_p, to_p) < 0 || symlink(to_p, link_tmp) < 0 ||
            rename(link_tmp, link_p) < 0) {
            unlink(link_tmp);
            rm_staging(staging);
            return fail("prefetch: install `%s`: %s", as[i].file, strerror(errno));
        }
        installed++;
    }
    rm_staging(staging);
    if (installed && !quiet)
        printf("sbx: prefetch: %u assets installed in %s\n", installed, cache);
    else if (!quiet)
        printf("sbx: prefetch: all %zu assets already present\n", n);
    return 0;
}
