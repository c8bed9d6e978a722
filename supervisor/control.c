/* The control socket: accepts clients, authenticates them by SO_PEERCRED, decodes and validates
 * every request before anything else sees it, and queues replies (write readiness is asked of
 * libev only while output is queued). A bad frame closes that one connection. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "paths.h"
#include "sbx_limits.h"
#include "cgroup.h"
#include "sbxd.h"
#include "snapshot.h"

struct client {
    int fd;
    ev_io rio, wio;
    frame_reader rd;
    frame_writer wr;
    bool helloed;
    bool closing; /* close once the queue is flushed */
    bool refused; /* peer uid not allowed: its first frame gets a permission error */
    uid_t uid;
    pid_t pid;
    client *next;
};

static int listen_fd = -1;
static ev_io listen_io;
static client *clients;
static unsigned nclients;

unsigned control_clients(void)
{
    return nclients;
}

static void client_free(client *c)
{
    ev_io_stop(EV_DEFAULT, &c->rio);
    ev_io_stop(EV_DEFAULT, &c->wio);
    close(c->fd);
    for (client **p = &clients; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    nclients--;
    sched_client_gone(c);
    session_client_gone(c);
    pool_client_gone(c);
    frame_reader_free(&c->rd);
    frame_writer_free(&c->wr);
    free(c);
    sbxd_activity();
}

static void client_flush(client *c)
{
    int rc = frame_writer_flush(&c->wr, c->fd);
    if (rc < 0) {
        slog("client pid %d: write: %s; closing", (int)c->pid, strerror(errno));
        client_free(c);
        return;
    }
    if (rc == 1)
        ev_io_start(EV_DEFAULT, &c->wio);
    else {
        ev_io_stop(EV_DEFAULT, &c->wio);
        if (c->closing)
            client_free(c);
    }
}

void control_send(client *c, Sbx__Control__Reply *r)
{
    if (!c)
        return;
    if (frame_writer_put(&c->wr, &r->base) < 0) {
        /* Never free the client under a caller's feet: the read side sees EOF next. */
        slog("client pid %d: cannot queue reply: %s; closing", (int)c->pid, strerror(errno));
        shutdown(c->fd, SHUT_RDWR);
        return;
    }
    if (!ev_is_active(&c->wio))
        client_flush(c);
}

bool control_error_transient(Sbx__Control__ErrorKind k)
{
    return k == SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL;
}

void control_send_error(client *c, uint64_t id, Sbx__Control__ErrorKind kind, bool transient,
                        const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Sbx__Control__Error e = SBX__CONTROL__ERROR__INIT;
    e.kind = kind;
    e.transient = transient;
    e.message = msg;
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = id;
    r.body_case = SBX__CONTROL__REPLY__BODY_ERROR;
    r.error = &e;
    control_send(c, &r);
}

/* Validate and fill defaults. Returns 0, or -1 after replying with a VmConfigError. */
static int check_run(client *c, uint64_t id, Sbx__Control__RunRequest *run)
{
    char msg[256];
    const Sbx__Control__ErrorKind bad = SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG;
    if (!run->language || !*run->language) {
        run->language = strdup("python");
        if (!run->language)
            return -1;
    }
    if (!limits_language_ok(run->language)) {
        control_send_error(c, id, bad, false, "unknown language `%.32s` (python, javascript, raw)",
                           run->language);
        return -1;
    }
    if (!run->timeout_seconds)
        run->timeout_seconds = cfg.default_timeout_seconds;
    if (!run->memory_mb)
        run->memory_mb = cfg.default_memory_mb;
    if (limits_check_code(run->code.data, run->code.len, msg, sizeof msg) < 0 ||
        limits_check_timeout(run->timeout_seconds, msg, sizeof msg) < 0 ||
        limits_check_memory(run->memory_mb, msg, sizeof msg) < 0 ||
        limits_check_env_count(run->n_env, msg, sizeof msg) < 0) {
        control_send_error(c, id, bad, false, "%s", msg);
        return -1;
    }
    for (size_t i = 0; i < run->n_env; i++)
        if (limits_check_env(run->env[i]->key, run->env[i]->value, msg, sizeof msg) < 0) {
            control_send_error(c, id, bad, false, "%s", msg);
            return -1;
        }
    return 0;
}

/* Sessions and files: validate what sbxd can before the request reaches a VM. Returns 0, or -1
 * after replying with a VmConfigError. */
static int check_session(client *c, uint64_t id, Sbx__Control__Request *r)
{
    char msg[300];
    const Sbx__Control__ErrorKind bad = SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG;
    const char *path = NULL;
    bool empty_ok = false;
    switch (r->body_case) {
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN: {
        Sbx__Control__SessionOpen *o = r->session_open;
        if (!o->language || !*o->language) {
            free(o->language);
            o->language = strdup("python");
            if (!o->language)
                return -1;
        }
        if (!limits_language_ok(o->language)) {
            control_send_error(c, id, bad, false,
                               "unknown language `%.32s` (python, javascript, raw)", o->language);
            return -1;
        }
        if (!o->memory_mb)
            o->memory_mb = cfg.default_memory_mb;
        if (!o->timeout_seconds)
            o->timeout_seconds = cfg.default_timeout_seconds;
        if (!o->idle_timeout_seconds)
            o->idle_timeout_seconds = cfg.session_idle_timeout_seconds;
        if (limits_check_memory(o->memory_mb, msg, sizeof msg) < 0 ||
            limits_check_timeout(o->timeout_seconds, msg, sizeof msg) < 0 ||
            limits_check_idle_timeout(o->idle_timeout_seconds, msg, sizeof msg) < 0 ||
            limits_check_env_count(o->n_env, msg, sizeof msg) < 0) {
            control_send_error(c, id, bad, false, "%s", msg);
            return -1;
        }
        for (size_t i = 0; i < o->n_env; i++)
            if (limits_check_env(o->env[i]->key, o->env[i]->value, msg, sizeof msg) < 0) {
                control_send_error(c, id, bad, false, "%s", msg);
                return -1;
            }
        return 0;
    }
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC: {
        Sbx__Control__SessionExec *e = r->session_exec;
        if (limits_check_code(e->code.data, e->code.len, msg, sizeof msg) < 0 ||
            (e->timeout_seconds && limits_check_timeout(e->timeout_seconds, msg, sizeof msg) < 0)) {
            control_send_error(c, id, bad, false, "%s", msg);
            return -1;
        }
        return 0;
    }
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
        path = r->file_write->path;
        if (r->file_write->size > SBX_MAX_FILE) {
            control_send_error(c, id, bad, false, "file is %llu bytes; the limit is %u (50 MiB)",
                               (unsigned long long)r->file_write->size, SBX_MAX_FILE);
            return -1;
        }
        if (r->file_write->sha256.len != 32) {
            control_send_error(c, id, bad, false, "FileWrite needs a 32-byte sha256");
            return -1;
        }
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_CHUNK:
        /* A zstd frame of one chunk's content can only be this big. */
        if (r->file_chunk->zdata.len > SBX_FILE_CHUNK + (64u << 10)) {
            control_send_error(c, id, bad, false, "file chunk of %zu bytes is too large",
                               r->file_chunk->zdata.len);
            return -1;
        }
        return 0;
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
        path = r->file_read->path;
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        path = r->file_list->path;
        empty_ok = true;
        break;
    default:
        return 0;
    }
    if (empty_ok && (!path || !*path))
        return 0;
    if (limits_check_guest_path(path, msg, sizeof msg) < 0) {
        control_send_error(c, id, bad, false, "%s", msg);
        return -1;
    }
    return 0;
}

static void send_status(client *c, uint64_t id)
{
    Sbx__Control__StatusReply s = SBX__CONTROL__STATUS_REPLY__INIT;
    s.version = SBX_VERSION;
    s.accelerator = (char *)(accel_verdict() ? accel_verdict() : "");
    s.accel_reason = (char *)accel_reason();
    s.running_vms = sched_running();
    s.queued = sched_queued();
    s.max_concurrent_vms = cfg.max_concurrent_vms;
    s.runs_total = sched_runs_total();
    s.uptime_ms = now_ms() - started_ms;
    s.images_dir = cfg.images_dir;
    s.pid = (uint32_t)getpid();
    s.sessions = session_count();
    s.cgroup_mode = (char *)cgroup_mode();
    uint64_t pool_mb;
    pool_stats(&s.pool_ready, &s.pool_booting, &pool_mb);
    s.pool_memory_mb = pool_mb;
    s.warm_pool_size = cfg.warm_pool_size;
    snapshot_status(&s);
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = id;
    r.body_case = SBX__CONTROL__REPLY__BODY_STATUS;
    r.status = &s;
    control_send(c, &r);
}

/* Returns false when the connection must close. */
static bool handle_frame(client *c, const uint8_t *data, size_t len)
{
    Sbx__Control__Request *req = sbx__control__request__unpack(NULL, len, data);
    if (!req) {
        slog("client pid %d: undecodable frame (%zu bytes); closing", (int)c->pid, len);
        return false;
    }
    uint64_t id = req->id;
    bool keep = true;
    if (c->refused) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PERMISSION, false,
                           "uid %u may not use this sbxd (allowed: %u, 0%s%s; see allowed_uids)",
                           (unsigned)c->uid, (unsigned)getuid(), cfg.allowed_uids[0] ? ", " : "",
                           cfg.allowed_uids);
        c->closing = true;
        goto out;
    }
    if (!c->helloed && req->body_case != SBX__CONTROL__REQUEST__BODY_HELLO) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                           "the first request on a connection must be Hello");
        c->closing = true;
        goto out;
    }
    switch (req->body_case) {
    case SBX__CONTROL__REQUEST__BODY_HELLO: {
        if (req->hello->protocol_version != SBX_PROTOCOL_VERSION) {
            control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "client speaks protocol %u, this sbxd speaks %d: upgrade the one "
                               "that is older",
                               req->hello->protocol_version, SBX_PROTOCOL_VERSION);
            c->closing = true;
            break;
        }
        c->helloed = true;
        Sbx__Control__HelloOk ok = SBX__CONTROL__HELLO_OK__INIT;
        ok.protocol_version = SBX_PROTOCOL_VERSION;
        ok.server = "sbxd/" SBX_VERSION;
        Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
        r.id = id;
        r.body_case = SBX__CONTROL__REPLY__BODY_HELLO;
        r.hello = &ok;
        control_send(c, &r);
        break;
    }
    case SBX__CONTROL__REQUEST__BODY_RUN:
        if (check_run(c, id, req->run) == 0) {
            sched_submit(c, id, req->run);
            req->run = NULL; /* now owned by the scheduler */
            req->body_case = SBX__CONTROL__REQUEST__BODY__NOT_SET;
        }
        break;
    case SBX__CONTROL__REQUEST__BODY_STATUS:
        send_status(c, id);
        break;
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN:
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC:
    case SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE:
    case SBX__CONTROL__REQUEST__BODY_SESSION_LIST:
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
    case SBX__CONTROL__REQUEST__BODY_FILE_CHUNK:
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        if (check_session(c, id, req) == 0) {
            session_handle(c, req);
            return keep; /* session_handle owns req now */
        }
        break;
    default:
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                           "unknown request type; closing the connection");
        c->closing = true;
        break;
    }
out:
    sbx__control__request__free_unpacked(req, NULL);
    return keep;
}

static void client_read_cb(EV_P_ ev_io *w, int revents)
{
    client *c = w->data;
    ssize_t n = frame_reader_fill(&c->rd, c->fd);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        if (frame_reader_pending(&c->rd))
            slog("client pid %d: connection closed inside a frame", (int)c->pid);
        client_free(c);
        return;
    }
    sbxd_activity();
    const uint8_t *f;
    size_t len;
    int r;
    while (!c->closing && (r = frame_reader_next(&c->rd, &f, &len)) != 0) {
        if (r < 0) {
            slog("client pid %d: frame over the %u-byte limit; closing", (int)c->pid,
                 FRAME_MAX_CONTROL);
            client_free(c);
            return;
        }
        if (!handle_frame(c, f, len)) {
            client_free(c);
            return;
        }
    }
    if (c->closing) {
        ev_io_stop(EV_DEFAULT, &c->rio);
        if (!frame_writer_queued(&c->wr))
            client_free(c);
    }
}

static void client_write_cb(EV_P_ ev_io *w, int revents)
{
    client_flush(w->data);
}

/* Our own user and root always; others only when listed in allowed_uids. */
static bool uid_allowed(uid_t uid)
{
    if (uid == getuid() || uid == 0)
        return true;
    for (const char *p = cfg.allowed_uids; *p;) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (end != p && v == uid)
            return true;
        p = *end ? end + 1 : end;
    }
    return false;
}

static void accept_cb(EV_P_ ev_io *w, int revents)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct ucred uc;
    socklen_t ul = sizeof uc;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0) {
        close(fd);
        return;
    }
    client *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->uid = uc.uid;
    c->pid = uc.pid;
    frame_reader_init(&c->rd, FRAME_MAX_CONTROL);
    ev_io_init(&c->rio, client_read_cb, fd, EV_READ);
    ev_io_init(&c->wio, client_write_cb, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    c->next = clients;
    clients = c;
    nclients++;
    sbxd_activity();
    if (!uid_allowed(uc.uid)) {
        /* Answer its Hello (with its id) rather than hang up while it is still writing. */
        slog("refused client pid %d uid %u (not allowed)", (int)uc.pid, (unsigned)uc.uid);
        c->refused = true;
        c->rd.max_frame = 4096;
    }
    ev_io_start(EV_DEFAULT, &c->rio);
}

int control_listen(sbx_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(cfg.socket) >= sizeof sa.sun_path)
        return sbx_fail(err, ENAMETOOLONG, "socket path `%s` is too long", cfg.socket);
    strcpy(sa.sun_path, cfg.socket);
    char dir[sizeof sa.sun_path];
    strcpy(dir, cfg.socket);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (paths_mkdir_p(dir, 0700) < 0)
            return sbx_fail(err, errno, "create `%s`: %s", dir, strerror(errno));
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_fail(err, errno, "socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        if (e != EADDRINUSE) {
            close(fd);
            return sbx_fail(err, e, "bind `%s`: %s", cfg.socket, strerror(e));
        }
        /* A live daemon answers; a stale file from a dead one does not. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            close(fd);
            return sbx_fail(err, EADDRINUSE, "another sbxd already serves `%s`", cfg.socket);
        }
        unlink(cfg.socket);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            e = errno;
            close(fd);
            return sbx_fail(err, e, "bind `%s`: %s", cfg.socket, strerror(e));
        }
    }
    chmod(cfg.socket, 0660);
    if (listen(fd, 64) < 0) {
        close(fd);
        return sbx_fail(err, errno, "listen `%s`: %s", cfg.socket, strerror(errno));
    }
    listen_fd = fd;
    ev_io_init(&listen_io, accept_cb, fd, EV_READ);
    ev_io_start(EV_DEFAULT, &listen_io);
    return 0;
}

void control_shutdown(void)
{
    while (clients)
        client_free(clients);
    if (listen_fd >= 0) {
        ev_io_stop(EV_DEFAULT, &listen_io);
        close(listen_fd);
        unlink(cfg.socket);
        listen_fd = -1;
    }
}
