/* The guest's network bytes (vmworker/netparse.c): frames built by hand as a guest would send
 * them, DNS queries, the frames built towards the guest (checksums verified by recomputing them),
 * and TLS ClientHellos, two of them captured from openssl s_client on loopback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"
#include "netparse.h"

/* openssl s_client (OpenSSL 3.0) -servername example.com, its first flight as captured on loopback.
 */
static const uint8_t hello_sni[] = {
    0x16, 0x03, 0x01, 0x01, 0x38, 0x01, 0x00, 0x01, 0x34, 0x03, 0x03, 0x37, 0x9a, 0xaa, 0x53, 0x75,
    0xbc, 0xf9, 0x58, 0x66, 0x1e, 0xa7, 0x9f, 0x89, 0x34, 0x0b, 0x18, 0xd3, 0x65, 0x5c, 0x0f, 0xbb,
    0xbb, 0x08, 0x5f, 0x43, 0xdb, 0xa3, 0x5e, 0xda, 0xcc, 0x6f, 0xd8, 0x20, 0x14, 0xa6, 0x1d, 0x56,
    0x67, 0x6c, 0xf8, 0x66, 0xee, 0x59, 0xd0, 0x43, 0x71, 0x97, 0x02, 0x25, 0xec, 0xbf, 0xe4, 0x82,
    0x4f, 0x55, 0xff, 0x56, 0x20, 0x7f, 0x91, 0xdc, 0x83, 0x9e, 0xdf, 0x2d, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xad,
    0x00, 0x00, 0x00, 0x10, 0x00, 0x0e, 0x00, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65,
    0x2e, 0x63, 0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16,
    0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01,
    0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17,
    0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07,
    0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01,
    0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02,
    0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00,
    0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xca, 0x22, 0x7a,
    0x7d, 0x30, 0xc1, 0x6f, 0xd0, 0x13, 0x32, 0xbf, 0xac, 0x5b, 0x64, 0x6a, 0x86, 0x62, 0x4e, 0xe2,
    0x8c, 0x94, 0x2c, 0x7e, 0x2d, 0x1f, 0x0e, 0x3a, 0xfe, 0xea, 0x70, 0xf9, 0x7a,
};
/* openssl s_client (OpenSSL 3.0) -noservername, its first flight as captured on loopback. */
static const uint8_t hello_nosni[] = {
    0x16, 0x03, 0x01, 0x01, 0x24, 0x01, 0x00, 0x01, 0x20, 0x03, 0x03, 0xb0, 0xcf, 0xf0, 0xb5, 0xaa,
    0x2b, 0x0a, 0xd8, 0x9c, 0x0d, 0xf1, 0xfd, 0xec, 0xd9, 0xa1, 0xee, 0xf9, 0xb2, 0xa7, 0x9d, 0xba,
    0xe7, 0xb5, 0xfe, 0x28, 0x65, 0xdb, 0xf7, 0x70, 0x09, 0x51, 0xb6, 0x20, 0x50, 0x89, 0x11, 0x56,
    0x41, 0x41, 0xb9, 0x39, 0xc1, 0xdd, 0xac, 0x58, 0x8d, 0x90, 0x8d, 0x3c, 0xb2, 0xc7, 0x97, 0x47,
    0x71, 0x10, 0x27, 0xd5, 0x2a, 0x4f, 0x41, 0x52, 0x4d, 0xc5, 0xcf, 0x7c, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0x99,
    0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d,
    0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03,
    0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d,
    0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09,
    0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01,
    0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09,
    0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00,
    0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xc0, 0xac, 0x78, 0x94, 0x6d, 0x0d, 0xc4,
    0x12, 0x19, 0x81, 0x1e, 0x0f, 0x84, 0x7b, 0x11, 0x0b, 0x7c, 0x97, 0xf3, 0x2c, 0xf4, 0xdb, 0xc2,
    0x90, 0xfb, 0x23, 0x5c, 0xb2, 0x22, 0x7e, 0x7f, 0x79,
};

/* ---- helpers: frames as the guest sends them ---- */

static const uint8_t guest_mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
static const uint8_t gw_mac[6] = {0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};
static const uint8_t guest_ip[4] = {10, 0, 2, 15};
static const uint8_t dns_ip[4] = {10, 0, 2, 3};

static void put16(uint8_t *b, unsigned v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static void put32(uint8_t *b, uint32_t v)
{
    put16(b, v >> 16);
    put16(b + 2, v & 0xFFFFu);
}

static unsigned get16(const uint8_t *b)
{
    return (unsigned)b[0] << 8 | b[1];
}

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)get16(b) << 16 | get16(b + 2);
}

/* The one's complement sum (folded, not inverted) of n bytes, added to s. */
static uint32_t ocsum(uint32_t s, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s += i % 2 ? b[i] : (uint32_t)b[i] << 8;
    while (s >> 16)
        s = (s & 0xFFFFu) + (s >> 16);
    return s;
}

/* An ethernet + IPv4 frame from the guest to dst carrying seg (seglen bytes) as protocol proto,
 * with opt_words 32-bit words of IP options. Returns the frame's length. */
static size_t ipv4_frame(uint8_t *f, const uint8_t dst[4], uint8_t proto, const uint8_t *seg,
                         size_t seglen, unsigned opt_words)
{
    memcpy(f, gw_mac, 6);
    memcpy(f + 6, guest_mac, 6);
    put16(f + 12, 0x0800);
    uint8_t *ip = f + 14;
    size_t hl = 20 + 4 * opt_words;
    memset(ip, 0, hl);
    ip[0] = (uint8_t)(0x40 | (hl / 4));
    put16(ip + 2, (unsigned)(hl + seglen));
    put16(ip + 4, 0x1234);
    put16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, guest_ip, 4);
    memcpy(ip + 16, dst, 4);
    for (size_t i = 20; i < hl; i++)
        ip[i] = 1; /* NOP options */
    put16(ip + 10, ~ocsum(0, ip, hl) & 0xFFFFu);
    memcpy(ip + hl, seg, seglen);
    return 14 + hl + seglen;
}

static size_t udp_frame(uint8_t *f, const uint8_t dst[4], unsigned sport, unsigned dport,
                        const uint8_t *pay, size_t n)
{
    uint8_t seg[2048];
    put16(seg, sport);
    put16(seg + 2, dport);
    put16(seg + 4, (unsigned)(8 + n));
    put16(seg + 6, 0); /* no checksum: offloaded, or absent */
    if (n)
        memcpy(seg + 8, pay, n);
    return ipv4_frame(f, dst, 17, seg, 8 + n, 0);
}

static size_t tcp_frame(uint8_t *f, const uint8_t dst[4], uint8_t flags, uint32_t seq, uint32_t ack,
                        const uint8_t *pay, size_t n, unsigned opt_words)
{
    uint8_t seg[2048];
    size_t hl = 20 + 4 * opt_words;
    memset(seg, 0, hl);
    put16(seg, 40000);
    put16(seg + 2, 443);
    put32(seg + 4, seq);
    put32(seg + 8, ack);
    seg[12] = (uint8_t)((hl / 4) << 4);
    seg[13] = flags;
    put16(seg + 14, 64240);
    for (size_t i = 20; i < hl; i++)
        seg[i] = 1;
    if (n)
        memcpy(seg + hl, pay, n);
    return ipv4_frame(f, dst, 6, seg, hl + n, 0);
}

/* The IP header's checksum and the TCP/UDP checksum over the pseudo-header check out. */
static void assert_checksums(const uint8_t *f, size_t len)
{
    const uint8_t *ip = f + 14;
    size_t hl = (ip[0] & 15u) * 4;
    size_t total = get16(ip + 2);
    assert_true(total + 14 <= len);
    assert_int_equal(ocsum(0, ip, hl), 0xFFFF);
    if (ip[9] == 6 || ip[9] == 17) {
        uint32_t s = ocsum(0, ip + 12, 8);
        s += ip[9];
        s += (uint32_t)(total - hl);
        assert_int_equal(ocsum(s, ip + hl, total - hl), 0xFFFF);
    } else if (ip[9] == 1) {
        assert_int_equal(ocsum(0, ip + hl, total - hl), 0xFFFF);
    }
}

/* ---- net_parse_frame ---- */

static void test_parse_udp(void **state)
{
    uint8_t f[256], pay[5] = {1, 2, 3, 4, 5};
    size_t n = udp_frame(f, dns_ip, 33333, 53, pay, sizeof pay);
    /* Padded to the ethernet minimum: the IP total length bounds the packet. */
    memset(f + n, 0xEE, 60 - n);
    net_pkt p;
    assert_int_equal(net_parse_frame(f, 60, &p), PKT_UDP);
    assert_int_equal(p.ethertype, 0x0800);
    assert_memory_equal(&p.src, guest_ip, 4);
    assert_memory_equal(&p.dst, dns_ip, 4);
    assert_int_equal(p.proto, 17);
    assert_int_equal(p.ip_hlen, 20);
    assert_int_equal(p.sport, 33333);
    assert_int_equal(p.dport, 53);
    assert_int_equal(p.payload_len, 5);
    assert_ptr_equal(p.payload, f + 14 + 20 + 8);
    assert_ptr_equal(p.frame, f);
    assert_int_equal(p.len, 60);
}

static void test_parse_tcp(void **state)
{
    uint8_t f[256];
    const uint8_t pay[] = "hello";
    /* A SYN with 20 bytes of options (as Linux sends: MSS, SACK, timestamps, window scale). */
    size_t n = tcp_frame(f, dns_ip, NET_TCP_SYN, 1000, 0, NULL, 0, 5);
    net_pkt p;
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    assert_int_equal(p.sport, 40000);
    assert_int_equal(p.dport, 443);
    assert_int_equal(p.seq, 1000);
    assert_int_equal(p.tcp_flags, NET_TCP_SYN);
    assert_int_equal(p.payload_len, 0);

    n = tcp_frame(f, dns_ip, NET_TCP_ACK | NET_TCP_PSH, 7, 0xDEADBEEF, pay, 5, 3);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    assert_int_equal(p.ack, 0xDEADBEEF);
    assert_int_equal(p.tcp_flags, NET_TCP_ACK | NET_TCP_PSH);
    assert_int_equal(p.payload_len, 5);
    assert_memory_equal(p.payload, "hello", 5);
}

static void test_parse_ip_options(void **state)
{
    uint8_t f[256], seg[8 + 3] = {0x12, 0x34, 0x00, 0x35, 0x00, 11, 0, 0, 'a', 'b', 'c'};
    size_t n = ipv4_frame(f, dns_ip, 17, seg, sizeof seg, 2);
    net_pkt p;
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    assert_int_equal(p.ip_hlen, 28);
    assert_int_equal(p.sport, 0x1234);
    assert_int_equal(p.payload_len, 3);
    assert_memory_equal(p.payload, "abc", 3);
}

static void test_parse_kinds(void **state)
{
    uint8_t f[256], icmp[8] = {8, 0, 0, 0, 0, 1, 0, 1};
    net_pkt p;
    size_t n = ipv4_frame(f, dns_ip, 1, icmp, sizeof icmp, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_IPV4_OTHER);
    assert_int_equal(p.proto, 1);
    assert_int_equal(p.payload_len, 8);

    put16(f + 12, 0x86DD);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_IPV6);
    put16(f + 12, 0x0806); /* ARP */
    assert_int_equal(net_parse_frame(f, 42, &p), PKT_OTHER);
    assert_int_equal(p.ethertype, 0x0806);
    assert_int_equal(net_parse_frame(f, 14, &p), PKT_OTHER);
    assert_int_equal(net_parse_frame(f, 13, &p), PKT_BAD);
    assert_int_equal(net_parse_frame(f, 0, &p), PKT_BAD);
}

static void test_parse_fragments(void **state)
{
    uint8_t f[256], pay[4] = {0};
    size_t n = udp_frame(f, dns_ip, 1, 53, pay, sizeof pay);
    net_pkt p;
    put16(f + 14 + 6, 0x2000); /* MF, offset 0: the first fragment */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_FRAGMENT);
    put16(f + 14 + 6, 0x0010); /* a later, last fragment */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_FRAGMENT);
    put16(f + 14 + 6, 0x4000); /* DF alone: whole */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    put16(f + 14 + 6, 0x0000);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
}

static void test_parse_bad_ip(void **state)
{
    uint8_t f[256], g[256], pay[4] = {0};
    size_t n = udp_frame(f, dns_ip, 1, 53, pay, sizeof pay);
    net_pkt p;
    for (size_t len = 14; len < n; len++) /* every truncation */
        assert_int_equal(net_parse_frame(f, len, &p), PKT_BAD);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);

    memcpy(g, f, n);
    g[14] = 0x44; /* IHL 4 */
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
    g[14] = 0x65; /* version 6 in an IPv4 frame */
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
    g[14] = 0x4F; /* 60-byte header in a 32-byte packet */
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
    memcpy(g, f, n);
    put16(g + 14 + 2, (unsigned)(n - 14 + 1)); /* total length past the frame */
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
    put16(g + 14 + 2, 19); /* shorter than its header */
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
    put16(g + 14 + 2, 0xFFFF);
    assert_int_equal(net_parse_frame(g, n, &p), PKT_BAD);
}

static void test_parse_bad_udp(void **state)
{
    uint8_t f[256], pay[4] = {0};
    size_t n = udp_frame(f, dns_ip, 1, 53, pay, sizeof pay);
    net_pkt p;
    uint8_t *ulen = f + 14 + 20 + 4;
    put16(ulen, 7);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
    put16(ulen, 13); /* one past the IP payload */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
    put16(ulen, 8); /* shorter than the IP payload: the UDP length wins */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    assert_int_equal(p.payload_len, 0);
    /* An IP payload too short for a UDP header. */
    uint8_t seg[7] = {0};
    n = ipv4_frame(f, dns_ip, 17, seg, sizeof seg, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
}

static void test_parse_bad_tcp(void **state)
{
    uint8_t f[256];
    net_pkt p;
    size_t n = tcp_frame(f, dns_ip, NET_TCP_SYN, 1, 0, NULL, 0, 0);
    uint8_t *doff = f + 14 + 20 + 12;
    *doff = 4 << 4;
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
    *doff = 6 << 4; /* 24 bytes in a 20-byte segment */
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
    *doff = 5 << 4;
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    uint8_t seg[19] = {0};
    n = ipv4_frame(f, dns_ip, 6, seg, sizeof seg, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_BAD);
}

/* ---- DNS ---- */

/* A query for name (dot-separated; each label written as is) of type qtype; ar additional
 * records (an EDNS OPT each). */
static size_t dns_query_msg(uint8_t *m, uint16_t id, const char *name, unsigned qtype, int ar)
{
    memset(m, 0, 12);
    put16(m, id);
    put16(m + 2, 0x0100); /* RD */
    put16(m + 4, 1);
    put16(m + 10, (unsigned)ar);
    size_t off = 12;
    const char *s = name;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        m[off++] = (uint8_t)l;
        memcpy(m + off, s, l);
        off += l;
        s += l + (dot ? 1 : 0);
    }
    m[off++] = 0;
    put16(m + off, qtype);
    put16(m + off + 2, 1);
    off += 4;
    for (int i = 0; i < ar; i++) {
        static const uint8_t opt[] = {0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0};
        memcpy(m + off, opt, sizeof opt);
        off += sizeof opt;
    }
    return off;
}

static void test_dns_parse(void **state)
{
    uint8_t m[600];
    dns_query q;
    size_t n = dns_query_msg(m, 0xBEEF, "WWW.Example.com", DNS_TYPE_A, 1);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    assert_int_equal(q.id, 0xBEEF);
    assert_true(q.rd);
    assert_string_equal(q.name, "www.example.com");
    assert_int_equal(q.qtype, DNS_TYPE_A);
    assert_int_equal(q.qclass, DNS_CLASS_IN);
    assert_int_equal(q.question_len, 17 + 4);

    n = dns_query_msg(m, 7, "_acme-challenge.x-1.io", DNS_TYPE_AAAA, 0);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    assert_string_equal(q.name, "_acme-challenge.x-1.io");
    assert_int_equal(q.qtype, DNS_TYPE_AAAA);

    n = dns_query_msg(m, 7, "", 2, 0); /* the root's NS */
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    assert_string_equal(q.name, "");
    assert_int_equal(q.question_len, 5);

    /* Every truncation of a good query is refused. */
    n = dns_query_msg(m, 7, "example.com", DNS_TYPE_A, 0);
    for (size_t len = 0; len < n; len++)
        assert_int_equal(dns_parse_query(m, len, &q), -1);
}

static void test_dns_refused(void **state)
{
    uint8_t m[600];
    dns_query q;
    size_t n = dns_query_msg(m, 7, "example.com", DNS_TYPE_A, 0);
    uint8_t g[600];
#define MUTATE(off, val)                                                                           \
    do {                                                                                           \
        memcpy(g, m, n);                                                                           \
        g[off] = (val);                                                                            \
        assert_int_equal(dns_parse_query(g, n, &q), -1);                                           \
    } while (0)
    MUTATE(2, 0x81);      /* QR: a response */
    MUTATE(2, 0x01 | 8);  /* opcode 1 (IQUERY) */
    MUTATE(2, 0x01 | 40); /* opcode 5 (UPDATE) */
    MUTATE(5, 2);         /* QDCOUNT 2 */
    MUTATE(5, 0);         /* QDCOUNT 0 */
    MUTATE(7, 1);         /* an answer in a query */
    MUTATE(9, 1);         /* an authority record */
    MUTATE(13, 'e' | 0x80);
    MUTATE(13, ' ');
    MUTATE(13, '.');
    MUTATE(13, '*');
    MUTATE(13, 0);
    MUTATE(12, 0x40); /* extended label type */
#undef MUTATE

    /* A compression pointer in the question: refused. */
    memcpy(g, m, 12);
    const uint8_t ptr_name[] = {3, 'w', 'w', 'w', 0xC0, 12, 0, 1, 0, 1};
    memcpy(g + 12, ptr_name, sizeof ptr_name);
    assert_int_equal(dns_parse_query(g, 12 + sizeof ptr_name, &q), -1);

    /* Labels: 63 bytes fine, 64 refused. */
    char name[400];
    memset(name, 'a', 63);
    strcpy(name + 63, ".com");
    n = dns_query_msg(m, 1, name, DNS_TYPE_A, 0);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    memset(name, 'a', 64);
    strcpy(name + 64, ".com");
    n = dns_query_msg(m, 1, name, DNS_TYPE_A, 0);
    assert_int_equal(dns_parse_query(m, n, &q), -1);

    /* Names: 253 characters fine, 254 refused. */
    memset(name, 0, sizeof name);
    for (int i = 0; i < 4; i++) {
        memset(name + 64 * i, 'b', 63);
        name[64 * i + 63] = '.';
    }
    name[64 * 3 + 63] = '\0'; /* four labels of 63: 255 characters */
    name[64 * 3 + 61] = '\0'; /* ... cut to 253 */
    n = dns_query_msg(m, 1, name, DNS_TYPE_A, 0);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    assert_int_equal(strlen(q.name), 253);
    name[64 * 3 + 61] = 'b';
    name[64 * 3 + 62] = '\0'; /* 254 */
    n = dns_query_msg(m, 1, name, DNS_TYPE_A, 0);
    assert_int_equal(dns_parse_query(m, n, &q), -1);
}

static void test_dns_answer(void **state)
{
    uint8_t m[600], out[600];
    dns_query q;
    size_t n = dns_query_msg(m, 0x1234, "Example.com", DNS_TYPE_A, 1);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    const uint8_t a1[4] = {93, 184, 215, 14}, a2[4] = {10, 0, 0, 1};
    uint32_t addrs[2];
    memcpy(&addrs[0], a1, 4);
    memcpy(&addrs[1], a2, 4);
    size_t len = dns_build_answer(&q, DNS_RCODE_OK, addrs, 2, 300, out, sizeof out);
    assert_int_equal(len, 12 + q.question_len + 2 * 16);
    assert_int_equal(get16(out), 0x1234);
    assert_int_equal(get16(out + 2), 0x8180); /* QR, RD, RA, rcode 0 */
    assert_int_equal(get16(out + 4), 1);
    assert_int_equal(get16(out + 6), 2);
    assert_int_equal(get16(out + 8), 0);
    assert_int_equal(get16(out + 10), 0);
    /* The question as lower-cased, otherwise as asked. */
    assert_int_equal(out[12], 7);
    assert_memory_equal(out + 13, "example", 7);
    assert_memory_equal(out + 13 + 7, m + 13 + 7, q.question_len - 1 - 7);
    const uint8_t *rr = out + 12 + q.question_len;
    for (int i = 0; i < 2; i++, rr += 16) {
        assert_int_equal(get16(rr), 0xC00C);
        assert_int_equal(get16(rr + 2), DNS_TYPE_A);
        assert_int_equal(get16(rr + 4), DNS_CLASS_IN);
        assert_int_equal(get32(rr + 6), 300);
        assert_int_equal(get16(rr + 10), 4);
        assert_memory_equal(rr + 12, i ? a2 : a1, 4);
    }
    /* Exactly enough room, and one byte less. */
    assert_int_equal(dns_build_answer(&q, DNS_RCODE_OK, addrs, 2, 300, out, len), len);
    assert_int_equal(dns_build_answer(&q, DNS_RCODE_OK, addrs, 2, 300, out, len - 1), 0);
    assert_int_equal(dns_build_answer(&q, DNS_RCODE_OK, addrs, 2, 300, out, 11), 0);

    /* NODATA: rcode 0, no records; also for AAAA whatever addresses are passed. */
    len = dns_build_answer(&q, DNS_RCODE_OK, NULL, 0, 300, out, sizeof out);
    assert_int_equal(len, 12 + q.question_len);
    assert_int_equal(get16(out + 2), 0x8180);
    assert_int_equal(get16(out + 6), 0);
    n = dns_query_msg(m, 9, "example.com", DNS_TYPE_AAAA, 0);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    len = dns_build_answer(&q, DNS_RCODE_OK, addrs, 2, 300, out, sizeof out);
    assert_int_equal(len, n);
    assert_int_equal(get16(out + 6), 0);
    assert_memory_equal(out + 12, m + 12, q.question_len);

    /* NXDOMAIN, without RD when the query had none. */
    m[2] = 0;
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    assert_false(q.rd);
    len = dns_build_answer(&q, DNS_RCODE_NXDOMAIN, addrs, 2, 300, out, sizeof out);
    assert_int_equal(len, n);
    assert_int_equal(get16(out + 2), 0x8083);
    assert_int_equal(get16(out + 6), 0);
}

static void test_dns_answer_cap_512(void **state)
{
    uint8_t m[600], out[4096];
    dns_query q;
    size_t n = dns_query_msg(m, 1, "many.example.com", DNS_TYPE_A, 0);
    assert_int_equal(dns_parse_query(m, n, &q), 0);
    uint32_t addrs[100];
    for (uint32_t i = 0; i < 100; i++)
        addrs[i] = i;
    size_t len = dns_build_answer(&q, DNS_RCODE_OK, addrs, 100, 60, out, sizeof out);
    size_t fit = (512 - 12 - q.question_len) / 16;
    assert_int_equal(get16(out + 6), fit);
    assert_int_equal(len, 12 + q.question_len + 16 * fit);
    assert_true(len <= 512);
}

static void test_dns_formerr(void **state)
{
    uint8_t m[600], out[64];
    dns_query q;
    size_t n = dns_query_msg(m, 0xABCD, "example.com", DNS_TYPE_A, 0);
    m[12] = 0xC0; /* a pointer: the caller answers FORMERR with the id it read */
    assert_int_equal(dns_parse_query(m, n, &q), -1);
    size_t len = dns_build_error((uint16_t)get16(m), DNS_RCODE_FORMERR, out, sizeof out);
    assert_int_equal(len, 12);
    assert_int_equal(get16(out), 0xABCD);
    assert_int_equal(get16(out + 2) & 0x800F, 0x8001);
    for (int i = 4; i < 12; i++)
        assert_int_equal(out[i], 0);
    assert_int_equal(dns_build_error(1, DNS_RCODE_SERVFAIL, out, 11), 0);
}

/* ---- frames towards the guest ---- */

static void test_udp_reply(void **state)
{
    uint8_t m[600], f[1024], out[1024], ans[600];
    dns_query q;
    size_t mn = dns_query_msg(m, 0x4242, "example.com", DNS_TYPE_A, 0);
    size_t fn = udp_frame(f, dns_ip, 45678, 53, m, mn);
    net_pkt p;
    assert_int_equal(net_parse_frame(f, fn, &p), PKT_UDP);
    assert_int_equal(dns_parse_query(p.payload, p.payload_len, &q), 0);
    uint32_t addr = 0x0100007F;
    size_t an = dns_build_answer(&q, DNS_RCODE_OK, &addr, 1, 5, ans, sizeof ans);
    assert_true(an > 0);
    for (size_t odd = 0; odd < 2; odd++) { /* an even and an odd length */
        size_t len = net_build_udp_reply(&p, ans, an - odd, out, sizeof out);
        assert_int_equal(len, 14 + 20 + 8 + an - odd);
        assert_memory_equal(out, guest_mac, 6);
        assert_memory_equal(out + 6, gw_mac, 6);
        assert_int_equal(get16(out + 12), 0x0800);
        assert_int_equal(out[14], 0x45);
        assert_int_equal(out[14 + 8], 64);
        assert_memory_equal(out + 14 + 12, dns_ip, 4);
        assert_memory_equal(out + 14 + 16, guest_ip, 4);
        assert_checksums(out, len);
        net_pkt r;
        assert_int_equal(net_parse_frame(out, len, &r), PKT_UDP);
        assert_int_equal(r.sport, 53);
        assert_int_equal(r.dport, 45678);
        assert_int_equal(r.payload_len, an - odd);
        assert_memory_equal(r.payload, ans, an - odd);
        assert_int_equal(net_build_udp_reply(&p, ans, an - odd, out, len - 1), 0);
    }
    /* Not a UDP packet: nothing. */
    size_t tn = tcp_frame(f, dns_ip, NET_TCP_SYN, 1, 0, NULL, 0, 0);
    assert_int_equal(net_parse_frame(f, tn, &p), PKT_TCP);
    assert_int_equal(net_build_udp_reply(&p, ans, an, out, sizeof out), 0);
}

static void test_tcp_rst(void **state)
{
    uint8_t f[256], out[256];
    net_pkt p, r;
    /* A refused SYN: RST|ACK, ack = seq + 1. */
    size_t n = tcp_frame(f, dns_ip, NET_TCP_SYN, 0x11223344, 0, NULL, 0, 5);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    size_t len = net_build_tcp_rst(&p, out, sizeof out);
    assert_int_equal(len, 54);
    assert_checksums(out, len);
    assert_int_equal(net_parse_frame(out, len, &r), PKT_TCP);
    assert_int_equal(r.tcp_flags, NET_TCP_RST | NET_TCP_ACK);
    assert_int_equal(r.seq, 0);
    assert_int_equal(r.ack, 0x11223345);
    assert_int_equal(r.sport, 443);
    assert_int_equal(r.dport, 40000);
    assert_memory_equal(&r.src, dns_ip, 4);
    assert_memory_equal(&r.dst, guest_ip, 4);
    assert_memory_equal(out, guest_mac, 6);
    assert_int_equal(out[14 + 8], 64);
    assert_int_equal(net_build_tcp_rst(&p, out, 53), 0);

    /* The sequence space wraps. */
    n = tcp_frame(f, dns_ip, NET_TCP_SYN, 0xFFFFFFFF, 0, NULL, 0, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    len = net_build_tcp_rst(&p, out, sizeof out);
    assert_int_equal(net_parse_frame(out, len, &r), PKT_TCP);
    assert_int_equal(r.ack, 0);

    /* A segment with ACK: RST with seq = its ack, no ACK. */
    n = tcp_frame(f, dns_ip, NET_TCP_ACK | NET_TCP_PSH, 500, 0xCAFEF00D, (const uint8_t *)"data", 4,
                  0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    len = net_build_tcp_rst(&p, out, sizeof out);
    assert_checksums(out, len);
    assert_int_equal(net_parse_frame(out, len, &r), PKT_TCP);
    assert_int_equal(r.tcp_flags, NET_TCP_RST);
    assert_int_equal(r.seq, 0xCAFEF00D);

    /* Without ACK, with data and FIN: ack = seq + data + 1. */
    n = tcp_frame(f, dns_ip, NET_TCP_FIN, 500, 0, (const uint8_t *)"data", 4, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    len = net_build_tcp_rst(&p, out, sizeof out);
    assert_int_equal(net_parse_frame(out, len, &r), PKT_TCP);
    assert_int_equal(r.ack, 505);

    /* Never a reset for a reset. */
    n = tcp_frame(f, dns_ip, NET_TCP_RST | NET_TCP_ACK, 1, 2, NULL, 0, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    assert_int_equal(net_build_tcp_rst(&p, out, sizeof out), 0);

    /* Built over the guest's own frame. */
    n = tcp_frame(f, dns_ip, NET_TCP_SYN, 41, 0, NULL, 0, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_TCP);
    len = net_build_tcp_rst(&p, f, sizeof f);
    assert_int_equal(len, 54);
    assert_checksums(f, len);
    assert_memory_equal(f, guest_mac, 6);
    assert_memory_equal(f + 6, gw_mac, 6);
    assert_int_equal(net_parse_frame(f, len, &r), PKT_TCP);
    assert_int_equal(r.ack, 42);
}

static void test_icmp_unreach(void **state)
{
    uint8_t f[256], out[256], pay[32];
    net_pkt p;
    for (size_t i = 0; i < sizeof pay; i++)
        pay[i] = (uint8_t)i;
    const uint8_t far[4] = {1, 1, 1, 1};
    size_t n = udp_frame(f, far, 5353, 9999, pay, sizeof pay);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    size_t len = net_build_icmp_unreach(&p, 3, out, sizeof out);
    assert_int_equal(len, 14 + 20 + 8 + 20 + 8);
    assert_checksums(out, len);
    net_pkt r;
    assert_int_equal(net_parse_frame(out, len, &r), PKT_IPV4_OTHER);
    assert_int_equal(r.proto, 1);
    assert_memory_equal(&r.src, far, 4);
    assert_memory_equal(&r.dst, guest_ip, 4);
    assert_int_equal(r.payload[0], 3);
    assert_int_equal(r.payload[1], 3);
    assert_memory_equal(r.payload + 8, f + 14, 28); /* the IP header and the UDP header */
    assert_int_equal(net_build_icmp_unreach(&p, 13, out, len - 1), 0);
    len = net_build_icmp_unreach(&p, 13, out, len);
    assert_int_equal(out[14 + 20 + 1], 13);
    assert_checksums(out, len);

    /* IP options are quoted too, and a payload under 8 bytes is quoted whole. */
    uint8_t seg[8] = {0x10, 0x00, 0x00, 0x35, 0x00, 0x08, 0, 0};
    n = ipv4_frame(f, far, 17, seg, 8, 1);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    len = net_build_icmp_unreach(&p, 3, out, sizeof out);
    assert_int_equal(len, 14 + 20 + 8 + 24 + 8);
    assert_memory_equal(out + 14 + 28, f + 14, 32);
    assert_checksums(out, len);
    uint8_t tiny[4] = {8, 0, 0, 0};
    n = ipv4_frame(f, far, 99, tiny, 4, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_IPV4_OTHER);
    len = net_build_icmp_unreach(&p, 3, out, sizeof out);
    assert_int_equal(len, 14 + 20 + 8 + 20 + 4);
    assert_checksums(out, len);

    /* None about a broadcast or multicast, nor about an ICMP error. */
    const uint8_t bcast[4] = {255, 255, 255, 255}, mcast[4] = {224, 0, 0, 251};
    n = udp_frame(f, bcast, 68, 67, pay, 8);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    assert_int_equal(net_build_icmp_unreach(&p, 3, out, sizeof out), 0);
    n = udp_frame(f, mcast, 5353, 5353, pay, 8);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_UDP);
    assert_int_equal(net_build_icmp_unreach(&p, 3, out, sizeof out), 0);
    uint8_t err[8] = {3, 3, 0, 0, 0, 0, 0, 0};
    n = ipv4_frame(f, far, 1, err, 8, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_IPV4_OTHER);
    assert_int_equal(net_build_icmp_unreach(&p, 3, out, sizeof out), 0);
    err[0] = 8; /* an echo request is not an error */
    n = ipv4_frame(f, far, 1, err, 8, 0);
    assert_int_equal(net_parse_frame(f, n, &p), PKT_IPV4_OTHER);
    assert_true(net_build_icmp_unreach(&p, 3, out, sizeof out) > 0);
}

static void test_builders_refuse_unparsed(void **state)
{
    uint8_t out[256], f[64] = {0};
    net_pkt p;
    memset(&p, 0, sizeof p);
    assert_int_equal(net_build_udp_reply(&p, NULL, 0, out, sizeof out), 0);
    assert_int_equal(net_build_tcp_rst(&p, out, sizeof out), 0);
    assert_int_equal(net_build_icmp_unreach(&p, 3, out, sizeof out), 0);
    put16(f + 12, 0x0806);
    assert_int_equal(net_parse_frame(f, sizeof f, &p), PKT_OTHER);
    assert_int_equal(net_build_icmp_unreach(&p, 3, out, sizeof out), 0);
}

/* ---- TLS ---- */

/* hs (n bytes of handshake messages) as TLS records of at most rec bytes each. */
static size_t records(uint8_t *out, const uint8_t *hs, size_t n, size_t rec)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += rec) {
        size_t l = n - i < rec ? n - i : rec;
        out[o] = 22;
        out[o + 1] = 3;
        out[o + 2] = 1;
        put16(out + o + 3, (unsigned)l);
        memcpy(out + o + 5, hs + i, l);
        o += 5 + l;
    }
    return o;
}

/* A ClientHello handshake message with the given extensions block (ext bytes). */
static size_t client_hello(uint8_t *hs, const uint8_t *ext, size_t extn)
{
    size_t o = 4;
    hs[o++] = 3;
    hs[o++] = 3;
    memset(hs + o, 0x5A, 32);
    o += 32;
    hs[o++] = 32;
    memset(hs + o, 0xA5, 32);
    o += 32;
    const uint8_t cs[] = {0, 4, 0x13, 0x01, 0x13, 0x02, 1, 0};
    memcpy(hs + o, cs, sizeof cs);
    o += sizeof cs;
    put16(hs + o, (unsigned)extn);
    if (extn)
        memcpy(hs + o + 2, ext, extn);
    o += 2 + extn;
    hs[0] = 1;
    hs[1] = 0;
    put16(hs + 2, (unsigned)(o - 4));
    return o;
}

/* A server_name extension naming name. */
static size_t ext_sni(uint8_t *e, const char *name)
{
    size_t l = strlen(name);
    put16(e, 0);
    put16(e + 2, (unsigned)(l + 5));
    put16(e + 4, (unsigned)(l + 3));
    e[6] = 0;
    put16(e + 7, (unsigned)l);
    memcpy(e + 9, name, l);
    return 9 + l;
}

static size_t ext_raw(uint8_t *e, unsigned type, const uint8_t *d, size_t n)
{
    put16(e, type);
    put16(e + 2, (unsigned)n);
    if (n)
        memcpy(e + 4, d, n);
    return 4 + n;
}

/* Every proper prefix of buf is HELLO_MORE, the whole is want. */
static void assert_prefixes_more(const uint8_t *buf, size_t n, hello_verdict want,
                                 const char *sni_want)
{
    char sni[256];
    for (size_t i = 0; i < n; i++) {
        hello_verdict v = tls_client_hello_sni(buf, i, sni, sizeof sni);
        if (v != HELLO_MORE)
            fail_msg("prefix %zu of %zu: verdict %d", i, n, v);
    }
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), want);
    if (sni_want)
        assert_string_equal(sni, sni_want);
}

static void test_tls_captured(void **state)
{
    char sni[256];
    assert_prefixes_more(hello_sni, sizeof hello_sni, HELLO_OK, "example.com");
    assert_prefixes_more(hello_nosni, sizeof hello_nosni, HELLO_NO_SNI, NULL);

    /* What follows the hello on the connection does not matter. */
    uint8_t buf[1024];
    memcpy(buf, hello_sni, sizeof hello_sni);
    memcpy(buf + sizeof hello_sni, "\x14\x03\x03\x00\x01\x01\x17\x03\x03", 9);
    assert_int_equal(tls_client_hello_sni(buf, sizeof hello_sni + 9, sni, sizeof sni), HELLO_OK);
    assert_string_equal(sni, "example.com");

    /* A buffer too small for the name. */
    assert_int_equal(tls_client_hello_sni(hello_sni, sizeof hello_sni, sni, 11), HELLO_BAD);
    assert_int_equal(tls_client_hello_sni(hello_sni, sizeof hello_sni, sni, 12), HELLO_OK);
}

static void test_tls_fragmented(void **state)
{
    /* The captured hello re-cut into records of 1, 2, 7 and 100 bytes. */
    static uint8_t buf[6 * sizeof hello_sni];
    const size_t sizes[] = {1, 2, 7, 100};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        size_t n = records(buf, hello_sni + 5, sizeof hello_sni - 5, sizes[i]);
        assert_prefixes_more(buf, n, HELLO_OK, "example.com");
    }
    /* An alert record between two fragments of the hello. */
    size_t n = records(buf, hello_sni + 5, 100, 100);
    memcpy(buf + n, "\x15\x03\x03\x00\x02\x02\x28", 7);
    n += 7;
    n += records(buf + n, hello_sni + 5 + 100, sizeof hello_sni - 5 - 100, 1000);
    char sni[256];
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
}

static void test_tls_ech(void **state)
{
    uint8_t ext[600], hs[1024], buf[1200];
    const uint8_t ech[] = {0, 0, 1, 0, 1, 0x42, 0, 0, 0, 0};
    char sni[256];
    /* SNI (the public name) and ECH, either order. */
    size_t e = ext_sni(ext, "public.example.net");
    e += ext_raw(ext + e, 0xfe0d, ech, sizeof ech);
    size_t n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_prefixes_more(buf, n, HELLO_ECH, NULL);
    e = ext_raw(ext, 0xfe0d, ech, sizeof ech);
    e += ext_sni(ext + e, "public.example.net");
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_ECH);
    assert_string_equal(sni, "");
    /* ECH alone. */
    e = ext_raw(ext, 0xfe0d, ech, sizeof ech);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_ECH);
}

static void test_tls_not_tls(void **state)
{
    char sni[256];
    const char *http = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_int_equal(tls_client_hello_sni((const uint8_t *)http, strlen(http), sni, sizeof sni),
                     HELLO_NOT_TLS);
    assert_int_equal(tls_client_hello_sni((const uint8_t *)http, 1, sni, sizeof sni),
                     HELLO_NOT_TLS);
    assert_int_equal(tls_client_hello_sni((const uint8_t *)"SSH-2.0-", 8, sni, sizeof sni),
                     HELLO_NOT_TLS);
    /* SSLv2-style hello, and a handshake-typed first byte with a version that is not TLS. */
    assert_int_equal(tls_client_hello_sni((const uint8_t *)"\x80\x2e\x01\x03\x01", 5, sni, 256),
                     HELLO_NOT_TLS);
    assert_int_equal(tls_client_hello_sni((const uint8_t *)"\x16\x04", 2, sni, sizeof sni),
                     HELLO_NOT_TLS);
    assert_int_equal(tls_client_hello_sni((const uint8_t *)"\x16\x03\x09", 3, sni, sizeof sni),
                     HELLO_NOT_TLS);
    assert_int_equal(tls_client_hello_sni((const uint8_t *)"\x16", 1, sni, sizeof sni), HELLO_MORE);
    assert_int_equal(tls_client_hello_sni(NULL, 0, sni, sizeof sni), HELLO_MORE);
}

/* buf with byte off set to val: HELLO_BAD from the prefix of from bytes on (the first that holds
 * what shows the inconsistency), HELLO_MORE before, where the byte is present. */
static void assert_bad_from(const uint8_t *buf, size_t n, size_t off, uint8_t val, size_t from)
{
    static uint8_t g[20000];
    char sni[256];
    memcpy(g, buf, n);
    g[off] = val;
    for (size_t i = off + 1; i <= n; i++) {
        hello_verdict v = tls_client_hello_sni(g, i, sni, sizeof sni);
        hello_verdict want = i < from ? HELLO_MORE : HELLO_BAD;
        if (v != want)
            fail_msg("byte %zu = 0x%02x, prefix %zu: verdict %d, not %d", off, val, i, v, want);
    }
}

static void test_tls_bad_lengths(void **state)
{
    /* Offsets in the captured hello: record header 0-4, handshake header 5-8, legacy_version 9,
     * random 11, session id length 43, cipher suites length 76 (0x3e bytes), compression 140,
     * extensions length 142, server_name first: type 144, length 146, list length 148, name
     * type 150, name length 151, "example.com" 153-163. */
    const uint8_t *h = hello_sni;
    size_t n = sizeof hello_sni;
    assert_int_equal(get16(h + 144), 0);
    assert_int_equal(h[153], 'e');
    assert_bad_from(h, n, 3, 0x40, 5);     /* record length 16384 + 0x38 */
    assert_bad_from(h, n, 5, 2, 6);        /* handshake type: ServerHello */
    assert_bad_from(h, n, 6, 1, 9);        /* hello length > TLS_HELLO_MAX */
    assert_bad_from(h, n, 9, 2, 11);       /* legacy_version 2.3 */
    assert_bad_from(h, n, 43, 33, 44);     /* session id of 33 bytes */
    assert_bad_from(h, n, 77, 0x3f, 78);   /* odd cipher suites length */
    assert_bad_from(h, n, 77, 0, 78);      /* no cipher suites */
    assert_bad_from(h, n, 140, 0, 141);    /* no compression methods */
    assert_bad_from(h, n, 142, 0x01, 144); /* extensions longer than the message */
    assert_bad_from(h, n, 143, 0xac, 144); /* ... or shorter */
    assert_bad_from(h, n, 147, 0xff, 148); /* server_name past the extensions */
    /* Inside server_name: judged once the extension is all here. */
    assert_bad_from(h, n, 149, 0x0f, 164); /* list length */
    assert_bad_from(h, n, 152, 0x0c, 164); /* name length past the list */
    assert_bad_from(h, n, 152, 0x00, 164); /* an empty name */
    assert_bad_from(h, n, 153, '_', 164);  /* not a host name byte */
    assert_bad_from(h, n, 159, '.', 164);  /* "exampl..com": an empty label */
    /* A later record that is not a handshake record, or not TLS. */
    uint8_t buf[600];
    size_t m = records(buf, h + 5, n - 5, 100);
    assert_bad_from(buf, m, 105, 23, 106);
    assert_bad_from(buf, m, 106, 2, 107);

    /* Found by fuzz_netparse: a hello already bad (legacy_version 0x32) must stay bad while the
     * header of the next record arrives, not go back to HELLO_MORE. */
    const uint8_t bad_then_rec[] = {0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x32, 0x32,
                                    0x32, 0x01, 0x00, 0x33, 0x16, 0x03, 0x01, 0x00, 0x00};
    assert_bad_from(bad_then_rec, sizeof bad_then_rec, 9, 0x32, 11);

    char sni[256];
    uint8_t rec0[5] = {22, 3, 1, 0, 0}; /* an empty record */
    assert_int_equal(tls_client_hello_sni(rec0, 5, sni, sizeof sni), HELLO_BAD);
    assert_int_equal(tls_client_hello_sni(hello_sni, 4, sni, sizeof sni), HELLO_MORE);
}

static void test_tls_names(void **state)
{
    uint8_t ext[600], hs[1024], buf[1200];
    char sni[256], name[300];
    size_t e = ext_sni(ext, "WWW.Example.COM");
    size_t n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_OK);
    assert_string_equal(sni, "www.example.com");

    const char *bad[] = {"example.com.", ".example.com", "a..b",          "ex ample.com",
                         "ex_ample.com", "10.0.0.1:443", "caf\xc3\xa9.fr"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        e = ext_sni(ext, bad[i]);
        n = records(buf, hs, client_hello(hs, ext, e), 16384);
        assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
    }
    /* 253 characters, and 254; a 64-byte label. */
    for (int i = 0; i < 4; i++) {
        memset(name + 64 * i, 'c', 63);
        name[64 * i + 63] = '.';
    }
    name[253] = '\0';
    e = ext_sni(ext, name);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_OK);
    assert_int_equal(strlen(sni), 253);
    name[253] = 'c';
    name[254] = '\0';
    e = ext_sni(ext, name);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
    memset(name, 'd', 64);
    strcpy(name + 64, ".com");
    e = ext_sni(ext, name);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);

    /* Two server_name extensions, or two host names in one: which would the server take? */
    e = ext_sni(ext, "a.example");
    e += ext_sni(ext + e, "b.example");
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
    const uint8_t two[] = {0, 14, 0, 0, 4, 'a', '.', 'b', 'c', 0, 0, 3, 'x', '.', 'y'};
    e = ext_raw(ext, 0, two, sizeof two);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
    /* A name of another type only: no host name. */
    const uint8_t other[] = {0, 6, 7, 0, 3, 'x', '.', 'y'};
    e = ext_raw(ext, 0, other, sizeof other);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_NO_SNI);
    /* An empty server_name extension (a server's form), and no extensions at all. */
    e = ext_raw(ext, 0, ext, 0);
    n = records(buf, hs, client_hello(hs, ext, e), 16384);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_BAD);
    size_t hn = client_hello(hs, ext, 0) - 2;
    put16(hs + 2, (unsigned)(hn - 4));
    n = records(buf, hs, hn, 16384);
    assert_prefixes_more(buf, n, HELLO_NO_SNI, NULL);
}

/* A hello of n bytes (with a server_name) as records of at most rec bytes into buf. */
static size_t padded_hello(uint8_t *buf, size_t n, size_t rec)
{
    static uint8_t ext[20000], hs[20000];
    const size_t fixed = 81; /* the hello's fields before its extensions */
    memset(ext, 0, sizeof ext);
    size_t e = ext_sni(ext, "example.com");
    put16(ext + e, 21); /* padding */
    put16(ext + e + 2, (unsigned)(n - fixed - e - 4));
    size_t hn = client_hello(hs, ext, n - fixed);
    assert_int_equal(hn, n);
    return records(buf, hs, hn, rec);
}

static void test_tls_size_cap(void **state)
{
    static uint8_t buf[20000];
    char sni[256];
    /* The hello must end within the first TLS_HELLO_MAX bytes of the stream. In one record of
     * TLS_HELLO_MAX - 5 bytes: it does. */
    size_t n = padded_hello(buf, TLS_HELLO_MAX - 5, 16384);
    assert_int_equal(n, TLS_HELLO_MAX);
    assert_int_equal(tls_client_hello_sni(buf, n - 1, sni, sizeof sni), HELLO_MORE);
    assert_int_equal(tls_client_hello_sni(buf, n, sni, sizeof sni), HELLO_OK);
    assert_string_equal(sni, "example.com");
    /* One byte more: refused as soon as its length is read, and from then on. */
    n = padded_hello(buf, TLS_HELLO_MAX - 4, 16384);
    assert_int_equal(tls_client_hello_sni(buf, 8, sni, sizeof sni), HELLO_MORE);
    for (size_t i = 9; i <= n; i++)
        assert_int_equal(tls_client_hello_sni(buf, i, sni, sizeof sni), HELLO_BAD);
    /* The same hello in records of 8000 bytes: a second record header is needed, so it cannot
     * end within TLS_HELLO_MAX; known once its length and the first record's are read. */
    n = padded_hello(buf, TLS_HELLO_MAX - 5, 8000);
    assert_true(n > TLS_HELLO_MAX);
    assert_int_equal(tls_client_hello_sni(buf, 8, sni, sizeof sni), HELLO_MORE);
    for (size_t i = 9; i <= n; i++)
        assert_int_equal(tls_client_hello_sni(buf, i, sni, sizeof sni), HELLO_BAD);
    /* In records of 16368 and 6 bytes (two headers) it ends at exactly TLS_HELLO_MAX; a byte
     * longer, it cannot, which is known from the first record's length on. */
    n = padded_hello(buf, TLS_HELLO_MAX - 10, 16384 - 16);
    assert_int_equal(n, TLS_HELLO_MAX);
    assert_prefixes_more(buf, n, HELLO_OK, "example.com");
    n = padded_hello(buf, TLS_HELLO_MAX - 9, 16384 - 16);
    assert_int_equal(n, TLS_HELLO_MAX + 1);
    assert_int_equal(tls_client_hello_sni(buf, 8, sni, sizeof sni), HELLO_MORE);
    assert_int_equal(tls_client_hello_sni(buf, 9, sni, sizeof sni), HELLO_BAD);
    /* A hello whose length alone is over TLS_HELLO_MAX. */
    const uint8_t big[] = {22, 3, 1, 0, 4, 1, 0, 0x40, 0x01};
    assert_int_equal(tls_client_hello_sni(big, sizeof big, sni, sizeof sni), HELLO_BAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_udp),
        cmocka_unit_test(test_parse_tcp),
        cmocka_unit_test(test_parse_ip_options),
        cmocka_unit_test(test_parse_kinds),
        cmocka_unit_test(test_parse_fragments),
        cmocka_unit_test(test_parse_bad_ip),
        cmocka_unit_test(test_parse_bad_udp),
        cmocka_unit_test(test_parse_bad_tcp),
        cmocka_unit_test(test_dns_parse),
        cmocka_unit_test(test_dns_refused),
        cmocka_unit_test(test_dns_answer),
        cmocka_unit_test(test_dns_answer_cap_512),
        cmocka_unit_test(test_dns_formerr),
        cmocka_unit_test(test_udp_reply),
        cmocka_unit_test(test_tcp_rst),
        cmocka_unit_test(test_icmp_unreach),
        cmocka_unit_test(test_builders_refuse_unparsed),
        cmocka_unit_test(test_tls_captured),
        cmocka_unit_test(test_tls_fragmented),
        cmocka_unit_test(test_tls_ech),
        cmocka_unit_test(test_tls_not_tls),
        cmocka_unit_test(test_tls_bad_lengths),
        cmocka_unit_test(test_tls_names),
        cmocka_unit_test(test_tls_size_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
