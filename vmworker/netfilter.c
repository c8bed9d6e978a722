/* Every frame from the guest, before slirp sees it: DNS answered here (names the policy allows
 * are resolved by the broker and answered with virtual addresses that stand for the real ones;
 * everything else NXDOMAIN, never sent to a real resolver); a TCP connection may only begin
 * towards a virtual address (on 443 in allowlist mode), which gets a slirp forward to our egress
 * socket, so that the stream lands in the proxy (netconn.c); everything else the guest starts is
 * refused at once with a reset or an ICMP error, and reported. Slirp runs restricted: even a
 * frame this filter let through by mistake could reach nothing but our own forwards. */
#include "netint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netparse.h"

#define DNS_PENDING_MAX 64u
#define DNS_TIMEOUT_MS 10000u
#define DNS_TTL 60u
#define DNS_MAX_ANSWERS 8u
#define MAX_FORWARDS 512u
/* New guest connections: at most SYN_WINDOW_N in any SYN_WINDOW_MS. Slirp keeps each ended
 * connection's socket and buffers (~60 KiB) for about 10 s (a guest that does not finish the
 * close can make it minutes: net_socket_cap bounds those), so this bounds what a guest opening
 * thousands at once makes this process hold, while a burst of hundreds passes. */
#define SYN_WINDOW_N 256u
#define SYN_WINDOW_MS 10000u

static struct {
    bool used;
    uint64_t id, deadline;
    dns_asker from;
    dns_query q;
} pending[DNS_PENDING_MAX];

static struct {
    uint32_t real; /* network byte order */
    char name[254];
    bool nat; /* open mode, an address the guest used itself: frames are rewritten both ways */
} vips[NET_MAX_VIPS];
static size_t n_vips;

static struct {
    uint32_t vip;
    uint16_t port;
} forwards[MAX_FORWARDS];
static size_t n_forwards;

static char *ip_str(uint32_t be, char *buf)
{
    inet_ntop(AF_INET, &be, buf, INET_ADDRSTRLEN);
    return buf;
}

bool vip_lookup(uint32_t vip, uint32_t *real, const char **name)
{
    uint32_t h = ntohl(vip);
    if (h <= NET_VIP_BASE || h > NET_VIP_BASE + n_vips)
        return false;
    *real = vips[h - NET_VIP_BASE - 1].real;
    *name = vips[h - NET_VIP_BASE - 1].name;
    return true;
}

/* The virtual address standing for real, found or made (0 when the table is full). Names from
 * the resolver and addresses the guest used itself (nat) get separate entries: only the latter
 * are rewritten back, so that the guest sees the address it connected to. */
static uint32_t vip_get(uint32_t real, const char *name, bool nat, bool create)
{
    for (size_t i = 0; i < n_vips; i++)
        if (vips[i].real == real && vips[i].nat == nat)
            return htonl(NET_VIP_BASE + (uint32_t)i + 1);
    if (!create || n_vips == NET_MAX_VIPS)
        return 0;
    vips[n_vips].real = real;
    vips[n_vips].nat = nat;
    snprintf(vips[n_vips].name, sizeof vips[n_vips].name, "%s", name);
    n_vips++;
    return htonl(NET_VIP_BASE + (uint32_t)n_vips);
}

static uint32_t vip_for(uint32_t real, const char *name)
{
    return vip_get(real, name, false, true);
}

static bool in_vnetwork(uint32_t be)
{
    return (ntohl(be) & NET_VNETMASK) == NET_VNETWORK;
}

/* RFC 1624: the checksum at f[at] after a 32-bit word of what it covers went from `from` to
 * `to` (network byte order). */
static void csum_fix(uint8_t *f, size_t at, uint32_t from, uint32_t to)
{
    uint32_t a = ntohl(from), b = ntohl(to);
    uint32_t sum = (uint16_t) ~(f[at] << 8 | f[at + 1]);
    sum += (uint16_t) ~(a >> 16) + (uint16_t) ~(a & 0xFFFF) + (b >> 16) + (b & 0xFFFF);
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    f[at] = (uint8_t)(~sum >> 8);
    f[at + 1] = (uint8_t)~sum;
}

/* Replaces the IPv4 source (at 12) or destination (at 16) of a TCP frame, fixing both sums. */
static void nat_rewrite(uint8_t *f, size_t len, size_t addr_at, uint32_t to)
{
    size_t ip = NET_ETH_HLEN, ihl = (size_t)(f[ip] & 0x0F) * 4;
    uint32_t from;
    memcpy(&from, f + ip + addr_at, 4);
    memcpy(f + ip + addr_at, &to, 4);
    csum_fix(f, ip + 10, from, to);
    if (len >= ip + ihl + 18)
        csum_fix(f, ip + ihl + 16, from, to);
}

void filter_to_guest(const uint8_t *f, size_t len)
{
    static uint8_t copy[NET_MAX_FRAME];
    net_pkt p;
    uint32_t h;
    if (len <= sizeof copy && net_parse_frame(f, len, &p) == PKT_TCP &&
        (h = ntohl(p.src)) > NET_VIP_BASE && h <= NET_VIP_BASE + n_vips &&
        vips[h - NET_VIP_BASE - 1].nat) {
        memcpy(copy, f, len);
        nat_rewrite(copy, len, 12, vips[h - NET_VIP_BASE - 1].real);
        f = copy;
    }
    qemu_send_frame(f, len);
}

/* ---- replies to the guest ---- */

static void reply_rst(const net_pkt *p)
{
    uint8_t out[128];
    size_t n = net_build_tcp_rst(p, out, sizeof out);
    if (n)
        qemu_send_frame(out, n);
}

static void reply_icmp(const net_pkt *p)
{
    uint8_t out[256];
    size_t n = net_build_icmp_unreach(p, 13, out, sizeof out);
    if (n)
        qemu_send_frame(out, n);
}

/* A DNS message to whoever asked: a UDP frame answering theirs, or their TCP stream. */
static void dns_send(const dns_asker *from, const uint8_t *msg, size_t len)
{
    if (from->tcp) {
        conn_dns_answer(from->conn, msg, len);
        return;
    }
    uint8_t out[600];
    net_pkt p;
    if (net_parse_frame(from->frame, from->len, &p) != PKT_UDP)
        return;
    size_t f = net_build_udp_reply(&p, msg, len, out, sizeof out);
    if (f)
        qemu_send_frame(out, f);
}

static void reply_dns(const dns_asker *from, const dns_query *q, int rcode, const uint32_t *a,
                      size_t n)
{
    uint8_t msg[512];
    size_t m = dns_build_answer(q, rcode, a, n, DNS_TTL, msg, sizeof msg);
    if (m)
        dns_send(from, msg, m);
}

/* ---- DNS ---- */

/* Answers given, kept for their TTL: a guest that resolves the same name over and over (no
 * cache of its own) is answered here, without a request to the broker, which has a budget. */
#define ANSWERS_KEPT 256u
typedef struct {
    char name[254];
    uint32_t addrs[DNS_MAX_ANSWERS]; /* virtual */
    size_t n;
    uint64_t until;
} kept_answer;
static kept_answer answers[ANSWERS_KEPT];
static size_t answers_next;

static const kept_answer *answer_kept(const char *name)
{
    uint64_t now = now_ms();
    for (size_t i = 0; i < ANSWERS_KEPT; i++)
        if (answers[i].until > now && !strcmp(answers[i].name, name))
            return &answers[i];
    return NULL;
}

static void answer_keep(const char *name, const uint32_t *addrs, size_t n)
{
    size_t i = answers_next;
    answers_next = (answers_next + 1) % ANSWERS_KEPT;
    snprintf(answers[i].name, sizeof answers[i].name, "%s", name);
    memcpy(answers[i].addrs, addrs, n * sizeof *addrs);
    answers[i].n = n;
    answers[i].until = now_ms() + DNS_TTL * 1000u;
}

void dns_query_in(const uint8_t *msg, size_t len, const dns_asker *from)
{
    dns_query q;
    if (dns_parse_query(msg, len, &q) < 0) {
        uint8_t err[16];
        size_t m = len >= 2 ? dns_build_error((uint16_t)(msg[0] << 8 | msg[1]), DNS_RCODE_FORMERR,
                                              err, sizeof err)
                            : 0;
        if (m)
            dns_send(from, err, m);
        return;
    }
    if (N.mode == NET_PORTS) {
        net_block(q.name, 53, "DNS refused: this VM has exposed ports only, no outbound network");
        reply_dns(from, &q, DNS_RCODE_REFUSED, NULL, 0);
        return;
    }
    bool allowed = N.mode == NET_OPEN || net_name_allowed(q.name, N.allowed, N.n_allowed);
    if (!allowed || q.qclass != DNS_CLASS_IN) {
        if (q.qtype == DNS_TYPE_A)
            net_block(q.name, 53, "name not on the allowlist (NXDOMAIN)");
        reply_dns(from, &q, DNS_RCODE_NXDOMAIN, NULL, 0);
        return;
    }
    if (q.qtype != DNS_TYPE_A) {
        reply_dns(from, &q, DNS_RCODE_OK, NULL, 0); /* NODATA: IPv4 only */
        return;
    }
    const kept_answer *kept = answer_kept(q.name);
    if (kept) {
        reply_dns(from, &q, DNS_RCODE_OK, kept->addrs, kept->n);
        return;
    }
    size_t i = 0;
    while (i < DNS_PENDING_MAX && pending[i].used)
        i++;
    if (i == DNS_PENDING_MAX) {
        reply_dns(from, &q, DNS_RCODE_SERVFAIL, NULL, 0);
        return;
    }
    Sbx__Net__Resolve rs = SBX__NET__RESOLVE__INIT;
    rs.name = q.name;
    Sbx__Net__NetMsg m = SBX__NET__NET_MSG__INIT;
    m.id = ++N.next_id;
    m.body_case = SBX__NET__NET_MSG__BODY_RESOLVE;
    m.resolve = &rs;
    if (broker_send(&m) < 0) {
        reply_dns(from, &q, DNS_RCODE_SERVFAIL, NULL, 0);
        return;
    }
    pending[i].used = true;
    pending[i].id = m.id;
    pending[i].deadline = now_ms() + DNS_TIMEOUT_MS;
    pending[i].from = *from;
    pending[i].q = q;
}

/* A query over UDP (to any resolver address): answered as a frame from that address. */
static void dns_udp(const net_pkt *p)
{
    dns_asker from = {.tcp = false};
    if (p->len > sizeof from.frame)
        return;
    memcpy(from.frame, p->frame, p->len);
    from.len = p->len;
    dns_query_in(p->payload, p->payload_len, &from);
}

void filter_resolved(uint64_t id, const Sbx__Net__Resolved *r)
{
    size_t i = 0;
    while (i < DNS_PENDING_MAX && !(pending[i].used && pending[i].id == id))
        i++;
    if (i == DNS_PENDING_MAX)
        return; /* answered already (timed out) */
    pending[i].used = false;
    const dns_asker *from = &pending[i].from;
    const dns_query *q = &pending[i].q;
    if (r->refused && *r->refused) {
        net_block(q->name, 53, "%s (NXDOMAIN)", r->refused);
        reply_dns(from, q, DNS_RCODE_NXDOMAIN, NULL, 0);
        return;
    }
    uint32_t a[DNS_MAX_ANSWERS];
    size_t n = 0;
    for (size_t k = 0; k < r->n_ipv4 && n < DNS_MAX_ANSWERS; k++) {
        uint32_t v = vip_for(r->ipv4[k], q->name);
        if (v)
            a[n++] = v;
    }
    if (n)
        answer_keep(q->name, a, n);
    reply_dns(from, q, n || !r->n_ipv4 ? DNS_RCODE_OK : DNS_RCODE_SERVFAIL, a, n);
}

void filter_expire(uint64_t now)
{
    for (size_t i = 0; i < DNS_PENDING_MAX; i++)
        if (pending[i].used && pending[i].deadline <= now) {
            pending[i].used = false;
            reply_dns(&pending[i].from, &pending[i].q, DNS_RCODE_SERVFAIL, NULL, 0);
        }
}

/* ---- TCP ---- */

static bool forward_for(uint32_t vip, uint16_t port)
{
    for (size_t i = 0; i < n_forwards; i++)
        if (forwards[i].vip == vip && forwards[i].port == port)
            return true;
    if (n_forwards == MAX_FORWARDS)
        return false;
    struct in_addr a = {.s_addr = vip};
    if (slirp_add_unix(N.slirp, N.egress_path, &a, port) < 0)
        return false;
    forwards[n_forwards].vip = vip;
    forwards[n_forwards].port = port;
    n_forwards++;
    return true;
}

/* A new connection from the guest: allowed to begin only towards a virtual address. */
/* Whether a new connection may start now: at most SYN_WINDOW_N in SYN_WINDOW_MS, a free
 * connection slot, and slirp holding fewer than its share of sockets (a guest can keep ended
 * connections alive in slirp for minutes). Checked before anything is made for the SYN. */
static bool syn_budget(const net_pkt *p)
{
    static uint64_t started[SYN_WINDOW_N]; /* when the last SYN_WINDOW_N were let through */
    static size_t next;
    char ip[INET_ADDRSTRLEN];
    uint64_t now = now_ms();
    const char *why = NULL;
    if (started[next] && now - started[next] < SYN_WINDOW_MS)
        why = "more than 256 new connections in 10 s";
    else if (conn_count() >= CONN_MAX)
        why = "256 connections open already";
    else if (slirp_sockets() >= net_socket_cap())
        why = "too many connections not yet ended";
    if (why) {
        net_block(ip_str(p->dst, ip), p->dport, "connection refused: %s", why);
        return false;
    }
    started[next] = now;
    next = (next + 1) % SYN_WINDOW_N;
    return true;
}

static bool syn_allowed(const net_pkt *p)
{
    char ip[INET_ADDRSTRLEN];
    uint32_t real;
    const char *name;
    if (!vip_lookup(p->dst, &real, &name)) {
        if (N.mode == NET_PORTS)
            net_block(ip_str(p->dst, ip), p->dport,
                      "connection refused: exposed ports only, no outbound network");
        else
            net_block(ip_str(p->dst, ip), p->dport,
                      "connection refused: not an address our resolver gave for an allowed name");
        return false;
    }
    if (N.mode == NET_ALLOWLIST && p->dport != 443 && p->dport != 53) {
        net_block(name, p->dport, "connection refused: only TLS on port 443");
        return false;
    }
    if (!forward_for(p->dst, p->dport)) {
        net_block(name, p->dport, "connection refused: too many destinations");
        return false;
    }
    return true;
}

static void tcp(const uint8_t *f, size_t len, const net_pkt *orig)
{
    bool syn = (orig->tcp_flags & (NET_TCP_SYN | NET_TCP_ACK)) == NET_TCP_SYN;
    /* Open mode: an address the guest chose itself goes through a virtual address of its own
     * (the broker refuses private ones). */
    static uint8_t copy[NET_MAX_FRAME];
    net_pkt nat = *orig;
    const net_pkt *p = orig;
    if (syn && !syn_budget(orig)) {
        reply_rst(orig);
        return;
    }
    /* DNS over TCP to any resolver address, in the modes that have DNS, lands in netconn.c's
     * reader the same way (port 53 is never proxied anywhere). */
    uint32_t dh = ntohl(orig->dst);
    bool is_vip = dh > NET_VIP_BASE && dh <= NET_VIP_BASE + NET_MAX_VIPS;
    bool nat_dns = N.mode != NET_PORTS && orig->dport == 53 && !is_vip;
    if ((nat_dns || (N.mode == NET_OPEN && !in_vnetwork(orig->dst))) && len <= sizeof copy) {
        char ip[INET_ADDRSTRLEN];
        uint32_t v = vip_get(orig->dst, ip_str(orig->dst, ip), true, syn);
        if (v) {
            memcpy(copy, f, len);
            nat_rewrite(copy, len, 16, v);
            f = copy;
            nat.dst = v;
            p = &nat;
        }
    }
    if (syn && !syn_allowed(p)) {
        reply_rst(orig); /* from the address the guest dialled */
        return;
    }
    slirp_input(N.slirp, f, (int)len);
    /* Slirp connects a forward's socket while it handles the segment that completes the
     * handshake: the connection waiting on the egress socket now is this one. */
    uint32_t h = ntohl(p->dst);
    if (h > NET_VIP_BASE && h <= NET_VIP_BASE + NET_MAX_VIPS) {
        int c = accept4(N.egress, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0)
            conn_egress(c, p->dst, p->dport);
    }
}

void filter_frame(const uint8_t *f, size_t len)
{
    net_pkt p;
    char ip[INET_ADDRSTRLEN];
    switch (net_parse_frame(f, len, &p)) {
    case PKT_BAD:
    case PKT_IPV6: /* no IPv6 here: the guest's own neighbour discovery ends in silence */
        return;
    case PKT_OTHER: /* ARP */
        slirp_input(N.slirp, f, (int)len);
        return;
    case PKT_FRAGMENT:
        net_block("ip fragment", 0, "IP fragments are refused");
        return;
    case PKT_IPV4_OTHER:
        /* ICMP to the gateway (ping) is slirp's to answer; nothing else leaves. */
        if (p.src == htonl(NET_GUEST) && p.dst == htonl(NET_GATEWAY))
            slirp_input(N.slirp, f, (int)len);
        return;
    case PKT_UDP:
        if (p.src != htonl(NET_GUEST) || udp_from_guest(&p))
            return;
        if (p.dport == 53) {
            dns_udp(&p);
            return;
        }
        net_block(ip_str(p.dst, ip), p.dport, "UDP refused: only DNS");
        reply_icmp(&p);
        return;
    case PKT_TCP:
        if (p.src == htonl(NET_GUEST))
            tcp(f, len, &p);
        return;
    }
}
