/* One-shot runs: each RunRequest gets a warm pool VM when one fits, else a VM of its own (a VM
 * owner like sessions and the pool), and ends in exactly one result or one typed error for its
 * client. A run with packages first waits for its package layer (layers.c), then boots with it.
 * A run never outlives its client: when the client goes, its VM (or its wait) is stopped. */
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "netpolicy.h"
#include "sbxd.h"

typedef struct run {
    client *c; /* NULL once its client is gone */
    uint64_t id;
    Sbx__Control__RunRequest *req;
    job *job;
    layer_wait *wait; /* for its package layer, before it has a job */
    char layer_name[64];
    bool layer_built;
    uint64_t t_arrival, waited_ms; /* the wait for its package layer, before its VM was asked */
    bool answered;                 /* the one result or error has been sent */
    struct run *next;
} run;

static run *runs;

static void run_free(run *r)
{
    for (run **p = &runs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    sbx__control__run_request__free_unpacked(r->req, NULL);
    free(r);
}

/* The code goes right behind the worker's start, so the run needs no round trip after the boot.
 * sbxd's deadline covers the boot (sched.c), then the run (run_booted). */
void run_exec_request(const Sbx__Control__RunRequest *req, Sbx__Worker__ExecRequest *ex)
{
    sbx__worker__exec_request__init(ex);
    ex->language = req->language;
    ex->code = req->code;
    ex->timeout_ms = req->timeout_seconds * 1000u;
    ex->n_env = req->n_env;
    ex->env = req->env;
    ex->stream = req->stream;
}

static int run_started(void *owner, job *j)
{
    run *r = owner;
    Sbx__Worker__ExecRequest ex;
    run_exec_request(r->req, &ex);
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
    m.exec = &ex;
    return sched_vm_send(j, &m);
}

static void run_booted(void *owner, const Sbx__Worker__Booted *b)
{
    run *r = owner;
    sched_vm_deadline(r->job, r->req->timeout_seconds);
    control_send_ports(r->c, r->id, b);
}

static void run_frame(void *owner, Sbx__Worker__FromWorker *m)
{
    run *r = owner;
    Sbx__Control__Reply reply = SBX__CONTROL__REPLY__INIT;
    bool final;
    if (r->answered || !control_reply_from_worker(m, r->id, &reply, &final))
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_RESULT) {
        sched_count_run();
        sched_vm_fill_result(r->job, m->result);
        if (m->result->timing) {
            /* A first install is setup too, and part of the whole. */
            m->result->timing->setup_ms += r->waited_ms;
            m->result->timing->total_ms += r->waited_ms;
        }
    }
    r->answered = final;
    control_send_layer(r->c, &reply, r->layer_name, r->layer_built);
}

static void run_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    run *r = owner;
    if (!r->answered) {
        if (kind == SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION)
            control_send_error(r->c, r->id, kind, transient, "%s; the run was lost, retry it", why);
        else
            control_send_error(r->c, r->id, kind, transient, "%s", why);
    }
    run_free(r);
}

static const vm_owner_ops run_ops = {
    .booted = run_booted,
    .frame = run_frame,
    .gone = run_gone,
    .started = run_started,
    .one_shot = true,
};

static run *run_new(client *c, uint64_t id, Sbx__Control__RunRequest *req)
{
    run *r = calloc(1, sizeof *r);
    if (!r) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        sbx__control__run_request__free_unpacked(req, NULL);
        return NULL;
    }
    r->c = c;
    r->id = id;
    r->req = req;
    r->next = runs;
    runs = r;
    return r;
}

/* Its VM, with its package layer if it has one (the job holds it from here). */
static void run_open_vm(run *r, layer *l)
{
    r->job = sched_open_vm(r->req->language, r->req->memory_mb, &run_ops, r);
    if (r->job) {
        sched_vm_set_network(r->job, r->req->network);
        if (l)
            sched_vm_set_layer(r->job, l);
        return;
    }
    if (errno == EAGAIN)
        control_send_error(r->c, r->id, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true,
                           "%u requests already wait for a VM slot (max_queued); try again later",
                           sched_queued());
    else
        control_send_error(r->c, r->id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                           "out of memory");
    run_free(r);
}

void run_cold(client *c, uint64_t id, Sbx__Control__RunRequest *req)
{
    run *r = run_new(c, id, req);
    if (r)
        run_open_vm(r, NULL);
}

static void run_layer_ready(void *owner, const layer_result *res)
{
    run *r = owner;
    r->wait = NULL;
    if (!res->l) {
        control_send_error(r->c, r->id, res->kind, res->transient, "%s", res->why);
        run_free(r);
        return;
    }
    snprintf(r->layer_name, sizeof r->layer_name, "%s", layer_name(res->l));
    r->layer_built = res->built;
    r->waited_ms = now_ms() - r->t_arrival;
    run_open_vm(r, res->l);
    layer_release(res->l); /* the job holds it now (if it was opened) */
}

void run_submit(client *c, uint64_t id, Sbx__Control__RunRequest *req)
{
    if (req->n_packages) {
        /* Pool VMs have no package layer. */
        run *r = run_new(c, id, req);
        if (r)
            r->t_arrival = now_ms();
        if (r && !(r->wait = request_packages(c, id, req->language, req->packages, req->n_packages,
                                              run_layer_ready, r)))
            run_free(r);
        return;
    }
    /* Pool VMs have no NIC. */
    const Sbx__Control__NetworkRequest *n = req->network;
    if ((n && net_mode_of(n->allow_network, n->n_allowed_domains, n->n_expose) != NET_NONE) ||
        !pool_take(c, id, req))
        run_cold(c, id, req);
}

void run_client_gone(client *c)
{
    for (run *r = runs, *next; r; r = next) {
        next = r->next;
        if (r->c != c)
            continue;
        /* Its VM goes too (SIGKILL: see sched_vm_close), with no callbacks; or its wait for a
         * package layer (whose install goes on for the next request). */
        if (r->wait)
            layer_wait_cancel(r->wait);
        else
            sched_vm_close(r->job);
        run_free(r);
    }
}
