/* vmworker snapshot */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "agent.pb-c.h"
#include "frame.h"
#include "jail.h"
#include "sbx_limits.h"
#include "qemu.h"
#include "qmp.h"
#include "worker.h"
#include "balloon.h"
#include "worker.pb-c.h"

/* ---- memory snapshots -------------------------------------------------------------------- */

/* A restore that takes longer than this is given up for a cold boot (sbxd usually says). */
#define RESTORE_TIMEOUT_MS 5000
#define RESTORE_HELLO_MS 250
/* Template steps: the REPL's warm-up, and saving the device state. */
#define TEMPLATE_STEP_MS 60000

/* The guest agent's Ready to a fresh Hello on a restored VM, until deadline. Nothing here is
 * fatal: every failure becomes a cold boot. */
static int restore_wait_ready(uint64_t deadline, sbx_err *err)
{
    uint64_t next_hello = 0;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int r = frame_reader_next(&W.ag_rd, &f, &n);
        if (r < 0)
            return sbx_fail(err, EMSGSIZE, "the guest agent sent an oversized frame");
        if (r == 1) {
            Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
            if (!g)
                return sbx_fail(err, EPROTO, "undecodable frame from the guest agent");
            bool ready = g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
            uint32_t v = ready ? g->ready->protocol_version : 0;
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            if (ready && v != SBX_PROTOCOL_VERSION)
                return sbx_fail(err, EPROTO, "the snapshot's agent speaks protocol %u, host %d", v,
                                SBX_PROTOCOL_VERSION);
            if (ready)
                return 0;
            continue;
        }
        uint64_t now = now_ms();
        if (now >= deadline)
            return sbx_fail(err, ETIMEDOUT, "the guest agent did not answer within %u ms",
                            W.cfg->restore_timeout_ms ? W.cfg->restore_timeout_ms
                                                      : RESTORE_TIMEOUT_MS);
        /* Hello again now and then: it is idempotent, and a guest resuming may see the channel
         * close and reopen around the first one. */
        if (now >= next_hello) {
            if (try_send_hello(err) < 0)
                return -1;
            next_hello = now + RESTORE_HELLO_MS;
        }
        uint64_t until = next_hello < deadline ? next_hello : deadline;
        struct pollfd p[3] = {{.fd = W.sigfd, .events = POLLIN},
                              {.fd = W.agent, .events = POLLIN},
                              {.fd = W.con, .events = POLLIN}};
        if (poll(p, 3, (int)(until - now)) < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(err, errno, "poll: %s", strerror(errno));
        }
        if (p[2].revents)
            console_read();
        int st;
        if (p[0].revents && reap_signals(&st))
            return sbx_fail(err, ECHILD, "QEMU %s %d",
                            WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
                            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        if (p[1].revents) {
            ssize_t got = frame_reader_fill(&W.ag_rd, W.agent);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                return sbx_fail(err, EPIPE, "the guest agent channel closed");
        }
    }
}

/* Start from the snapshot: QEMU maps its RAM file copy-on-write and waits (-incoming defer),
 * QMP loads the device state (x-ignore-shared: the RAM is in the file, not the stream), the
 * guest resumes where the template stood, and answers a Hello that gives it its own seed and
 * the host's clock. On failure QEMU is gone, the run directory is as before, restore_error
 * says why, and the caller boots cold. */
bool boot_restore(uint64_t *boot_ms)
{
    sbx_err err = {0};
    uint32_t limit = W.cfg->restore_timeout_ms ? W.cfg->restore_timeout_ms : RESTORE_TIMEOUT_MS;
    char uri[PATH_MAX + 8];
    snprintf(uri, sizeof uri, "file:%s/state", W.cfg->snapshot_dir);
    if (qemu_spawn(W.cfg, &W.vm, &err) < 0)
        goto failed;
    uint64_t deadline = W.vm.t_spawn + limit;
    if (qmp_open(&qmp, &W.vm, deadline, &err) < 0)
        goto failed;
    int rc = qmp_exec(
        &qmp, "migrate-set-capabilities",
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1),
        NULL, deadline, &err);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate-incoming", json_pack("{s:s}", "uri", uri), NULL, deadline,
                      &err);
    /* The load goes on inside QEMU; a broken state file makes it exit with the reason. */
    unlink(W.vm.qmp_sock);
    if (rc < 0)
        goto failed;
    W.con = qemu_connect(&W.vm, W.vm.console_sock, deadline, &err);
    if (W.con < 0)
        goto failed;
    W.agent = qemu_connect(&W.vm, W.vm.agent_sock, deadline, &err);
    if (W.agent < 0)
        goto failed;
    agent_nonblock();
    frame_reader_init(&W.ag_rd, FRAME_MAX_AGENT);
    if (restore_wait_ready(deadline, &err) < 0)
        goto failed;
    *boot_ms = now_ms() - W.vm.t_spawn;
    start_mode = "restore";
    return true;
failed : {
    char why[512];
    restore_timed_out = err.code == ETIMEDOUT;
    snprintf(restore_error, sizeof restore_error, "%s (%s)", err.msg,
             vm_gone_reason(why, sizeof why));
    qmp_close(&qmp);
    qemu_kill(&W.vm);
    if (W.agent >= 0)
        close(W.agent);
    if (W.con >= 0)
        close(W.con);
    W.agent = W.con = -1;
    W.con_len = 0;
    frame_reader_free(&W.ag_rd);
    unlink(W.vm.agent_sock);
    unlink(W.vm.console_sock);
    unlink(W.vm.qmp_sock);
    return false;
}
}

/* A template VM, booted cold with its RAM in snapshot_dir/mem: warm the language's REPL (the
 * agent answers the Warm once the REPL has run an empty command), save the device state with
 * the VM running (stopping it first would leave restored VMs paused), report, and stop. */
__attribute__((noreturn)) void make_template(uint64_t boot_ms)
{
    sbx_err err = {0};
    uint64_t t_warm = now_ms(), deadline = t_warm + TEMPLATE_STEP_MS;
    Sbx__Agent__Warm w = SBX__AGENT__WARM__INIT;
    w.language = W.cfg->language;
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    hm.id = ++agent_seq;
    hm.body_case = SBX__AGENT__HOST_MSG__BODY_WARM;
    hm.warm = &w;
    send_agent(&hm);
    for (bool warm = false; !warm;) {
        const uint8_t *f;
        size_t n;
        if (next_event(deadline, false, &f, &n) == EV_TIMEOUT)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true,
                 "template: the %s REPL did not start within %d s", W.cfg->language,
                 TEMPLATE_STEP_MS / 1000);
        Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
        if (!g)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                 "undecodable frame from the guest agent");
        if (g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_FAILURE)
            fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: %.400s",
                 g->failure->message ? g->failure->message : "warm failed");
        warm = g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
    uint64_t t_save = now_ms();
    char uri[PATH_MAX + 8];
    snprintf(uri, sizeof uri, "file:%s/state", W.cfg->snapshot_dir);
    int rc = qmp_exec(
        &qmp, "migrate-set-capabilities",
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1),
        NULL, deadline, &err);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate", json_pack("{s:s}", "uri", uri), NULL, deadline, &err);
    /* Poll: the MIGRATION event needs a capability of its own, and this takes milliseconds. */
    for (bool done = false; rc == 0 && !done;) {
        json_t *r = NULL;
        rc = qmp_exec(&qmp, "query-migrate", NULL, &r, deadline, &err);
        const char *st = json_string_value(json_object_get(r, "status"));
        const char *desc = json_string_value(json_object_get(r, "error-desc"));
        if (rc == 0 && st && (!strcmp(st, "failed") || !strcmp(st, "cancelled")))
            rc = sbx_fail(&err, EIO, "migration %s: %.300s", st, desc ? desc : "no reason given");
        done = rc == 0 && st && !strcmp(st, "completed");
        json_decref(r);
        if (rc == 0 && !done) {
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (rc < 0)
        fail(SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: save: %s", err.msg);
    uint64_t t_done = now_ms();
    Sbx__Worker__SnapshotSaved sv = SBX__WORKER__SNAPSHOT_SAVED__INIT;
    sv.qemu_version = qmp.version;
    sv.boot_ms = boot_ms;
    sv.warm_ms = t_save - t_warm;
    sv.save_ms = t_done - t_save;
    qmp_close(&qmp);
    /* The VM stays paused after the save: its RAM file is final. */
    cleanup_vm();
    Sbx__Worker__FromWorker m = SBX__WORKER__FROM_WORKER__INIT;
    m.body_case = SBX__WORKER__FROM_WORKER__BODY_SNAPSHOT_SAVED;
    m.snapshot_saved = &sv;
    send_ctl(&m);
    exit(0);
}
