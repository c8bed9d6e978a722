/* The syscall lists of the worker's and QEMU's seccomp filters (vmworker/jail.c builds the
 * filters; their conditional rules stay there). Data only, in a header so that
 * tests/unit/test_syscalls.c checks the very lists, on both architectures. Included once per
 * program. */
#ifndef SBX_JAIL_SYSCALLS_H
#define SBX_JAIL_SYSCALLS_H

/* Needs seccomp.h included before it. */

/* What the worker does once QEMU runs and its sockets are connected: relay frames, poll,
 * read /proc and QEMU's log, kill and reap QEMU, unlink its sockets, allocate memory. */
static const int jail_worker_allow[] = {
    SCMP_SYS(read),
    SCMP_SYS(write),
    SCMP_SYS(readv),
    SCMP_SYS(writev),
    SCMP_SYS(close),
    SCMP_SYS(poll),
    SCMP_SYS(ppoll),
    SCMP_SYS(fstat),
    SCMP_SYS(newfstatat),
    SCMP_SYS(statx),
    SCMP_SYS(lseek),
    SCMP_SYS(pread64),
    SCMP_SYS(kill),
    SCMP_SYS(wait4),
    SCMP_SYS(waitid),
    SCMP_SYS(exit),
    SCMP_SYS(exit_group),
    SCMP_SYS(brk),
    SCMP_SYS(mmap),
    SCMP_SYS(munmap),
    SCMP_SYS(mremap),
    SCMP_SYS(madvise),
    SCMP_SYS(futex),
    SCMP_SYS(rt_sigprocmask),
    SCMP_SYS(rt_sigaction),
    SCMP_SYS(rt_sigreturn),
    SCMP_SYS(clock_gettime),
    SCMP_SYS(clock_nanosleep),
    SCMP_SYS(nanosleep),
    SCMP_SYS(getpid),
    SCMP_SYS(gettid),
    SCMP_SYS(tgkill),
    SCMP_SYS(unlink),
    SCMP_SYS(unlinkat),
    SCMP_SYS(fcntl),
    SCMP_SYS(sched_yield),
    SCMP_SYS(restart_syscall),
    SCMP_SYS(getrandom),
#if defined(__SANITIZE_ADDRESS__)
    /* The sanitizer runtime of test builds (leak check at exit stops the world). */
    SCMP_SYS(mprotect),
    SCMP_SYS(sigaltstack),
    SCMP_SYS(prctl),
    SCMP_SYS(prlimit64),
    SCMP_SYS(readlink),
    SCMP_SYS(readlinkat),
    SCMP_SYS(getppid),
    SCMP_SYS(clone),
    SCMP_SYS(clone3),
    SCMP_SYS(ptrace),
    SCMP_SYS(sched_getaffinity),
    SCMP_SYS(getdents64),
    SCMP_SYS(set_robust_list),
    SCMP_SYS(rseq),
    SCMP_SYS(pipe2),
    SCMP_SYS(dup),
    SCMP_SYS(dup2),
    SCMP_SYS(dup3), /* dup2 on architectures without it (arm64) */
    SCMP_SYS(getrusage),
    SCMP_SYS(sched_getparam),
    SCMP_SYS(ioctl),
#endif
};

/* The network process: slirp's Unix sockets (its forwards, our egress listener), the
 * broker's socket and the descriptors that ride on it. The connected TCP sockets it uses
 * come from the broker. */
static const int jail_worker_net[] = {
    SCMP_SYS(bind),        SCMP_SYS(listen),      SCMP_SYS(accept4),    SCMP_SYS(accept),
    SCMP_SYS(connect),     SCMP_SYS(sendmsg),     SCMP_SYS(recvmsg),    SCMP_SYS(sendto),
    SCMP_SYS(recvfrom),    SCMP_SYS(shutdown),    SCMP_SYS(getsockopt), SCMP_SYS(setsockopt),
    SCMP_SYS(getsockname), SCMP_SYS(getpeername), SCMP_SYS(ioctl),
};

/* QEMU needs hundreds of syscalls and names its own in -sandbox; this list only takes away
 * what QEMU never uses here and what a guest that took over QEMU would use to go further:
 * other processes (the worker above all), kernel attack surface that QEMU does not need,
 * the mount table, new namespaces (a user namespace would give it capabilities back), and
 * any network but the Unix sockets of its chardevs. KILL_PROCESS, not an errno: a QEMU that
 * tries is compromised, and the run ends as a VM crash. */
static const int jail_qemu_kill[] = {
    SCMP_SYS(ptrace),
    SCMP_SYS(process_vm_readv),
    SCMP_SYS(process_vm_writev),
    SCMP_SYS(pidfd_getfd),
    SCMP_SYS(process_madvise),
    SCMP_SYS(kcmp),
    SCMP_SYS(bpf),
    SCMP_SYS(userfaultfd),
    SCMP_SYS(io_uring_enter),
    SCMP_SYS(io_uring_register),
    SCMP_SYS(perf_event_open),
    SCMP_SYS(keyctl),
    SCMP_SYS(add_key),
    SCMP_SYS(request_key),
    SCMP_SYS(kexec_load),
    SCMP_SYS(kexec_file_load),
    SCMP_SYS(mount),
    SCMP_SYS(umount2),
    SCMP_SYS(pivot_root),
    SCMP_SYS(chroot),
    SCMP_SYS(fsopen),
    SCMP_SYS(fsconfig),
    SCMP_SYS(fsmount),
    SCMP_SYS(fspick),
    SCMP_SYS(move_mount),
    SCMP_SYS(open_tree),
    SCMP_SYS(mount_setattr),
    SCMP_SYS(unshare),
    SCMP_SYS(setns),
};

#endif
