/* sbx-netbroker --fd 3 --policy-fd 4 [--uid N --gid N]: one per VM with a NIC, started by sbxd.
 * fd 3 is a SOCK_SEQPACKET socket to the jailed worker's network process (proto/net.proto), fd 4
 * a pipe holding one NetPolicy frame from sbxd. Start-up: policy, hosts file, listening sockets,
 * confinement (confine.c), then one `listening` message; then a poll loop answering resolve and
 * connect requests until the worker goes. Everything the worker sends is capped and checked;
 * everything the broker waits for has a deadline. */
#include "broker.h"
#include "frame.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

typedef struct {
    uint64_t id;
    int fd;
    uint32_t ipv4;
    uint32_t port;
    uint64_t deadline;
} pending_connect;

typedef struct {
    uint8_t *buf; /* one frame: header + NetMsg */
    size_t len;
    int fd; /* rides along (SCM_RIGHTS), closed once sent; -1: none */
} out_msg;

/* Every reply comes from a request read while fewer than BROKER_MAX_QUEUED_REPLIES were queued,
 * or from an operation in flight: the queue never holds more than this. */
#define OUT_CAP                                                                                    \
    (BROKER_MAX_QUEUED_REPLIES + BROKER_MAX_PENDING_CONNECT + BROKER_MAX_PENDING_RESOLVE +         \
     NET_MAX_EXPOSE + 8)

static struct {
    int sock;
    pid_t pid;
    broker_policy pol;
    pending_connect conns[BROKER_MAX_PENDING_CONNECT];
    size_t n_conns;
    resolver_child res[BROKER_MAX_PENDING_RESOLVE];
    size_t n_res;
    out_msg out[OUT_CAP];
    size_t out_head, out_n;
} B = {.sock = -1};

void blog(const char *fmt, ...)
{
    char line[1024];
    int k = snprintf(line, sizeof line, "sbx-netbroker[%d]: ", (int)B.pid);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + k, sizeof line - (size_t)k - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)k + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    (void)!write(2, line, len);
}

static __attribute__((noreturn)) void die(int code, const char *why)
{
    blog("%s", why);
    _exit(code);
}

/* A string from the worker, fit for one log line: printable ASCII, at most 253 bytes. */
static const char *printable(const char *s, char *buf, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n && i < BROKER_NAME_MAX; i++)
        buf[i] = s[i] > 0x20 && s[i] < 0x7f ? s[i] : '?';
    buf[i] = '\0';
    return buf;
}

static size_t frame_pack(const Sbx__Net__NetMsg *m, uint8_t **out)
{
    size_t n = sbx__net__net_msg__get_packed_size(m);
    uint8_t *buf = malloc(FRAME_HDR + n);
    if (!buf)
        die(1, "out of memory");
    buf[0] = (uint8_t)(n >> 24);
    buf[1] = (uint8_t)(n >> 16);
    buf[2] = (uint8_t)(n >> 8);
    buf[3] = (uint8_t)n;
    sbx__net__net_msg__pack(m, buf + FRAME_HDR);
    *out = buf;
    return FRAME_HDR + n;
}

/* One message (and its fds) in one sendmsg: 1 sent, 0 not now (EAGAIN), -1 the worker is gone,
 * -2 another error. */
static int send_one(const uint8_t *buf, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char b[CMSG_SPACE(sizeof(int) * NET_MAX_EXPOSE)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > NET_MAX_EXPOSE)
        return -2;
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t w = sendmsg(B.sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == (ssize_t)len)
            return 1;
        if (w >= 0)
            return -2; /* a seqpacket message goes whole or not at all */
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN ? -1 : -2;
    }
}

/* The start-up message, sent before the loop runs: blocking, with a deadline. */
static void send_now(const Sbx__Net__NetMsg *m, const int *fds, size_t nfds)
{
    cleanup_free uint8_t *buf = NULL;
    size_t len = frame_pack(m, &buf);
    uint64_t deadline = now_ms() + BROKER_SEND_DEADLINE_MS;
    for (;;) {
        int rc = send_one(buf, len, fds, nfds);
        if (rc == 1)
            return;
        if (rc == -1)
            die(0, "the worker went away before start-up finished");
        if (rc < 0)
            die(1, "cannot send to the worker");
        uint64_t now = now_ms();
        if (now >= deadline)
            die(1, "the worker does not read (send timed out)");
        struct pollfd p = {.fd = B.sock, .events = POLLOUT};
        poll(&p, 1, (int)(deadline - now));
    }
}

static void send_listening_error(const char *msg)
{
    Sbx__Net__Listening l = SBX__NET__LISTENING__INIT;
    l.error = (char *)msg;
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.body_case = SBX__NET__NET_MSG__BODY_LISTENING;
    m.listening = &l;
    blog("%s", msg);
    if (B.sock >= 0)
        send_now(&m, NULL, 0);
    _exit(1);
}

static void queue(const Sbx__Net__NetMsg *m, int fd)
{
    if (B.out_n == OUT_CAP)
        die(1, "reply queue overflow"); /* cannot happen: see OUT_CAP */
    out_msg *o = &B.out[(B.out_head + B.out_n) % OUT_CAP];
    o->len = frame_pack(m, &o->buf);
    o->fd = fd;
    B.out_n++;
}

static void flush(void)
{
    while (B.out_n) {
        out_msg *o = &B.out[B.out_head];
        int rc = send_one(o->buf, o->len, &o->fd, o->fd >= 0 ? 1 : 0);
        if (rc == 0)
            return;
        if (rc == -1)
            _exit(0); /* the worker is gone: so is the VM's network */
        if (rc < 0) /* this reply only (ENOBUFS, ETOOMANYREFS): the request it answers times out */
            blog("a reply to the worker could not be sent: %s", strerror(errno));
        free(o->buf);
        if (o->fd >= 0)
            close(o->fd);
        B.out_head = (B.out_head + 1) % OUT_CAP;
        B.out_n--;
    }
}

static void reply_resolved(uint64_t id, const char *name, const uint32_t *addrs, size_t n,
                           const char *refused)
{
    char nm[BROKER_NAME_MAX + 1];
    snprintf(nm, sizeof nm, "%s", name);
    Sbx__Net__Resolved r = SBX__NET__RESOLVED__INIT;
    r.name = nm;
    r.n_ipv4 = refused ? 0 : n;
    r.ipv4 = (uint32_t *)addrs;
    r.refused = (char *)(refused ? refused : "");
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.id = id;
    m.body_case = SBX__NET__NET_MSG__BODY_RESOLVED;
    m.resolved = &r;
    queue(&m, -1);
}

static void reply_connected(uint64_t id, int fd, const char *refused)
{
    Sbx__Net__Connected c = SBX__NET__CONNECTED__INIT;
    c.ok = fd >= 0;
    c.refused = (char *)(refused ? refused : "");
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.id = id;
    m.body_case = SBX__NET__NET_MSG__BODY_CONNECTED;
    m.connected = &c;
    queue(&m, fd);
}

static void resolve_refuse(uint64_t id, const char *name, const char *why)
{
    char pn[BROKER_NAME_MAX + 1];
    blog("refused resolve %s: %s", printable(name, pn, sizeof pn), why);
    reply_resolved(id, name, NULL, 0, why);
}

/* Answers in hand (hosts file or a resolver child): filter, remember, reply. */
static void resolve_answer(uint64_t id, const char *name, uint32_t *addrs, size_t n)
{
    size_t k = filter_private(&B.pol, addrs, n);
    if (k == 0) {
        resolve_refuse(id, name, "resolves only to private addresses");
        return;
    }
    cache_add(name, addrs, k);
    reply_resolved(id, name, addrs, k, NULL);
}

/* The broker's own budget, whatever the worker does: at most BROKER_RATE_N resolutions and as
 * many connects in any BROKER_RATE_MS (a worker taken over cannot scan or flood through it). */
static bool within_rate(uint64_t *started, size_t *next)
{
    uint64_t now = now_ms();
    if (started[*next] && now - started[*next] < BROKER_RATE_MS)
        return false;
    started[*next] = now;
    *next = (*next + 1) % BROKER_RATE_N;
    return true;
}

static void on_resolve(uint64_t id, const Sbx__Net__Resolve *r)
{
    static uint64_t started[BROKER_RATE_N];
    static size_t next;
    char buf[300];
    const char *why = resolve_check(&B.pol, r->name, buf, sizeof buf);
    if (!why && !within_rate(started, &next))
        why = "too many resolutions (the broker's own budget)";
    if (why) {
        resolve_refuse(id, r->name, why);
        return;
    }
    uint32_t addrs[BROKER_MAX_ADDRS];
    size_t n = hosts_lookup(&B.pol, r->name, addrs, BROKER_MAX_ADDRS);
    if (n) {
        resolve_answer(id, r->name, addrs, n);
        return;
    }
    if (B.n_res == BROKER_MAX_PENDING_RESOLVE) {
        resolve_refuse(id, r->name, "too many pending resolutions");
        return;
    }
    sbx_err err = {0};
    if (resolver_start(&B.res[B.n_res], r->name, id, &err) < 0) {
        blog("%s", err.msg);
        resolve_refuse(id, r->name, "resolver unavailable");
        return;
    }
    B.n_res++;
}

static void resolver_done(size_t i, bool timed_out)
{
    resolver_child c = B.res[i];
    B.res[i] = B.res[--B.n_res];
    uint32_t addrs[BROKER_MAX_ADDRS];
    char why[128];
    int n = resolver_finish(&c, timed_out, addrs, why, sizeof why);
    if (n < 0)
        resolve_refuse(c.id, c.name, why);
    else
        resolve_answer(c.id, c.name, addrs, (size_t)n);
}

static void connect_fail(uint64_t id, uint32_t ipv4, uint32_t port, const char *what)
{
    char ip[INET_ADDRSTRLEN], why[256];
    inet_ntop(AF_INET, &ipv4, ip, sizeof ip);
    snprintf(why, sizeof why, "connect %s:%u: %s", ip, port, what);
    blog("%s", why);
    reply_connected(id, -1, why);
}

static void on_connect(uint64_t id, const Sbx__Net__Connect *c)
{
    char buf[600], ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &c->ipv4, ip, sizeof ip);
    static uint64_t started[BROKER_RATE_N];
    static size_t next;
    const char *why = connect_check(&B.pol, c->ipv4, c->port, c->sni, buf, sizeof buf);
    if (!why && B.n_conns == BROKER_MAX_PENDING_CONNECT)
        why = "too many pending connections";
    if (!why && !within_rate(started, &next))
        why = "too many connections (the broker's own budget)";
    if (why) {
        char ps[BROKER_NAME_MAX + 1];
        blog("refused connect %s:%u (SNI %s): %s", ip, c->port, printable(c->sni, ps, sizeof ps),
             why);
        reply_connected(id, -1, why);
        return;
    }
    cleanup_close int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_fail(id, c->ipv4, c->port, strerror(errno));
        return;
    }
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)c->port), .sin_addr.s_addr = c->ipv4};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        connect_fail(id, c->ipv4, c->port, strerror(errno));
        return;
    }
    B.conns[B.n_conns++] = (pending_connect){
        .id = id,
        .fd = steal_fd(&fd),
        .ipv4 = c->ipv4,
        .port = c->port,
        .deadline = now_ms() + B.pol.connect_timeout_ms,
    };
}

static void connect_done(size_t i, bool timed_out)
{
    pending_connect pc = B.conns[i];
    B.conns[i] = B.conns[--B.n_conns];
    cleanup_close int fd = pc.fd;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (timed_out) {
        char what[64];
        snprintf(what, sizeof what, "timed out after %u ms", B.pol.connect_timeout_ms);
        connect_fail(pc.id, pc.ipv4, pc.port, what);
        return;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr) {
        connect_fail(pc.id, pc.ipv4, pc.port, strerror(soerr));
        return;
    }
    /* The socket stays here; the worker gets the other end of a relay. */
    int w;
    if (relay_add(steal_fd(&fd), &w) < 0) {
        connect_fail(pc.id, pc.ipv4, pc.port, "too many connections open");
        return;
    }
    reply_connected(pc.id, w, NULL);
}

static void msg_freep(Sbx__Net__NetMsg **m)
{
    if (*m)
        sbx__net__net_msg__free_unpacked(*m, NULL);
}

/* One request: a whole seqpacket message. A worker that breaks the protocol is broken (or
 * taken over): the broker logs it and exits, and the VM loses its network. */
static void on_request(void)
{
    static uint8_t buf[FRAME_HDR + BROKER_MAX_MSG];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    do
        n = recvmsg(B.sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == ENOTCONN)))
        _exit(0);
    if (n < 0)
        die(1, "receive from the worker failed");
    if (mh.msg_flags & MSG_TRUNC)
        die(1, "protocol error: a request larger than 64 KiB");
    if (mh.msg_flags & MSG_CTRUNC)
        die(1, "protocol error: the worker sent file descriptors");
    const char *why = NULL;
    __attribute__((cleanup(msg_freep))) Sbx__Net__NetMsg *m = request_parse(buf, (size_t)n, &why);
    if (!m) {
        blog("protocol error: %s", why);
        _exit(1);
    }
    if (m->body_case == SBX__NET__NET_MSG__BODY_RESOLVE)
        on_resolve(m->id, m->resolve);
    else
        on_connect(m->id, m->connect);
}

static void on_inbound(uint32_t expose, int worker_end)
{
    Sbx__Net__Inbound in = SBX__NET__INBOUND__INIT;
    in.expose = expose;
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.body_case = SBX__NET__NET_MSG__BODY_INBOUND;
    m.inbound = &in;
    queue(&m, worker_end);
}

static __attribute__((noreturn)) void loop(void)
{
    static struct pollfd pfd[1 + BROKER_MAX_PENDING_CONNECT + BROKER_MAX_PENDING_RESOLVE +
                             2 * NET_MAX_EXPOSE + 2 * BROKER_MAX_RELAYS];
    for (;;) {
        flush();
        uint64_t now = now_ms(), next = UINT64_MAX;
        size_t k = 0;
        pfd[k++] = (struct pollfd){
            .fd = B.sock,
            .events = (short)((B.out_n < BROKER_MAX_QUEUED_REPLIES ? POLLIN : 0) |
                              (B.out_n ? POLLOUT : 0)),
        };
        for (size_t i = 0; i < B.n_conns; i++) {
            pfd[k++] = (struct pollfd){.fd = B.conns[i].fd, .events = POLLOUT};
            next = B.conns[i].deadline < next ? B.conns[i].deadline : next;
        }
        for (size_t i = 0; i < B.n_res; i++) {
            pfd[k++] = (struct pollfd){.fd = B.res[i].fd, .events = POLLIN};
            next = B.res[i].deadline < next ? B.res[i].deadline : next;
        }
        size_t relay_at = k;
        k += relay_poll_fill(pfd + k, ARRAY_LEN(pfd) - k, B.out_n < BROKER_MAX_QUEUED_REPLIES);
        int wait = next == UINT64_MAX ? -1 : next <= now ? 0 : (int)(next - now);
        if (poll(pfd, k, wait) < 0) {
            if (errno == EINTR)
                continue;
            die(1, "poll failed");
        }
        now = now_ms();
        resolver_reap();
        /* Walk the operations backwards: finishing one moves the last into its slot. */
        size_t nc = B.n_conns, nr = B.n_res;
        for (size_t i = nr; i-- > 0;) {
            if (pfd[1 + nc + i].revents)
                resolver_done(i, false);
            else if (B.res[i].deadline <= now)
                resolver_done(i, true);
        }
        for (size_t i = nc; i-- > 0;) {
            if (pfd[1 + i].revents)
                connect_done(i, false);
            else if (B.conns[i].deadline <= now)
                connect_done(i, true);
        }
        relay_poll_done(pfd + relay_at, k - relay_at, on_inbound);
        if (pfd[0].revents & (POLLHUP | POLLERR))
            _exit(0); /* the worker closed its end: nobody is left to serve */
        if (pfd[0].revents & POLLIN)
            on_request();
    }
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v > max || *s == '-' || *s == '+')
        return -1;
    *out = v;
    return 0;
}

static __attribute__((noreturn)) void usage(void)
{
    fprintf(stderr, "usage: sbx-netbroker --fd N --policy-fd N [--uid N --gid N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    B.pid = getpid();
    /* Never outlive sbxd; sbxd may have died already, before we got here. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    pid_t parent = getppid();
    unsigned long sock = ULONG_MAX, pfd = ULONG_MAX, uid = ULONG_MAX, gid = ULONG_MAX;
    for (int i = 1; i < argc; i++) {
        unsigned long *dst = !strcmp(argv[i], "--fd")          ? &sock
                             : !strcmp(argv[i], "--policy-fd") ? &pfd
                             : !strcmp(argv[i], "--uid")       ? &uid
                             : !strcmp(argv[i], "--gid")       ? &gid
                                                               : NULL;
        if (!dst || i + 1 == argc || parse_uint(argv[++i], UINT32_MAX - 1, dst) < 0)
            usage();
    }
    if (sock == ULONG_MAX || pfd == ULONG_MAX || sock == pfd ||
        (uid == ULONG_MAX) != (gid == ULONG_MAX))
        usage();
    /* Dispositions survive exec: make sure SIGTERM ends us and a closed peer does not. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGALRM, SIG_DFL); /* the resolver children's timer */
    signal(SIGPIPE, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt((int)sock, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_SEQPACKET) {
        blog("--fd %lu is not a SOCK_SEQPACKET socket", sock);
        return 1;
    }
    B.sock = (int)sock;
    fcntl(B.sock, F_SETFD, FD_CLOEXEC);
    sbx_err err = {0};
    int rc = policy_read((int)pfd, &B.pol, &err);
    close((int)pfd);
    if (rc < 0)
        send_listening_error(err.msg);

    size_t n = B.pol.pb->n_expose;
    int fds[NET_MAX_EXPOSE];
    Sbx__Control__ExposedPort ports[NET_MAX_EXPOSE], *pp[NET_MAX_EXPOSE];
    char strs[NET_MAX_EXPOSE][3][64];
    if (listen_open(&B.pol, fds, ports, strs, &err) < 0)
        send_listening_error(err.msg);
    /* Narrowed before anything is announced: a broker that cannot confine itself says so in
     * `listening`, and the VM does not start. */
    unsigned run_uid = uid != ULONG_MAX ? (unsigned)uid : (unsigned)getuid();
    if (confine(uid != ULONG_MAX, (uid_t)uid, (gid_t)gid, parent, &err) < 0) {
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
        sbx_wrap(&err, "confine");
        send_listening_error(err.msg);
    }
    /* The host sockets stay here (relay.c); the worker gets a datagram pair per UDP port. */
    relay_init();
    int udp_ends[NET_MAX_EXPOSE];
    size_t n_udp = 0;
    for (size_t i = 0; i < n; i++) {
        bool udp = !strcmp(ports[i].protocol, "udp");
        if (relay_expose(fds[i], udp, &udp_ends[n_udp]) < 0)
            send_listening_error("cannot relay an exposed port");
        n_udp += udp;
    }
    Sbx__Net__Listening l = SBX__NET__LISTENING__INIT;
    for (size_t i = 0; i < n; i++)
        pp[i] = &ports[i];
    l.n_ports = n;
    l.ports = pp;
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.body_case = SBX__NET__NET_MSG__BODY_LISTENING;
    m.listening = &l;
    send_now(&m, udp_ends, n_udp);
    for (size_t i = 0; i < n_udp; i++)
        close(udp_ends[i]);
    blog("ready: mode %s%s, %zu allowed domains, %zu exposed ports, %zu hosts-file names, uid %u",
         net_mode_name(B.pol.mode), B.pol.allow_private ? " (private addresses allowed)" : "",
         B.pol.n_domains, n, B.pol.n_hosts, run_uid);
    loop();
}
