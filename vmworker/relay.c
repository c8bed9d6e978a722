/* The relay: one exec or one file request at a time between sbxd and the guest agent, with the
 * host's caps and deadlines. It never trusts a length from either side, and never ends the VM
 * itself: an error that stops the VM goes up to main as a value. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "jail.h"
#include "sbx_limits.h"
#include "net.h"
#include "worker.h"

/* Time the guest gets past its own timeout to SIGTERM, SIGKILL, drain and report before the
 * host stops waiting and kills the VM. */
#define HOST_GRACE_MS 5000

typedef struct {
    uint8_t *data;
    size_t len, cap, limit;
    bool truncated;
} outbuf;

static int outbuf_add(outbuf *b, const uint8_t *d, size_t n, vm_err *err)
{
    size_t room = b->limit - b->len;
    if (n > room) {
        n = room;
        b->truncated = true;
    }
    if (!n)
        return 0;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 65536;
        while (nc < b->len + n)
            nc *= 2;
        uint8_t *p = realloc(b->data, nc);
        if (!p)
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        b->data = p;
        b->cap = nc;
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
    return 0;
}

static void forward_chunk(uint32_t stream, const uint8_t *d, size_t n)
{
    Sbx__Control__OutputChunk c = SBX__CONTROL__OUTPUT_CHUNK__INIT;
    c.stream =
        stream == 2 ? SBX__CONTROL__STREAM__STREAM_STDERR : SBX__CONTROL__STREAM__STREAM_STDOUT;
    c.data.data = (uint8_t *)d;
    c.data.len = n;
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_CHUNK;
    m.chunk = &c;
    send_ctl(&m);
}

/* Test-only triggers (sbxd's test_hooks, never on in production): the code of a run names a
 * syscall for the worker to make under its filter. Forbidden ones must get it killed by SIGSYS;
 * the allowed read-only open must not. */
static void test_hook(const char *code, size_t len)
{
    static const struct {
        const char *name;
        const char *path;
        int flags; /* -1: socket(AF_INET) instead of openat */
    } hooks[] = {
        {"__sbx_test_hook__:seccomp", NULL, -1},
        {"__sbx_test_hook__:openat-creat", "/tmp/sbx-test-hook", O_RDONLY | O_CREAT},
        {"__sbx_test_hook__:openat-trunc", JAIL_VM_DIR "/qemu.log", O_RDONLY | O_TRUNC},
        {"__sbx_test_hook__:openat-write", JAIL_VM_DIR "/qemu.log", O_WRONLY},
        {"__sbx_test_hook__:openat-append", JAIL_VM_DIR "/qemu.log", O_RDONLY | O_APPEND},
        {"__sbx_test_hook__:openat-read", "/proc/self/stat", O_RDONLY},
    };
    static const char flood[] = "__sbx_test_hook__:log-flood";
    if (len == sizeof flood - 1 && !memcmp(code, flood, len)) {
        /* A chatty worker: one 1 MiB line, then 8 MiB of short ones, on stderr. */
        static char chunk[65536];
        memset(chunk, 'x', sizeof chunk);
        for (int i = 0; i < 16; i++)
            fwrite(chunk, 1, sizeof chunk, stderr);
        for (int i = 0; i < (8 << 20) / 100; i++)
            fprintf(stderr,
                    "\ntest hook: log flood line %d ..........................................", i);
        fputc('\n', stderr);
        wlog("test hook: log flood written");
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(hooks); i++) {
        if (len != strlen(hooks[i].name) || memcmp(code, hooks[i].name, len))
            continue;
        if (hooks[i].flags < 0) {
            wlog("test hook: making a forbidden syscall");
            syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
            return;
        }
        wlog("test hook: openat `%s` flags %#o", hooks[i].path, (unsigned)hooks[i].flags);
        int fd =
            (int)syscall(SYS_openat, AT_FDCWD, hooks[i].path, hooks[i].flags | O_CLOEXEC, 0600);
        wlog("test hook: openat returned %d (%s)", fd, fd < 0 ? strerror(errno) : "open");
        if (fd >= 0)
            close(fd);
        return;
    }
}

int run_exec(Sbx__Worker__ExecRequest *req, uint64_t boot_ms, uint64_t setup_ms, vm_err *err)
{
    /* Re-check what sbxd already validated: the worker trusts nobody with lengths. */
    sbx_err lim = {0};
    if (limits_check_code(req->code.data, req->code.len, &lim) < 0 ||
        limits_check_env_count(req->n_env, &lim) < 0) {
        reply_error(SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false, "%s", lim.msg);
        return 0;
    }

    if (W.cfg->test_hooks)
        test_hook((const char *)req->code.data, req->code.len);
    /* The environment is the same message on both boundaries (files.proto): passed as it is. */
    Sbx__Agent__Exec ex = SBX__AGENT__EXEC__INIT;
    ex.language = req->language;
    ex.code = req->code;
    ex.timeout_ms = req->timeout_ms;
    ex.n_env = req->n_env;
    ex.env = req->env;
    ex.max_stdout = SBX_MAX_STDOUT;
    ex.max_stderr = SBX_MAX_STDERR;
    /* A restored VM's REPL is warm already (that is what the snapshot holds): a one-shot run
     * goes to it instead of a fresh interpreter. The VM is still this run's alone. */
    ex.keep_state = req->keep_state || !strcmp(start_mode, "restore");
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    hm.id = ++agent_seq;
    hm.body_case = SBX__AGENT__HOST_MSG__BODY_EXEC;
    hm.exec = &ex;
    uint64_t t_exec = now_ms();
    if (send_agent(&hm, err) < 0)
        return -1;

    outbuf out = {.limit = SBX_MAX_STDOUT}, errb = {.limit = SBX_MAX_STDERR};
    Sbx__Control__ExecResult res = SBX__CONTROL__EXEC_RESULT__INIT;
    uint64_t deadline = t_exec + req->timeout_ms + HOST_GRACE_MS;
    bool done = false, vm_lost = false;
    int rc = 0;
    while (!done) {
        Sbx__Agent__GuestMsg *g = NULL;
        rc = recv_agent(hm.id, deadline, &g, err);
        if (rc < 0)
            break;
        if (rc == 0) {
            /* The guest stopped answering: it loses the VM (and a session with it). */
            wlog("guest did not finish %d ms after its timeout; killing the VM", HOST_GRACE_MS);
            res.timed_out = true;
            res.exit_code = 128 + SIGKILL;
            res.execution_time_ms = now_ms() - t_exec;
            vm_lost = true;
            break;
        }
        switch (g->body_case) {
        case SBX__AGENT__GUEST_MSG__BODY_OUTPUT: {
            outbuf *b = g->output->stream == 2 ? &errb : &out;
            size_t before = b->len;
            if (outbuf_add(b, g->output->data.data, g->output->data.len, err) < 0) {
                rc = -1;
                done = true;
                break;
            }
            /* Forward only what fits under the cap, so the stream matches the result. */
            if (req->stream && b->len > before)
                forward_chunk(g->output->stream, b->data + before, b->len - before);
            break;
        }
        case SBX__AGENT__GUEST_MSG__BODY_DONE:
            res.exit_code = g->done->exit_code;
            res.timed_out = g->done->timed_out;
            res.interpreter_reset = g->done->interpreter_reset && req->keep_state;
            out.truncated |= g->done->stdout_truncated;
            errb.truncated |= g->done->stderr_truncated;
            res.execution_time_ms = g->done->execution_time_ms;
            done = true;
            break;
        case SBX__AGENT__GUEST_MSG__BODY_FAILURE: {
            reply_error(SBX__CONTROL__ERROR_KIND__ERROR_GUEST_AGENT, false, "guest agent: %.500s",
                        g->failure->message ? g->failure->message : "");
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            free(out.data);
            free(errb.data);
            return 0;
        }
        default:
            break;
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
    if (rc < 0) {
        free(out.data);
        free(errb.data);
        return -1;
    }
    uint64_t t_end = now_ms();
    qemu_usage(&W.vm, &res.external_cpu_time_ms, &res.external_memory_peak_mb);
    if (!W.cfg->session || vm_lost)
        cleanup_vm();

    Sbx__Control__Timing tm = SBX__CONTROL__TIMING__INIT;
    tm.setup_ms = setup_ms;
    tm.boot_ms = boot_ms;
    tm.execute_ms = t_end - t_exec;
    tm.total_ms = t_end - W.t_start;
    res.timing = &tm;
    res.stdout.data = out.data;
    res.stdout.len = out.len;
    res.stderr.data = errb.data;
    res.stderr.len = errb.len;
    res.stdout_truncated = out.truncated;
    res.stderr_truncated = errb.truncated;
    res.accelerator = W.cfg->accel;
    res.start_mode = (char *)start_mode;
    if (net_wanted(W.cfg)) {
        res.network = net_report();
        res.n_exposed_ports = net_ports(&res.exposed_ports);
    }
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_RESULT;
    m.result = &res;
    send_ctl(&m);
    free(out.data);
    free(errb.data);
    return W.cfg->session && vm_lost ? 1 : 0;
}

/* How long the guest may take to answer a file request before the host gives up on the VM. */
#define FILE_REPLY_MS 120000

/* The guest's file answers are the same messages as sbxd's (files.proto): relayed as they are. */
static void send_file_reply(Sbx__Agent__GuestMsg *g)
{
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    switch (g->body_case) {
    case SBX__AGENT__GUEST_MSG__BODY_FILE_CHUNK:
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_CHUNK;
        m.file_chunk = g->file_chunk;
        break;
    case SBX__AGENT__GUEST_MSG__BODY_FILE_DONE:
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_DONE;
        m.file_done = g->file_done;
        break;
    case SBX__AGENT__GUEST_MSG__BODY_LISTING:
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_LISTING;
        m.file_listing = g->listing;
        break;
    default:
        return;
    }
    send_ctl(&m);
}

/* Relay one file request and its replies. Uploads: the header, then sbxd's chunks as they
 * come; downloads and listings: the guest's answers until the final one. */
int run_file_op(Sbx__Worker__ToWorker *m, vm_err *err)
{
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    Sbx__Agent__FileWrite fw = SBX__AGENT__FILE_WRITE__INIT;
    Sbx__Agent__FileRead fr = SBX__AGENT__FILE_READ__INIT;
    Sbx__Agent__FileList fl = SBX__AGENT__FILE_LIST__INIT;
    hm.id = ++agent_seq;
    bool upload = m->body_case == SBX__WORKER__TO_WORKER__BODY_FILE_WRITE;
    if (upload) {
        fw.path = m->file_write->path;
        fw.size = m->file_write->size;
        fw.sha256 = m->file_write->sha256;
        hm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_WRITE;
        hm.file_write = &fw;
    } else if (m->body_case == SBX__WORKER__TO_WORKER__BODY_FILE_READ) {
        fr.path = m->file_read->path;
        fr.max_bytes = m->read_max_bytes;
        hm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_READ;
        hm.file_read = &fr;
    } else {
        fl.path = m->file_list->path;
        hm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_LIST;
        hm.file_list = &fl;
    }
    if (send_agent(&hm, err) < 0)
        return -1;
    uint64_t req = W.req_id;
    bool chunks_done = !upload;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int ev = next_event(now_ms() + FILE_REPLY_MS, !chunks_done, &f, &n, err);
        if (ev == EV_ERROR)
            return -1;
        if (ev == EV_TIMEOUT)
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                           "the guest did not answer a file request for %d s",
                           FILE_REPLY_MS / 1000);
        if (ev == EV_CTL) {
            Sbx__Worker__ToWorker *c = sbx__worker__to_worker__unpack(NULL, n, f);
            if (!c || c->body_case != SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK || c->id != req) {
                if (c)
                    sbx__worker__to_worker__free_unpacked(c, NULL);
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "sbxd sent something other than the upload's chunks");
            }
            chunks_done = c->file_chunk->last;
            Sbx__Agent__HostMsg cm = SBX__AGENT__HOST_MSG__INIT;
            cm.id = hm.id;
            cm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_CHUNK;
            cm.file_chunk = c->file_chunk;
            int rc = send_agent(&cm, err);
            sbx__worker__to_worker__free_unpacked(c, NULL);
            if (rc < 0)
                return -1;
            continue;
        }
        Sbx__Agent__GuestMsg *g = agent_unpack(f, n, err);
        if (!g)
            return -1;
        if (g->id != hm.id) {
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            continue;
        }
        bool final = g->body_case == SBX__AGENT__GUEST_MSG__BODY_FILE_DONE ||
                     g->body_case == SBX__AGENT__GUEST_MSG__BODY_LISTING;
        if (g->body_case == SBX__AGENT__GUEST_MSG__BODY_FAILURE) {
            /* Refused: answer now. Chunks still on their way reach the main loop, which drops
             * them, and the agent's late replies carry this request's id, which is dropped. */
            W.req_id = req;
            reply_error(SBX__CONTROL__ERROR_KIND__ERROR_GUEST_AGENT, false, "%.500s",
                        g->failure->message ? g->failure->message : "file request refused");
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            return 0;
        }
        W.req_id = req;
        send_file_reply(g);
        sbx__agent__guest_msg__free_unpacked(g, NULL);
        if (final)
            return 0;
    }
}
