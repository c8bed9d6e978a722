/* Prometheus metrics (supervisor/metrics.c): counters fed by the ledger and the caches, served in
 * the text format on metrics_listen (an IPv4 address:port or a Unix socket path; off when
 * unset). A scrape reads counters and the scheduler's figures: it never touches a VM. */
#ifndef SBX_METRICS_H
#define SBX_METRICS_H

#include <stdbool.h>

#include "sbxd.h"

void metrics_init(void);
void metrics_shutdown(void);

/* A run or session exec ended with a result (kind "run" or "session_exec"). */
void metrics_result(const char *kind, const char *language, const Sbx__Control__ExecResult *r);
/* A request ended with an error. */
void metrics_error(Sbx__Control__ErrorKind kind);
/* A VM was asked to start from a memory snapshot (hit) or had none (miss). */
void metrics_snapshot(bool hit);
/* A request with packages found its layer ready (hit), or waited for one to be made (miss). */
void metrics_layer(bool hit);

#endif
