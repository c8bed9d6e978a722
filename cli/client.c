/* libsbx's connection: connect and the trust checks on the per-user socket, Hello, the framing
 * of requests and replies, and the error kinds. It never decides what a request means: the
 * rooms for runs, sessions, files and status build them and read their replies. */
#include "libsbx_int.h"

#include <sys/socket.h>
#include <sys/un.h>

#define HELLO_TIMEOUT_MS 15000

static void writer_freep(frame_writer *w)
{
    frame_writer_free(w);
}
#define cleanup_writer __attribute__((cleanup(writer_freep)))

/* Text that came from the daemon ends up on a terminal: keep control characters out of it. */
void copy_text(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (n)
        dst[i] = '\0';
}

const char *sbx_error_kind_name(int kind)
{
    switch (kind) {
    case SBX_ERR_VM_CONFIG:
        return "VmConfigError";
    case SBX_ERR_VM_TIMEOUT:
        return "VmTimeoutError";
    case SBX_ERR_VM_CAPACITY:
        return "VmCapacityError";
    case SBX_ERR_COMMUNICATION:
        return "CommunicationError";
    case SBX_ERR_GUEST_AGENT:
        return "GuestAgentError";
    case SBX_ERR_PACKAGE_NOT_ALLOWED:
        return "PackageNotAllowedError";
    case SBX_ERR_SNAPSHOT:
        return "SnapshotError";
    case SBX_ERR_SESSION_CLOSED:
        return "SessionClosedError";
    case SBX_ERR_PROTOCOL:
        return "ProtocolError";
    case SBX_ERR_ASSET:
        return "AssetError";
    case SBX_ERR_INTERNAL:
        return "InternalError";
    case SBX_ERR_PACKAGE_INSTALL:
        return "PackageInstallError";
    case SBX_ERR_PERMISSION:
        return "PermissionError";
    case SBX_ERR_CONNECT:
        return "ConnectError";
    case SBX_ERR_LOCAL_FILE:
        return "LocalFileError";
    default:
        return "SandboxError";
    }
}

int from_reply_error(sbx_err *e, const Sbx__Control__Error *re)
{
    if (e) {
        e->code =
            (re->kind ? (int)re->kind : SBX_ERR_INTERNAL) | (re->transient ? ERR_TRANSIENT : 0);
        copy_text(e->msg, sizeof e->msg, re->message);
        if (!e->msg[0])
            snprintf(e->msg, sizeof e->msg, "sbxd reported an error without a message");
    }
    return -1;
}

/* The one place an internal error becomes the public one: every API function ends here. */
int error_out(int rc, const sbx_err *e, sbx_error *out)
{
    _Static_assert(sizeof out->message == sizeof e->msg, "sbx_error and sbx_err messages differ");
    if (rc < 0 && out) {
        out->kind = e->code & ~ERR_TRANSIENT;
        out->transient = (e->code & ERR_TRANSIENT) != 0;
        memcpy(out->message, e->msg, sizeof out->message);
    }
    return rc;
}

/* ---- transport ---- */

/* 0 and *out, or -errno. */
int unix_connect(const char *path, int *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    cleanup_close int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    *out = steal_fd(&fd);
    return 0;
}

/* The frame is built by the shared writer; only the write differs from frame_send: send(2) with
 * MSG_NOSIGNAL, so that a daemon going away is an error value here and not a SIGPIPE that kills
 * the program linking us. */
int client_send(sbx_client *c, const Sbx__Control__Request *rq, sbx_err *err)
{
    cleanup_writer frame_writer w = {0};
    if (frame_writer_put(&w, &rq->base) < 0)
        return sbx_fail(err, SBX_ERR_INTERNAL, "encode request: %s", strerror(errno));
    while (w.off < w.len) {
        ssize_t n = send(c->fd, w.buf + w.off, w.len - w.off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            c->broken = true;
            return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT, "send to sbxd: %s",
                            strerror(errno));
        }
        w.off += (size_t)n;
    }
    return 0;
}

/* The next reply (any id). timeout_ms -1 waits for ever: a run ends when the daemon says so. */
int client_recv(sbx_client *c, int timeout_ms, Sbx__Control__Reply **out, sbx_err *err)
{
    const uint8_t *data;
    size_t len;
    int rc = frame_recv(c->fd, &c->rd, &data, &len, timeout_ms);
    if (rc == 1) {
        *out = sbx__control__reply__unpack(NULL, len, data);
        if (*out)
            return 0;
        c->broken = true;
        return sbx_fail(err, SBX_ERR_PROTOCOL, "sbxd sent a malformed reply (%zu bytes)", len);
    }
    c->broken = true;
    if (rc == 0)
        return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT, "sbxd closed the connection");
    if (errno == ETIMEDOUT)
        return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT,
                        "no reply from sbxd within %d s", timeout_ms / 1000);
    if (errno == EMSGSIZE)
        return sbx_fail(err, SBX_ERR_PROTOCOL, "sbxd sent a frame over the %u-byte cap",
                        FRAME_MAX_WORKER);
    if (errno == EPROTO)
        return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT,
                        "sbxd closed the connection mid-frame");
    return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT, "read from sbxd: %s",
                    strerror(errno));
}

/* Replies for our request, or id 0 (the daemon's way to report a connection-level error). A
 * PortsReady for our request is handed to c->on_ports on the way, a Progress to c->on_progress,
 * and the wait goes on. */
int client_recv_for(sbx_client *c, uint64_t id, int timeout_ms, Sbx__Control__Reply **out,
                    sbx_err *err)
{
    for (;;) {
        if (client_recv(c, timeout_ms, out, err) < 0)
            return -1;
        bool ports = (*out)->body_case == SBX__CONTROL__REPLY__BODY_PORTS;
        bool progress = (*out)->body_case == SBX__CONTROL__REPLY__BODY_PROGRESS;
        if ((*out)->id == id && ports)
            ports_deliver(c, (*out)->ports); /* early news; the reply is still to come */
        else if ((*out)->id == id && progress)
            progress_deliver(c, (*out)->progress);
        else if ((*out)->id == id || (*out)->id == 0)
            return 0;
        /* Only one request is in flight per client, so anything else is stale: drop it. */
        sbx__control__reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
}

/* A person's one line: control characters out, at most 200 bytes. */
void progress_deliver(sbx_client *c, const Sbx__Control__Progress *p)
{
    char msg[201];
    size_t n = 0;
    for (const char *s = p->message; s && *s && n < sizeof msg - 1; s++)
        msg[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s;
    msg[n] = '\0';
    if (c->on_progress)
        c->on_progress(msg, c->ports_userdata);
}

int unexpected(sbx_client *c, const Sbx__Control__Reply *r, const char *waiting_for, sbx_err *err)
{
    c->broken = true;
    return sbx_fail(err, SBX_ERR_PROTOCOL, "sbxd sent reply body %d while %s", r->body_case,
                    waiting_for);
}

int reply_error(sbx_client *c, const Sbx__Control__Error *re, sbx_err *err)
{
    /* The daemon only calls a request a protocol error when it could not make sense of our
     * stream; what follows on it cannot be trusted either. */
    if (re->kind == SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL)
        c->broken = true;
    return from_reply_error(err, re);
}

int client_ready(const sbx_client *c, sbx_err *err)
{
    if (c->broken)
        return sbx_fail(err, SBX_ERR_COMMUNICATION | ERR_TRANSIENT,
                        "the connection to sbxd was lost earlier; reconnect");
    return 0;
}

/* Send rq under a fresh id and wait for its reply; an error reply is returned as -1 with *out
 * still set (the caller frees it either way). */
int request(sbx_client *c, Sbx__Control__Request *rq, int timeout_ms, const char *what,
            Sbx__Control__Reply **out, sbx_err *err)
{
    *out = NULL;
    if (client_ready(c, err) < 0)
        return -1;
    rq->id = c->next_id++;
    if (client_send(c, rq, err) < 0 || client_recv_for(c, rq->id, timeout_ms, out, err) < 0) {
        return sbx_wrap(err, "%s", what);
    }
    if ((*out)->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
        return reply_error(c, (*out)->error, err);
    return 0;
}

/* ---- connecting ---- */

static void client_freep(sbx_client **c)
{
    sbx_close(*c);
}
#define cleanup_client __attribute__((cleanup(client_freep)))

static int client_hello(sbx_client *c, const char *name, sbx_err *err)
{
    Sbx__Control__Hello h = SBX__CONTROL__HELLO__INIT;
    h.protocol_version = SBX_PROTOCOL_VERSION;
    h.client = (char *)name;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_HELLO;
    rq.hello = &h;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (client_send(c, &rq, err) < 0 || client_recv_for(c, rq.id, HELLO_TIMEOUT_MS, &r, err) < 0) {
        return sbx_wrap(err, "hello");
    }
    switch (r->body_case) {
    case SBX__CONTROL__REPLY__BODY_HELLO:
        if (r->hello->protocol_version != SBX_PROTOCOL_VERSION)
            return sbx_fail(err, SBX_ERR_PROTOCOL,
                            "sbxd at `%s` speaks protocol %u; this client speaks %u (run matching "
                            "versions of sbx and sbxd)",
                            c->socket_path, r->hello->protocol_version, SBX_PROTOCOL_VERSION);
        copy_text(c->server, sizeof c->server, r->hello->server);
        return 0;
    case SBX__CONTROL__REPLY__BODY_ERROR:
        return from_reply_error(err, r->error);
    default:
        return unexpected(c, r, "waiting for hello", err);
    }
}

/* The per-user socket is found by name: before anything goes there, its directory must be this
 * user's alone, or someone else could have put their own daemon's socket in it. A directory that
 * does not exist yet is fine: the autostart creates it, and checks it. */
static int user_socket_dir_trusted(const char *sock, sbx_err *err)
{
    char dir[PATH_MAX];
    socket_dir(sock, dir, sizeof dir);
    sbx_err e = {0};
    cleanup_close int fd = paths_dir_open(dir, getuid(), 0, &e);
    if (fd >= 0 || e.code == ENOENT)
        return 0;
    return sbx_fail(
        err, SBX_ERR_PERMISSION,
        "refusing the per-user socket `%s`: %s, so nothing was sent to it. It must be a "
        "directory of uid %u that nobody else can write: remove it, or name a daemon's "
        "socket with --socket or EXEC_SANDBOX_SOCKET",
        sock, e.msg, (unsigned)getuid());
}

static int client_connect(const sbx_connect_opts *opts, sbx_client **out, sbx_err *err)
{
    static const sbx_connect_opts defaults;
    const sbx_connect_opts *o = opts ? opts : &defaults;
    *out = NULL;
    socket_path_buf path;
    /* A socket the caller or $EXEC_SANDBOX_SOCKET names is the user's choice of daemon, whoever
     * runs it; the implicit per-user one must be this user's own. */
    bool named = (o->socket_path && *o->socket_path) || paths_socket_named();
    if (o->socket_path && *o->socket_path) {
        if (strlen(o->socket_path) >= sizeof path)
            return sbx_fail(err, SBX_ERR_CONNECT,
                            "socket path `%s` is too long (at most %zu bytes)", o->socket_path,
                            sizeof path - 1);
        memcpy(path, o->socket_path, strlen(o->socket_path) + 1);
    } else if (paths_default_socket(path, sizeof path) < 0) {
        return sbx_fail(err, SBX_ERR_CONNECT,
                        "the default socket path is too long; set EXEC_SANDBOX_SOCKET");
    }
    if (!named && user_socket_dir_trusted(path, err) < 0)
        return -1;

    cleanup_close int fd = -1;
    int r = unix_connect(path, &fd);
    if (r < 0) {
        bool absent = r == -ENOENT || r == -ECONNREFUSED;
        if (r == -EACCES || r == -EPERM)
            return sbx_fail(err, SBX_ERR_PERMISSION, "connect to `%s`: %s", path, strerror(-r));
        if (!absent || !(o->flags & SBX_CONNECT_AUTOSTART))
            return sbx_fail(err, SBX_ERR_CONNECT, "connect to `%s`: %s", path, strerror(-r));
        if (autostart(path, o, &fd, err) < 0)
            return -1;
    }

    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0)
        return sbx_fail(err, SBX_ERR_CONNECT, "connect to `%s`: SO_PEERCRED: %s", path,
                        strerror(errno));
    if (!named && peer.uid != getuid() && peer.uid != 0)
        return sbx_fail(
            err, SBX_ERR_PERMISSION,
            "refusing the daemon on the per-user socket `%s`: it runs as uid %u, not as "
            "this user (uid %u) or root, so nothing was sent to it. Remove that socket if "
            "you did not expect it; to use another user's daemon, name its socket with "
            "--socket or EXEC_SANDBOX_SOCKET",
            path, (unsigned)peer.uid, (unsigned)getuid());

    cleanup_client sbx_client *c = calloc(1, sizeof *c);
    if (!c)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    c->daemon_uid = peer.uid;
    c->fd = steal_fd(&fd);
    c->next_id = 1;
    frame_reader_init(&c->rd, FRAME_MAX_WORKER);
    memcpy(c->socket_path, path, sizeof path);
    if (client_hello(c, o->client_name ? o->client_name : "libsbx/" SBX_VERSION, err) < 0)
        return -1;
    *out = steal_ptr(&c);
    return 0;
}

int sbx_connect_ex(const sbx_connect_opts *opts, sbx_client **out, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(client_connect(opts, out, &e), &e, err);
}

int sbx_connect(const char *socket_path, unsigned flags, sbx_client **out, sbx_error *err)
{
    sbx_connect_opts o = {.socket_path = socket_path, .flags = flags};
    return sbx_connect_ex(&o, out, err);
}

const char *sbx_client_socket(const sbx_client *c)
{
    return c->socket_path;
}

const char *sbx_client_server(const sbx_client *c)
{
    return c->server;
}

bool sbx_client_usable(const sbx_client *c)
{
    return !c->broken;
}

void sbx_close(sbx_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    frame_reader_free(&c->rd);
    free(c);
}
