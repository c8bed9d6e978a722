/* A stand-in for qemu-system-x86_64, for tests/e2e/suite_jail.py: sbxd is pointed at it with
 * --qemu, so the worker starts it exactly where it would start QEMU (in the jail, as the VM's
 * uid, after the worker's QEMU filter is loaded). It tries what a guest that took over QEMU
 * would try, each attempt in a child of its own so that one kill does not hide the others, and
 * prints one line that the worker hands back in its error (the tail of QEMU's log):
 *
 *   FAKEQEMU filters=N mem=<errno|ok> unix=ok inet=sig31 ... vmdir=<KiB>k/<errno> ...
 *
 * sigN: the child was killed by signal N (31 is SIGSYS: the filter); e<NAME>/ok: the call
 * returned. Built by the test with `cc -static`; never installed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static char report[2048];

static void add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add(const char *fmt, ...)
{
    size_t l = strlen(report);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(report + l, sizeof report - l, fmt, ap);
    va_end(ap);
}

static const char *ename(int e)
{
    switch (e) {
    case EPERM:
        return "EPERM";
    case EACCES:
        return "EACCES";
    case ENOSYS:
        return "ENOSYS";
    case EINVAL:
        return "EINVAL";
    case ENOSPC:
        return "ENOSPC";
    case EAFNOSUPPORT:
        return "EAFNOSUPPORT";
    case EOPNOTSUPP:
        return "EOPNOTSUPP";
    case ESRCH:
        return "ESRCH";
    case EFAULT:
        return "EFAULT";
    case EBADF:
        return "EBADF";
    default:
        return "E?";
    }
}

/* Run one raw syscall in a child and say how the child ended. */
static void probe(const char *name, long nr, long a, long b, long c, long d, long e)
{
    pid_t pid = fork();
    if (pid == 0) {
        long r = syscall(nr, a, b, c, d, e, 0);
        if (r == 0 && (nr == SYS_clone))
            _exit(0); /* the clone's own child, had it been allowed */
        _exit(r < 0 ? 100 + (errno & 0x7f) : 0);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) {
        add(" %s=forkfail", name);
        return;
    }
    if (WIFSIGNALED(st))
        add(" %s=sig%d", name, WTERMSIG(st));
    else if (WEXITSTATUS(st) == 0)
        add(" %s=ok", name);
    else
        add(" %s=%s", name, ename(WEXITSTATUS(st) - 100));
}

static int seccomp_filters(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        sscanf(line, "Seccomp_filters: %d", &n);
    if (f)
        fclose(f);
    return n;
}

int main(void)
{
    pid_t parent = getppid();
    /* In the jail the worker is PID 1 of the pid namespace; anywhere else, do nothing. */
    if (parent != 1) {
        fprintf(stderr, "fake_qemu: not started by a jailed worker; doing nothing\n");
        return 2;
    }
    add("FAKEQEMU filters=%d", seccomp_filters());

    /* The worker's memory: refused by its being non-dumpable (before any filter has a say). */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)parent);
    int fd = open(path, O_RDONLY);
    add(" mem=%s", fd >= 0 ? "ok" : ename(errno));
    if (fd >= 0)
        close(fd);

    probe("unix", SYS_socket, AF_UNIX, SOCK_STREAM, 0, 0, 0);
    probe("inet", SYS_socket, AF_INET, SOCK_STREAM, 0, 0, 0);
    probe("inet6", SYS_socket, AF_INET6, SOCK_DGRAM, 0, 0, 0);
    probe("netlink", SYS_socket, AF_NETLINK, SOCK_RAW, 0, 0, 0);
    probe("pair", SYS_socketpair, AF_INET, SOCK_STREAM, 0, 0, 0);
    probe("ptrace", SYS_ptrace, PTRACE_SEIZE, parent, 0, 0, 0);
    char buf[16];
    struct iovec loc = {buf, sizeof buf}, rem = {(void *)0x400000, sizeof buf};
    probe("vmread", SYS_process_vm_readv, parent, (long)&loc, 1, (long)&rem, 1);
    probe("vmwrite", SYS_process_vm_writev, parent, (long)&loc, 1, (long)&rem, 1);
    probe("pidfdgetfd", SYS_pidfd_getfd, 0, 0, 0, 0, 0);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    probe("bpf", SYS_bpf, BPF_PROG_LOAD, (long)&attr, sizeof attr, 0, 0);
    probe("uffd", SYS_userfaultfd, 0, 0, 0, 0, 0);
    struct io_uring_params up;
    memset(&up, 0, sizeof up);
    probe("uring", SYS_io_uring_setup, 4, (long)&up, 0, 0, 0);
    probe("uringenter", SYS_io_uring_enter, 0, 0, 0, 0, 0);
    struct perf_event_attr pa;
    memset(&pa, 0, sizeof pa);
    pa.size = sizeof pa;
    probe("perf", SYS_perf_event_open, (long)&pa, 0, -1, -1, 0);
    probe("keyctl", SYS_keyctl, 0, 0, 0, 0, 0);
    probe("addkey", SYS_add_key, (long)"user", (long)"k", (long)"v", 1, -2);
    probe("reqkey", SYS_request_key, (long)"user", (long)"k", 0, 0, 0);
    probe("kexec", SYS_kexec_load, 0, 0, 0, 0, 0);
    probe("kexecfile", SYS_kexec_file_load, -1, -1, 0, 0, 0);
    probe("mount", SYS_mount, (long)"none", (long)"/tmp", (long)"tmpfs", 0, 0);
    probe("umount", SYS_umount2, (long)"/tmp", MNT_DETACH, 0, 0, 0);
    probe("unshare", SYS_unshare, CLONE_NEWUSER, 0, 0, 0, 0);
    probe("setns", SYS_setns, 0, 0, 0, 0, 0);
    probe("clonens", SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    probe("clone3", SYS_clone3, 0, 0, 0, 0, 0);

    /* The one directory it may write: how much does it take? */
    fd = open("/vm/fill", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    long total = 0;
    int werr = 0;
    static char block[65536];
    while (fd >= 0 && total < (64l << 20)) {
        ssize_t w = write(fd, block, sizeof block);
        if (w <= 0) {
            werr = w < 0 ? errno : ENOSPC;
            break;
        }
        total += w;
    }
    if (fd >= 0)
        close(fd);
    unlink("/vm/fill");
    add(" vmdir=%ldk/%s", total / 1024, werr ? ename(werr) : "nolimit");
    int files = 0, ferr = 0;
    for (; files < 4096; files++) {
        snprintf(path, sizeof path, "/vm/f%d", files);
        int f = open(path, O_WRONLY | O_CREAT, 0600);
        if (f < 0) {
            ferr = errno;
            break;
        }
        close(f);
    }
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof path, "/vm/f%d", i);
        unlink(path);
    }
    add(" vmfiles=%d/%s", files, ferr ? ename(ferr) : "nolimit");
    fprintf(stderr, "%s\n", report);
    return 0;
}
