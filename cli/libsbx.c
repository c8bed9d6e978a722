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
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <zstd.h>

_Static_assert(SBX_FILE_MAX == SBX_MAX_FILE, "libsbx.h and sbx_limits.h disagree on file size");

#define HELLO_TIMEOUT_MS 15000
#define STATUS_TIMEOUT_MS 15000
#define ZSTD_LEVEL 3 /* fast; the socket is local, so more effort would cost more than it saves */
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
    uint32_t daemon_uid; /* SO_PEERCRED of the connection */
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
    case SBX_ERR_LOCAL_FILE:
        return "LocalFileError";
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

/* The directory a socket path lives in. */
static void socket_dir(const char *sock, char *dir, size_t n)
{
    snprintf(dir, n, "%s", sock);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, n, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
}

/* Start a private daemon on `sock` and return a connected fd in *out. */
static int autostart(const char *sock, const sbx_connect_opts *o, int *out, sbx_error *err)
{
    char dir[PATH_MAX];
    socket_dir(sock, dir, sizeof dir);
    /* The socket is how this user's code reaches the daemon: in a directory others can write,
     * they could put their own socket in its place. */
    sbx_err e = {0};
    cleanup_close int dfd = paths_dir_open(dir, getuid(), 0700, &e);
    if (dfd < 0)
        return fail(err, SBX_ERR_PERMISSION, false,
                    "will not start a daemon with its socket in `%s`: %s (it must be a directory "
                    "of uid %u that nobody else can write)",
                    dir, e.msg, (unsigned)getuid());
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

/* The per-user socket is found by name: before anything goes there, its directory must be this
 * user's alone, or someone else could have put their own daemon's socket in it. A directory that
 * does not exist yet is fine: the autostart creates it, and checks it. */
static int user_socket_dir_trusted(const char *sock, sbx_error *err)
{
    char dir[PATH_MAX];
    socket_dir(sock, dir, sizeof dir);
    sbx_err e = {0};
    cleanup_close int fd = paths_dir_open(dir, getuid(), 0, &e);
    if (fd >= 0 || e.code == ENOENT)
        return 0;
    return fail(err, SBX_ERR_PERMISSION, false,
                "refusing the per-user socket `%s`: %s, so nothing was sent to it. It must be a "
                "directory of uid %u that nobody else can write: remove it, or name a daemon's "
                "socket with --socket or EXEC_SANDBOX_SOCKET",
                sock, e.msg, (unsigned)getuid());
}

int sbx_connect_ex(const sbx_connect_opts *opts, sbx_client **out, sbx_error *err)
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
            return fail(err, SBX_ERR_CONNECT, false,
                        "socket path `%s` is too long (at most %zu bytes)", o->socket_path,
                        sizeof path - 1);
        memcpy(path, o->socket_path, strlen(o->socket_path) + 1);
    } else if (paths_default_socket(path, sizeof path) < 0) {
        return fail(err, SBX_ERR_CONNECT, false,
                    "the default socket path is too long; set EXEC_SANDBOX_SOCKET");
    }
    if (!named && user_socket_dir_trusted(path, err) < 0)
        return -1;

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

    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0)
        return fail(err, SBX_ERR_CONNECT, false, "connect to `%s`: SO_PEERCRED: %s", path,
                    strerror(errno));
    if (!named && peer.uid != getuid() && peer.uid != 0)
        return fail(err, SBX_ERR_PERMISSION, false,
                    "refusing the daemon on the per-user socket `%s`: it runs as uid %u, not as "
                    "this user (uid %u) or root, so nothing was sent to it. Remove that socket if "
                    "you did not expect it; to use another user's daemon, name its socket with "
                    "--socket or EXEC_SANDBOX_SOCKET",
                    path, (unsigned)peer.uid, (unsigned)getuid());

    cleanup_client sbx_client *c = calloc(1, sizeof *c);
    if (!c)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
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

/* Where streamed output goes during one exec. */
struct output_cb {
    sbx_output_fn fn;
    void *userdata;
};

/* One stream of the final result: the result's bytes, unless streaming delivered more than the
 * result holds (a daemon that does not repeat streamed output); then what was streamed. */
static int take_stream(char **dst, size_t *dlen, const ProtobufCBinaryData *res, struct sink *s,
                       const struct output_cb *cb, sbx_stream which)
{
    if (cb->fn && s->streamed < res->len)
        cb->fn(which, (const char *)res->data + s->streamed, res->len - s->streamed, cb->userdata);
    if (s->len > res->len)
        return dup_bytes(dst, dlen, s->buf, s->len);
    return dup_bytes(dst, dlen, res->data, res->len);
}

static int result_fill(sbx_result *out, const Sbx__Control__ExecResult *r, struct sink sinks[2],
                       const struct output_cb *cb, sbx_error *err)
{
    if (take_stream(&out->stdout_buf, &out->stdout_len, &r->stdout, &sinks[0], cb,
                    SBX_STREAM_STDOUT) < 0 ||
        take_stream(&out->stderr_buf, &out->stderr_len, &r->stderr, &sinks[1], cb,
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
    out->exec_count = r->exec_count;
    out->interpreter_reset = r->interpreter_reset;
    return 0;
}

/* Report an error that was kept aside while the transfer was brought to its end. */
static int give(sbx_error *err, const sbx_error *kept)
{
    if (err)
        *err = *kept;
    return -1;
}

static int reply_error(sbx_client *c, const Sbx__Control__Error *re, sbx_error *err)
{
    /* The daemon only calls a request a protocol error when it could not make sense of our
     * stream; what follows on it cannot be trusted either. */
    if (re->kind == SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL)
        c->broken = true;
    return from_reply_error(err, re);
}

/* The replies of one run or session exec, up to its result or error. */
static int exec_wait(sbx_client *c, uint64_t id, const struct output_cb *cb, sbx_result *out,
                     sbx_error *err)
{
    struct sink sinks[2] = {{.limit = SBX_MAX_STDOUT}, {.limit = SBX_MAX_STDERR}};
    int rc = 1;
    while (rc == 1) {
        cleanup_reply Sbx__Control__Reply *r = NULL;
        if (client_recv_for(c, id, -1, &r, err) < 0) {
            wrap(err, "during the run");
            rc = -1;
            break;
        }
        switch (r->body_case) {
        case SBX__CONTROL__REPLY__BODY_CHUNK: {
            const Sbx__Control__OutputChunk *ch = r->chunk;
            bool is_err = ch->stream == SBX__CONTROL__STREAM__STREAM_STDERR;
            if (!cb->fn || ch->data.len == 0)
                break;
            sink_add(&sinks[is_err], ch->data.data, ch->data.len);
            cb->fn(is_err ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT, (const char *)ch->data.data,
                   ch->data.len, cb->userdata);
            break;
        }
        case SBX__CONTROL__REPLY__BODY_RESULT:
            rc = result_fill(out, r->result, sinks, cb, err);
            break;
        case SBX__CONTROL__REPLY__BODY_ERROR:
            rc = reply_error(c, r->error, err);
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

static int check_env(const sbx_env *env, size_t n, sbx_error *err)
{
    char why[256];
    if (limits_check_env_count(n, why, sizeof why) < 0)
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    for (size_t i = 0; i < n; i++) {
        if (!env[i].key || !env[i].value)
            return fail(err, SBX_ERR_VM_CONFIG, false, "environment variable %zu has no %s", i,
                        env[i].key ? "value" : "name");
        if (limits_check_env(env[i].key, env[i].value, why, sizeof why) < 0)
            return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    }
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
        (o->memory_mb && limits_check_memory(o->memory_mb, why, sizeof why) < 0))
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    return check_env(o->env, o->n_env, err);
}

static int client_ready(const sbx_client *c, sbx_error *err)
{
    if (c->broken)
        return fail(err, SBX_ERR_COMMUNICATION, true,
                    "the connection to sbxd was lost earlier; reconnect");
    return 0;
}

/* EnvVar messages pointing at the caller's strings; free() the array (one allocation). */
static Sbx__Control__EnvVar **env_msgs(const sbx_env *env, size_t n)
{
    size_t k = n ? n : 1;
    Sbx__Control__EnvVar **p = calloc(1, k * sizeof *p + k * sizeof **p);
    if (!p)
        return NULL;
    Sbx__Control__EnvVar *vars = (Sbx__Control__EnvVar *)(p + k);
    for (size_t i = 0; i < n; i++) {
        sbx__control__env_var__init(&vars[i]);
        vars[i].key = (char *)env[i].key;
        vars[i].value = (char *)env[i].value;
        p[i] = &vars[i];
    }
    return p;
}

int sbx_run(sbx_client *c, const sbx_run_opts *o, sbx_result *out, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    const char *lang = o->language ? o->language : "python";
    size_t code_len = o->code_len ? o->code_len : (o->code ? strlen(o->code) : 0);
    if (run_validate(o, lang, code_len, err) < 0 || client_ready(c, err) < 0)
        return -1;
    cleanup_free Sbx__Control__EnvVar **varp = env_msgs(o->env, o->n_env);
    if (!varp)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
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
    struct output_cb cb = {o->on_output, o->userdata};
    return exec_wait(c, rq.id, &cb, out, err);
}

void sbx_result_free(sbx_result *r)
{
    free(r->stdout_buf);
    free(r->stderr_buf);
    memset(r, 0, sizeof *r);
}

/* ---- sessions ---- */

/* Send rq under a fresh id and wait for its reply; an error reply is returned as -1 with *out
 * still set (the caller frees it either way). */
static int request(sbx_client *c, Sbx__Control__Request *rq, int timeout_ms, const char *what,
                   Sbx__Control__Reply **out, sbx_error *err)
{
    *out = NULL;
    if (client_ready(c, err) < 0)
        return -1;
    rq->id = c->next_id++;
    if (client_send(c, rq, err) < 0 || client_recv_for(c, rq->id, timeout_ms, out, err) < 0) {
        wrap(err, what);
        return -1;
    }
    if ((*out)->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
        return reply_error(c, (*out)->error, err);
    return 0;
}

static int check_session_id(const char *id, sbx_error *err)
{
    if (!id || !*id)
        return fail(err, SBX_ERR_VM_CONFIG, false, "no session id given");
    if (strlen(id) >= SBX_SESSION_ID_MAX)
        return fail(err, SBX_ERR_VM_CONFIG, false, "`%.64s...` is too long for a session id", id);
    return 0;
}

static int info_fill(sbx_session_info *out, const Sbx__Control__SessionInfo *si, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    size_t n = si->session_id ? strlen(si->session_id) : 0;
    /* An id we would have to cut could never be used again: refuse it rather than mangle it. */
    if (n == 0 || n >= sizeof out->session_id)
        return fail(err, SBX_ERR_PROTOCOL, false, "sbxd sent a session id of %zu bytes", n);
    copy_text(out->session_id, sizeof out->session_id, si->session_id);
    copy_text(out->language, sizeof out->language, si->language);
    out->memory_mb = si->memory_mb;
    out->idle_timeout_seconds = si->idle_timeout_seconds;
    out->exec_count = si->exec_count;
    out->created_unix_ms = si->created_unix_ms;
    out->last_used_unix_ms = si->last_used_unix_ms;
    out->busy = si->busy;
    copy_text(out->accelerator, sizeof out->accelerator, si->accelerator);
    out->boot_ms = si->boot_ms;
    return 0;
}

int sbx_session_open(sbx_client *c, const sbx_session_opts *opts, sbx_session_info *out,
                     sbx_error *err)
{
    static const sbx_session_opts defaults;
    const sbx_session_opts *o = opts ? opts : &defaults;
    memset(out, 0, sizeof *out);
    const char *lang = o->language ? o->language : "python";
    char why[256];
    if (!limits_language_ok(lang))
        return fail(err, SBX_ERR_VM_CONFIG, false,
                    "unknown language `%.64s` (python, javascript or raw)", lang);
    if ((o->timeout_seconds && limits_check_timeout(o->timeout_seconds, why, sizeof why) < 0) ||
        (o->memory_mb && limits_check_memory(o->memory_mb, why, sizeof why) < 0) ||
        (o->idle_timeout_seconds &&
         limits_check_idle_timeout(o->idle_timeout_seconds, why, sizeof why) < 0))
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    if (check_env(o->env, o->n_env, err) < 0)
        return -1;
    cleanup_free Sbx__Control__EnvVar **varp = env_msgs(o->env, o->n_env);
    if (!varp)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    Sbx__Control__SessionOpen so = SBX__CONTROL__SESSION_OPEN__INIT;
    so.language = (char *)lang;
    so.memory_mb = o->memory_mb;
    so.timeout_seconds = o->timeout_seconds;
    so.n_env = o->n_env;
    so.env = varp;
    so.idle_timeout_seconds = o->idle_timeout_seconds;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_OPEN;
    rq.session_open = &so;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    /* No deadline of our own: booting is bounded by the daemon, which answers either way. */
    if (request(c, &rq, -1, "open session", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION)
        return unexpected(c, r, "waiting for the new session", err);
    return info_fill(out, r->session, err);
}

int sbx_session_exec(sbx_client *c, const char *session_id, const char *code, size_t code_len,
                     uint32_t timeout_seconds, sbx_output_fn on_output, void *userdata,
                     sbx_result *out, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    char why[256];
    if (check_session_id(session_id, err) < 0)
        return -1;
    if (!code)
        return fail(err, SBX_ERR_VM_CONFIG, false, "no code given");
    size_t len = code_len ? code_len : strlen(code);
    if (limits_check_code((const uint8_t *)code, len, why, sizeof why) < 0 ||
        (timeout_seconds && limits_check_timeout(timeout_seconds, why, sizeof why) < 0))
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    if (client_ready(c, err) < 0)
        return -1;
    Sbx__Control__SessionExec se = SBX__CONTROL__SESSION_EXEC__INIT;
    se.session_id = (char *)session_id;
    se.code.data = (uint8_t *)code;
    se.code.len = len;
    se.timeout_seconds = timeout_seconds;
    se.stream = on_output != NULL;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_EXEC;
    rq.session_exec = &se;
    if (client_send(c, &rq, err) < 0)
        return -1;
    struct output_cb cb = {on_output, userdata};
    return exec_wait(c, rq.id, &cb, out, err);
}

int sbx_session_close(sbx_client *c, const char *session_id, uint64_t *exec_count, sbx_error *err)
{
    if (exec_count)
        *exec_count = 0;
    if (check_session_id(session_id, err) < 0)
        return -1;
    Sbx__Control__SessionClose sc = SBX__CONTROL__SESSION_CLOSE__INIT;
    sc.session_id = (char *)session_id;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE;
    rq.session_close = &sc;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, -1, "close session", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION_CLOSED)
        return unexpected(c, r, "waiting for the session to close", err);
    if (exec_count)
        *exec_count = r->session_closed->exec_count;
    return 0;
}

int sbx_session_list(sbx_client *c, sbx_session_info **out, size_t *n, sbx_error *err)
{
    *out = NULL;
    *n = 0;
    Sbx__Control__SessionList sl = SBX__CONTROL__SESSION_LIST__INIT;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_LIST;
    rq.session_list = &sl;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, STATUS_TIMEOUT_MS, "list sessions", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION_LISTING)
        return unexpected(c, r, "waiting for the session list", err);
    size_t k = r->session_listing->n_sessions;
    if (k == 0)
        return 0;
    cleanup_free sbx_session_info *list = calloc(k, sizeof *list);
    if (!list)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    for (size_t i = 0; i < k; i++)
        if (info_fill(&list[i], r->session_listing->sessions[i], err) < 0)
            return -1;
    *out = steal_ptr(&list);
    *n = k;
    return 0;
}

void sbx_session_list_free(sbx_session_info *list)
{
    free(list);
}

/* ---- files ---- */

#define SHA256_LEN 32

static void md_freep(EVP_MD_CTX **m)
{
    EVP_MD_CTX_free(*m);
}
#define cleanup_md __attribute__((cleanup(md_freep)))
static void cctx_freep(ZSTD_CCtx **z)
{
    ZSTD_freeCCtx(*z);
}
#define cleanup_cctx __attribute__((cleanup(cctx_freep)))
static void dctx_freep(ZSTD_DCtx **z)
{
    ZSTD_freeDCtx(*z);
}
#define cleanup_dctx __attribute__((cleanup(dctx_freep)))

static EVP_MD_CTX *sha_new(void)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    if (m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(m);
        return NULL;
    }
    return m;
}

static int sha_final(EVP_MD_CTX *m, uint8_t out[SHA256_LEN])
{
    unsigned n = 0;
    return EVP_DigestFinal_ex(m, out, &n) == 1 && n == SHA256_LEN ? 0 : -1;
}

static void hex(char *out, const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
    out[2 * n] = '\0';
}

static int check_file_args(sbx_client *c, const char *session_id, const char *guest_path,
                           sbx_error *err)
{
    char why[320];
    if (check_session_id(session_id, err) < 0)
        return -1;
    if (limits_check_guest_path(guest_path, why, sizeof why) < 0)
        return fail(err, SBX_ERR_VM_CONFIG, false, "%s", why);
    return client_ready(c, err);
}

/* A reply for request id (or for the whole connection) that has already arrived; *out stays
 * NULL when there is none yet. Lets an upload stop as soon as sbxd has refused it, instead of
 * sending up to 50 MiB into the void. Replies to older requests are dropped, as
 * client_recv_for does. */
static int early_reply(sbx_client *c, uint64_t id, Sbx__Control__Reply **out, sbx_error *err)
{
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (frame_reader_pending(&c->rd) == 0 && poll(&p, 1, 0) <= 0)
            return 0;
        if (client_recv(c, -1, out, err) < 0)
            return -1;
        if ((*out)->id == id || (*out)->id == 0)
            return 0;
        sbx__control__reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
}

/* Where the bytes of an upload come from: memory, or a file read a second time. */
struct upload_src {
    const uint8_t *mem; /* the bytes, or NULL to read fd */
    int fd;
    const char *name; /* the file, for messages */
};

static int src_read(struct upload_src *s, uint64_t off, uint8_t *buf, size_t n,
                    const uint8_t **data, sbx_error *err)
{
    if (s->mem) {
        *data = s->mem + off;
        return 0;
    }
    for (size_t got = 0; got < n;) {
        ssize_t r = read(s->fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return fail(err, SBX_ERR_LOCAL_FILE, false, "read `%s`: %s", s->name, strerror(errno));
        if (r == 0)
            return fail(err, SBX_ERR_LOCAL_FILE, false, "`%s` got shorter while it was being sent",
                        s->name);
        got += (size_t)r;
    }
    *data = buf;
    return 0;
}

/* FileWrite then the chunks, back to back, then wait for FileDone. When the source fails
 * half-way the upload is ended early with a short last chunk: sbxd then refuses it on the size
 * (and writes nothing), which keeps the connection in step; the local error is what we report. */
static int upload(sbx_client *c, const char *session_id, const char *guest_path, uint64_t size,
                  const uint8_t sha[SHA256_LEN], struct upload_src *src, sbx_error *err)
{
    cleanup_cctx ZSTD_CCtx *z = ZSTD_createCCtx();
    cleanup_md EVP_MD_CTX *md = sha_new();
    size_t zcap = ZSTD_compressBound(SBX_FILE_CHUNK);
    cleanup_free uint8_t *zbuf = malloc(zcap);
    cleanup_free uint8_t *rbuf = src->mem ? NULL : malloc(SBX_FILE_CHUNK);
    if (!z || !md || !zbuf || (!src->mem && !rbuf))
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");

    Sbx__Control__FileWrite fw = SBX__CONTROL__FILE_WRITE__INIT;
    fw.session_id = (char *)session_id;
    fw.path = (char *)guest_path;
    fw.size = size;
    fw.sha256.data = (uint8_t *)sha;
    fw.sha256.len = SHA256_LEN;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_WRITE;
    rq.file_write = &fw;
    if (client_send(c, &rq, err) < 0) {
        wrap(err, "upload");
        return -1;
    }

    sbx_error local = {0};
    bool local_failed = false;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    for (uint64_t off = 0;;) {
        size_t n = size - off > SBX_FILE_CHUNK ? SBX_FILE_CHUNK : (size_t)(size - off);
        const uint8_t *data = (const uint8_t *)"";
        if (src_read(src, off, rbuf, n, &data, &local) < 0) {
            local_failed = true;
            data = (const uint8_t *)"";
            n = 0;
        } else if (EVP_DigestUpdate(md, data, n) != 1) {
            local_failed = true;
            fail(&local, SBX_ERR_INTERNAL, false, "sha256 failed");
            n = 0;
        }
        size_t zn = ZSTD_compressCCtx(z, zbuf, zcap, data, n, ZSTD_LEVEL);
        if (ZSTD_isError(zn)) /* only for bad arguments; nothing to send that would be right */
            return fail(err, SBX_ERR_INTERNAL, false, "zstd: %s", ZSTD_getErrorName(zn));
        off += n;
        Sbx__Control__FileChunk ch = SBX__CONTROL__FILE_CHUNK__INIT;
        ch.zdata.data = zbuf;
        ch.zdata.len = zn;
        ch.last = local_failed || off == size;
        Sbx__Control__Request crq = SBX__CONTROL__REQUEST__INIT;
        crq.id = rq.id;
        crq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_CHUNK;
        crq.file_chunk = &ch;
        if (client_send(c, &crq, err) < 0) {
            wrap(err, "upload");
            return -1;
        }
        if (ch.last)
            break;
        if (early_reply(c, rq.id, &r, err) < 0) {
            wrap(err, "upload");
            return -1;
        }
        if (r)
            break;
    }
    if (!local_failed && !r) {
        uint8_t got[SHA256_LEN];
        if (sha_final(md, got) < 0) {
            local_failed = true;
            fail(&local, SBX_ERR_INTERNAL, false, "sha256 failed");
        } else if (memcmp(got, sha, SHA256_LEN)) {
            /* sbxd will find the same mismatch and refuse; say what really happened. */
            local_failed = true;
            fail(&local, SBX_ERR_LOCAL_FILE, false, "`%s` changed while it was being sent",
                 src->name);
        }
    }
    if (!r && client_recv_for(c, rq.id, -1, &r, err) < 0) {
        wrap(err, "upload");
        return -1;
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_FILE_DONE) {
        if (local_failed)
            return give(err, &local);
        const Sbx__Control__FileDone *d = r->file_done;
        if (d->size != size || d->sha256.len != SHA256_LEN || memcmp(d->sha256.data, sha, 32))
            return fail(err, SBX_ERR_PROTOCOL, false,
                        "upload: sbxd confirmed %llu bytes with a different sha256 than the "
                        "%llu bytes sent",
                        (unsigned long long)d->size, (unsigned long long)size);
        return 0;
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_ERROR) {
        if (local_failed)
            return give(err, &local);
        return reply_error(c, r->error, err);
    }
    return unexpected(c, r, "waiting for an upload to finish", err);
}

int sbx_file_write(sbx_client *c, const char *session_id, const char *guest_path, const void *data,
                   size_t len, sbx_error *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (len > SBX_MAX_FILE)
        return fail(err, SBX_ERR_VM_CONFIG, false,
                    "%zu bytes is over the file limit of %u (50 MiB)", len, SBX_MAX_FILE);
    if (!data && len)
        return fail(err, SBX_ERR_VM_CONFIG, false, "no data given");
    uint8_t sha[SHA256_LEN];
    unsigned n = 0;
    if (EVP_Digest(len ? data : "", len, sha, &n, EVP_sha256(), NULL) != 1)
        return fail(err, SBX_ERR_INTERNAL, false, "sha256 failed");
    struct upload_src src = {.mem = len ? data : (const uint8_t *)"", .fd = -1, .name = "data"};
    return upload(c, session_id, guest_path, len, sha, &src, err);
}

int sbx_file_write_path(sbx_client *c, const char *session_id, const char *guest_path,
                        const char *local_path, sbx_error *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (!local_path || !*local_path)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "no local file given");
    cleanup_close int fd = open(local_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "open `%s`: %s", local_path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "stat `%s`: %s", local_path, strerror(errno));
    /* It is read twice (hash, then send): that takes a file that stays put. */
    if (!S_ISREG(st.st_mode))
        return fail(err, SBX_ERR_LOCAL_FILE, false, "`%s` is not a regular file", local_path);
    if ((uint64_t)st.st_size > SBX_MAX_FILE)
        return fail(err, SBX_ERR_VM_CONFIG, false,
                    "`%s` is %lld bytes; the file limit is %u (50 MiB)", local_path,
                    (long long)st.st_size, SBX_MAX_FILE);

    /* Pass one: size and sha256, which FileWrite announces before the first chunk. */
    cleanup_md EVP_MD_CTX *md = sha_new();
    cleanup_free uint8_t *buf = malloc(SBX_FILE_CHUNK);
    if (!md || !buf)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    uint64_t size = 0;
    for (;;) {
        ssize_t r = read(fd, buf, SBX_FILE_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return fail(err, SBX_ERR_LOCAL_FILE, false, "read `%s`: %s", local_path,
                        strerror(errno));
        if (r == 0)
            break;
        size += (uint64_t)r;
        if (size > SBX_MAX_FILE)
            return fail(err, SBX_ERR_VM_CONFIG, false,
                        "`%s` grew over the file limit of %u bytes (50 MiB)", local_path,
                        SBX_MAX_FILE);
        if (EVP_DigestUpdate(md, buf, (size_t)r) != 1)
            return fail(err, SBX_ERR_INTERNAL, false, "sha256 failed");
    }
    uint8_t sha[SHA256_LEN];
    if (sha_final(md, sha) < 0)
        return fail(err, SBX_ERR_INTERNAL, false, "sha256 failed");
    if (lseek(fd, 0, SEEK_SET) < 0)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "seek `%s`: %s", local_path, strerror(errno));
    struct upload_src src = {.fd = fd, .name = local_path};
    return upload(c, session_id, guest_path, size, sha, &src, err);
}

/* Where the bytes of a download go: a growing buffer, or a file. */
struct download_sink {
    uint8_t *buf; /* memory: owned until handed to the caller */
    size_t len, cap;
    int fd; /* file, when >= 0 */
    const char *name;
};

static int sink_put(struct download_sink *s, const uint8_t *d, size_t n, sbx_error *err)
{
    if (s->fd >= 0) {
        for (size_t done = 0; done < n;) {
            ssize_t w = write(s->fd, d + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return fail(err, SBX_ERR_LOCAL_FILE, false, "write `%s`: %s", s->name,
                            strerror(errno));
            done += (size_t)w;
        }
        return 0;
    }
    if (s->len + n + 1 > s->cap) { /* + 1: the NUL sbx_file_read adds */
        size_t ncap = s->cap ? s->cap : 65536;
        while (ncap < s->len + n + 1)
            ncap *= 2;
        if (ncap > SBX_MAX_FILE + 1u)
            ncap = SBX_MAX_FILE + 1u;
        uint8_t *nb = realloc(s->buf, ncap);
        if (!nb)
            return fail(err, SBX_ERR_INTERNAL, false, "out of memory for the file");
        s->buf = nb;
        s->cap = ncap;
    }
    memcpy(s->buf + s->len, d, n);
    s->len += n;
    return 0;
}

/* The daemon broke the transfer's rules: nothing more on this connection can be trusted. */
__attribute__((format(printf, 3, 4))) static int bad_transfer(sbx_client *c, sbx_error *err,
                                                              const char *fmt, ...)
{
    c->broken = true;
    if (err) {
        char msg[sizeof err->message];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fail(err, SBX_ERR_PROTOCOL, false, "download: %s", msg);
    }
    return -1;
}

/* FileRead, then chunks until FileDone. Each chunk is checked to be one zstd frame of at most
 * SBX_FILE_CHUNK bytes and decompressed into a buffer of that size, so a hostile daemon or
 * guest cannot make us allocate more than the 50 MiB cap in total. A sink that fails (disk
 * full) does not stop the reading: the rest is drained so the connection stays usable. */
static int download(sbx_client *c, const char *session_id, const char *guest_path,
                    struct download_sink *sink, sbx_error *err)
{
    cleanup_dctx ZSTD_DCtx *z = ZSTD_createDCtx();
    cleanup_md EVP_MD_CTX *md = sha_new();
    cleanup_free uint8_t *buf = malloc(SBX_FILE_CHUNK);
    if (!z || !md || !buf)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    Sbx__Control__FileRead fr = SBX__CONTROL__FILE_READ__INIT;
    fr.session_id = (char *)session_id;
    fr.path = (char *)guest_path;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_READ;
    rq.file_read = &fr;
    if (client_send(c, &rq, err) < 0) {
        wrap(err, "download");
        return -1;
    }
    uint64_t total = 0;
    bool last_seen = false, sink_failed = false;
    sbx_error local = {0};
    for (;;) {
        cleanup_reply Sbx__Control__Reply *r = NULL;
        if (client_recv_for(c, rq.id, -1, &r, err) < 0) {
            wrap(err, "download");
            return -1;
        }
        switch (r->body_case) {
        case SBX__CONTROL__REPLY__BODY_FILE_CHUNK: {
            const ProtobufCBinaryData *zd = &r->file_chunk->zdata;
            if (last_seen)
                return bad_transfer(c, err, "sbxd sent a chunk after the last one");
            size_t fsz = ZSTD_findFrameCompressedSize(zd->data, zd->len);
            if (ZSTD_isError(fsz) || fsz != zd->len)
                return bad_transfer(c, err, "a chunk from sbxd is not one zstd frame");
            unsigned long long cs = ZSTD_getFrameContentSize(zd->data, zd->len);
            if (cs != ZSTD_CONTENTSIZE_UNKNOWN && cs > SBX_FILE_CHUNK)
                return bad_transfer(c, err, "a chunk from sbxd holds %llu bytes (limit %u)", cs,
                                    SBX_FILE_CHUNK);
            size_t n = ZSTD_decompressDCtx(z, buf, SBX_FILE_CHUNK, zd->data, zd->len);
            if (ZSTD_isError(n))
                return bad_transfer(c, err, "a chunk from sbxd does not decompress: %s",
                                    ZSTD_getErrorName(n));
            if (total + n > SBX_MAX_FILE)
                return bad_transfer(c, err, "sbxd sent more than the file limit of %u bytes",
                                    SBX_MAX_FILE);
            total += n;
            if (EVP_DigestUpdate(md, buf, n) != 1)
                return fail(err, SBX_ERR_INTERNAL, false, "sha256 failed");
            if (!sink_failed && sink_put(sink, buf, n, &local) < 0)
                sink_failed = true;
            last_seen = r->file_chunk->last;
            break;
        }
        case SBX__CONTROL__REPLY__BODY_FILE_DONE: {
            if (sink_failed)
                return give(err, &local);
            const Sbx__Control__FileDone *d = r->file_done;
            uint8_t got[SHA256_LEN];
            if (sha_final(md, got) < 0)
                return fail(err, SBX_ERR_INTERNAL, false, "sha256 failed");
            if (d->size != total || d->sha256.len != SHA256_LEN ||
                memcmp(d->sha256.data, got, SHA256_LEN)) {
                char hg[2 * SHA256_LEN + 1];
                hex(hg, got, SHA256_LEN);
                return fail(err, SBX_ERR_COMMUNICATION, true,
                            "download of `%s` is damaged: received %llu bytes with sha256 %s, "
                            "sbxd announced %llu bytes%s",
                            guest_path, (unsigned long long)total, hg, (unsigned long long)d->size,
                            d->size == total ? " with another sha256" : "");
            }
            return 0;
        }
        case SBX__CONTROL__REPLY__BODY_ERROR:
            if (sink_failed)
                return give(err, &local);
            return reply_error(c, r->error, err);
        default:
            return unexpected(c, r, "waiting for a download", err);
        }
    }
}

int sbx_file_read(sbx_client *c, const char *session_id, const char *guest_path, char **data,
                  size_t *len, sbx_error *err)
{
    *data = NULL;
    *len = 0;
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    struct download_sink s = {.fd = -1};
    if (download(c, session_id, guest_path, &s, err) < 0 ||
        (!s.buf && sink_put(&s, (const uint8_t *)"", 0, err) < 0)) {
        free(s.buf);
        return -1;
    }
    s.buf[s.len] = '\0';
    *data = (char *)s.buf;
    *len = s.len;
    return 0;
}

/* The file a download is written to until it has checked out. Preferably an unnamed O_TMPFILE,
 * which the kernel removes by itself if we die half-way; else a hidden name beside the target. */
struct part_file {
    int fd;
    char path[PATH_MAX]; /* the named temporary file while it exists, else "" */
};

static void part_file_cleanup(struct part_file *p)
{
    if (p->fd >= 0)
        close(p->fd);
    if (p->path[0])
        unlink(p->path);
}
#define cleanup_part __attribute__((cleanup(part_file_cleanup)))

/* A fresh hidden name beside the target: DIR/.BASE.sbx-XXXXXXXX. */
static int part_name(char *out, size_t n, const char *dir, const char *base)
{
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != sizeof rnd)
        rnd = (uint32_t)now_ms() ^ ((uint32_t)getpid() << 16);
    int r = snprintf(out, n, "%s/.%.200s.sbx-%08x", dir, base, rnd);
    return r < 0 || (size_t)r >= n ? -1 : 0;
}

int sbx_file_read_path(sbx_client *c, const char *session_id, const char *guest_path,
                       const char *local_path, sbx_error *err)
{
    if (check_file_args(c, session_id, guest_path, err) < 0)
        return -1;
    if (!local_path || !*local_path)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "no local file given");
    struct stat st;
    if (stat(local_path, &st) == 0 && S_ISDIR(st.st_mode))
        return fail(err, SBX_ERR_LOCAL_FILE, false, "`%s` is a directory", local_path);
    char dir[PATH_MAX];
    const char *slash = strrchr(local_path, '/');
    const char *base = slash ? slash + 1 : local_path;
    if (!*base)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "`%s` names a directory", local_path);
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == local_path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - local_path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - local_path), local_path);
    else
        return fail(err, SBX_ERR_LOCAL_FILE, false, "`%.200s...`: path too long", local_path);

    cleanup_part struct part_file part = {.fd = -1};
    /* Giving the unnamed file a name later goes through /proc (linkat without privileges). */
    bool unnamed = access("/proc/self/fd", X_OK) == 0;
    if (unnamed) {
        part.fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
        if (part.fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
            return fail(err, SBX_ERR_LOCAL_FILE, false, "create a file in `%s`: %s", dir,
                        strerror(errno));
        unnamed = part.fd >= 0;
    }
    for (int tries = 0; part.fd < 0; tries++) {
        if (part_name(part.path, sizeof part.path, dir, base) < 0)
            return fail(err, SBX_ERR_LOCAL_FILE, false, "`%.200s...`: path too long", dir);
        part.fd = open(part.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (part.fd < 0) {
            int e = errno;
            part.path[0] = '\0';
            if (e != EEXIST || tries > 16)
                return fail(err, SBX_ERR_LOCAL_FILE, false, "create a file in `%s`: %s", dir,
                            strerror(e));
        }
    }

    struct download_sink s = {.fd = part.fd, .name = local_path};
    if (download(c, session_id, guest_path, &s, err) < 0)
        return -1;
    if (fsync(part.fd) < 0)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "write `%s`: %s", local_path, strerror(errno));
    if (unnamed) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", part.fd);
        for (int tries = 0;; tries++) {
            if (part_name(part.path, sizeof part.path, dir, base) < 0)
                return fail(err, SBX_ERR_LOCAL_FILE, false, "`%.200s...`: path too long", dir);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, part.path, AT_SYMLINK_FOLLOW) == 0)
                break;
            int e = errno;
            part.path[0] = '\0';
            if (e != EEXIST || tries > 16)
                return fail(err, SBX_ERR_LOCAL_FILE, false, "create a file in `%s`: %s", dir,
                            strerror(e));
        }
    }
    if (rename(part.path, local_path) < 0)
        return fail(err, SBX_ERR_LOCAL_FILE, false, "rename to `%s`: %s", local_path,
                    strerror(errno));
    part.path[0] = '\0';
    return 0;
}

int sbx_file_list(sbx_client *c, const char *session_id, const char *path, sbx_file_entry **out,
                  size_t *n, sbx_error *err)
{
    *out = NULL;
    *n = 0;
    if (!path)
        path = "";
    if (*path) {
        if (check_file_args(c, session_id, path, err) < 0)
            return -1;
    } else if (check_session_id(session_id, err) < 0) {
        return -1;
    }
    Sbx__Control__FileList fl = SBX__CONTROL__FILE_LIST__INIT;
    fl.session_id = (char *)session_id;
    fl.path = (char *)path;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_FILE_LIST;
    rq.file_list = &fl;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, -1, "list files", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_FILE_LISTING)
        return unexpected(c, r, "waiting for a file listing", err);
    const Sbx__Control__FileListing *ls = r->file_listing;
    if (ls->n_entries == 0)
        return 0;
    /* One allocation: the entries, then their names. Bounded by the reply's frame cap. */
    size_t bytes = ls->n_entries * sizeof(sbx_file_entry);
    for (size_t i = 0; i < ls->n_entries; i++)
        bytes += (ls->entries[i]->name ? strlen(ls->entries[i]->name) : 0) + 1;
    sbx_file_entry *e = malloc(bytes);
    if (!e)
        return fail(err, SBX_ERR_INTERNAL, false, "out of memory");
    char *names = (char *)(e + ls->n_entries);
    for (size_t i = 0; i < ls->n_entries; i++) {
        const Sbx__Control__FileEntry *fe = ls->entries[i];
        size_t len = fe->name ? strlen(fe->name) : 0;
        memcpy(names, fe->name ? fe->name : "", len + 1);
        e[i].name = names;
        e[i].is_dir = fe->is_dir;
        e[i].size = fe->is_dir ? 0 : fe->size;
        names += len + 1;
    }
    *out = e;
    *n = ls->n_entries;
    return 0;
}

void sbx_file_list_free(sbx_file_entry *entries)
{
    free(entries);
}

/* ---- status ---- */

int sbx_status(sbx_client *c, sbx_status_info *out, sbx_error *err)
{
    memset(out, 0, sizeof *out);
    if (client_ready(c, err) < 0)
        return -1;
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
    out->daemon_uid = c->daemon_uid;
    out->sessions = s->sessions;
    copy_text(out->cgroup_mode, sizeof out->cgroup_mode, s->cgroup_mode);
    out->warm_pool_size = s->warm_pool_size;
    out->pool_ready = s->pool_ready;
    out->pool_booting = s->pool_booting;
    out->pool_memory_mb = s->pool_memory_mb;
    out->snapshots_enabled = s->snapshots_enabled;
    copy_text(out->snapshot_dir, sizeof out->snapshot_dir, s->snapshot_dir);
    out->n_snapshots = 0;
    for (size_t i = 0; i < s->n_snapshots && i < SBX_STATUS_SNAPSHOTS_MAX; i++) {
        const Sbx__Control__SnapshotInfo *x = s->snapshots[i];
        copy_text(out->snapshots[i].name, sizeof out->snapshots[i].name, x->name);
        copy_text(out->snapshots[i].language, sizeof out->snapshots[i].language, x->language);
        copy_text(out->snapshots[i].state, sizeof out->snapshots[i].state, x->state);
        out->snapshots[i].memory_mb = x->memory_mb;
        out->snapshots[i].disk_mb = x->disk_mb;
        out->snapshots[i].retry_in_s = x->retry_in_s;
        out->n_snapshots = (uint32_t)i + 1;
    }
    const Sbx__Control__StatusLimits *l = s->limits;
    if (l) {
        out->limits.connections = l->connections;
        out->limits.max_connections = l->max_connections;
        out->limits.hello_timeout_seconds = l->hello_timeout_seconds;
        out->limits.frame_timeout_seconds = l->frame_timeout_seconds;
        out->limits.max_queued = l->max_queued;
        out->limits.queue_timeout_seconds = l->queue_timeout_seconds;
        out->limits.max_session_queue = l->max_session_queue;
        out->limits.max_client_buffer_mb = l->max_client_buffer_mb;
        out->limits.max_session_upload_mb = l->max_session_upload_mb;
        out->limits.run_grace_seconds = l->run_grace_seconds;
        out->limits.connections_refused = l->connections_refused;
        out->limits.clients_dropped = l->clients_dropped;
    }
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
