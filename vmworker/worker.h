/* What the worker's own files share: the one VM's state, the error that ends it, the event wait
 * and the channels to sbxd and the guest agent (worker.c), the relay (relay.c) and memory
 * snapshots (snapshot.c). */
#ifndef SBX_WORKER_H
#define SBX_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "agent.pb-c.h"
#include "frame.h"
#include "qemu.h"
#include "qmp.h"
#include "worker.pb-c.h"

#define CONSOLE_TAIL 2048

typedef struct {
    int ctl; /* sbxd */
    frame_reader ctl_rd;
    int sigfd;
    qemu_vm vm;
    int agent;
    frame_reader ag_rd;
    int con;
    char con_tail[CONSOLE_TAIL];
    size_t con_len;
    Sbx__Worker__VmConfig *cfg;
    uint64_t req_id;
    uint64_t t_start;
    bool idle; /* waiting for sbxd's next request: time for the balloon (balloon.h) */
} worker;

extern worker W;
/* QEMU's control socket, open from boot to exit (connected before the seccomp filter). */
extern qmp_conn qmp;
/* How this VM started ("cold" or "restore"), and why a restore asked for was given up. */
extern const char *start_mode;
extern char restore_error[512];
extern bool restore_timed_out;
/* Each request to the agent gets its own id; replies with another id are stale (a late answer
 * to an abandoned request) and are dropped. */
extern uint64_t agent_seq;

/* An error that ends the VM, as a value on its way up to main, the one place that dies: what
 * sbxd is told (kind, transient) and why. Errors a request survives go out with reply_error. */
typedef struct {
    Sbx__Control__ErrorKind kind;
    bool transient;
    char msg[1024];
} vm_err;

/* Fill err; returns -1. */
__attribute__((format(printf, 4, 5))) int vm_fail(vm_err *err, Sbx__Control__ErrorKind kind,
                                                  bool transient, const char *fmt, ...);

/* One line on stderr (sbxd's log), prefixed with the worker's pid. */
__attribute__((format(printf, 1, 2))) void wlog(const char *fmt, ...);

/* chan.c: the channels */
void send_ctl(Sbx__Worker__FromWorker *m);
/* Report err to sbxd for the current request. */
void send_error(const vm_err *err);
/* An error for the current request that leaves the VM usable (sessions carry on). */
__attribute__((format(printf, 3, 4))) void reply_error(Sbx__Control__ErrorKind kind, bool transient,
                                                       const char *fmt, ...);
/* Why the VM is gone, for messages: QEMU's own words, else the guest console's last line. */
const char *vm_gone_reason(char *buf, size_t n);
void console_read(void);
/* A channel to the VM that failed: VmTimeout when it timed out (ETIMEDOUT), else Communication. */
Sbx__Control__ErrorKind agent_err_kind(const sbx_err *e);
/* Connect to the guest's console and agent sockets QEMU serves, until deadline: -1 when QEMU
 * did not open them (e), -2 when the VM cannot go on (err). */
int guest_connect(uint64_t deadline, sbx_err *e, vm_err *err);
/* One request to the guest agent; a guest that does not take it in time loses its VM. */
int send_agent(Sbx__Agent__HostMsg *m, vm_err *err);
/* A Hello with fresh randomness and the host's clock. */
int send_hello(vm_err *err);
/* Decode a frame from the guest agent. */
Sbx__Agent__GuestMsg *agent_unpack(const uint8_t *f, size_t n, vm_err *err);

/* worker.c: the event wait */
/* Kill QEMU and remove what the worker made in the run directory (idempotent). */
void cleanup_vm(void);
/* The signalfd is readable: SIGTERM/SIGINT end the worker and its VM; returns true, with QEMU's
 * wait status in *st, when QEMU has exited. */
bool reap_signals(int *st);
enum { EV_ERROR = -1, EV_NONE, EV_CTL, EV_AGENT, EV_TIMEOUT };
/* Wait for the next frame from sbxd (when want_ctl; otherwise sbxd's frames stay buffered for
 * later) or the agent, until deadline. Handles the console, signals and QEMU's death on the way.
 * *frame points into the reader's buffer. */
int next_event(uint64_t deadline, bool want_ctl, const uint8_t **frame, size_t *len, vm_err *err);
/* The next reply from the agent to request `id`, until deadline: 1 with *g, 0 on timeout. */
int recv_agent(uint64_t id, uint64_t deadline, Sbx__Agent__GuestMsg **g, vm_err *err);

/* relay.c: -1 when the VM cannot go on; run_exec returns 1 when a session lost its VM. */
int run_exec(Sbx__Worker__ExecRequest *req, uint64_t boot_ms, uint64_t setup_ms, vm_err *err);
int run_file_op(Sbx__Worker__ToWorker *m, vm_err *err);

/* snapshot.c */
/* Start from the memory snapshot: 1 when restored; 0 when given up (QEMU gone, restore_error
 * says why: the caller boots cold); -1 when the VM cannot go on. */
int snapshot_restore(uint64_t *boot_ms, vm_err *err);
/* On a template VM that booted cold: warm the REPL, save the device state, report, stop QEMU. */
int snapshot_make_template(uint64_t boot_ms, vm_err *err);

#endif
