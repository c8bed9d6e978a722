/* Byte streams between the guest and the world. Egress: slirp hands us each guest connection to
 * a virtual address as a Unix stream; in allowlist mode the proxy first reads the whole TLS
 * ClientHello (reassembled, bounded in size and time) and refuses a missing or disallowed name
 * or ECH; then it asks the broker to connect (the broker checks the policy again, with its own
 * resolver's answers) and splices the two. Inbound: a host client on an exposed port, spliced to
 * slirp's forward into the guest. */
#include "netint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "netparse.h"
#include "pump.h"

#define HELLO_TIMEOUT_MS 10000u
#define CONNECT_SLACK_MS 5000u
#define DNS_TCP_IDLE_MS 10000u
#define DNS_TCP_MAX_QUERY 4096u

/* C_DNS: a DNS-over-TCP client of ours (port 53 of any address), answered here. */
typedef enum { C_FREE, C_HELLO, C_WAIT, C_SPLICE, C_DNS } conn_state;

typedef struct {
    conn_state st;
    int a, b;   /* a: the guest's side; b: the other end (upstream, or slirp's forward) */
    int ia, ib; /* poll indices this turn, -1 none */
    uint32_t real;
    uint16_t port;
    char name[254];
    uint64_t id, deadline;
    pump_buf *ab, *ba;
} conn;

static conn conns[CONN_MAX];

/* A slot's buffers stay with it once allocated: at most CONN_MAX pairs, whatever the churn. */
static void conn_close(conn *c)
{
    if (c->a >= 0)
        close(c->a);
    if (c->b >= 0)
        close(c->b);
    pump_buf *ab = c->ab, *ba = c->ba;
    *c = (conn){.st = C_FREE, .a = -1, .b = -1, .ab = ab, .ba = ba};
}

static conn *conn_new(int a, const char *what, uint16_t port)
{
    for (size_t i = 0; i < CONN_MAX; i++)
        if (conns[i].st == C_FREE) {
            conn *c = &conns[i];
            pump_buf *ab = c->ab ? c->ab : malloc(sizeof *ab);
            pump_buf *ba = c->ba ? c->ba : malloc(sizeof *ba);
            *c = (conn){.st = C_FREE,
                        .a = a,
                        .b = -1,
                        .ia = -1,
                        .ib = -1,
                        .port = port,
                        .ab = ab,
                        .ba = ba};
            if (!ab || !ba) {
                c->a = -1; /* closed below */
                conn_close(c);
                break;
            }
            ab->len = ba->len = 0;
            ab->eof = ab->shut = ba->eof = ba->shut = false;
            return c;
        }
    net_block(what, port, "connection refused: %u connections open already", CONN_MAX);
    close(a);
    return NULL;
}

static void ask_connect(conn *c, const char *sni)
{
    Sbx__Net__Connect rq = SBX__NET__CONNECT__INIT;
    rq.ipv4 = c->real;
    rq.port = c->port;
    rq.sni = (char *)sni;
    rq.name = c->name;
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.id = ++N.next_id;
    m.body_case = SBX__NET__NET_MSG__BODY_CONNECT;
    m.connect = &rq;
    if (broker_send(&m) < 0) {
        net_block(c->name, c->port, "connection refused: the broker is not answering");
        conn_close(c);
        return;
    }
    c->id = m.id;
    c->st = C_WAIT;
    c->deadline = now_ms() + NET_CONNECT_TIMEOUT_MS + CONNECT_SLACK_MS;
}

size_t conn_count(void)
{
    size_t n = 0;
    for (size_t i = 0; i < CONN_MAX; i++)
        n += conns[i].st != C_FREE;
    return n;
}

void conn_egress(int fd, uint32_t vip, uint16_t port)
{
    uint32_t real;
    const char *name;
    if (!vip_lookup(vip, &real, &name)) {
        close(fd);
        return;
    }
    conn *c = conn_new(fd, name, port);
    if (!c)
        return;
    c->real = real;
    snprintf(c->name, sizeof c->name, "%s", name);
    if (port == 53) { /* never proxied: our resolver answers */
        c->st = C_DNS;
        c->id = ++N.next_id;
        c->deadline = now_ms() + DNS_TCP_IDLE_MS;
    } else if (N.mode == NET_ALLOWLIST) {
        c->st = C_HELLO;
        c->deadline = now_ms() + HELLO_TIMEOUT_MS;
    } else {
        ask_connect(c, "");
    }
}

void conn_inbound(int fd, const char *path)
{
    conn *c = conn_new(fd, "inbound", 0);
    if (!c)
        return;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    c->b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->b < 0 || connect(c->b, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "sbx-vmworker[net]: forward into the guest: %s\n", strerror(errno));
        conn_close(c);
        return;
    }
    c->st = C_SPLICE;
}

void conn_connected(uint64_t id, const Sbx__Net__Connected *r, int fd)
{
    for (size_t i = 0; i < CONN_MAX; i++) {
        conn *c = &conns[i];
        if (c->st != C_WAIT || c->id != id)
            continue;
        if (fd < 0) {
            net_block(c->name, c->port, "connection refused: %s",
                      r->refused && *r->refused ? r->refused : "by the broker");
            conn_close(c);
            return;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        c->b = fd;
        c->st = C_SPLICE;
        return;
    }
    if (fd >= 0)
        close(fd); /* the guest gave up first */
}

void conn_dns_answer(uint64_t id, const uint8_t *msg, size_t len)
{
    for (size_t i = 0; i < CONN_MAX; i++) {
        conn *c = &conns[i];
        if (c->st != C_DNS || c->id != id)
            continue;
        uint8_t buf[2 + 512];
        if (len > 512)
            return;
        buf[0] = (uint8_t)(len >> 8);
        buf[1] = (uint8_t)len;
        memcpy(buf + 2, msg, len);
        /* An answer the guest's socket cannot take at once: the guest is not reading. */
        if (send(c->a, buf, 2 + len, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)(2 + len))
            conn_close(c);
        return;
    }
}

/* What the guest sent next on c (into c->ab): 1 bytes came, 0 none yet, -1 the guest closed or
 * the connection broke (c is closed). */
static int read_more(conn *c)
{
    pump_buf *p = c->ab;
    ssize_t r = read(c->a, p->data + p->len, PUMP_BUF - p->len);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0) {
        conn_close(c);
        return -1;
    }
    p->len += (size_t)r;
    return 1;
}

/* Length-prefixed queries on a DNS-over-TCP connection, each answered like a UDP one. */
static void read_dns(conn *c)
{
    pump_buf *p = c->ab;
    if (read_more(c) <= 0)
        return;
    c->deadline = now_ms() + DNS_TCP_IDLE_MS;
    while (p->len >= 2) {
        size_t m = (size_t)p->data[0] << 8 | p->data[1];
        if (m == 0 || m > DNS_TCP_MAX_QUERY) {
            conn_close(c);
            return;
        }
        if (p->len < 2 + m)
            return;
        dns_asker from = {.tcp = true, .conn = c->id};
        uint64_t id = c->id;
        dns_query_in(p->data + 2, m, &from);
        if (c->st != C_DNS || c->id != id)
            return; /* closed while answering */
        memmove(p->data, p->data + 2 + m, p->len - 2 - m);
        p->len -= 2 + m;
    }
}

/* The guest's first bytes on an allowlist connection: a ClientHello for an allowed name, or
 * nothing goes anywhere. */
static void read_hello(conn *c)
{
    pump_buf *p = c->ab;
    if (read_more(c) <= 0)
        return;
    char sni[256];
    hello_verdict v = tls_client_hello_sni(p->data, p->len, sni, sizeof sni);
    const char *why = NULL;
    switch (v) {
    case HELLO_MORE:
        if (p->len < TLS_HELLO_MAX + 64)
            return;
        why = "the TLS ClientHello is too long";
        break;
    case HELLO_OK:
        if (!net_name_allowed(sni, N.allowed, N.n_allowed)) {
            net_block(sni, c->port, "TLS server name not on the allowlist");
            conn_close(c);
            return;
        }
        snprintf(c->name, sizeof c->name, "%s", sni); /* what the guest asked for, from here */
        ask_connect(c, sni);
        return;
    case HELLO_NOT_TLS:
        why = "not TLS (only TLS to allowed names leaves)";
        break;
    case HELLO_NO_SNI:
        why = "TLS without a server name";
        break;
    case HELLO_ECH:
        why = "TLS with an encrypted ClientHello (ECH)";
        break;
    case HELLO_BAD:
        why = "malformed TLS ClientHello";
        break;
    }
    net_block(c->name, c->port, "connection refused: %s", why);
    conn_close(c);
}

size_t conn_poll_fill(struct pollfd *p, size_t cap, uint64_t *deadline)
{
    size_t n = 0;
    for (size_t i = 0; i < CONN_MAX; i++)
        conns[i].ia = conns[i].ib = -1;
    for (size_t i = 0; i < CONN_MAX && n + 2 <= cap; i++) {
        conn *c = &conns[i];
        if (c->st == C_FREE)
            continue;
        if (c->st != C_SPLICE && c->deadline < *deadline)
            *deadline = c->deadline;
        short ea = 0, eb = 0;
        if (c->st == C_HELLO || c->st == C_DNS)
            ea = POLLIN;
        if (c->st == C_SPLICE) {
            ea = (short)(pump_events_from(c->ab) | pump_events_to(c->ba));
            eb = (short)(pump_events_from(c->ba) | pump_events_to(c->ab));
        }
        if (ea) {
            c->ia = (int)n;
            p[n++] = (struct pollfd){.fd = c->a, .events = ea};
        }
        if (eb) {
            c->ib = (int)n;
            p[n++] = (struct pollfd){.fd = c->b, .events = eb};
        }
    }
    return n;
}

void conn_poll_done(const struct pollfd *p, size_t n, uint64_t now)
{
    for (size_t i = 0; i < CONN_MAX; i++) {
        conn *c = &conns[i];
        if (c->st == C_FREE)
            continue;
        bool ready = (c->ia >= 0 && (size_t)c->ia < n && p[c->ia].revents) ||
                     (c->ib >= 0 && (size_t)c->ib < n && p[c->ib].revents);
        if (c->st == C_HELLO && ready) {
            read_hello(c);
            continue;
        }
        if (c->st == C_DNS) {
            if (ready)
                read_dns(c);
            else if (now >= c->deadline)
                conn_close(c); /* idle */
            continue;
        }
        if (c->st == C_HELLO || c->st == C_WAIT) {
            if (now >= c->deadline) {
                net_block(c->name, c->port, "connection refused: %s",
                          c->st == C_HELLO ? "no TLS ClientHello within 10 s"
                                           : "the broker did not connect in time");
                conn_close(c);
            }
            continue;
        }
        if (!ready)
            continue;
        if (pump_move(c->a, c->b, c->ab) < 0 || pump_move(c->b, c->a, c->ba) < 0 ||
            (c->ab->shut && c->ba->shut))
            conn_close(c);
    }
}
