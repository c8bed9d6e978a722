/* The network process's body: libslirp on a plain poll() loop (it re-lists its sockets every
 * turn and runs its TCP timers from the loop's timeout), the frame socket to QEMU (records of a
 * u32 big-endian length and one ethernet frame), and the broker's socket (one NetMsg per
 * SOCK_SEQPACKET message, descriptors riding on it). */
#include "netint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "netparse.h"

netproc N = {.broker = -1, .egress = -1};

#define QEMU_OUT_MAX                                                                               \
    (4u << 20) /* frames queued towards the guest; beyond, dropped (TCP resends)                   \
                */
#define QEMU_IN_BUF (256u << 10)
#define BROKER_MSG_MAX (64u << 10)
#define BROKER_MAX_FDS 16
#define MAX_POLL 4096 /* fixed entries, 2 per connection, and slirp's sockets */
#define START_TIMEOUT_MS 10000

static int frames = -1;
static uint8_t *qin, *qout;
static size_t qin_len, qout_off, qout_len;

/* Exposed TCP ports, by their index in the broker's Listening: slirp's Unix listener that
 * forwards into the guest ("" for UDP ports: netudp.c). The broker accepts the host's clients and
 * hands each over as an Inbound message. */
static char expose_path[NET_MAX_EXPOSE][108];
static size_t n_ports;

static __attribute__((noreturn)) void net_exit(int code)
{
    if (N.egress_path[0])
        unlink(N.egress_path);
    for (size_t i = 0; i < n_ports; i++)
        if (expose_path[i][0])
            unlink(expose_path[i]);
    _exit(code);
}

static __attribute__((format(printf, 1, 2), noreturn)) void net_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "sbx-vmworker[net]: %s\n", msg);
    if (N.sh && N.sh->state == 0) {
        snprintf(N.sh->error, sizeof N.sh->error, "%s", msg);
        N.sh->state = -1;
    }
    net_exit(1);
}

/* ---- frames to and from QEMU ---- */

void qemu_send_frame(const uint8_t *f, size_t len)
{
    if (len > NET_MAX_FRAME || qout_len - qout_off + FRAME_HDR + len > QEMU_OUT_MAX)
        return; /* the guest is not reading: drop, as a NIC would */
    if (qout_off && qout_len + FRAME_HDR + len > QEMU_OUT_MAX) {
        memmove(qout, qout + qout_off, qout_len - qout_off);
        qout_len -= qout_off;
        qout_off = 0;
    }
    uint32_t be = htonl((uint32_t)len);
    memcpy(qout + qout_len, &be, FRAME_HDR);
    memcpy(qout + qout_len + FRAME_HDR, f, len);
    qout_len += FRAME_HDR + len;
}

static void qemu_flush(void)
{
    while (qout_off < qout_len) {
        ssize_t w = write(frames, qout + qout_off, qout_len - qout_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w <= 0)
            net_exit(0); /* QEMU is gone */
        qout_off += (size_t)w;
    }
    qout_off = qout_len = 0;
}

static void qemu_read(void)
{
    ssize_t r = read(frames, qin + qin_len, QEMU_IN_BUF - qin_len);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (r <= 0)
        net_exit(0);
    qin_len += (size_t)r;
    size_t off = 0;
    while (qin_len - off >= FRAME_HDR) {
        uint32_t be;
        memcpy(&be, qin + off, FRAME_HDR);
        size_t n = ntohl(be);
        if (n > NET_MAX_FRAME || n + FRAME_HDR > QEMU_IN_BUF)
            net_fatal("QEMU sent a frame of %zu bytes", n);
        if (qin_len - off < FRAME_HDR + n)
            break;
        filter_frame(qin + off + FRAME_HDR, n);
        off += FRAME_HDR + n;
    }
    memmove(qin, qin + off, qin_len - off);
    qin_len -= off;
}

/* ---- the broker ---- */

int broker_send(Sbx__Net__NetMsg *m)
{
    size_t n = sbx__net__net_msg__get_packed_size(m);
    if (n + FRAME_HDR > BROKER_MSG_MAX)
        return -1;
    uint8_t buf[BROKER_MSG_MAX];
    uint32_t be = htonl((uint32_t)n);
    memcpy(buf, &be, FRAME_HDR);
    sbx__net__net_msg__pack(m, buf + FRAME_HDR);
    /* The broker answers fast and its socket's buffer holds many requests; a broker that stops
     * reading is a broken broker, and the request is lost rather than the loop stalled. */
    if (send(N.broker, buf, n + FRAME_HDR, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        fprintf(stderr, "sbx-vmworker[net]: to the broker: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

/* One message and the descriptors on it (closed by the caller). NULL on EAGAIN. */
static Sbx__Net__NetMsg *broker_recv(int *fds, size_t *n_fds)
{
    static uint8_t buf[BROKER_MSG_MAX];
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * BROKER_MAX_FDS)];
    } ctl;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    *n_fds = 0;
    ssize_t r = recvmsg(N.broker, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return NULL;
    if (r <= 0)
        net_fatal("the broker is gone");
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k && *n_fds < BROKER_MAX_FDS; i++)
                memcpy(&fds[(*n_fds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    /* Descriptors that did not fit (this process out of them): the reply stands, without its
     * socket, and the connection it was for is refused. */
    if (mh.msg_flags & MSG_CTRUNC) {
        for (size_t i = 0; i < *n_fds; i++)
            close(fds[i]);
        *n_fds = 0;
    }
    uint32_t be;
    if ((mh.msg_flags & MSG_TRUNC) || r < (ssize_t)FRAME_HDR ||
        (memcpy(&be, buf, FRAME_HDR), ntohl(be) != (size_t)r - FRAME_HDR))
        net_fatal("malformed message from the broker");
    Sbx__Net__NetMsg *m = sbx__net__net_msg__unpack(NULL, (size_t)r - FRAME_HDR, buf + FRAME_HDR);
    if (!m)
        net_fatal("undecodable message from the broker");
    return m;
}

static void broker_read(void)
{
    int fds[BROKER_MAX_FDS];
    size_t n_fds;
    Sbx__Net__NetMsg *m;
    while ((m = broker_recv(fds, &n_fds))) {
        size_t used = 0;
        if (m->body_case == SBX__NET__NET_MSG__BODY_RESOLVED)
            filter_resolved(m->id, m->resolved);
        else if (m->body_case == SBX__NET__NET_MSG__BODY_INBOUND && n_fds &&
                 m->inbound->expose < n_ports && expose_path[m->inbound->expose][0])
            conn_inbound(fds[used++], expose_path[m->inbound->expose]);
        else if (m->body_case == SBX__NET__NET_MSG__BODY_CONNECTED)
            conn_connected(m->id, m->connected, m->connected->ok && n_fds ? fds[used++] : -1);
        for (size_t i = used; i < n_fds; i++)
            close(fds[i]);
        sbx__net__net_msg__free_unpacked(m, NULL);
    }
}

/* The broker's first message: the exposed ports, bound on the host. Each TCP one is joined to
 * a slirp forward from a Unix socket of ours to the guest's port; each UDP one comes with its
 * datagram pair (netudp.c). */
static void take_listening(void)
{
    struct pollfd p = {.fd = N.broker, .events = POLLIN};
    if (poll(&p, 1, START_TIMEOUT_MS) <= 0)
        net_fatal("the broker did not report its exposed ports in time");
    int fds[BROKER_MAX_FDS];
    size_t n_fds;
    Sbx__Net__NetMsg *m = broker_recv(fds, &n_fds);
    if (!m || m->body_case != SBX__NET__NET_MSG__BODY_LISTENING)
        net_fatal("the broker's first message is not its exposed ports");
    Sbx__Net__Listening *l = m->listening;
    if (l->error && *l->error)
        net_fatal("%s", l->error);
    if (l->n_ports > NET_MAX_EXPOSE)
        net_fatal("the broker reported %zu ports", l->n_ports);
    size_t used = 0;
    for (size_t i = 0; i < l->n_ports; i++) {
        Sbx__Control__ExposedPort *ep = l->ports[i];
        bool udp = ep->protocol && !strcmp(ep->protocol, "udp");
        N.sh->ports[i].internal = ep->internal;
        N.sh->ports[i].external = ep->external;
        N.sh->ports[i].udp = udp;
        if (udp) {
            if (used == n_fds)
                net_fatal("the broker sent no socket for UDP port %u", ep->internal);
            fcntl(fds[used], F_SETFL, O_NONBLOCK);
            udp_expose_add(fds[used++], (uint16_t)ep->internal);
            continue;
        }
        snprintf(expose_path[i], sizeof expose_path[i], "%s/x%zu.sock", N.cfg->run_dir, i);
        struct sockaddr_un h = {.sun_family = AF_UNIX};
        snprintf(h.sun_path, sizeof h.sun_path, "%s", expose_path[i]);
        struct sockaddr_in g = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)ep->internal),
                                .sin_addr.s_addr = htonl(NET_GUEST)};
        n_ports = i + 1;
        if (slirp_add_hostxfwd(N.slirp, (struct sockaddr *)&h, sizeof h, (struct sockaddr *)&g,
                               sizeof g, 0) < 0)
            net_fatal("forward to guest port %u: %s", ep->internal, strerror(errno));
    }
    if (used != n_fds)
        net_fatal("the broker sent %zu sockets for %zu UDP ports", n_fds, used);
    n_ports = l->n_ports;
    N.sh->n_ports = (uint32_t)l->n_ports;
    sbx__net__net_msg__free_unpacked(m, NULL);
}

/* ---- slirp's callbacks ---- */

typedef struct net_timer {
    struct net_timer *next;
    SlirpTimerId id;
    void *cb_opaque;
    int64_t expire_ms; /* -1: not armed */
} net_timer;
static net_timer *timers;

static int64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static ssize_t cb_send(const void *buf, size_t len, void *opaque)
{
    (void)opaque;
    filter_to_guest(buf, len);
    return (ssize_t)len;
}

static void cb_guest_error(const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "sbx-vmworker[net]: slirp: %s\n", msg);
}

static int64_t cb_clock(void *opaque)
{
    (void)opaque;
    return clock_ns();
}

static void *cb_timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    (void)opaque;
    net_timer *t = calloc(1, sizeof *t);
    if (!t)
        net_fatal("out of memory");
    t->id = id;
    t->cb_opaque = cb_opaque;
    t->expire_ms = -1;
    t->next = timers;
    timers = t;
    return t;
}

/* Only timer_new_opaque is used with config version 4; this one exists for the struct's sake. */
static void *cb_timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque)
{
    (void)cb;
    (void)cb_opaque;
    (void)opaque;
    net_fatal("slirp asked for a callback timer");
}

static void cb_timer_free(void *timer, void *opaque)
{
    (void)opaque;
    for (net_timer **pp = &timers; *pp; pp = &(*pp)->next)
        if (*pp == timer) {
            *pp = (*pp)->next;
            free(timer);
            return;
        }
}

static void cb_timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
    (void)opaque;
    ((net_timer *)timer)->expire_ms = expire_ms;
}

/* Slirp's own sockets, as it registers them: what syn_budget weighs against net_socket_cap. */
static size_t slirp_fds;

size_t slirp_sockets(void)
{
    return slirp_fds;
}

static void cb_register(int fd, void *opaque)
{
    (void)fd;
    (void)opaque;
    slirp_fds++;
}

static void cb_unregister(int fd, void *opaque)
{
    (void)fd;
    (void)opaque;
    if (slirp_fds)
        slirp_fds--;
}

static void cb_notify(void *opaque)
{
    (void)opaque;
}

static void run_timers(void)
{
    int64_t now = clock_ns() / 1000000;
    for (net_timer *t = timers; t; t = t->next)
        if (t->expire_ms >= 0 && t->expire_ms <= now) {
            t->expire_ms = -1;
            slirp_handle_timer(N.slirp, t->id, t->cb_opaque);
            return; /* the list may have changed: the rest on the next turn */
        }
}

static uint64_t timers_due(void)
{
    uint64_t due = UINT64_MAX;
    for (net_timer *t = timers; t; t = t->next)
        if (t->expire_ms >= 0 && (uint64_t)t->expire_ms < due)
            due = (uint64_t)t->expire_ms;
    return due;
}

static const SlirpCb callbacks = {
    .send_packet = cb_send,
    .guest_error = cb_guest_error,
    .clock_get_ns = cb_clock,
    .timer_new = cb_timer_new,
    .timer_free = cb_timer_free,
    .timer_mod = cb_timer_mod,
    .register_poll_fd = cb_register,
    .unregister_poll_fd = cb_unregister,
    .notify = cb_notify,
    .timer_new_opaque = cb_timer_new_opaque,
};

static void slirp_up(void)
{
    SlirpConfig c = {0};
    c.version = 4;
    /* Restricted: slirp itself connects nothing to the outside; only our forwards reach out. */
    c.restricted = 1;
    c.in_enabled = true;
    c.vnetwork.s_addr = htonl(NET_VNETWORK);
    c.vnetmask.s_addr = htonl(NET_VNETMASK);
    c.vhost.s_addr = htonl(NET_GATEWAY);
    c.vdhcp_start.s_addr = htonl(NET_GUEST);
    c.vnameserver.s_addr = htonl(NET_NAMESERVER);
    c.disable_host_loopback = true;
    c.disable_dns = true; /* answered by netfilter.c, never forwarded */
    c.disable_dhcp = true;
    N.slirp = slirp_new(&c, &callbacks, NULL);
    if (!N.slirp)
        net_fatal("slirp_new failed");
}

static void egress_up(void)
{
    snprintf(N.egress_path, sizeof N.egress_path, "%s/egress.sock", N.cfg->run_dir);
    unlink(N.egress_path);
    N.egress = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", N.egress_path);
    if (N.egress < 0 || bind(N.egress, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(N.egress, 64) < 0)
        net_fatal("egress socket `%s`: %s", N.egress_path, strerror(errno));
}

/* ---- the loop ---- */

typedef struct {
    struct pollfd p[MAX_POLL];
    size_t n;
} pollset;

static int add_poll(int fd, int events, void *opaque)
{
    pollset *ps = opaque;
    if (ps->n >= MAX_POLL)
        return -1;
    short ev = 0;
    if (events & SLIRP_POLL_IN)
        ev |= POLLIN;
    if (events & SLIRP_POLL_OUT)
        ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI)
        ev |= POLLPRI;
    ps->p[ps->n] = (struct pollfd){.fd = fd, .events = ev};
    return (int)ps->n++;
}

static int get_revents(int idx, void *opaque)
{
    pollset *ps = opaque;
    if (idx < 0 || (size_t)idx >= ps->n)
        return 0;
    short r = ps->p[idx].revents;
    int ev = 0;
    if (r & POLLIN)
        ev |= SLIRP_POLL_IN;
    if (r & POLLOUT)
        ev |= SLIRP_POLL_OUT;
    if (r & POLLPRI)
        ev |= SLIRP_POLL_PRI;
    if (r & POLLERR)
        ev |= SLIRP_POLL_ERR;
    if (r & POLLHUP)
        ev |= SLIRP_POLL_HUP;
    return ev;
}

__attribute__((noreturn)) void net_main(const Sbx__Worker__VmConfig *cfg, int frame_fd, int broker,
                                        net_shared *sh)
{
    N.cfg = cfg;
    N.mode = net_mode_parse(cfg->net_mode);
    N.allowed = (const char *const *)cfg->allowed_domains;
    N.n_allowed = cfg->n_allowed_domains;
    N.sh = sh;
    N.broker = broker;
    frames = frame_fd;
    qin = malloc(QEMU_IN_BUF);
    qout = malloc(QEMU_OUT_MAX);
    if (!qin || !qout)
        net_fatal("out of memory");
    slirp_up();
    egress_up();
    take_listening();
    fcntl(frames, F_SETFL, O_NONBLOCK);
    sh->state = 1;

    static pollset ps;
    for (;;) {
        ps.n = 0;
        enum { P_FRAMES, P_BROKER, P_EGRESS, P_FIXED };
        ps.p[P_FRAMES] = (struct pollfd){
            .fd = frames, .events = (short)(POLLIN | (qout_len > qout_off ? POLLOUT : 0))};
        ps.p[P_BROKER] = (struct pollfd){.fd = N.broker, .events = POLLIN};
        ps.p[P_EGRESS] = (struct pollfd){.fd = N.egress, .events = POLLIN};
        ps.n = P_FIXED;
        size_t udp_at = ps.n;
        ps.n += udp_poll_fill(ps.p + ps.n, NET_MAX_EXPOSE);
        size_t udp_n = ps.n - udp_at;
        size_t conn_at = ps.n;
        uint64_t due = timers_due();
        ps.n += conn_poll_fill(ps.p + ps.n, 2 * CONN_MAX, &due);
        size_t conn_n = ps.n - conn_at;
        uint32_t timeout = UINT32_MAX;
        slirp_pollfds_fill(N.slirp, &timeout, add_poll, &ps);
        uint64_t now = (uint64_t)(clock_ns() / 1000000);
        int wait = timeout == UINT32_MAX ? 1000 : (int)(timeout > 1000 ? 1000 : timeout);
        if (due != UINT64_MAX)
            wait = due <= now ? 0 : (due - now < (uint64_t)wait ? (int)(due - now) : wait);
        int r = poll(ps.p, ps.n, wait);
        if (r < 0 && errno != EINTR)
            net_fatal("poll: %s", strerror(errno));
        if (r < 0)
            continue;
        if (ps.p[P_FRAMES].revents & (POLLIN | POLLHUP | POLLERR))
            qemu_read();
        if (ps.p[P_BROKER].revents)
            broker_read();
        if (ps.p[P_EGRESS].revents) {
            /* Connections are taken as slirp makes them (netfilter.c); one still waiting here
             * has no known destination. */
            int c = accept4(N.egress, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0)
                close(c);
        }
        udp_poll_done(ps.p + udp_at, udp_n);
        now = (uint64_t)(clock_ns() / 1000000);
        conn_poll_done(ps.p + conn_at, conn_n, now);
        slirp_pollfds_poll(N.slirp, r < 0, get_revents, &ps);
        run_timers();
        filter_expire(now);
        qemu_flush();
    }
}
