/* The log (kernel console) and the one host channel: frames in and out of the virtio port, the
 * oversized-frame drop, the host going away and coming back, and the Ready greeting. It never
 * interprets a request (agent.c dispatches them) and never blocks on the port. */
#include "agent.h"

#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/reboot.h>
#include <sys/utsname.h>

/* While the host side of the port is closed, read() returns 0 and poll() says POLLHUP at once:
 * look again after this long instead of spinning. */
#define AGENT_PORT_RETRY_MS 10
/* Backpressure: above this many queued bytes stop reading host frames (agent.c stops reading
 * the child's pipes earlier, at AGENT_QUEUE_PAUSE_PIPES). */
#define AGENT_QUEUE_PAUSE_PORT (8u << 20)

/* The kernel console (/dev/console: ttyS0 on x86 microvm, ttyAMA0 on arm virt, whichever
 * console= names), opened on first use from the initramfs /dev: opening the UART
 * costs a couple of ms of boot under TCG and is rarely needed. */
static int console_fd = -1;

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
    if (console_fd < 0 && boot_dev_dir() >= 0)
        console_fd = openat(boot_dev_dir(), "console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    ssize_t w = write(console_fd >= 0 ? console_fd : 2, buf, (size_t)n);
    (void)w;
}

__attribute__((format(printf, 1, 2), noreturn)) void agent_fatal(const char *fmt, ...)
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

static uint64_t boottime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- host channel ------------------------------------------------------------------------- */

struct chan {
    int fd;
    frame_reader rd;
    frame_writer wr;
    uint64_t retry_at; /* host side closed: do not poll the port before this time */
    uint64_t skip;     /* bytes of an oversized frame still to throw away */
    bool connected;    /* bytes have come from the current host connection */
    chan_handler *handle;
    char kernel[65]; /* the release, for Ready */
};

struct chan *chan_open(int fd, chan_handler *handle)
{
    static struct chan c;
    c.fd = fd;
    c.handle = handle;
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(c.kernel, sizeof c.kernel, "%s", u.release);
    frame_reader_init(&c.rd, FRAME_MAX_AGENT);
    return &c;
}

size_t chan_queued(const struct chan *c)
{
    return frame_writer_queued(&c->wr);
}

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

static void chan_read(struct chan *c)
{
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
        c->handle(c, data, len);
    }
}

uint64_t chan_poll_set(struct chan *c, uint64_t now, struct pollfd *p)
{
    if (now < c->retry_at)
        return c->retry_at;
    size_t queued = frame_writer_queued(&c->wr);
    p->fd = c->fd;
    p->events = (queued < AGENT_QUEUE_PAUSE_PORT ? POLLIN : 0) | (queued > 0 ? POLLOUT : 0);
    return UINT64_MAX;
}

void chan_poll_event(struct chan *c, short revents)
{
    if (revents & POLLOUT)
        chan_flush(c);
    if (revents & (POLLIN | POLLHUP | POLLERR))
        chan_read(c);
}

void chan_ready(struct chan *c, uint64_t id)
{
    Sbx__Agent__Ready rd = SBX__AGENT__READY__INIT;
    rd.protocol_version = SBX_PROTOCOL_VERSION;
    rd.kernel = c->kernel;
    rd.uptime_ms = boottime_ms();
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_READY;
    m.ready = &rd;
    chan_send(c, &m);
}
