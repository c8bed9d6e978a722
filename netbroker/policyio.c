/* What the broker reads once at start, before it narrows its privileges: the policy frame sbxd
 * wrote into a pipe, the operator's hosts file, and the listening sockets of exposed ports.
 * The policy comes from sbxd, but it is still checked here as if it did not. */
#include "broker.h"
#include "frame.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

static void policy_pb_free(Sbx__Net__NetPolicy **p)
{
    if (*p)
        sbx__net__net_policy__free_unpacked(*p, NULL);
}

int policy_read(int fd, broker_policy *p, sbx_err *err)
{
    memset(p, 0, sizeof *p);
    frame_reader r;
    frame_reader_init(&r, BROKER_MAX_POLICY);
    const uint8_t *data;
    size_t len;
    int rc = frame_recv(fd, &r, &data, &len, BROKER_POLICY_DEADLINE_MS);
    if (rc <= 0) {
        int e = rc == 0 ? EPROTO : errno;
        frame_reader_free(&r);
        if (rc == 0)
            return sbx_fail(err, e, "policy: the pipe closed before a policy arrived");
        return sbx_fail(err, e, "policy: %s",
                        e == ETIMEDOUT  ? "none arrived within 5 s"
                        : e == EMSGSIZE ? "larger than 64 KiB"
                                        : strerror(e));
    }
    __attribute__((cleanup(policy_pb_free))) Sbx__Net__NetPolicy *pb =
        sbx__net__net_policy__unpack(NULL, len, data);
    frame_reader_free(&r);
    if (!pb)
        return sbx_fail(err, EPROTO, "policy: not a NetPolicy message");
    p->mode = net_mode_parse(pb->mode);
    if (p->mode == NET_NONE)
        return sbx_fail(err, EINVAL, "policy: mode `%.32s` is not ports, allowlist or open",
                        pb->mode);
    if (p->mode == NET_ALLOWLIST && pb->n_allowed_domains == 0)
        return sbx_fail(err, EINVAL, "policy: allowlist mode without a domain");
    if (p->mode != NET_ALLOWLIST && pb->n_allowed_domains)
        return sbx_fail(err, EINVAL, "policy: allowed domains in %s mode", pb->mode);
    if (net_check_domains((const char *const *)pb->allowed_domains, pb->n_allowed_domains, err) < 0)
        return sbx_wrap(err, "policy");
    if (net_check_expose_count(pb->n_expose, err) < 0)
        return sbx_wrap(err, "policy");
    for (size_t i = 0; i < pb->n_expose; i++)
        if (net_check_expose(pb->expose[i]->internal, pb->expose[i]->external,
                             pb->expose[i]->protocol, err) < 0)
            return sbx_wrap(err, "policy");
    p->domains = calloc(pb->n_allowed_domains ? pb->n_allowed_domains : 1, sizeof *p->domains);
    if (!p->domains)
        return sbx_fail(err, ENOMEM, "policy: out of memory");
    for (size_t i = 0; i < pb->n_allowed_domains; i++) {
        char d[BROKER_NAME_MAX + 2];
        net_normalize_domain(pb->allowed_domains[i], d, sizeof d);
        if (!(p->domains[i] = strdup(d))) {
            policy_free(p);
            return sbx_fail(err, ENOMEM, "policy: out of memory");
        }
        p->n_domains++;
    }
    p->allow_private = pb->allow_private;
    p->connect_timeout_ms =
        pb->connect_timeout_ms ? pb->connect_timeout_ms : BROKER_DEFAULT_CONNECT_MS;
    if (p->connect_timeout_ms > BROKER_MAX_CONNECT_MS)
        p->connect_timeout_ms = BROKER_MAX_CONNECT_MS;
    if (pb->hosts_file[0] && hosts_load(p, pb->hosts_file, err) < 0) {
        policy_free(p);
        return -1;
    }
    p->pb = steal_ptr(&pb);
    return 0;
}

void policy_free(broker_policy *p)
{
    for (size_t i = 0; i < p->n_domains; i++)
        free(p->domains[i]);
    free(p->domains);
    free(p->hosts);
    policy_pb_free(&p->pb);
    memset(p, 0, sizeof *p);
}

/* A name as the hosts file or a request spells it, as compared: lower case, no trailing dot.
 * false when it is empty or longer than a DNS name. */
static bool name_key(const char *s, size_t len, char *out)
{
    if (len && s[len - 1] == '.')
        len--;
    if (len == 0 || len > BROKER_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = '\0';
    return true;
}

static int hosts_line(broker_policy *p, char *line, const char *path, sbx_err *err)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    char *save = NULL;
    char *ip = strtok_r(line, " \t\r", &save);
    struct in_addr a;
    if (!ip || inet_pton(AF_INET, ip, &a) != 1)
        return 0; /* blank, a comment, or IPv6: the guest has no IPv6 */
    for (char *name; (name = strtok_r(NULL, " \t\r", &save));) {
        if (p->n_hosts == BROKER_HOSTS_MAX_ENTRIES)
            return sbx_fail(err, E2BIG, "hosts file `%s`: more than %u names", path,
                            BROKER_HOSTS_MAX_ENTRIES);
        hosts_entry *e = &p->hosts[p->n_hosts];
        if (!name_key(name, strlen(name), e->name))
            continue;
        e->addr = a.s_addr;
        p->n_hosts++;
    }
    return 0;
}

int hosts_load(broker_policy *p, const char *path, sbx_err *err)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return sbx_fail(err, errno, "hosts file `%s`: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return sbx_fail(err, EINVAL, "hosts file `%s`: not a regular file", path);
    cleanup_free char *buf = malloc(BROKER_HOSTS_MAX_BYTES + 2);
    if (!buf)
        return sbx_fail(err, ENOMEM, "hosts file: out of memory");
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, BROKER_HOSTS_MAX_BYTES + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return sbx_fail(err, errno, "hosts file `%s`: %s", path, strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > BROKER_HOSTS_MAX_BYTES)
            return sbx_fail(err, EFBIG, "hosts file `%s`: larger than 1 MiB", path);
    }
    buf[len] = '\0';
    free(p->hosts);
    p->n_hosts = 0;
    p->hosts = calloc(BROKER_HOSTS_MAX_ENTRIES, sizeof *p->hosts);
    if (!p->hosts)
        return sbx_fail(err, ENOMEM, "hosts file: out of memory");
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (hosts_line(p, line, path, err) < 0)
            return -1;
    /* Give back what the cap reserved but the file did not use. */
    hosts_entry *fit = realloc(p->hosts, (p->n_hosts ? p->n_hosts : 1) * sizeof *p->hosts);
    if (fit)
        p->hosts = fit;
    return 0;
}

size_t hosts_lookup(const broker_policy *p, const char *name, uint32_t *out, size_t max)
{
    char key[BROKER_NAME_MAX + 1];
    if (!name_key(name, strlen(name), key))
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < p->n_hosts && n < max; i++) {
        if (strcmp(p->hosts[i].name, key))
            continue;
        bool dup = false;
        for (size_t j = 0; j < n; j++)
            dup |= out[j] == p->hosts[i].addr;
        if (!dup)
            out[n++] = p->hosts[i].addr;
    }
    return n;
}

static int listen_one(const Sbx__Control__PortExpose *x, bool udp, uint16_t *port, sbx_err *err)
{
    const char *proto = udp ? "udp" : "tcp";
    cleanup_close int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_fail(err, errno, "expose %u/%s: socket: %s", x->internal, proto,
                        strerror(errno));
    /* A port whose last user left connections in TIME_WAIT is free for a new listener. */
    int one = 1;
    if (!udp && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        return sbx_fail(err, errno, "expose %u/%s: SO_REUSEADDR: %s", x->internal, proto,
                        strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)x->external),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return sbx_fail(err, errno, "expose %u/%s: bind 127.0.0.1:%u: %s", x->internal, proto,
                        x->external, strerror(errno));
    if (!udp && listen(fd, 16) < 0)
        return sbx_fail(err, errno, "expose %u/%s: listen on 127.0.0.1:%u: %s", x->internal, proto,
                        x->external, strerror(errno));
    socklen_t sl = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        return sbx_fail(err, errno, "expose %u/%s: getsockname: %s", x->internal, proto,
                        strerror(errno));
    *port = ntohs(sa.sin_port);
    return steal_fd(&fd);
}

int listen_open(const broker_policy *p, int *fds, Sbx__Control__ExposedPort *ports,
                char (*strs)[3][64], sbx_err *err)
{
    for (size_t i = 0; i < p->pb->n_expose; i++) {
        const Sbx__Control__PortExpose *x = p->pb->expose[i];
        bool udp = !strcmp(x->protocol, "udp");
        uint16_t port = 0;
        fds[i] = listen_one(x, udp, &port, err);
        if (fds[i] < 0) {
            for (size_t j = 0; j < i; j++)
                close(fds[j]);
            return -1;
        }
        sbx__control__exposed_port__init(&ports[i]);
        ports[i].internal = x->internal;
        ports[i].external = port;
        snprintf(strs[i][0], sizeof strs[i][0], "127.0.0.1");
        snprintf(strs[i][1], sizeof strs[i][1], "%s", udp ? "udp" : "tcp");
        if (udp)
            strs[i][2][0] = '\0';
        else
            snprintf(strs[i][2], sizeof strs[i][2], "http://127.0.0.1:%u", port);
        ports[i].host = strs[i][0];
        ports[i].protocol = strs[i][1];
        ports[i].url = strs[i][2];
    }
    return 0;
}
