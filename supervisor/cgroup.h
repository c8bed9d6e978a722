/* One cgroup per VM (its worker and QEMU): memory, pids and cpu limits, the external CPU and
 * memory figures, and removal when the VM ends. cgroup v2 where its controllers are available,
 * else v1 (memory, pids, cpu+cpuacct hierarchies). */
#ifndef SBX_CGROUP_H
#define SBX_CGROUP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"

typedef struct {
    char name[64]; /* "vm-<daemon pid>-<seq>" */
    bool active;
} cgroup_vm;

/* Detect the cgroup layout once. Returns false (with a reason) when no usable hierarchy can be
 * written, in which case VMs run without a cgroup. */
bool cgroup_init(char *why, size_t n);
/* "v2", "v1" or "none". */
const char *cgroup_mode(void);
/* Create the VM's cgroup with limits: memory (bytes), pids, cpu (in units of 1/1000 CPU). */
int cgroup_create(cgroup_vm *cg, uint64_t seq, uint64_t mem_bytes, unsigned pids,
                  unsigned milli_cpus, sbx_err *err);
/* Move a process in (before it execs anything). */
int cgroup_attach(const cgroup_vm *cg, pid_t pid, sbx_err *err);
/* Peak memory (bytes) and CPU time (ns) so far; 0 where unknown. */
void cgroup_usage(const cgroup_vm *cg, uint64_t *peak_bytes, uint64_t *cpu_ns);
/* Kill whatever is left inside and remove it. Returns 0 when gone, 1 when still busy (tasks
 * exiting: call again later), -1 on error. */
int cgroup_destroy(cgroup_vm *cg);
/* cgroup_destroy now, and again from the loop while its last tasks are still exiting. */
void cgroup_release(cgroup_vm *cg);
/* Read one limit back as text, for tests and `sbx status` (e.g. "memory"). */
int cgroup_path(const cgroup_vm *cg, const char *controller, char *out, size_t n);

#endif
