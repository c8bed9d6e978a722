/* Memory snapshots in the worker: restore a VM from a template's RAM file and device state, or
 * make that template. A restore never fails a run: whatever goes wrong becomes a cold boot. It
 * never writes the snapshot it restores from; only a template VM has it writable. */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker.h"

/* A restore that takes longer than this is given up for a cold boot (sbxd usually says). */
#define RESTORE_TIMEOUT_MS 5000
#define RESTORE_HELLO_MS 250
/* Template steps: the REPL's warm-up, and saving the device state. */
#define TEMPLATE_STEP_MS 60000

char restore_error[512];
bool restore_timed_out;

/* The snapshot's state file, as QEMU's migration URI. */
static void state_uri(char *uri, size_t n)
{
    snprintf(uri, n, "file:%s/state", W.cfg->snapshot_dir);
}

/* Saving and loading both skip the RAM: it is in the file snapshot_dir/mem, not the stream. */
static int ignore_shared(uint64_t deadline, sbx_err *err)
{
    return qmp_exec(
        &qmp, "migrate-set-capabilities",
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1),
        NULL, deadline, err);
}

/* The guest agent's Ready to a fresh Hello on a restored VM, until deadline. -1: a failure that
 * becomes a cold boot (why); -2: one that ends the VM (err). */
static int restore_wait_ready(uint64_t deadline, uint32_t limit, sbx_err *why, vm_err *err)
{
    uint64_t next_hello = 0;
    for (;;) {
        const uint8_t *f;
        size_t n;
        int r = frame_reader_next(&W.ag_rd, &f, &n);
        if (r < 0)
            return sbx_fail(why, EMSGSIZE, "the guest agent sent an oversized frame");
        if (r == 1) {
            Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, f);
            if (!g)
                return sbx_fail(why, EPROTO, "undecodable frame from the guest agent");
            bool ready = g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
            uint32_t v = ready ? g->ready->protocol_version : 0;
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            if (ready && v != SBX_PROTOCOL_VERSION)
                return sbx_fail(why, EPROTO, "the snapshot's agent speaks protocol %u, host %d", v,
                                SBX_PROTOCOL_VERSION);
            if (ready)
                return 0;
            continue;
        }
        uint64_t now = now_ms();
        if (now >= deadline)
            return sbx_fail(why, ETIMEDOUT, "the guest agent did not answer within %u ms", limit);
        /* Hello again now and then: it is idempotent, and a guest resuming may see the channel
         * close and reopen around the first one. */
        if (now >= next_hello) {
            if (send_hello(err) < 0) {
                if (err->kind == SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL)
                    return -2; /* no randomness for the seed */
                return sbx_fail(why,
                                err->kind == SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT ? ETIMEDOUT
                                                                                        : EPIPE,
                                "%s", err->msg);
            }
            next_hello = now + RESTORE_HELLO_MS;
        }
        uint64_t until = next_hello < deadline ? next_hello : deadline;
        struct pollfd p[3] = {{.fd = W.sigfd, .events = POLLIN},
                              {.fd = W.agent, .events = POLLIN},
                              {.fd = W.con, .events = POLLIN}};
        if (poll(p, 3, (int)(until - now)) < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(why, errno, "poll: %s", strerror(errno));
        }
        if (p[2].revents)
            console_read();
        int st;
        if (p[0].revents && reap_signals(&st))
            return sbx_fail(why, ECHILD, "QEMU %s %d",
                            WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
                            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        if (p[1].revents) {
            ssize_t got = frame_reader_fill(&W.ag_rd, W.agent);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                return sbx_fail(why, EPIPE, "the guest agent channel closed");
        }
    }
}

/* Start from the snapshot: QEMU maps its RAM file copy-on-write and waits (-incoming defer),
 * QMP loads the device state (x-ignore-shared: the RAM is in the file, not the stream), the
 * guest resumes where the template stood, and answers a Hello that gives it its own seed and
 * the host's clock. On failure QEMU is gone, the run directory is as before, restore_error
 * says why, and the caller boots cold. */
int snapshot_restore(uint64_t *boot_ms, vm_err *err)
{
    sbx_err why = {0};
    uint32_t limit = W.cfg->restore_timeout_ms ? W.cfg->restore_timeout_ms : RESTORE_TIMEOUT_MS;
    char uri[PATH_MAX + 8];
    state_uri(uri, sizeof uri);
    if (qemu_spawn(W.cfg, &W.vm, &why) < 0)
        goto failed;
    uint64_t deadline = W.vm.t_spawn + limit;
    if (qmp_open(&qmp, &W.vm, deadline, &why) < 0)
        goto failed;
    int rc = ignore_shared(deadline, &why);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate-incoming", json_pack("{s:s}", "uri", uri), NULL, deadline,
                      &why);
    /* The load goes on inside QEMU; a broken state file makes it exit with the reason. */
    unlink(W.vm.qmp_sock);
    if (rc < 0)
        goto failed;
    rc = guest_connect(deadline, &why, err);
    if (rc == -2)
        return -1;
    if (rc < 0)
        goto failed;
    frame_reader_init(&W.ag_rd, FRAME_MAX_AGENT);
    rc = restore_wait_ready(deadline, limit, &why, err);
    if (rc == -2)
        return -1;
    if (rc < 0)
        goto failed;
    *boot_ms = now_ms() - W.vm.t_spawn;
    start_mode = "restore";
    return 1;
failed : {
    char gone[512];
    restore_timed_out = why.code == ETIMEDOUT;
    snprintf(restore_error, sizeof restore_error, "%s (%s)", why.msg,
             vm_gone_reason(gone, sizeof gone));
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
    return 0;
}
}

/* Save the device state with the VM running, and wait until QEMU says it is saved. */
static int save_state(uint64_t deadline, sbx_err *err)
{
    char uri[PATH_MAX + 8];
    state_uri(uri, sizeof uri);
    int rc = ignore_shared(deadline, err);
    if (rc == 0)
        rc = qmp_exec(&qmp, "migrate", json_pack("{s:s}", "uri", uri), NULL, deadline, err);
    /* Poll: the MIGRATION event needs a capability of its own, and this takes milliseconds. */
    for (bool done = false; rc == 0 && !done;) {
        json_t *r = NULL;
        rc = qmp_exec(&qmp, "query-migrate", NULL, &r, deadline, err);
        const char *st = json_string_value(json_object_get(r, "status"));
        const char *desc = json_string_value(json_object_get(r, "error-desc"));
        if (rc == 0 && st && (!strcmp(st, "failed") || !strcmp(st, "cancelled")))
            rc = sbx_fail(err, EIO, "migration %s: %.300s", st, desc ? desc : "no reason given");
        done = rc == 0 && st && !strcmp(st, "completed");
        json_decref(r);
        if (rc == 0 && !done) {
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return rc;
}

/* A template VM, booted cold with its RAM in snapshot_dir/mem: warm the language's REPL (the
 * agent answers the Warm once the REPL has run an empty command), save the device state with
 * the VM running (stopping it first would leave restored VMs paused), report, and stop. */
int snapshot_make_template(uint64_t boot_ms, vm_err *err)
{
    uint64_t t_warm = now_ms(), deadline = t_warm + TEMPLATE_STEP_MS;
    Sbx__Agent__Warm w = SBX__AGENT__WARM__INIT;
    w.language = W.cfg->language;
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    hm.id = ++agent_seq;
    hm.body_case = SBX__AGENT__HOST_MSG__BODY_WARM;
    hm.warm = &w;
    if (send_agent(&hm, err) < 0)
        return -1;
    for (bool warm = false; !warm;) {
        const uint8_t *f;
        size_t n;
        int ev = next_event(deadline, false, &f, &n, err);
        if (ev == EV_ERROR)
            return -1;
        if (ev == EV_TIMEOUT)
            return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true,
                           "template: the %s REPL did not start within %d s", W.cfg->language,
                           TEMPLATE_STEP_MS / 1000);
        Sbx__Agent__GuestMsg *g = agent_unpack(f, n, err);
        if (!g)
            return -1;
        if (g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_FAILURE) {
            vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: %.400s",
                    g->failure->message ? g->failure->message : "warm failed");
            sbx__agent__guest_msg__free_unpacked(g, NULL);
            return -1;
        }
        warm = g->id == hm.id && g->body_case == SBX__AGENT__GUEST_MSG__BODY_READY;
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    }
    uint64_t t_save = now_ms();
    sbx_err e = {0};
    if (save_state(deadline, &e) < 0)
        return vm_fail(err, SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT, true, "template: save: %s",
                       e.msg);
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
    return 0;
}
