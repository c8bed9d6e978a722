/* Memory reclaim for idle VMs: the worker inflates the VM's virtio-balloon over QMP once the VM
 * has waited reclaim_idle_ms for its next request, so the guest hands back memory it has free
 * or only uses for its page cache, and QEMU returns those pages to the host. The next request
 * gives it all back first. Guest cooperation is needed and not trusted: a guest that refuses to
 * inflate only keeps its own memory, and a balloon that does not reach its target within a few
 * seconds is stopped where it stands. */
#ifndef SBX_BALLOON_H
#define SBX_BALLOON_H

#include <stdbool.h>
#include <stdint.h>

#include "qmp.h"

/* Reclaim on q's VM of memory_mb MB after idle_ms without a request; 0 (or q NULL): never. */
void balloon_init(qmp_conn *q, uint32_t memory_mb, uint32_t idle_ms);
/* The worker starts waiting for its next request. */
void balloon_idle_start(void);
/* When balloon_tick wants to run next (UINT64_MAX: not while the VM stays idle). */
uint64_t balloon_due(void);
/* Advance the reclaim; called by the idle wait once balloon_due() has passed. */
void balloon_tick(void);
/* A request arrived that may need the guest's memory: deflate (without waiting for the guest). */
void balloon_wake(void);

/* The balloon target (the VM's logical size, MiB) for a VM of full_mb whose guest says it has
 * avail_mb available (< 0: it did not say): what it uses plus headroom, or full_mb when there is
 * too little to take. */
uint32_t balloon_target_mb(uint32_t full_mb, double avail_mb);

#endif
