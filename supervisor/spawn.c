/* Starting a VM's worker: fork+exec of sbx-vmworker into new namespaces and its cgroup, with
 * one socket, a log pipe and an empty environment; and the per-VM uids. Nothing here talks to
 * the worker once it runs: sched.c does. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "frame.h"
#include "paths.h"
#include "sbxd.h"
#include "spawn.h"
#include "workerlog.h"

/* Which of the 65536 uids above vm_uid_base a live VM holds: two VMs never share one. */
static uint8_t uid_used[65536 / 8];
static uint32_t uid_cursor;

/* The unprivileged uid a VM's worker and QEMU run as when sbxd is root: one of a reserved range
 * (vm_uid_base + 0..65535) that no other live VM holds and no host user has, so a VM that took
 * over its QEMU cannot signal, ptrace or read another VM's processes or files. -1 when all are
 * in use (max_concurrent_vms is at most 100, so only a leak could do that). */
int spawn_uid_alloc(void)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t k = (uid_cursor + i) % 65536u;
        if (!(uid_used[k / 8] & (1u << (k % 8)))) {
            uid_used[k / 8] |= (uint8_t)(1u << (k % 8));
            uid_cursor = k + 1;
            return (int)k;
        }
    }
    return -1;
}

void spawn_uid_free(int slot)
{
    uid_used[slot / 8] &= (uint8_t) ~(1u << (slot % 8));
}

/* A program of ours: $env when set, else beside sbxd. */
static int exe_path(const char *env_name, const char *name, char *out, size_t n)
{
    char dir[512];
    const char *env = getenv(env_name);
    if (env && *env)
        return snprintf(out, n, "%s", env) < (int)n ? 0 : -1;
    if (paths_exe_dir(dir, sizeof dir) < 0)
        return -1;
    return snprintf(out, n, "%s/%s", dir, name) < (int)n ? 0 : -1;
}

int spawn_worker_path(char *out, size_t n)
{
    return exe_path("EXEC_SANDBOX_VMWORKER", "sbx-vmworker", out, n);
}

int spawn_broker_path(char *out, size_t n)
{
    return exe_path("EXEC_SANDBOX_NETBROKER", "sbx-netbroker", out, n);
}

/* The debugging knobs of sanitizer builds survive the worker's cleared environment. */
static char **worker_env(void)
{
    static char *env[4];
    static const char *keep[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    static char buf[3][512];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(keep[i]);
        if (v) {
            snprintf(buf[i], sizeof buf[i], "%s=%s", keep[i], v);
            env[n++] = buf[i];
        }
    }
    env[n] = NULL;
    return env;
}

/* The namespaces a worker starts in (a user namespace too when sbxd is not root). */
static unsigned long worker_ns_flags(bool userns)
{
    unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
    return userns ? flags | CLONE_NEWUSER : flags;
}

int spawn_probe(sbx_err *err)
{
    pid_t pid =
        (pid_t)syscall(SYS_clone, worker_ns_flags(getuid() != 0) | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid < 0)
        return sbx_fail(err, errno, "create the namespaces a VM's worker runs in (clone): %s",
                        strerror(errno));
    if (pid == 0)
        _exit(0);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

/* fork+exec the worker in new namespaces (it becomes PID 1 of its own pid namespace, so when it
 * dies the kernel kills QEMU too), inside the VM's cgroup before it runs a single instruction
 * of its own, with exactly one inherited socket as fd 3, its stdout and stderr on a log pipe of
 * its own (workerlog.c; none of sbxd's descriptors) and an empty environment. */
int spawn_worker(cgroup_vm *cg, uint64_t seq, bool userns, int net_fd, pid_t *pid_out, int *fd_out,
                 sbx_err *err)
{
    char exe[512];
    if (spawn_worker_path(exe, sizeof exe) < 0)
        return sbx_fail(err, ENOENT, "cannot locate sbx-vmworker");
    int sv[2], sync[2], logp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return sbx_fail(err, errno, "socketpair: %s", strerror(errno));
    if (pipe2(sync, O_CLOEXEC) < 0) {
        close(sv[0]);
        close(sv[1]);
        return sbx_fail(err, errno, "pipe: %s", strerror(errno));
    }
    if (pipe2(logp, O_CLOEXEC) < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        close(sync[0]);
        close(sync[1]);
        return sbx_fail(err, e, "log pipe: %s", strerror(e));
    }
    char **envp = worker_env();
    unsigned long flags = worker_ns_flags(userns);
    uid_t outer_uid = getuid();
    gid_t outer_gid = getgid();
    pid_t parent = getpid();
    pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        close(sync[0]);
        close(sync[1]);
        close(logp[0]);
        close(logp[1]);
        return sbx_fail(err, e, "create the VM's namespaces (clone): %s", strerror(e));
    }
    if (pid == 0) {
        sbx_child_of(parent);
        close(sync[1]);
        char go;
        /* Wait until sbxd has put us in the cgroup (and mapped our ids in a user namespace). */
        if (read(sync[0], &go, 1) != 1)
            _exit(127);
        if (dup2(logp[1], 1) < 0 || dup2(logp[1], 2) < 0 || dup2(sv[1], 3) < 0 ||
            (net_fd >= 0 && dup2(net_fd, SPAWN_NET_FD) < 0))
            _exit(127);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0 && null != 0) {
            dup2(null, 0);
            close(null);
        }
        close_range(net_fd >= 0 ? SPAWN_NET_FD + 1 : 4, ~0U, 0);
        char *argv[] = {exe, "--fd", "3", NULL};
        execve(exe, argv, envp);
        dprintf(2, "sbxd: exec `%s`: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    close(sync[0]);
    close(logp[1]);
    int rc = cgroup_attach(cg, pid, err);
    if (rc == 0 && userns) {
        char path[64], map[64];
        snprintf(map, sizeof map, "0 %u 1\n", (unsigned)outer_uid);
        snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        rc = fd >= 0 && write(fd, map, strlen(map)) == (ssize_t)strlen(map) ? 0 : -1;
        if (fd >= 0)
            close(fd);
        snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            rc |= write(fd, "deny", 4) == 4 ? 0 : -1;
            close(fd);
        }
        snprintf(map, sizeof map, "0 %u 1\n", (unsigned)outer_gid);
        snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        rc |= fd >= 0 && write(fd, map, strlen(map)) == (ssize_t)strlen(map) ? 0 : -1;
        if (fd >= 0)
            close(fd);
        if (rc < 0)
            sbx_fail(err, errno, "map ids into the worker's user namespace: %s", strerror(errno));
    }
    if (rc < 0 || write(sync[1], "g", 1) != 1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(sync[1]);
        close(sv[0]);
        close(logp[0]);
        return -1;
    }
    close(sync[1]);
    if (workerlog_start(logp[0], seq) < 0)
        slog("vm %llu: cannot relay the worker's log", (unsigned long long)seq);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    *pid_out = pid;
    *fd_out = sv[0];
    return 0;
}

/* The VM's network broker (netbroker/): in the host's network namespace, in the VM's cgroup,
 * as the VM's uid (or sbxd's own user when sbxd is unprivileged). Its policy goes down a pipe
 * before the worker exists; the worker gets the other end of its socket (*worker_end). */
int spawn_broker(cgroup_vm *cg, uint64_t seq, const Sbx__Net__NetPolicy *policy, uid_t uid,
                 gid_t gid, pid_t *pid_out, int *worker_end, sbx_err *err)
{
    char exe[512], uid_s[16], gid_s[16];
    if (spawn_broker_path(exe, sizeof exe) < 0)
        return sbx_fail(err, ENOENT, "cannot locate sbx-netbroker");
    size_t n = sbx__net__net_policy__get_packed_size(policy);
    if (n + FRAME_HDR > 60000)
        return sbx_fail(err, E2BIG, "network policy too large");
    uint8_t buf[60000];
    uint32_t be = htonl((uint32_t)n);
    memcpy(buf, &be, FRAME_HDR);
    sbx__net__net_policy__pack(policy, buf + FRAME_HDR);
    cleanup_close int sv0 = -1, sv1 = -1, pol0 = -1, pol1 = -1, log0 = -1, log1 = -1;
    int sv[2], pol[2], logp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return sbx_fail(err, errno, "socketpair: %s", strerror(errno));
    sv0 = sv[0], sv1 = sv[1];
    if (pipe2(pol, O_CLOEXEC) < 0)
        return sbx_fail(err, errno, "pipe: %s", strerror(errno));
    pol0 = pol[0], pol1 = pol[1];
    if (pipe2(logp, O_CLOEXEC) < 0)
        return sbx_fail(err, errno, "pipe: %s", strerror(errno));
    log0 = logp[0], log1 = logp[1];
    /* Never blocking sbxd's loop: a pipe may hold less than 64 KiB (a user over
     * fs.pipe-user-pages-soft gets two pages), so it is asked for room and written without
     * waiting; a policy that does not fit fails the VM. */
    fcntl(pol1, F_SETPIPE_SZ, 65536);
    ssize_t w = fcntl(pol1, F_SETFL, O_NONBLOCK) < 0 ? -1 : write(pol1, buf, n + FRAME_HDR);
    if (w != (ssize_t)(n + FRAME_HDR))
        return sbx_fail(err, w < 0 ? errno : EMSGSIZE, "write the network policy (%zu bytes): %s",
                        n + FRAME_HDR, w < 0 ? strerror(errno) : "the pipe is too small");
    close(steal_fd(&pol1));
    snprintf(uid_s, sizeof uid_s, "%u", (unsigned)uid);
    snprintf(gid_s, sizeof gid_s, "%u", (unsigned)gid);
    char **envp = worker_env();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return sbx_fail(err, errno, "fork: %s", strerror(errno));
    if (pid == 0) {
        sbx_child_of(parent);
        if (dup2(log1, 1) < 0 || dup2(log1, 2) < 0 || dup2(sv1, 3) < 0 || dup2(pol0, 4) < 0)
            _exit(127);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0 && null != 0) {
            dup2(null, 0);
            close(null);
        }
        close_range(5, ~0U, 0);
        char *argv[] = {exe, "--fd", "3", "--policy-fd", "4", "--uid", uid_s, "--gid", gid_s, NULL};
        execve(exe, argv, envp);
        dprintf(2, "sbxd: exec `%s`: %s\n", exe, strerror(errno));
        _exit(127);
    }
    if (cgroup_attach(cg, pid, err) < 0) {
        kill(pid, SIGKILL);
        spawn_reap(pid);
        return -1;
    }
    if (workerlog_start(steal_fd(&log0), seq) < 0)
        slog("vm %llu: cannot relay the broker's log", (unsigned long long)seq);
    spawn_reap(pid);
    *pid_out = pid;
    *worker_end = steal_fd(&sv0);
    return 0;
}

/* Children nobody waits for otherwise (brokers): reaped whenever they end. */
typedef struct {
    ev_child w;
} reaper;

static void reaped(EV_P_ ev_child *w, int revents)
{
    (void)revents;
    ev_child_stop(EV_A_ w);
    free(w->data);
}

void spawn_reap(pid_t pid)
{
    reaper *r = calloc(1, sizeof *r);
    if (!r)
        return; /* a zombie until sbxd exits: better than a crash */
    ev_child_init(&r->w, reaped, pid, 0);
    r->w.data = r;
    ev_child_start(EV_DEFAULT, &r->w);
}
