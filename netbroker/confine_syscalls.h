/* The syscalls the network broker's seccomp filter allows outright (netbroker/confine.c builds
 * the filter; its conditional rules stay there). Data only, in a header so that
 * tests/unit/test_syscalls.c checks the very list, on both architectures. Included once per
 * program. */
#ifndef SBX_CONFINE_SYSCALLS_H
#define SBX_CONFINE_SYSCALLS_H

/* Needs seccomp.h included before it. */

static const int confine_allow[] = {
    /* The loop: requests and replies, connects in flight, logging, memory. */
    SCMP_SYS(read),
    SCMP_SYS(write),
    SCMP_SYS(close),
    SCMP_SYS(poll),
    SCMP_SYS(ppoll),
    SCMP_SYS(sendmsg),
    SCMP_SYS(recvmsg),
    SCMP_SYS(connect),
    SCMP_SYS(getsockopt),
    SCMP_SYS(setsockopt),
    SCMP_SYS(fcntl),
    SCMP_SYS(clock_gettime),
    SCMP_SYS(brk),
    SCMP_SYS(mmap),
    SCMP_SYS(munmap),
    SCMP_SYS(mremap),
    SCMP_SYS(exit_group),
    SCMP_SYS(exit),
    SCMP_SYS(restart_syscall),
    /* Resolver children: pipe, fork (flags checked below), reap; no kill(2): a child ends
     * by its own timer. In the child, the death signal, the timer and getaddrinfo:
     * read-only opens (checked below), stat of the config files, uname (the default
     * search domain), a UDP (or TCP) socket to the name servers. */
    SCMP_SYS(pipe2),
    SCMP_SYS(wait4),
    SCMP_SYS(setitimer),
    SCMP_SYS(getpid),
    SCMP_SYS(getppid),
    SCMP_SYS(newfstatat),
    SCMP_SYS(fstat),
    SCMP_SYS(lseek),
    SCMP_SYS(sendto),
    SCMP_SYS(sendmmsg),
    SCMP_SYS(recvfrom),
    SCMP_SYS(set_robust_list),
    SCMP_SYS(futex),
    SCMP_SYS(uname),
    SCMP_SYS(getsockname),
    SCMP_SYS(writev),
    /* The relays: exposed ports' clients, half-closes. */
    SCMP_SYS(accept4),
    SCMP_SYS(shutdown),
#if defined(__SANITIZE_ADDRESS__)
    /* The sanitizer runtime of test builds (reports, the leak check at exit). */
    SCMP_SYS(mprotect),
    SCMP_SYS(madvise),
    SCMP_SYS(sigaltstack),
    SCMP_SYS(rt_sigaction),
    SCMP_SYS(rt_sigprocmask),
    SCMP_SYS(prlimit64),
    SCMP_SYS(readlink),
    SCMP_SYS(readlinkat),
    SCMP_SYS(clone),
    SCMP_SYS(clone3),
    SCMP_SYS(ptrace),
    SCMP_SYS(kill),
    SCMP_SYS(sched_getaffinity),
    SCMP_SYS(sched_yield),
    SCMP_SYS(getdents64),
    SCMP_SYS(rseq),
    SCMP_SYS(dup),
    SCMP_SYS(dup2),
    SCMP_SYS(dup3), /* dup2 on architectures without it (arm64) */
    SCMP_SYS(getrusage),
    SCMP_SYS(gettid),
    SCMP_SYS(tgkill),
    SCMP_SYS(openat),
    SCMP_SYS(prctl),
    SCMP_SYS(ioctl),
    SCMP_SYS(statx),
    SCMP_SYS(waitid),
    SCMP_SYS(nanosleep),
    SCMP_SYS(clock_nanosleep),
#endif
};

#endif
