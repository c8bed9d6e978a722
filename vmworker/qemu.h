/* Starting, watching and measuring the one QEMU a worker owns. */
#ifndef SBX_QEMU_H
#define SBX_QEMU_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"
#include "worker.pb-c.h"

typedef struct {
    pid_t pid;
    char agent_sock[PATH_MAX];
    char console_sock[PATH_MAX];
    char qmp_sock[PATH_MAX];
    char log_path[PATH_MAX]; /* QEMU's own stderr */
    uint64_t t_spawn;        /* now_ms() just before fork */
    /* Called in QEMU's child right before execve (the jail's seccomp filter for QEMU); a
     * failure stops the start. NULL: none. */
    int (*confine)(void *arg);
    void *confine_arg;
    int net_fd; /* the network process's frame socket (vmworker/net.c), or -1: no NIC */
} qemu_vm;

/* Build the command line from cfg and start QEMU (child dies with the worker); every VM serves
 * QMP on qmp_sock. A template (cfg->start_mode "template") keeps guest RAM in the file
 * snapshot_dir/mem, shared; a restore maps that file privately (copy-on-write, the file stays
 * as it is) and waits for its device state (-incoming defer). */
int qemu_spawn(const Sbx__Worker__VmConfig *cfg, qemu_vm *vm, sbx_err *err);
/* Connect to a Unix socket QEMU serves, retrying until deadline (now_ms clock) while the
 * QEMU process is alive. Returns the fd or -1 with err. */
int qemu_connect(qemu_vm *vm, const char *path, uint64_t deadline, sbx_err *err);
/* CPU time (user+system, all threads) and peak RSS of the QEMU process, read from /proc. */
int qemu_usage(const qemu_vm *vm, uint64_t *cpu_ms, uint64_t *peak_mb);
/* Last bytes of QEMU's stderr log, for error messages. */
void qemu_log_tail(const qemu_vm *vm, char *out, size_t n);
/* SIGKILL and reap (idempotent). */
void qemu_kill(qemu_vm *vm);

#endif
