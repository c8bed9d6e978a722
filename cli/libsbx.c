/* libsbx: a blocking client of the control protocol (proto/control.proto), and the autostart of
 * a private sbxd for users who have none running. */
#include "libsbx.h"

#include "common.h"
#include "control.pb-c.h"
#include "frame.h"
#include "sbx_limits.h"
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
#define AUTOSTART_IDLE_EXIT "300" /* seconds */

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

static void wrap(sbx_error *e, const char *prefix)
{
    if (e) {
        char old[sizeof e->message];
        memcpy(old, e->message, sizeof old);
        snprintf(e->message, sizeof e->message, "%s: %s", prefix, old);
    }
}

/* ---- autostart ---- */

/* Messages from the forked children to the parent; each is one write(2) under PIPE_BUF. */
enum { SPAWN_PID = 1, SPAWN_ERRNO = 2 };
struct spawn_msg {
    int32_t what;
    int32_t value;
};

static void spawn_report(int fd, int32_t what, int32_t value)
{
    struct spawn_msg m = {what, value};
    (void)!write(fd, &m, sizeof m);
}

/* The daemon process up to exec. Only async-signal-safe calls from here on: the program that
 * links us may have threads. */
static void daemon_exec(const char *bin, char *const argv[], const char *log_path)
{
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (log < 0)
        log = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null < 0 || log < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
        return;
    /* Nothing of the caller's may live on in the daemon; least of all the autostart lock, whose
     * inheritance would block every later autostart for as long as the daemon runs. */
    if (close_range(3, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
        for (int fd = 3; fd < 65536; fd++)
            (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    /* exec keeps ignored signals ignored; the daemon should start from defaults. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        (void)sigaction(s, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (strchr(bin, '/'))
        execv(bin, argv);
    else
        execvp(bin, argv);
}

/* Double fork with setsid: the daemon is nobody's child here, has no controlling terminal, and
 * survives the caller's exit and the terminal's ^C. */
__attribute__((noreturn)) static void daemon_child(int report, const char *bin, char *const argv[],
                                                   const char *log_path)
{
    if (setsid() < 0) {
        spawn_report(report, SPAWN_ERRNO, errno);
        _exit(1);
    }
    pid_t pid = fork();
    if (pid != 0) {
        spawn_report(report, pid > 0 ? SPAWN_PID : SPAWN_ERRNO, pid > 0 ? pid : errno);
        _exit(0);
    }
    daemon_exec(bin, argv, log_path);
    spawn_report(report, SPAWN_ERRNO, errno);
    _exit(127);
}

/* Start `bin --socket SOCK --idle-exit-seconds 300` detached (the idle period from
 * EXEC_SANDBOX_IDLE_EXIT_SECONDS instead when the user set it). Returns its pid, or -1. */
static pid_t daemon_spawn(const char *bin, const char *sock, const char *log_path, sbx_error *err)
{
    const char *idle = getenv("EXEC_SANDBOX_IDLE_EXIT_SECONDS");
    char *const argv[] = {(char *)bin,
                          (char *)"--socket",
                          (char *)sock,
                          (char *)"--idle-exit-seconds",
                          (char *)(idle && *idle ? idle : AUTOSTART_IDLE_EXIT),
                          NULL};
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return fail(err, SBX_ERR_CONNECT, false, "pipe: %s", strerror(errno));
    cleanup_close int rd = p[0];
    cleanup_close int wr = p[1];
    pid_t child = fork();
    if (child < 0)
        return fail(err, SBX_ERR_CONNECT, true, "fork: %s", strerror(errno));
    if (child == 0)
        daemon_child(wr, bin, argv, log_path);
    close(steal_fd(&wr));
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
        ;
    /* EOF comes once the middle child has exited and the daemon has exec'd (CLOEXEC). */
    pid_t daemon = 0;
    int exec_errno = 0;
    struct spawn_msg m;
    ssize_t n;
    while ((n = read(rd, &m, sizeof m)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof m)
            break;
        if (m.what == SPAWN_PID)
            daemon = m.value;
        else
            exec_errno = m.value;
    }
    if (exec_errno)
        return fail(err, SBX_ERR_CONNECT, false, "start `%s`: %s%s", bin, strerror(exec_errno),
                    exec_errno == ENOENT && !strchr(bin, '/')
                        ? " (put sbxd in $PATH or beside this program, or set EXEC_SANDBOX_SBXD)"
                        : "");
    if (daemon <= 0)
        return fail(err, SBX_ERR_CONNECT, false, "start `%s`: no daemon process came up", bin);
    return daemon;
}

/* $EXEC_SANDBOX_SBXD, else sbxd beside our executable (a build tree or an install prefix keeps
 * the two together), else `sbxd` for execvp to find in $PATH. */
static void find_sbxd(char *out, size_t n)
{
    const char *env = getenv("EXEC_SANDBOX_SBXD");
    if (env && *env && strlen(env) < n) {
        memcpy(out, env, strlen(env) + 1);
        return;
    }
    char dir[PATH_MAX];
    if (paths_exe_dir(dir, sizeof dir) == 0) {
        int r = snprintf(out, n, "%s/sbxd", dir);
        if (r > 0 && (size_t)r < n && access(out, X_OK) == 0)
            return;
    }
    snprintf(out, n, "sbxd");
}

/* The last non-empty line of the daemon's log, to say why it died without making the user open
 * the file. */
static void log_tail(const char *log_path, char *out, size_t n)
{
    out[0] = '\0';
    cleanup_close int fd = open(log_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    char buf[4096];
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)sizeof buf - 1 ? end - (off_t)(sizeof buf - 1) : 0;
    ssize_t got = pread(fd, buf, sizeof buf - 1, start);
    if (got <= 0)
        return;
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
        got--;
    buf[got] = '\0';
    char *line = memrchr(buf, '\n', (size_t)got);
    copy_text(out, n, line ? line + 1 : buf);
}

__attribute__((format(printf, 2, 3))) static void progress(const sbx_connect_opts *o,
                                                           const char *fmt, ...)
{
    if (!o->on_progress)
        return;
    char msg[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->on_progress(msg, o->userdata);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait for the autostart lock with a bound, so a wedged peer cannot hang us for ever. */
static int lock_wait(int fd, const char *lock_path, const sbx_connect_opts *o, sbx_error *err)
{
    uint64_t deadline = now_ms() + AUTOSTART_LOCK_WAIT_MS;
    bool told = false;
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return fail(err, SBX_ERR_CONNECT, false, "lock `%s`: %s", lock_path, strerror(errno));
        if (!told)
            progress(o, "waiting for another client to start the sandbox daemon");
        told = true;
        if (now_ms() >= deadline)
            return fail(err, SBX_ERR_CONNECT, true, "lock `%s`: still held after %d s", lock_path,
                        AUTOSTART_LOCK_WAIT_MS / 1000);
        sleep_ms(50);
    }
    return 0;
}

static int path_join(char *out, size_t n, const char *dir, const char *name)
{
    int r = snprintf(out, n, "%s/%s", dir, name);
    return (r < 0 || (size_t)r >= n) ? -1 : 0;
}

/* Start a private daemon on `sock` and return a connected fd in *out. */
static int autostart(const char *sock, const sbx_connect_opts *o, int *out, sbx_error *err)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", sock);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (paths_mkdir_p(dir, 0700) < 0)
        return fail(err, SBX_ERR_CONNECT, false, "create `%s`: %s", dir, strerror(errno));
    /* The socket is how this user's code reaches the daemon: in a directory others can write,
     * they could put their own socket in its place. */
    struct stat st;
    if (stat(dir, &st) < 0)
        return fail(err, SBX_ERR_CONNECT, false, "stat `%s`: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & (S_IWGRP | S_IWOTH)))
        return fail(err, SBX_ERR_CONNECT, false,
                    "will not start a daemon with its socket in `%s`: the directory must belong "
                    "to this user and be writable by nobody else",
                    dir);
    char lock_path[PATH_MAX], log_path[PATH_MAX];
    if (path_join(lock_path, sizeof lock_path, dir, "autostart.lock") < 0 ||
        path_join(log_path, sizeof log_path, dir, "sbxd.log") < 0)
        return fail(err, SBX_ERR_CONNECT, false, "socket directory `%s` is too long", dir);

    cleanup_close int lk =
        open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (lk < 0)
        return fail(err, SBX_ERR_CONNECT, false, "open `%s`: %s", lock_path, strerror(errno));
    if (lock_wait(lk, lock_path, o, err) < 0)
        return -1;
    /* Whoever held the lock before us may have started it already. */
    int r = unix_connect(sock, out);
    if (r == 0)
        return 0;
    /* A stale socket file (ECONNREFUSED) is sbxd's to replace: it probes before it unlinks. */
    if (r != -ENOENT && r != -ECONNREFUSED)
        return fail(err, SBX_ERR_CONNECT, false, "connect to `%s`: %s", sock, strerror(-r));

    char bin[PATH_MAX];
    find_sbxd(bin, sizeof bin);
    progress(o, "starting sandbox daemon %s (log: %s)", bin, log_path);
    pid_t pid = daemon_spawn(bin, sock, log_path, err);
    if (pid < 0)
        return -1;
    uint64_t deadline = now_ms() + AUTOSTART_WAIT_MS;
    for (;;) {
        r = unix_connect(sock, out);
        if (r == 0)
            return 0;
        if (r != -ENOENT && r != -ECONNREFUSED)
            return fail(err, SBX_ERR_CONNECT, false, "connect to `%s`: %s", sock, strerror(-r));
        if (kill(pid, 0) < 0 && errno == ESRCH) {
            char tail[200];
            log_tail(log_path, tail, sizeof tail);
            return fail(err, SBX_ERR_CONNECT, false, "sbxd exited during startup%s%s (log: %s)",
                        tail[0] ? ": " : "", tail, log_path);
        }
        if (now_ms() >= deadline)
            return fail(err, SBX_ERR_CONNECT, true,
                        "sbxd (pid %d) did not listen on `%s` within %d s (log: %s)", (int)pid,
                        sock, AUTOSTART_WAIT_MS / 1000, log_path);
        sleep_ms(20);
    }
}

/* ---- connecting ---- */

static void client_freep(sbx_client **c)
{
    sbx_close(*c);
}
#define cleanup_client __attribute__((cleanup(client_freep)))

static int client_hello(sbx_client *c, const char *name, sbx_error *err)
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
        wrap(err, "hello");
        return -1;
    }
    switch (r->body_case) {
    case SBX__CONTROL__REPLY__BODY_HELLO:
        if (r->hello->protocol_version != SBX_PROTOCOL_VERSION)
            return fail(err, SBX_ERR_PROTOCOL, false,
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

int sbx_connect_ex(const sbx_connect_opts *opts, sbx_client **out, sbx_error *err)
{
    static const sbx_connect_opts defaults;
    const sbx_connect_opts *o = opts ? opts : &defaults;
    *out = NULL;
    socket_path_buf path;
    if (o->socket_path && *o->socket_path) {
        if (strlen(o->socket_path) >= sizeof path)
            return fail(err, SBX_ERR_CONNECT, false,
                        "socket path `%s` is too long (at most %zu bytes)", o->socket_path,
                        sizeof path - 1);
        memcpy(path, o->socket_path, strlen(o->socket_path) + 1);
    } else if (paths_default_socket(path, sizeof path) < 0) {
        return fail(err, SBX_ERR_CONNECT, false,
                    "the default socket path is too long; set EXEC_SANDBOX_SOCKET");
    }

    cleanup_close int fd = -1;
    int r = unix_connect(path, &fd);
    if (r < 0) {
        bool absent = r == -ENOENT || r == -ECONNREFUSED;
        if (r == -EACCES || r == -EPERM)
            return fail(err, SBX_ERR_PERMISSION, false, "connect to `%s`: %s", path, strerror(-r));
        if (!absent || !(o->flags & SBX_CONNECT_AUTOSTART))
            return fail(err, SBX_ERR_CONNECT, false, "connect to `%s`: %s", path, strerror(-r));
        if (autostart(path, o, &fd, err) < 0)
            return -1;
    }

    cleanup_client sbx_client *c = calloc(1, sizeof *c);
    if (!c)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    c->fd = steal_fd(&fd);
    c->next_id = 1;
    frame_reader_init(&c->rd, FRAME_MAX_WORKER);
    memcpy(c->socket_path, path, sizeof path);
    if (client_hello(c, o->client_name ? o->client_name : "libsbx/" SBX_VERSION, err) < 0)
        return -1;
    *out = steal_ptr(&c);
    return 0;
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

/* ---- running code ---- */

/* What was streamed of one output stream: counted, and kept up to the stream's limit in case the
 * final result comes without it. */
struct sink {
    char *buf;
    size_t len, cap, limit;
    size_t streamed;
};

static void sink_add(struct sink *s, const uint8_t *data, size_t n)
{
    s->streamed += n;
    size_t take = s->len < s->limit ? s->limit - s->len : 0;
    if (take > n)
        take = n;
    if (take == 0)
        return;
    if (s->len + take > s->cap) {
        size_t ncap = s->cap ? s->cap : 4096;
        while (ncap < s->len + take)
            ncap *= 2;
        if (ncap > s->limit)
            ncap = s->limit;
        char *nb = realloc(s->buf, ncap);
        if (!nb)
            return; /* only a fallback copy: the result normally carries the output */
        s->buf = nb;
        s->cap = ncap;
    }
    memcpy(s->buf + s->len, data, take);
    s->len += take;
}

static int dup_bytes(char **dst, size_t *dlen, const void *src, size_t n)
{
    *dst = malloc(n + 1);
    if (!*dst)
        return -1;
    if (n)
        memcpy(*dst, src, n);
    (*dst)[n] = '\0';
    *dlen = n;
    return 0;
}

/* One stream of the final result: the result's bytes, unless streaming delivered more than the
 * result holds (a daemon that does not repeat streamed output); then what was streamed. */
static int take_stream(char **dst, size_t *dlen, const ProtobufCBinaryData *res, struct sink *s,
                       const sbx_run_opts *o, sbx_stream which)
{
    if (o->on_output && s->streamed < res->len)
        o->on_output(which, (const char *)res->data + s->streamed, res->len - s->streamed,
                     o->userdata);
    if (s->len > res->len)
        return dup_bytes(dst, dlen, s->buf, s->len);
    return dup_bytes(dst, dlen, res->data, res->len);
}

static int result_fill(sbx_result *out, const Sbx__Control__ExecResult *r, struct sink sinks[2],
                       const sbx_run_opts *o, sbx_error *err)
{
    if (take_stream(&out->stdout_buf, &out->stdout_len, &r->stdout, &sinks[0], o,
                    SBX_STREAM_STDOUT) < 0 ||
        take_stream(&out->stderr_buf, &out->stderr_len, &r->stderr, &sinks[1], o,
                    SBX_STREAM_STDERR) < 0) {
        sbx_result_free(out);
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory for the result");
    }
    out->exit_code = r->exit_code;
    out->timed_out = r->timed_out;
    out->stdout_truncated = r->stdout_truncated;
    out->stderr_truncated = r->stderr_truncated;
    out->execution_time_ms = r->execution_time_ms;
    out->external_cpu_time_ms = r->external_cpu_time_ms;
    out->external_memory_peak_mb = r->external_memory_peak_mb;
    if (r->timing) {
        out->timing.setup_ms = r->timing->setup_ms;
        out->timing.boot_ms = r->timing->boot_ms;
        out->timing.execute_ms = r->timing->execute_ms;
        out->timing.total_ms = r->timing->total_ms;
    }
    copy_text(out->accelerator, sizeof out->accelerator, r->accelerator);
    out->warm_pool_hit = r->warm_pool_hit;
    copy_text(out->start_mode, sizeof out->start_mode, r->start_mode);
    return 0;
}

/* The same checks sbxd makes, so a bad request fails here with the same kind and no round
 * trip; the daemon still checks for itself. */
static int run_validate(const sbx_run_opts *o, const char *lang, size_t code_len, sbx_error *err)
{
    char why[256];
    if (!limits_language_ok(lang))
        return fail(err, SBX_ERR_VM_CONFIG, false,
                    "unknown language `%.64s` (python, javascript or raw)", lang);
    if (!o->code)
        return fail(err, SBX_ERR_VM_CONFIG, false, "no code given");
    if (limits_check_code((const uint8_t *)o->code, code_len, why, sizeof why) < 0 ||
        (o->timeout_seconds && limits_check_timeout(o->timeout_seconds, why, sizeof why) < 0) ||
        (o->memory_mb && limits_check_memory(o->memory_mb, why, sizeof why) < 0) ||
        limits_check_env_count(o->n_env, why, sizeof why) < 0)
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    for (size_t i = 0; i < o->n_env; i++) {
        if (!o->env[i].key || !o->env[i].value)
            return fail(err, SBX_ERR_VM_CONFIG, false, "environment variable %zu has no %s", i,
                        o->env[i].key ? "value" : "name");
        if (limits_check_env(o->env[i].key, o->env[i].value, why, sizeof why) < 0)
            return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    }
    return 0;
}

int sbx_run(sbx_client *c, const sbx_run_opts *o, sbx_result *out, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    const char *lang = o->language ? o->language : "python";
    size_t code_len = o->code_len ? o->code_len : (o->code ? strlen(o->code) : 0);
    if (run_validate(o, lang, code_len, err) < 0)
        return -1;
    if (c->broken)
        return fail(err, SBX_ERR_COMMUNICATION, true,
                    "the connection to sbxd was lost earlier; reconnect");

    cleanup_free Sbx__Control__EnvVar *vars = calloc(o->n_env ? o->n_env : 1, sizeof *vars);
    cleanup_free Sbx__Control__EnvVar **varp = calloc(o->n_env ? o->n_env : 1, sizeof *varp);
    if (!vars || !varp)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    for (size_t i = 0; i < o->n_env; i++) {
        sbx__control__env_var__init(&vars[i]);
        vars[i].key = (char *)o->env[i].key;
        vars[i].value = (char *)o->env[i].value;
        varp[i] = &vars[i];
    }
    Sbx__Control__RunRequest run = SBX__CONTROL__RUN_REQUEST__INIT;
    run.language = (char *)lang;
    run.code.data = (uint8_t *)o->code;
    run.code.len = code_len;
    run.timeout_seconds = o->timeout_seconds;
    run.memory_mb = o->memory_mb;
    run.n_env = o->n_env;
    run.env = varp;
    run.stream = o->on_output != NULL;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_RUN;
    rq.run = &run;
    if (client_send(c, &rq, err) < 0)
        return -1;

    struct sink sinks[2] = {{.limit = SBX_MAX_STDOUT}, {.limit = SBX_MAX_STDERR}};
    int rc = 1;
    while (rc == 1) {
        cleanup_reply Sbx__Control__Reply *r = NULL;
        if (client_recv_for(c, rq.id, -1, &r, err) < 0) {
            wrap(err, "during the run");
            rc = -1;
            break;
        }
        switch (r->body_case) {
        case SBX__CONTROL__REPLY__BODY_CHUNK: {
            const Sbx__Control__OutputChunk *ch = r->chunk;
            bool is_err = ch->stream == SBX__CONTROL__STREAM__STREAM_STDERR;
            if (!o->on_output || ch->data.len == 0)
                break;
            sink_add(&sinks[is_err], ch->data.data, ch->data.len);
            o->on_output(is_err ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT,
                         (const char *)ch->data.data, ch->data.len, o->userdata);
            break;
        }
        case SBX__CONTROL__REPLY__BODY_RESULT:
            rc = result_fill(out, r->result, sinks, o, err);
            break;
        case SBX__CONTROL__REPLY__BODY_ERROR:
            if (r->error->kind == SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL)
                c->broken = true;
            rc = from_reply_error(err, r->error);
            break;
        default:
            rc = unexpected(c, r, "waiting for a run result", err);
            break;
        }
    }
    free(sinks[0].buf);
    free(sinks[1].buf);
    return rc;
}

void sbx_result_free(sbx_result *r)
{
    free(r->stdout_buf);
    free(r->stderr_buf);
    memset(r, 0, sizeof *r);
}

/* ---- status ---- */

int sbx_status(sbx_client *c, sbx_status_info *out, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    if (c->broken)
        return fail(err, SBX_ERR_COMMUNICATION, true,
                    "the connection to sbxd was lost earlier; reconnect");
    Sbx__Control__StatusRequest st = SBX__CONTROL__STATUS_REQUEST__INIT;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_STATUS;
    rq.status = &st;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (client_send(c, &rq, err) < 0 || client_recv_for(c, rq.id, STATUS_TIMEOUT_MS, &r, err) < 0) {
        wrap(err, "status");
        return -1;
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
        return from_reply_error(err, r->error);
    if (r->body_case != SBX__CONTROL__REPLY__BODY_STATUS)
        return unexpected(c, r, "waiting for status", err);
    const Sbx__Control__StatusReply *s = r->status;
    copy_text(out->version, sizeof out->version, s->version);
    copy_text(out->accelerator, sizeof out->accelerator, s->accelerator);
    copy_text(out->accel_reason, sizeof out->accel_reason, s->accel_reason);
    out->running_vms = s->running_vms;
    out->queued = s->queued;
    out->max_concurrent_vms = s->max_concurrent_vms;
    out->runs_total = s->runs_total;
    out->uptime_ms = s->uptime_ms;
    copy_text(out->images_dir, sizeof out->images_dir, s->images_dir);
    out->pid = s->pid;
    return 0;
}

/* ---- helpers ---- */

/* Length of the well-formed UTF-8 sequence at p (Unicode table 3-7), or 0 if there is none;
 * *bad gets how many bytes form the maximal ill-formed prefix to replace with one U+FFFD. */
static size_t utf8_seq(const unsigned char *p, size_t avail, size_t *bad)
{
    unsigned char b = p[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        need = 2;
    else if (b >= 0xe0 && b <= 0xef) {
        need = 3;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 4;
        if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        unsigned char min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xbf;
        if (i >= avail || p[i] < min || p[i] > max) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

char *sbx_utf8_sanitize(const char *data, size_t len, size_t *out_len)
{
    /* Worst case: every byte becomes a 3-byte U+FFFD. */
    if (len > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)data;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t bad = 0, n = utf8_seq(p + i, len - i, &bad);
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i += bad;
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}
