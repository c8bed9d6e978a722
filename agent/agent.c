/* sbx-agent: PID 1 of the guest. Boots the sandbox (mounts, root switch, /dev built from scratch),
 * answers the host over the virtio-serial port "sbx.agent", and runs untrusted code as uid 1000
 * with no_new_privs, streaming its output under caps and a deadline: one-shot in a fresh
 * interpreter, or in a persistent REPL (repl.c). It also reseeds the RNG and sets the clock on
 * each Hello, and moves files in and out of the home (files.c). Everything happens in one poll
 * loop, so the host channel keeps being served while code runs.
 *
 * PID 1 must never return: a fatal error is logged to the kernel console and ends the VM with
 * reboot(2) (QEMU runs with -no-reboot, so that is a power-off). */
#include "agent.h"
#include "sbx_limits.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#define AGENT_PORT_NAME "sbx.agent"
#define AGENT_ROOT_DEV "/dev/vda"
#define AGENT_NEWROOT "/newroot"
#define AGENT_PORTS_DIR AGENT_NEWROOT "/sys/class/virtio-ports"

/* How long boot waits for devices the kernel may still be probing. */
#define AGENT_ROOT_WAIT_MS 2000
#define AGENT_PORT_WAIT_MS 3000
/* While the host side of the port is closed, read() returns 0 and poll() says POLLHUP at once:
 * look again after this long instead of spinning. */
#define AGENT_PORT_RETRY_MS 10

#define AGENT_CHUNK (64u * 1024u)
/* Backpressure: above this many queued bytes stop reading the child's pipes (the child then
 * blocks on its own writes), and above the second stop reading host frames too. */
#define AGENT_QUEUE_PAUSE_PIPES (4u << 20)
#define AGENT_QUEUE_PAUSE_PORT (8u << 20)
#define AGENT_TERM_GRACE_MS 1000
#define AGENT_DRAIN_MS 200
/* Hello.seed: fewer bytes would be a weak reseed, more is pointless. */
#define AGENT_SEED_MIN 16
#define AGENT_SEED_MAX 512

/* The kernel console (ttyS0), opened on first use from the initramfs /dev: opening the UART
 * costs a couple of ms of boot under TCG and is rarely needed. */
static int console_fd = -1;
static int initrd_dev_fd = -1;

void agent_log(const char *fmt, ...)
{
    char buf[768];
    int n = snprintf(buf, sizeof buf, "sbx-agent: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (console_fd < 0 && initrd_dev_fd >= 0)
        console_fd = openat(initrd_dev_fd, "console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    ssize_t w = write(console_fd >= 0 ? console_fd : 2, buf, (size_t)n);
    (void)w;
}

__attribute__((format(printf, 1, 2), noreturn)) static void agent_fatal(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    agent_log("fatal: %s; powering off", msg);
    reboot(RB_AUTOBOOT);
    agent_log("reboot: %s", strerror(errno));
    for (;;)
        pause();
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static uint64_t boottime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- boot --------------------------------------------------------------------------------- */

struct boot_mount {
    const char *src, *dst, *type;
    unsigned long flags;
    const char *data;
    bool required; /* without it the sandbox would be unsafe or useless */
};

static int boot_mount_all(const struct boot_mount *m, size_t n, sbx_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (mount(m[i].src, m[i].dst, m[i].type, m[i].flags, m[i].data) == 0)
            continue;
        if (m[i].required)
            return sbx_fail(err, errno, "mount %s on `%s`: %s", m[i].type, m[i].dst,
                            strerror(errno));
        agent_log("mount %s on `%s`: %s (continuing)", m[i].type, m[i].dst, strerror(errno));
    }
    return 0;
}

/* The initramfs needs only devtmpfs: the root disk, the console and the port are opened from it.
 * proc and sysfs are mounted once, in the new root (a mount there plus a detach here would cost
 * milliseconds of boot under TCG and serve nothing). */
static int boot_early(sbx_err *err)
{
    /* EBUSY: the kernel mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT with a disk root). */
    if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
        return sbx_fail(err, errno, "mount devtmpfs on `/dev`: %s", strerror(errno));
    /* The initramfs has no /dev/console, so the kernel left fds 0-2 closed: fill them, so that
     * nothing opened later lands on 0-2 by accident. */
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        return sbx_fail(err, errno, "open `/dev/null`: %s", strerror(errno));
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
    initrd_dev_fd = open("/dev", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return 0;
}

static int boot_mount_root(sbx_err *err)
{
    /* Wait for the node before trying to mount: every failed mount attempt makes the kernel
     * print to the (slow, serial) console. */
    uint64_t until = now_ms() + AGENT_ROOT_WAIT_MS;
    struct stat st;
    while (stat(AGENT_ROOT_DEV, &st) < 0) {
        if (errno != ENOENT || now_ms() >= until)
            return sbx_fail(err, errno, "root disk `%s`: %s", AGENT_ROOT_DEV, strerror(errno));
        sleep_ms(2);
    }
    if (mount(AGENT_ROOT_DEV, AGENT_NEWROOT, "squashfs", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) <
        0)
        return sbx_fail(err, errno, "mount `%s` (squashfs) on `%s`: %s", AGENT_ROOT_DEV,
                        AGENT_NEWROOT, strerror(errno));
    return 0;
}

/* The code's /dev is a fresh tmpfs holding only harmless nodes: no disks, no memory devices,
 * no virtio port, no console. */
static int boot_populate_dev(sbx_err *err)
{
    static const struct {
        const char *name;
        unsigned maj, min;
    } nodes[] = {
        {"null", 1, 3},    {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8},
        {"urandom", 1, 9}, {"tty", 5, 0},  {"ptmx", 5, 2},
    };
    static const struct {
        const char *name, *target;
    } links[] = {
        {"fd", "/proc/self/fd"},
        {"stdin", "/proc/self/fd/0"},
        {"stdout", "/proc/self/fd/1"},
        {"stderr", "/proc/self/fd/2"},
    };
    const char *dev = AGENT_NEWROOT "/dev";
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64") < 0)
        return sbx_fail(err, errno, "mount tmpfs on `%s`: %s", dev, strerror(errno));
    cleanup_close int dfd = open(dev, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", dev, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(nodes); i++)
        if (mknodat(dfd, nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
            return sbx_fail(err, errno, "mknod `%s/%s`: %s", dev, nodes[i].name, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(links); i++)
        if (symlinkat(links[i].target, dfd, links[i].name) < 0)
            return sbx_fail(err, errno, "symlink `%s/%s`: %s", dev, links[i].name, strerror(errno));
    if (mkdirat(dfd, "pts", 0755) < 0 || mkdirat(dfd, "shm", 01777) < 0)
        return sbx_fail(err, errno, "mkdir in `%s`: %s", dev, strerror(errno));
    static const struct boot_mount sub[] = {
        {"devpts", AGENT_NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620,gid=5", false},
        {"tmpfs", AGENT_NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=25%",
         false},
    };
    return boot_mount_all(sub, ARRAY_LEN(sub), err);
}

static int boot_mount_newroot(sbx_err *err)
{
    if (boot_mount_root(err) < 0)
        return -1;
    if (boot_populate_dev(err) < 0)
        return -1;
    static const struct boot_mount m[] = {
        {"proc", AGENT_NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2",
         true},
        {"sysfs", AGENT_NEWROOT "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
         true},
        {"tmpfs", AGENT_NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=50%", true},
        {"tmpfs", AGENT_NEWROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=10%", true},
        {"tmpfs", AGENT_NEWROOT "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=25%",
         false},
        {"tmpfs", AGENT_NEWROOT AGENT_HOME, "tmpfs", MS_NOSUID | MS_NODEV,
         "mode=0700,uid=1000,gid=1000,size=50%", true},
    };
    return boot_mount_all(m, ARRAY_LEN(m), err);
}

/* 1: `vport` is the agent's port, opened into *fd; 0: it is not (or not there yet); -1: error. */
static int boot_try_port(const char *vport, int *fd, sbx_err *err)
{
    char path[160], name[64];
    snprintf(path, sizeof path, AGENT_PORTS_DIR "/%s/name", vport);
    cleanup_close int nfd = open(path, O_RDONLY | O_CLOEXEC);
    if (nfd < 0)
        return 0;
    ssize_t n = read(nfd, name, sizeof name - 1);
    if (n <= 0)
        return 0;
    name[n] = '\0';
    name[strcspn(name, "\n")] = '\0';
    if (strcmp(name, AGENT_PORT_NAME) != 0)
        return 0;
    snprintf(path, sizeof path, "/dev/%s", vport);
    *fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (*fd >= 0)
        return 1;
    if (errno == ENOENT)
        return 0;
    return sbx_fail(err, errno, "open `%s`: %s", path, strerror(errno));
}

/* Finds the port by name in the new root's sysfs and opens its node from the initramfs /dev,
 * which the code never sees. The port appears a little after the driver probes (control
 * messages from QEMU), so wait for it. */
static int boot_open_port(sbx_err *err)
{
    uint64_t until = now_ms() + AGENT_PORT_WAIT_MS;
    for (;;) {
        int fd = -1, rc = 0;
        DIR *d = opendir(AGENT_PORTS_DIR);
        if (d) {
            struct dirent *de;
            while (rc == 0 && (de = readdir(d)))
                if (de->d_name[0] != '.' && strlen(de->d_name) <= 64)
                    rc = boot_try_port(de->d_name, &fd, err);
            closedir(d);
        }
        if (rc != 0)
            return rc < 0 ? -1 : fd;
        if (now_ms() >= until)
            return sbx_fail(err, ENOENT, "no virtio port named `%s` after %d ms", AGENT_PORT_NAME,
                            AGENT_PORT_WAIT_MS);
        sleep_ms(2);
    }
}

/* Costs ~10 ms under TCG (loopback up), so it runs right after the first Ready is on its way
 * rather than before it; any exec is handled after it. */
static void boot_net_and_name(void)
{
    if (sethostname("sandbox", 7) < 0)
        agent_log("sethostname: %s", strerror(errno));
    /* Bringing lo up makes the kernel add 127.0.0.1/8 and ::1 on its own. */
    cleanup_close int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    struct ifreq ifr = {0};
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        agent_log("loopback up: %s", strerror(errno));
}

static int boot_switch_root(sbx_err *err)
{
    /* The initramfs (and its devtmpfs, with the disk and the port) ends up below the new root,
     * out of reach of a process without CAP_SYS_CHROOT. */
    if (chdir(AGENT_NEWROOT) < 0)
        return sbx_fail(err, errno, "chdir `%s`: %s", AGENT_NEWROOT, strerror(errno));
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
        return sbx_fail(err, errno, "move `%s` to `/`: %s", AGENT_NEWROOT, strerror(errno));
    if (chroot(".") < 0)
        return sbx_fail(err, errno, "chroot: %s", strerror(errno));
    if (chdir("/") < 0)
        return sbx_fail(err, errno, "chdir `/`: %s", strerror(errno));
    if (mkdir(AGENT_CODE_DIR, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", AGENT_CODE_DIR, strerror(errno));
    return 0;
}

/* The kernel command line is the host's business (what it tunes, and any parameter it may
 * one day pass to the agent): the code (uid 1000) must not read it. An empty, read-only file is
 * bind-mounted over each file that shows it. The code cannot unmount it (no capabilities); in a
 * user namespace of its own the copy of this mount is locked to what it covers, and a fresh
 * proc instance there is refused because this one is not fully visible. The kernel log holds
 * the line as well ("Kernel command line: ..."): dmesg_restrict puts syslog(2) behind
 * CAP_SYSLOG. Any failure is fatal: a VM that would show the line does not serve code. */
static int boot_hide_cmdline(sbx_err *err)
{
    static const struct {
        const char *path;
        bool required; /* bootconfig exists only with CONFIG_BOOT_CONFIG */
    } shown[] = {{"/proc/cmdline", true}, {"/proc/bootconfig", false}};
    static const char empty[] = AGENT_CODE_DIR "/empty";
    cleanup_close int fd =
        open(empty, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)0444);
    if (fd < 0)
        return sbx_fail(err, errno, "create `%s`: %s", empty, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(shown); i++) {
        const char *p = shown[i].path;
        if (!shown[i].required && access(p, F_OK) < 0 && errno == ENOENT)
            continue;
        /* A bind mount takes the flags of its source's mount; read-only needs a remount. */
        if (mount(empty, p, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, p, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            return sbx_fail(err, errno, "cover `%s`: %s", p, strerror(errno));
    }
    cleanup_close int dr = open("/proc/sys/kernel/dmesg_restrict", O_WRONLY | O_CLOEXEC);
    if (dr < 0 || write(dr, "1", 1) != 1)
        return sbx_fail(err, errno, "set kernel.dmesg_restrict: %s", strerror(errno));
    return 0;
}

/* ---- state -------------------------------------------------------------------------------- */

struct run {
    pid_t pid; /* 0: no exec in progress; keep_state: the REPL's */
    uint64_t id;
    struct repl *repl; /* keep_state: the REPL running it */
    int fd[2];         /* one-shot: read ends of stdout, stderr; -1 once at EOF */
    size_t cap[2], sent[2];
    bool trunc[2];
    uint64_t start_ms, deadline_ms, kill_ms, exit_ms, drain_until_ms;
    bool term_sent, kill_sent, timed_out, exited;
    bool reset;   /* keep_state: the REPL had ended since the last exec, its state with it */
    bool have_rc; /* keep_state: the REPL reported the code's exit code */
    int rc;
    int status;
};

struct agent {
    struct chan ch;
    struct run run;
    int sigfd;
    int rng_fd;
    bool net_done; /* hostname and loopback, deferred until the first Ready */
    char kernel[65];
};

/* ---- host channel ------------------------------------------------------------------------- */

static void chan_flush(struct chan *c)
{
    if (frame_writer_queued(&c->wr) == 0)
        return;
    if (frame_writer_flush(&c->wr, c->fd) < 0 && errno != EAGAIN)
        agent_log("write to port: %s", strerror(errno));
}

void chan_send(struct chan *c, Sbx__Agent__GuestMsg *m)
{
    if (frame_writer_put(&c->wr, &m->base) < 0) {
        agent_log("queue frame: %s (dropped)", strerror(errno));
        return;
    }
    chan_flush(c);
}

void chan_failure(struct chan *c, uint64_t id, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Sbx__Agent__Failure f = SBX__AGENT__FAILURE__INIT;
    f.message = msg;
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_FAILURE;
    m.failure = &f;
    chan_send(c, &m);
}

static void chan_reset_reader(struct chan *c)
{
    size_t max = c->rd.max_frame;
    frame_reader_free(&c->rd);
    frame_reader_init(&c->rd, max);
}

/* The frame in front announces more than the cap: answer, then throw exactly that frame away
 * so the frames after it still parse. */
static void chan_drop_oversized(struct chan *c)
{
    const uint8_t *h = c->rd.buf + c->rd.start;
    uint64_t n = (uint64_t)h[0] << 24 | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 8 | h[3];
    uint64_t total = FRAME_HDR + n;
    size_t pending = frame_reader_pending(&c->rd);
    chan_failure(c, 0, "frame of %llu bytes exceeds the limit of %u; dropped",
                 (unsigned long long)n, FRAME_MAX_AGENT);
    if (pending >= total) {
        frame_reader rest;
        frame_reader_init(&rest, c->rd.max_frame);
        if (frame_reader_feed(&rest, h + total, pending - total) < 0)
            agent_fatal("out of memory");
        frame_reader_free(&c->rd);
        c->rd = rest;
        return;
    }
    c->skip = total - pending;
    chan_reset_reader(c);
}

static void agent_handle(struct agent *a, const uint8_t *data, size_t len);

/* The host side closed (or never opened): keep nothing of a half-read frame and look again a
 * little later. */
static void chan_host_gone(struct chan *c)
{
    c->retry_at = now_ms() + AGENT_PORT_RETRY_MS;
    if (!c->connected)
        return;
    /* A host that comes back starts a new stream: a half-read frame, or a half-written one, of
     * the old connection would only desynchronise it. */
    agent_log("host closed the channel");
    c->connected = false;
    c->skip = 0;
    chan_reset_reader(c);
    frame_writer_free(&c->wr);
    files_abort();
}

static void chan_read(struct agent *a)
{
    struct chan *c = &a->ch;
    if (c->skip > 0) {
        static uint8_t scratch[AGENT_CHUNK];
        size_t want = c->skip < sizeof scratch ? (size_t)c->skip : sizeof scratch;
        ssize_t n = read(c->fd, scratch, want);
        if (n > 0)
            c->skip -= (uint64_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            chan_host_gone(c);
        return;
    }
    ssize_t n = frame_reader_fill(&c->rd, c->fd);
    if (n == 0) {
        chan_host_gone(c);
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        if (errno == ENOMEM)
            agent_fatal("out of memory reading the port");
        agent_log("read port: %s", strerror(errno));
        chan_host_gone(c);
        return;
    }
    c->connected = true;
    for (;;) {
        const uint8_t *data;
        size_t len;
        int rc = frame_reader_next(&c->rd, &data, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            chan_drop_oversized(c);
            if (c->skip > 0)
                break;
            continue;
        }
        agent_handle(a, data, len);
    }
}

/* ---- exec --------------------------------------------------------------------------------- */

/* An exec runs either as a fresh interpreter process (one-shot), or in the language's REPL
 * (keep_state, repl.c). Either way its output streams under the caps, and the deadline sends
 * SIGTERM to its process group, then SIGKILL after the grace. A one-shot exec ends when its
 * process has exited and its pipes are drained; a REPL exec when the REPL reports the result,
 * or when the REPL itself ends (then the REPL's state is gone: interpreter_reset). */

static void run_kill(struct run *r, int sig)
{
    if (r->repl) {
        repl_kill(r->repl, sig);
        return;
    }
    if (kill(-r->pid, sig) < 0 && errno != ESRCH)
        agent_log("kill %d: %s", -r->pid, strerror(errno));
    if (sig == SIGKILL) {
        /* Code may have left processes outside its group (setsid, double fork): all of them
         * are in the exec's cgroup. */
        pid_t keep[REPL_N];
        sandbox_kill_cg(SANDBOX_CG_EXEC, keep, repl_live_pids(keep, 0));
    }
}

static int run_write_code(const char *path, const uint8_t *code, size_t len, sbx_err *err)
{
    cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", path, strerror(errno));
    if (fchown(fd, 0, 0) < 0 || fchmod(fd, 0644) < 0)
        return sbx_fail(err, errno, "chmod `%s`: %s", path, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, code + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(err, errno, "write `%s`: %s", path, strerror(errno));
        }
        off += (size_t)n;
    }
    return 0;
}

static int run_validate(const Sbx__Agent__Exec *x, sbx_err *err)
{
    char why[256];
    if (!x->language || !limits_language_ok(x->language))
        return sbx_fail(err, EINVAL, "unknown language `%.32s` (python, javascript or raw)",
                        x->language ? x->language : "");
    if (limits_check_code(x->code.data, x->code.len, why, sizeof why) < 0)
        return sbx_fail(err, EINVAL, "%s", why);
    if (x->timeout_ms > SBX_TIMEOUT_MAX * 1000u)
        return sbx_fail(err, EINVAL, "timeout %u ms is over the limit of %u s", x->timeout_ms,
                        SBX_TIMEOUT_MAX);
    if (limits_check_env_count(x->n_env, why, sizeof why) < 0)
        return sbx_fail(err, EINVAL, "%s", why);
    for (size_t i = 0; i < x->n_env; i++) {
        const Sbx__Agent__EnvVar *v = x->env[i];
        if (!v || !v->key || !v->value)
            return sbx_fail(err, EINVAL, "environment variable %zu is incomplete", i);
        if (limits_check_env(v->key, v->value, why, sizeof why) < 0)
            return sbx_fail(err, EINVAL, "%s", why);
    }
    return 0;
}

/* A one-shot exec: the code in a file, a fresh interpreter for it. */
static pid_t run_spawn_oneshot(const Sbx__Agent__Exec *x, int fd[2], sbx_err *err)
{
    const char *interp, *path;
    if (!strcmp(x->language, "python")) {
        interp = "/usr/bin/python3";
        path = AGENT_CODE_DIR "/code.py";
    } else if (!strcmp(x->language, "javascript")) {
        interp = "/usr/local/bin/bun";
        path = AGENT_CODE_DIR "/code.js";
    } else {
        interp = "/bin/bash";
        path = AGENT_CODE_DIR "/code.sh";
    }
    if (run_write_code(path, x->code.data, x->code.len, err) < 0)
        return -1;
    cleanup_env struct env_list env = {0};
    if (sandbox_env(&env, x->env, x->n_env, err) < 0)
        return -1;
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (out[i] >= 0)
                close(out[i]);
            if (errp[i] >= 0)
                close(errp[i]);
        }
        return sbx_fail(err, e, "pipe: %s", strerror(e));
    }
    char *argv[] = {(char *)interp, (char *)path, NULL};
    struct sandbox_spawn s = {
        .argv = argv,
        .envp = env.v,
        .out = out[1],
        .err = errp[1],
        .cmd = -1,
        .result = -1,
        .cg = SANDBOX_CG_EXEC,
    };
    pid_t pid = sandbox_spawn(&s, err);
    close(out[1]);
    close(errp[1]);
    if (pid < 0) {
        close(out[0]);
        close(errp[0]);
        return -1;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    fd[0] = out[0];
    fd[1] = errp[0];
    return pid;
}

static void agent_reap(struct agent *a);
static void agent_warm_done(struct agent *a, struct repl *rp, bool ok);

/* Editors on some systems save UTF-8 with a byte-order mark. Python and Bun skip one; bash
 * takes it as part of the first word ("\xef\xbb\xbfecho: command not found"). One place for all
 * languages, one-shot and REPL alike: the code handed to any interpreter starts after the mark.
 * Only one, at the very start: a mark anywhere else is the code's own business. Code that was
 * only a mark becomes empty, which every interpreter runs as nothing (exit 0). */
static ProtobufCBinaryData run_code_without_bom(ProtobufCBinaryData code)
{
    static const uint8_t bom[] = {0xEF, 0xBB, 0xBF};
    if (code.len >= sizeof bom && !memcmp(code.data, bom, sizeof bom)) {
        code.data += sizeof bom;
        code.len -= sizeof bom;
    }
    return code;
}

static int run_start(struct agent *a, uint64_t id, const Sbx__Agent__Exec *in, sbx_err *err)
{
    struct run *r = &a->run;
    if (run_validate(in, err) < 0)
        return -1;
    /* A shallow copy, read only: the fields still point into the unpacked message. */
    Sbx__Agent__Exec stripped = *in;
    stripped.code = run_code_without_bom(in->code);
    const Sbx__Agent__Exec *x = &stripped;
    int fd[2] = {-1, -1};
    struct repl *rp = NULL;
    bool reset = false;
    pid_t pid;
    uint64_t start = now_ms();
    if (x->keep_state) {
        rp = &repls[repl_lang(x->language)];
        /* A REPL that ended while idle is noticed now, so the code goes to a fresh one. */
        agent_reap(a);
        if (rp->lost) {
            reset = true;
            rp->lost = false;
        }
        /* The exec's command supersedes the warm's: answer the warm now. */
        agent_warm_done(a, rp, true);
        if (repl_start(rp, err) < 0 || repl_send(rp, x, err) < 0)
            return -1;
        rp->used = true;
        pid = rp->pid;
    } else {
        pid = run_spawn_oneshot(x, fd, err);
        if (pid < 0)
            return -1;
    }
    uint32_t timeout = x->timeout_ms ? x->timeout_ms : SBX_TIMEOUT_DEFAULT * 1000u;
    *r = (struct run){
        .pid = pid,
        .id = id,
        .repl = rp,
        .fd = {fd[0], fd[1]},
        .cap = {x->max_stdout && x->max_stdout < SBX_MAX_STDOUT ? x->max_stdout : SBX_MAX_STDOUT,
                x->max_stderr && x->max_stderr < SBX_MAX_STDERR ? x->max_stderr : SBX_MAX_STDERR},
        .start_ms = start,
        .deadline_ms = start + timeout,
        .reset = reset,
    };
    return 0;
}

/* Output of the exec in progress, under its caps. */
static void run_emit(struct agent *a, int s, const uint8_t *buf, size_t n)
{
    struct run *r = &a->run;
    size_t room = r->cap[s] - r->sent[s];
    size_t take = n < room ? n : room;
    if (take < n)
        r->trunc[s] = true;
    if (take == 0)
        return;
    r->sent[s] += take;
    Sbx__Agent__Output o = SBX__AGENT__OUTPUT__INIT;
    o.stream = (uint32_t)s + 1;
    o.data.data = (uint8_t *)buf;
    o.data.len = take;
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = r->id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_OUTPUT;
    m.output = &o;
    chan_send(&a->ch, &m);
}

/* One read from an output pipe: 1 bytes went on, 0 nothing there, -1 EOF (the fd is closed). */
static int run_pipe_read(struct agent *a, int *fd, int s, bool to_exec)
{
    static uint8_t buf[AGENT_CHUNK];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        agent_log("read pipe: %s", strerror(errno));
        n = 0;
    }
    if (n == 0) {
        close(*fd);
        *fd = -1;
        return -1;
    }
    /* A REPL's output between execs (a thread, a timer) belongs to no exec: dropped. */
    if (to_exec)
        run_emit(a, s, buf, (size_t)n);
    return 1;
}

static void run_finish(struct agent *a)
{
    struct run *r = &a->run;
    Sbx__Agent__ExecDone d = SBX__AGENT__EXEC_DONE__INIT;
    if (r->repl && r->exited && !r->have_rc) {
        /* It may have reported before ending. */
        int rc;
        if (repl_read_result(r->repl, &rc) == 1) {
            r->have_rc = true;
            r->rc = rc;
        }
    }
    if (r->have_rc)
        d.exit_code = r->rc;
    else if (WIFEXITED(r->status))
        d.exit_code = WEXITSTATUS(r->status);
    else if (WIFSIGNALED(r->status))
        d.exit_code = 128 + WTERMSIG(r->status);
    else
        d.exit_code = -1;
    d.timed_out = r->timed_out;
    d.stdout_truncated = r->trunc[0];
    d.stderr_truncated = r->trunc[1];
    d.execution_time_ms = (r->exit_ms ? r->exit_ms : now_ms()) - r->start_ms;
    d.interpreter_reset = r->repl && (r->reset || r->exited);
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = r->id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_DONE;
    m.done = &d;
    chan_send(&a->ch, &m);
    for (int s = 0; s < 2; s++)
        if (r->fd[s] >= 0)
            close(r->fd[s]);
    if (r->repl && r->exited)
        repl_close(r->repl);
    *r = (struct run){.fd = {-1, -1}};
}

/* The REPL reported the exec's result: everything the code wrote before is already in the
 * pipes (the wrapper flushed first), so take it, clean up after the code, and end the exec. */
static void run_repl_result(struct agent *a, int rc)
{
    struct run *r = &a->run;
    struct repl *rp = r->repl;
    r->exit_ms = now_ms();
    r->have_rc = true;
    r->rc = rc;
    /* Bounded: the pipe holds what was written before the result, at most its capacity; a
     * thread still printing must not keep the exec open. */
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 32 && rp->out[s] >= 0; i++)
            if (run_pipe_read(a, &rp->out[s], s, true) <= 0)
                break;
    repl_sweep(rp);
    run_finish(a);
}

static int *run_out_fd(struct run *r, int s)
{
    return r->repl ? &r->repl->out[s] : &r->fd[s];
}

/* Deadlines: SIGTERM at the timeout, SIGKILL after the grace, and an end to draining. */
static void run_timers(struct agent *a, uint64_t now)
{
    struct run *r = &a->run;
    if (!r->pid)
        return;
    if (!r->exited) {
        if (!r->term_sent && now >= r->deadline_ms) {
            r->term_sent = r->timed_out = true;
            r->kill_ms = now + AGENT_TERM_GRACE_MS;
            run_kill(r, SIGTERM);
        } else if (r->term_sent && !r->kill_sent && now >= r->kill_ms) {
            r->kill_sent = true;
            run_kill(r, SIGKILL);
        }
        return;
    }
    if ((*run_out_fd(r, 0) < 0 && *run_out_fd(r, 1) < 0) || now >= r->drain_until_ms)
        run_finish(a);
}

/* A REPL ended: during its exec, that exec ends with its status; while idle, its state is lost
 * and the next exec will say so. */
static void agent_repl_ended(struct agent *a, struct repl *rp, int status)
{
    struct run *r = &a->run;
    if (r->pid && r->repl == rp && !r->exited) {
        r->exited = true;
        r->status = status;
        if (!r->exit_ms)
            r->exit_ms = now_ms();
        r->drain_until_ms = now_ms() + AGENT_DRAIN_MS;
        return;
    }
    if (rp->used)
        rp->lost = true;
    agent_warm_done(a, rp, false);
    repl_close(rp);
}

static void agent_reap(struct agent *a)
{
    struct signalfd_siginfo si;
    while (read(a->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        ;
    struct run *r = &a->run;
    /* Kill what a process left behind before reaping it, so its pid (its group's id) cannot be
     * reused in between. */
    if (r->pid && !r->repl && !r->exited) {
        siginfo_t ci = {0};
        if (waitid(P_PID, (id_t)r->pid, &ci, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            ci.si_pid == r->pid) {
            r->exit_ms = now_ms();
            run_kill(r, SIGKILL);
        }
    }
    for (int i = 0; i < REPL_N; i++) {
        struct repl *rp = &repls[i];
        siginfo_t ci = {0};
        if (rp->pid && waitid(P_PID, (id_t)rp->pid, &ci, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            ci.si_pid == rp->pid) {
            if (r->repl == rp && !r->exit_ms)
                r->exit_ms = now_ms();
            repl_kill(rp, SIGKILL);
        }
    }
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0)
            break;
        if (r->pid && p == r->pid && !r->repl && !r->exited) {
            r->exited = true;
            r->status = st;
            if (!r->exit_ms)
                r->exit_ms = now_ms();
            r->drain_until_ms = now_ms() + AGENT_DRAIN_MS;
            continue;
        }
        for (int i = 0; i < REPL_N; i++)
            if (repls[i].pid == p)
                agent_repl_ended(a, &repls[i], st);
    }
}

/* ---- messages ----------------------------------------------------------------------------- */

/* Seed and clock, on every Hello: after a memory snapshot is restored, VMs that share its
 * memory must not share their RNG state, and the guest clock is as old as the snapshot. */
static void agent_hello(struct agent *a, const Sbx__Agent__Hello *h)
{
    if (h->seed.len >= AGENT_SEED_MIN && h->seed.len <= AGENT_SEED_MAX) {
        union {
            struct rand_pool_info info;
            uint8_t raw[sizeof(struct rand_pool_info) + AGENT_SEED_MAX];
        } u;
        u.info.entropy_count = (int)h->seed.len * 8;
        u.info.buf_size = (int)h->seed.len;
        memcpy(u.info.buf, h->seed.data, h->seed.len);
        if (a->rng_fd < 0)
            a->rng_fd = openat(initrd_dev_fd, "urandom", O_WRONLY | O_CLOEXEC);
        if (a->rng_fd < 0 || ioctl(a->rng_fd, RNDADDENTROPY, &u.info) < 0)
            agent_log("seeding the RNG: %s", strerror(errno));
        /* Adding entropy alone leaves the crng's key as it was until its next scheduled reseed
         * (up to a minute away), so every VM restored from one snapshot would draw the same
         * bytes: reseed it from the pool, which now holds this VM's seed, at once. */
        else if (ioctl(a->rng_fd, RNDRESEEDCRNG) < 0)
            agent_log("reseeding the RNG: %s", strerror(errno));
        explicit_bzero(&u, sizeof u);
    } else if (h->seed.len) {
        agent_log("seed of %zu bytes ignored (%d-%d expected)", h->seed.len, AGENT_SEED_MIN,
                  AGENT_SEED_MAX);
    }
    if (h->host_time_ns) {
        struct timespec ts = {.tv_sec = (time_t)(h->host_time_ns / 1000000000u),
                              .tv_nsec = (long)(h->host_time_ns % 1000000000u)};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0)
            agent_log("setting the clock: %s", strerror(errno));
    }
}

static void agent_ready(struct agent *a, uint64_t id)
{
    Sbx__Agent__Ready rd = SBX__AGENT__READY__INIT;
    rd.protocol_version = SBX_PROTOCOL_VERSION;
    rd.kernel = a->kernel;
    rd.uptime_ms = boottime_ms();
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_READY;
    m.ready = &rd;
    chan_send(&a->ch, &m);
}

/* Warm answers Ready (with the Warm's id) only once the REPL has run an empty command: its
 * interpreter has started, loaded its wrapper and waits for the next command. A memory snapshot
 * taken after that answer never holds a half-started REPL. */
static void agent_warm(struct agent *a, uint64_t id, const Sbx__Agent__Warm *w)
{
    int l = repl_lang(w->language);
    if (l < 0) {
        chan_failure(&a->ch, id, "warm: unknown language `%.32s` (python, javascript or raw)",
                     w->language);
        return;
    }
    sbx_err err = {0};
    struct repl *rp = &repls[l];
    agent_reap(a);
    if (a->run.pid && a->run.repl == rp) {
        agent_ready(a, id); /* busy with an exec: it is as warm as it gets */
        return;
    }
    if (rp->warming) {
        chan_failure(&a->ch, rp->warm_id, "warm: superseded by another warm");
        rp->warming = false;
    }
    Sbx__Agent__Exec empty = SBX__AGENT__EXEC__INIT;
    if (repl_start(rp, &err) < 0 || repl_send(rp, &empty, &err) < 0) {
        chan_failure(&a->ch, id, "warm: %s", err.msg);
        return;
    }
    rp->warming = true;
    rp->warm_id = id;
}

/* The REPL answered the warm's empty command (ok), or ended before it could (!ok). */
static void agent_warm_done(struct agent *a, struct repl *rp, bool ok)
{
    if (!rp->warming)
        return;
    rp->warming = false;
    if (ok)
        agent_ready(a, rp->warm_id);
    else
        chan_failure(&a->ch, rp->warm_id, "warm: the %s REPL ended while starting",
                     rp->lang == REPL_PYTHON       ? "python"
                     : rp->lang == REPL_JAVASCRIPT ? "javascript"
                                                   : "raw");
}

/* protobuf-c cuts a string at an embedded NUL without a word. For the messages that carry
 * paths, a message that does not encode back to its own size held one (or was not in canonical
 * form, which our host never sends): refused, so that "a\0/../x" can never become "a". */
static bool agent_canonical(const Sbx__Agent__HostMsg *m, size_t len)
{
    return sbx__agent__host_msg__get_packed_size(m) == len;
}

static void agent_handle(struct agent *a, const uint8_t *data, size_t len)
{
    Sbx__Agent__HostMsg *m = sbx__agent__host_msg__unpack(NULL, len, data);
    if (!m) {
        chan_failure(&a->ch, 0, "undecodable frame of %zu bytes", len);
        return;
    }
    sbx_err err = {0};
    switch (m->body_case) {
    case SBX__AGENT__HOST_MSG__BODY_HELLO:
        agent_hello(a, m->hello);
        agent_ready(a, m->id);
        if (!a->net_done) {
            a->net_done = true;
            boot_net_and_name();
            zram_swap_on(initrd_dev_fd);
        }
        break;
    case SBX__AGENT__HOST_MSG__BODY_EXEC:
        if (a->run.pid)
            chan_failure(&a->ch, m->id, "busy: an exec is already running");
        else if (run_start(a, m->id, m->exec, &err) < 0)
            chan_failure(&a->ch, m->id, "exec: %s", err.msg);
        break;
    case SBX__AGENT__HOST_MSG__BODY_WARM:
        agent_warm(a, m->id, m->warm);
        break;
    case SBX__AGENT__HOST_MSG__BODY_FILE_WRITE:
    case SBX__AGENT__HOST_MSG__BODY_FILE_READ:
    case SBX__AGENT__HOST_MSG__BODY_FILE_LIST:
        if (!agent_canonical(m, len))
            chan_failure(&a->ch, m->id, "malformed file request (a NUL in the path?)");
        else if (m->body_case == SBX__AGENT__HOST_MSG__BODY_FILE_WRITE)
            files_write(&a->ch, m->id, m->file_write);
        else if (m->body_case == SBX__AGENT__HOST_MSG__BODY_FILE_READ)
            files_read(&a->ch, m->id, m->file_read);
        else
            files_list(&a->ch, m->id, m->file_list);
        break;
    case SBX__AGENT__HOST_MSG__BODY_FILE_CHUNK:
        files_chunk(&a->ch, m->id, m->file_chunk);
        break;
    default:
        chan_failure(&a->ch, m->id, "unexpected message (body %d)", (int)m->body_case);
        break;
    }
    sbx__agent__host_msg__free_unpacked(m, NULL);
}

/* ---- loop --------------------------------------------------------------------------------- */

/* Per REPL: stdout, stderr, results. */
enum { PFD_SIG, PFD_PORT, PFD_OUT, PFD_ERR, PFD_REPL, PFD_N = PFD_REPL + 3 * REPL_N };

static void agent_loop(struct agent *a)
{
    struct chan *c = &a->ch;
    struct run *r = &a->run;
    for (;;) {
        uint64_t now = now_ms();
        run_timers(a, now);
        if (files_ready(c))
            files_pump(c);
        size_t queued = frame_writer_queued(&c->wr);
        struct pollfd p[PFD_N];
        for (int i = 0; i < PFD_N; i++)
            p[i] = (struct pollfd){.fd = -1};
        p[PFD_SIG] = (struct pollfd){.fd = a->sigfd, .events = POLLIN};
        uint64_t next = UINT64_MAX;
        if (now >= c->retry_at) {
            p[PFD_PORT].fd = c->fd;
            p[PFD_PORT].events =
                (queued < AGENT_QUEUE_PAUSE_PORT ? POLLIN : 0) | (queued > 0 ? POLLOUT : 0);
        } else {
            next = c->retry_at;
        }
        bool pipes = queued < AGENT_QUEUE_PAUSE_PIPES;
        if (r->pid) {
            for (int s = 0; s < 2 && pipes; s++)
                if (r->fd[s] >= 0)
                    p[PFD_OUT + s] = (struct pollfd){.fd = r->fd[s], .events = POLLIN};
            uint64_t t = r->exited      ? r->drain_until_ms
                         : r->kill_sent ? UINT64_MAX
                         : r->term_sent ? r->kill_ms
                                        : r->deadline_ms;
            if (t < next)
                next = t;
        }
        for (int i = 0; i < REPL_N; i++) {
            struct repl *rp = &repls[i];
            /* Output between execs is read (and dropped) whatever the queue holds. */
            bool mine = r->pid && r->repl == rp;
            for (int s = 0; s < 2; s++)
                if (rp->out[s] >= 0 && (pipes || !mine))
                    p[PFD_REPL + 3 * i + s] = (struct pollfd){.fd = rp->out[s], .events = POLLIN};
            if (rp->result >= 0)
                p[PFD_REPL + 3 * i + 2] = (struct pollfd){.fd = rp->result, .events = POLLIN};
        }
        if (files_ready(c))
            next = now;
        int timeout = -1;
        if (next != UINT64_MAX)
            timeout = next <= now ? 0 : next - now > 60000 ? 60000 : (int)(next - now);
        int n = poll(p, PFD_N, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            agent_fatal("poll: %s", strerror(errno));
        }
        if (p[PFD_SIG].revents)
            agent_reap(a);
        short pr = p[PFD_PORT].revents;
        if (pr & POLLOUT)
            chan_flush(c);
        if (pr & (POLLIN | POLLHUP | POLLERR))
            chan_read(a);
        for (int s = 0; s < 2; s++)
            if (p[PFD_OUT + s].revents && r->pid && !r->repl && r->fd[s] >= 0)
                run_pipe_read(a, &r->fd[s], s, true);
        for (int i = 0; i < REPL_N; i++) {
            struct repl *rp = &repls[i];
            bool mine = r->pid && r->repl == rp;
            for (int s = 0; s < 2; s++)
                if (p[PFD_REPL + 3 * i + s].revents && rp->out[s] >= 0)
                    run_pipe_read(a, &rp->out[s], s, mine);
            if (p[PFD_REPL + 3 * i + 2].revents && rp->result >= 0) {
                int rc;
                int got = repl_read_result(rp, &rc);
                if (got == 1 && mine && !r->exited)
                    run_repl_result(a, rc);
                else if (got == 1 && rp->warming)
                    agent_warm_done(a, rp, true);
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (getpid() != 1) {
        fprintf(stderr, "sbx-agent: this is the guest's init (PID 1); refusing to run here\n");
        return 1;
    }
    umask(0);
    sbx_err err = {0};
    if (boot_early(&err) < 0)
        agent_fatal("%s", err.msg);
    /* SIGCHLD through a signalfd so reaping is one more fd in the loop. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        agent_fatal("sigprocmask: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    static struct agent a;
    a.run.fd[0] = a.run.fd[1] = -1;
    a.rng_fd = -1;
    a.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (a.sigfd < 0)
        agent_fatal("signalfd: %s", strerror(errno));
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(a.kernel, sizeof a.kernel, "%s", u.release);
    if (boot_mount_newroot(&err) < 0)
        agent_fatal("%s", err.msg);
    a.ch.fd = boot_open_port(&err);
    if (a.ch.fd < 0)
        agent_fatal("%s", err.msg);
    /* The REPL wrappers stay in the initramfs, which the root switch puts out of reach. */
    repl_set_source(open("/repl", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (boot_switch_root(&err) < 0 || boot_hide_cmdline(&err) < 0)
        agent_fatal("%s", err.msg);
    frame_reader_init(&a.ch.rd, FRAME_MAX_AGENT);
    agent_loop(&a);
    agent_fatal("main loop returned");
}
