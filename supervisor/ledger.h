/* The requests in flight (supervisor/ledger.c): what each asked for (never the code, env values
 * or file contents: a sha256 and sizes instead), noted when it arrives and closed by its final
 * reply; on closing, one JSON line to the audit log (audit_log) and the counters of metrics.c. */
#ifndef SBX_LEDGER_H
#define SBX_LEDGER_H

#include "sbxd.h"

/* Once, at start: the audit log (audit_log unset: no file; the counters still run). */
void ledger_init(void);
/* request_handle, for runs, sessions and file requests: note it. */
void ledger_begin(client *c, const client_peer *peer, const Sbx__Control__Request *req);
/* control_send, for every reply: a final one closes its request. */
void ledger_reply(client *c, const Sbx__Control__Reply *r);
/* The client went away: what it had in flight ends as "client gone". */
void ledger_client_gone(client *c);
/* Audit lines not written (a full disk, an unwritable file): counted, never waited for. */
uint64_t ledger_audit_dropped(void);
void ledger_shutdown(void);

#endif
