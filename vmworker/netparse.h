/* The guest's untrusted network bytes, parsed and answered: ethernet II / IPv4 / TCP / UDP
 * headers, DNS queries and their answers, TCP resets and ICMP errors towards the guest, and the
 * server name of a TLS ClientHello. Pure functions over buffers: no I/O, no allocation; every
 * length read from a packet is checked against the bytes present before it is used. Fuzzed in
 * tests/fuzz/fuzz_netparse.c. */
#ifndef SBX_NETPARSE_H
#define SBX_NETPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NET_ETH_HLEN 14u
#define NET_MAX_FRAME 65550u /* what QEMU may hand us in one stream record */

typedef enum {
    PKT_BAD = -1,   /* truncated or inconsistent headers */
    PKT_OTHER = 0,  /* not IPv4 or IPv6 (ARP and the rest): slirp's business */
    PKT_IPV6,       /* refused: the guest has no IPv6 */
    PKT_FRAGMENT,   /* IPv4 with MF set or a fragment offset: refused */
    PKT_IPV4_OTHER, /* IPv4, neither TCP nor UDP (ICMP, ...) */
    PKT_TCP,
    PKT_UDP,
} net_pkt_kind;

#define NET_TCP_FIN 0x01u
#define NET_TCP_SYN 0x02u
#define NET_TCP_RST 0x04u
#define NET_TCP_PSH 0x08u
#define NET_TCP_ACK 0x10u

typedef struct {
    const uint8_t *frame;
    size_t len;
    uint16_t ethertype;
    /* IPv4 (addresses in network byte order, as on the wire) */
    uint32_t src, dst;
    uint8_t proto;
    size_t ip_hlen;
    /* TCP / UDP (host byte order) */
    uint16_t sport, dport;
    uint8_t tcp_flags; /* TCP's whole flags byte (NET_TCP_*, and URG, ECE, CWR) */
    uint32_t seq, ack;
    const uint8_t *payload;
    size_t payload_len;
} net_pkt;

/* Fills p from one ethernet frame. The IPv4 total length bounds the payload (trailing padding
 * ignored); a total length beyond the frame, a header length < 20, a TCP data offset < 20 or
 * beyond the segment are PKT_BAD. A UDP length < 8 or past the IP payload is PKT_BAD; a shorter
 * one bounds the payload. Checksums are not verified (virtio-net may leave them to offload). For
 * PKT_FRAGMENT the addresses and protocol are filled, nothing of TCP/UDP. */
net_pkt_kind net_parse_frame(const uint8_t *f, size_t len, net_pkt *p);

/* ---- DNS (RFC 1035) ---- */
#define DNS_TYPE_A 1u
#define DNS_TYPE_AAAA 28u
#define DNS_CLASS_IN 1u
#define DNS_RCODE_OK 0
#define DNS_RCODE_FORMERR 1
#define DNS_RCODE_SERVFAIL 2
#define DNS_RCODE_NXDOMAIN 3
#define DNS_RCODE_REFUSED 5

typedef struct {
    uint16_t id;
    bool rd;
    char name[254]; /* lower case, dot-separated, no trailing dot ("" for the root) */
    uint16_t qtype, qclass;
    size_t question_len; /* bytes of the question section (name + type + class) */
} dns_query;

/* One standard query (QR=0, opcode 0, QDCOUNT=1; answer/authority counts 0; additional records
 * such as EDNS OPT allowed and ignored) with an uncompressed name of printable labels. Returns 0,
 * or -1 for anything else (the caller answers FORMERR when at least the id was readable:
 * len >= 2). */
int dns_parse_query(const uint8_t *msg, size_t len, dns_query *q);

/* Writes the answer to q into out (cap bytes): the header with QR, RA, RD copied, rcode, the
 * question echoed, and for rcode 0 one A record per address in a (n, network byte order; 0
 * records = NODATA) with ttl. Returns its length, or 0 if cap is too small. Records are written
 * only for a question of type A, class IN (any other gets NODATA whatever n is), and at most as
 * many as keep the message within 512 bytes (at least 15 always fit; the rest are left out, TC
 * is not set). Each names the question by the pointer 0xC00C. */
size_t dns_build_answer(const dns_query *q, int rcode, const uint32_t *a, size_t n, uint32_t ttl,
                        uint8_t *out, size_t cap);
/* A header-only reply with id and rcode (for queries that could not be parsed): QR and RA set,
 * all counts 0; 12 bytes, or 0 if cap is too small. */
size_t dns_build_error(uint16_t id, int rcode, uint8_t *out, size_t cap);

/* ---- frames towards the guest ---- */

/* One end of a datagram or segment: MAC, IPv4 address (network byte order), port (host order). */
typedef struct {
    uint8_t mac[6];
    uint32_t ip;
    uint16_t port;
} net_endpoint;

/* A whole ethernet/IPv4/UDP frame from `from` to `to` with payload (which may lie in out),
 * checksums computed. Returns its length, or 0 if cap is too small. */
size_t net_build_udp(const net_endpoint *from, const net_endpoint *to, const uint8_t *payload,
                     size_t len, uint8_t *out, size_t cap);

/* A whole ethernet/IPv4/UDP frame answering p (a UDP packet from the guest): MACs, addresses
 * and ports swapped, payload as given, checksums computed. Returns its length, or 0 if cap is
 * too small or p is not UDP. The frames built here carry TTL 64, DF and IP id 0, no options, no
 * ethernet padding; out may be p's own frame (what is needed of it is read first). */
size_t net_build_udp_reply(const net_pkt *p, const uint8_t *payload, size_t len, uint8_t *out,
                           size_t cap);
/* A TCP reset answering the guest's segment p (RFC 793: for a SYN, RST|ACK with ack = seq + 1;
 * for a segment with ACK, RST with seq = its ack). Nothing for a segment that is itself a RST:
 * returns 0. */
size_t net_build_tcp_rst(const net_pkt *p, uint8_t *out, size_t cap);
/* ICMP destination unreachable (type 3, code: 3 port unreachable, 13 administratively
 * prohibited) quoting p's IP header and first 8 payload bytes. Returns its length, or 0 when
 * RFC 1122 (3.2.2) forbids the error: p is itself an ICMP error (types 3, 4, 5, 11, 12), or goes
 * to a multicast or broadcast address (>= 224.0.0.0), or comes from 0/8, 127/8 or >= 224;
 * also 0 if cap is too small. */
size_t net_build_icmp_unreach(const net_pkt *p, uint8_t code, uint8_t *out, size_t cap);

/* ---- TLS ---- */
#define TLS_HELLO_MAX 16384u /* the most we buffer waiting for a whole ClientHello */

typedef enum {
    HELLO_MORE = 0,     /* a valid prefix: read more */
    HELLO_OK = 1,       /* sni holds the host_name, lower case */
    HELLO_NOT_TLS = -1, /* not a TLS handshake record (plain HTTP, ...) */
    HELLO_BAD = -2,     /* malformed, or longer than TLS_HELLO_MAX */
    HELLO_NO_SNI = -3,  /* no server_name extension, or no host_name in it */
    HELLO_ECH = -4,     /* carries encrypted_client_hello (0xfe0d) */
} hello_verdict;

/* Looks at the first len bytes a guest sent on a TCP connection: TLS records of type handshake
 * (22), possibly several, whose concatenated fragments begin with a ClientHello (type 1); parses
 * it when complete. sni: a buffer of sni_cap (>= 254) bytes; a name that is not a valid DNS name
 * (bytes outside [a-z0-9.-], empty labels, > 253) is HELLO_BAD. Upper case is lowered; a
 * trailing dot, a label over 63, two server_name extensions or two host_names are HELLO_BAD. A
 * first record that is not handshake/3.x is HELLO_NOT_TLS; a later one before the hello is
 * whole, HELLO_BAD. Bytes after the hello are not looked at. The hello must end within the first
 * TLS_HELLO_MAX bytes of the stream, record headers included: HELLO_BAD as soon as it cannot, so
 * HELLO_MORE only while len < TLS_HELLO_MAX. Any verdict but HELLO_MORE, once given for a prefix,
 * is the verdict for every longer one. Uses about 16 KiB of stack. */
hello_verdict tls_client_hello_sni(const uint8_t *buf, size_t len, char *sni, size_t sni_cap);

#endif
