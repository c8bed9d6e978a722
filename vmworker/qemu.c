/* QEMU command line, process start and /proc measurements. It holds no worker state (the QMP
 * fuzzer links it without worker.c), and never puts a path with a comma on the command line. */
#include "qemu.h"
#include "arch.h"
#include "machine.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 80

struct argv_buf {
    char *v[MAX_ARGS];
    int n;
    char store[8192];
    size_t used;
};

__attribute__((format(printf, 2, 3))) static int arg(struct argv_buf *a, const char *fmt, ...)
{
    if (a->n >= MAX_ARGS - 1)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(a->store + a->used, sizeof a->store - a->used, fmt, ap);
    va_end(ap);
    if (r < 0 || (size_t)r >= sizeof a->store - a->used)
        return -1;
    a->v[a->n++] = a->store + a->used;
    a->v[a->n] = NULL;
    a->used += (size_t)r + 1;
    return 0;
}

static bool safe_path(const char *p)
{
    /* QEMU option values are comma-separated: a comma in a path would inject options. */
    return p && *p == '/' && !strchr(p, ',') && strlen(p) < PATH_MAX - 32;
}

int qemu_spawn(const Sbx__Worker__VmConfig *cfg, qemu_vm *vm, sbx_err *err)
{
    if (!safe_path(cfg->kernel) || !safe_path(cfg->initrd) || !safe_path(cfg->rootfs) ||
        !safe_path(cfg->run_dir) || (cfg->layer && *cfg->layer && !safe_path(cfg->layer)))
        return sbx_fail(err, EINVAL, "VM config: paths must be absolute and free of commas");
    if (strcmp(cfg->accel, "kvm") && strcmp(cfg->accel, "tcg"))
        return sbx_fail(err, EINVAL, "VM config: accel `%s`", cfg->accel);
    if (cfg->memory_mb < 64 || cfg->memory_mb > 65536)
        return sbx_fail(err, EINVAL, "VM config: memory %u MB", cfg->memory_mb);
    /* Machine, kernel command line and virtio transport of the guest's architecture. */
    const qemu_machine *m = qemu_machine_for(cfg->guest_arch);
    if (!m)
        return sbx_fail(err, EINVAL, "VM config: guest architecture `%s`", cfg->guest_arch);
    snprintf(vm->agent_sock, sizeof vm->agent_sock, "%s/agent.sock", cfg->run_dir);
    snprintf(vm->console_sock, sizeof vm->console_sock, "%s/console.sock", cfg->run_dir);
    snprintf(vm->log_path, sizeof vm->log_path, "%s/qemu.log", cfg->run_dir);
    snprintf(vm->qmp_sock, sizeof vm->qmp_sock, "%s/qmp.sock", cfg->run_dir);
    bool restore = cfg->start_mode && !strcmp(cfg->start_mode, "restore");
    bool template = cfg->start_mode && !strcmp(cfg->start_mode, "template");
    if ((restore || template) && !safe_path(cfg->snapshot_dir))
        return sbx_fail(err, EINVAL, "VM config: snapshot path must be absolute, without commas");

    struct argv_buf a = {0};
    const char *cpu = qemu_cpu_for(cfg->accel, cfg->cpu);
    int bad = 0;
    bad |= arg(&a, "%s", cfg->qemu && *cfg->qemu ? cfg->qemu : arch_qemu_binary(m->arch));
    bad |= arg(&a, "-M") |
           arg(&a, "%s%s", m->machine, restore || template ? ",memory-backend=mem" : "");
    /* TCG's translation cache would otherwise reserve up to 1 GiB: keep it within the cgroup
     * overhead sbxd allows (VM_OVERHEAD_MB). */
    bad |= arg(&a, "-accel") |
           arg(&a, "%s", !strcmp(cfg->accel, "tcg") ? "tcg,tb-size=256" : cfg->accel);
    /* QEMU's own seccomp filter, on top of the worker's jail. */
    bad |= arg(&a, "-sandbox") |
           arg(&a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    bad |= arg(&a, "-cpu") | arg(&a, "%s", cpu);
    bad |= arg(&a, "-m") | arg(&a, "%u", cfg->memory_mb);
    /* Snapshots: guest RAM in a file, so that the device state alone goes through migration
     * (x-ignore-shared) and every restored VM maps the same pages copy-on-write. */
    if (restore || template)
        bad |= arg(&a, "-object") |
               arg(&a, "memory-backend-file,id=mem,size=%uM,mem-path=%s/mem,%s", cfg->memory_mb,
                   cfg->snapshot_dir, restore ? "share=off,readonly=on,rom=off" : "share=on");
    bad |= arg(&a, "-smp") | arg(&a, "1");
    bad |= arg(&a, "-nodefaults") | arg(&a, "-no-user-config") | arg(&a, "-no-reboot");
    bad |= arg(&a, "-display") | arg(&a, "none");
    bad |= arg(&a, "-kernel") | arg(&a, "%s", cfg->kernel);
    bad |= arg(&a, "-initrd") | arg(&a, "%s", cfg->initrd);
    bad |= arg(&a, "-append") | arg(&a, "%s", m->cmdline);
    bad |= arg(&a, "-drive") |
           arg(&a, "file=%s,if=none,id=root,format=raw,readonly=on,cache=unsafe", cfg->rootfs);
    bad |= arg(&a, "-device") | arg(&a, "virtio-blk-%s,drive=root", m->virtio);
    /* A package layer: read-only like the root, found by the agent through its serial. */
    if (cfg->layer && *cfg->layer)
        bad |= arg(&a, "-drive") |
               arg(&a, "file=%s,if=none,id=pkgs,format=raw,readonly=on,cache=unsafe", cfg->layer) |
               arg(&a, "-device") |
               arg(&a, "virtio-blk-%s,drive=pkgs,serial=sbx-packages", m->virtio);
    bad |= arg(&a, "-device") | arg(&a, "virtio-serial-%s,max_ports=2", m->virtio);
    bad |=
        arg(&a, "-chardev") | arg(&a, "socket,id=agent,path=%s,server=on,wait=off", vm->agent_sock);
    bad |= arg(&a, "-device") | arg(&a, "virtserialport,chardev=agent,name=sbx.agent");
    bad |= arg(&a, "-device") | arg(&a, "virtio-rng-%s", m->virtio);
    /* The NIC: frames go to the network process over an inherited socket (fd 3 in QEMU). */
    if (vm->net_fd >= 0)
        bad |= arg(&a, "-netdev") | arg(&a, "stream,id=net0,addr.type=fd,addr.str=3") |
               arg(&a, "-device") |
               arg(&a, "virtio-net-%s,netdev=net0,mac=52:54:00:12:34:56", m->virtio);
    /* The balloon: the guest reports pages it frees and QEMU returns them to the host, and the
     * worker inflates it over QMP while a session VM is idle (vmworker/balloon.c); deflate-on-oom
     * lets the guest take pages back by itself should it need them first. Cold VMs only: QEMU
     * cannot discard pages of a restored VM's read-only RAM file (it would punch holes in the file
     * every restored VM shares), so there it would only fill the log with refusals; the
     * template has the same device (its state must match) with reporting off. */
    bad |= arg(&a, "-device") |
           arg(&a, "virtio-balloon-%s,id=balloon,deflate-on-oom=on,free-page-reporting=%s",
               m->virtio, restore || template ? "off" : "on");
    bad |=
        arg(&a, "-chardev") | arg(&a, "socket,id=con,path=%s,server=on,wait=off", vm->console_sock);
    bad |= arg(&a, "-serial") | arg(&a, "chardev:con");
    bad |= arg(&a, "-qmp") | arg(&a, "unix:%s,server=on,wait=off", vm->qmp_sock);
    if (restore)
        bad |= arg(&a, "-incoming") | arg(&a, "defer");
    if (bad)
        return sbx_fail(err, E2BIG, "QEMU command line too long");

    int logfd = open(vm->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (logfd < 0)
        return sbx_fail(err, errno, "create `%s`: %s", vm->log_path, strerror(errno));
    pid_t parent = getpid();
    vm->t_spawn = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        return sbx_fail(err, errno, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* QEMU must not outlive its worker, whatever kills the worker. */
        sbx_child_of(parent);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        if (vm->net_fd >= 0) {
            if (vm->net_fd == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(vm->net_fd, 3) < 0)
                _exit(127);
            close_range(4, ~0U, 0);
        } else {
            close_range(3, ~0U, 0);
        }
        if (vm->confine && vm->confine(vm->confine_arg) < 0) {
            dprintf(2, "confine QEMU before exec: %s\n", strerror(errno));
            _exit(127);
        }
        execvp(a.v[0], a.v);
        dprintf(2, "exec %s: %s\n", a.v[0], strerror(errno));
        _exit(127);
    }
    close(logfd);
    vm->pid = pid;
    return 0;
}

static bool alive(qemu_vm *vm)
{
    if (vm->pid <= 0)
        return false;
    int st;
    pid_t r = waitpid(vm->pid, &st, WNOHANG);
    if (r == vm->pid) {
        vm->pid = -1;
        return false;
    }
    return true;
}

int qemu_connect(qemu_vm *vm, const char *path, uint64_t deadline, sbx_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return sbx_fail(err, ENAMETOOLONG, "socket path `%s` too long", path);
    strcpy(sa.sun_path, path);
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return sbx_fail(err, errno, "socket: %s", strerror(errno));
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            /* Only QEMU, our own child, may be at the other end. */
            struct ucred uc;
            socklen_t ul = sizeof uc;
            if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0 || uc.pid != vm->pid) {
                close(fd);
                return sbx_fail(err, EPERM, "peer of `%s` is pid %d, not our QEMU (%d)", path,
                                (int)uc.pid, (int)vm->pid);
            }
            return fd;
        }
        int e = errno;
        close(fd);
        if (e != ENOENT && e != ECONNREFUSED)
            return sbx_fail(err, e, "connect `%s`: %s", path, strerror(e));
        if (!alive(vm))
            return sbx_fail(err, ECHILD, "QEMU exited before opening `%s`", path);
        if (now_ms() >= deadline)
            return sbx_fail(err, ETIMEDOUT, "QEMU did not open `%s` in time", path);
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int qemu_usage(const qemu_vm *vm, uint64_t *cpu_ms, uint64_t *peak_mb)
{
    char path[64], buf[4096];
    *cpu_ms = *peak_mb = 0;
    if (vm->pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)vm->pid);
    cleanup_fclose FILE *f = fopen(path, "re");
    if (!f || !fgets(buf, sizeof buf, f))
        return -1;
    /* Fields after the command name, which may itself hold spaces and parentheses. */
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    *cpu_ms = (ut + st) * 1000ull / (unsigned long long)(hz > 0 ? hz : 100);
    snprintf(path, sizeof path, "/proc/%d/status", (int)vm->pid);
    cleanup_fclose FILE *s = fopen(path, "re");
    while (s && fgets(buf, sizeof buf, s)) {
        unsigned long long kb;
        if (sscanf(buf, "VmHWM: %llu kB", &kb) == 1)
            *peak_mb = (kb + 1023) / 1024;
    }
    return 0;
}

void qemu_log_tail(const qemu_vm *vm, char *out, size_t n)
{
    out[0] = '\0';
    cleanup_close int fd = open(vm->log_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || n < 2)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)(n - 1) ? end - (off_t)(n - 1) : 0;
    ssize_t r = pread(fd, out, n - 1, start);
    out[r > 0 ? r : 0] = '\0';
    for (char *p = out; *p; p++)
        if (*p == '\n' && p[1])
            *p = ' ';
    size_t l = strlen(out);
    while (l && (out[l - 1] == '\n' || out[l - 1] == ' '))
        out[--l] = '\0';
}

void qemu_kill(qemu_vm *vm)
{
    if (vm->pid > 0) {
        kill(vm->pid, SIGKILL);
        waitpid(vm->pid, NULL, 0);
        vm->pid = -1;
    }
}
