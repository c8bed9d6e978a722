/* The network policy's pure parts, shared by the CLI (early usage errors), sbxd (authoritative
 * validation of a request) and the broker (decisions): domain syntax, allowlist matching, the
 * private ranges refused unless the operator allows them, and `--expose` specs. */
#ifndef SBX_NETPOLICY_H
#define SBX_NETPOLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define NET_MAX_DOMAINS 100u
#define NET_MAX_DOMAIN_LEN 253u
#define NET_MAX_EXPOSE 10u
#define NET_MIN_EXTERNAL_PORT 1024u

typedef enum { NET_NONE, NET_PORTS, NET_ALLOWLIST, NET_OPEN } net_mode;

/* "none" | "ports" | "allowlist" | "open"; and back (NET_NONE for anything unknown). */
const char *net_mode_name(net_mode m);
net_mode net_mode_parse(const char *s);
/* The mode a request asks for: nothing -> NONE; only exposed ports -> PORTS; network with
 * domains -> ALLOWLIST; network alone -> OPEN. */
net_mode net_mode_of(bool allow_network, size_t n_domains, size_t n_expose);

/* A domain as the user may write it: RFC 1035 labels (letters, digits, hyphens not at either
 * end, 1-63 bytes each), at least two labels, <= 253 bytes, one optional trailing dot; IP
 * literals and wildcards refused. Returns 0, or -1 with err naming the domain and the fault. */
int net_check_domain(const char *d, sbx_err *err);
/* Lower-cases d into out (size n, >= 254) without a trailing dot. */
void net_normalize_domain(const char *d, char *out, size_t n);
/* The whole list: count <= 100, each valid. */
int net_check_domains(const char *const *d, size_t n, sbx_err *err);
/* Whether name (a DNS name as the guest sent it; case-insensitive, trailing dot allowed) is one
 * of allowed or a subdomain of one ("api.example.com" matches "example.com"; "example.com" does
 * not match "api.example.com"; "badexample.com" does not match "example.com"). */
bool net_name_allowed(const char *name, const char *const *allowed, size_t n);

/* An IPv4 address (network byte order) in one of the ranges refused unless
 * egress_allow_private: 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, 224/4,
 * 240/4. The documentation ranges are not among them. */
bool net_ipv4_private(uint32_t be_addr);

typedef struct {
    uint16_t internal;
    uint16_t external; /* 0: the OS chooses */
    bool udp;
} net_expose;
/* "INTERNAL[:EXTERNAL][/tcp|/udp]": ports 1-65535, EXTERNAL >= 1024 or 0. */
int net_parse_expose(const char *spec, net_expose *out, sbx_err *err);
/* One already-split spec (as it arrives in a request): same rules. protocol "" means tcp. */
int net_check_expose(uint32_t internal, uint32_t external, const char *protocol, sbx_err *err);
int net_check_expose_count(size_t n, sbx_err *err);

#endif
