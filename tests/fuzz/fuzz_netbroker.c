/* libFuzzer target for sbx-netbroker's side of the worker boundary: one seqpacket message as
 * the broker receives it, through request_parse and then the decisions it feeds (the name and
 * connect checks of an allowlist and of an open policy, the hosts file lookup, the private
 * filter, the answer cache). No socket is opened and no child forked: those follow the checks. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "broker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

void blog(const char *fmt, ...)
{
    (void)fmt;
}

static hosts_entry hosts[] = {
    {"api.good.test", 0x0200000au},     /* 10.0.0.2 */
    {"good.test", 0x07643 << 8 | 198u}, /* some public-looking address */
    {"evil.test", 0x0100007fu},         /* 127.0.0.1 */
};
static char d0[] = "good.test", d1[] = "example.com";
static char *domains[] = {d0, d1};

static void decide(const broker_policy *p, const Sbx__Net__NetMsg *m)
{
    char buf[600];
    if (m->body_case == SBX__NET__NET_MSG__BODY_RESOLVE) {
        if (resolve_check(p, m->resolve->name, buf, sizeof buf))
            return;
        uint32_t addrs[BROKER_MAX_ADDRS];
        size_t n = hosts_lookup(p, m->resolve->name, addrs, BROKER_MAX_ADDRS);
        if (n == 0) { /* what a resolver child might have said, from the id */
            addrs[0] = (uint32_t)m->id;
            addrs[1] = (uint32_t)(m->id >> 32);
            n = 2;
        }
        n = filter_private(p, addrs, n);
        cache_add(m->resolve->name, addrs, n);
    } else {
        connect_check(p, m->connect->ipv4, m->connect->port, m->connect->sni, buf, sizeof buf);
        cache_has(m->connect->name, m->connect->ipv4);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *why = NULL;
    Sbx__Net__NetMsg *m = request_parse(data, size, &why);
    if (!m)
        return 0;
    broker_policy allow = {.mode = NET_ALLOWLIST,
                           .domains = domains,
                           .n_domains = 2,
                           .connect_timeout_ms = 1000,
                           .hosts = hosts,
                           .n_hosts = ARRAY_LEN(hosts)};
    broker_policy open = allow;
    open.mode = NET_OPEN;
    open.allow_private = size & 1;
    decide(&allow, m);
    decide(&open, m);
    sbx__net__net_msg__free_unpacked(m, NULL);
    return 0;
}
