/* Memory snapshots (supervisor/snapshot.c): which VMs start from one, and building them. */
#ifndef SBX_SNAPSHOT_H
#define SBX_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>

#include "layers.h"
#include "sbxd.h"
#include "control.pb-c.h"
#include "worker.pb-c.h"

/* Once, after the accelerator is known to be decidable (accel_init): the cache directory. */
void snapshot_init(void);
/* job_dispatch, with vc filled in (assets, accel, memory, ids): decide how the VM starts.
 * A template job (one snapshot.c queued) gets its staging directory; a run or an owned VM gets
 * "restore" and the snapshot's directory when a valid one exists for its inputs, and dir (n
 * bytes, kept with the job) notes which one for snapshot_booted ("" otherwise); with none, it
 * boots cold and a template build is queued for later. Probes always boot cold. */
void snapshot_prepare(Sbx__Worker__VmConfig *vc, const char *language, layer *l, bool probe,
                      const vm_owner_ops *ops, void *owner, char *dir, size_t n);
/* The worker's Booted for a VM that snapshot_prepare told to restore: a failed restore marks
 * the snapshot bad (it is removed and rebuilt), a slow one counts towards that. */
void snapshot_booted(const char *dir, const Sbx__Worker__Booted *b);
/* For `sbx status`: whether snapshots are in use, where, and those known (ready in the cache,
 * building, or failed and waiting to be tried again). Valid until the next call. */
void snapshot_status(Sbx__Control__StatusReply *s);
/* Disk used by the snapshots of VMs with the package layer of that key, and removing them (the
 * layer is evicted or was found broken). */
uint64_t snapshot_layer_disk(const char *layer_key);
void snapshot_drop_layer(const char *layer_key);
/* After sched_shutdown: remove the staging directories of builds cut short. */
void snapshot_shutdown(void);

#endif
