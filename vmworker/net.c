/* The worker's side of the NIC: start the network process (inside the jail, with the broker's
 * socket and one end of QEMU's frame socket), wait until it serves, and read back what it
 * reported (the exposed ports, what it refused). The process itself: netloop.c. */
#include "net.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "jail.h"

#define NET_START_MS 10000
#define NET_LOG_LINES 50 /* refusals logged one by one; after that one line in a hundred */

static net_shared *sh;
static pid_t net_pid = -1;

/* The network process's descriptors: its own (2 per connection, CONN_MAX of them, and a few
 * fixed ones), slirp's sockets (one per guest connection until slirp ends it), the rest kept in
 * reserve. The soft limit goes as high as the hard one allows, up to NET_FDS_WANTED. */
#define NET_FDS_WANTED 4096u
static size_t socket_cap;

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t want = rl.rlim_max < NET_FDS_WANTED ? rl.rlim_max : NET_FDS_WANTED;
        if (rl.rlim_cur < want) {
            rl.rlim_cur = want;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        getrlimit(RLIMIT_NOFILE, &rl);
    } else {
        rl.rlim_cur = 1024;
    }
    size_t ours = 2 * 256 + 64;
    socket_cap = rl.rlim_cur > ours + 64 ? (size_t)rl.rlim_cur - ours : 64;
}

size_t net_socket_cap(void)
{
    return socket_cap;
}

bool net_wanted(const Sbx__Worker__VmConfig *cfg)
{
    return cfg->net_mode && *cfg->net_mode && strcmp(cfg->net_mode, "none");
}

int net_start(const Sbx__Worker__VmConfig *cfg, int *qemu_fd, vm_err *err)
{
    if (cfg->net_fd < 3)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false,
                       "VM config: a NIC without the broker's socket");
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "mmap: %s",
                       strerror(errno));
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "socketpair: %s",
                       strerror(errno));
    pid_t parent = getpid();
    net_pid = fork();
    if (net_pid < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "fork: %s",
                       strerror(errno));
    if (net_pid == 0) {
        /* Only its two sockets and stderr: not sbxd's link, not QEMU's. */
        if (dup2(sp[1], 3) < 0 || dup2(cfg->net_fd, 4) < 0)
            _exit(1);
        close_range(5, ~0U, 0);
        sbx_child_of(parent); /* before its filter, which has no prctl */
        raise_fd_limit();
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_IGN);
        sbx_err e = {0};
        if (cfg->jail && jail_seccomp_net(&e) < 0) {
            snprintf(sh->error, sizeof sh->error, "%s", e.msg);
            sh->state = -1;
            _exit(1);
        }
        net_main(cfg, 3, 4, sh);
    }
    close(sp[1]);
    close(cfg->net_fd);
    *qemu_fd = sp[0];
    return 0;
}

int net_ready(vm_err *err)
{
    uint64_t deadline = now_ms() + NET_START_MS;
    while (sh->state == 0 && now_ms() < deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (sh->state == 1)
        return 0;
    kill(net_pid, SIGKILL);
    char why[sizeof sh->error];
    memcpy(why, sh->error, sizeof why);
    why[sizeof why - 1] = '\0';
    return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false, "network: %s",
                   sh->state < 0 ? why : "the network process did not start in time");
}

size_t net_ports(Sbx__Control__ExposedPort ***out)
{
    static Sbx__Control__ExposedPort ports[10], *ptrs[10];
    static char urls[10][40];
    /* The counts come from the network process, which parses what the guest sends: never
     * trusted beyond the arrays. */
    size_t n = sh ? sh->n_ports : 0;
    if (n > 10)
        n = 10;
    for (size_t i = 0; i < n; i++) {
        sbx__control__exposed_port__init(&ports[i]);
        ports[i].internal = sh->ports[i].internal;
        ports[i].external = sh->ports[i].external;
        ports[i].host = "127.0.0.1";
        ports[i].protocol = sh->ports[i].udp ? "udp" : "tcp";
        urls[i][0] = 0;
        if (!sh->ports[i].udp)
            snprintf(urls[i], sizeof urls[i], "http://127.0.0.1:%u", sh->ports[i].external);
        ports[i].url = urls[i];
        ptrs[i] = &ports[i];
    }
    *out = ptrs;
    return n;
}

Sbx__Control__NetworkReport *net_report(void)
{
    static Sbx__Control__NetworkReport r;
    static Sbx__Control__Blocked b[NET_MAX_BLOCKED], *bp[NET_MAX_BLOCKED];
    static net_blocked copy[NET_MAX_BLOCKED];
    sbx__control__network_report__init(&r);
    r.mode = W.cfg->net_mode;
    r.n_allowed_domains = W.cfg->n_allowed_domains;
    r.allowed_domains = W.cfg->allowed_domains;
    if (!sh)
        return &r;
    uint32_t n = __atomic_load_n(&sh->blocked_n, __ATOMIC_ACQUIRE);
    if (n > NET_MAX_BLOCKED)
        n = NET_MAX_BLOCKED;
    for (uint32_t i = 0; i < n; i++) {
        copy[i] = sh->blocked[i];
        copy[i].what[sizeof copy[i].what - 1] = 0;
        copy[i].reason[sizeof copy[i].reason - 1] = 0;
        sbx__control__blocked__init(&b[i]);
        b[i].what = copy[i].what;
        b[i].port = copy[i].port;
        b[i].reason = copy[i].reason;
        bp[i] = &b[i];
    }
    r.blocked = bp;
    r.n_blocked = n;
    r.blocked_total = sh->blocked_total;
    return &r;
}

void net_block(const char *what, uint32_t port, const char *fmt, ...)
{
    char reason[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    uint32_t total = ++sh->blocked_total;
    if (total <= NET_LOG_LINES || total % 100 == 0)
        fprintf(stderr, "sbx-vmworker[net]: refused %s port %u: %s (%u so far)\n", what, port,
                reason, total);
    uint32_t i = sh->blocked_n;
    if (i < NET_MAX_BLOCKED) {
        snprintf(sh->blocked[i].what, sizeof sh->blocked[i].what, "%s", what);
        sh->blocked[i].port = port;
        snprintf(sh->blocked[i].reason, sizeof sh->blocked[i].reason, "%s", reason);
        __atomic_store_n(&sh->blocked_n, i + 1, __ATOMIC_RELEASE);
    }
}
