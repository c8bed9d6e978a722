/* libsbx's network: a run's or a session's network request checked and turned into its message,
 * and what the daemon says back about it (the bound ports, early and in the result, and the
 * report of what was blocked). The rules themselves are common/netpolicy.c's, as in sbxd. */
#include "libsbx_int.h"
#include "netpolicy.h"

int sbx_parse_expose(const char *spec, sbx_port_expose *out, sbx_error *err)
{
    sbx_err e = {0};
    net_expose x;
    memset(out, 0, sizeof *out);
    if (net_parse_expose(spec, &x, &e) < 0) {
        e.code = SBX_ERR_VM_CONFIG;
        return error_out(-1, &e, err);
    }
    *out = (sbx_port_expose){.internal = x.internal, .external = x.external, .udp = x.udp};
    return error_out(0, &e, err);
}

/* The checks sbxd makes but duplicates (which it names), so a bad request fails here without a
 * round trip. */
int check_network(const sbx_network *n, sbx_err *err)
{
    if (n->n_allowed_domains && !n->allow_network)
        return sbx_fail(err, SBX_ERR_VM_CONFIG,
                        "network: allowed domains need allow_network (an allowlist narrows "
                        "network access, it does not grant it)");
    if ((n->n_allowed_domains && !n->allowed_domains) || (n->n_expose && !n->expose))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "network: a list has a count but no entries");
    if (net_check_domains(n->allowed_domains, n->n_allowed_domains, err) < 0 ||
        net_check_expose_count(n->n_expose, err) < 0)
        goto bad;
    for (size_t i = 0; i < n->n_expose; i++)
        if (net_check_expose(n->expose[i].internal, n->expose[i].external,
                             n->expose[i].udp ? "udp" : "tcp", err) < 0)
            goto bad;
    return 0;
bad:
    if (err)
        err->code = SBX_ERR_VM_CONFIG;
    return sbx_wrap(err, "network");
}

/* The message for n in m, or NULL when n asks for nothing (no network interface). */
Sbx__Control__NetworkRequest *network_request(const sbx_network *n, network_msg *m)
{
    if (!n->allow_network && !n->n_allowed_domains && !n->n_expose)
        return NULL;
    sbx__control__network_request__init(&m->req);
    m->req.allow_network = n->allow_network;
    m->req.allowed_domains = (char **)n->allowed_domains;
    m->req.n_allowed_domains = n->n_allowed_domains;
    for (size_t i = 0; i < n->n_expose && i < SBX_EXPOSE_MAX; i++) {
        sbx__control__port_expose__init(&m->ports[i]);
        m->ports[i].internal = n->expose[i].internal;
        m->ports[i].external = n->expose[i].external;
        m->ports[i].protocol = n->expose[i].udp ? "udp" : "tcp";
        m->port_ptrs[i] = &m->ports[i];
    }
    m->req.expose = m->port_ptrs;
    m->req.n_expose = n->n_expose;
    return &m->req;
}

/* The bound ports (at most SBX_EXPOSE_MAX of them); returns how many. */
size_t ports_fill(sbx_exposed_port *out, Sbx__Control__ExposedPort *const *in, size_t n)
{
    if (n > SBX_EXPOSE_MAX)
        n = SBX_EXPOSE_MAX;
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].internal = (uint16_t)in[i]->internal;
        out[i].external = (uint16_t)in[i]->external;
        copy_text(out[i].host, sizeof out[i].host, in[i]->host);
        copy_text(out[i].protocol, sizeof out[i].protocol, in[i]->protocol);
        copy_text(out[i].url, sizeof out[i].url, in[i]->url);
    }
    return n;
}

void ports_deliver(sbx_client *c, const Sbx__Control__PortsReady *p)
{
    sbx_exposed_port ports[SBX_EXPOSE_MAX];
    if (!c->on_ports)
        return;
    size_t n = ports_fill(ports, p->ports, p->n_ports);
    c->on_ports(ports, n, c->ports_userdata);
}

int report_fill(sbx_network_report **out, const Sbx__Control__NetworkReport *in, sbx_err *err)
{
    *out = NULL;
    if (!in)
        return 0;
    sbx_network_report *r = calloc(1, sizeof *r);
    if (!r)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory for the network report");
    copy_text(r->mode, sizeof r->mode, in->mode);
    for (size_t i = 0; i < in->n_allowed_domains && i < SBX_DOMAINS_MAX; i++)
        copy_text(r->allowed_domains[r->n_allowed_domains++], sizeof r->allowed_domains[0],
                  in->allowed_domains[i]);
    for (size_t i = 0; i < in->n_blocked && i < SBX_BLOCKED_MAX; i++) {
        sbx_blocked *b = &r->blocked[r->n_blocked++];
        copy_text(b->what, sizeof b->what, in->blocked[i]->what);
        b->port = in->blocked[i]->port;
        copy_text(b->reason, sizeof b->reason, in->blocked[i]->reason);
    }
    r->blocked_total =
        in->blocked_total > r->n_blocked ? in->blocked_total : (uint32_t)r->n_blocked;
    *out = r;
    return 0;
}
