/* Every host socket stays here. A connection the broker made, or a host client on an exposed
 * TCP port, is copied to and from one end of a Unix socketpair whose other end goes to the
 * worker; an exposed UDP port is copied datagram by datagram over a SOCK_SEQPACKET pair, and
 * answered only towards peers that wrote first. So a worker taken over by its guest holds
 * nothing it could connect, bind or send elsewhere with. */
#include "broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pump.h"

#define UDP_HDR 6u /* peer IPv4 address, port */
#define UDP_PEERS 256u
#define UDP_BATCH 64

typedef struct {
    int host, local;    /* -1: a free slot */
    pump_buf *out, *in; /* host -> local, local -> host; kept with the slot once allocated */
    int ih, il;         /* poll indices this turn */
} relay;

static relay relays[BROKER_MAX_RELAYS];

static struct {
    int fd; /* the host socket */
    bool udp;
    int local; /* udp: the broker's end of the datagram pair */
    int idx;   /* poll index this turn */
    struct {
        struct sockaddr_in addr;
        uint64_t last;
    } peers[UDP_PEERS];
} exposes[NET_MAX_EXPOSE];
static size_t n_exposes;

void relay_init(void)
{
    for (size_t i = 0; i < BROKER_MAX_RELAYS; i++)
        relays[i].host = relays[i].local = -1;
}

static void relay_close(relay *r)
{
    close(r->host);
    close(r->local);
    r->host = r->local = -1;
}

int relay_add(int host, int *worker_end)
{
    relay *r = NULL;
    for (size_t i = 0; i < BROKER_MAX_RELAYS && !r; i++)
        if (relays[i].host < 0)
            r = &relays[i];
    int sp[2];
    if (!r || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0) {
        close(host);
        return -1;
    }
    if (!r->out)
        r->out = malloc(sizeof *r->out);
    if (!r->in)
        r->in = malloc(sizeof *r->in);
    if (!r->out || !r->in) {
        close(host);
        close(sp[0]);
        close(sp[1]);
        return -1;
    }
    memset(r->out, 0, sizeof *r->out);
    memset(r->in, 0, sizeof *r->in);
    fcntl(host, F_SETFL, O_NONBLOCK);
    r->host = host;
    r->local = sp[0];
    *worker_end = sp[1];
    return 0;
}

int relay_expose(int fd, bool udp, int *worker_end)
{
    if (n_exposes == NET_MAX_EXPOSE)
        return -1;
    memset(&exposes[n_exposes], 0, sizeof exposes[n_exposes]);
    exposes[n_exposes].fd = fd;
    exposes[n_exposes].udp = udp;
    exposes[n_exposes].local = -1;
    exposes[n_exposes].idx = -1;
    if (udp) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
            return -1;
        exposes[n_exposes].local = sp[0];
        *worker_end = sp[1];
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    n_exposes++;
    return 0;
}

size_t relay_poll_fill(struct pollfd *p, size_t cap, bool accepting)
{
    size_t n = 0;
    for (size_t e = 0; e < n_exposes && n + 2 <= cap; e++) {
        exposes[e].idx = (int)n;
        p[n++] = (struct pollfd){.fd = exposes[e].fd,
                                 .events = (short)(exposes[e].udp || accepting ? POLLIN : 0)};
        if (exposes[e].udp)
            p[n++] = (struct pollfd){.fd = exposes[e].local, .events = POLLIN};
    }
    for (size_t i = 0; i < BROKER_MAX_RELAYS; i++) {
        relay *r = &relays[i];
        r->ih = r->il = -1;
        if (r->host < 0 || n + 2 > cap)
            continue;
        r->ih = (int)n;
        p[n++] = (struct pollfd){
            .fd = r->host, .events = (short)(pump_events_from(r->out) | pump_events_to(r->in))};
        r->il = (int)n;
        p[n++] = (struct pollfd){
            .fd = r->local, .events = (short)(pump_events_from(r->in) | pump_events_to(r->out))};
    }
    return n;
}

/* Host datagrams to the worker, with their sender in front; the sender becomes a known peer. */
static void udp_in(size_t e)
{
    uint8_t buf[UDP_HDR + 65536];
    for (int k = 0; k < UDP_BATCH; k++) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        ssize_t r = recvfrom(exposes[e].fd, buf + UDP_HDR, sizeof buf - UDP_HDR, MSG_DONTWAIT,
                             (struct sockaddr *)&peer, &plen);
        if (r < 0)
            return;
        size_t lru = 0;
        for (size_t i = 0; i < UDP_PEERS; i++) {
            if (exposes[e].peers[i].addr.sin_addr.s_addr == peer.sin_addr.s_addr &&
                exposes[e].peers[i].addr.sin_port == peer.sin_port) {
                lru = i;
                break;
            }
            if (exposes[e].peers[i].last < exposes[e].peers[lru].last)
                lru = i;
        }
        exposes[e].peers[lru].addr = peer;
        exposes[e].peers[lru].last = now_ms();
        memcpy(buf, &peer.sin_addr.s_addr, 4);
        memcpy(buf + 4, &peer.sin_port, 2);
        send(exposes[e].local, buf, UDP_HDR + (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
}

/* The worker's answers, to peers that wrote first only. */
static void udp_out(size_t e)
{
    uint8_t buf[UDP_HDR + 65536];
    for (int k = 0; k < UDP_BATCH; k++) {
        ssize_t r = recv(exposes[e].local, buf, sizeof buf, MSG_DONTWAIT);
        if (r < (ssize_t)UDP_HDR)
            return;
        struct sockaddr_in to = {.sin_family = AF_INET};
        memcpy(&to.sin_addr.s_addr, buf, 4);
        memcpy(&to.sin_port, buf + 4, 2);
        for (size_t i = 0; i < UDP_PEERS; i++)
            if (exposes[e].peers[i].last && exposes[e].peers[i].addr.sin_port == to.sin_port &&
                exposes[e].peers[i].addr.sin_addr.s_addr == to.sin_addr.s_addr) {
                sendto(exposes[e].fd, buf + UDP_HDR, (size_t)r - UDP_HDR, MSG_DONTWAIT,
                       (struct sockaddr *)&to, sizeof to);
                break;
            }
    }
}

void relay_poll_done(const struct pollfd *p, size_t n, relay_inbound_fn *inbound)
{
    for (size_t e = 0; e < n_exposes; e++) {
        int i = exposes[e].idx;
        if (i < 0 || (size_t)i >= n)
            continue;
        if (exposes[e].udp) {
            if (p[i].revents)
                udp_in(e);
            if ((size_t)i + 1 < n && p[i + 1].revents)
                udp_out(e);
        } else if (p[i].revents & POLLIN) {
            /* One client per port and turn: each becomes a message to the worker. */
            int c = accept4(exposes[e].fd, NULL, NULL, SOCK_CLOEXEC);
            int w;
            if (c >= 0 && relay_add(c, &w) == 0)
                inbound((uint32_t)e, w);
        }
    }
    for (size_t i = 0; i < BROKER_MAX_RELAYS; i++) {
        relay *r = &relays[i];
        if (r->host < 0 || r->ih < 0 || (size_t)r->il >= n ||
            !(p[r->ih].revents || p[r->il].revents))
            continue;
        if (pump_move(r->host, r->local, r->out) < 0 || pump_move(r->local, r->host, r->in) < 0 ||
            (r->out->shut && r->in->shut))
            relay_close(r);
    }
}
