/* libsbx: a blocking client of the control protocol (proto/control.proto), and the autostart of
 * a private sbxd for users who have none running. */
#include "libsbx.h"

#include "common.h"
#include "control.pb-c.h"
#include "frame.h"
#include "limits.h"
#include "paths.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#define HELLO_TIMEOUT_MS 15000
#define STATUS_TIMEOUT_MS 15000
#define AUTOSTART_WAIT_MS 20000
/* Longer than AUTOSTART_WAIT_MS: whoever holds the lock gives up after that, so we get it. */
#define AUTOSTART_LOCK_WAIT_MS 30000
#define AUTOSTART_IDLE_EXIT "300"

typedef char socket_path_buf[sizeof(((struct sockaddr_un *)0)->sun_path)];

struct sbx_client {
    int fd;
    /* Set once the stream can no longer be trusted to be in step with the daemon (lost
     * connection, bad frame, timeout with a reply possibly still on its way). */
    bool broken;
    uint64_t next_id;
    frame_reader rd;
    socket_path_buf socket_path;
    char server[128];
};

static void reply_freep(Sbx__Control__Reply **r)
{
    if (*r)
        sbx__control__reply__free_unpacked(*r, NULL);
}
#define cleanup_reply __attribute__((cleanup(reply_freep)))

static void writer_freep(frame_writer *w)
{
    frame_writer_free(w);
}
#define cleanup_writer __attribute__((cleanup(writer_freep)))

/* Text that came from the daemon ends up on a terminal: keep control characters out of it. */
static void copy_text(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (n)
        dst[i] = '\0';
}

__attribute__((format(printf, 4, 5))) static int fail(sbx_error *e, int kind, bool transient,
                                                      const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof e->message, fmt, ap);
        va_end(ap);
        e->kind = kind;
        e->transient = transient;
    }
    return -1;
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
    case SBX_ERR_PERMISSION:
        return "PermissionError";
    case SBX_ERR_CONNECT:
        return "ConnectError";
    default:
        return "SandboxError";
    }
}

static int from_reply_error(sbx_error *e, const Sbx__Control__Error *re)
{
    if (e) {
        e->kind = re->kind ? (int)re->kind : SBX_ERR_INTERNAL;
        e->transient = re->transient;
        copy_text(e->message, sizeof e->message, re->message);
        if (!e->message[0])
            snprintf(e->message, sizeof e->message, "sbxd reported an error without a message");
    }
    return -1;
}

/* ---- transport ---- */

/* 0 and *out, or -errno. */
static int unix_connect(const char *path, int *out)
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
static int client_send(sbx_client *c, const Sbx__Control__Request *rq, sbx_error *err)
{
    cleanup_writer frame_writer w = {0};
    if (frame_writer_put(&w, &rq->base) < 0)
        return fail(err, SBX_ERR_INTERNAL, false, "encode request: %s", strerror(errno));
    while (w.off < w.len) {
        ssize_t n = send(c->fd, w.buf + w.off, w.len - w.off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            c->broken = true;
            return fail(err, SBX_ERR_COMMUNICATION, true, "send to sbxd: %s", strerror(errno));
        }
        w.off += (size_t)n;
    }
    return 0;
}

/* The next reply (any id). timeout_ms -1 waits for ever: a run ends when the daemon says so. */
static int client_recv(sbx_client *c, int timeout_ms, Sbx__Control__Reply **out, sbx_error *err)
{
    const uint8_t *data;
    size_t len;
    int rc = frame_recv(c->fd, &c->rd, &data, &len, timeout_ms);
    if (rc == 1) {
        *out = sbx__control__reply__unpack(NULL, len, data);
        if (*out)
            return 0;
        c->broken = true;
        return fail(err, SBX_ERR_PROTOCOL, false, "sbxd sent a malformed reply (%zu bytes)", len);
    }
    c->broken = true;
    if (rc == 0)
        return fail(err, SBX_ERR_COMMUNICATION, true, "sbxd closed the connection");
    if (errno == ETIMEDOUT)
        return fail(err, SBX_ERR_COMMUNICATION, true, "no reply from sbxd within %d s",
                    timeout_ms / 1000);
    if (errno == EMSGSIZE)
        return fail(err, SBX_ERR_PROTOCOL, false, "sbxd sent a frame over the %u-byte cap",
                    FRAME_MAX_WORKER);
    if (errno == EPROTO)
        return fail(err, SBX_ERR_COMMUNICATION, true, "sbxd closed the connection mid-frame");
    return fail(err, SBX_ERR_COMMUNICATION, true, "read from sbxd: %s", strerror(errno));
}

/* Replies for our request, or id 0 (the daemon's way to report a connection-level error). */
static int client_recv_for(sbx_client *c, uint64_t id, int timeout_ms, Sbx__Control__Reply **out,
                           sbx_error *err)
{
    for (;;) {
        if (client_recv(c, timeout_ms, out, err) < 0)
            return -1;
        if ((*out)->id == id || (*out)->id == 0)
            return 0;
        /* Only one request is in flight per client, so anything else is stale: drop it. */
        sbx__control__reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
}

static int unexpected(sbx_client *c, const Sbx__Control__Reply *r, const char *waiting_for,
                      sbx_error *err)
{
    c->broken = true;
    return fail(err, SBX_ERR_PROTOCOL, false, "sbxd sent reply body %d while %s", r->body_case,
                waiting_for);
}

