/* UDP port forwarding (`--expose P/udp`): a datagram from a host peer on the exposed port
 * (relayed by the broker, which keeps the host socket, with the peer's address in front) becomes
 * a frame to the guest's port P, from the gateway at a port that stands for that peer; what the
 * guest sends back from P to that port goes to the broker for that peer. Slirp is not involved:
 * its UDP forwards would bind inside the jail, where nothing can reach them. */
#include "netint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "netparse.h"

#define UDP_PEERS 256u
#define UDP_HDR 6u /* the peer's IPv4 address and port, as the broker puts them in front */
#define UDP_PEER_PORT0 30000u /* the gateway's port for peer i: UDP_PEER_PORT0 + i */

static const uint8_t guest_mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
/* libslirp's address for its own hosts: 52:55 and the IPv4 address. */
static const uint8_t gateway_mac[6] = {0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};

static struct {
    int fd;
    uint16_t internal;
} exposes[NET_MAX_EXPOSE];
static size_t n_exposes;

static struct {
    bool used;
    size_t expose;
    uint8_t peer[UDP_HDR];
    uint64_t last;
} peers[UDP_PEERS];

void udp_expose_add(int fd, uint16_t internal)
{
    if (n_exposes == NET_MAX_EXPOSE)
        return;
    exposes[n_exposes].fd = fd;
    exposes[n_exposes].internal = internal;
    n_exposes++;
}

/* The slot standing for peer on expose e: found, else the free or least recently used one. */
static size_t peer_slot(size_t e, const uint8_t *peer)
{
    size_t lru = 0;
    for (size_t i = 0; i < UDP_PEERS; i++) {
        if (peers[i].used && peers[i].expose == e && !memcmp(peers[i].peer, peer, UDP_HDR))
            return i;
        if (!peers[i].used || (peers[lru].used && peers[i].last < peers[lru].last))
            lru = i;
    }
    peers[lru].used = true;
    peers[lru].expose = e;
    memcpy(peers[lru].peer, peer, UDP_HDR);
    return lru;
}

static void inbound(size_t e)
{
    static uint8_t buf[NET_MAX_FRAME];
    const size_t at = NET_ETH_HLEN + 28 - UDP_HDR; /* the payload lands where the frame wants it */
    for (int k = 0; k < 64; k++) {                 /* a bounded batch per turn */
        ssize_t r = recv(exposes[e].fd, buf + at, sizeof buf - at, MSG_DONTWAIT);
        if (r < (ssize_t)UDP_HDR)
            return;
        size_t i = peer_slot(e, buf + at);
        peers[i].last = now_ms();
        net_endpoint from = {.ip = htonl(NET_GATEWAY), .port = (uint16_t)(UDP_PEER_PORT0 + i)};
        net_endpoint to = {.ip = htonl(NET_GUEST), .port = exposes[e].internal};
        memcpy(from.mac, gateway_mac, 6);
        memcpy(to.mac, guest_mac, 6);
        size_t n =
            net_build_udp(&from, &to, buf + at + UDP_HDR, (size_t)r - UDP_HDR, buf, sizeof buf);
        if (n)
            qemu_send_frame(buf, n);
    }
}

bool udp_from_guest(const net_pkt *p)
{
    if (p->dst != htonl(NET_GATEWAY) || p->dport < UDP_PEER_PORT0 ||
        p->dport >= UDP_PEER_PORT0 + UDP_PEERS)
        return false;
    size_t i = p->dport - UDP_PEER_PORT0;
    if (!peers[i].used || exposes[peers[i].expose].internal != p->sport)
        return false;
    peers[i].last = now_ms();
    uint8_t buf[UDP_HDR + 65536];
    size_t len = p->payload_len < 65536 ? p->payload_len : 65536;
    memcpy(buf, peers[i].peer, UDP_HDR);
    memcpy(buf + UDP_HDR, p->payload, len);
    send(exposes[peers[i].expose].fd, buf, UDP_HDR + len, MSG_DONTWAIT | MSG_NOSIGNAL);
    return true;
}

size_t udp_poll_fill(struct pollfd *p, size_t cap)
{
    size_t n = 0;
    for (size_t e = 0; e < n_exposes && n < cap; e++)
        p[n++] = (struct pollfd){.fd = exposes[e].fd, .events = POLLIN};
    return n;
}

void udp_poll_done(const struct pollfd *p, size_t n)
{
    for (size_t e = 0; e < n && e < n_exposes; e++)
        if (p[e].revents)
            inbound(e);
}
