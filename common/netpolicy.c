/* The network policy's pure parts (see netpolicy.h): modes, domain syntax and matching, the
 * private IPv4 ranges, and `--expose` specs. No I/O, no allocation: the CLI, sbxd and the broker
 * all call it on untrusted input. */
#include "netpolicy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const mode_names[] = {"none", "ports", "allowlist", "open"};

const char *net_mode_name(net_mode m)
{
    return (unsigned)m < ARRAY_LEN(mode_names) ? mode_names[m] : "none";
}

net_mode net_mode_parse(const char *s)
{
    for (size_t i = 0; s && i < ARRAY_LEN(mode_names); i++)
        if (!strcmp(s, mode_names[i]))
            return (net_mode)i;
    return NET_NONE;
}

net_mode net_mode_of(bool allow_network, size_t n_domains, size_t n_expose)
{
    if (allow_network)
        return n_domains ? NET_ALLOWLIST : NET_OPEN;
    return n_expose ? NET_PORTS : NET_NONE;
}

/* ---- domains ---- */

#define NET_MAX_LABEL 63u

/* ASCII only, whatever the locale: names on the wire are ASCII (IDNs travel as xn--). */
static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ldh(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return true;
}

/* One label d[0..n): 1-63 letters, digits and inner hyphens. */
static int check_label(const char *dom, const char *l, size_t n, sbx_err *err)
{
    if (n == 0)
        return sbx_fail(err, EINVAL, "domain `%s` has an empty label", dom);
    if (n > NET_MAX_LABEL)
        return sbx_fail(err, EINVAL, "domain `%s` has a label of %zu bytes; the limit is %u", dom,
                        n, NET_MAX_LABEL);
    for (size_t i = 0; i < n; i++)
        if (!is_ldh(l[i]))
            return sbx_fail(err, EINVAL,
                            "domain `%s` contains `%c`: only letters, digits, hyphens and dots",
                            dom, l[i] >= ' ' && l[i] < 0x7f ? l[i] : '?');
    if (l[0] == '-' || l[n - 1] == '-')
        return sbx_fail(err, EINVAL, "domain `%s` has a label that starts or ends with a hyphen",
                        dom);
    return 0;
}

int net_check_domain(const char *d, sbx_err *err)
{
    if (!d || !*d)
        return sbx_fail(err, EINVAL, "an allowed domain is empty");
    size_t len = strlen(d);
    if (d[len - 1] == '.')
        len--; /* the root's dot is optional */
    if (len > NET_MAX_DOMAIN_LEN)
        return sbx_fail(err, EINVAL, "domain `%.40s...` is %zu bytes; the limit is %u", d, len,
                        NET_MAX_DOMAIN_LEN);
    if (strchr(d, '*'))
        return sbx_fail(err, EINVAL,
                        "domain `%s`: wildcards are not supported (a domain already allows its "
                        "subdomains)",
                        d);
    if (strchr(d, ':') || (len && strspn(d, "0123456789.") >= len))
        return sbx_fail(err, EINVAL, "`%s` is an IP address: allow a domain name instead", d);
    size_t labels = 0;
    for (const char *l = d;; labels++) {
        const char *dot = memchr(l, '.', len - (size_t)(l - d));
        size_t n = dot ? (size_t)(dot - l) : len - (size_t)(l - d);
        if (check_label(d, l, n, err) < 0)
            return -1;
        if (!dot) {
            if (all_digits(l, n))
                return sbx_fail(err, EINVAL, "domain `%s` has an all-numeric top-level label", d);
            break;
        }
        l = dot + 1;
    }
    if (labels == 0)
        return sbx_fail(err, EINVAL,
                        "domain `%s` is a single label: give a full name such as example.com "
                        "(names like localhost are not allowed)",
                        d);
    return 0;
}

void net_normalize_domain(const char *d, char *out, size_t n)
{
    if (!n)
        return;
    size_t i = 0;
    for (; d[i] && i + 1 < n; i++)
        out[i] = lower(d[i]);
    if (i && out[i - 1] == '.')
        i--;
    out[i] = '\0';
}

int net_check_domains(const char *const *d, size_t n, sbx_err *err)
{
    if (n > NET_MAX_DOMAINS)
        return sbx_fail(err, EINVAL, "%zu allowed domains; the limit is %u", n, NET_MAX_DOMAINS);
    for (size_t i = 0; i < n; i++)
        if (net_check_domain(d[i], err) < 0)
            return -1;
    return 0;
}

bool net_name_allowed(const char *name, const char *const *allowed, size_t n)
{
    char nm[NET_MAX_DOMAIN_LEN + 2], a[NET_MAX_DOMAIN_LEN + 2];
    if (!name || strlen(name) > NET_MAX_DOMAIN_LEN + 1)
        return false;
    net_normalize_domain(name, nm, sizeof nm);
    size_t nl = strlen(nm);
    for (size_t i = 0; i < n; i++) {
        if (!allowed[i] || strlen(allowed[i]) > NET_MAX_DOMAIN_LEN + 1)
            continue;
        net_normalize_domain(allowed[i], a, sizeof a);
        size_t al = strlen(a);
        if (!al || al > nl)
            continue;
        if (!strcmp(nm + (nl - al), a) && (nl == al || nm[nl - al - 1] == '.'))
            return true;
    }
    return false;
}

/* ---- addresses ---- */

static const struct {
    uint32_t net; /* host byte order */
    unsigned prefix;
} private_v4[] = {
    {0x00000000u, 8},  /* 0.0.0.0/8: "this network" */
    {0x0a000000u, 8},  /* 10/8 */
    {0x64400000u, 10}, /* 100.64/10: carrier-grade NAT */
    {0x7f000000u, 8},  /* 127/8: loopback */
    {0xa9fe0000u, 16}, /* 169.254/16: link-local, cloud metadata */
    {0xac100000u, 12}, /* 172.16/12 */
    {0xc0a80000u, 16}, /* 192.168/16 */
    {0xe0000000u, 4},  /* 224/4: multicast */
    {0xf0000000u, 4},  /* 240/4: reserved, broadcast */
};

bool net_ipv4_private(uint32_t be_addr)
{
    const uint8_t *b = (const uint8_t *)&be_addr;
    uint32_t a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    for (size_t i = 0; i < ARRAY_LEN(private_v4); i++) {
        uint32_t mask = ~0u << (32 - private_v4[i].prefix);
        if ((a & mask) == private_v4[i].net)
            return true;
    }
    return false;
}

/* ---- exposed ports ---- */

int net_check_expose(uint32_t internal, uint32_t external, const char *protocol, sbx_err *err)
{
    if (internal < 1 || internal > 65535)
        return sbx_fail(err, EINVAL, "exposed port %u is out of range (1-65535)", internal);
    if (external > 65535)
        return sbx_fail(err, EINVAL, "host port %u is out of range (1024-65535, or 0)", external);
    if (external && external < NET_MIN_EXTERNAL_PORT)
        return sbx_fail(err, EINVAL,
                        "host port %u is below %u: use %u-65535, or 0 to let the OS choose",
                        external, NET_MIN_EXTERNAL_PORT, NET_MIN_EXTERNAL_PORT);
    if (protocol && *protocol && strcmp(protocol, "tcp") && strcmp(protocol, "udp"))
        return sbx_fail(err, EINVAL, "protocol `%.16s` is not tcp or udp", protocol);
    return 0;
}

int net_check_expose_count(size_t n, sbx_err *err)
{
    if (n > NET_MAX_EXPOSE)
        return sbx_fail(err, EINVAL, "%zu exposed ports; the limit is %u", n, NET_MAX_EXPOSE);
    return 0;
}

/* The decimal number at *s, advancing *s past its digits; -1 if there is none. Values are
 * capped at UINT32_MAX, for net_check_expose to refuse. */
static int64_t parse_port(const char **s)
{
    size_t n = strspn(*s, "0123456789");
    int64_t v = 0;
    for (size_t i = 0; i < n; i++)
        if ((v = v * 10 + ((*s)[i] - '0')) > UINT32_MAX)
            v = UINT32_MAX;
    *s += n;
    return n ? v : -1;
}

int net_parse_expose(const char *spec, net_expose *out, sbx_err *err)
{
    if (!spec)
        spec = "";
    const char *s = spec;
    int64_t internal = parse_port(&s), external = 0;
    if (internal < 0)
        return sbx_fail(err, EINVAL,
                        "expose `%.64s`: no guest port; expected INTERNAL[:EXTERNAL][/tcp|/udp], "
                        "e.g. 8080 or 8080:9000/udp",
                        spec);
    if (*s == ':') {
        s++;
        external = parse_port(&s);
        if (external < 0)
            return sbx_fail(err, EINVAL, "expose `%.64s`: no host port after `:`", spec);
    }
    const char *proto = "";
    if (*s == '/') {
        proto = ++s;
        if (!*proto)
            return sbx_fail(err, EINVAL, "expose `%.64s`: no protocol after `/` (tcp or udp)",
                            spec);
    } else if (*s) {
        return sbx_fail(err, EINVAL, "expose `%.64s`: unexpected `%.16s`", spec, s);
    }
    if (net_check_expose((uint32_t)internal, (uint32_t)external, proto, err) < 0)
        return sbx_wrap(err, "expose `%.64s`", spec);
    out->internal = (uint16_t)internal;
    out->external = (uint16_t)external;
    out->udp = !strcmp(proto, "udp");
    return 0;
}
