/* libFuzzer target for the worker's parsers of the guest's network bytes (vmworker/netparse.c).
 * A guest controls every byte of its frames and of its TCP streams. The input is taken as an
 * ethernet frame (and its payload answered the way the worker will: DNS answer or error in a UDP
 * reply, a reset, an ICMP error, each built into a buffer only as large as it must be, so that
 * ASan sees any write past the end), as a DNS message on its own, and as the start of a TCP
 * stream given to the ClientHello parser at several prefix lengths, as the caller reassembles it,
 * and as the bytes of a handshake message put into records of several sizes.
 * The results are checked against the header's promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "netparse.h"

static void check_frame(const uint8_t *out, size_t len, size_t cap)
{
    if (len > cap)
        abort();
    if (len == 0)
        return;
    /* What we build, we parse back as the kind it is. */
    net_pkt r;
    net_pkt_kind k = net_parse_frame(out, len, &r);
    if (k != PKT_UDP && k != PKT_TCP && k != PKT_IPV4_OTHER)
        abort();
}

static void answer_dns(const net_pkt *p, const uint8_t *msg, size_t len)
{
    dns_query q;
    uint8_t ans[512];
    size_t n;
    if (dns_parse_query(msg, len, &q) == 0) {
        if (strlen(q.name) > 253 || q.question_len + 12 > len)
            abort();
        uint32_t addrs[40];
        for (size_t i = 0; i < 40; i++)
            addrs[i] = (uint32_t)i * 0x01010101u;
        size_t na = len % 41;
        /* Into a buffer exactly as large as the answer needs, then one byte less. */
        n = dns_build_answer(&q, (int)(len % 6), addrs, na, 60, ans, sizeof ans);
        if (n == 0 || n > 512)
            abort();
        uint8_t *tight = malloc(n);
        if (!tight)
            abort();
        if (dns_build_answer(&q, (int)(len % 6), addrs, na, 60, tight, n) != n)
            abort();
        if (dns_build_answer(&q, (int)(len % 6), addrs, na, 60, tight, n - 1) != 0)
            abort();
        if (memcmp(tight, ans, n) != 0)
            abort();
        free(tight);
        /* The echoed question is the asked one, lower-cased. */
        dns_query back;
        uint8_t asq[512];
        memcpy(asq, ans, n);
        asq[2] &= 0x7F;      /* QR off: parse it as a query */
        asq[6] = asq[7] = 0; /* no answers */
        if (dns_parse_query(asq, n, &back) != 0 || strcmp(back.name, q.name) != 0 ||
            back.qtype != q.qtype || back.qclass != q.qclass)
            abort();
    } else if (len >= 2) {
        n = dns_build_error((uint16_t)(msg[0] << 8 | msg[1]), DNS_RCODE_FORMERR, ans, sizeof ans);
        if (n != 12)
            abort();
    } else {
        return;
    }
    if (p) {
        size_t cap = NET_ETH_HLEN + 28 + n;
        uint8_t *out = malloc(cap);
        if (!out)
            abort();
        size_t fl = net_build_udp_reply(p, ans, n, out, cap);
        if (fl != cap)
            abort();
        check_frame(out, fl, cap);
        free(out);
    }
}

static hello_verdict tls_prefix(const uint8_t *data, size_t n, char sni[254])
{
    /* A copy of exactly n bytes: a read past the prefix is an ASan report. */
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        abort();
    memcpy(b, data, n);
    memset(sni, 'X', 254);
    hello_verdict v = tls_client_hello_sni(b, n, sni, 254);
    free(b);
    if (v == HELLO_OK) {
        size_t l = strnlen(sni, 254);
        if (l == 0 || l > 253)
            abort();
        for (size_t j = 0; j < l; j++)
            if (!((sni[j] >= 'a' && sni[j] <= 'z') || (sni[j] >= '0' && sni[j] <= '9') ||
                  sni[j] == '-' || sni[j] == '.'))
                abort();
    }
    if (v == HELLO_MORE && n >= TLS_HELLO_MAX)
        abort();
    return v;
}

/* The stream's prefixes as the caller reassembles it: all of them for a short input, some for a
 * long one. Once a prefix has a verdict other than HELLO_MORE, every longer one has the same
 * verdict (and name): more bytes never change an answer already given. */
static void tls(const uint8_t *data, size_t size)
{
    size_t cuts[] = {0, 1, 5, 6, 9, 40, size / 3, size / 2, size - 1, size};
    size_t ncuts = size <= 256 ? size + 1 : sizeof cuts / sizeof cuts[0];
    hello_verdict first = HELLO_MORE;
    char sni[254], first_sni[254];
    for (size_t i = 0; i < ncuts; i++) {
        size_t n = size <= 256 ? i : cuts[i];
        if (n > size || (i > 0 && size > 256 && n <= cuts[i - 1]))
            continue;
        hello_verdict v = tls_prefix(data, n, sni);
        if (first == HELLO_MORE) {
            first = v;
            memcpy(first_sni, sni, sizeof sni);
        } else if (v != first || (v == HELLO_OK && strcmp(sni, first_sni) != 0)) {
            abort();
        }
    }
}

/* The input as handshake bytes, in one record and cut into records of k bytes: the same verdict
 * and name either way (the concatenation of fragments is what counts), but for the size rule. */
static void tls_records(const uint8_t *data, size_t size)
{
    size_t k = 1 + size % 97;
    if (size == 0 || size > TLS_HELLO_MAX || size + 5 * ((size + k - 1) / k) >= TLS_HELLO_MAX)
        return;
    uint8_t *one = malloc(size + 5), *many = malloc(size + 5 * ((size + k - 1) / k));
    if (!one || !many)
        abort();
    const uint8_t hdr[5] = {22, 3, 1, (uint8_t)(size >> 8), (uint8_t)size};
    memcpy(one, hdr, 5);
    memcpy(one + 5, data, size);
    size_t o = 0;
    for (size_t i = 0; i < size; i += k) {
        size_t l = size - i < k ? size - i : k;
        const uint8_t h[5] = {22, 3, 3, (uint8_t)(l >> 8), (uint8_t)l};
        memcpy(many + o, h, 5);
        memcpy(many + o + 5, data + i, l);
        o += 5 + l;
    }
    char s1[254], s2[254];
    hello_verdict v1 = tls_client_hello_sni(one, size + 5, s1, sizeof s1);
    hello_verdict v2 = tls_client_hello_sni(many, o, s2, sizeof s2);
    /* Except for one thing: every record header counts towards TLS_HELLO_MAX, so a hello that
     * fits in one record may not fit cut into many (then refused as soon as that is certain). */
    bool too_long_cut = v1 == HELLO_MORE && v2 == HELLO_BAD;
    if (!too_long_cut && (v1 != v2 || (v1 == HELLO_OK && strcmp(s1, s2) != 0)))
        abort();
    free(one);
    free(many);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *f = malloc(size ? size : 1);
    if (!f)
        return 0;
    memcpy(f, data, size);
    net_pkt p;
    net_pkt_kind k = net_parse_frame(f, size, &p);
    if (k == PKT_TCP || k == PKT_UDP || k == PKT_IPV4_OTHER) {
        if (p.payload < f || p.payload + p.payload_len > f + size)
            abort();
        if (p.ip_hlen < 20 || NET_ETH_HLEN + p.ip_hlen > size)
            abort();
    }
    if (k == PKT_UDP)
        answer_dns(&p, p.payload, p.payload_len);
    if (k == PKT_TCP) {
        uint8_t out[NET_ETH_HLEN + 40];
        check_frame(out, net_build_tcp_rst(&p, out, sizeof out), sizeof out);
        tls(p.payload, p.payload_len);
    }
    if (k == PKT_TCP || k == PKT_UDP || k == PKT_IPV4_OTHER) {
        uint8_t out[NET_ETH_HLEN + 28 + 68];
        check_frame(out, net_build_icmp_unreach(&p, 3, out, sizeof out), sizeof out);
        /* Built over the guest's own frame, as a caller short of buffers may. */
        if (k == PKT_TCP && size >= NET_ETH_HLEN + 40)
            check_frame(f, net_build_tcp_rst(&p, f, size), size);
    }
    free(f);
    answer_dns(NULL, data, size);
    tls(data, size);
    tls_records(data, size);
    return 0;
}
