/* UDP port forwarding (`--expose P/udp`): a datagram from a host peer on the exposed port (a
 * socket the broker bound on 127.0.0.1) becomes a frame to the guest's port P, from the gateway at
 * a port that stands for that peer; what the guest sends back from P to that port goes to the
 * peer. Slirp is not involved: its UDP forwards would bind inside the jail, where nothing can
 * reach them. */
#include "netint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "netparse.h"

#define UDP_PEERS 256u
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
    struct sockaddr_in peer;
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
static size_t peer_slot(size_t e, const struct sockaddr_in *peer)
{
    size_t lru = 0;
    for (size_t i = 0; i < UDP_PEERS; i++) {
        if (peers[i].used && peers[i].expose == e &&
            peers[i].peer.sin_addr.s_addr == peer->sin_addr.s_addr &&
            peers[i].peer.sin_port == peer->sin_port)
            return i;
        if (!peers[i].used || (peers[lru].used && peers[i].last < peers[lru].last))
            lru = i;
    }
    peers[lru].used = true;
    peers[lru].expose = e;
    peers[lru].peer = *peer;
    return lru;
}

static void inbound(size_t e)
{
    static uint8_t buf[NET_MAX_FRAME];
    for (int k = 0; k < 64; k++) { /* a bounded batch per turn */
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        size_t room = sizeof buf - NET_ETH_HLEN - 28;
        ssize_t r = recvfrom(exposes[e].fd, buf + NET_ETH_HLEN + 28, room, MSG_DONTWAIT,
                             (struct sockaddr *)&peer, &plen);
        if (r < 0)
            return;
        size_t i = peer_slot(e, &peer);
        peers[i].last = now_ms();
        net_endpoint from = {.ip = htonl(NET_GATEWAY), .port = (uint16_t)(UDP_PEER_PORT0 + i)};
        net_endpoint to = {.ip = htonl(NET_GUEST), .port = exposes[e].internal};
        memcpy(from.mac, gateway_mac, 6);
        memcpy(to.mac, guest_mac, 6);
        size_t n = net_build_udp(&from, &to, buf + NET_ETH_HLEN + 28, (size_t)r, buf, sizeof buf);
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
    sendto(exposes[peers[i].expose].fd, p->payload, p->payload_len, MSG_DONTWAIT,
           (const struct sockaddr *)&peers[i].peer, sizeof peers[i].peer);
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
