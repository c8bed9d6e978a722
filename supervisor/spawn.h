/* Starting a VM's worker process (spawn.c). */
#ifndef SBX_SPAWN_H
#define SBX_SPAWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"
#include "common.h"

/* The sbx-vmworker binary: $EXEC_SANDBOX_VMWORKER, else beside sbxd. -1 if unknown. */
int spawn_worker_path(char *out, size_t n);
/* fork+exec the worker in new namespaces, attached to cg before it runs; *fd_out is sbxd's end
 * of its socket (non-blocking). */
int spawn_worker(cgroup_vm *cg, uint64_t seq, bool userns, pid_t *pid_out, int *fd_out,
                 sbx_err *err);
/* A free slot of the VM uid range (vm_uid_base + slot), or -1 when all are taken. */
int spawn_uid_alloc(void);
void spawn_uid_free(int slot);

#endif
