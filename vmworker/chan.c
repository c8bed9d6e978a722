/* The worker's channels: frames to sbxd, frames to and from the guest agent (every write has a
 * deadline), the guest console's tail, and the error value that goes up to main. Nothing here
 * decides that the VM ends. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "net.h"
#include "worker.h"

void wlog(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sbx-vmworker[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The worker's one error formatter: vm_fail and reply_error. */
static void vm_verr(vm_err *err, Sbx__Control__ErrorKind kind, bool transient, const char *fmt,
                    va_list ap)
{
    err->kind = kind;
    err->transient = transient;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

int vm_fail(vm_err *err, Sbx__Control__ErrorKind kind, bool transient, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vm_verr(err, kind, transient, fmt, ap);
    va_end(ap);
    return -1;
}

void send_ctl(Sbx__Worker__FromWorker *m)
{
    m->id = W.req_id;
    if (frame_send(W.ctl, &m->base) < 0)
        wlog("write to sbxd: %s", strerror(errno));
}

void send_error(const vm_err *err)
{
    Sbx__Control__Error e = SBX__CONTROL__ERROR__INIT;
    e.kind = err->kind;
    e.transient = err->transient;
    e.message = (char *)err->msg;
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_ERROR;
    m.error = &e;
    send_ctl(&m);
}

void reply_error(Sbx__Control__ErrorKind kind, bool transient, const char *fmt, ...)
{
    vm_err err;
    va_list ap;
    va_start(ap, fmt);
    vm_verr(&err, kind, transient, fmt, ap);
    va_end(ap);
    send_error(&err);
}

const char *vm_gone_reason(char *buf, size_t n)
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

void console_read(void)
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

/* A guest channel that failed: timed out (it stopped reading) or broken. */
Sbx__Control__ErrorKind agent_err_kind(const sbx_err *e)
{
    return e->code == ETIMEDOUT ? SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT
                                : SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION;
}

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

int send_agent(Sbx__Agent__HostMsg *m, vm_err *err)
{
    sbx_err e = {0};
    if (agent_write(&m->base, now_ms() + AGENT_WRITE_MS, &e) < 0)
        return vm_fail(err, agent_err_kind(&e), true, "%s; VM stopped", e.msg);
    return 0;
}

int guest_connect(uint64_t deadline, sbx_err *e, vm_err *err)
{
    W.con = qemu_connect(&W.vm, W.vm.console_sock, deadline, e);
    if (W.con < 0)
        return -1;
    W.agent = qemu_connect(&W.vm, W.vm.agent_sock, deadline, e);
    if (W.agent < 0)
        return -1;
    /* The agent's socket never blocks the worker: reads already expect EAGAIN, writes go
     * through agent_write, which has a deadline. */
    int fl = fcntl(W.agent, F_GETFL);
    if (fl < 0 || fcntl(W.agent, F_SETFL, fl | O_NONBLOCK) < 0) {
        vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "agent socket: %s",
                strerror(errno));
        return -2;
    }
    return 0;
}

int send_hello(vm_err *err)
{
    /* Fresh randomness and the host's clock with every Hello: a guest restored from a shared
     * snapshot must not reuse another VM's RNG state or a stale time. */
    uint8_t seed[32];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "getrandom: %s",
                       strerror(errno));
    Sbx__Agent__Hello h = SBX__AGENT__HELLO__INIT;
    h.protocol_version = SBX_PROTOCOL_VERSION;
    h.seed.data = seed;
    h.seed.len = sizeof seed;
    h.host_time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    Sbx__Agent__NetConfig nc = SBX__AGENT__NET_CONFIG__INIT;
    if (net_wanted(W.cfg)) {
        nc.address = htonl(NET_GUEST);
        nc.prefix_len = NET_GUEST_PREFIX;
        nc.gateway = htonl(NET_GATEWAY);
        nc.nameserver = htonl(NET_NAMESERVER);
        h.net = &nc;
    }
    h.packages = W.cfg->layer && *W.cfg->layer;
    Sbx__Agent__HostMsg m = SBX__AGENT__HOST_MSG__INIT;
    m.body_case = SBX__AGENT__HOST_MSG__BODY_HELLO;
    m.hello = &h;
    sbx_err e = {0};
    int rc = agent_write(&m.base, now_ms() + AGENT_WRITE_MS, &e);
    explicit_bzero(seed, sizeof seed);
    return rc < 0 ? vm_fail(err, agent_err_kind(&e), true, "%s", e.msg) : 0;
}

Sbx__Agent__GuestMsg *agent_unpack(const uint8_t *f, size_t n, vm_err *err)
{
    Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
    if (!g)
        vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                "undecodable frame from the guest agent");
    return g;
}
