/* sbx-agent, PID 1 of the guest: main() in boot order, the one poll loop, and the dispatch of
 * host messages to the rooms that serve them. It holds no state of theirs, and must never return:
 * a fatal error ends the VM (agent_fatal: reboot(2), a power-off under QEMU's -no-reboot).
 *
 * The rooms: boot.c sets the sandbox up, chan.c talks to the host over the virtio-serial port
 * "sbx.agent" and logs, exec.c runs code (one-shot, or in a REPL of repl.c) as uid 1000 through
 * sandbox.c, files.c moves files in and out of the home, zram.c adds swap. Everything happens in
 * this one loop, so the host channel keeps being served while code runs. */
#include "agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>

/* Backpressure: above this many queued bytes stop reading the child's pipes (the child then
 * blocks on its own writes); chan.c stops reading host frames above a higher mark. */
#define AGENT_QUEUE_PAUSE_PIPES (4u << 20)

/* protobuf-c cuts a string at an embedded NUL without a word. For the messages that carry
 * paths, a message that does not encode back to its own size held one (or was not in canonical
 * form, which our host never sends): refused, so that "a\0/../x" can never become "a". */
static bool agent_canonical(const Sbx__Agent__HostMsg *m, size_t len)
{
    return sbx__agent__host_msg__get_packed_size(m) == len;
}

static void agent_handle(struct chan *c, const uint8_t *data, size_t len)
{
    Sbx__Agent__HostMsg *m = sbx__agent__host_msg__unpack(NULL, len, data);
    if (!m) {
        chan_failure(c, 0, "undecodable frame of %zu bytes", len);
        return;
    }
    sbx_err err = {0};
    switch (m->body_case) {
    case SBX__AGENT__HOST_MSG__BODY_HELLO:
        boot_hello(m->hello);
        /* Before Ready: the first code may use the network at once. A VM whose NIC cannot be set
         * up says so rather than running code that would find no network. */
        if ((m->hello->net && net_apply(m->hello->net, &err) < 0) ||
            (m->hello->packages && pkgs_mount(boot_dev_dir(), &err) < 0)) {
            chan_failure(c, m->id, "%s", err.msg);
            break;
        }
        chan_ready(c, m->id);
        boot_late();
        break;
    case SBX__AGENT__HOST_MSG__BODY_EXEC:
        if (exec_busy())
            chan_failure(c, m->id, "busy: an exec is already running");
        else if (exec_start(c, m->id, m->exec, &err) < 0)
            chan_failure(c, m->id, "exec: %s", err.msg);
        break;
    case SBX__AGENT__HOST_MSG__BODY_WARM:
        exec_warm(c, m->id, m->warm);
        break;
    case SBX__AGENT__HOST_MSG__BODY_FILE_WRITE:
    case SBX__AGENT__HOST_MSG__BODY_FILE_READ:
    case SBX__AGENT__HOST_MSG__BODY_FILE_LIST:
        if (!agent_canonical(m, len))
            chan_failure(c, m->id, "malformed file request (a NUL in the path?)");
        else if (m->body_case == SBX__AGENT__HOST_MSG__BODY_FILE_WRITE)
            files_write(c, m->id, m->file_write);
        else if (m->body_case == SBX__AGENT__HOST_MSG__BODY_FILE_READ)
            files_read(c, m->id, m->file_read);
        else
            files_list(c, m->id, m->file_list);
        break;
    case SBX__AGENT__HOST_MSG__BODY_FILE_CHUNK:
        files_chunk(c, m->id, m->file_chunk);
        break;
    default:
        chan_failure(c, m->id, "unexpected message (body %d)", (int)m->body_case);
        break;
    }
    sbx__agent__host_msg__free_unpacked(m, NULL);
}

/* ---- loop --------------------------------------------------------------------------------- */

enum { PFD_PORT, PFD_EXEC, PFD_N = PFD_EXEC + EXEC_PFD_N };

static void agent_loop(struct chan *c)
{
    for (;;) {
        uint64_t now = now_ms();
        exec_timers(c, now);
        if (files_ready(c))
            files_pump(c);
        size_t queued = chan_queued(c);
        struct pollfd p[PFD_N];
        for (int i = 0; i < PFD_N; i++)
            p[i] = (struct pollfd){.fd = -1};
        uint64_t next = chan_poll_set(c, now, &p[PFD_PORT]);
        uint64_t t = exec_poll_set(&p[PFD_EXEC], queued < AGENT_QUEUE_PAUSE_PIPES);
        if (t < next)
            next = t;
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
        exec_poll_sig(c, &p[PFD_EXEC]);
        chan_poll_event(c, p[PFD_PORT].revents);
        exec_poll_events(c, &p[PFD_EXEC]);
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
    int sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0)
        agent_fatal("signalfd: %s", strerror(errno));
    exec_init(sigfd);
    if (boot_mount_newroot(&err) < 0)
        agent_fatal("%s", err.msg);
    int port = boot_open_port(&err);
    if (port < 0)
        agent_fatal("%s", err.msg);
    /* The REPL wrappers stay in the initramfs, which the root switch puts out of reach. */
    repl_set_source(open("/repl", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (boot_switch_root(&err) < 0 || boot_hide_cmdline(&err) < 0)
        agent_fatal("%s", err.msg);
    agent_loop(chan_open(port, agent_handle));
    agent_fatal("main loop returned");
}
