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

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>

/* Backpressure: above this many queued bytes stop reading the child's pipes (the child then
 * blocks on its own writes), and above the second stop reading host frames too. */
#define AGENT_QUEUE_PAUSE_PIPES (4u << 20)
#define AGENT_QUEUE_PAUSE_PORT (8u << 20)

/* protobuf-c cuts a string at an embedded NUL without a word. For the messages that carry
 * paths, a message that does not encode back to its own size held one (or was not in canonical
 * form, which our host never sends): refused, so that "a\0/../x" can never become "a". */
static bool agent_canonical(const Sbx__Agent__HostMsg *m, size_t len)
{
    return sbx__agent__host_msg__get_packed_size(m) == len;
}

void agent_handle(struct agent *a, const uint8_t *data, size_t len)
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
