/* Prometheus metrics. Counters live here, fed by the ledger (results and errors), the snapshot
 * and layer caches; gauges are read from their owners at scrape time. The endpoint is a small
 * HTTP/1.0 responder on the loop: GET /metrics (anything else 404), a request of at most
 * METRICS_REQ_MAX bytes within METRICS_DEADLINE_S, at most METRICS_CONNS connections at once,
 * the answer written without blocking, then the connection closed. */
#include "metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "layers.h"
#include "ledger.h"
#include "remote.h"

#define METRICS_REQ_MAX 8192
#define METRICS_DEADLINE_S 5.
#define METRICS_CONNS 16

/* ---- the counters --------------------------------------------------------------------------- */

static const char *const kinds[] = {"run", "session_exec"};
static const char *const langs[] = {"python", "javascript", "typescript", "raw"};
static const char *const modes[] = {"cold", "warm", "restore", "other"};
static const char *const outcomes[] = {"ok", "error", "timeout"};
static const char *const phases[] = {"setup", "boot", "execute", "total"};
/* Upper bounds of the latency buckets, ms (and +Inf). */
static const unsigned buckets[] = {5,    10,   25,   50,    100,   250,   500,
                                   1000, 2500, 5000, 10000, 30000, 60000, 300000};
#define NB (ARRAY_LEN(buckets) + 1)
#define NKINDS 16 /* ErrorKind values */

static struct {
    uint64_t requests[2][4][4][3];
    uint64_t hist[4][4][NB]; /* phase, mode, bucket (not cumulative here) */
    uint64_t hist_sum[4][4], hist_count[4][4];
    uint64_t errors[NKINDS];
    uint64_t pool_hits, blocked;
    uint64_t snap_hit, snap_miss, layer_hit, layer_miss;
} M;

static int index_of(const char *const *names, size_t n, const char *v)
{
    for (size_t i = 0; i < n; i++)
        if (v && !strcmp(names[i], v))
            return (int)i;
    return -1;
}

void metrics_result(const char *kind, const char *language, const Sbx__Control__ExecResult *r)
{
    int k = index_of(kinds, ARRAY_LEN(kinds), kind);
    int l = index_of(langs, ARRAY_LEN(langs), language);
    int m = index_of(modes, 3, r->start_mode);
    if (m < 0)
        m = 3;
    int o = r->timed_out ? 2 : r->exit_code ? 1 : 0;
    if (k >= 0 && l >= 0)
        M.requests[k][l][m][o]++;
    M.pool_hits += r->warm_pool_hit;
    M.blocked += r->network ? r->network->blocked_total : 0;
    if (!r->timing)
        return;
    const uint64_t v[4] = {r->timing->setup_ms, r->timing->boot_ms, r->timing->execute_ms,
                           r->timing->total_ms};
    for (int p = 0; p < 4; p++) {
        size_t b = 0;
        while (b < ARRAY_LEN(buckets) && v[p] > buckets[b])
            b++;
        M.hist[p][m][b]++;
        M.hist_sum[p][m] += v[p];
        M.hist_count[p][m]++;
    }
}

void metrics_error(Sbx__Control__ErrorKind kind)
{
    M.errors[(unsigned)kind < NKINDS ? (unsigned)kind : 0]++;
}

void metrics_snapshot(bool hit)
{
    *(hit ? &M.snap_hit : &M.snap_miss) += 1;
}

void metrics_layer(bool hit)
{
    *(hit ? &M.layer_hit : &M.layer_miss) += 1;
}

/* ---- the text ------------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} text;

__attribute__((format(printf, 2, 3))) static void put(text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0 || t->oom)
            return;
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 65536) + (size_t)n;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = true;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
}

static void head(text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP sbx_%s %s\n# TYPE sbx_%s %s\n", name, help, name, type);
}

static uint64_t self_rss_bytes(void)
{
    unsigned long long size = 0, resident = 0;
    cleanup_fclose FILE *f = fopen("/proc/self/statm", "re");
    if (!f || fscanf(f, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void render(text *t)
{
    head(t, "requests_total", "counter",
         "Runs and session execs that ended with a result, by language, start mode and outcome");
    for (size_t k = 0; k < 2; k++)
        for (size_t l = 0; l < 4; l++)
            for (size_t m = 0; m < 4; m++)
                for (size_t o = 0; o < 3; o++)
                    if (M.requests[k][l][m][o])
                        put(t,
                            "sbx_requests_total{kind=\"%s\",language=\"%s\",start_mode=\"%s\","
                            "outcome=\"%s\"} %llu\n",
                            kinds[k], langs[l], modes[m], outcomes[o],
                            (unsigned long long)M.requests[k][l][m][o]);
    head(t, "errors_total", "counter", "Requests that ended with an error, by kind");
    for (size_t e = 1; e < NKINDS; e++)
        if (M.errors[e]) {
            const ProtobufCEnumValue *v =
                protobuf_c_enum_descriptor_get_value(&sbx__control__error_kind__descriptor, (int)e);
            put(t, "sbx_errors_total{kind=\"%s\"} %llu\n", v ? v->name : "unknown",
                (unsigned long long)M.errors[e]);
        }
    for (size_t p = 0; p < 4; p++) {
        char name[64], help[160];
        snprintf(name, sizeof name, "%s_seconds", phases[p]);
        snprintf(help, sizeof help, "Time of the %s phase of runs and session execs, by start mode",
                 phases[p]);
        head(t, name, "histogram", help);
        for (size_t m = 0; m < 4; m++) {
            if (!M.hist_count[p][m])
                continue;
            uint64_t cum = 0;
            for (size_t b = 0; b < NB; b++) {
                cum += M.hist[p][m][b];
                if (b < ARRAY_LEN(buckets))
                    put(t, "sbx_%s_bucket{start_mode=\"%s\",le=\"%g\"} %llu\n", name, modes[m],
                        buckets[b] / 1000.0, (unsigned long long)cum);
                else
                    put(t, "sbx_%s_bucket{start_mode=\"%s\",le=\"+Inf\"} %llu\n", name, modes[m],
                        (unsigned long long)cum);
            }
            put(t, "sbx_%s_sum{start_mode=\"%s\"} %.3f\nsbx_%s_count{start_mode=\"%s\"} %llu\n",
                name, modes[m], (double)M.hist_sum[p][m] / 1000.0, name, modes[m],
                (unsigned long long)M.hist_count[p][m]);
        }
    }
    unsigned ready, booting;
    uint64_t pool_mb;
    pool_stats(&ready, &booting, &pool_mb);
    Sbx__Control__StatusReply st = SBX__CONTROL__STATUS_REPLY__INIT;
    layers_status(&st);
    remote_status(&st);
    const Sbx__Control__RemoteCacheInfo *rc = st.remote_cache;
    const struct {
        const char *name, *type, *help;
        uint64_t v;
    } simple[] = {
        {"vms_running", "gauge", "VMs holding a slot (runs, sessions, pool, templates, installs)",
         sched_running()},
        {"queued_requests", "gauge", "Requests waiting for a VM slot", sched_queued()},
        {"max_concurrent_vms", "gauge", "The slot count", cfg.max_concurrent_vms},
        {"pool_ready", "gauge", "Warm pool VMs ready", ready},
        {"pool_booting", "gauge", "Warm pool VMs starting", booting},
        {"pool_hits_total", "counter", "Runs served by a warm pool VM", M.pool_hits},
        {"sessions_open", "gauge", "Sessions open", session_count()},
        {"snapshot_hits_total", "counter", "VMs started from a memory snapshot", M.snap_hit},
        {"snapshot_misses_total", "counter", "VMs that booted cold for want of a snapshot",
         M.snap_miss},
        {"package_layer_hits_total", "counter", "Requests whose package layer was ready",
         M.layer_hit},
        {"package_layer_misses_total", "counter",
         "Requests that waited for their package layer to be made", M.layer_miss},
        {"package_layer_cache_bytes", "gauge", "Package layers (and their snapshots) on disk",
         st.layer_cache_bytes},
        {"remote_cache_hits_total", "counter", "Layers fetched from the remote cache",
         rc ? rc->hits : 0},
        {"remote_cache_misses_total", "counter", "Layers the remote cache did not have",
         rc ? rc->misses : 0},
        {"remote_cache_errors_total", "counter", "Remote cache downloads that failed",
         rc ? rc->errors : 0},
        {"remote_cache_uploads_total", "counter", "Layers uploaded", rc ? rc->uploads_done : 0},
        {"remote_cache_upload_errors_total", "counter", "Uploads that failed",
         rc ? rc->uploads_failed : 0},
        {"network_blocked_total", "counter", "Network attempts the policy refused", M.blocked},
        {"runs_total", "counter", "Runs served since start", sched_runs_total()},
        {"audit_lines_dropped_total", "counter", "Audit lines not written", ledger_audit_dropped()},
        {"daemon_rss_bytes", "gauge", "sbxd's resident memory", self_rss_bytes()},
    };
    for (size_t i = 0; i < ARRAY_LEN(simple); i++) {
        head(t, simple[i].name, simple[i].type, simple[i].help);
        put(t, "sbx_%s %llu\n", simple[i].name, (unsigned long long)simple[i].v);
    }
}

/* ---- the endpoint --------------------------------------------------------------------------- */

typedef struct scrape {
    int fd;
    ev_io io;
    ev_timer deadline;
    char req[METRICS_REQ_MAX + 1];
    size_t got;
    text out;
    size_t sent;
    struct scrape *next;
} scrape;

static int listen_fd = -1;
static ev_io listen_io;
static scrape *scrapes;
static unsigned nscrapes;
static char unix_path[108];

static void scrape_end(scrape *s)
{
    ev_io_stop(EV_DEFAULT, &s->io);
    ev_timer_stop(EV_DEFAULT, &s->deadline);
    close(s->fd);
    for (scrape **p = &scrapes; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    free(s->out.p);
    free(s);
    nscrapes--;
}

static void scrape_late(EV_P_ ev_timer *w, int revents)
{
    scrape_end(w->data);
}

static void scrape_write(EV_P_ ev_io *w, int revents)
{
    scrape *s = w->data;
    while (s->sent < s->out.len) {
        ssize_t n = send(s->fd, s->out.p + s->sent, s->out.len - s->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0)
            break;
        s->sent += (size_t)n;
    }
    scrape_end(s);
}

static void answer(scrape *s)
{
    bool ok = !strncmp(s->req, "GET /metrics ", 13) || !strncmp(s->req, "GET /metrics?", 13);
    text body = {0};
    if (ok)
        render(&body);
    else
        put(&body, "not found: GET /metrics\n");
    if (body.oom) {
        free(body.p);
        scrape_end(s);
        return;
    }
    put(&s->out,
        "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
        ok ? "200 OK" : "404 Not Found",
        ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain", body.len);
    put(&s->out, "%.*s", (int)body.len, body.p ? body.p : "");
    free(body.p);
    if (s->out.oom) {
        scrape_end(s);
        return;
    }
    ev_io_stop(EV_DEFAULT, &s->io);
    ev_io_init(&s->io, scrape_write, s->fd, EV_WRITE);
    s->io.data = s;
    ev_io_start(EV_DEFAULT, &s->io);
}

static void scrape_read(EV_P_ ev_io *w, int revents)
{
    scrape *s = w->data;
    ssize_t n = recv(s->fd, s->req + s->got, METRICS_REQ_MAX - s->got, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        scrape_end(s);
        return;
    }
    s->got += (size_t)n;
    s->req[s->got] = '\0';
    if (strstr(s->req, "\r\n\r\n") || strstr(s->req, "\n\n"))
        answer(s);
    else if (s->got == METRICS_REQ_MAX)
        scrape_end(s); /* a request bigger than any scrape: no answer */
}

static void accept_cb(EV_P_ ev_io *w, int revents)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        scrape *s = nscrapes < METRICS_CONNS ? calloc(1, sizeof *s) : NULL;
        if (!s) {
            close(fd); /* busy: the scraper tries again */
            continue;
        }
        s->fd = fd;
        ev_io_init(&s->io, scrape_read, fd, EV_READ);
        s->io.data = s;
        ev_io_start(EV_DEFAULT, &s->io);
        ev_timer_init(&s->deadline, scrape_late, METRICS_DEADLINE_S, 0.);
        s->deadline.data = s;
        ev_timer_start(EV_DEFAULT, &s->deadline);
        s->next = scrapes;
        scrapes = s;
        nscrapes++;
    }
}

/* An IPv4 address:port, or a Unix socket path. -1 with err. */
static int open_listener(const char *where, sbx_err *err)
{
    int fd;
    if (where[0] == '/') {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(where) >= sizeof sa.sun_path)
            return sbx_fail(err, ENAMETOOLONG, "`%s` is too long for a socket path", where);
        strcpy(sa.sun_path, where);
        struct stat st;
        if (lstat(where, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(where); /* a previous daemon's */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return sbx_fail(err, e, "listen on `%s`: %s", where, strerror(e));
        }
        snprintf(unix_path, sizeof unix_path, "%s", where);
        return fd;
    }
    char host[64];
    unsigned port = 0;
    const char *colon = strrchr(where, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!colon || (size_t)(colon - where) >= sizeof host || sscanf(colon + 1, "%u", &port) != 1 ||
        port == 0 || port > 65535)
        return sbx_fail(err, EINVAL, "`%s` is not ADDRESS:PORT or a socket path", where);
    snprintf(host, sizeof host, "%.*s", (int)(colon - where), where);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return sbx_fail(err, EINVAL, "`%s`: not an IPv4 address", host);
    sa.sin_port = htons((uint16_t)port);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return sbx_fail(err, e, "listen on %s: %s", where, strerror(e));
    }
    return fd;
}

void metrics_init(void)
{
    if (!cfg.metrics_listen[0])
        return;
    sbx_err err = {0};
    listen_fd = open_listener(cfg.metrics_listen, &err);
    if (listen_fd < 0) {
        slog("warning: metrics off: %s", err.msg);
        return;
    }
    ev_io_init(&listen_io, accept_cb, listen_fd, EV_READ);
    ev_io_start(EV_DEFAULT, &listen_io);
    slog("metrics: http://%s/metrics", cfg.metrics_listen);
}

void metrics_shutdown(void)
{
    while (scrapes)
        scrape_end(scrapes);
    if (listen_fd >= 0) {
        ev_io_stop(EV_DEFAULT, &listen_io);
        close(listen_fd);
        listen_fd = -1;
    }
    if (unix_path[0])
        unlink(unix_path);
}
