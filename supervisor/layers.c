/* Package layers. A layer is the tree a package set installs into, packed as a squashfs image
 * and attached read-only to the VMs that ask for that set (the agent mounts it on
 * /run/sbx/packages and puts it on PYTHONPATH / NODE_PATH). Its key is the sha256 of everything
 * that decides its content: the language, the base image (its content-hashed file name), the
 * sorted normalised package list and the index URL; so `-p b==1 -p a==1` and `-p a==1 -p b==1`
 * share one.
 *
 * Layout: DIR/<language>-<key16>/{layer.sqfs,meta}, DIR = CACHE/layers. A build writes into
 * DIR/.tmp-<pid>-<n>/ and is renamed into place once meta (key, sha256 and size of the image)
 * is written, so a half-built layer is never seen. Before its first use by this daemon (and
 * whenever the file's size, mtime or inode changed since) the image's sha256 is checked against
 * meta in a child; a layer that fails is removed and built again. Requests for a set being
 * built or checked wait for it (one install per set); the cache is bounded by
 * snapshot_cache_max_bytes (layers plus their memory snapshots), least recently used first, and
 * never evicts a layer a VM or a waiter holds. Unpinned sets ("pandas" without a version) are
 * built for their request under a random name, never reused, and removed once released. */
#include "layers.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "install.h"
#include "packer.h"
#include "cachedir.h"
#include "metrics.h"
#include "paths.h"
#include "remote.h"
#include "snapshot.h"

#define META_MAX (32u << 10)
#define SPECS_TEXT_MAX (PKG_MAX * (PKG_MAX_SPEC + 1) + 1)

typedef enum { L_ABSENT, L_CHECKING, L_BUILDING, L_READY } layer_state;

struct layer_wait {
    layer *l;
    layer_cb cb;
    void *owner;
    bool built;
    struct layer_wait *next;
};

struct layer {
    char name[64];
    char key[65];
    char language[16]; /* python | javascript: the image it was installed in */
    char *specs;       /* canonical specs, space-separated */
    size_t nspecs;
    bool ephemeral;
    layer_state state;
    unsigned refs; /* waiters, VMs and owners holding it */
    uint64_t size;
    uint64_t last_used; /* unix ms */
    char sha256[65];    /* from meta (or the build) */
    bool verified;      /* checked by this daemon, while the file stays as it was then */
    struct stat seen;
    layer_wait *waiters;
    bool deliver; /* answer the waiters from the loop: ready, or failed (fail_why) */
    Sbx__Control__ErrorKind fail_kind;
    bool fail_transient;
    char fail_why[1600]; /* the installer's last lines included */
    install *build;
    hasher *check;
    remote_fetch *fetch;
    uint64_t t_build;
    char staging[PATH_MAX];
    struct layer *next;
};

static layer *layers;
static bool enabled;
static char base[512];
static char why_off[256] = "the cache directory is not set up";
static unsigned tmp_seq;
/* A timer, not a prepare watcher: what the waiters do next (queue a VM) starts prepare watchers
 * of its own, which would not run before the loop slept. */
static ev_timer deliver_soon;

/* ---- files -------------------------------------------------------------------------------- */

/* meta of DIR/name into buf (NUL-terminated); -1 when absent or not ours. */
static int meta_read(const char *name, char *buf, size_t n)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", base, name);
    cleanup_close int dir = open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0)
        return -1;
    cleanup_close int fd = paths_open_read_at(dir, p, "meta", geteuid(), NULL);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, n - 1);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    return 0;
}

static void image_path(const layer *l, char *out, size_t n)
{
    snprintf(out, n, "%s/%s/" LAYER_FILE, base, l->name);
}

/* Whether the image is still the file this daemon checked. */
static bool unchanged(const layer *l)
{
    char p[PATH_MAX];
    struct stat st;
    image_path(l, p, sizeof p);
    return l->verified && lstat(p, &st) == 0 && S_ISREG(st.st_mode) &&
           st.st_ino == l->seen.st_ino && st.st_dev == l->seen.st_dev &&
           st.st_size == l->seen.st_size && st.st_mtim.tv_sec == l->seen.st_mtim.tv_sec &&
           st.st_mtim.tv_nsec == l->seen.st_mtim.tv_nsec && (uint64_t)st.st_size == l->size;
}

static void mark_verified(layer *l)
{
    char p[PATH_MAX];
    image_path(l, p, sizeof p);
    l->verified = lstat(p, &l->seen) == 0;
}

/* A layer's memory snapshots count against the bound too. */
static uint64_t disk_of(const layer *l)
{
    return l->size + snapshot_layer_disk(l->key);
}

/* ---- the table ---------------------------------------------------------------------------- */

static layer *find(const char *name)
{
    for (layer *l = layers; l; l = l->next)
        if (!strcmp(l->name, name))
            return l;
    return NULL;
}

static void unlink_layer(layer *l)
{
    for (layer **p = &layers; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            break;
        }
    free(l->specs);
    free(l);
}

/* A layer known from its meta (a scan, or another daemon sharing the cache built it). */
static layer *load(const char *name)
{
    char meta[META_MAX], v[128];
    if (meta_read(name, meta, sizeof meta) < 0)
        return NULL;
    layer *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    snprintf(l->name, sizeof l->name, "%s", name);
    cachedir_meta_get(meta, "key", l->key, sizeof l->key);
    cachedir_meta_get(meta, "language", l->language, sizeof l->language);
    cachedir_meta_get(meta, "sha256", l->sha256, sizeof l->sha256);
    cachedir_meta_get(meta, "size", v, sizeof v);
    l->size = strtoull(v, NULL, 10);
    cachedir_meta_get(meta, "ephemeral", v, sizeof v);
    l->ephemeral = !strcmp(v, "1");
    char *specs = malloc(SPECS_TEXT_MAX);
    if (specs)
        cachedir_meta_get(meta, "packages", specs, SPECS_TEXT_MAX);
    l->specs = specs;
    for (const char *s = specs; s && *s; s += strcspn(s, " "), s += strspn(s, " "))
        l->nspecs++;
    struct stat st;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", base, name);
    l->last_used = stat(p, &st) == 0 ? (uint64_t)st.st_mtim.tv_sec * 1000u : 0;
    l->state = L_READY;
    l->next = layers;
    layers = l;
    return l;
}

void layer_hold(layer *l)
{
    l->refs++;
}

void layer_release(layer *l)
{
    if (!l || !l->refs)
        return;
    if (--l->refs || !l->ephemeral)
        return;
    /* Built (or being built) for one request, which is done with it. */
    if (l->build)
        install_cancel(l->build);
    if (l->staging[0])
        cachedir_rm(l->staging, "package layers");
    if (l->state == L_READY)
        cachedir_retire(base, l->name, "package layers");
    unlink_layer(l);
}

const char *layer_name(const layer *l)
{
    return l->name;
}
const char *layer_key(const layer *l)
{
    return l->key;
}
const char *layer_sha256(const layer *l)
{
    return l->sha256;
}
bool layer_ephemeral(const layer *l)
{
    return l->ephemeral;
}
const char *layer_path(const layer *l)
{
    static char p[PATH_MAX];
    image_path(l, p, sizeof p);
    return p;
}

/* ---- answering waiters -------------------------------------------------------------------- */

static void touch(layer *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    l->last_used = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", base, l->name);
    utimensat(AT_FDCWD, p, NULL, AT_SYMLINK_NOFOLLOW); /* the next daemon's LRU order */
}

/* Every waiter hears, in order; each success passes the waiter's hold to its owner. */
static void answer(layer *l, bool ok, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    layer_wait *w = l->waiters;
    l->waiters = NULL;
    l->deliver = false;
    if (ok)
        touch(l);
    /* Failure: the waiters' holds go first, so that an unpinned layer is gone before they hear. */
    unsigned held = 0;
    for (layer_wait *x = w; x; x = x->next)
        held++;
    if (!ok)
        l->refs -= held < l->refs ? held : l->refs;
    bool gone = !ok && !l->refs && (l->ephemeral || l->state == L_ABSENT);
    char msg[1600];
    snprintf(msg, sizeof msg, "%s", why ? why : "");
    if (gone)
        unlink_layer(l);
    while (w) {
        layer_wait *next = w->next;
        layer_result r = {.l = ok ? l : NULL,
                          .built = w->built,
                          .kind = kind,
                          .transient = transient,
                          .why = msg};
        layer_cb cb = w->cb;
        void *owner = w->owner;
        free(w);
        cb(owner, &r);
        w = next;
    }
}

static void deliver_cb(EV_P_ ev_timer *t, int revents)
{
    for (layer *l = layers, *next; l; l = next) {
        next = l->next;
        if (!l->deliver)
            continue;
        if (l->fail_why[0]) {
            char why[sizeof l->fail_why];
            snprintf(why, sizeof why, "%s", l->fail_why);
            l->fail_why[0] = '\0';
            answer(l, false, l->fail_kind, l->fail_transient, why);
        } else if (l->state == L_READY) {
            answer(l, true, 0, false, NULL);
        } else if (l->state == L_ABSENT) {
            answer(l, false, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                   "the package layer could not be made");
        }
    }
}

/* Waiters hear from the loop: a request must hold its wait handle before its callback runs. */
static void deliver_later(layer *l)
{
    l->deliver = true;
    if (!ev_is_active(&deliver_soon)) {
        ev_timer_set(&deliver_soon, 0., 0.);
        ev_timer_start(EV_DEFAULT, &deliver_soon);
    }
}

static void fail_later(layer *l, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    l->fail_kind = kind;
    l->fail_transient = transient;
    snprintf(l->fail_why, sizeof l->fail_why, "%s", why);
    deliver_later(l);
}

/* ---- eviction ----------------------------------------------------------------------------- */

static void evict(const layer *keep)
{
    uint64_t total = 0;
    for (layer *l = layers; l; l = l->next)
        if (l->state == L_READY)
            total += disk_of(l);
    while (total > cfg.snapshot_cache_max_bytes) {
        layer *lru = NULL;
        for (layer *l = layers; l; l = l->next)
            if (l != keep && l->state == L_READY && !l->refs && !l->waiters &&
                (!lru || l->last_used < lru->last_used))
                lru = l;
        if (!lru)
            return; /* everything left is in use (or is the one just built) */
        uint64_t d = disk_of(lru);
        total -= d < total ? d : total;
        slog("package layer %s evicted (least recently used; the cache holds %llu of %llu bytes)",
             lru->name, (unsigned long long)total,
             (unsigned long long)cfg.snapshot_cache_max_bytes);
        snapshot_drop_layer(lru->key);
        cachedir_retire(base, lru->name, "package layers");
        unlink_layer(lru);
    }
}

/* ---- building ----------------------------------------------------------------------------- */

static void build_failed(layer *l, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    if (l->staging[0]) {
        cachedir_rm(l->staging, "package layers");
        l->staging[0] = '\0';
    }
    l->build = NULL;
    l->state = L_ABSENT;
    slog("package layer %s: install failed (%s): %.600s", l->name,
         transient ? "transient" : "permanent", why);
    fail_later(l, kind, transient, why);
}

/* Make the staged build the cache's: ours, read-only, meta last, renamed into place. */
static int publish(layer *l, const install_outcome *o, sbx_err *err)
{
    cleanup_close int dir = open(l->staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0)
        return sbx_fail(err, errno, "open `%s`: %s", l->staging, strerror(errno));
    /* The packer's uid owned the directory: nothing of its is trusted but the image's bytes. */
    if (geteuid() == 0 && fchown(dir, 0, 0) < 0)
        return sbx_fail(err, errno, "chown `%s`: %s", l->staging, strerror(errno));
    if (fchmod(dir, 0755) < 0)
        return sbx_fail(err, errno, "chmod `%s`: %s", l->staging, strerror(errno));
    unlinkat(dir, "tree.tar", 0);
    unlinkat(dir, "pack.log", 0);
    /* Non-blocking: a FIFO planted under the name must not hang sbxd; one link only: a hard
     * link to some other file of that uid must not become ours. */
    cleanup_close int fd = openat(dir, LAYER_FILE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        (uint64_t)st.st_size != o->size || (geteuid() == 0 && fchown(fd, 0, 0) < 0) ||
        fchmod(fd, 0444) < 0)
        return sbx_fail(err, EINVAL, "the packed image is missing or not what was hashed");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    cleanup_free char *meta = malloc(META_MAX);
    if (!meta)
        return sbx_fail(err, ENOMEM, "out of memory");
    int len =
        snprintf(meta, META_MAX,
                 "# exec-sandbox package layer (supervisor/layers.c)\nkey = %s\nlanguage = "
                 "%s\nindex = %s\npackages = %s\nsha256 = %s\nsize = %llu\ncreated = %lld\n"
                 "install_ms = %llu\npack_ms = %llu\nephemeral = %d\n",
                 l->key, l->language, install_index_url(l->language), l->specs, o->sha256,
                 (unsigned long long)o->size, (long long)now.tv_sec,
                 (unsigned long long)o->install_ms, (unsigned long long)o->pack_ms, l->ephemeral);
    if (len < 0 || (size_t)len >= META_MAX)
        return sbx_fail(err, E2BIG, "meta over %u bytes", META_MAX);
    if (paths_write_at(dir, l->staging, "meta", meta, (size_t)len, 0444, err) < 0)
        return -1;
    /* Memory snapshots made with an earlier build of this key hold its file system's state;
     * whatever held the name was not valid, or nothing would have been built. */
    snapshot_drop_layer(l->key);
    cachedir_retire(base, l->name, "package layers");
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", base, l->name);
    if (rename(l->staging, p) < 0)
        return sbx_fail(err, errno, "rename into `%s`: %s", p, strerror(errno));
    l->staging[0] = '\0';
    snprintf(l->sha256, sizeof l->sha256, "%s", o->sha256);
    l->size = o->size;
    mark_verified(l);
    return 0;
}

static void built(void *owner, const install_outcome *o)
{
    layer *l = owner;
    l->build = NULL;
    if (!o->ok) {
        build_failed(l, o->kind, o->transient, o->why);
        return;
    }
    sbx_err err = {0};
    if (publish(l, o, &err) < 0) {
        build_failed(l, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, err.msg);
        return;
    }
    l->state = L_READY;
    slog("package layer %s ready after %llu ms (install %llu ms, pack %llu ms; %llu KiB; %zu "
         "packages)",
         l->name, (unsigned long long)(now_ms() - l->t_build), (unsigned long long)o->install_ms,
         (unsigned long long)o->pack_ms, (unsigned long long)o->size >> 10, l->nspecs);
    if (!l->ephemeral) {
        remote_upload(l->key, layer_path(l), l->sha256, l->size);
        evict(l);
    }
    answer(l, true, 0, false, NULL);
}

static void install_it(layer *l);

/* The remote cache answered: a hit is published like a build; anything else builds here. */
static void fetched(void *owner, remote_result r, const char *sha256, uint64_t size)
{
    layer *l = owner;
    l->fetch = NULL;
    if (r == REMOTE_HIT) {
        install_outcome o = {.ok = true, .size = size};
        snprintf(o.sha256, sizeof o.sha256, "%s", sha256);
        sbx_err err = {0};
        if (publish(l, &o, &err) == 0) {
            /* Nobody here installed it. */
            for (layer_wait *w = l->waiters; w; w = w->next)
                w->built = false;
            l->state = L_READY;
            slog("package layer %s ready from the remote cache after %llu ms (%llu KiB)", l->name,
                 (unsigned long long)(now_ms() - l->t_build), (unsigned long long)size >> 10);
            evict(l);
            answer(l, true, 0, false, NULL);
            return;
        }
        slog("package layer %s: the remote cache's copy: %s; building it here", l->name, err.msg);
    }
    /* Whatever the download left is not trusted. */
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/" LAYER_FILE, l->staging);
    unlink(p);
    install_it(l);
}

static void build(layer *l)
{
    l->state = L_BUILDING;
    l->verified = false;
    l->t_build = now_ms();
    snprintf(l->staging, sizeof l->staging, "%s/.tmp-%d-%u", base, (int)getpid(), ++tmp_seq);
    if (mkdir(l->staging, 0700) < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "create `%s`: %s", l->staging, strerror(errno));
        l->staging[0] = '\0';
        build_failed(l, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, why);
        return;
    }
    /* Built once per fleet: another host may have it (never an unpinned set). */
    if (!l->ephemeral && (l->fetch = remote_fetch_start(l->key, l->staging, fetched, l)))
        return;
    install_it(l);
}

static void install_it(layer *l)
{
    sbx_err err = {0};
    /* The specs, one string each, for the installer. */
    const char *argv[PKG_MAX];
    char buf[SPECS_TEXT_MAX];
    snprintf(buf, sizeof buf, "%s", l->specs);
    size_t n = 0;
    for (char *s = strtok(buf, " "); s && n < PKG_MAX; s = strtok(NULL, " "))
        argv[n++] = s;
    slog("package layer %s: installing %zu packages (%s) from %s", l->name, n, l->specs,
         install_index_url(l->language));
    l->build = install_start(l->language, argv, n, l->staging, built, l, &err);
    if (!l->build)
        build_failed(l, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true, err.msg);
}

static void checked(void *owner, bool ok, const char *sha256, uint64_t size)
{
    layer *l = owner;
    l->check = NULL;
    const char *why = !ok                         ? "its image cannot be read"
                      : size != l->size           ? "its image's size differs from meta's"
                      : strcmp(sha256, l->sha256) ? "its image's sha256 differs from meta's"
                                                  : NULL;
    if (!why) {
        mark_verified(l);
        l->state = L_READY;
        answer(l, true, 0, false, NULL);
        return;
    }
    slog("package layer %s is not usable (%s); removed, building it again", l->name, why);
    snapshot_drop_layer(l->key);
    cachedir_retire(base, l->name, "package layers");
    /* The first waiter's request now installs it. */
    if (l->waiters)
        l->waiters->built = true;
    build(l);
}

static void check(layer *l)
{
    sbx_err err = {0};
    char p[PATH_MAX];
    image_path(l, p, sizeof p);
    l->state = L_CHECKING;
    l->check = hash_file(p, checked, l, &err);
    if (!l->check) {
        l->state = L_READY;
        fail_later(l, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, err.msg);
    }
}

/* ---- what requests call ------------------------------------------------------------------- */

/* The key of a set and the layer's name. */
static int make_key(const char *lang, const char *specs, const char *image, char key[65])
{
    cleanup_free char *text = malloc(SPECS_TEXT_MAX + 2048);
    if (!text)
        return -1;
    int len = snprintf(text, SPECS_TEXT_MAX + 2048,
                       "sbx package layer 1\nlanguage=%s\nimage=%s\nindex=%s\npackages=%s\n", lang,
                       image, install_index_url(lang), specs);
    unsigned char md[32];
    if (len < 0 || EVP_Digest(text, (size_t)len, md, NULL, EVP_sha256(), NULL) != 1)
        return -1;
    sbx_hex(md, 32, key);
    return 0;
}

layer_wait *layer_acquire(const char *language, const pkg_spec *specs, size_t n, layer_cb cb,
                          void *owner, bool *installing, sbx_err *err)
{
    *installing = false;
    if (!enabled)
        return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL,
                        "packages are off in this daemon: %s", why_off),
               NULL;
    pkg_lang pl;
    if (pkg_lang_of(language, &pl, err) < 0) {
        err->code = SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG;
        return NULL;
    }
    const char *lang = pl == PKG_PYTHON ? "python" : "javascript";
    char hosts[2][256];
    size_t nh;
    if (install_index_hosts(lang, hosts, &nh, err) < 0) {
        err->code = SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL;
        return NULL;
    }
    char kernel[PATH_MAX], initrd[PATH_MAX], rootfs[PATH_MAX], image[PATH_MAX];
    if (assets_resolve(lang, kernel, initrd, rootfs, sizeof kernel, err) < 0) {
        err->code = SBX__CONTROL__ERROR_KIND__ERROR_ASSET;
        return NULL;
    }
    if (!realpath(rootfs, image))
        snprintf(image, sizeof image, "%s", rootfs);
    const char *img = strrchr(image, '/') ? strrchr(image, '/') + 1 : image;
    cleanup_free char *text = malloc(SPECS_TEXT_MAX);
    if (!text)
        return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, "out of memory"), NULL;
    size_t used = 0;
    bool pinned = true;
    for (size_t i = 0; i < n; i++) {
        char one[PKG_MAX_SPEC + 1];
        pkg_format(pl, &specs[i], one, sizeof one);
        used += (size_t)snprintf(text + used, SPECS_TEXT_MAX - used, "%s%s", i ? " " : "", one);
        pinned &= specs[i].version[0] != '\0';
    }
    /* Exact versions only: a dist-tag (npm's `latest`) moves, so it is not cached either. */
    for (size_t i = 0; i < n; i++)
        pinned &= specs[i].version[0] >= '0' && specs[i].version[0] <= '9';
    char key[65], name[64];
    if (make_key(lang, text, img, key) < 0)
        return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, "out of memory"), NULL;
    if (pinned) {
        snprintf(name, sizeof name, "%s-%.16s", lang, key);
    } else {
        /* Never shared: a name of its own, and a key no snapshot will match. */
        unsigned char r[8];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, "getrandom: %s",
                            strerror(errno)),
                   NULL;
        char hex[17];
        sbx_hex(r, sizeof r, hex);
        snprintf(name, sizeof name, "%s-tmp-%s", lang, hex);
        memcpy(key + 48, hex, 16);
    }
    layer *l = find(name);
    if (!l && pinned)
        l = load(name);
    if (l && (!l->key[0] || strcmp(l->key, key))) {
        /* Another key under this name (a different daemon's index?): not ours to use. */
        if (l->refs || l->state != L_READY)
            return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL,
                            "package layer %s: a layer of another key is in use under its name",
                            name),
                   NULL;
        cachedir_retire(base, l->name, "package layers");
        unlink_layer(l);
        l = NULL;
    }
    layer_wait *w = calloc(1, sizeof *w);
    if (!l && w) {
        l = calloc(1, sizeof *l);
        if (l && !(l->specs = strdup(text))) {
            free(l);
            l = NULL;
        }
        if (l) {
            snprintf(l->name, sizeof l->name, "%s", name);
            snprintf(l->key, sizeof l->key, "%s", key);
            snprintf(l->language, sizeof l->language, "%s", lang);
            l->nspecs = n;
            l->ephemeral = !pinned;
            l->state = L_ABSENT;
            l->next = layers;
            layers = l;
        }
    }
    if (!l || !w) {
        free(w);
        return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, "out of memory"), NULL;
    }
    /* A layer known from meta builds again from what made its key, not from meta's words. */
    if (l->state != L_BUILDING && (!l->specs || strcmp(l->specs, text))) {
        char *copy = strdup(text);
        if (!copy) {
            free(w);
            return sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, "out of memory"), NULL;
        }
        free(l->specs);
        l->specs = copy;
        l->nspecs = n;
        snprintf(l->language, sizeof l->language, "%s", lang);
    }
    w->l = l;
    w->cb = cb;
    w->owner = owner;
    layer_wait **tail = &l->waiters;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
    l->refs++;
    if (l->fail_why[0])
        return w; /* a failure is about to be told: this request hears it too */
    switch (l->state) {
    case L_READY:
        if (unchanged(l))
            deliver_later(l);
        else
            check(l);
        break;
    case L_ABSENT:
        w->built = true;
        *installing = true;
        build(l);
        break;
    case L_BUILDING:
        *installing = true;
        break;
    case L_CHECKING:
        break;
    }
    return w;
}

void layer_wait_cancel(layer_wait *w)
{
    layer *l = w->l;
    for (layer_wait **p = &l->waiters; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    /* An install the waiter started goes on for whoever asks next. */
    if (w->built && l->waiters)
        l->waiters->built = true;
    free(w);
    layer_release(l);
}

/* ---- start, status, stop ------------------------------------------------------------------ */

void layers_init(void)
{
    ev_timer_init(&deliver_soon, deliver_cb, 0., 0.);
    int r = snprintf(base, sizeof base, "%s/layers", cfg.cache_dir);
    if (r < 0 || (size_t)r >= sizeof base - 100) {
        snprintf(why_off, sizeof why_off, "the cache directory's path is too long");
        slog("warning: package layers off: %s", why_off);
        return;
    }
    sbx_err err = {0};
    int dir = paths_dir_open(base, geteuid(), 0700, &err);
    if (dir < 0) {
        snprintf(why_off, sizeof why_off, "%.200s", err.msg);
        slog("warning: package layers off: %s", err.msg);
        return;
    }
    close(dir);
    char tool[PATH_MAX];
    if (paths_which("tar2sqfs", tool, sizeof tool) < 0) {
        snprintf(why_off, sizeof why_off,
                 "tar2sqfs is not installed (Debian: squashfs-tools-ng; scripts/setup-host.sh)");
        slog("warning: package layers off: %s", why_off);
        return;
    }
    cachedir_clean(base, "package layers");
    DIR *d = opendir(base);
    struct dirent *e;
    uint64_t total = 0;
    unsigned count = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        layer *l = load(e->d_name);
        if (!l || l->ephemeral || !l->key[0]) {
            if (l)
                unlink_layer(l);
            cachedir_retire(base, e->d_name, "package layers");
            continue;
        }
        total += l->size;
        count++;
    }
    if (d)
        closedir(d);
    enabled = true;
    slog("package layers: in %s (%u, %llu MiB of %llu MiB)", base, count,
         (unsigned long long)total >> 20, (unsigned long long)cfg.snapshot_cache_max_bytes >> 20);
}

#define STATUS_MAX 32

void layers_status(Sbx__Control__StatusReply *s)
{
    static Sbx__Control__LayerInfo info[STATUS_MAX];
    static Sbx__Control__LayerInfo *ptrs[STATUS_MAX];
    static char *specs[STATUS_MAX][PKG_MAX];
    static char buf[STATUS_MAX][SPECS_TEXT_MAX];
    s->layer_cache_max_bytes = cfg.snapshot_cache_max_bytes;
    s->layer_cache_bytes = 0;
    for (layer *l = layers; l; l = l->next)
        if (l->state == L_READY)
            s->layer_cache_bytes += disk_of(l);
    /* Most recently used first: a selection, at most STATUS_MAX. */
    const layer *picked[STATUS_MAX];
    size_t n = 0;
    for (;;) {
        const layer *best = NULL;
        for (const layer *l = layers; l; l = l->next) {
            bool taken = false;
            for (size_t i = 0; i < n && !taken; i++)
                taken = picked[i] == l;
            if (!taken && l->state != L_ABSENT && (!best || l->last_used > best->last_used))
                best = l;
        }
        if (!best || n == STATUS_MAX)
            break;
        picked[n++] = best;
    }
    for (size_t i = 0; i < n; i++) {
        const layer *l = picked[i];
        Sbx__Control__LayerInfo *x = &info[i];
        sbx__control__layer_info__init(x);
        x->name = (char *)l->name;
        x->language = (char *)l->language;
        x->state = l->state == L_BUILDING   ? "building"
                   : l->state == L_CHECKING ? "checking"
                                            : "ready";
        x->size_bytes = l->state == L_READY ? l->size : 0;
        x->last_used_unix_ms = l->last_used;
        snprintf(buf[i], sizeof buf[i], "%s", l->specs ? l->specs : "");
        size_t k = 0;
        for (char *t = strtok(buf[i], " "); t && k < PKG_MAX; t = strtok(NULL, " "))
            specs[i][k++] = t;
        x->packages = specs[i];
        x->n_packages = k;
        ptrs[i] = x;
    }
    s->layers = ptrs;
    s->n_layers = n;
}

void layers_stop(void)
{
    ev_timer_stop(EV_DEFAULT, &deliver_soon);
    for (layer *l = layers; l; l = l->next) {
        if (l->build)
            install_cancel(l->build);
        if (l->check)
            hash_cancel(l->check);
        if (l->fetch)
            remote_fetch_cancel(l->fetch);
        l->build = NULL;
        l->check = NULL;
        l->fetch = NULL;
    }
    remote_stop();
}

void layers_shutdown(void)
{
    while (layers) {
        layer *l = layers;
        if (l->staging[0])
            cachedir_rm(l->staging, "package layers");
        while (l->waiters) {
            layer_wait *w = l->waiters;
            l->waiters = w->next;
            free(w);
        }
        if (l->ephemeral)
            cachedir_retire(base, l->name, "package layers");
        layers = l->next;
        free(l->specs);
        free(l);
    }
}
