/* What the supervisor's rooms (control, sched, accel) share. */
#ifndef SBX_SBXD_H
#define SBX_SBXD_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"
#include "config.h"
#include "control.pb-c.h"
#include "worker.pb-c.h"

extern sbx_config cfg;
extern char run_base[]; /* per-daemon directory holding each VM's run directory */
extern uint64_t started_ms;

__attribute__((format(printf, 1, 2))) void slog(const char *fmt, ...);
/* Something happened: pushes the idle-exit deadline back. */
void sbxd_activity(void);

/* control.c: the control socket and the life of its connections. A client pointer stays valid
 * until sched_client_gone/session_client_gone/pool_client_gone has been called for it, always
 * from the loop, never under a caller. */
typedef struct client client;
typedef struct {
    uid_t uid; /* SO_PEERCRED at accept */
    pid_t pid;
    bool helloed;
    bool refused; /* uid not allowed: its first frame gets a permission error */
} client_peer;
int control_listen(sbx_err *err);
/* Close every connection and forget it now (shutdown; the fuzzer between inputs). */
void control_shutdown_clients(void);
void control_shutdown(void);
unsigned control_clients(void);
/* Connections closed at accept (max_connections) and clients dropped for not reading. */
void control_counters(uint64_t *refused, uint64_t *dropped);
/* Take a connected socket as a client (accept, and the fuzzer). NULL when out of memory. */
client *control_adopt(int fd, uid_t uid, pid_t pid);
uid_t control_client_uid(const client *c);
/* Queue a reply for a client (NULL or closed client: dropped). Never frees anything. */
void control_send(client *c, Sbx__Control__Reply *r);
/* control_send, a result saying which package layer its VM had (the reply points into a worker's
 * message, which owns its strings: the field is set only for the send). */
void control_send_layer(client *c, Sbx__Control__Reply *r, const char *layer_name, bool built);
/* PortsReady to a run or session opener whose VM exposes ports (nothing otherwise). */
void control_send_ports(client *c, uint64_t id, const Sbx__Worker__Booted *b);

/* request.c: what a frame asks for. */
typedef enum {
    REQUEST_OK,
    REQUEST_HELLOED,
    REQUEST_CLOSE_AFTER_REPLY, /* refused or protocol error: close once the reply is out */
    REQUEST_CLOSE,             /* undecodable: close now */
} request_verdict;
request_verdict request_handle(client *c, const client_peer *peer, const uint8_t *data, size_t len);
void control_send_error(client *c, uint64_t id, Sbx__Control__ErrorKind kind, bool transient,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
bool control_error_transient(Sbx__Control__ErrorKind kind);
/* A run's or session open's package layer: layer_acquire for its (validated) specs, a Progress
 * reply when it waits for an install. NULL after replying with the error. */
typedef struct layer_wait layer_wait;
struct layer_result;
layer_wait *request_packages(client *c, uint64_t id, const char *language, char **specs, size_t n,
                             void (*cb)(void *owner, const struct layer_result *r), void *owner);
/* The one translation of what a worker says into the reply to client request id (the reply
 * points into m). false for frames that answer no request (Hello, Booted, SnapshotSaved);
 * *final: whether it ends the request. */
bool control_reply_from_worker(Sbx__Worker__FromWorker *m, uint64_t id, Sbx__Control__Reply *r,
                               bool *final);

/* sched.c: admission, workers, their VMs. */
typedef struct job job;
/* Whoever uses a VM: a one-shot run (run.c), a session, a pool VM, a snapshot template, the
 * accelerator probe. sched.c knows nothing of clients: everything goes through these. */
typedef struct {
    void (*booted)(void *owner, const Sbx__Worker__Booted *b);
    /* Any frame from the worker after Hello (results, chunks, errors); may modify it. */
    void (*frame)(void *owner, Sbx__Worker__FromWorker *m);
    /* The VM is gone (closed, failed to start, died). The job pointer is invalid from now.
     * Called exactly once, unless the owner let go first (sched_vm_close). */
    void (*gone)(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why);
    /* Optional: the worker was just started; queue the first request behind its start, so it
     * needs no round trip after the boot. -1 when it cannot be queued. */
    int (*started)(void *owner, job *j);
    /* Work nobody waits for (pool VMs, snapshot templates): never ahead of runs and sessions
     * in the queue. */
    bool background;
    /* Give idle memory back through the balloon (balloon_idle_seconds; cold-booted VMs). */
    bool reclaim_idle;
    /* One request, then the worker ends (one-shot runs, the probe). */
    bool one_shot;
    /* The accelerator probe: no snapshot, and the worker only boots. */
    bool probe;
} vm_owner_ops;
/* Queue a VM for an owner; it counts against max_concurrent_vms like a run. NULL with errno
 * EAGAIN when max_queued requests already wait (never for background owners), ENOMEM. */
job *sched_open_vm(const char *language, uint32_t memory_mb, const vm_owner_ops *ops, void *owner);
/* The NIC a VM gets (before it starts; n stays the owner's and must outlive the job). NULL or an
 * empty request: none. */
void sched_vm_set_network(job *j, const Sbx__Control__NetworkRequest *n);
/* A NIC that reaches nothing and exposes nothing (snapshot templates for VMs with a NIC). */
void sched_vm_set_nic_only(job *j);
/* The package layer the VM gets (layers.c; before it starts): the job holds it until it ends. */
typedef struct layer layer;
void sched_vm_set_layer(job *j, layer *l);
/* Send a request to the VM's worker, tagged with the id set by sched_vm_set_request. */
int sched_vm_send(job *j, Sbx__Worker__ToWorker *m);
void sched_vm_set_request(job *j, uint64_t req_id);
/* sbxd's own deadline for what the VM was just asked (its timeout; run_grace_seconds is added):
 * past it the worker is killed and the owner told VmTimeout. 0 clears it. */
void sched_vm_deadline(job *j, uint32_t seconds);
/* Whether it holds a VM slot (dispatched), as opposed to waiting in the queue. */
bool sched_vm_started(const job *j);
/* Host-side CPU/memory figures and sbxd's share of the timing, into a result. */
void sched_vm_fill_result(job *j, Sbx__Control__ExecResult *res);
/* The sbx-vmworker binary: $EXEC_SANDBOX_VMWORKER, else beside sbxd. -1 if unknown. */
int sched_worker_path(char *out, size_t n);
/* Count a finished run in runs_total (for runs not carried by a job of their own). */
void sched_count_run(void);
/* Stop the VM and detach its owner (no callbacks after this). */
void sched_vm_close(job *j);
/* Start a VM at once, ahead of the queue and with the accelerator given (the probe). NULL with
 * err when it could not start (no callbacks then). */
job *sched_start_now(const char *language, uint32_t memory_mb, const char *accel,
                     uint32_t boot_timeout_ms, const vm_owner_ops *ops, void *owner, sbx_err *err);
unsigned sched_running(void);
unsigned sched_queued(void);
uint64_t sched_runs_total(void);
/* Try to start queued work (after a slot frees or the accelerator verdict arrives). */
void sched_pump(void);
void sched_shutdown(void);

/* run.c: one-shot runs, each on a VM of its own (or a warm pool VM). */
/* Takes ownership of req (already validated, defaults applied). */
void run_submit(client *c, uint64_t id, Sbx__Control__RunRequest *req);
/* The same, never through the warm pool. */
void run_cold(client *c, uint64_t id, Sbx__Control__RunRequest *req);
/* Its runs stop: nobody waits for them. */
void run_client_gone(client *c);
/* What the worker is asked for a run (pointing into req). */
void run_exec_request(const Sbx__Control__RunRequest *req, Sbx__Worker__ExecRequest *ex);

/* session.c: sessions, held across client connections until closed or idle. */
/* Takes ownership of req. Sessions belong to the uid that opened them: others (but root) get
 * "no such session". */
void session_handle(client *c, uid_t uid, Sbx__Control__Request *req);
void session_client_gone(client *c);
/* The language of an open session ("" for none). */
const char *session_language(const char *id);
unsigned session_count(void);
void session_shutdown(void);

/* pool.c: pre-booted VMs with their REPL started, one use each. */
void pool_start(void);
void pool_refill(void);
/* Hand the run to a ready pool VM (which then owns req); false when none fits (the run then
 * boots its own). */
bool pool_take(client *c, uint64_t id, Sbx__Control__RunRequest *req);
/* Give up one idle pool VM's slot to a waiting run. */
bool pool_evict_one(void);
/* language's snapshot for memory_mb was just published: idle cold-booted pool VMs of it are
 * replaced by restored ones. */
void pool_snapshot_ready(const char *language, uint32_t memory_mb);
void pool_client_gone(client *c);
void pool_stats(unsigned *ready, unsigned *booting, uint64_t *memory_mb);
const char *pool_warmup_code(const char *lang);
void pool_shutdown(void);

/* accel.c: which accelerator runs VMs. */
void accel_init(void);
/* "kvm" or "tcg" once decided, else NULL (a probe is needed or running). */
const char *accel_verdict(void);
const char *accel_reason(void);
/* Called by sched when no verdict exists yet: starts the probe once. */
void accel_need(void);

/* Paths of the assets for a language (typescript: javascript's); -1 with err when missing. */
int assets_resolve(const char *language, char *kernel, char *initrd, char *rootfs, size_t n,
                   sbx_err *err);

#endif
