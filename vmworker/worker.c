/* sbx-vmworker: one per VM, started by sbxd with one socketpair end (--fd N): jail, one QEMU,
 * then the event wait that hands each request to the relay. main is the one place that dies;
 * nothing below it exits on an error, and nothing the worker made outlives it. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "balloon.h"
#include "jail.h"
#include "net.h"
#include "worker.h"

#define HELLO_RESEND_MS 1000

worker W = {.ctl = -1, .sigfd = -1, .agent = -1, .con = -1, .vm = {.pid = -1, .net_fd = -1}};
qmp_conn qmp = {.fd = -1};
const char *start_mode = "cold";

void cleanup_vm(void)
{
    qemu_kill(&W.vm);
    if (W.cfg && W.cfg->run_dir && *W.cfg->run_dir) {
        unlink(W.vm.agent_sock);
        unlink(W.vm.console_sock);
        unlink(W.vm.qmp_sock);
        unlink(W.vm.log_path);
    }
}

/* sbxd asked the VM to end (SIGTERM, or it closed our link): nobody to report to. */
__attribute__((noreturn)) static void stop_now(void)
{
    cleanup_vm();
    exit(1);
}

/* The VM cannot go on: report, remove it, exit. The one place that dies; main alone calls it. */
__attribute__((noreturn)) static void die(const vm_err *err)
{
    wlog("%s", err->msg);
    send_error(err);
    stop_now();
}

bool reap_signals(int *st)
{
    struct signalfd_siginfo si;
    while (read(W.sigfd, &si, sizeof si) == sizeof si)
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            stop_now();
    if (W.vm.pid > 0 && waitpid(W.vm.pid, st, WNOHANG) == W.vm.pid) {
        W.vm.pid = -1;
        return true;
    }
    return false;
}

int next_event(uint64_t deadline, bool want_ctl, const uint8_t **frame, size_t *len, vm_err *err)
{
    for (;;) {
        int r;
        if (W.agent >= 0 && (r = frame_reader_next(&W.ag_rd, frame, len)) != 0) {
            if (r < 0)
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                               "guest agent sent an oversized frame; VM stopped");
            return EV_AGENT;
        }
        if (want_ctl && (r = frame_reader_next(&W.ctl_rd, frame, len)) != 0) {
            if (r < 0)
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "oversized frame from sbxd");
            return EV_CTL;
        }
        uint64_t now = now_ms();
        if (now >= deadline)
            return EV_TIMEOUT;
        uint64_t until = deadline;
        if (W.idle) {
            if (balloon_due() <= now)
                balloon_tick();
            uint64_t due = balloon_due();
            until = due < until ? due : until;
            now = now_ms();
        }
        struct pollfd p[5] = {{.fd = W.ctl, .events = POLLIN},
                              {.fd = W.sigfd, .events = POLLIN},
                              {.fd = W.agent, .events = POLLIN},
                              {.fd = W.con, .events = POLLIN},
                              {.fd = qmp.fd, .events = POLLIN}};
        int wait = until <= now ? 0 : until - now > 1000000 ? 1000000 : (int)(until - now);
        if (poll(p, 5, wait) < 0) {
            if (errno == EINTR)
                continue;
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "poll: %s",
                           strerror(errno));
        }
        if (p[3].revents)
            console_read();
        if (p[4].revents)
            qmp_drain(&qmp); /* events nobody waits for; a closed QMP only ends the balloon */
        int st;
        if (p[1].revents && reap_signals(&st)) {
            /* Drain what the console still holds before reporting. */
            if (W.con >= 0)
                console_read();
            char why[512];
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                           "the VM stopped unexpectedly (QEMU %s %d): %s",
                           WIFSIGNALED(st) ? "killed by signal" : "exited with status",
                           WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                           vm_gone_reason(why, sizeof why));
        }
        if (p[0].revents) {
            ssize_t n = frame_reader_fill(&W.ctl_rd, W.ctl);
            if (n == 0 || (n < 0 && errno != EAGAIN))
                stop_now(); /* sbxd went away or cancelled the run */
        }
        if (W.agent >= 0 && p[2].revents) {
            ssize_t n = frame_reader_fill(&W.ag_rd, W.agent);
            if (n == 0 || (n < 0 && errno != EAGAIN)) {
                char why[512];
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                               "guest agent channel closed: %s", vm_gone_reason(why, sizeof why));
            }
        }
    }
}

/* The next request from sbxd. want: the one body expected, or 0 for any. */
static Sbx__Worker__ToWorker *recv_ctl(Sbx__Worker__ToWorker__BodyCase want, uint64_t deadline,
                                       vm_err *err)
{
    const uint8_t *f;
    size_t n;
    for (;;) {
        int ev = next_event(deadline, true, &f, &n, err);
        if (ev == EV_ERROR)
            return NULL;
        if (ev == EV_TIMEOUT) {
            vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                    "sbxd sent nothing in time");
            return NULL;
        }
        if (ev != EV_CTL)
            continue; /* a guest frame nobody asked for: ignore */
        Sbx__Worker__ToWorker *m = sbx__worker__to_worker__unpack(NULL, n, f);
        if (!m || (want && m->body_case != want)) {
            vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                    "unexpected frame from sbxd");
            return NULL;
        }
        W.req_id = m->id;
        return m;
    }
}

uint64_t agent_seq;

int recv_agent(uint64_t id, uint64_t deadline, Sbx__Agent__GuestMsg **out, vm_err *err)
{
    const uint8_t *f;
    size_t n;
    for (;;) {
        int ev = next_event(deadline, false, &f, &n, err);
        if (ev == EV_ERROR)
            return -1;
        if (ev == EV_TIMEOUT)
            return 0;
        if (ev != EV_AGENT)
            continue;
        Sbx__Agent__GuestMsg *g = agent_unpack(f, n, err);
        if (!g)
            return -1;
        if (g->id == id && g->body_case != SBX__AGENT__GUEST_MSG__BODY_READY) {
            *out = g;
            return 1;
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
}

/* Boot cold: QEMU, its sockets, then Hellos until the agent is Ready. */
static int boot(uint64_t *boot_ms, vm_err *err)
{
    sbx_err e = {0};
    if (qemu_spawn(W.cfg, &W.vm, &e) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "start QEMU: %s",
                       e.msg);
    uint64_t deadline = W.vm.t_spawn + W.cfg->boot_timeout_ms;
    int rc = guest_connect(deadline, &e, err);
    if (rc == -2)
        return -1;
    if (rc < 0)
        goto qemu_failed;
    /* QMP: a template needs it to save; any other VM can run without (no idle reclaim). */
    if (qmp_open(&qmp, &W.vm, deadline, &e) < 0) {
        if (W.cfg->start_mode && !strcmp(W.cfg->start_mode, "template"))
            goto qemu_failed;
        wlog("warning: %s; this VM runs without QMP (no idle memory reclaim)", e.msg);
    }
    unlink(W.vm.qmp_sock); /* ours alone from now on */
    frame_reader_init(&W.ag_rd, FRAME_MAX_AGENT);
    if (send_hello(err) < 0)
        return -1;
    uint64_t next_hello = now_ms() + HELLO_RESEND_MS;
    for (;;) {
        const uint8_t *f;
        size_t n;
        uint64_t until = next_hello < deadline ? next_hello : deadline;
        int ev = next_event(until, false, &f, &n, err);
        if (ev == EV_ERROR)
            return -1;
        if (ev == EV_TIMEOUT) {
            if (now_ms() >= deadline) {
                char why[512];
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT, true,
                               "the VM did not boot within %u ms (%s accelerator): %s",
                               W.cfg->boot_timeout_ms, W.cfg->accel,
                               vm_gone_reason(why, sizeof why));
            }
            if (send_hello(err) < 0)
                return -1;
            next_hello = now_ms() + HELLO_RESEND_MS;
            continue;
        }
        if (ev != EV_AGENT)
            continue;
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
        if (!g)
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                           "undecodable frame from the guest agent during boot");
        if (g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY) {
            uint32_t v = g->ready->protocol_version;
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            if (v != SBX_PROTOCOL_VERSION)
                return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "guest agent speaks protocol %u, host %d: rebuild the assets", v,
                               SBX_PROTOCOL_VERSION);
            *boot_ms = now_ms() - W.vm.t_spawn;
            return 0;
        }
        if (g->body_case == SBX__AGENT__GUEST_MSG__BODY_FAILURE) {
            /* The agent could not set the VM up as asked (its NIC): it will not serve code. */
            vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_GUEST_AGENT, false,
                    "the guest agent could not start: %s", g->failure->message);
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            return -1;
        }
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
qemu_failed : {
    char why[512];
    return vm_fail(err, agent_err_kind(&e), true, "start VM: %s: %s", e.msg,
                   vm_gone_reason(why, sizeof why));
}
}

static void noop_handler(int sig) {}

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer's exit-time scan stops the world with ptrace from a helper task, which cannot
 * work as PID 1 of a pid namespace under our seccomp filter: the worker would spin at exit.
 * ASan/UBSan stay on in test builds; sbxd's leaks are checked by LSan and valgrind. */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return 1;
}
#endif

/* Replace a string of the unpacked config (protobuf-c frees them with free()). */
static int set_str(char **field, const char *v, vm_err *err)
{
    char *n = strdup(v);
    if (!n)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
    free(*field);
    *field = n;
    return 0;
}

/* The one place the worker narrows itself (and, by inheritance, QEMU): namespaces were made by
 * sbxd; here the private root, the VM's uid, no capabilities, no_new_privs. */
static int enter_jail(Sbx__Worker__VmConfig *c, vm_err *err)
{
    if (!c->jail)
        return 0;
    bool snap =
        c->start_mode && (!strcmp(c->start_mode, "restore") || !strcmp(c->start_mode, "template"));
    jail_spec js = {.run_dir = c->run_dir,
                    .snapshot_dir =
                        snap && c->snapshot_dir && *c->snapshot_dir ? c->snapshot_dir : NULL,
                    .snapshot_rw = snap && !strcmp(c->start_mode, "template"),
                    .kernel = c->kernel,
                    .initrd = c->initrd,
                    .rootfs = c->rootfs,
                    .layer = c->layer && *c->layer ? c->layer : NULL,
                    .qemu = c->qemu,
                    .kvm = !strcmp(c->accel, "kvm"),
                    .userns = c->userns,
                    .uid = c->vm_uid,
                    .gid = c->vm_gid};
    if (!c->qemu || c->qemu[0] != '/')
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false,
                       "QEMU path must be absolute");
    sbx_err e = {0};
    if (jail_enter(&js, &e) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", e.msg);
    /* Changing credentials cleared the parent-death signal. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (set_str(&c->run_dir, JAIL_VM_DIR, err) < 0 || set_str(&c->kernel, JAIL_KERNEL, err) < 0 ||
        set_str(&c->initrd, JAIL_INITRD, err) < 0 || set_str(&c->rootfs, JAIL_ROOTFS, err) < 0 ||
        set_str(&c->qemu, JAIL_QEMU, err) < 0 ||
        (js.layer && set_str(&c->layer, JAIL_LAYER, err) < 0))
        return -1;
    if (js.snapshot_dir)
        return set_str(&c->snapshot_dir, JAIL_SNAPSHOT, err);
    return 0;
}

/* The worker's own seccomp filter, once QEMU runs and every socket to it is connected. */
static int lock_down(vm_err *err)
{
    sbx_err e = {0};
    if (W.cfg->jail && jail_seccomp(&e) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", e.msg);
    return 0;
}

/* QEMU runs as our uid: whatever takes it over must not reach the worker (ptrace, /proc/1/mem,
 * process_vm_readv), and QEMU gets a filter of its own under its -sandbox (jail.c). Not
 * dumpable must come after jail_enter: changing uid resets it to fs.suid_dumpable. */
static int confine_qemu(vm_err *err)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false,
                       "make the worker non-dumpable: %s", strerror(errno));
    sbx_err e = {0};
    if (jail_qemu_filter(&W.vm.confine_arg, &e) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, false, "%s", e.msg);
    W.vm.confine = jail_qemu_confine;
    return 0;
}

/* Boot, restore, or make a template, as sbxd asked; 1 when the job is done (a template). A
 * failed restore is a cold boot in the same slot: the run never sees it, beyond start_mode
 * "cold" and the warning sbxd logs. */
static int start_vm(uint64_t *boot_ms, vm_err *err)
{
    const char *mode = W.cfg->start_mode ? W.cfg->start_mode : "";
    if (!strcmp(mode, "restore")) {
        uint64_t t0 = now_ms();
        int r = snapshot_restore(boot_ms, err);
        if (r != 0)
            return r < 0 ? -1 : 0;
        wlog("warning: restore from the memory snapshot failed; booting cold: %s", restore_error);
        if (set_str(&W.cfg->start_mode, "cold", err) < 0 || boot(boot_ms, err) < 0)
            return -1;
        *boot_ms += W.vm.t_spawn - t0; /* the attempt counts */
        return 0;
    }
    if (boot(boot_ms, err) < 0)
        return -1;
    if (!strcmp(mode, "template")) {
        if (lock_down(err) < 0 || snapshot_make_template(*boot_ms, err) < 0)
            return -1;
        return 1;
    }
    return 0;
}

/* Requests until the job is done: one exec for a run; for a session, requests until sbxd
 * closes it (it kills us when the session ends or idles out, so there is no deadline here).
 * Returns 1 when a session lost its VM. */
static int serve(uint64_t boot_ms, uint64_t setup_ms, vm_err *err)
{
    bool first = true;
    /* Idle reclaim, when sbxd asks for it (sessions), for VMs that booted cold (see qemu.c for
     * restored ones). */
    balloon_init(&qmp, W.cfg->memory_mb,
                 W.cfg->session && !strcmp(start_mode, "cold") ? W.cfg->reclaim_idle_ms : 0);
    do {
        uint64_t deadline = W.cfg->session ? UINT64_MAX : now_ms() + 30000;
        balloon_idle_start();
        W.idle = W.cfg->session;
        Sbx__Worker__ToWorker *rq = recv_ctl(0, deadline, err);
        W.idle = false;
        if (!rq)
            return -1;
        balloon_wake();
        int rc = 0;
        switch (rq->body_case) {
        case SBX__WORKER__TO_WORKER__BODY_EXEC:
            rc = run_exec(rq->exec, first ? boot_ms : 0, first ? setup_ms : 0, err);
            first = false;
            break;
        case SBX__WORKER__TO_WORKER__BODY_FILE_WRITE:
        case SBX__WORKER__TO_WORKER__BODY_FILE_READ:
        case SBX__WORKER__TO_WORKER__BODY_FILE_LIST:
            if (W.cfg->session)
                rc = run_file_op(rq, err);
            else
                reply_error(SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                            "file requests need a session");
            break;
        case SBX__WORKER__TO_WORKER__BODY_FILE_CHUNK:
            break; /* the rest of an upload that was refused already */
        default:
            rc = vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                         "unexpected request from sbxd");
        }
        sbx__worker__to_worker__free_unpacked(rq, NULL);
        if (rc != 0)
            return rc;
    } while (W.cfg->session);
    return 0;
}

static void send_booted(uint64_t boot_ms, uint64_t setup_ms)
{
    Sbx__Worker__Booted b = SBX__WORKER__BOOTED__INIT;
    b.boot_ms = boot_ms;
    b.setup_ms = setup_ms;
    b.qemu_pid = (uint32_t)W.vm.pid;
    b.start_mode = (char *)start_mode;
    b.restore_error = restore_error;
    b.restore_timed_out = restore_timed_out;
    if (net_wanted(W.cfg))
        b.n_exposed_ports = net_ports(&b.exposed_ports);
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_BOOTED;
    m.booted = &b;
    send_ctl(&m);
}

/* sbxd's Hello, and ours back. */
static int handshake(vm_err *err)
{
    Sbx__Worker__ToWorker *hello =
        recv_ctl(SBX__WORKER__TO_WORKER__BODY_HELLO, now_ms() + 30000, err);
    if (!hello)
        return -1;
    uint32_t v = hello->hello->protocol_version;
    sbx__worker__to_worker__free_unpacked(hello, NULL);
    if (v != SBX_PROTOCOL_VERSION)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                       "sbxd speaks protocol %u, worker %d", v, SBX_PROTOCOL_VERSION);
    Sbx__Control__HelloOk ok = SBX__CONTROL__HELLO_OK__INIT;
    ok.protocol_version = SBX_PROTOCOL_VERSION;
    ok.server = "sbx-vmworker/" SBX_VERSION;
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_HELLO;
    m.hello = &ok;
    send_ctl(&m);
    return 0;
}

int main(int argc, char **argv)
{
    W.t_start = now_ms();
    if (argc != 3 || strcmp(argv[1], "--fd") != 0) {
        fprintf(stderr, "usage: sbx-vmworker --fd N (started by sbxd, not by hand)\n");
        return 2;
    }
    W.ctl = atoi(argv[2]);
    if (W.ctl < 3 || fcntl(W.ctl, F_GETFD) < 0) {
        fprintf(stderr, "sbx-vmworker: --fd %s is not an open descriptor\n", argv[2]);
        return 2;
    }
    fcntl(W.ctl, F_SETFD, FD_CLOEXEC);
    frame_reader_init(&W.ctl_rd, FRAME_MAX_WORKER);
    /* If sbxd dies, so do we (and QEMU with us). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    /* We are PID 1 of our pid namespace: the kernel drops signals that have no handler, even
     * blocked ones read through a signalfd. */
    struct sigaction sa = {.sa_handler = noop_handler};
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    W.sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);

    vm_err err = {0};
    if (handshake(&err) < 0)
        die(&err);
    Sbx__Worker__ToWorker *start =
        recv_ctl(SBX__WORKER__TO_WORKER__BODY_START, now_ms() + 30000, &err);
    if (!start)
        die(&err);
    W.cfg = start->start;
    if (enter_jail(W.cfg, &err) < 0 || confine_qemu(&err) < 0)
        die(&err);
    if (net_wanted(W.cfg) && net_start(W.cfg, &W.vm.net_fd, &err) < 0)
        die(&err);
    uint64_t setup_ms = now_ms() - W.t_start, boot_ms = 0;
    int rc = start_vm(&boot_ms, &err);
    if (rc < 0)
        die(&err);
    if (W.vm.net_fd >= 0) {
        close(W.vm.net_fd); /* QEMU's now: when it ends, the network process sees it */
        W.vm.net_fd = -1;
        if (net_ready(&err) < 0)
            die(&err);
    }
    if (rc > 0)
        exit(0); /* a template: saved and reported */
    if (lock_down(&err) < 0)
        die(&err);
    send_booted(boot_ms, setup_ms);
    if (W.cfg->probe) {
        cleanup_vm();
        sbx__worker__to_worker__free_unpacked(start, NULL);
        frame_reader_free(&W.ctl_rd);
        frame_reader_free(&W.ag_rd);
        return 0;
    }
    rc = serve(boot_ms, setup_ms, &err);
    if (rc < 0)
        die(&err);
    if (rc > 0)
        exit(1); /* sbxd closes the session: its VM is gone */
    sbx__worker__to_worker__free_unpacked(start, NULL);
    frame_reader_free(&W.ctl_rd);
    frame_reader_free(&W.ag_rd);
    if (W.con >= 0)
        close(W.con);
    return 0;
}
