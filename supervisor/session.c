/* Sessions: one VM kept across execs and file transfers, held by sbxd (not by a connection)
 * until closed, idle for too long, or its VM dies. A session belongs to the uid that opened it:
 * to any other uid but root it does not exist. Requests on a session run one at a time in
 * arrival order (at most max_session_queue waiting); an upload's chunks follow its FileWrite with
 * the same request id, and at most max_session_upload_mb of them wait in sbxd per session. Each
 * request in flight has sbxd's own deadline: a VM that does not answer is killed. */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "layers.h"
#include "sbx_limits.h"
#include "netpolicy.h"
#include "sbxd.h"

#define SESSION_TOMBSTONES 256 /* closed sessions remembered, to say why they closed */
/* An upload's zstd frames in all: the file limit plus what compression can add to it. */
#define UPLOAD_ZBYTES_MAX (SBX_MAX_FILE + SBX_MAX_FILE / 8 + (1u << 20))
/* A file transfer or listing in flight must finish within this (plus run_grace_seconds). */
#define FILE_OP_DEADLINE_S 120u

typedef struct op {
    client *c; /* NULL once its client is gone: the op still runs, its replies are dropped */
    uint64_t id;
    Sbx__Control__Request *req;
    bool started;
    /* Upload: chunks that arrived before the op started, and whether the last one came. */
    Sbx__Control__Request **chunks;
    size_t nchunks, cap;
    uint64_t buffered; /* bytes of chunks held here (not yet sent to the VM) */
    uint64_t received; /* bytes of chunks received for this upload in all */
    bool last_seen;
    struct op *next;
} op;

typedef struct session {
    char id[33];
    uid_t owner;      /* the uid that opened it */
    job *job;         /* NULL once the VM is gone */
    layer_wait *wait; /* for its package layer, before it has a job */
    char layer_name[64];
    Sbx__Control__SessionOpen *open;
    uint32_t timeout_s, idle_s;
    uint64_t exec_count, created_unix_ms, last_used_unix_ms, boot_ms;
    bool ready, closed;
    char why[300]; /* why it closed */
    client *opener;
    uint64_t open_id;
    op *ops; /* head is the one in flight once started */
    unsigned nops;
    uint64_t upload_buffered;        /* sum of its ops' buffered bytes */
    Sbx__Control__PortsReady *ports; /* its exposed ports, a copy of what the worker reported */
    ev_timer idle;
    struct session *next;
} session;

static session *sessions;
static unsigned nopen;

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

unsigned session_count(void)
{
    return nopen;
}

/* Root may reach every session; anyone else only their own. */
static bool visible(const session *s, uid_t uid)
{
    return uid == 0 || s->owner == uid;
}

static session *find(const char *id, uid_t uid)
{
    for (session *s = sessions; s; s = s->next)
        if (id && !strcmp(s->id, id) && visible(s, uid))
            return s;
    return NULL;
}

/* Take o out of s's queue (it is not freed). */
static void op_unlink(session *s, op *o)
{
    for (op **p = &s->ops; *p; p = &(*p)->next)
        if (*p == o) {
            *p = o->next;
            s->nops--;
            s->upload_buffered -= o->buffered;
            return;
        }
}

static void op_free(op *o)
{
    for (size_t i = 0; i < o->nchunks; i++)
        sbx__control__request__free_unpacked(o->chunks[i], NULL);
    free(o->chunks);
    sbx__control__request__free_unpacked(o->req, NULL);
    free(o);
}

static void closed_error(client *c, uint64_t id, const session *s, const char *sid)
{
    if (s)
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_SESSION_CLOSED, false,
                           "session %s is closed: %s", s->id, s->why);
    else
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_SESSION_CLOSED, false,
                           "no session `%.64s` (never opened, or closed long ago)", sid);
}

static void fill_info(const session *s, Sbx__Control__SessionInfo *i)
{
    i->session_id = (char *)s->id;
    i->language = s->open->language;
    i->memory_mb = s->open->memory_mb;
    i->idle_timeout_seconds = s->idle_s;
    i->exec_count = s->exec_count;
    i->created_unix_ms = s->created_unix_ms;
    i->last_used_unix_ms = s->last_used_unix_ms;
    i->busy = s->ops && s->ops->started;
    i->accelerator = (char *)(accel_verdict() ? accel_verdict() : "");
    i->boot_ms = s->boot_ms;
    i->guest_arch = cfg.guest_arch;
    const Sbx__Control__NetworkRequest *n = s->open->network;
    i->network_mode = (char *)net_mode_name(
        n ? net_mode_of(n->allow_network, n->n_allowed_domains, n->n_expose) : NET_NONE);
    if (s->ports) {
        i->n_exposed_ports = s->ports->n_ports;
        i->exposed_ports = s->ports->ports;
    }
}

/* Kept for SessionInfo: packed and unpacked, so it owns its strings. */
static void keep_ports(session *s, const Sbx__Worker__Booted *b)
{
    if (!b->n_exposed_ports)
        return;
    Sbx__Control__PortsReady pr = SBX__CONTROL__PORTS_READY__INIT;
    pr.n_ports = b->n_exposed_ports;
    pr.ports = b->exposed_ports;
    size_t n = sbx__control__ports_ready__get_packed_size(&pr);
    cleanup_free uint8_t *buf = malloc(n ? n : 1);
    if (buf && sbx__control__ports_ready__pack(&pr, buf) == n)
        s->ports = sbx__control__ports_ready__unpack(NULL, n, buf);
}

/* Forget the oldest closed sessions beyond the tombstone budget. */
static void purge_tombstones(void)
{
    unsigned closed = 0;
    for (session *s = sessions; s; s = s->next)
        closed += s->closed;
    while (closed > SESSION_TOMBSTONES) {
        session **oldest = NULL;
        for (session **p = &sessions; *p; p = &(*p)->next)
            if ((*p)->closed && (!oldest || (*p)->last_used_unix_ms < (*oldest)->last_used_unix_ms))
                oldest = p;
        session *s = *oldest;
        *oldest = s->next;
        sbx__control__session_open__free_unpacked(s->open, NULL);
        if (s->ports)
            sbx__control__ports_ready__free_unpacked(s->ports, NULL);
        free(s);
        closed--;
    }
}

static void session_closed(session *s, const char *why)
{
    if (s->closed)
        return;
    s->closed = true;
    nopen--;
    snprintf(s->why, sizeof s->why, "%s", why);
    ev_timer_stop(EV_DEFAULT, &s->idle);
    slog("session %s closed: %s", s->id, why);
    while (s->ops) {
        op *o = s->ops;
        op_unlink(s, o);
        if (!o->started)
            closed_error(o->c, o->id, s, NULL);
        op_free(o);
    }
    if (s->wait) {
        layer_wait_cancel(s->wait);
        s->wait = NULL;
    }
    if (s->job) {
        job *j = s->job;
        s->job = NULL;
        sched_vm_close(j);
    }
    s->last_used_unix_ms = unix_ms();
    purge_tombstones();
    sbxd_activity();
}

static void idle_cb(EV_P_ ev_timer *w, int revents)
{
    session *s = w->data;
    char why[64];
    snprintf(why, sizeof why, "idle for %u s", s->idle_s);
    session_closed(s, why);
}

static void touch(session *s)
{
    s->last_used_unix_ms = unix_ms();
    ev_timer_stop(EV_DEFAULT, &s->idle);
    if (!s->ops && !s->closed && s->ready) {
        ev_timer_set(&s->idle, s->idle_s, 0.);
        ev_timer_start(EV_DEFAULT, &s->idle);
    }
}

static void send_chunk_to_vm(session *s, Sbx__Files__FileChunk *ch)
{
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK;
    m.file_chunk = ch;
    sched_vm_send(s->job, &m);
}

/* Start the op at the head of the queue, if any and if the VM is ready. */
static void pump(session *s)
{
    op *o = s->ops;
    if (!o || o->started || !s->ready || s->closed)
        return;
    o->started = true;
    ev_timer_stop(EV_DEFAULT, &s->idle);
    sched_vm_set_request(s->job, o->id);
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    Sbx__Worker__ExecRequest ex = SBX__WORKER__EXEC_REQUEST__INIT;
    Sbx__Control__Request *r = o->req;
    switch (r->body_case) {
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC:
        ex.language = s->open->language;
        ex.code = r->session_exec->code;
        ex.timeout_ms =
            (r->session_exec->timeout_seconds ? r->session_exec->timeout_seconds : s->timeout_s) *
            1000u;
        ex.n_env = s->open->n_env;
        ex.env = s->open->env;
        ex.stream = r->session_exec->stream;
        ex.keep_state = true;
        m.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
        m.exec = &ex;
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
        m.body_case = SBX__WORKER__TO_WORKER__BODY_FILE_WRITE;
        m.file_write = r->file_write;
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
        m.body_case = SBX__WORKER__TO_WORKER__BODY_FILE_READ;
        m.file_read = r->file_read;
        break;
    default:
        m.body_case = SBX__WORKER__TO_WORKER__BODY_FILE_LIST;
        m.file_list = r->file_list;
        break;
    }
    if (sched_vm_send(s->job, &m) < 0) {
        session_closed(s, "cannot reach its VM worker");
        return;
    }
    sched_vm_deadline(s->job, m.body_case == SBX__WORKER__TO_WORKER__BODY_EXEC
                                  ? ex.timeout_ms / 1000u
                                  : FILE_OP_DEADLINE_S);
    for (size_t i = 0; i < o->nchunks; i++)
        send_chunk_to_vm(s, o->chunks[i]->file_chunk);
    s->upload_buffered -= o->buffered;
    o->buffered = 0;
}

static void op_done(session *s)
{
    op *o = s->ops;
    op_unlink(s, o);
    op_free(o);
    if (s->job)
        sched_vm_deadline(s->job, 0);
    touch(s);
    pump(s);
}

/* ---- the VM's side (vm_owner_ops) ---- */

static void vm_booted(void *owner, const Sbx__Worker__Booted *b)
{
    session *s = owner;
    s->ready = true;
    s->boot_ms = b->boot_ms;
    keep_ports(s, b);
    Sbx__Control__SessionInfo info = SBX__CONTROL__SESSION_INFO__INIT;
    fill_info(s, &info);
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = s->open_id;
    r.body_case = SBX__CONTROL__REPLY__BODY_SESSION;
    r.session = &info;
    control_send(s->opener, &r);
    slog("session %s opened (%s, %u MB)", s->id, s->open->language, s->open->memory_mb);
    s->opener = NULL;
    touch(s);
    pump(s);
}

static void vm_frame(void *owner, Sbx__Worker__FromWorker *m)
{
    session *s = owner;
    op *o = s->ops;
    if (!s->ready || !o || !o->started)
        return; /* a boot failure: vm_gone reports it */
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    bool final;
    if (!control_reply_from_worker(m, o->id, &r, &final))
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_RESULT) {
        s->exec_count++;
        m->result->exec_count = s->exec_count;
        sched_vm_fill_result(s->job, m->result);
    }
    control_send_layer(o->c, &r, s->layer_name, false);
    if (final)
        op_done(s);
}

/* A session that never opened: nothing to remember (no one ever learnt its id). */
static void forget_unopened(session *s)
{
    s->closed = true;
    nopen--;
    for (session **p = &sessions; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    while (s->ops) {
        op *o = s->ops;
        op_unlink(s, o);
        op_free(o);
    }
    if (s->wait)
        layer_wait_cancel(s->wait);
    if (s->job)
        sched_vm_close(s->job);
    sbx__control__session_open__free_unpacked(s->open, NULL);
    if (s->ports)
        sbx__control__ports_ready__free_unpacked(s->ports, NULL);
    free(s);
}

static void vm_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    session *s = owner;
    s->job = NULL;
    if (!s->ready && !s->closed) {
        /* It never opened: the opener gets the boot failure itself. */
        control_send_error(s->opener, s->open_id, kind, transient, "%s", why);
        forget_unopened(s);
        return;
    }
    /* The op in flight learns what happened to its VM; later calls get SessionClosedError. */
    if (s->ops && s->ops->started && !s->closed) {
        op *o = s->ops;
        if (kind == SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT)
            control_send_error(o->c, o->id, kind, transient, "%s", why);
        else
            control_send_error(o->c, o->id, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                               "the session's VM died: %s", why);
        op_unlink(s, o);
        op_free(o);
    }
    char msg[300];
    snprintf(msg, sizeof msg, "its VM died (%s)", why);
    session_closed(s, msg);
}

static const vm_owner_ops session_vm = {
    .booted = vm_booted, .frame = vm_frame, .gone = vm_gone, .reclaim_idle = true};

/* ---- the client's side ---- */

/* Its VM, with its package layer if it has one (the job holds it from here). */
static void open_vm(session *s, layer *l)
{
    const Sbx__Control__SessionOpen *o = s->open;
    s->job = sched_open_vm(o->language, o->memory_mb, &session_vm, s);
    if (s->job) {
        sched_vm_set_network(s->job, o->network);
        if (l)
            sched_vm_set_layer(s->job, l);
    }
    if (!s->job && errno == EAGAIN)
        vm_gone(s, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true,
                "too many requests already wait for a VM slot (max_queued); try again later");
    else if (!s->job)
        vm_gone(s, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
}

static void layer_ready(void *owner, const layer_result *r)
{
    session *s = owner;
    s->wait = NULL;
    if (!r->l) {
        vm_gone(s, r->kind, r->transient, r->why);
        return;
    }
    snprintf(s->layer_name, sizeof s->layer_name, "%s", layer_name(r->l));
    open_vm(s, r->l);
    layer_release(r->l);
}

static void do_open(client *c, uid_t uid, uint64_t id, Sbx__Control__SessionOpen *o)
{
    session *s = calloc(1, sizeof *s);
    uint8_t rnd[16];
    if (!s || getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        free(s);
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                           "cannot create a session id");
        sbx__control__session_open__free_unpacked(o, NULL);
        return;
    }
    sbx_hex(rnd, sizeof rnd, s->id);
    s->open = o;
    s->timeout_s = o->timeout_seconds;
    s->idle_s = o->idle_timeout_seconds;
    s->owner = uid;
    s->opener = c;
    s->open_id = id;
    s->created_unix_ms = s->last_used_unix_ms = unix_ms();
    ev_timer_init(&s->idle, idle_cb, s->idle_s, 0.);
    s->idle.data = s;
    s->next = sessions;
    sessions = s;
    nopen++;
    if (!o->n_packages) {
        open_vm(s, NULL);
        return;
    }
    s->wait = request_packages(c, id, o->language, o->packages, o->n_packages, layer_ready, s);
    if (!s->wait)
        forget_unopened(s);
}

static bool listed(const session *s, uid_t uid)
{
    return s->ready && !s->closed && visible(s, uid);
}

static void do_list(client *c, uid_t uid, uint64_t id)
{
    unsigned n = 0;
    for (session *s = sessions; s; s = s->next)
        n += listed(s, uid);
    Sbx__Control__SessionInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Sbx__Control__SessionInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!infos || !ptrs) {
        free(infos);
        free(ptrs);
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        return;
    }
    unsigned i = 0;
    for (session *s = sessions; s; s = s->next)
        if (listed(s, uid)) {
            sbx__control__session_info__init(&infos[i]);
            fill_info(s, &infos[i]);
            ptrs[i] = &infos[i];
            i++;
        }
    Sbx__Control__SessionListing l = SBX__CONTROL__SESSION_LISTING__INIT;
    l.n_sessions = n;
    l.sessions = ptrs;
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = id;
    r.body_case = SBX__CONTROL__REPLY__BODY_SESSION_LISTING;
    r.session_listing = &l;
    control_send(c, &r);
    free(infos);
    free(ptrs);
}

/* Drop an upload that has not started, with one error to its client. */
static void drop_upload(session *s, op *o, Sbx__Control__ErrorKind kind, bool transient,
                        const char *why)
{
    control_send_error(o->c, o->id, kind, transient, "%s", why);
    op_unlink(s, o);
    op_free(o);
}

/* An upload chunk: find its upload by (client, request id). */
static void do_chunk(client *c, Sbx__Control__Request *req)
{
    size_t len = req->file_chunk->zdata.len;
    for (session *s = sessions; s; s = s->next) {
        for (op *o = s->ops; o; o = o->next) {
            if (o->c != c || o->id != req->id ||
                o->req->body_case != SBX__CONTROL__REQUEST__BODY_FILE_WRITE || o->last_seen)
                continue;
            o->last_seen = req->file_chunk->last;
            o->received += len;
            if (o->received > UPLOAD_ZBYTES_MAX) {
                sbx__control__request__free_unpacked(req, NULL);
                if (!o->started) {
                    drop_upload(s, o, SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false,
                                "upload larger than the file limit");
                    return;
                }
                /* Part of it is in the VM already: nothing sane is left to finish. */
                control_send_error(c, o->id, SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false,
                                   "upload larger than the file limit; the session was closed");
                op_unlink(s, o);
                op_free(o);
                session_closed(s, "an upload went past the file limit");
                return;
            }
            if (o->started) {
                send_chunk_to_vm(s, req->file_chunk);
                sbx__control__request__free_unpacked(req, NULL);
                return;
            }
            if (s->upload_buffered + len > (uint64_t)cfg.max_session_upload_mb << 20) {
                sbx__control__request__free_unpacked(req, NULL);
                drop_upload(s, o, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true,
                            "uploads waiting on this session already hold max_session_upload_mb; "
                            "send it after the ones before it finish");
                return;
            }
            if (o->nchunks == o->cap) {
                size_t nc = o->cap ? o->cap * 2 : 16;
                Sbx__Control__Request **p = realloc(o->chunks, nc * sizeof *p);
                if (!p) {
                    sbx__control__request__free_unpacked(req, NULL);
                    drop_upload(s, o, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                                "out of memory");
                    return;
                }
                o->chunks = p;
                o->cap = nc;
            }
            o->chunks[o->nchunks++] = req;
            o->buffered += len;
            s->upload_buffered += len;
            return;
        }
    }
    /* The rest of an upload that already failed or was closed: nothing to do. */
    sbx__control__request__free_unpacked(req, NULL);
}

static const char *request_session_id(const Sbx__Control__Request *r)
{
    switch (r->body_case) {
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC:
        return r->session_exec->session_id;
    case SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE:
        return r->session_close->session_id;
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
        return r->file_write->session_id;
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
        return r->file_read->session_id;
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        return r->file_list->session_id;
    default:
        return NULL;
    }
}

void session_handle(client *c, uid_t uid, Sbx__Control__Request *req)
{
    switch (req->body_case) {
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN: {
        Sbx__Control__SessionOpen *o = req->session_open;
        req->session_open = NULL;
        req->body_case = SBX__CONTROL__REQUEST__BODY__NOT_SET;
        do_open(c, uid, req->id, o);
        sbx__control__request__free_unpacked(req, NULL);
        return;
    }
    case SBX__CONTROL__REQUEST__BODY_SESSION_LIST:
        do_list(c, uid, req->id);
        sbx__control__request__free_unpacked(req, NULL);
        return;
    case SBX__CONTROL__REQUEST__BODY_FILE_CHUNK:
        do_chunk(c, req);
        return;
    default:
        break;
    }
    const char *sid = request_session_id(req);
    session *s = find(sid, uid);
    if (!s || s->closed || !s->ready) {
        closed_error(c, req->id, s, sid ? sid : "");
        sbx__control__request__free_unpacked(req, NULL);
        return;
    }
    if (req->body_case == SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE) {
        Sbx__Control__SessionClosed sc = SBX__CONTROL__SESSION_CLOSED__INIT;
        sc.session_id = s->id;
        sc.exec_count = s->exec_count;
        Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
        r.id = req->id;
        r.body_case = SBX__CONTROL__REPLY__BODY_SESSION_CLOSED;
        r.session_closed = &sc;
        control_send(c, &r);
        session_closed(s, "closed by request");
        sbx__control__request__free_unpacked(req, NULL);
        return;
    }
    if (s->nops >= cfg.max_session_queue) {
        control_send_error(c, req->id, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true,
                           "session %s already has %u requests waiting (max_session_queue)", s->id,
                           s->nops);
        sbx__control__request__free_unpacked(req, NULL);
        return;
    }
    op *o = calloc(1, sizeof *o);
    if (!o) {
        control_send_error(c, req->id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                           "out of memory");
        sbx__control__request__free_unpacked(req, NULL);
        return;
    }
    o->c = c;
    o->id = req->id;
    o->req = req;
    op **p = &s->ops;
    while (*p)
        p = &(*p)->next;
    *p = o;
    s->nops++;
    touch(s);
    pump(s);
}

const char *session_language(const char *id)
{
    for (session *s = sessions; s && id; s = s->next)
        if (!strcmp(s->id, id))
            return s->open->language ? s->open->language : "";
    return "";
}

void session_client_gone(client *c)
{
    for (session *s = sessions, *next; s; s = next) {
        next = s->next;
        if (s->opener == c && !s->ready && !s->closed) {
            /* Its id goes out only in the reply to its opener: nobody could ever use it. */
            slog("session %s: its opener went away while it was starting; stopping it", s->id);
            forget_unopened(s);
            continue;
        }
        if (s->opener == c)
            s->opener = NULL;
        for (op **p = &s->ops; *p;) {
            op *o = *p;
            if (o->c != c) {
                p = &o->next;
                continue;
            }
            if (o->started) {
                o->c = NULL; /* let it finish; its replies go nowhere */
                p = &o->next;
                if (o->req->body_case == SBX__CONTROL__REQUEST__BODY_FILE_WRITE && !o->last_seen) {
                    /* The rest will never come: end it here, the guest refuses the short file
                     * (size and sha256) and the session goes on. */
                    Sbx__Files__FileChunk end = SBX__FILES__FILE_CHUNK__INIT;
                    end.last = true;
                    o->last_seen = true;
                    send_chunk_to_vm(s, &end);
                }
            } else {
                op_unlink(s, o);
                op_free(o);
            }
        }
    }
}

void session_shutdown(void)
{
    for (session *s = sessions; s; s = s->next)
        if (!s->closed)
            session_closed(s, "sbxd is shutting down");
    while (sessions) {
        session *s = sessions;
        sessions = s->next;
        sbx__control__session_open__free_unpacked(s->open, NULL);
        if (s->ports)
            sbx__control__ports_ready__free_unpacked(s->ports, NULL);
        free(s);
    }
}
