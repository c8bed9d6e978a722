/* Memory snapshots. For each set of inputs (language, memory size, accelerator, kernel, initramfs
 * and root image, the QEMU and sbx-vmworker binaries, the protocol version) a template VM boots
 * once, warms its language's REPL and saves guest RAM (a file) and device state (a small file);
 * from then on a VM for those inputs maps the RAM file copy-on-write and resumes where the
 * template stood (vmworker: start_vm). Each restored VM is still fresh and its own: the RAM file
 * is never written once published, and the agent takes a new RNG seed and the host's clock from
 * the worker's Hello. Runs keep booting cold while a template is built.
 *
 * Layout: DIR/<language>-<memory>m-<accel>-<key16>/{mem,state,meta}, DIR being the
 * snapshot_cache_dir setting when it was set, else CACHE/snapshots. A template writes into
 * DIR/.tmp-<pid>-<n>/; sbxd writes meta last and renames the directory into place, so a
 * half-written snapshot is never seen, and a published one is never changed (a bad one is
 * renamed away and removed, and a VM already restoring from it fails over to a cold boot).
 * meta names the full key and the host's boot id: the files are not fsync'ed (the RAM file is
 * hundreds of MB and sbxd has one thread), so they are trusted only until the next reboot. */
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "layers.h"
#include "cachedir.h"
#include "metrics.h"
#include "paths.h"
#include "snapshot.h"
#include "spawn.h"

/* How long a restore may take before the worker boots cold instead: ~0.1 s is usual under TCG,
 * so this only trips on a broken snapshot or a host that is very busy. */
#ifndef SNAP_RESTORE_TIMEOUT_MS
#define SNAP_RESTORE_TIMEOUT_MS 5000
#endif
/* Restores given up for time in a row before the snapshot itself is suspected. */
#define SNAP_SLOW_STRIKES 3
/* After a failed build or a bad snapshot: the first retry is immediate, then 30 s doubling. */
#define SNAP_RETRY_MS 30000u
#define SNAP_RETRY_MAX_MS (30u * 60u * 1000u)
#define SNAP_META_MAX 4096
#define SNAP_STATE_MAX (64u << 20)
/* The reference's default for snapshot_cache_dir: a path in the shared /tmp, no place for the
 * RAM images of VMs (anyone could plant one there first). Left at it, snapshots go to the
 * private cache directory instead. */
#define SNAP_REFERENCE_DIR "/tmp/exec-sandbox-cache"

typedef struct snap {
    char name[128]; /* its directory in the cache */
    char language[16];
    uint32_t memory_mb;
    bool nic;      /* of VMs with a NIC (any policy: it lives outside the guest) */
    layer *layer;  /* of VMs with this package layer (held while a template is wanted or built) */
    bool want;     /* a template should be queued */
    bool building; /* a template job exists */
    bool saved;    /* ...and has published its snapshot */
    char staging[PATH_MAX];
    char built_name[128], built_key[65]; /* what the template job actually builds */
    unsigned failures;                   /* failed builds and bad snapshots in a row */
    uint64_t retry_at;
    unsigned slow; /* restores given up for time in a row */
    uint64_t t_queued;
    struct snap *next;
} snap;

static snap *snaps;
static bool enabled;
static char base[512];
static char boot_id[64];
static ev_timer kick;
static unsigned tmp_seq;

static const vm_owner_ops template_ops;

/* ---- files -------------------------------------------------------------------------------- */

/* What identifies a file for the key: its resolved path, size, mtime and inode (the asset
 * names carry content hashes, the binaries do not). */
static void file_id(const char *path, char *out, size_t n)
{
    struct stat st;
    if (stat(path, &st) < 0)
        snprintf(out, n, "%s:missing", path);
    else
        snprintf(out, n, "%s:%lld:%lld.%09ld:%llu", path, (long long)st.st_size,
                 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (unsigned long long)st.st_ino);
}

/* The worker binary sched.c starts (it writes the QEMU command line a snapshot depends on). */
static void worker_id(char *out, size_t n)
{
    char exe[600];
    if (spawn_worker_path(exe, sizeof exe) < 0)
        snprintf(exe, sizeof exe, "sbx-vmworker");
    file_id(exe, out, n);
}

/* How a layer shows in the names of its snapshots. */
#define LAYER_TAG_FMT "-pkg%.12s"

/* key: sha256 (hex) of every input; name: the directory, readable and unique per key. */
static int make_key(const Sbx__Worker__VmConfig *vc, const char *language, const layer *l,
                    char key[65], char *name, size_t n)
{
    char ids[5][900], text[5000];
    file_id(vc->kernel, ids[0], sizeof ids[0]);
    file_id(vc->initrd, ids[1], sizeof ids[1]);
    file_id(vc->rootfs, ids[2], sizeof ids[2]);
    file_id(vc->qemu, ids[3], sizeof ids[3]);
    worker_id(ids[4], sizeof ids[4]);
    bool nic = vc->net_mode && *vc->net_mode;
    int len = snprintf(text, sizeof text,
                       "sbx memory snapshot 1\nlanguage=%s\nmemory_mb=%u\naccel=%s\nkernel=%s\n"
                       "initrd=%s\nrootfs=%s\nqemu=%s\nworker=%s\nprotocol=%d\nnic=%d\n"
                       "layer=%s:%s\nguest_arch=%s\n",
                       language, vc->memory_mb, vc->accel, ids[0], ids[1], ids[2], ids[3], ids[4],
                       SBX_PROTOCOL_VERSION, nic, l ? layer_key(l) : "", l ? layer_sha256(l) : "",
                       vc->guest_arch);
    if (len < 0 || (size_t)len >= sizeof text)
        return -1;
    unsigned char md[32];
    unsigned mdlen = 0;
    if (EVP_Digest(text, (size_t)len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    sbx_hex(md, 32, key);
    char tag[32] = "";
    if (l)
        snprintf(tag, sizeof tag, LAYER_TAG_FMT, layer_key(l));
    /* Another architecture's guests are named as such: daemons of both may share a cache. */
    bool x86 = !vc->guest_arch || !*vc->guest_arch || !strcmp(vc->guest_arch, "x86_64");
    snprintf(name, n, "%s%s%s-%um-%s%s%s-%.16s", language, x86 ? "" : "-",
             x86 ? "" : vc->guest_arch, vc->memory_mb, vc->accel, nic ? "-nic" : "", tag, key);
    return 0;
}

/* A regular file we own that nobody else may write, of the given size (or any, for 0). */
static bool file_ok(const char *dir, const char *f, uint64_t size)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, f);
    struct stat st;
    return lstat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
           !(st.st_mode & 022) && (!size || (uint64_t)st.st_size == size);
}

/* sha256 (hex) of a small file: the state file is read whole on every restore, so checking it
 * on every lookup costs little (~60 KB). -1 if unreadable or over max. */
static int file_sha256(const char *path, size_t max, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    struct stat st;
    cleanup_free unsigned char *buf = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max ||
        !(buf = malloc((size_t)st.st_size + 1))) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    unsigned char md[32];
    unsigned mdlen = 0;
    if (got != (size_t)st.st_size || EVP_Digest(buf, got, md, &mdlen, EVP_sha256(), NULL) != 1)
        return -1;
    sbx_hex(md, 32, hex);
    return 0;
}

/* Everything in path agrees with key: ours, complete, made since this boot, sizes as noted.
 * 1 valid, 0 absent, -1 present but not valid (*why says how). */
static int snap_valid(const char *path, const char *key, uint32_t memory_mb, const char **why)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0;
    *why = "not a directory of ours that only we can write";
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022))
        return -1;
    char p[PATH_MAX], meta[SNAP_META_MAX + 1], v[128];
    snprintf(p, sizeof p, "%s/meta", path);
    *why = "meta is missing or unreadable";
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, meta, SNAP_META_MAX);
    close(fd);
    if (n <= 0 || !file_ok(path, "meta", 0))
        return -1;
    meta[n] = '\0';
    cachedir_meta_get(meta, "key", v, sizeof v);
    *why = "made from other inputs";
    if (strcmp(v, key))
        return -1;
    cachedir_meta_get(meta, "boot_id", v, sizeof v);
    *why = "made before the host last booted (its files were never synced to disk)";
    if (!boot_id[0] || strcmp(v, boot_id))
        return -1;
    cachedir_meta_get(meta, "state_bytes", v, sizeof v);
    unsigned long long state = strtoull(v, NULL, 10);
    *why = "the state file is missing, or its size differs from meta's";
    if (!state || !file_ok(path, "state", state))
        return -1;
    char sum[65];
    snprintf(p, sizeof p, "%s/state", path);
    cachedir_meta_get(meta, "state_sha256", v, sizeof v);
    *why = "the state file's sha256 differs from meta's";
    if (file_sha256(p, SNAP_STATE_MAX, sum) < 0 || strcmp(sum, v))
        return -1;
    *why = "the RAM file is missing, or its size is not the VM's memory size";
    if (!file_ok(path, "mem", (uint64_t)memory_mb << 20))
        return -1;
    return 1;
}

/* Whether two snapshot names differ only in their key (the last part): the same kind of VM
 * (language, memory, accelerator, NIC, layer) made from other inputs. */
static bool same_kind(const char *a, const char *b)
{
    const char *da = strrchr(a, '-'), *db = strrchr(b, '-');
    return da && db && da - a == db - b && !strncmp(a, b, (size_t)(da - a));
}

/* Snapshots of the same kind as keep made from other assets or binaries are left over from
 * before an upgrade (or belong to another daemon sharing the cache: those are spared while
 * recent). Those of an earlier boot are never valid again (keep NULL: only those). */
#define SNAP_SIBLING_MAX_AGE_S 3600
static void prune(const char *keep)
{
    DIR *d = opendir(base);
    if (!d)
        return;
    struct dirent *e;
    time_t now = time(NULL);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || (keep && !strcmp(e->d_name, keep)))
            continue;
        char p[PATH_MAX], meta[SNAP_META_MAX + 1], v[128] = "";
        snprintf(p, sizeof p, "%s/%s/meta", base, e->d_name);
        struct stat st;
        int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        ssize_t n = fd >= 0 ? read(fd, meta, SNAP_META_MAX) : -1;
        if (fd >= 0 && fstat(fd, &st) < 0)
            st.st_mtime = 0;
        if (fd >= 0)
            close(fd);
        if (n > 0) {
            meta[n] = '\0';
            cachedir_meta_get(meta, "boot_id", v, sizeof v);
        }
        bool stale = n <= 0 || strcmp(v, boot_id);
        if (stale ||
            (keep && same_kind(e->d_name, keep) && now - st.st_mtime > SNAP_SIBLING_MAX_AGE_S))
            cachedir_retire(base, e->d_name, "memory snapshots");
    }
    closedir(d);
}

/* ---- the table of known snapshots --------------------------------------------------------- */

static snap *snap_get(const char *name)
{
    for (snap *s = snaps; s; s = s->next)
        if (!strcmp(s->name, name))
            return s;
    snap *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->next = snaps;
    snaps = s;
    return s;
}

static void snap_failed(snap *s)
{
    uint64_t wait = 0;
    if (++s->failures > 1) {
        wait = SNAP_RETRY_MS;
        for (unsigned i = 2; i < s->failures && wait < SNAP_RETRY_MAX_MS; i++)
            wait *= 2;
        if (wait > SNAP_RETRY_MAX_MS)
            wait = SNAP_RETRY_MAX_MS;
    }
    s->retry_at = now_ms() + wait;
}

/* A layer's snapshot holds its layer only while a template is wanted or built. */
static void snap_drop_layer_ref(snap *s)
{
    layer_release(s->layer);
    s->layer = NULL;
}

/* Queue the templates that were asked for (from the loop, never from inside the scheduler). */
static void kick_cb(EV_P_ ev_timer *w, int revents)
{
    for (snap *s = snaps; s; s = s->next) {
        if (!s->want || s->building)
            continue;
        s->want = false;
        s->building = true; /* before: a dispatch that fails at once calls gone() inside */
        s->saved = false;
        s->t_queued = now_ms();
        slog("memory snapshot %s: building a template in the background", s->name);
        job *t = sched_open_vm(s->language, s->memory_mb, &template_ops, s);
        if (!t) {
            s->building = false;
            snap_failed(s);
            snap_drop_layer_ref(s);
            continue;
        }
        if (s->nic)
            sched_vm_set_nic_only(t);
        if (s->layer)
            sched_vm_set_layer(t, s->layer);
    }
}

/* ---- template jobs ------------------------------------------------------------------------ */

static void template_prepare(Sbx__Worker__VmConfig *vc, snap *s)
{
    if (make_key(vc, s->language, s->layer, s->built_key, s->built_name, sizeof s->built_name) < 0)
        s->built_name[0] = '\0';
    snprintf(s->staging, sizeof s->staging, "%s/.tmp-%d-%u", base, (int)getpid(), ++tmp_seq);
    if (mkdir(s->staging, 0700) < 0 ||
        (!vc->userns && chown(s->staging, vc->vm_uid, vc->vm_gid) < 0)) {
        slog("memory snapshot %s: create `%s`: %s", s->name, s->staging, strerror(errno));
        rmdir(s->staging);
        s->staging[0] = '\0';
    }
    /* Without a staging directory the worker refuses the config, and the build fails. */
    vc->start_mode = "template";
    vc->language = s->language;
    vc->snapshot_dir = s->staging;
    vc->session = false;
}

/* A regular file the template wrote: ours now, read-only for everyone (restored VMs run as
 * their own uids and read it through their jail's bind mount). */
static int seal(const char *dir, const char *f, uint64_t want, uint64_t max, uint64_t *size)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, f);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    struct stat st;
    int rc = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
                     (!want || (uint64_t)st.st_size == want) && (uint64_t)st.st_size <= max &&
                     (geteuid() != 0 || fchown(fd, 0, 0) == 0) && fchmod(fd, 0444) == 0
                 ? 0
                 : -1;
    *size = (uint64_t)st.st_size;
    close(fd);
    return rc;
}

static void publish(snap *s, const Sbx__Worker__SnapshotSaved *sv)
{
    uint64_t mem_bytes = 0, state_bytes = 0;
    uint64_t mem_want = (uint64_t)s->memory_mb << 20;
    if (!s->staging[0] || !s->built_name[0] ||
        seal(s->staging, "mem", mem_want, mem_want, &mem_bytes) < 0 ||
        seal(s->staging, "state", 0, SNAP_STATE_MAX, &state_bytes) < 0) {
        slog("warning: memory snapshot %s: the template's files are missing or wrong", s->name);
        return;
    }
    char p[PATH_MAX], sum[65];
    snprintf(p, sizeof p, "%s/state", s->staging);
    if (file_sha256(p, SNAP_STATE_MAX, sum) < 0) {
        slog("warning: memory snapshot %s: read the template's state file: %s", s->name,
             strerror(errno));
        return;
    }
    /* The staging directory still belongs to the template VM's uid here: meta goes in through
     * its fd, as a new file that nothing planted there can redirect. */
    char meta[SNAP_META_MAX];
    int len =
        snprintf(meta, sizeof meta,
                 "# exec-sandbox memory snapshot (supervisor/snapshot.c)\nkey = %s\nlanguage = %s\n"
                 "memory_mb = %u\nboot_id = %s\nmem_bytes = %llu\nstate_bytes = %llu\n"
                 "state_sha256 = %s\nqemu_version = %.200s\ncreated = %lld\nboot_ms = %llu\n"
                 "warm_ms = %llu\nsave_ms = %llu\n",
                 s->built_key, s->language, s->memory_mb, boot_id, (unsigned long long)mem_bytes,
                 (unsigned long long)state_bytes, sum, sv->qemu_version ? sv->qemu_version : "",
                 (long long)time(NULL), (unsigned long long)sv->boot_ms,
                 (unsigned long long)sv->warm_ms, (unsigned long long)sv->save_ms);
    sbx_err err = {0};
    cleanup_close int dir = open(s->staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (len < 0 || (size_t)len >= sizeof meta) {
        slog("warning: memory snapshot %s: meta over %d bytes", s->name, SNAP_META_MAX);
        return;
    }
    if (dir < 0 || paths_write_at(dir, s->staging, "meta", meta, (size_t)len, 0444, &err) < 0) {
        slog("warning: memory snapshot %s: write meta: %s", s->name,
             dir < 0 ? strerror(errno) : err.msg);
        return;
    }
    if ((geteuid() == 0 && chown(s->staging, 0, 0) < 0) || chmod(s->staging, 0755) < 0)
        return;
    /* Whatever held this name was not valid (or no template would have been built). */
    cachedir_retire(base, s->built_name, "memory snapshots");
    snprintf(p, sizeof p, "%s/%s", base, s->built_name);
    if (rename(s->staging, p) < 0) {
        slog("warning: memory snapshot %s: rename into `%s`: %s", s->name, p, strerror(errno));
        return;
    }
    s->staging[0] = '\0';
    s->saved = true;
    s->failures = 0;
    s->slow = 0;
    prune(s->built_name);
    if (!s->nic && !s->layer)
        pool_snapshot_ready(s->language, s->memory_mb);
    struct stat st;
    snprintf(p, sizeof p, "%s/%s/mem", base, s->built_name);
    unsigned long long disk = stat(p, &st) == 0 ? (unsigned long long)st.st_blocks * 512u : 0;
    slog("memory snapshot %s ready after %llu ms (template boot %llu ms, warm %llu ms, save %llu "
         "ms; QEMU %s; RAM file %llu MiB used of %u, state %llu KiB)",
         s->built_name, (unsigned long long)(now_ms() - s->t_queued),
         (unsigned long long)sv->boot_ms, (unsigned long long)sv->warm_ms,
         (unsigned long long)sv->save_ms, sv->qemu_version ? sv->qemu_version : "?", disk >> 20,
         s->memory_mb, (unsigned long long)state_bytes >> 10);
}

static void template_booted(void *owner, const Sbx__Worker__Booted *b) {}

static void template_frame(void *owner, Sbx__Worker__FromWorker *m)
{
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_SNAPSHOT_SAVED)
        publish(owner, m->snapshot_saved);
}

static void template_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient,
                          const char *why)
{
    snap *s = owner;
    s->building = false;
    snap_drop_layer_ref(s);
    if (s->staging[0]) {
        cachedir_rm(s->staging, "memory snapshots");
        s->staging[0] = '\0';
    }
    if (s->saved)
        return;
    snap_failed(s);
    uint64_t now = now_ms();
    slog(
        "warning: memory snapshot %s: the template failed (%s); runs boot cold, next try in %llu s",
        s->name, why && *why ? why : "no reason given",
        (unsigned long long)(s->retry_at > now ? (s->retry_at - now) / 1000 : 0));
}

static const vm_owner_ops template_ops = {
    .booted = template_booted, .frame = template_frame, .gone = template_gone, .background = true};

/* ---- what sched.c calls ------------------------------------------------------------------- */

void snapshot_init(void)
{
    ev_timer_init(&kick, kick_cb, 0., 0.);
    if (!cfg.snapshots) {
        slog("memory snapshots: off (snapshots = false); every VM boots cold");
        return;
    }
    int r;
    if (cfg.snapshot_cache_dir[0] && strcmp(cfg.snapshot_cache_dir, SNAP_REFERENCE_DIR))
        r = snprintf(base, sizeof base, "%s", cfg.snapshot_cache_dir);
    else
        r = snprintf(base, sizeof base, "%s/snapshots", cfg.cache_dir);
    if (r < 0 || (size_t)r >= sizeof base - 200) {
        slog("warning: memory snapshots off: directory path too long");
        return;
    }
    sbx_err err = {0};
    int dir = paths_dir_open(base, geteuid(), 0700, &err);
    if (dir < 0) {
        slog("warning: memory snapshots off: %s (snapshot_cache_dir must be a directory of uid %u "
             "that others cannot write)",
             err.msg, (unsigned)geteuid());
        return;
    }
    close(dir);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, boot_id, sizeof boot_id - 1) : -1;
    if (fd >= 0)
        close(fd);
    boot_id[n > 0 ? n : 0] = '\0';
    boot_id[strcspn(boot_id, "\n")] = '\0';
    if (!boot_id[0]) {
        slog("warning: memory snapshots off: no boot id in /proc");
        return;
    }
    cachedir_clean(base, "memory snapshots");
    prune(NULL);
    enabled = true;
    slog("memory snapshots: on, in %s", base);
}

void snapshot_prepare(Sbx__Worker__VmConfig *vc, const char *language, layer *l, bool probe,
                      const vm_owner_ops *ops, void *owner, char *dir, size_t n)
{
    dir[0] = '\0';
    if (ops == &template_ops) {
        template_prepare(vc, owner);
        return;
    }
    /* For the worker: packed by job_dispatch before anything else runs. */
    static char path[PATH_MAX];
    char key[65], name[128];
    if (!enabled || probe || (l && layer_ephemeral(l)) ||
        make_key(vc, language, l, key, name, sizeof name) < 0)
        return;
    snprintf(path, sizeof path, "%s/%s", base, name);
    const char *why = "";
    struct stat st;
    int v = snap_valid(path, key, vc->memory_mb, &why);
    /* dir, for snapshot_booted: the directory's inode too, so that a failure reported late
     * never removes a newer snapshot published under the same name meanwhile. */
    if (v > 0 && lstat(path, &st) == 0 &&
        (size_t)snprintf(dir, n, "%llu %s", (unsigned long long)st.st_ino, path) < n) {
        vc->start_mode = "restore";
        vc->snapshot_dir = path;
        vc->restore_timeout_ms = SNAP_RESTORE_TIMEOUT_MS;
        metrics_snapshot(true);
        return;
    }
    metrics_snapshot(false);
    dir[0] = '\0';
    if (v < 0) {
        slog("warning: memory snapshot %s is not usable (%s); removed, runs boot cold", name, why);
        cachedir_retire(base, name, "memory snapshots");
    }
    snap *s = snap_get(name);
    if (!s || s->building || s->want || now_ms() < s->retry_at)
        return;
    snprintf(s->language, sizeof s->language, "%s", language);
    s->memory_mb = vc->memory_mb;
    s->nic = vc->net_mode && *vc->net_mode;
    if (l && s->layer != l) {
        layer_release(s->layer);
        layer_hold(l);
        s->layer = l;
    }
    s->want = true;
    ev_timer_stop(EV_DEFAULT, &kick);
    ev_timer_set(&kick, 0., 0.);
    ev_timer_start(EV_DEFAULT, &kick);
}

void snapshot_booted(const char *dir, const Sbx__Worker__Booted *b)
{
    unsigned long long ino = strtoull(dir, NULL, 10);
    const char *path = strchr(dir, ' ');
    if (!path)
        return;
    path++;
    const char *name = strrchr(path, '/');
    name = name ? name + 1 : path;
    snap *s = snap_get(name);
    if (!b->restore_error || !b->restore_error[0]) {
        if (s)
            s->slow = 0;
        return;
    }
    slog("warning: memory snapshot %s: restore failed, the VM booted cold instead: %.400s", name,
         b->restore_error);
    if (b->restore_timed_out && s && ++s->slow < SNAP_SLOW_STRIKES)
        return;
    struct stat st;
    if (lstat(path, &st) < 0 || st.st_ino != ino)
        return; /* removed already, perhaps rebuilt since */
    /* The snapshot itself is broken (or always too slow): remove it; the next run that misses
     * it queues a new template. */
    cachedir_retire(base, name, "memory snapshots");
    if (s) {
        s->slow = 0;
        snap_failed(s);
    }
    slog("memory snapshot %s removed; it will be built again", name);
}

#define STATUS_MAX 32

void snapshot_status(Sbx__Control__StatusReply *s)
{
    static Sbx__Control__SnapshotInfo info[STATUS_MAX];
    static Sbx__Control__SnapshotInfo *ptrs[STATUS_MAX];
    static char names[STATUS_MAX][128], langs[STATUS_MAX][16];
    size_t n = 0;
    s->snapshots_enabled = enabled;
    s->snapshot_dir = enabled ? base : "";
    s->snapshots = ptrs;
    s->n_snapshots = 0;
    if (!enabled)
        return;
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && n < STATUS_MAX && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue; /* staging, being removed */
        char p[PATH_MAX], meta[4096], v[sizeof boot_id];
        snprintf(p, sizeof p, "%s/%s/meta", base, e->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        ssize_t got = fd >= 0 ? read(fd, meta, sizeof meta - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (got <= 0)
            continue;
        meta[got] = '\0';
        cachedir_meta_get(meta, "boot_id", v, sizeof v);
        if (strcmp(v, boot_id))
            continue; /* made before this boot: never used, removed soon */
        Sbx__Control__SnapshotInfo *i = &info[n];
        sbx__control__snapshot_info__init(i);
        snprintf(names[n], sizeof names[n], "%s", e->d_name);
        cachedir_meta_get(meta, "language", langs[n], sizeof langs[n]);
        cachedir_meta_get(meta, "memory_mb", v, sizeof v);
        i->memory_mb = (uint32_t)strtoul(v, NULL, 10);
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/mem", base, e->d_name);
        i->disk_mb = stat(p, &st) == 0 ? (uint64_t)st.st_blocks * 512u >> 20 : 0;
        i->state = "ready";
        i->name = names[n];
        i->language = langs[n];
        ptrs[n] = i;
        n++;
    }
    if (d)
        closedir(d);
    uint64_t now = now_ms();
    for (snap *x = snaps; x && n < STATUS_MAX; x = x->next) {
        bool failed = !x->building && !x->want && x->failures && now < x->retry_at;
        bool listed = false;
        for (size_t k = 0; k < n && !listed; k++)
            listed = !strcmp(names[k], x->name); /* published, its job not gone yet */
        if (listed || (!x->building && !x->want && !failed))
            continue;
        Sbx__Control__SnapshotInfo *i = &info[n];
        sbx__control__snapshot_info__init(i);
        snprintf(names[n], sizeof names[n], "%s", x->name);
        snprintf(langs[n], sizeof langs[n], "%s", x->language);
        i->name = names[n];
        i->language = langs[n];
        i->memory_mb = x->memory_mb;
        i->state = failed ? "failed" : "building";
        i->retry_in_s = failed ? (uint32_t)((x->retry_at - now + 999) / 1000) : 0;
        ptrs[n] = i;
        n++;
    }
    s->n_snapshots = n;
}

void snapshot_shutdown(void)
{
    ev_timer_stop(EV_DEFAULT, &kick);
    while (snaps) {
        snap *s = snaps;
        snaps = s->next;
        if (s->staging[0])
            cachedir_rm(s->staging, "memory snapshots");
        free(s);
    }
}

/* The snapshots made with a package layer: their names carry its tag. */
static bool of_layer(const char *name, const char *layer_key)
{
    char tag[32];
    snprintf(tag, sizeof tag, LAYER_TAG_FMT "-", layer_key);
    return name[0] != '.' && strstr(name, tag);
}

uint64_t snapshot_layer_disk(const char *layer_key)
{
    uint64_t total = 0;
    DIR *d = enabled ? opendir(base) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!of_layer(e->d_name, layer_key))
            continue;
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/mem", base, e->d_name);
        if (stat(p, &st) == 0)
            total += (uint64_t)st.st_blocks * 512u;
    }
    if (d)
        closedir(d);
    return total;
}

void snapshot_drop_layer(const char *layer_key)
{
    /* Names first, renames after: renaming while reading the directory may skip entries. */
    char names[STATUS_MAX][128];
    size_t n = 0;
    DIR *d = enabled ? opendir(base) : NULL;
    struct dirent *e;
    while (d && n < STATUS_MAX && (e = readdir(d)))
        if (of_layer(e->d_name, layer_key) && strlen(e->d_name) < sizeof names[0])
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    if (d)
        closedir(d);
    for (size_t i = 0; i < n; i++) {
        slog("memory snapshot %s removed with its package layer", names[i]);
        cachedir_retire(base, names[i], "memory snapshots");
    }
}
