/* The broker's decisions and what they rest on: which names may be resolved, which connects may
 * be made, the answers this broker itself gave (a connect in allowlist mode must go to one of
 * them), and resolution in short-lived children so that a slow resolver never stalls the loop.
 *
 * Why children: getaddrinfo blocks, for as long as resolv.conf's timeout x attempts x servers
 * (30 s with three servers and the defaults). In a child per request, ended by its own 5 s
 * timer, other requests (and connects in flight) keep moving and the wait is bounded whatever
 * resolv.conf says. The child inherits the broker's seccomp filter. */
#include "broker.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netdb.h>
#include <resolv.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

/* A name as the guest may ask for it (a DNS hostname, underscores allowed for service names):
 * letters, digits, '-', '_', non-empty labels of <= 63 bytes, <= 253 bytes in all. */
static bool name_ok(const char *name)
{
    size_t n = strlen(name), label = 0;
    if (n && name[n - 1] == '.')
        n--;
    if (n == 0 || n > BROKER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (!isalnum(c) && c != '-' && c != '_') {
            return false;
        } else if (++label > 63) {
            return false;
        }
    }
    return label > 0;
}

const char *resolve_check(const broker_policy *p, const char *name, char *buf, size_t n)
{
    if (p->mode != NET_ALLOWLIST && p->mode != NET_OPEN)
        return "network is off";
    if (!name_ok(name))
        return "invalid name";
    if (p->mode == NET_ALLOWLIST &&
        !net_name_allowed(name, (const char *const *)p->domains, p->n_domains))
        return "not on the allowlist";
    (void)buf;
    (void)n;
    return NULL;
}

size_t filter_private(const broker_policy *p, uint32_t *addrs, size_t n)
{
    if (p->allow_private)
        return n;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!net_ipv4_private(addrs[i]))
            addrs[k++] = addrs[i];
    return k;
}

/* The answers given, per name: a connect in allowlist mode must go to one of the addresses
 * returned for its SNI. A name's set grows with each answer (the guest may still hold an older
 * one) up to BROKER_MAX_ADDRS, the oldest address going first; beyond BROKER_CACHE_NAMES the
 * name answered longest ago goes. Answers do not expire: the broker lives as long as its VM. */
typedef struct {
    char name[BROKER_NAME_MAX + 1]; /* "" when free */
    uint32_t addrs[BROKER_MAX_ADDRS];
    size_t n;
    uint64_t used;
} cache_slot;

static cache_slot cache[BROKER_CACHE_NAMES];
static uint64_t cache_clock;

static bool cache_key(const char *name, char *out)
{
    net_normalize_domain(name, out, BROKER_NAME_MAX + 1);
    return strlen(name) <= BROKER_NAME_MAX + 1 && out[0];
}

static cache_slot *cache_find(const char *key)
{
    for (size_t i = 0; i < BROKER_CACHE_NAMES; i++)
        if (cache[i].name[0] && !strcmp(cache[i].name, key))
            return &cache[i];
    return NULL;
}

void cache_add(const char *name, const uint32_t *addrs, size_t n)
{
    char key[BROKER_NAME_MAX + 1];
    if (!cache_key(name, key) || n == 0)
        return;
    cache_slot *s = cache_find(key);
    if (!s) {
        s = &cache[0];
        for (size_t i = 0; i < BROKER_CACHE_NAMES; i++) {
            if (!cache[i].name[0]) {
                s = &cache[i];
                break;
            }
            if (cache[i].used < s->used)
                s = &cache[i];
        }
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", key);
    }
    s->used = ++cache_clock;
    for (size_t i = 0; i < n && i < BROKER_MAX_ADDRS; i++) {
        bool have = false;
        for (size_t j = 0; j < s->n; j++)
            have |= s->addrs[j] == addrs[i];
        if (have)
            continue;
        if (s->n == BROKER_MAX_ADDRS) {
            memmove(s->addrs, s->addrs + 1, (BROKER_MAX_ADDRS - 1) * sizeof s->addrs[0]);
            s->n--;
        }
        s->addrs[s->n++] = addrs[i];
    }
}

bool cache_has(const char *name, uint32_t addr)
{
    char key[BROKER_NAME_MAX + 1];
    if (!cache_key(name, key))
        return false;
    const cache_slot *s = cache_find(key);
    for (size_t i = 0; s && i < s->n; i++)
        if (s->addrs[i] == addr)
            return true;
    return false;
}

const char *connect_check(const broker_policy *p, uint32_t ipv4, uint32_t port, const char *sni,
                          char *buf, size_t n)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ipv4, ip, sizeof ip);
    if (p->mode != NET_ALLOWLIST && p->mode != NET_OPEN)
        return "network is off";
    if (port == 0 || port > 65535) {
        snprintf(buf, n, "port %u out of range", port);
        return buf;
    }
    if (p->mode == NET_ALLOWLIST) {
        if (port != 443) {
            snprintf(buf, n, "port %u refused: only TLS on 443", port);
            return buf;
        }
        if (!sni[0])
            return "no SNI: only TLS to a named server";
        if (!name_ok(sni))
            return "the SNI is not a valid name";
        if (!net_name_allowed(sni, (const char *const *)p->domains, p->n_domains)) {
            snprintf(buf, n, "SNI %.253s not allowed", sni);
            return buf;
        }
        if (!cache_has(sni, ipv4)) {
            snprintf(buf, n, "%s was not resolved for %.253s", ip, sni);
            return buf;
        }
    }
    /* In allowlist mode the answers were already filtered; checked again all the same. */
    if (!p->allow_private && net_ipv4_private(ipv4)) {
        snprintf(buf, n, "%s is a private address", ip);
        return buf;
    }
    return NULL;
}

/* What a resolver child writes, in one write(2) (atomic: well under PIPE_BUF). */
enum { RES_OK, RES_NONAME, RES_AGAIN, RES_FAIL };
typedef struct {
    uint8_t status, n;
    uint32_t addrs[BROKER_MAX_ADDRS];
} res_answer;

static __attribute__((noreturn)) void resolver_child_run(int out, const char *name, pid_t parent)
{
    /* A child whose broker died goes too; one that is still resolving at the deadline ends by
     * its own timer (SIGALRM, default action), so that the broker needs no kill(2) at all. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    struct itimerval t = {.it_value = {.tv_sec = BROKER_RESOLVE_DEADLINE_MS / 1000,
                                       .tv_usec = BROKER_RESOLVE_DEADLINE_MS % 1000 * 1000}};
    if (setitimer(ITIMER_REAL, &t, NULL) < 0)
        _exit(1);
    /* The name as asked, never with resolv.conf's search list or local domain appended. */
    if (res_init() == 0)
        _res.options &= ~(unsigned long)(RES_DNSRCH | RES_DEFNAMES);
    res_answer a = {.status = RES_OK};
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc == EAI_NONAME || rc == EAI_NODATA || rc == EAI_ADDRFAMILY)
        a.status = RES_NONAME;
    else if (rc == EAI_AGAIN)
        a.status = RES_AGAIN;
    else if (rc != 0)
        a.status = RES_FAIL;
    for (struct addrinfo *ai = rc == 0 ? res : NULL; ai && a.n < BROKER_MAX_ADDRS;
         ai = ai->ai_next) {
        if (ai->ai_family != AF_INET || ai->ai_addrlen < sizeof(struct sockaddr_in))
            continue;
        uint32_t v = ((const struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr;
        bool dup = false;
        for (size_t j = 0; j < a.n; j++)
            dup |= a.addrs[j] == v;
        if (!dup)
            a.addrs[a.n++] = v;
    }
    size_t len = offsetof(res_answer, addrs) + a.n * sizeof a.addrs[0];
    _exit(write(out, &a, len) == (ssize_t)len ? 0 : 1);
}

int resolver_start(resolver_child *c, const char *name, uint64_t id, sbx_err *err)
{
    memset(c, 0, sizeof *c);
    net_normalize_domain(name, c->name, sizeof c->name);
    c->id = id;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return sbx_fail(err, errno, "resolve %s: pipe: %s", c->name, strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        return sbx_fail(err, e, "resolve %s: fork: %s", c->name, strerror(e));
    }
    if (pid == 0) {
        /* Nothing of the broker's but its answer pipe and stderr: not the worker's socket, not
         * connects in flight, not relays (a child that parses DNS answers needs none of them). */
        for (int fd = 3; fd < 4096; fd++)
            if (fd != p[1])
                close(fd);
        resolver_child_run(p[1], c->name, parent);
    }
    close(p[1]);
    c->pid = pid;
    c->fd = p[0];
    /* The child's own timer ends it at BROKER_RESOLVE_DEADLINE_MS; this is the backstop. */
    c->deadline = now_ms() + BROKER_RESOLVE_DEADLINE_MS + RESOLVER_GRACE_MS;
    return 0;
}

/* Children given up at the backstop deadline: their timer ends them soon after, and they are
 * reaped here rather than by a wait for any child, which could take the status of a child whose
 * answer is still to be read. */
static pid_t abandoned[2 * BROKER_MAX_PENDING_RESOLVE];
static size_t n_abandoned;

void resolver_reap(void)
{
    for (size_t i = n_abandoned; i-- > 0;) {
        pid_t r = waitpid(abandoned[i], NULL, WNOHANG);
        if (r == abandoned[i] || (r < 0 && errno == ECHILD))
            abandoned[i] = abandoned[--n_abandoned];
    }
}

static void abandon(pid_t pid)
{
    if (n_abandoned == ARRAY_LEN(abandoned)) {
        /* Every one of them is past its own timer: the oldest is dead or about to be. */
        while (waitpid(abandoned[0], NULL, 0) < 0 && errno == EINTR)
            ;
        abandoned[0] = abandoned[--n_abandoned];
    }
    abandoned[n_abandoned++] = pid;
}

int resolver_finish(resolver_child *c, bool timed_out, uint32_t *out, char *buf, size_t n)
{
    res_answer a = {.status = RES_FAIL};
    ssize_t got = -1;
    if (!timed_out) {
        do
            got = read(c->fd, &a, sizeof a);
        while (got < 0 && errno == EINTR);
    }
    close(c->fd);
    c->fd = -1;
    int st = 0;
    if (timed_out) {
        abandon(c->pid);
    } else {
        /* The pipe is readable: the child wrote its answer and is in _exit, or it died. Either
         * way it is gone or going, so this wait is short. */
        while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
            ;
    }
    c->pid = 0;
    if (timed_out || (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)) {
        snprintf(buf, n, "resolution timed out after %d s", BROKER_RESOLVE_DEADLINE_MS / 1000);
        return -1;
    }
    /* A child the filter killed is a syscall missing from confine.c: say so in the log. */
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)
        blog("resolver child for %s killed by seccomp (SIGSYS)", c->name);
    if (got < (ssize_t)offsetof(res_answer, addrs) || a.n > BROKER_MAX_ADDRS ||
        (size_t)got != offsetof(res_answer, addrs) + a.n * sizeof a.addrs[0]) {
        snprintf(buf, n, "resolver failed");
        return -1;
    }
    switch (a.status) {
    case RES_OK:
        if (a.n == 0)
            break;
        memcpy(out, a.addrs, a.n * sizeof a.addrs[0]);
        return a.n;
    case RES_NONAME:
        break;
    case RES_AGAIN:
        snprintf(buf, n, "temporary resolver failure");
        return -1;
    default:
        snprintf(buf, n, "resolver failed");
        return -1;
    }
    snprintf(buf, n, "no such name");
    return -1;
}
