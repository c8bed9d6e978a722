/* libFuzzer target for the life of control connections, not only their decoder: the real
 * supervisor/control.c, request.c and session.c run in-process on a real libev loop, over real
 * socketpairs, against a fake scheduler whose "VMs" answer when the input says so. The input is
 * a script: open connections (allowed or refused uids), write well-formed frames or raw bytes
 * to them in pieces, stop reading, read, shrink socket buffers so replies back up, close either
 * direction, let VMs answer, die or stall, and turn the loop. ASan and LeakSanitizer catch an
 * object used after its connection went, or left behind once everything is closed. */
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "layers.h"
#include "metrics.h"
#include "remote.h"
#include "sbxd.h"
#include "snapshot.h"

/* ---- what sbxd's main.c and the rooms not under test provide ---- */

sbx_config cfg;
char run_base[256];
uint64_t started_ms;

void slog(const char *fmt, ...)
{
    (void)fmt;
}
void sbxd_activity(void) {}
const char *accel_verdict(void)
{
    return "tcg";
}
const char *accel_reason(void)
{
    return "";
}
const char *cgroup_mode(void)
{
    return "none";
}
void snapshot_status(Sbx__Control__StatusReply *s)
{
    (void)s;
}
/* Package layers: as in a daemon without a layer cache (every wait fails at once). */
layer_wait *layer_acquire(const char *language, const pkg_spec *specs, size_t n, layer_cb cb,
                          void *owner, bool *installing, sbx_err *err)
{
    (void)language, (void)specs, (void)n, (void)cb, (void)owner;
    *installing = false;
    sbx_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, "packages are off (fuzzer)");
    return NULL;
}
void layer_wait_cancel(layer_wait *w)
{
    (void)w;
}
void layer_release(layer *l)
{
    (void)l;
}
const char *layer_name(const layer *l)
{
    (void)l;
    return "";
}
void layers_status(Sbx__Control__StatusReply *s)
{
    (void)s;
}
void remote_status(Sbx__Control__StatusReply *s)
{
    (void)s;
}
void metrics_result(const char *kind, const char *language, const Sbx__Control__ExecResult *r)
{
    (void)kind, (void)language, (void)r;
}
void metrics_error(Sbx__Control__ErrorKind kind)
{
    (void)kind;
}
void sched_vm_set_layer(job *j, layer *l)
{
    (void)j, (void)l;
}
void pool_stats(unsigned *ready, unsigned *booting, uint64_t *memory_mb)
{
    *ready = *booting = 0;
    *memory_mb = 0;
}
void pool_client_gone(client *c)
{
    (void)c;
}
unsigned sched_queued(void)
{
    return 0;
}
uint64_t sched_runs_total(void)
{
    return 0;
}

/* ---- a fake scheduler: runs and session VMs that answer when the script says ---- */

#define MAX_RUNS 16
#define MAX_VMS 8

static struct {
    client *c;
    uint64_t id;
    Sbx__Control__RunRequest *req;
} runs[MAX_RUNS];

struct job {
    bool used, booted, closed;
    const vm_owner_ops *ops;
    void *owner;
    uint64_t req_id;
    Sbx__Worker__ToWorker__BodyCase pending; /* what it was last asked, NOT_SET when idle */
};
static job vms[MAX_VMS];

unsigned sched_running(void)
{
    unsigned n = 0;
    for (int i = 0; i < MAX_VMS; i++)
        n += vms[i].used;
    return n;
}

void run_submit(client *c, uint64_t id, Sbx__Control__RunRequest *req)
{
    for (int i = 0; i < MAX_RUNS; i++)
        if (!runs[i].req) {
            runs[i].c = c;
            runs[i].id = id;
            runs[i].req = req;
            return;
        }
    control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true, "full");
    sbx__control__run_request__free_unpacked(req, NULL);
}

void run_client_gone(client *c)
{
    for (int i = 0; i < MAX_RUNS; i++)
        if (runs[i].req && runs[i].c == c) {
            sbx__control__run_request__free_unpacked(runs[i].req, NULL);
            runs[i].req = NULL;
        }
}

job *sched_open_vm(const char *language, uint32_t memory_mb, const vm_owner_ops *ops, void *owner)
{
    for (int i = 0; i < MAX_VMS; i++)
        if (!vms[i].used) {
            vms[i] = (job){.used = true, .ops = ops, .owner = owner};
            return &vms[i];
        }
    errno = EAGAIN;
    return NULL;
}

int sched_vm_send(job *j, Sbx__Worker__ToWorker *m)
{
    if (!j->booted || j->closed) {
        errno = ENOTCONN;
        return -1;
    }
    if (m->body_case != SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK)
        j->pending = m->body_case;
    return 0;
}

void sched_vm_set_network(job *j, const Sbx__Control__NetworkRequest *n)
{
    (void)j;
    (void)n;
}
void sched_vm_set_request(job *j, uint64_t req_id)
{
    j->req_id = req_id;
}
void sched_vm_deadline(job *j, uint32_t seconds)
{
    (void)j;
    (void)seconds;
}
void sched_vm_fill_result(job *j, Sbx__Control__ExecResult *res)
{
    (void)j;
    (void)res;
}
void sched_vm_close(job *j)
{
    j->closed = true;
    j->used = false;
}

/* ---- the script ---- */

#define MAX_CONNS 6

typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static uint8_t take(input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static int conns[MAX_CONNS]; /* our end of each connection, -1 when closed */
static char sids[4][40];     /* session ids seen in replies */

/* Read what the daemon sent on our end k, noting session ids. */
static void drain(int k)
{
    static frame_reader rd;
    if (!rd.max_frame)
        frame_reader_init(&rd, 8u << 20);
    ssize_t n;
    while ((n = frame_reader_fill(&rd, conns[k])) > 0) {
        const uint8_t *f;
        size_t len;
        while (frame_reader_next(&rd, &f, &len) == 1) {
            Sbx__Control__Reply *r = sbx__control__reply__unpack(NULL, len, f);
            if (r && r->body_case == SBX__CONTROL__REPLY__BODY_SESSION && r->session->session_id)
                snprintf(sids[r->id % 4], sizeof sids[0], "%s", r->session->session_id);
            if (r)
                sbx__control__reply__free_unpacked(r, NULL);
        }
    }
    frame_reader_free(&rd);
    rd.max_frame = 0;
}

/* One well-formed request of the kind the input picks. */
static void write_request(int k, input *in)
{
    uint8_t kind = take(in) % 11, id = take(in);
    Sbx__Control__Request r = SBX__CONTROL__REQUEST__INIT;
    r.id = id;
    Sbx__Control__Hello h = SBX__CONTROL__HELLO__INIT;
    Sbx__Control__RunRequest run = SBX__CONTROL__RUN_REQUEST__INIT;
    Sbx__Control__StatusRequest st = SBX__CONTROL__STATUS_REQUEST__INIT;
    Sbx__Control__SessionOpen so = SBX__CONTROL__SESSION_OPEN__INIT;
    Sbx__Control__SessionExec se = SBX__CONTROL__SESSION_EXEC__INIT;
    Sbx__Control__SessionClose sc = SBX__CONTROL__SESSION_CLOSE__INIT;
    Sbx__Control__SessionList sl = SBX__CONTROL__SESSION_LIST__INIT;
    Sbx__Control__FileWrite fw = SBX__CONTROL__FILE_WRITE__INIT;
    Sbx__Files__FileChunk fc = SBX__FILES__FILE_CHUNK__INIT;
    Sbx__Control__FileRead fr = SBX__CONTROL__FILE_READ__INIT;
    static uint8_t sha[32], blob[255 * 1200];
    char *sid = sids[take(in) % 4];
    switch (kind) {
    case 0:
        h.protocol_version = take(in) < 240 ? SBX_PROTOCOL_VERSION : 7;
        r.body_case = SBX__CONTROL__REQUEST__BODY_HELLO;
        r.hello = &h;
        break;
    case 1:
        run.code.data = (uint8_t *)"print(1)";
        run.code.len = take(in) % 9;
        run.stream = take(in) & 1;
        r.body_case = SBX__CONTROL__REQUEST__BODY_RUN;
        r.run = &run;
        break;
    case 2:
        r.body_case = SBX__CONTROL__REQUEST__BODY_STATUS;
        r.status = &st;
        break;
    case 3:
        r.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_OPEN;
        r.session_open = &so;
        break;
    case 4:
        se.session_id = sid;
        se.code.data = (uint8_t *)"x";
        se.code.len = 1;
        r.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_EXEC;
        r.session_exec = &se;
        break;
    case 5:
        sc.session_id = sid;
        r.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE;
        r.session_close = &sc;
        break;
    case 6:
        r.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_LIST;
        r.session_list = &sl;
        break;
    case 7:
        fw.session_id = sid;
        fw.path = "f";
        fw.size = take(in);
        fw.sha256.data = sha;
        fw.sha256.len = 32;
        r.body_case = SBX__CONTROL__REQUEST__BODY_FILE_WRITE;
        r.file_write = &fw;
        break;
    case 8:
        fc.zdata.data = blob;
        fc.zdata.len = (size_t)take(in) * 1200; /* up to ~300 KB: over the chunk cap at the top */
        fc.last = take(in) & 1;
        r.body_case = SBX__CONTROL__REQUEST__BODY_FILE_CHUNK;
        r.file_chunk = &fc;
        break;
    case 9:
        fr.session_id = sid;
        fr.path = "f";
        r.body_case = SBX__CONTROL__REQUEST__BODY_FILE_READ;
        r.file_read = &fr;
        break;
    default:
        r.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_LIST;
        r.session_list = &sl;
        r.id = 0;
        break;
    }
    frame_writer w = {0};
    if (frame_writer_put(&w, &r.base) == 0) {
        /* In up to three pieces, with the loop turning in between: partial reads. */
        size_t len = w.len, cut1 = take(in) % (len + 1), cut2 = cut1 + take(in) % (len - cut1 + 1);
        size_t cuts[] = {0, cut1, cut2, len};
        for (int i = 0; i < 3; i++) {
            if (cuts[i + 1] > cuts[i] &&
                write(conns[k], w.buf + cuts[i], cuts[i + 1] - cuts[i]) < 0)
                break;
            ev_run(EV_DEFAULT, EVRUN_NOWAIT);
        }
    }
    frame_writer_free(&w);
}

/* The fake VMs answer: runs get output and a result, session VMs boot or answer what they
 * were asked, or die. */
static void vms_act(input *in)
{
    uint8_t what = take(in);
    for (int i = 0; i < MAX_RUNS; i++) {
        if (!runs[i].req || (what & 1))
            continue;
        Sbx__Control__OutputChunk ch = SBX__CONTROL__OUTPUT_CHUNK__INIT;
        static uint8_t out[200000];
        ch.data.data = out;
        ch.data.len = (size_t)take(in) * 700;
        Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
        r.id = runs[i].id;
        r.body_case = SBX__CONTROL__REPLY__BODY_CHUNK;
        r.chunk = &ch;
        control_send(runs[i].c, &r);
        Sbx__Control__ExecResult res = SBX__CONTROL__EXEC_RESULT__INIT;
        r.body_case = SBX__CONTROL__REPLY__BODY_RESULT;
        r.result = &res;
        control_send(runs[i].c, &r);
        sbx__control__run_request__free_unpacked(runs[i].req, NULL);
        runs[i].req = NULL;
    }
    for (int i = 0; i < MAX_VMS; i++) {
        job *j = &vms[i];
        if (!j->used)
            continue;
        uint8_t act = take(in) % 4;
        if (act == 3) {
            j->used = false;
            j->closed = true;
            j->ops->gone(j->owner, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true, "died");
        } else if (!j->booted && act) {
            j->booted = true;
            Sbx__Worker__Booted b = SBX__WORKER__BOOTED__INIT;
            j->ops->booted(j->owner, &b);
        } else if (j->booted && j->pending && act) {
            Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
            Sbx__Control__ExecResult res = SBX__CONTROL__EXEC_RESULT__INIT;
            Sbx__Files__FileDone done = SBX__FILES__FILE_DONE__INIT;
            Sbx__Files__FileListing ls = SBX__FILES__FILE_LISTING__INIT;
            if (j->pending == SBX__WORKER__TO_WORKER__BODY_EXEC) {
                m.body_case = SBX__WORKER__FROM_WORKER__BODY_RESULT;
                m.result = &res;
            } else if (j->pending == SBX__WORKER__TO_WORKER__BODY_FILE_LIST) {
                m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_LISTING;
                m.file_listing = &ls;
            } else {
                m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_DONE;
                m.file_done = &done;
            }
            j->pending = SBX__WORKER__TO_WORKER__BODY__NOT_SET;
            j->ops->frame(j->owner, &m);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    signal(SIGPIPE, SIG_IGN); /* as sbxd does: a write to a closed peer is an error, not death */
    config_defaults(&cfg);
    cfg.max_client_buffer_mb = 1; /* backs up quickly: the drop path runs often */
    cfg.max_session_queue = 4;
    cfg.max_session_upload_mb = 1;
    snprintf(cfg.socket, sizeof cfg.socket, "/tmp/fuzz-control-%d.sock", (int)getpid());
    sbx_err err = {0};
    if (control_listen(&err) < 0) {
        fprintf(stderr, "fuzz_control_conn: %s\n", err.msg);
        return 1;
    }
    ev_unref(EV_DEFAULT); /* the listening socket's watcher: see the end of each input */
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i] = -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    int steps = 0;
    while (in.n && steps++ < 200) {
        uint8_t op = take(&in);
        int k = (op >> 4) % MAX_CONNS;
        switch (op % 9) {
        case 0: /* connect, as our own uid or one that is not allowed */
            if (conns[k] < 0) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
                    break;
                conns[k] = sv[0];
                control_adopt(sv[1], take(&in) < 200 ? getuid() : 4242, 1000 + k);
            }
            break;
        case 1:
            if (conns[k] >= 0)
                write_request(k, &in);
            break;
        case 2: { /* raw bytes */
            uint8_t raw[64];
            size_t n = take(&in) % sizeof raw;
            for (size_t i = 0; i < n; i++)
                raw[i] = take(&in);
            if (conns[k] >= 0 && n)
                (void)!write(conns[k], raw, n);
            break;
        }
        case 3: /* close our end: the daemon sees EOF, and its writes fail */
            if (conns[k] >= 0) {
                close(conns[k]);
                conns[k] = -1;
            }
            break;
        case 4: /* stop writing (half-close) */
            if (conns[k] >= 0)
                shutdown(conns[k], SHUT_WR);
            break;
        case 5: /* a small receive buffer: replies back up in the daemon */
            if (conns[k] >= 0) {
                int sz = 4096;
                setsockopt(conns[k], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
            }
            break;
        case 6:
            if (conns[k] >= 0)
                drain(k);
            break;
        case 7:
            vms_act(&in);
            break;
        default:
            break;
        }
        ev_run(EV_DEFAULT, EVRUN_NOWAIT);
    }
    /* Everything goes: every connection, session and fake VM, so the leak check sees zero. */
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i] >= 0) {
            close(conns[i]);
            conns[i] = -1;
        }
    for (int i = 0; i < 4; i++)
        ev_run(EV_DEFAULT, EVRUN_NOWAIT);
    session_shutdown();
    control_shutdown_clients();
    for (int i = 0; i < MAX_RUNS; i++)
        if (runs[i].req) {
            sbx__control__run_request__free_unpacked(runs[i].req, NULL);
            runs[i].req = NULL;
        }
    memset(vms, 0, sizeof vms);
    memset(sids, 0, sizeof sids);
    /* Every watcher of what was freed must have been stopped: libev is not instrumented, so
     * ASan would not see a freed timer left in its heap until it fires. The listening socket
     * does not hold the loop (see LLVMFuzzerInitialize), so a blocking run returns at once
     * unless a watcher is left; one left is run here, where ASan sees its callback. */
    alarm(30);
    ev_run(EV_DEFAULT, 0);
    alarm(0);
    return 0;
}
