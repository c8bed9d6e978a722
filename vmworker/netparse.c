/* The guest's network bytes, parsed and answered (netparse.h). Everything here reads hostile
 * input: each length taken from a packet is compared with the bytes present (and with the length
 * of whatever encloses it) before anything is read at or past it. No allocation, no I/O. */
#include "netparse.h"

#include <string.h>

#define ETH_P_IPV4 0x0800u
#define ETH_P_IPV6 0x86DDu
#define IPPROTO_ICMP_ 1u
#define IPPROTO_TCP_ 6u
#define IPPROTO_UDP_ 17u
#define IP_TTL 64u
#define IP_DF 0x4000u
#define DNS_HLEN 12u
#define DNS_UDP_MAX 512u
#define DNS_RR_A_LEN 16u /* pointer 2, type 2, class 2, ttl 4, rdlength 2, address 4 */

static uint16_t rd16(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void wr16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static void wr32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* ---- frames from the guest ---- */

net_pkt_kind net_parse_frame(const uint8_t *f, size_t len, net_pkt *p)
{
    memset(p, 0, sizeof *p);
    p->frame = f;
    p->len = len;
    if (!f || len < NET_ETH_HLEN)
        return PKT_BAD;
    p->ethertype = rd16(f + 12);
    if (p->ethertype == ETH_P_IPV6)
        return PKT_IPV6;
    if (p->ethertype != ETH_P_IPV4)
        return PKT_OTHER;

    const uint8_t *ip = f + NET_ETH_HLEN;
    size_t room = len - NET_ETH_HLEN;
    if (room < 20 || ip[0] >> 4 != 4)
        return PKT_BAD;
    size_t hlen = (size_t)(ip[0] & 15u) * 4;
    size_t total = rd16(ip + 2);
    if (hlen < 20 || total < hlen || total > room)
        return PKT_BAD;
    p->ip_hlen = hlen;
    p->proto = ip[9];
    memcpy(&p->src, ip + 12, 4);
    memcpy(&p->dst, ip + 16, 4);
    if (rd16(ip + 6) & 0x3FFFu) /* MF or a fragment offset */
        return PKT_FRAGMENT;

    const uint8_t *seg = ip + hlen;
    size_t seglen = total - hlen;
    if (p->proto == IPPROTO_TCP_) {
        if (seglen < 20)
            return PKT_BAD;
        size_t doff = (size_t)(seg[12] >> 4) * 4;
        if (doff < 20 || doff > seglen)
            return PKT_BAD;
        p->sport = rd16(seg);
        p->dport = rd16(seg + 2);
        p->seq = rd32(seg + 4);
        p->ack = rd32(seg + 8);
        p->tcp_flags = seg[13];
        p->payload = seg + doff;
        p->payload_len = seglen - doff;
        return PKT_TCP;
    }
    if (p->proto == IPPROTO_UDP_) {
        if (seglen < 8)
            return PKT_BAD;
        size_t ulen = rd16(seg + 4);
        if (ulen < 8 || ulen > seglen)
            return PKT_BAD;
        p->sport = rd16(seg);
        p->dport = rd16(seg + 2);
        p->payload = seg + 8;
        p->payload_len = ulen - 8;
        return PKT_UDP;
    }
    p->payload = seg;
    p->payload_len = seglen;
    return PKT_IPV4_OTHER;
}

/* ---- DNS ---- */

static bool dns_label_byte(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int dns_parse_query(const uint8_t *msg, size_t len, dns_query *q)
{
    memset(q, 0, sizeof *q);
    if (!msg || len < DNS_HLEN)
        return -1;
    q->id = rd16(msg);
    uint16_t flags = rd16(msg + 2);
    q->rd = (flags & 0x0100u) != 0;
    if ((flags & 0x8000u) || ((flags >> 11) & 15u) != 0) /* a response, or not QUERY */
        return -1;
    if (rd16(msg + 4) != 1 || rd16(msg + 6) != 0 || rd16(msg + 8) != 0)
        return -1;

    size_t off = DNS_HLEN, n = 0; /* n: bytes of q->name written */
    for (;;) {
        if (off >= len)
            return -1;
        uint8_t l = msg[off++];
        if (l == 0)
            break;
        if (l & 0xC0u) /* a compression pointer (or the reserved 0x40/0x80 types): refused */
            return -1;
        if (l > len - off)
            return -1;
        /* Room for the separating dot and the label, within 253 characters. */
        if ((n > 0 ? n + 1 : 0) + l > 253)
            return -1;
        if (n > 0)
            q->name[n++] = '.';
        for (size_t i = 0; i < l; i++) {
            uint8_t c = msg[off + i];
            if (!dns_label_byte(c))
                return -1;
            q->name[n++] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        off += l;
    }
    q->name[n] = '\0';
    if (len - off < 4)
        return -1;
    q->qtype = rd16(msg + off);
    q->qclass = rd16(msg + off + 2);
    off += 4;
    q->question_len = off - DNS_HLEN;
    return 0;
}

/* Writes q->name as DNS labels at out (room bytes); its length, or 0 if it does not fit or the
 * name is not one dns_parse_query could have produced. */
static size_t dns_put_name(const char *name, uint8_t *out, size_t room)
{
    size_t nlen = strnlen(name, 254);
    if (nlen > 253)
        return 0;
    size_t need = nlen == 0 ? 1 : nlen + 2;
    if (need > room)
        return 0;
    size_t o = 0, start = 0;
    while (start < nlen) {
        const char *dot = memchr(name + start, '.', nlen - start);
        size_t l = dot ? (size_t)(dot - name) - start : nlen - start;
        if (l == 0 || l > 63)
            return 0;
        out[o++] = (uint8_t)l;
        memcpy(out + o, name + start, l);
        o += l;
        start += l + 1;
        if (dot && start == nlen) /* a trailing dot */
            return 0;
    }
    out[o++] = 0;
    return o;
}

static void dns_put_header(uint8_t *out, uint16_t id, bool rd, int rcode, uint16_t qd, uint16_t an)
{
    wr16(out, id);
    uint16_t flags = 0x8000u | 0x0080u | (uint16_t)(rcode & 15); /* QR, RA, opcode QUERY */
    if (rd)
        flags |= 0x0100u;
    wr16(out + 2, flags);
    wr16(out + 4, qd);
    wr16(out + 6, an);
    wr16(out + 8, 0);
    wr16(out + 10, 0);
}

size_t dns_build_answer(const dns_query *q, int rcode, const uint32_t *a, size_t n, uint32_t ttl,
                        uint8_t *out, size_t cap)
{
    if (!q || !out || cap < DNS_HLEN)
        return 0;
    /* Records answer only an IN A question; every other type gets NODATA. */
    if (rcode != DNS_RCODE_OK || q->qtype != DNS_TYPE_A || q->qclass != DNS_CLASS_IN || !a)
        n = 0;
    size_t nl = dns_put_name(q->name, out + DNS_HLEN, cap - DNS_HLEN);
    if (nl == 0 || cap - DNS_HLEN - nl < 4)
        return 0;
    size_t off = DNS_HLEN + nl;
    wr16(out + off, q->qtype);
    wr16(out + off + 2, q->qclass);
    off += 4;
    /* At most as many records as keep the message within 512 bytes (a plain UDP answer); the
     * question is at most 259 bytes, so at least 15 always fit. The rest are left out (no TC:
     * the records given are a complete, valid answer). */
    size_t fit = (DNS_UDP_MAX - off) / DNS_RR_A_LEN;
    if (n > fit)
        n = fit;
    if (n > (cap - off) / DNS_RR_A_LEN)
        return 0;
    dns_put_header(out, q->id, q->rd, rcode, 1, (uint16_t)n);
    for (size_t i = 0; i < n; i++) {
        uint8_t *rr = out + off;
        wr16(rr, 0xC00Cu); /* the question's name, at offset 12 */
        wr16(rr + 2, DNS_TYPE_A);
        wr16(rr + 4, DNS_CLASS_IN);
        wr32(rr + 6, ttl);
        wr16(rr + 10, 4);
        memcpy(rr + 12, &a[i], 4);
        off += DNS_RR_A_LEN;
    }
    return off;
}

size_t dns_build_error(uint16_t id, int rcode, uint8_t *out, size_t cap)
{
    if (!out || cap < DNS_HLEN)
        return 0;
    dns_put_header(out, id, false, rcode, 0, 0);
    return DNS_HLEN;
}

/* ---- frames towards the guest ---- */

static uint64_t csum_add(uint64_t s, const uint8_t *b, size_t n)
{
    size_t i = 0;
    for (; i + 1 < n; i += 2)
        s += rd16(b + i);
    if (i < n)
        s += (uint64_t)b[i] << 8;
    return s;
}

static uint16_t csum_fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFFu) + (s >> 16);
    return (uint16_t)~s;
}

/* The TCP/UDP checksum: the pseudo-header (addresses, protocol, length) and the segment. */
static uint16_t csum_l4(const uint8_t *ip, const uint8_t *seg, size_t n)
{
    uint64_t s = csum_add(0, ip + 12, 8);
    s += ip[9];
    s += n;
    return csum_fold(csum_add(s, seg, n));
}

/* Whether p is an IPv4 packet net_parse_frame filled in (not a fragment): the builders read its
 * frame's MACs and IP header. */
static bool pkt_ipv4(const net_pkt *p)
{
    return p && p->frame && p->ethertype == ETH_P_IPV4 && p->ip_hlen >= 20 && p->ip_hlen <= 60 &&
           p->len >= NET_ETH_HLEN + p->ip_hlen;
}

/* The ethernet and IPv4 headers of a reply to p: MACs (p's, copied by the caller before out,
 * which may be p's own frame, is written) and addresses swapped, DF, TTL 64. */
/* Ethernet and IPv4 headers from `from` to `to` (addresses in network byte order). */
static void put_eth_ip(const net_endpoint *from, const net_endpoint *to, uint8_t *out, size_t iplen,
                       uint8_t proto)
{
    memcpy(out, to->mac, 6);
    memcpy(out + 6, from->mac, 6);
    wr16(out + 12, ETH_P_IPV4);
    uint8_t *ip = out + NET_ETH_HLEN;
    ip[0] = 0x45;
    ip[1] = 0;
    wr16(ip + 2, (uint16_t)iplen);
    wr16(ip + 4, 0);
    wr16(ip + 6, IP_DF);
    ip[8] = IP_TTL;
    ip[9] = proto;
    wr16(ip + 10, 0);
    memcpy(ip + 12, &from->ip, 4);
    memcpy(ip + 16, &to->ip, 4);
    wr16(ip + 10, csum_fold(csum_add(0, ip, 20)));
}

/* The endpoints of p, turned around: the reply goes from p's destination to its source. */
static void reply_ends(const net_pkt *p, net_endpoint *from, net_endpoint *to)
{
    memcpy(from->mac, p->frame, 6);
    memcpy(to->mac, p->frame + 6, 6);
    from->ip = p->dst;
    to->ip = p->src;
    from->port = p->dport;
    to->port = p->sport;
}

size_t net_build_udp(const net_endpoint *from, const net_endpoint *to, const uint8_t *payload,
                     size_t len, uint8_t *out, size_t cap)
{
    if (!out || (len && !payload) || len > 0xFFFFu - 28)
        return 0;
    size_t total = NET_ETH_HLEN + 28 + len;
    if (total > cap)
        return 0;
    if (len)
        memmove(out + NET_ETH_HLEN + 28, payload, len);
    put_eth_ip(from, to, out, 28 + len, IPPROTO_UDP_);
    uint8_t *ip = out + NET_ETH_HLEN, *udp = ip + 20;
    wr16(udp, from->port);
    wr16(udp + 2, to->port);
    wr16(udp + 4, (uint16_t)(8 + len));
    wr16(udp + 6, 0);
    uint16_t c = csum_l4(ip, udp, 8 + len);
    wr16(udp + 6, c ? c : 0xFFFFu); /* 0 means "no checksum" in UDP */
    return total;
}

size_t net_build_udp_reply(const net_pkt *p, const uint8_t *payload, size_t len, uint8_t *out,
                           size_t cap)
{
    if (!pkt_ipv4(p) || p->proto != IPPROTO_UDP_)
        return 0;
    net_endpoint from, to;
    reply_ends(p, &from, &to);
    return net_build_udp(&from, &to, payload, len, out, cap);
}

size_t net_build_tcp_rst(const net_pkt *p, uint8_t *out, size_t cap)
{
    if (!pkt_ipv4(p) || p->proto != IPPROTO_TCP_ || !out || (p->tcp_flags & NET_TCP_RST))
        return 0;
    size_t total = NET_ETH_HLEN + 40;
    if (cap < total)
        return 0;
    uint32_t seq, ack;
    uint8_t flags;
    if (p->tcp_flags & NET_TCP_ACK) {
        seq = p->ack;
        ack = 0;
        flags = NET_TCP_RST;
    } else {
        /* SEG.SEQ + SEG.LEN: the payload, and one each for SYN and FIN. */
        seq = 0;
        ack = p->seq + (uint32_t)p->payload_len + !!(p->tcp_flags & NET_TCP_SYN) +
              !!(p->tcp_flags & NET_TCP_FIN);
        flags = NET_TCP_RST | NET_TCP_ACK;
    }
    net_endpoint from, to;
    reply_ends(p, &from, &to);
    put_eth_ip(&from, &to, out, 40, IPPROTO_TCP_);
    uint8_t *ip = out + NET_ETH_HLEN, *tcp = ip + 20;
    wr16(tcp, from.port);
    wr16(tcp + 2, to.port);
    wr32(tcp + 4, seq);
    wr32(tcp + 8, ack);
    tcp[12] = 5u << 4;
    tcp[13] = flags;
    wr16(tcp + 14, 0); /* window */
    wr16(tcp + 16, 0);
    wr16(tcp + 18, 0); /* urgent pointer */
    wr16(tcp + 16, csum_l4(ip, tcp, 20));
    return total;
}

/* RFC 1122 3.2.2: no ICMP error about an ICMP error, nor about a datagram to a broadcast or
 * multicast address or from an address that names no single host. */
static bool icmp_error_allowed(const net_pkt *p, const uint8_t *ippay, size_t paylen)
{
    uint8_t s[4], d[4];
    memcpy(s, &p->src, 4);
    memcpy(d, &p->dst, 4);
    if (d[0] >= 224 || s[0] >= 224 || s[0] == 0 || s[0] == 127)
        return false; /* multicast, 255.255.255.255 and class E; "this network"; loopback */
    if (p->proto == IPPROTO_ICMP_) {
        if (paylen < 1)
            return false;
        uint8_t t = ippay[0];
        if (t == 3 || t == 4 || t == 5 || t == 11 || t == 12)
            return false;
    }
    return true;
}

size_t net_build_icmp_unreach(const net_pkt *p, uint8_t code, uint8_t *out, size_t cap)
{
    if (!pkt_ipv4(p) || !out)
        return 0;
    const uint8_t *ip = p->frame + NET_ETH_HLEN;
    size_t total = rd16(ip + 2);
    if (total > p->len - NET_ETH_HLEN)
        total = p->len - NET_ETH_HLEN;
    if (total < p->ip_hlen)
        total = p->ip_hlen;
    size_t paylen = total - p->ip_hlen;
    if (!icmp_error_allowed(p, ip + p->ip_hlen, paylen))
        return 0;
    size_t qlen = p->ip_hlen + (paylen < 8 ? paylen : 8);
    size_t iplen = 20 + 8 + qlen;
    if (cap < NET_ETH_HLEN + iplen)
        return 0;
    uint8_t quote[60 + 8];
    net_endpoint from, to;
    reply_ends(p, &from, &to);
    memcpy(quote, ip, qlen); /* before out, which may be p's frame, is written */
    put_eth_ip(&from, &to, out, iplen, IPPROTO_ICMP_);
    uint8_t *icmp = out + NET_ETH_HLEN + 20;
    icmp[0] = 3; /* destination unreachable */
    icmp[1] = code;
    wr16(icmp + 2, 0);
    wr32(icmp + 4, 0);
    memcpy(icmp + 8, quote, qlen);
    wr16(icmp + 2, csum_fold(csum_add(0, icmp, 8 + qlen)));
    return NET_ETH_HLEN + iplen;
}

/* ---- TLS ---- */

#define TLS_CT_HANDSHAKE 22u
#define TLS_HS_CLIENT_HELLO 1u
#define TLS_RECORD_MAX 16384u /* a TLSPlaintext fragment (RFC 8446 5.1) */
#define TLS_EXT_SERVER_NAME 0x0000u
#define TLS_EXT_ECH 0xFE0Du

/* A cursor over the handshake bytes collected so far: avail of them are present, out of a
 * message whose declared end the parser bounds every read by. */
typedef struct {
    const uint8_t *b;
    size_t pos, avail;
} hs_reader;

/* Whether n bytes at the cursor lie within lim (else *v = HELLO_BAD) and are present (else
 * *v = HELLO_MORE: a consistent prefix). */
static bool hs_need(const hs_reader *r, size_t n, size_t lim, hello_verdict *v)
{
    if (lim < r->pos || n > lim - r->pos) {
        *v = HELLO_BAD;
        return false;
    }
    if (n > r->avail - r->pos) {
        *v = HELLO_MORE;
        return false;
    }
    return true;
}

/* A host_name as a lower-case DNS name into sni (sni_cap bytes): HELLO_OK or HELLO_BAD. */
static hello_verdict sni_copy(const uint8_t *name, size_t n, char *sni, size_t sni_cap)
{
    if (n == 0 || n > 253 || n + 1 > sni_cap)
        return HELLO_BAD;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c + ('a' - 'A'));
        if (c == '.') {
            if (label == 0)
                return HELLO_BAD;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
            if (++label > 63)
                return HELLO_BAD;
        } else {
            return HELLO_BAD;
        }
        sni[i] = (char)c;
    }
    if (label == 0) /* a trailing dot */
        return HELLO_BAD;
    sni[n] = '\0';
    return HELLO_OK;
}

/* The server_name extension's body (RFC 6066 3): a ServerNameList with at most one host_name. */
static hello_verdict sni_ext(const uint8_t *d, size_t n, char *sni, size_t sni_cap, bool *found)
{
    if (n < 2 || rd16(d) != n - 2 || n == 2)
        return HELLO_BAD;
    size_t off = 2;
    while (off < n) {
        if (n - off < 3)
            return HELLO_BAD;
        uint8_t type = d[off];
        size_t l = rd16(d + off + 1);
        off += 3;
        if (l > n - off)
            return HELLO_BAD;
        if (type == 0) {
            if (*found) /* two host names: which one would the server use? */
                return HELLO_BAD;
            if (sni_copy(d + off, l, sni, sni_cap) != HELLO_OK)
                return HELLO_BAD;
            *found = true;
        }
        off += l;
    }
    return HELLO_OK;
}

/* The ClientHello in hs (its 4-byte header included; avail bytes present out of end). */
static hello_verdict parse_client_hello(const uint8_t *hs, size_t avail, size_t end, char *sni,
                                        size_t sni_cap)
{
    hs_reader r = {.b = hs, .pos = 4, .avail = avail};
    hello_verdict v;
    if (!hs_need(&r, 2, end, &v))
        return v;
    if (hs[4] != 3) /* legacy_version 3.x */
        return HELLO_BAD;
    r.pos += 2;
    if (!hs_need(&r, 32 + 1, end, &v))
        return v;
    r.pos += 32;
    size_t sid = hs[r.pos++];
    if (sid > 32)
        return HELLO_BAD;
    if (!hs_need(&r, sid + 2, end, &v))
        return v;
    r.pos += sid;
    size_t cs = rd16(hs + r.pos);
    r.pos += 2;
    if (cs < 2 || cs % 2)
        return HELLO_BAD;
    if (!hs_need(&r, cs + 1, end, &v))
        return v;
    r.pos += cs;
    size_t comp = hs[r.pos++];
    if (comp < 1)
        return HELLO_BAD;
    if (!hs_need(&r, comp, end, &v))
        return v;
    r.pos += comp;
    if (r.pos == end) /* no extensions at all (and the whole message is here) */
        return HELLO_NO_SNI;
    if (!hs_need(&r, 2, end, &v))
        return v;
    size_t ext = rd16(hs + r.pos);
    r.pos += 2;
    if (ext != end - r.pos) /* the extensions end where the message does */
        return HELLO_BAD;
    bool ech = false, seen_sni = false, found = false;
    while (r.pos < end) {
        if (!hs_need(&r, 4, end, &v))
            return v;
        uint16_t type = rd16(hs + r.pos);
        size_t l = rd16(hs + r.pos + 2);
        r.pos += 4;
        if (!hs_need(&r, l, end, &v))
            return v;
        if (type == TLS_EXT_SERVER_NAME) {
            if (seen_sni) /* RFC 8446 4.2: one extension of a type */
                return HELLO_BAD;
            seen_sni = true;
            if (sni_ext(hs + r.pos, l, sni, sni_cap, &found) != HELLO_OK)
                return HELLO_BAD;
        } else if (type == TLS_EXT_ECH) {
            ech = true;
        }
        r.pos += l;
    }
    if (ech)
        return HELLO_ECH;
    return found ? HELLO_OK : HELLO_NO_SNI;
}

/* The verdict on buf. The ClientHello must end within the first TLS_HELLO_MAX bytes of the stream
 * (record headers included): HELLO_BAD as soon as it cannot, so that a verdict other than
 * HELLO_MORE, once given for a prefix, is the verdict for every longer one. */
static hello_verdict hello_verdict_of(const uint8_t *buf, size_t len, char *sni, size_t sni_cap)
{
    uint8_t hs[TLS_HELLO_MAX];
    size_t hn = 0, off = 0, want = 0; /* want: the whole message's length, once known */
    size_t taken = 0;                 /* handshake bytes in the records read (hn, unclamped) */
    size_t rem = 0; /* bytes of the last record still to come (0: at a record boundary) */
    for (bool first = true;; first = false) {
        if (hn >= 1 && hs[0] != TLS_HS_CLIENT_HELLO)
            return HELLO_BAD;
        if (hn >= 4 && want == 0) {
            want = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
            if (want > TLS_HELLO_MAX)
                return HELLO_BAD;
        }
        /* Whole, the hello ends at off - (taken - want) in the stream; else at the least at off
         * plus the rest, plus a record header if the current record cannot hold the rest. */
        if (want && hn >= want) {
            if (off - (taken - want) > TLS_HELLO_MAX)
                return HELLO_BAD;
            break;
        }
        if (want) {
            size_t need = want - hn;
            if (off + need + (need > rem ? 5 : 0) > TLS_HELLO_MAX)
                return HELLO_BAD;
        }
        if (off == len)
            break;
        /* A record header (or as much of it as is here). */
        size_t have = len - off;
        const uint8_t *rec = buf + off;
        if (rec[0] != TLS_CT_HANDSHAKE)
            return first ? HELLO_NOT_TLS : HELLO_BAD;
        if (have >= 2 && rec[1] != 3)
            return first ? HELLO_NOT_TLS : HELLO_BAD;
        if (have >= 3 && rec[2] > 0x04)
            return first ? HELLO_NOT_TLS : HELLO_BAD;
        if (have < 5) /* the fragments already here may still be judged */
            break;
        size_t rlen = rd16(rec + 3);
        if (rlen == 0 || rlen > TLS_RECORD_MAX)
            return HELLO_BAD;
        size_t take = have - 5 < rlen ? have - 5 : rlen;
        size_t copy = take < sizeof hs - hn ? take : sizeof hs - hn;
        memcpy(hs + hn, rec + 5, copy);
        hn += copy;
        taken += take;
        rem = rlen - take;
        off += 5 + take;
    }
    if (hn < 4)
        return HELLO_MORE;
    return parse_client_hello(hs, hn < want ? hn : want, want, sni, sni_cap);
}

hello_verdict tls_client_hello_sni(const uint8_t *buf, size_t len, char *sni, size_t sni_cap)
{
    if (sni && sni_cap > 0)
        sni[0] = '\0';
    if (!buf || len == 0)
        return HELLO_MORE;
    if (!sni)
        sni_cap = 0;
    char name[254];
    hello_verdict v = hello_verdict_of(buf, len, name, sizeof name);
    if (v == HELLO_MORE && len >= TLS_HELLO_MAX)
        return HELLO_BAD; /* cannot be (it could not end within TLS_HELLO_MAX); kept as a guard */
    if (v == HELLO_OK) {
        size_t n = strlen(name);
        if (n + 1 > sni_cap)
            return HELLO_BAD;
        memcpy(sni, name, n + 1);
    }
    return v;
}
