/* The worker's jail, narrowed at one call site: jail_enter() builds the VM's private root and
 * drops to the VM's uid with no capabilities and no_new_privs; jail_seccomp() then confines the
 * worker's remaining life to the syscalls it still needs. */
#ifndef SBX_JAIL_H
#define SBX_JAIL_H

#include <fcntl.h>
#include <stdbool.h>
#include <sys/types.h>

#include "common.h"

typedef struct {
    const char *run_dir;                         /* host path: holds the jail's root */
    const char *kernel, *initrd, *rootfs, *qemu; /* host paths: bound read-only under /assets */
    const char *snapshot_dir;                    /* host path or NULL: bound on JAIL_SNAPSHOT */
    bool snapshot_rw;  /* a template writes its snapshot there; restores only read */
    const char *layer; /* host path or NULL: a package layer, bound read-only on JAIL_LAYER */
    bool kvm;          /* give QEMU /dev/kvm */
    bool userns;       /* already in a user namespace where uid 0 is sbxd's user */
    uid_t uid;
    gid_t gid;
} jail_spec;

/* The jail's /vm (QEMU's sockets and log): a tmpfs this big, with this many inodes at most. */
#define JAIL_VM_DIR_KB 4096
#define JAIL_VM_DIR_INODES 32

/* Open flags the worker's filter refuses once it runs: writing, creating, truncating,
 * appending (O_TMPFILE's own bit; it carries O_DIRECTORY, which stays allowed). */
#define JAIL_OPEN_WRITE_BITS (O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | (O_TMPFILE & ~O_DIRECTORY))

/* Paths inside the jail. */
#define JAIL_VM_DIR "/vm"
#define JAIL_KERNEL "/assets/vmlinux"
#define JAIL_INITRD "/assets/initramfs.cpio"
#define JAIL_ROOTFS "/assets/rootfs.sqfs"
#define JAIL_QEMU "/assets/qemu-system-x86_64"
#define JAIL_SNAPSHOT "/assets/snapshot"
#define JAIL_LAYER "/assets/layer.sqfs"

/* Called once, early, in the fresh namespaces sbxd created. After it returns 0 the process sees
 * only: /usr (read-only), /assets, /vm, a minimal /dev, /proc of its own pid namespace, /tmp;
 * it runs as spec->uid with CapEff/CapPrm/CapBnd empty and no_new_privs set. */
int jail_enter(const jail_spec *spec, sbx_err *err);
/* Install the worker's syscall allowlist (default: kill the process). */
int jail_seccomp(sbx_err *err);
/* The same plus what the network process needs (Unix sockets, descriptor passing). */
int jail_seccomp_net(sbx_err *err);

/* QEMU's filter of its own, beneath its -sandbox: a denylist (default allow) that kills QEMU on
 * what a guest that took over QEMU would reach for next (ptrace and other processes' memory,
 * bpf, userfaultfd, io_uring, perf, keys, kexec, mounts, namespaces, sockets other than
 * AF_UNIX). Built in the worker; loaded by jail_qemu_confine in QEMU's child before execve. */
int jail_qemu_filter(void **filter, sbx_err *err);
/* In QEMU's child (after fork, before execve): no_new_privs, then load the filter from
 * jail_qemu_filter (a scmp_filter_ctx). Returns -1 with errno on failure. */
int jail_qemu_confine(void *filter);

#endif
