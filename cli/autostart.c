/* libsbx's autostart: a private sbxd for a user who has none, started detached under a lock so
 * that concurrent clients start at most one. It never talks the protocol: once the socket
 * answers, client.c takes over. */
#include "libsbx_int.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>

#define AUTOSTART_WAIT_MS 20000
/* Longer than AUTOSTART_WAIT_MS: whoever holds the lock gives up after that, so we get it. */
#define AUTOSTART_LOCK_WAIT_MS 30000
#define AUTOSTART_IDLE_EXIT "300" /* seconds */

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
static pid_t daemon_spawn(const char *bin, const char *sock, const char *log_path, sbx_err *err)
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
        return sbx_fail(err, SBX_ERR_CONNECT, "pipe: %s", strerror(errno));
    cleanup_close int rd = p[0];
    cleanup_close int wr = p[1];
    pid_t child = fork();
    if (child < 0)
        return sbx_fail(err, SBX_ERR_CONNECT | ERR_TRANSIENT, "fork: %s", strerror(errno));
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
        return sbx_fail(
            err, SBX_ERR_CONNECT, "start `%s`: %s%s", bin, strerror(exec_errno),
            exec_errno == ENOENT && !strchr(bin, '/')
                ? " (put sbxd in $PATH or beside this program, or set EXEC_SANDBOX_SBXD)"
                : "");
    if (daemon <= 0)
        return sbx_fail(err, SBX_ERR_CONNECT, "start `%s`: no daemon process came up", bin);
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
static int lock_wait(int fd, const char *lock_path, const sbx_connect_opts *o, sbx_err *err)
{
    uint64_t deadline = now_ms() + AUTOSTART_LOCK_WAIT_MS;
    bool told = false;
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return sbx_fail(err, SBX_ERR_CONNECT, "lock `%s`: %s", lock_path, strerror(errno));
        if (!told)
            progress(o, "waiting for another client to start the sandbox daemon");
        told = true;
        if (now_ms() >= deadline)
            return sbx_fail(err, SBX_ERR_CONNECT | ERR_TRANSIENT,
                            "lock `%s`: still held after %d s", lock_path,
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
void socket_dir(const char *sock, char *dir, size_t n)
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
int autostart(const char *sock, const sbx_connect_opts *o, int *out, sbx_err *err)
{
    char dir[PATH_MAX];
    socket_dir(sock, dir, sizeof dir);
    /* The socket is how this user's code reaches the daemon: in a directory others can write,
     * they could put their own socket in its place. */
    sbx_err e = {0};
    cleanup_close int dfd = paths_dir_open(dir, getuid(), 0700, &e);
    if (dfd < 0)
        return sbx_fail(
            err, SBX_ERR_PERMISSION,
            "will not start a daemon with its socket in `%s`: %s (it must be a directory "
            "of uid %u that nobody else can write)",
            dir, e.msg, (unsigned)getuid());
    char lock_path[PATH_MAX], log_path[PATH_MAX];
    if (path_join(lock_path, sizeof lock_path, dir, "autostart.lock") < 0 ||
        path_join(log_path, sizeof log_path, dir, "sbxd.log") < 0)
        return sbx_fail(err, SBX_ERR_CONNECT, "socket directory `%s` is too long", dir);

    cleanup_close int lk =
        open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (lk < 0)
        return sbx_fail(err, SBX_ERR_CONNECT, "open `%s`: %s", lock_path, strerror(errno));
    if (lock_wait(lk, lock_path, o, err) < 0)
        return -1;
    /* Whoever held the lock before us may have started it already. */
    int r = unix_connect(sock, out);
    if (r == 0)
        return 0;
    /* A stale socket file (ECONNREFUSED) is sbxd's to replace: it probes before it unlinks. */
    if (r != -ENOENT && r != -ECONNREFUSED)
        return sbx_fail(err, SBX_ERR_CONNECT, "connect to `%s`: %s", sock, strerror(-r));

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
            return sbx_fail(err, SBX_ERR_CONNECT, "connect to `%s`: %s", sock, strerror(-r));
        if (kill(pid, 0) < 0 && errno == ESRCH) {
            char tail[200];
            log_tail(log_path, tail, sizeof tail);
            return sbx_fail(err, SBX_ERR_CONNECT, "sbxd exited during startup%s%s (log: %s)",
                            tail[0] ? ": " : "", tail, log_path);
        }
        if (now_ms() >= deadline)
            return sbx_fail(err, SBX_ERR_CONNECT | ERR_TRANSIENT,
                            "sbxd (pid %d) did not listen on `%s` within %d s (log: %s)", (int)pid,
                            sock, AUTOSTART_WAIT_MS / 1000, log_path);
        sleep_ms(20);
    }
}
