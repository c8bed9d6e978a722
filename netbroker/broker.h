/* sbx-netbroker: the one process that opens host sockets for a VM. It runs in the host network
 * namespace, holds the VM's network policy (read once from sbxd, never from the worker),
 * resolves names, checks every connect against the policy and its own answers, and passes
 * connected and listening sockets to the jailed worker over a SOCK_SEQPACKET socketpair. */
#ifndef SBX_NETBROKER_H
#define SBX_NETBROKER_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"
#include "net.pb-c.h"
#include "netpolicy.h"

/* Caps on what the peers can make the broker hold. */
#define BROKER_MAX_POLICY (64u << 10)     /* the NetPolicy frame from sbxd */
#define BROKER_POLICY_DEADLINE_MS 5000    /* for that frame to arrive */
#define BROKER_MAX_MSG (64u << 10)        /* one request from the worker */
#define BROKER_SEND_DEADLINE_MS 5000      /* the one blocking send: `listening` */
#define BROKER_MAX_PENDING_CONNECT 64     /* connects in flight at once */
#define BROKER_MAX_PENDING_RESOLVE 32     /* resolver children at once */
#define BROKER_RESOLVE_DEADLINE_MS 5000   /* a resolver child ends itself after this */
#define RESOLVER_GRACE_MS 500             /* the broker gives up on it this much later */
#define BROKER_MAX_QUEUED_REPLIES 64      /* over this, stop reading requests until drained */
#define BROKER_DEFAULT_CONNECT_MS 10000u  /* NetPolicy.connect_timeout_ms 0 */
#define BROKER_MAX_CONNECT_MS 120000u     /* a larger timeout is cut to this */
#define BROKER_CACHE_NAMES 256            /* names whose answers are remembered */
#define BROKER_MAX_ADDRS 16               /* addresses per name, returned and remembered */
#define BROKER_HOSTS_MAX_BYTES (1u << 20) /* the hosts file */
#define BROKER_HOSTS_MAX_ENTRIES 10000u
#define BROKER_NAME_MAX 253u  /* a DNS name without its trailing dot */
#define BROKER_MAX_RELAYS 256 /* connections whose bytes the broker copies at once */
#define BROKER_RATE_N 512     /* resolutions, and connects, in any BROKER_RATE_MS */
#define BROKER_RATE_MS 10000u

/* One "IP name" pair of the hosts file (a line with aliases gives one per name). */
typedef struct {
    char name[BROKER_NAME_MAX + 1]; /* lower case, no trailing dot */
    uint32_t addr;                  /* network byte order */
} hosts_entry;

typedef struct {
    net_mode mode;
    char **domains; /* allowlist, normalized (lower case, no trailing dot) */
    size_t n_domains;
    bool allow_private;
    uint32_t connect_timeout_ms;
    hosts_entry *hosts;
    size_t n_hosts;
    Sbx__Net__NetPolicy *pb; /* as received (expose list) */
} broker_policy;

/* One line to stderr, "sbx-netbroker[PID]: ...": sbxd collects it into its log. */
__attribute__((format(printf, 1, 2))) void blog(const char *fmt, ...);

/* policyio.c: the policy frame from sbxd, the hosts file, the listening sockets. */
int policy_read(int fd, broker_policy *p, sbx_err *err);
void policy_free(broker_policy *p);
/* Reads path (/etc/hosts format, IPv4 lines only) into p->hosts. */
int hosts_load(broker_policy *p, const char *path, sbx_err *err);
/* The addresses the hosts file gives name (case-insensitive, exact), at most max. */
size_t hosts_lookup(const broker_policy *p, const char *name, uint32_t *out, size_t max);
/* One listening socket per p->pb->expose entry on 127.0.0.1, in order: fds[i] and ports[i]
 * (ports[i]->host, protocol and url point into strs[i], 64 bytes each). On failure every fd
 * opened so far is closed and err names the port. */
int listen_open(const broker_policy *p, int *fds, Sbx__Control__ExposedPort *ports,
                char (*strs)[3][64], sbx_err *err);

/* resolve.c: policy decisions, the answer cache and resolver children. */
/* A name the worker may have resolved: NULL, or why not (static or in buf). */
const char *resolve_check(const broker_policy *p, const char *name, char *buf, size_t n);
/* Remember addrs as answers for name (the set grows; the oldest name goes beyond the cap). */
void cache_add(const char *name, const uint32_t *addrs, size_t n);
bool cache_has(const char *name, uint32_t addr);
/* A connect the worker may make: NULL, or why not (in buf). */
const char *connect_check(const broker_policy *p, uint32_t ipv4, uint32_t port, const char *sni,
                          char *buf, size_t n);
/* Drop private addresses unless allowed; returns how many remain in addrs. */
size_t filter_private(const broker_policy *p, uint32_t *addrs, size_t n);

typedef struct {
    pid_t pid;
    int fd;
    uint64_t id;
    uint64_t deadline; /* now_ms() clock */
    char name[BROKER_NAME_MAX + 1];
} resolver_child;

/* Forks a child that runs getaddrinfo(name, AF_INET) and writes what it found to a pipe. */
int resolver_start(resolver_child *c, const char *name, uint64_t id, sbx_err *err);
/* Reads the child's answer (the pipe is readable, or the backstop deadline passed when
 * timed_out) and reaps it (or leaves it to resolver_reap). Returns the number of addresses in out
 * (<= BROKER_MAX_ADDRS), or -1 with a reason in buf. */
int resolver_finish(resolver_child *c, bool timed_out, uint32_t *out, char *buf, size_t n);
/* Reaps the children given up on at the backstop deadline that have ended since. */
void resolver_reap(void);

/* relay.c: the host sockets, kept here; the worker gets socketpair ends. */
void relay_init(void);
/* A connected host socket (taken: closed on failure); *worker_end for the worker. -1 when all
 * BROKER_MAX_RELAYS are busy or a socketpair cannot be made. */
int relay_add(int host, int *worker_end);
/* An exposed port's host socket (listening TCP, or bound UDP: then *worker_end is the worker's
 * end of its datagram pair). */
int relay_expose(int fd, bool udp, int *worker_end);
typedef void relay_inbound_fn(uint32_t expose, int worker_end);
/* Poll entries for the exposed ports (accepting TCP clients only when asked) and the relays;
 * then their handling: each new TCP client goes to inbound. */
size_t relay_poll_fill(struct pollfd *p, size_t cap, bool accepting);
void relay_poll_done(const struct pollfd *p, size_t n, relay_inbound_fn *inbound);

/* request.c: one request as received (header + NetMsg, n bytes): a NetMsg whose body is a
 * resolve or a connect (free with sbx__net__net_msg__free_unpacked), or NULL and why. */
Sbx__Net__NetMsg *request_parse(const uint8_t *buf, size_t n, const char **why);

/* confine.c: the one place privileges narrow: ids, capabilities, no_new_privs, seccomp. */
int confine(bool set_ids, uid_t uid, gid_t gid, pid_t parent, sbx_err *err);

#endif
