/* Starting a VM's worker process (spawn.c). */
#ifndef SBX_SPAWN_H
#define SBX_SPAWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"
#include "common.h"
#include "net.pb-c.h"

/* The sbx-vmworker binary: $EXEC_SANDBOX_VMWORKER, else beside sbxd. -1 if unknown. */
int spawn_worker_path(char *out, size_t n);
/* Whether workers can start here at all: a child in their namespaces, which exits at once.
 * Before the event loop (it waits for that child itself). err->code is clone's errno. */
int spawn_probe(sbx_err *err);
/* fork+exec the worker in new namespaces, attached to cg before it runs; *fd_out is sbxd's end
 * of its socket (non-blocking). */
int spawn_worker(cgroup_vm *cg, uint64_t seq, bool userns, int net_fd, pid_t *pid_out, int *fd_out,
                 sbx_err *err);
/* The fd number the worker finds net_fd (the broker's socket) at, when net_fd >= 0. */
#define SPAWN_NET_FD 4
/* The sbx-netbroker binary: $EXEC_SANDBOX_NETBROKER, else beside sbxd. */
int spawn_broker_path(char *out, size_t n);
/* fork+exec a VM's network broker with its policy; *worker_end: the socket the worker gets. */
int spawn_broker(cgroup_vm *cg, uint64_t seq, const Sbx__Net__NetPolicy *policy, uid_t uid,
                 gid_t gid, pid_t *pid_out, int *worker_end, sbx_err *err);
/* Reap pid whenever it exits (a libev child watcher of its own). */
void spawn_reap(pid_t pid);
/* A free slot of the VM uid range (vm_uid_base + slot), or -1 when all are taken. */
int spawn_uid_alloc(void);
void spawn_uid_free(int slot);

#endif
