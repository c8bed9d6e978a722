/* sbxd: the supervisor. One libev loop owns the control socket, the queue of runs, and one
 * sbx-vmworker per VM; it never runs QEMU itself and survives any worker's death. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "paths.h"
#include "sbxd.h"
#include "layers.h"
#include "ledger.h"
#include "metrics.h"
#include "remote.h"
#include "snapshot.h"
#include "spawn.h"
#include "workerlog.h"

sbx_config cfg;
char run_base[256];
uint64_t started_ms;
static uint64_t last_activity;
static ev_timer idle_timer;
static ev_signal sig_term, sig_int;

void slog(const char *fmt, ...)
{
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    fprintf(stderr, "%s sbxd[%d]: ", ts, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void sbxd_activity(void)
{
    last_activity = now_ms();
}

/* Idle: no VM running or waiting and no request for idle_exit_seconds. An open connection that
 * asks for nothing does not count, or any local process could keep the daemon up forever. */
static void idle_cb(EV_P_ ev_timer *w, int revents)
{
    if (sched_running() || sched_queued())
        return;
    if (now_ms() - last_activity >= (uint64_t)cfg.idle_exit_seconds * 1000u) {
        slog("idle for %u s; exiting", cfg.idle_exit_seconds);
        ev_break(EV_A_ EVBREAK_ALL);
    }
}

static void stop_cb(EV_P_ ev_signal *w, int revents)
{
    slog("signal %d; shutting down", w->signum);
    ev_break(EV_A_ EVBREAK_ALL);
}

/* A daemon that died (SIGKILL, a crash) could not remove its run directory: the next one does,
 * for every one whose pid is gone. Its VMs' subdirectories belonged to their uids, so the walk
 * goes through fds and never follows a link. */
static void remove_stale_run_dirs(void)
{
    DIR *d = opendir("/tmp");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid;
        char rest[32];
        if (sscanf(e->d_name, "sbxd-%d-%31s", &pid, rest) != 2 || pid <= 0)
            continue;
        /* One with our own pid predates us (this runs before ours is made): an earlier sbxd
         * that had the same pid, as PID 1 of a restarted container always has. */
        if (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) &&
            st.st_uid == geteuid()) {
            if (paths_rm_tree_at(dirfd(d), e->d_name, 16) < 0)
                slog("warning: remove /tmp/%s, left by sbxd %d that is gone: %s", e->d_name, pid,
                     strerror(errno));
            else
                slog("removed /tmp/%s, left by sbxd %d that is gone", e->d_name, pid);
        }
    }
    closedir(d);
}

/* The guest assets missing in images_dir, listed into out; 0 when none is. */
static size_t assets_missing(char *out, size_t n)
{
    static const char *const names[] = {"vmlinux", "initramfs.cpio", "python.sqfs",
                                        "javascript.sqfs", "raw.sqfs"};
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char p[sizeof cfg.images_dir + 32];
        snprintf(p, sizeof p, "%s/%s", cfg.images_dir, names[i]);
        if (access(p, R_OK) != 0)
            len += (size_t)snprintf(out + len, n - len, "%s%s", len ? ", " : "", names[i]);
    }
    return len;
}

/* asset_base_url and missing assets: `sbx prefetch` (beside sbxd) fetches them before serving,
 * bounded in time; a failure is logged and the daemon serves anyway (requests then say which
 * asset is missing). */
static void prefetch_assets(void)
{
    char missing[512], dir[PATH_MAX], sbx[PATH_MAX + 8];
    if (!cfg.asset_base_url[0] || !assets_missing(missing, sizeof missing))
        return;
    if (paths_exe_dir(dir, sizeof dir) < 0) {
        slog("warning: cannot find sbx beside sbxd to prefetch the assets");
        return;
    }
    snprintf(sbx, sizeof sbx, "%s/sbx", dir);
    slog("guest assets missing (%s): prefetching them from %s", missing, cfg.asset_base_url);
    pid_t pid = fork();
    if (pid == 0) {
        /* The cache sbxd uses, not whatever sbx would compute for itself. */
        setenv("EXEC_SANDBOX_CACHE_DIR", cfg.cache_dir, 1);
        execl(sbx, "sbx", "prefetch", "--from", cfg.asset_base_url, "--arch", cfg.guest_arch, "-q",
              (char *)NULL);
        _exit(127);
    }
    int st = -1;
    uint64_t until = now_ms() + 1800u * 1000u;
    while (pid > 0 && waitpid(pid, &st, WNOHANG) == 0) {
        if (now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        usleep(100 * 1000);
    }
    if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st) || assets_missing(missing, sizeof missing))
        slog("warning: prefetching the assets from %s failed (status %d); still missing: %s",
             cfg.asset_base_url, st, missing[0] ? missing : "none");
    else
        slog("guest assets prefetched from %s", cfg.asset_base_url);
}

/* Whether a worker's namespaces can be made here. Where they never can (an unprivileged
 * container, user namespaces turned off), serving would only fail every run: say so once, at
 * start, before anything is downloaded. A shortage (EAGAIN, ENOMEM, ENOSPC: too many namespaces
 * or processes now) may pass, so it is only a warning. */
static bool namespaces_usable(void)
{
    sbx_err err = {0};
    if (spawn_probe(&err) == 0)
        return true;
    if (err.code != EPERM && err.code != EACCES && err.code != EINVAL) {
        fprintf(stderr, "sbxd: warning: %s (a shortage, perhaps passing)\n", err.msg);
        return true;
    }
    if (getuid() != 0)
        fprintf(stderr,
                "sbxd: %s: no VM can start here. sbxd as uid %u needs user namespaces (a "
                "sysctl or an AppArmor policy may turn them off), or run it as root\n",
                err.msg, (unsigned)getuid());
    else
        fprintf(stderr,
                "sbxd: %s: no VM can start here. In a container, sbxd needs --privileged "
                "(README.md, \"Container sidecar and Kubernetes\")\n",
                err.msg);
    return false;
}

/* EXEC_SANDBOX_OFFLINE=1: nothing is ever downloaded, so missing assets are an error now, named,
 * with the command that fetches them (otherwise each request would fail later, one by one). */
static bool offline_assets_missing(void)
{
    const char *off = getenv("EXEC_SANDBOX_OFFLINE");
    char missing[512];
    if (!off || strcmp(off, "1") || !assets_missing(missing, sizeof missing))
        return false;
    fprintf(stderr,
            "sbxd: offline (EXEC_SANDBOX_OFFLINE=1) and guest assets are missing in %s: %s; fetch "
            "them with `sbx prefetch --arch %s --from URL|PATH` (or build them: make assets)\n",
            cfg.images_dir, missing, cfg.guest_arch);
    return true;
}

int main(int argc, char **argv)
{
    sbx_err err = {0};
    int rc = config_load(&cfg, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "sbxd: %s\n", err.msg);
        return 2;
    }
    /* The worker's jail holds only this one binary, so it must be an absolute path. */
    char qemu[sizeof cfg.qemu];
    if (paths_which(cfg.qemu, qemu, sizeof qemu) < 0) {
        fprintf(stderr, "sbxd: QEMU binary `%s` not found (install qemu-system-%s, or set qemu)\n",
                cfg.qemu, !strcmp(cfg.guest_arch, "aarch64") ? "arm" : "x86");
        return 1;
    }
    memcpy(cfg.qemu, qemu, sizeof qemu);
    /* State (the accelerator verdict, snapshots, images by default) lives only where nobody
     * else can change it: created 0700 when missing, refused when another uid owns it or
     * others can write it. */
    int cache = paths_dir_open(cfg.cache_dir, geteuid(), 0700, &err);
    if (cache < 0) {
        fprintf(stderr,
                "sbxd: cache directory: %s (set EXEC_SANDBOX_CACHE_DIR, cache_dir or --cache-dir "
                "to a directory of uid %u that others cannot write, e.g. mode 0700)\n",
                err.msg, (unsigned)geteuid());
        return 1;
    }
    close(cache);
    if (offline_assets_missing())
        return 1;
    if (cfg.log[0] && !freopen(cfg.log, "ae", stderr)) {
        fprintf(stdout, "sbxd: open log `%s`: %s\n", cfg.log, strerror(errno));
        return 1;
    }
    setvbuf(stderr, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (!namespaces_usable())
        return 1;
    prefetch_assets();
    started_ms = last_activity = now_ms();

    remove_stale_run_dirs();
    snprintf(run_base, sizeof run_base, "/tmp/sbxd-%d-XXXXXX", (int)getpid());
    /* mkdtemp: mode 0700, and a name nobody had (mkdir fails on one that exists). */
    if (!mkdtemp(run_base)) {
        fprintf(stderr, "sbxd: create run directory: %s\n", strerror(errno));
        return 1;
    }
    int run = paths_dir_open(run_base, geteuid(), 0, &err);
    if (run < 0) {
        fprintf(stderr, "sbxd: run directory: %s\n", err.msg);
        rmdir(run_base);
        return 1;
    }
    close(run);
    struct ev_loop *loop = EV_DEFAULT;
    if (control_listen(&err) < 0) {
        fprintf(stderr, "sbxd: %s\n", err.msg);
        rmdir(run_base);
        return 1;
    }
    accel_init();
    snapshot_init();
    remote_init();
    layers_init();
    ledger_init();
    metrics_init();
    char why[256];
    if (cgroup_init(why, sizeof why))
        slog("%s", why);
    else
        slog("warning: VMs run without a cgroup (no memory/pids/cpu limits from the host): %s",
             why);
    ev_signal_init(&sig_term, stop_cb, SIGTERM);
    ev_signal_init(&sig_int, stop_cb, SIGINT);
    ev_signal_start(loop, &sig_term);
    ev_signal_start(loop, &sig_int);
    if (cfg.idle_exit_seconds) {
        ev_timer_init(&idle_timer, idle_cb, 1., 1.);
        ev_timer_start(loop, &idle_timer);
    }
    pool_start();
    slog("serving %s (max %u VMs, images %s)", cfg.socket, cfg.max_concurrent_vms, cfg.images_dir);
    ev_run(loop, 0);

    metrics_shutdown();
    control_shutdown();
    pool_shutdown();
    session_shutdown();
    layers_stop();
    sched_shutdown();
    workerlog_shutdown();
    snapshot_shutdown();
    layers_shutdown();
    ledger_shutdown();
    rmdir(run_base);
    ev_loop_destroy(loop);
    return 0;
}
