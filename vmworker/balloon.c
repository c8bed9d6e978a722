/* Idle-VM memory reclaim through the virtio-balloon (see balloon.h). A small state machine run
 * from the worker's idle wait, one short QMP command per step, so that a request arriving
 * meanwhile waits at most one QMP round trip. It never waits on the guest, and never takes memory
 * the guest says it uses. */
#include "balloon.h"

#include <string.h>

#include "worker.h"

#define BALLOON_PATH "/machine/peripheral/balloon"
#define QMP_STEP_MS 2000    /* one QMP command, before the balloon is given up */
#define STATS_POLL_MS 100   /* asking the guest for fresh statistics */
#define STATS_WAIT_MS 3000  /* ...for at most this long */
#define INFLATE_POLL_MS 250 /* watching the balloon fill */
#define INFLATE_WAIT_MS 5000
#define MIN_RECLAIM_MB 16 /* less is not worth the guest's work */
#define MIN_HEADROOM_MB 32

typedef enum { B_OFF, B_FULL, B_STATS, B_INFLATING, B_HELD } bstate;

static struct {
    qmp_conn *q;
    bstate state;
    /* What QEMU was last told, whatever the state: undone by balloon_wake, even after a failure
     * turned reclaim off (a VM must not stay shrunk, or polled, for the rest of its life). */
    bool polling, inflated;
    uint32_t full_mb, idle_ms, target_mb;
    uint64_t idle_since, next, t0;
    double stamp; /* last-update of the guest statistics before we asked for fresh ones */
} B = {.state = B_OFF};

void balloon_init(qmp_conn *q, uint32_t memory_mb, uint32_t idle_ms)
{
    B.q = q;
    B.full_mb = memory_mb;
    B.idle_ms = idle_ms;
    B.state = q && q->fd >= 0 && idle_ms ? B_FULL : B_OFF;
    B.idle_since = now_ms();
}

/* One QMP command (a failure is logged; the caller decides what it means). */
static int cmd(const char *name, json_t *args, json_t **ret)
{
    sbx_err err = {0};
    if (qmp_exec(B.q, name, args, ret, now_ms() + QMP_STEP_MS, &err) == 0)
        return 0;
    wlog("balloon: %s", err.msg);
    return -1;
}

/* A step failed: no more reclaim for this VM (it keeps running; balloon_wake still undoes what
 * QEMU was told). */
static void give_up(void)
{
    wlog("balloon: idle memory reclaim off for this VM");
    B.state = B_OFF;
}

static int set_polling(bool on)
{
    int r = cmd("qom-set",
                json_pack("{s:s, s:s, s:i}", "path", BALLOON_PATH, "property",
                          "guest-stats-polling-interval", "value", on ? 1 : 0),
                NULL);
    if (r == 0)
        B.polling = on;
    return r;
}

static int set_target(uint32_t mb)
{
    int r = cmd("balloon", json_pack("{s:I}", "value", (json_int_t)mb << 20), NULL);
    if (r == 0)
        B.inflated = mb < B.full_mb;
    return r;
}

/* The VM's logical size now, in MiB (QEMU's view of what the guest gave up so far). */
static int actual_mb(uint32_t *mb)
{
    json_t *r = NULL;
    if (cmd("query-balloon", NULL, &r) < 0)
        return -1;
    double a = json_number_value(json_object_get(r, "actual"));
    json_decref(r);
    *mb = a > 0 && a < (double)B.full_mb * 1048576. ? (uint32_t)(a / 1048576.) : B.full_mb;
    return 0;
}

void balloon_idle_start(void)
{
    if (B.state == B_FULL)
        B.idle_since = now_ms();
}

uint64_t balloon_due(void)
{
    switch (B.state) {
    case B_FULL:
        return B.idle_since + B.idle_ms;
    case B_STATS:
    case B_INFLATING:
        return B.next;
    default:
        return UINT64_MAX;
    }
}

/* One statistic in MiB; -1 when the guest does not report it (QEMU says 2^64-1) or it is
 * missing. */
static double stat_mb(json_t *st, const char *name)
{
    json_t *v = json_object_get(st, name);
    double b = json_is_number(v) ? json_number_value(v) : -1;
    return b >= 0 && b < 0x1p62 ? b / 1048576. : -1;
}

/* The guest statistics QEMU holds: *upd their last-update (seconds), *avail_mb what the guest
 * has available (-1: it does not say). */
static int get_stats(double *upd, double *avail_mb)
{
    json_t *r = NULL;
    if (cmd("qom-get", json_pack("{s:s, s:s}", "path", BALLOON_PATH, "property", "guest-stats"),
            &r) < 0)
        return -1;
    *upd = json_number_value(json_object_get(r, "last-update"));
    json_t *st = json_object_get(r, "stats");
    *avail_mb = stat_mb(st, "stat-available-memory");
    if (*avail_mb < 0) { /* an older guest kernel: free memory and caches instead */
        double f = stat_mb(st, "stat-free-memory"), c = stat_mb(st, "stat-disk-caches");
        *avail_mb = f >= 0 && c >= 0 ? f + c : -1;
    }
    json_decref(r);
    return 0;
}

uint32_t balloon_target_mb(uint32_t full_mb, double avail_mb)
{
    /* The guest's figures only size its own balloon: a lying guest gains nothing. */
    uint32_t avail = avail_mb > 0 ? (avail_mb < full_mb ? (uint32_t)avail_mb : full_mb) : 0;
    uint32_t headroom = full_mb / 8 > MIN_HEADROOM_MB ? full_mb / 8 : MIN_HEADROOM_MB;
    uint32_t give = avail > headroom ? avail - headroom : 0;
    return give >= MIN_RECLAIM_MB ? full_mb - give : full_mb;
}

/* A step that waits for the guest: started now, looked at again every poll_ms. */
static void enter(bstate s, uint64_t now, uint64_t poll_ms)
{
    B.state = s;
    B.t0 = now;
    B.next = now + poll_ms;
}

void balloon_tick(void)
{
    uint64_t now = now_ms();
    switch (B.state) {
    case B_FULL: {
        /* Note the statistics' stamp first: only figures newer than it describe the guest now
         * (those from its boot, or a late answer to an earlier round, do not). */
        double avail;
        if (get_stats(&B.stamp, &avail) < 0 || set_polling(true) < 0)
            give_up();
        else
            enter(B_STATS, now, STATS_POLL_MS);
        return;
    }
    case B_STATS: {
        double upd, avail;
        if (get_stats(&upd, &avail) < 0) {
            give_up();
            return;
        }
        bool fresh = upd != B.stamp;
        if (!fresh && now < B.t0 + STATS_WAIT_MS) {
            B.next = now + STATS_POLL_MS;
            return;
        }
        if (set_polling(false) < 0) {
            give_up();
            return;
        }
        B.target_mb = fresh ? balloon_target_mb(B.full_mb, avail) : B.full_mb;
        if (B.target_mb >= B.full_mb) {
            B.state = B_HELD; /* nothing worth taking (or no statistics): wait for a request */
            return;
        }
        if (set_target(B.target_mb) < 0)
            give_up();
        else
            enter(B_INFLATING, now, INFLATE_POLL_MS);
        return;
    }
    case B_INFLATING: {
        uint32_t a;
        if (actual_mb(&a) < 0) {
            give_up();
            return;
        }
        if (a > B.target_mb && now < B.t0 + INFLATE_WAIT_MS) {
            B.next = now + INFLATE_POLL_MS;
            return;
        }
        /* Short of the target in time: the guest could not find the pages; stop asking, or its
         * balloon driver would keep trying (and burning CPU) while the VM is idle. */
        if (a > B.target_mb && set_target(a) < 0) {
            give_up();
            return;
        }
        B.state = B_HELD;
        wlog("balloon: the idle VM gave back %u MiB of %u in %llu ms", B.full_mb - a, B.full_mb,
             (unsigned long long)(now - B.t0));
        return;
    }
    default:
        return;
    }
}

void balloon_wake(void)
{
    if (!B.q || B.q->fd < 0) {
        /* QMP is gone (QEMU closed it): nothing to undo, nothing more to do. */
        B.polling = B.inflated = false;
        B.state = B_OFF;
        return;
    }
    /* Best effort, whatever the state: a command that fails now is tried at the next request. */
    if (B.polling)
        set_polling(false);
    if (B.inflated)
        set_target(B.full_mb);
    if (B.state != B_OFF)
        B.state = B_FULL;
}
