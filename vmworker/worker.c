/* sbx-vmworker: one per VM. Started by sbxd with one socketpair end (--fd N); boots one QEMU,
 * relays between sbxd and the guest agent, enforces the host-side deadline, measures the VM
 * from outside, and removes everything it created. Exits when its one job is done. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "agent.pb-c.h"
#include "frame.h"
#include "jail.h"
#include "sbx_limits.h"
#include "qemu.h"
#include "qmp.h"
#include "worker.h"
#include "balloon.h"
#include "worker.pb-c.h"

/* Time the guest gets past its own timeout to SIGTERM, SIGKILL, drain and report before the
 * host stops waiting and kills the VM. */
#define HOST_GRACE_MS 5000
#define HELLO_RESEND_MS 1000
#define CONSOLE_TAIL 2048

typedef struct {
    uint8_t *data;
    size_t len, cap, limit;
    bool truncated;
} outbuf;

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

static worker W = {.ctl = -1, .sigfd = -1, .agent = -1, .con = -1, .vm = {.pid = -1}};
/* QEMU's control socket, open from boot to exit (connected before the seccomp filter). */
static qmp_conn qmp = {.fd = -1};
/* How this VM started ("cold" or "restore"), and why a restore asked for was given up. */
static const char *start_mode = "cold";
static char restore_error[512];
static bool restore_timed_out;

void wlog(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sbx-vmworker[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void send_ctl(Sbx__Worker__FromWorker *m)
{
    m->id = W.req_id;
    if (frame_send(W.ctl, &m->base) < 0)
        wlog("write to sbxd: %s", strerror(errno));
}

static void cleanup_vm(void)
{
    qemu_kill(&W.vm);
    if (W.cfg && W.cfg->run_dir && *W.cfg->run_dir) {
        unlink(W.vm.agent_sock);
        unlink(W.vm.console_sock);
        unlink(W.vm.qmp_sock);
        unlink(W.vm.log_path);
    }
}

static void send_error(Sbx__Control__ErrorKind kind, bool transient, const char *msg)
{
    Sbx__Control__Error e = SBX__CONTROL__ERROR__INIT;
    e.kind = kind;
    e.transient = transient;
    e.message = (char *)msg;
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_ERROR;
    m.error = &e;
    send_ctl(&m);
}

/* The VM cannot go on: report, remove it, exit. */
__attribute__((noreturn, format(printf, 3, 4))) static void
fail(Sbx__Control__ErrorKind kind, bool transient, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    wlog("%s", msg);
    send_error(kind, transient, msg);
    cleanup_vm();
    exit(1);
}

/* An error for the current request that leaves the VM usable (sessions carry on). */
__attribute__((format(printf, 3, 4))) static void reply_error(Sbx__Control__ErrorKind kind,
                                                              bool transient, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_error(kind, transient, msg);
}

/* Why the VM is gone, for messages: QEMU's own words, else the guest console's last line. */
static const char *vm_gone_reason(char *buf, size_t n)
{
    qemu_log_tail(&W.vm, buf, n);
    if (!buf[0] && W.con_len) {
        size_t l = W.con_len < n - 1 ? W.con_len : n - 1;
        memcpy(buf, W.con_tail + W.con_len - l, l);
        buf[l] = '\0';
        for (char *p = buf; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return buf[0] ? buf : "no message";
}

static void console_read(void)
{
    char buf[4096];
    ssize_t n = read(W.con, buf, sizeof buf);
    if (n <= 0) {
        close(W.con);
        W.con = -1;
        return;
    }
    /* Keep only the tail: the guest decides how much it prints. */
    if ((size_t)n >= sizeof W.con_tail) {
        memcpy(W.con_tail, buf + n - sizeof W.con_tail, sizeof W.con_tail);
        W.con_len = sizeof W.con_tail;
    } else {
        size_t keep = sizeof W.con_tail - (size_t)n;
        if (W.con_len > keep) {
            memmove(W.con_tail, W.con_tail + W.con_len - keep, keep);
            W.con_len = keep;
        }
        memcpy(W.con_tail + W.con_len, buf, (size_t)n);
        W.con_len += (size_t)n;
    }
}

/* The longest the guest may take to accept one frame. The agent reads its channel all the
 * time, and the host never writes while the guest streams (requests are serialised), so a
 * frame that does not go in by then means a guest that stopped reading: it must not hold the
 * worker, its slot or a session forever. */
#define AGENT_WRITE_MS 10000

static bool reap_signals(int *st);

/* One frame to the guest agent (a non-blocking socket), written by deadline or not at all. */
static int agent_write(const ProtobufCMessage *m, uint64_t deadline, sbx_err *err)
{
    frame_writer w = {0};
    if (frame_writer_put(&w, m) < 0)
        return sbx_fail(err, errno, "encode a frame for the guest agent: %s", strerror(errno));
    uint64_t t0 = now_ms();
    int rc;
    while ((rc = frame_writer_flush(&w, W.agent)) == 1) {
        uint64_t now = now_ms();
        if (now >= deadline) {
            sbx_fail(err, ETIMEDOUT,
                     "the guest stopped reading its channel: %zu bytes of a %zu-byte frame were "
                     "still unsent after %llu ms",
                     frame_writer_queued(&w), w.len, (unsigned long long)(now - t0));
            frame_writer_free(&w);
            return -1;
        }
        struct pollfd p[2] = {{.fd = W.agent, .events = POLLOUT},
                              {.fd = W.sigfd, .events = POLLIN}};
        if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR)
            break;
        /* SIGTERM ends the worker here too; QEMU gone makes the next write fail (EPIPE). */
        int st;
        if (p[1].revents)
            (void)reap_signals(&st);
    }
    if (rc != 0)
        sbx_fail(err, errno, "write to the guest agent: %s", strerror(errno));
    frame_writer_free(&w);
    return rc != 0 ? -1 : 0;
}

static void send_agent(Sbx__Agent__HostMsg *m)
{
    sbx_err err = {0};
    if (agent_write(&m->base, now_ms() + AGENT_WRITE_MS, &err) < 0)
        fail(err.code == ETIMEDOUT ? SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT
                                   : SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION,
             true, "%s; VM stopped", err.msg);
}

/* The agent's socket never blocks the worker: reads already expect EAGAIN, writes go through
 * agent_write. */
static void agent_nonblock(void)
{
    int fl = fcntl(W.agent, F_GETFL);
    if (fl < 0 || fcntl(W.agent, F_SETFL, fl | O_NONBLOCK) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "agent socket: %s", strerror(errno));
}

static int try_send_hello(sbx_err *err)
{
    /* Fresh randomness and the host's clock with every Hello: a guest restored from a shared
     * snapshot must not reuse another VM's RNG state or a stale time. */
    uint8_t seed[32];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "getrandom: %s", strerror(errno));
    Sbx__Agent__Hello h = SBX__AGENT__HELLO__INIT;
    h.protocol_version = SBX_PROTOCOL_VERSION;
    h.seed.data = seed;
    h.seed.len = sizeof seed;
    h.host_time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    Sbx__Agent__HostMsg m = SBX__AGENT__HOST_MSG__INIT;
    m.body_case = SBX__AGENT__HOST_MSG__BODY_HELLO;
    m.hello = &h;
    int rc = agent_write(&m.base, now_ms() + AGENT_WRITE_MS, err);
    explicit_bzero(seed, sizeof seed);
    return rc;
}

static void send_hello(void)
{
    sbx_err err = {0};
    if (try_send_hello(&err) < 0)
        fail(err.code == ETIMEDOUT ? SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT
                                   : SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION,
             true, "%s", err.msg);
}

/* The signalfd is readable: SIGTERM/SIGINT end the worker and its VM; returns true, with QEMU's
 * wait status in *st, when QEMU has exited. */
static bool reap_signals(int *st)
{
    struct signalfd_siginfo si;
    while (read(W.sigfd, &si, sizeof si) == sizeof si)
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            cleanup_vm();
            exit(1);
        }
    if (W.vm.pid > 0 && waitpid(W.vm.pid, st, WNOHANG) == W.vm.pid) {
        W.vm.pid = -1;
        return true;
    }
    return false;
}

enum { EV_NONE, EV_CTL, EV_AGENT, EV_TIMEOUT };

/* Wait for the next frame from sbxd (when want_ctl; otherwise sbxd's frames stay buffered for
 * later) or the agent, until deadline. Handles the console, signals and QEMU's death on the way.
 * *frame points into the reader's buffer. */
static int next_event(uint64_t deadline, bool want_ctl, const uint8_t **frame, size_t *len)
{
    for (;;) {
        int r;
        if (W.agent >= 0 && (r = frame_reader_next(&W.ag_rd, frame, len)) != 0) {
            if (r < 0)
                fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                     "guest agent sent an oversized frame; VM stopped");
            return EV_AGENT;
        }
        if (want_ctl && (r = frame_reader_next(&W.ctl_rd, frame, len)) != 0) {
            if (r < 0)
                fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false, "oversized frame from sbxd");
            return EV_CTL;
        }
        uint64_t now = now_ms();
        if (now >= deadline)
            return EV_TIMEOUT;
        uint64_t until = deadline;
        if (W.idle) {
            if (balloon_due() <= now)
                balloon_tick();
            uint64_t due = balloon_due();
            until = due < until ? due : until;
            now = now_ms();
        }
        struct pollfd p[5] = {{.fd = W.ctl, .events = POLLIN},
                              {.fd = W.sigfd, .events = POLLIN},
                              {.fd = W.agent, .events = POLLIN},
                              {.fd = W.con, .events = POLLIN},
                              {.fd = qmp.fd, .events = POLLIN}};
        int wait = until <= now ? 0 : until - now > 1000000 ? 1000000 : (int)(until - now);
        if (poll(p, 5, wait) < 0) {
            if (errno == EINTR)
                continue;
            fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "poll: %s", strerror(errno));
        }
        if (p[3].revents)
            console_read();
        if (p[4].revents)
            qmp_drain(&qmp); /* events nobody waits for; a closed QMP only ends the balloon */
        int st;
        if (p[1].revents && reap_signals(&st)) {
            /* Drain what the console still holds before reporting. */
            if (W.con >= 0)
                console_read();
            char why[512];
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "the VM stopped unexpectedly (QEMU %s %d): %s",
                 WIFSIGNALED(st) ? "killed by signal" : "exited with status",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), vm_gone_reason(why, sizeof why));
        }
        if (p[0].revents) {
            ssize_t n = frame_reader_fill(&W.ctl_rd, W.ctl);
            if (n == 0 || (n < 0 && errno != EAGAIN)) {
                /* sbxd went away or cancelled the run: nothing to report to. */
                cleanup_vm();
                exit(1);
            }
        }
        if (W.agent >= 0 && p[2].revents) {
            ssize_t n = frame_reader_fill(&W.ag_rd, W.agent);
            if (n == 0 || (n < 0 && errno != EAGAIN)) {
                char why[512];
                fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                     "guest agent channel closed: %s", vm_gone_reason(why, sizeof why));
            }
        }
    }
}

/* The next request from sbxd. want: the one body expected, or 0 for any. */
static Sbx__Worker__ToWorker *recv_ctl(Sbx__Worker__ToWorker__BodyCase want, uint64_t deadline)
{
    const uint8_t *f;
    size_t n;
    for (;;) {
        int ev = next_event(deadline, true, &f, &n);
        if (ev == EV_TIMEOUT)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "sbxd sent nothing in time");
        if (ev != EV_CTL)
            continue; /* a guest frame nobody asked for: ignore */
        Sbx__Worker__ToWorker *m = sbx__worker__to_worker__unpack(NULL, n, f);
        if (!m || (want && m->body_case != want))
            fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false, "unexpected frame from sbxd");
        W.req_id = m->id;
        return m;
    }
}

/* Each request to the agent gets its own id; replies with another id are stale (a late answer
 * to an abandoned request) and are dropped. */
static uint64_t agent_seq;

/* The next reply from the agent to request `id`, until deadline; NULL on timeout. */
static Sbx__Agent__GuestMsg *recv_agent(uint64_t id, uint64_t deadline)
{
    const uint8_t *f;
    size_t n;
    for (;;) {
        int ev = next_event(deadline, false, &f, &n);
        if (ev == EV_TIMEOUT)
            return NULL;
        if (ev != EV_AGENT)
            continue;
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
        if (!g)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "undecodable frame from the guest agent");
        if (g->id == id && g->body_case != SBX__AGENT__GUEST_MSG__BODY_READY)
            return g;
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
}

static void outbuf_add(outbuf *b, const uint8_t *d, size_t n)
{
    size_t room = b->limit - b->len;
    if (n > room) {
        n = room;
        b->truncated = true;
    }
    if (!n)
        return;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 65536;
        while (nc < b->len + n)
            nc *= 2;
        uint8_t *p = realloc(b->data, nc);
        if (!p)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        b->data = p;
        b->cap = nc;
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
}

static void boot(uint64_t *boot_ms)
{
    sbx_err err = {0};
    if (qemu_spawn(W.cfg, &W.vm, &err) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "start QEMU: %s", err.msg);
    uint64_t deadline = W.vm.t_spawn + W.cfg->boot_timeout_ms;
    W.con = qemu_connect(&W.vm, W.vm.console_sock, deadline, &err);
    if (W.con < 0)
        goto qemu_failed;
    W.agent = qemu_connect(&W.vm, W.vm.agent_sock, deadline, &err);
    if (W.agent < 0)
        goto qemu_failed;
    agent_nonblock();
    /* QMP: a template needs it to save; any other VM can run without (no idle reclaim). */
    if (qmp_open(&qmp, &W.vm, deadline, &err) < 0) {
        if (W.cfg->start_mode && !strcmp(W.cfg->start_mode, "template"))
            goto qemu_failed;
        wlog("warning: %s; this VM runs without QMP (no idle memory reclaim)", err.msg);
    }
    unlink(W.vm.qmp_sock); /* ours alone from now on */
    frame_reader_init(&W.ag_rd, FRAME_MAX_AGENT);
    send_hello();
    uint64_t next_hello = now_ms() + HELLO_RESEND_MS;
    for (;;) {
        const uint8_t *f;
        size_t n;
        uint64_t until = next_hello < deadline ? next_hello : deadline;
        int ev = next_event(until, false, &f, &n);
        if (ev == EV_TIMEOUT) {
            if (now_ms() >= deadline) {
                char why[512];
                fail(SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT, true,
                     "the VM did not boot within %u ms (%s accelerator): %s",
                     W.cfg->boot_timeout_ms, W.cfg->accel, vm_gone_reason(why, sizeof why));
            }
            send_hello();
            next_hello = now_ms() + HELLO_RESEND_MS;
            continue;
        }
        if (ev != EV_AGENT)
            continue;
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
        if (!g)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "undecodable frame from the guest agent during boot");
        if (g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY) {
            uint32_t v = g->ready->protocol_version;
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            if (v != SBX_PROTOCOL_VERSION)
                fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                     "guest agent speaks protocol %u, host %d: rebuild the assets", v,
                     SBX_PROTOCOL_VERSION);
            *boot_ms = now_ms() - W.vm.t_spawn;
            return;
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
qemu_failed : {
    char why[512];
    fail(err.code == ETIMEDOUT ? SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT
                               : SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION,
         true, "start VM: %s: %s", err.msg, vm_gone_reason(why, sizeof why));
}
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

static void run_exec(Sbx__Worker__ExecRequest *req, uint64_t boot_ms, uint64_t setup_ms)
{
    /* Re-check what sbxd already validated: the worker trusts nobody with lengths. */
    char msg[256];
    if (limits_check_code(req->code.data, req->code.len, msg, sizeof msg) < 0 ||
        limits_check_env_count(req->n_env, msg, sizeof msg) < 0) {
        reply_error(SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false, "%s", msg);
        return;
    }

    if (W.cfg->test_hooks)
        test_hook((const char *)req->code.data, req->code.len);
    Sbx__Agent__EnvVar *envs = calloc(req->n_env ? req->n_env : 1, sizeof *envs);
    Sbx__Agent__EnvVar **envp = calloc(req->n_env ? req->n_env : 1, sizeof *envp);
    if (!envs || !envp)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
    for (size_t i = 0; i < req->n_env; i++) {
        sbx__agent__env_var__init(&envs[i]);
        envs[i].key = req->env[i]->key;
        envs[i].value = req->env[i]->value;
        envp[i] = &envs[i];
    }
    Sbx__Agent__Exec ex = SBX__AGENT__EXEC__INIT;
    ex.language = req->language;
    ex.code = req->code;
    ex.timeout_ms = req->timeout_ms;
    ex.n_env = req->n_env;
    ex.env = envp;
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
    send_agent(&hm);
    free(envs);
    free(envp);

    outbuf out = {.limit = SBX_MAX_STDOUT}, errb = {.limit = SBX_MAX_STDERR};
    Sbx__Control__ExecResult res = SBX__CONTROL__EXEC_RESULT__INIT;
    uint64_t deadline = t_exec + req->timeout_ms + HOST_GRACE_MS;
    bool done = false, vm_lost = false;
    while (!done) {
        Sbx__Agent__GuestMsg *g = recv_agent(hm.id, deadline);
        if (!g) {
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
            outbuf_add(b, g->output->data.data, g->output->data.len);
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
            return;
        }
        default:
            break;
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
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
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_RESULT;
    m.result = &res;
    send_ctl(&m);
    free(out.data);
    free(errb.data);
    if (W.cfg->session && vm_lost)
        exit(1); /* sbxd closes the session: its VM is gone */
}

/* How long the guest may take to answer a file request before the host gives up on the VM. */
#define FILE_REPLY_MS 120000

static void send_file_reply(Sbx__Agent__GuestMsg *g)
{
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    Sbx__Control__FileChunk c = SBX__CONTROL__FILE_CHUNK__INIT;
    Sbx__Control__FileDone d = SBX__CONTROL__FILE_DONE__INIT;
    Sbx__Control__FileListing l = SBX__CONTROL__FILE_LISTING__INIT;
    Sbx__Control__FileEntry *ents = NULL, **entp = NULL;
    switch (g->body_case) {
    case SBX__AGENT__GUEST_MSG__BODY_FILE_CHUNK:
        c.zdata = g->file_chunk->zdata;
        c.last = g->file_chunk->last;
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_CHUNK;
        m.file_chunk = &c;
        break;
    case SBX__AGENT__GUEST_MSG__BODY_FILE_DONE:
        d.size = g->file_done->size;
        d.sha256 = g->file_done->sha256;
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_DONE;
        m.file_done = &d;
        break;
    case SBX__AGENT__GUEST_MSG__BODY_LISTING: {
        size_t n = g->listing->n_entries;
        ents = calloc(n ? n : 1, sizeof *ents);
        entp = calloc(n ? n : 1, sizeof *entp);
        if (!ents || !entp)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        for (size_t i = 0; i < n; i++) {
            sbx__control__file_entry__init(&ents[i]);
            ents[i].name = g->listing->entries[i]->name;
            ents[i].is_dir = g->listing->entries[i]->is_dir;
            ents[i].size = g->listing->entries[i]->size;
            entp[i] = &ents[i];
        }
        l.n_entries = n;
        l.entries = entp;
        m.body_case = SBX__WORKER__FROM_WORKER__BODY_FILE_LISTING;
        m.file_listing = &l;
        break;
    }
    default:
        return;
    }
    send_ctl(&m);
    free(ents);
    free(entp);
}

/* Relay one file request and its replies. Uploads: the header, then sbxd's chunks as they
 * come; downloads and listings: the guest's answers until the final one. */
static void run_file_op(Sbx__Worker__ToWorker *m)
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
        hm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_READ;
        hm.file_read = &fr;
    } else {
        fl.path = m->file_list->path;
        hm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_LIST;
        hm.file_list = &fl;
    }
    send_agent(&hm);
    uint64_t req = W.req_id;
    bool chunks_done = !upload;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int ev = next_event(now_ms() + FILE_REPLY_MS, !chunks_done, &f, &n);
        if (ev == EV_TIMEOUT)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "the guest did not answer a file request for %d s", FILE_REPLY_MS / 1000);
        if (ev == EV_CTL) {
            Sbx__Worker__ToWorker *c = sbx__worker__to_worker__unpack(NULL, n, f);
            if (!c || c->body_case != SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK || c->id != req)
                fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                     "sbxd sent something other than the upload's chunks");
            chunks_done = c->file_chunk->last;
            {
                Sbx__Agent__FileChunk ac = SBX__AGENT__FILE_CHUNK__INIT;
                ac.zdata = c->file_chunk->zdata;
                ac.last = c->file_chunk->last;
                Sbx__Agent__HostMsg cm = SBX__AGENT__HOST_MSG__INIT;
                cm.id = hm.id;
                cm.body_case = SBX__AGENT__HOST_MSG__BODY_FILE_CHUNK;
                cm.file_chunk = &ac;
                send_agent(&cm);
            }
            sbx__worker__to_worker__free_unpacked(c, NULL);
            continue;
        }
        const uint8_t *gf = f;
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, gf);
        if (!g)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "undecodable frame from the guest agent");
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
            return;
        } else {
            W.req_id = req;
            send_file_reply(g);
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
        if (final)
            return;
    }
}

static void noop_handler(int sig) {}

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer's exit-time scan stops the world with ptrace from a helper task, which cannot
 * work as PID 1 of a pid namespace under our seccomp filter: the worker would spin at exit.
 * ASan/UBSan stay on in test builds; sbxd's leaks are checked by LSan and valgrind. */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return 1;
}
#endif

/* Replace a string of the unpacked config (protobuf-c frees them with free()). */
static void set_str(char **field, const char *v)
{
    char *n = strdup(v);
    if (!n)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
    free(*field);
    *field = n;
}

/* The one place the worker narrows itself (and, by inheritance, QEMU): namespaces were made by
 * sbxd; here the private root, the VM's uid, no capabilities, no_new_privs. */
static void enter_jail(Sbx__Worker__VmConfig *c)
{
    if (!c->jail)
        return;
    bool snap =
        c->start_mode && (!strcmp(c->start_mode, "restore") || !strcmp(c->start_mode, "template"));
    jail_spec js = {.run_dir = c->run_dir,
                    .snapshot_dir =
                        snap && c->snapshot_dir && *c->snapshot_dir ? c->snapshot_dir : NULL,
                    .snapshot_rw = snap && !strcmp(c->start_mode, "template"),
                    .kernel = c->kernel,
                    .initrd = c->initrd,
                    .rootfs = c->rootfs,
                    .qemu = c->qemu,
                    .kvm = !strcmp(c->accel, "kvm"),
                    .userns = c->userns,
                    .uid = c->vm_uid,
                    .gid = c->vm_gid};
    if (!c->qemu || c->qemu[0] != '/')
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "QEMU path must be absolute");
    sbx_err err = {0};
    if (jail_enter(&js, &err) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", err.msg);
    /* Changing credentials cleared the parent-death signal. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    set_str(&c->run_dir, JAIL_VM_DIR);
    set_str(&c->kernel, JAIL_KERNEL);
    set_str(&c->initrd, JAIL_INITRD);
    set_str(&c->rootfs, JAIL_ROOTFS);
    set_str(&c->qemu, JAIL_QEMU);
    if (js.snapshot_dir)
        set_str(&c->snapshot_dir, JAIL_SNAPSHOT);
}

/* ---- memory snapshots -------------------------------------------------------------------- */

/* A restore that takes longer than this is given up for a cold boot (sbxd usually says). */
#define RESTORE_TIMEOUT_MS 5000
#define RESTORE_HELLO_MS 250
/* Template steps: the REPL's warm-up, and saving the device state. */
#define TEMPLATE_STEP_MS 60000

/* The guest agent's Ready to a fresh Hello on a restored VM, until deadline. Nothing here is
 * fatal: every failure becomes a cold boot. */
static int restore_wait_ready(uint64_t deadline, sbx_err *err)
{
    uint64_t next_hello = 0;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int r = frame_reader_next(&W.ag_rd, &f, &n);
        if (r < 0)
            return sbx_fail(err, EMSGSIZE, "the guest agent sent an oversized frame");
        if (r == 1) {
            Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
            if (!g)
                return sbx_fail(err, EPROTO, "undecodable frame from the guest agent");
            bool ready = g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
            uint32_t v = ready ? g->ready->protocol_version : 0;
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            if (ready && v != SBX_PROTOCOL_VERSION)
                return sbx_fail(err, EPROTO, "the snapshot's agent speaks protocol %u, host %d", v,
                                SBX_PROTOCOL_VERSION);
            if (ready)
                return 0;
            continue;
        }
        uint64_t now = now_ms();
        if (now >= deadline)
            return sbx_fail(err, ETIMEDOUT, "the guest agent did not answer within %u ms",
                            W.cfg->restore_timeout_ms ? W.cfg->restore_timeout_ms
                                                      : RESTORE_TIMEOUT_MS);
        /* Hello again now and then: it is idempotent, and a guest resuming may see the channel
         * close and reopen around the first one. */
        if (now >= next_hello) {
            if (try_send_hello(err) < 0)
                return -1;
            next_hello = now + RESTORE_HELLO_MS;
        }
        uint64_t until = next_hello < deadline ? next_hello : deadline;
        struct pollfd p[3] = {{.fd = W.sigfd, .events = POLLIN},
                              {.fd = W.agent, .events = POLLIN},
                              {.fd = W.con, .events = POLLIN}};
        if (poll(p, 3, (int)(until - now)) < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(err, errno, "poll: %s", strerror(errno));
        }
        if (p[2].revents)
            console_read();
        int st;
        if (p[0].revents && reap_signals(&st))
            return sbx_fail(err, ECHILD, "QEMU %s %d",
                            WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
                            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        if (p[1].revents) {
            ssize_t got = frame_reader_fill(&W.ag_rd, W.agent);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                return sbx_fail(err, EPIPE, "the guest agent channel closed");
        }
    }
}

/* Start from the snapshot: QEMU maps its RAM file copy-on-write and waits (-incoming defer),
 * QMP loads the device state (x-ignore-shared: the RAM is in the file, not the stream), the
 * guest resumes where the template stood, and answers a Hello that gives it its own seed and
 * the host's clock. On failure QEMU is gone, the run directory is as before, restore_error
 * says why, and the caller boots cold. */
static bool boot_restore(uint64_t *boot_ms)
{
    sbx_err err = {0};
    uint32_t limit = W.cfg->restore_timeout_ms ? W.cfg->restore_timeout_ms : RESTORE_TIMEOUT_MS;
    char uri[PATH_MAX + 8];
    snprintf(uri, sizeof uri, "file:%s/state", W.cfg->snapshot_dir);
    if (qemu_spawn(W.cfg, &W.vm, &err) < 0)
        goto failed;
    uint64_t deadline = W.vm.t_spawn + limit;
    if (qmp_open(&qmp, &W.vm, deadline, &err) < 0)
        goto failed;
    int rc = qmp_exec(
        &qmp, "migrate-set-capabilities",
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1),
        NULL, deadline, &err);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate-incoming", json_pack("{s:s}", "uri", uri), NULL, deadline,
                      &err);
    /* The load goes on inside QEMU; a broken state file makes it exit with the reason. */
    unlink(W.vm.qmp_sock);
    if (rc < 0)
        goto failed;
    W.con = qemu_connect(&W.vm, W.vm.console_sock, deadline, &err);
    if (W.con < 0)
        goto failed;
    W.agent = qemu_connect(&W.vm, W.vm.agent_sock, deadline, &err);
    if (W.agent < 0)
        goto failed;
    agent_nonblock();
    frame_reader_init(&W.ag_rd, FRAME_MAX_AGENT);
    if (restore_wait_ready(deadline, &err) < 0)
        goto failed;
    *boot_ms = now_ms() - W.vm.t_spawn;
    start_mode = "restore";
    return true;
failed : {
    char why[512];
    restore_timed_out = err.code == ETIMEDOUT;
    snprintf(restore_error, sizeof restore_error, "%s (%s)", err.msg,
             vm_gone_reason(why, sizeof why));
    qmp_close(&qmp);
    qemu_kill(&W.vm);
    if (W.agent >= 0)
        close(W.agent);
    if (W.con >= 0)
        close(W.con);
    W.agent = W.con = -1;
    W.con_len = 0;
    frame_reader_free(&W.ag_rd);
    unlink(W.vm.agent_sock);
    unlink(W.vm.console_sock);
    unlink(W.vm.qmp_sock);
    return false;
}
}

/* A template VM, booted cold with its RAM in snapshot_dir/mem: warm the language's REPL (the
 * agent answers the Warm once the REPL has run an empty command), save the device state with
 * the VM running (stopping it first would leave restored VMs paused), report, and stop. */
__attribute__((noreturn)) static void make_template(uint64_t boot_ms)
{
    sbx_err err = {0};
    uint64_t t_warm = now_ms(), deadline = t_warm + TEMPLATE_STEP_MS;
    Sbx__Agent__Warm w = SBX__AGENT__WARM__INIT;
    w.language = W.cfg->language;
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    hm.id = ++agent_seq;
    hm.body_case = SBX__AGENT__HOST_MSG__BODY_WARM;
    hm.warm = &w;
    send_agent(&hm);
    for (bool warm = false; !warm;) {
        const uint8_t *f;
        size_t n;
        if (next_event(deadline, false, &f, &n) == EV_TIMEOUT)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true,
                 "template: the %s REPL did not start within %d s", W.cfg->language,
                 TEMPLATE_STEP_MS / 1000);
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
        if (!g)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "undecodable frame from the guest agent");
        if (g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_FAILURE)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: %.400s",
                 g->failure->message ? g->failure->message : "warm failed");
        warm = g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
    uint64_t t_save = now_ms();
    char uri[PATH_MAX + 8];
    snprintf(uri, sizeof uri, "file:%s/state", W.cfg->snapshot_dir);
    int rc = qmp_exec(
        &qmp, "migrate-set-capabilities",
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1),
        NULL, deadline, &err);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate", json_pack("{s:s}", "uri", uri), NULL, deadline, &err);
    /* Poll: the MIGRATION event needs a capability of its own, and this takes milliseconds. */
    for (bool done = false; rc == 0 && !done;) {
        json_t *r = NULL;
        rc = qmp_exec(&qmp, "query-migrate", NULL, &r, deadline, &err);
        const char *st = json_string_value(json_object_get(r, "status"));
        const char *desc = json_string_value(json_object_get(r, "error-desc"));
        if (rc == 0 && st && (!strcmp(st, "failed") || !strcmp(st, "cancelled")))
            rc = sbx_fail(&err, EIO, "migration %s: %.300s", st, desc ? desc : "no reason given");
        done = rc == 0 && st && !strcmp(st, "completed");
        json_decref(r);
        if (rc == 0 && !done) {
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (rc < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: save: %s", err.msg);
    uint64_t t_done = now_ms();
    Sbx__Worker__SnapshotSaved sv = SBX__WORKER__SNAPSHOT_SAVED__INIT;
    sv.qemu_version = qmp.version;
    sv.boot_ms = boot_ms;
    sv.warm_ms = t_save - t_warm;
    sv.save_ms = t_done - t_save;
    qmp_close(&qmp);
    /* The VM stays paused after the save: its RAM file is final. */
    cleanup_vm();
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_SNAPSHOT_SAVED;
    m.snapshot_saved = &sv;
    send_ctl(&m);
    exit(0);
}

/* The worker's own seccomp filter, once QEMU runs and every socket to it is connected. */
static void lock_down(void)
{
    sbx_err err = {0};
    if (W.cfg->jail && jail_seccomp(&err) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", err.msg);
}

/* QEMU runs as our uid: whatever takes it over must not reach the worker (ptrace, /proc/1/mem,
 * process_vm_readv), and QEMU gets a filter of its own under its -sandbox (jail.c). Not
 * dumpable must come after jail_enter: changing uid resets it to fs.suid_dumpable. */
static void confine_qemu(void)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "make the worker non-dumpable: %s",
             strerror(errno));
    sbx_err err = {0};
    if (jail_qemu_filter(&W.vm.confine_arg, &err) < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", err.msg);
    W.vm.confine = jail_qemu_confine;
}

/* Boot, restore, or make a template, as sbxd asked. A failed restore is a cold boot in the same
 * slot: the run never sees it, beyond start_mode "cold" and the warning sbxd logs. */
static void start_vm(uint64_t *boot_ms)
{
    const char *mode = W.cfg->start_mode ? W.cfg->start_mode : "";
    if (!strcmp(mode, "restore")) {
        uint64_t t0 = now_ms();
        if (boot_restore(boot_ms))
            return;
        wlog("warning: restore from the memory snapshot failed; booting cold: %s", restore_error);
        set_str(&W.cfg->start_mode, "cold");
        boot(boot_ms);
        *boot_ms += W.vm.t_spawn - t0; /* the attempt counts */
        return;
    }
    boot(boot_ms);
    if (!strcmp(mode, "template")) {
        lock_down();
        make_template(*boot_ms);
    }
}

int main(int argc, char **argv)
{
    W.t_start = now_ms();
    if (argc != 3 || strcmp(argv[1], "--fd") != 0) {
        fprintf(stderr, "usage: sbx-vmworker --fd N (started by sbxd, not by hand)\n");
        return 2;
    }
    W.ctl = atoi(argv[2]);
    if (W.ctl < 3 || fcntl(W.ctl, F_GETFD) < 0) {
        fprintf(stderr, "sbx-vmworker: --fd %s is not an open descriptor\n", argv[2]);
        return 2;
    }
    fcntl(W.ctl, F_SETFD, FD_CLOEXEC);
    frame_reader_init(&W.ctl_rd, FRAME_MAX_WORKER);
    /* If sbxd dies, so do we (and QEMU with us). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    /* We are PID 1 of our pid namespace: the kernel drops signals that have no handler, even
     * blocked ones read through a signalfd. */
    struct sigaction sa = {.sa_handler = noop_handler};
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    W.sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);

    Sbx__Worker__ToWorker *hello = recv_ctl(SBX__WORKER__TO_WORKER__BODY_HELLO, now_ms() + 30000);
    uint32_t v = hello->hello->protocol_version;
    sbx__worker__to_worker__free_unpacked(hello, NULL);
    if (v != SBX_PROTOCOL_VERSION)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false, "sbxd speaks protocol %u, worker %d",
             v, SBX_PROTOCOL_VERSION);
    Sbx__Control__HelloOk ok = SBX__CONTROL__HELLO_OK__INIT;
    ok.protocol_version = SBX_PROTOCOL_VERSION;
    ok.server = "sbx-vmworker/" SBX_VERSION;
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_HELLO;
    m.hello = &ok;
    send_ctl(&m);

    Sbx__Worker__ToWorker *start = recv_ctl(SBX__WORKER__TO_WORKER__BODY_START, now_ms() + 30000);
    W.cfg = start->start;
    enter_jail(W.cfg);
    confine_qemu();
    uint64_t setup_ms = now_ms() - W.t_start, boot_ms = 0;
    start_vm(&boot_ms);
    lock_down();

    Sbx__Worker__Booted b = SBX__WORKER__BOOTED__INIT;
    b.boot_ms = boot_ms;
    b.setup_ms = setup_ms;
    b.qemu_pid = (uint32_t)W.vm.pid;
    b.start_mode = (char *)start_mode;
    b.restore_error = restore_error;
    b.restore_timed_out = restore_timed_out;
    Sbx__Worker__FromWorker bm = SBX__WORKER__FROM_WORKER__INIT;
    bm.body_case = SBX__WORKER__FROM_WORKER__BODY_BOOTED;
    bm.booted = &b;
    send_ctl(&bm);
    if (W.cfg->probe) {
        cleanup_vm();
        sbx__worker__to_worker__free_unpacked(start, NULL);
        frame_reader_free(&W.ctl_rd);
        frame_reader_free(&W.ag_rd);
        return 0;
    }
    /* One exec for a run; for a session, requests until sbxd closes it (it kills us when the
     * session ends or idles out, so there is no deadline here). */
    bool first = true;
    /* Idle reclaim, when sbxd asks for it (sessions), for VMs that booted cold (see qemu.c for
     * restored ones). */
    balloon_init(&qmp, W.cfg->memory_mb,
                 W.cfg->session && !strcmp(start_mode, "cold") ? W.cfg->reclaim_idle_ms : 0);
    do {
        uint64_t deadline = W.cfg->session ? UINT64_MAX : now_ms() + 30000;
        balloon_idle_start();
        W.idle = W.cfg->session;
        Sbx__Worker__ToWorker *rq = recv_ctl(0, deadline);
        W.idle = false;
        balloon_wake();
        switch (rq->body_case) {
        case SBX__WORKER__TO_WORKER__BODY_EXEC:
            run_exec(rq->exec, first ? boot_ms : 0, first ? setup_ms : 0);
            first = false;
            break;
        case SBX__WORKER__TO_WORKER__BODY_FILE_WRITE:
        case SBX__WORKER__TO_WORKER__BODY_FILE_READ:
        case SBX__WORKER__TO_WORKER__BODY_FILE_LIST:
            if (W.cfg->session)
                run_file_op(rq);
            else
                reply_error(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                            "file requests need a session");
            break;
        case SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK:
            break; /* the rest of an upload that was refused already */
        default:
            fail(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false, "unexpected request from sbxd");
        }
        sbx__worker__to_worker__free_unpacked(rq, NULL);
    } while (W.cfg->session);
    sbx__worker__to_worker__free_unpacked(start, NULL);
    frame_reader_free(&W.ctl_rd);
    frame_reader_free(&W.ag_rd);
    if (W.con >= 0)
        close(W.con);
    return 0;
}
