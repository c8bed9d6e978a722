/* The warm pool: warm_pool_size VMs per language (python, javascript) booted ahead with their
 * REPL started. A run that fits a pool VM (default memory, a pooled language) takes one with a
 * single exec frame; the VM is destroyed after that one use and the pool refills in the
 * background. Idle pool VMs are health-checked and replaced when they fail; they yield their
 * slot when runs are waiting for capacity. */
#include <stdio.h>
#include <string.h>

#include "sbx_limits.h"
#include "sbxd.h"

#define HEALTH_PERIOD_S 30.
#define HEALTH_TIMEOUT_MS 5000

typedef enum { P_BOOTING, P_WARMING, P_READY, P_CHECKING, P_TAKEN } pool_state;

typedef struct pvm {
    job *job;
    const char *language;
    pool_state state;
    uint64_t boot_ms;
    /* The run that took it (owned), and whether any of its output went out yet. */
    client *c;
    uint64_t req_id;
    Sbx__Control__RunRequest *req;
    bool forwarded;
    bool stale; /* booted cold before its language's snapshot was ready: replace when idle */
    uint64_t t_check;
    struct pvm *next;
} pvm;

static const char *const pooled[] = {"python", "javascript"};
/* Code that prints nothing, to start (and later to check) each language's REPL. It goes
 * through the output path once, so a run's first print does not pay for warming it up. */
const char *pool_warmup_code(const char *lang)
{
    return !strcmp(lang, "javascript") ? "process.stdout.write('')" : "print(end='')";
}

static pvm *vms;
static ev_timer health;
static bool started;

static unsigned count(const char *lang, bool only_ready)
{
    unsigned n = 0;
    for (pvm *v = vms; v; v = v->next)
        if (!strcmp(v->language, lang) && v->state != P_TAKEN &&
            (!only_ready || v->state == P_READY))
            n++;
    return n;
}

void pool_stats(unsigned *ready, unsigned *booting, uint64_t *memory_mb)
{
    *ready = *booting = 0;
    *memory_mb = 0;
    for (pvm *v = vms; v; v = v->next) {
        if (v->state == P_TAKEN)
            continue;
        if (v->state == P_READY || v->state == P_CHECKING)
            (*ready)++;
        else
            (*booting)++;
        *memory_mb += cfg.default_memory_mb;
    }
}

static void pvm_free(pvm *v)
{
    if (v->req)
        sbx__control__run_request__free_unpacked(v->req, NULL);
    free(v);
}

/* The VM failed under a run before any output went out: the run never really started, so it
 * gets a VM of its own instead of an error (a dead pool VM is never what a run ends on). */
static bool retry_cold(pvm *v)
{
    if (v->state != P_TAKEN || v->forwarded || !v->req || !v->c)
        return false;
    slog("pool: a %s VM failed as a run took it; booting one for the run", v->language);
    Sbx__Control__RunRequest *req = v->req;
    v->req = NULL;
    run_cold(v->c, v->req_id, req);
    return true;
}

static void unlink_vm(pvm *v)
{
    for (pvm **p = &vms; *p; p = &(*p)->next)
        if (*p == v) {
            *p = v->next;
            return;
        }
}

static void send_noop(pvm *v, uint32_t timeout_ms)
{
    Sbx__Worker__ExecRequest ex = SBX__WORKER__EXEC_REQUEST__INIT;
    ex.language = (char *)v->language;
    ex.code.data = (uint8_t *)pool_warmup_code(v->language);
    ex.code.len = strlen(pool_warmup_code(v->language));
    ex.timeout_ms = timeout_ms;
    ex.keep_state = true;
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
    m.exec = &ex;
    sched_vm_set_request(v->job, 0);
    if (sched_vm_send(v->job, &m) < 0) {
        job *j = v->job;
        unlink_vm(v);
        free(v);
        sched_vm_close(j);
    }
}

/* Close a pool VM that is done (used, failed, or making way for a restored one) and refill. */
static void drop(pvm *v)
{
    job *j = v->job;
    unlink_vm(v);
    pvm_free(v);
    sched_vm_close(j);
    pool_refill();
}

/* A VM that booted cold before its language's snapshot was ready makes way for a restored one. */
static void replace_stale(pvm *v)
{
    slog("pool: replacing a cold-booted %s VM with one from the new snapshot", v->language);
    drop(v);
}

static void vm_booted(void *owner, const Sbx__Worker__Booted *b)
{
    pvm *v = owner;
    v->boot_ms = b->boot_ms;
    if (b->start_mode && !strcmp(b->start_mode, "restore"))
        v->stale = false;
    v->state = P_WARMING;
    send_noop(v, SBX_TIMEOUT_DEFAULT * 1000u);
}

static void vm_frame(void *owner, Sbx__Worker__FromWorker *m)
{
    pvm *v = owner;
    if (v->state == P_WARMING || v->state == P_CHECKING) {
        bool good = m->body_case == SBX__WORKER__FROM_WORKER__BODY_RESULT &&
                    m->result->exit_code == 0 && !m->result->interpreter_reset;
        if (m->body_case != SBX__WORKER__FROM_WORKER__BODY_RESULT &&
            m->body_case != SBX__WORKER__FROM_WORKER__BODY_ERROR)
            return;
        if (!good) {
            slog("pool: a %s VM failed its %s; replacing it", v->language,
                 v->state == P_WARMING ? "warm-up" : "health check");
            drop(v);
            return;
        }
        if (v->stale) { /* its snapshot became ready while it warmed up */
            replace_stale(v);
            return;
        }
        v->state = P_READY;
        sched_pump(); /* a run may be waiting for exactly this */
        return;
    }
    if (v->state != P_TAKEN)
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_CHUNK && !v->req->stream)
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_ERROR && m->error->transient &&
        retry_cold(v)) {
        drop(v);
        return;
    }
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    bool final;
    if (!control_reply_from_worker(m, v->req_id, &r, &final))
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_CHUNK)
        v->forwarded = true;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_RESULT) {
        sched_vm_fill_result(v->job, m->result);
        m->result->warm_pool_hit = true;
        /* The message came from protobuf-c's unpacker, which frees its strings. */
        free(m->result->start_mode);
        m->result->start_mode = strdup("warm");
        /* The REPL was already running: this run's exec is all it took. */
        m->result->interpreter_reset = false;
        sched_count_run();
    }
    control_send(v->c, &r);
    if (!final)
        return;
    drop(v); /* one use only */
}

static void vm_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    pvm *v = owner;
    if (v->state == P_TAKEN && !retry_cold(v))
        control_send_error(v->c, v->req_id, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                           "the VM died during the run: %s", why);
    else if (v->state != P_TAKEN)
        slog("pool: a %s VM went away: %s", v->language, why);
    unlink_vm(v);
    pvm_free(v);
    pool_refill();
}

/* No balloon: a fresh pool VM has next to nothing to give back (measured 0-11 MB), and the run
 * that takes one would wait on the guest deflating it (10-40 ms more under TCG). */
static const vm_owner_ops pool_ops = {
    .booted = vm_booted, .frame = vm_frame, .gone = vm_gone, .background = true};

void pool_refill(void)
{
    static bool busy; /* opening a VM pumps the scheduler, which calls us again */
    if (!cfg.warm_pool_size || !started || busy)
        return;
    busy = true;
    for (size_t i = 0; i < ARRAY_LEN(pooled); i++) {
        while (count(pooled[i], false) < cfg.warm_pool_size) {
            /* Runs come first: never take the last free slot from one that is waiting. */
            if (sched_queued() || sched_running() >= cfg.max_concurrent_vms)
                goto out;
            pvm *v = calloc(1, sizeof *v);
            if (!v)
                goto out;
            v->language = pooled[i];
            v->state = P_BOOTING;
            v->next = vms;
            vms = v;
            job *j = sched_open_vm(v->language, cfg.default_memory_mb, &pool_ops, v);
            if (!j) {
                unlink_vm(v);
                free(v);
                goto out;
            }
            /* It may already be gone (a failed start reports synchronously). */
            for (pvm *x = vms; x; x = x->next)
                if (x == v)
                    v->job = j;
        }
    }
out:
    busy = false;
}

bool pool_take(client *c, uint64_t id, Sbx__Control__RunRequest *req)
{
    if (!cfg.warm_pool_size || req->memory_mb != cfg.default_memory_mb)
        return false;
    pvm *v = NULL;
    for (pvm *x = vms; x; x = x->next)
        if (x->state == P_READY && !strcmp(x->language, req->language))
            v = x;
    if (!v)
        return false;
    v->state = P_TAKEN;
    v->c = c;
    v->req_id = id;
    v->req = req;
    Sbx__Worker__ExecRequest ex;
    run_exec_request(req, &ex);
    ex.keep_state = true;
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
    m.exec = &ex;
    sched_vm_set_request(v->job, id);
    if (sched_vm_send(v->job, &m) < 0) {
        v->req = NULL; /* still the caller's */
        job *j = v->job;
        unlink_vm(v);
        pvm_free(v);
        sched_vm_close(j);
        return false;
    }
    /* No refill here: a VM booting beside the run would slow it down on a small host. The
     * refill starts once the run is answered. */
    return true;
}

void pool_snapshot_ready(const char *language, uint32_t memory_mb)
{
    if (memory_mb != cfg.default_memory_mb)
        return;
    /* A restored VM takes about half the host memory of a cold one (README): swap them. VMs
     * still booting are judged by how they started (vm_booted). */
    for (pvm *v = vms; v; v = v->next)
        if (!strcmp(v->language, language) && v->state != P_TAKEN)
            v->stale = true;
    /* drop() refills, which changes the list: look again from its head after each. */
    for (bool again = true; again;) {
        again = false;
        for (pvm *v = vms; v && !again; v = v->next)
            if (v->stale && v->state == P_READY) {
                replace_stale(v);
                again = true;
            }
    }
}

bool pool_evict_one(void)
{
    /* Only a VM that holds a slot frees one; prefer one that is ready (not mid-boot). */
    pvm *pick = NULL;
    for (pvm *v = vms; v; v = v->next)
        if (v->state != P_TAKEN && sched_vm_started(v->job) && (!pick || v->state == P_READY))
            pick = v;
    if (!pick)
        return false;
    job *j = pick->job;
    unlink_vm(pick);
    pvm_free(pick);
    sched_vm_close(j);
    return true;
}

/* Nobody waits for the run any more: stop its VM now rather than let it run to its timeout
 * (protocol.md: a run ends with its client). */
void pool_client_gone(client *c)
{
    for (bool again = true; again;) {
        again = false;
        for (pvm *v = vms; v; v = v->next)
            if (v->state == P_TAKEN && v->c == c) {
                slog("pool: the client of a run on a %s VM went away; stopping it", v->language);
                drop(v); /* refills, which changes the list: look again from its head */
                again = true;
                break;
            }
    }
}

static void health_cb(EV_P_ ev_timer *w, int revents)
{
    for (pvm *v = vms, *next; v; v = next) {
        next = v->next;
        if (v->state == P_READY) {
            v->state = P_CHECKING;
            send_noop(v, HEALTH_TIMEOUT_MS);
        }
    }
    pool_refill();
}

void pool_start(void)
{
    if (!cfg.warm_pool_size)
        return;
    started = true;
    ev_timer_init(&health, health_cb, HEALTH_PERIOD_S, HEALTH_PERIOD_S);
    ev_timer_start(EV_DEFAULT, &health);
    pool_refill();
}

void pool_shutdown(void)
{
    started = false;
    ev_timer_stop(EV_DEFAULT, &health);
    while (vms) {
        pvm *v = vms;
        vms = v->next;
        sched_vm_close(v->job);
        pvm_free(v);
    }
}
