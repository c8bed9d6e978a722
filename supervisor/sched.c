/* Admission and workers: VMs wait in a bounded queue for one of max_concurrent_vms slots, each
 * admitted VM gets its own sbx-vmworker (started by spawn.c), and whatever happens to that
 * worker reaches the VM's owner (vm_owner_ops) exactly once. It never knows a client: owners
 * (run.c, session.c, pool.c, snapshot.c, accel.c) do. */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "conn.h"
#include "layers.h"
#include "paths.h"
#include "sbxd.h"
#include "snapshot.h"
#include "netpolicy.h"
#include "spawn.h"
#include "worker.pb-c.h"

/* Host memory a VM may use beyond its guest RAM: QEMU itself, the TCG translation cache
 * (capped at 256 MiB in vmworker/qemu.c) and the worker. Measured: ~150 MiB at rest. */
#define VM_OVERHEAD_MB 384
#define VM_PIDS_MAX 256
#define VM_MILLI_CPUS 1500 /* one vCPU plus QEMU's I/O threads */

typedef enum { JOB_QUEUED, JOB_RUNNING } job_state;

typedef struct job {
    uint64_t seq;
    job_state state;
    uint64_t req_id;
    uint64_t t_accept, t_dispatch;
    pid_t pid;
    conn link; /* to its worker; link.fd is -1 until the worker runs and after it ends */
    ev_child child;
    ev_timer qtimer;
    ev_timer deadline; /* sbxd's own: a worker that does not answer in time is killed */
    uint32_t deadline_s;
    int32_t uid_slot; /* index into the VM uid range while running, else -1 */
    char run_dir[256];
    cgroup_vm cg;
    bool closing;
    char language[16];
    uint32_t memory_mb;
    /* Who uses the VM (run.c, session.c, pool.c, snapshot.c, accel.c): everything the worker
     * says goes to them. NULL once they let it go (sched_vm_close). */
    const vm_owner_ops *ops;
    void *owner;
    /* Why it failed, for ops->gone: the first reason wins. */
    char why[512];
    Sbx__Control__ErrorKind why_kind;
    bool why_transient;
    char snapshot[600]; /* the memory snapshot this VM was told to restore from, or "" */
    /* The NIC its owner asked for (the owner keeps the request alive), and its broker: it ends
     * when the worker's end of its socket closes, and is in the VM's cgroup (spawn.c reaps it). */
    const Sbx__Control__NetworkRequest *net;
    bool nic_only; /* a NIC that reaches nothing (snapshot templates of VMs with a NIC) */
    layer *layer;  /* held until the job is freed */
    pid_t broker_pid;
    struct job *next;
} job;

static job *jobs; /* queued and running, in arrival order */
static unsigned nrunning, nqueued;
static unsigned nclosing; /* running jobs told to stop whose workers have not exited yet */
static uint64_t seq, runs_total;

void sched_vm_set_network(job *j, const Sbx__Control__NetworkRequest *n)
{
    j->net = n;
}

void sched_vm_set_nic_only(job *j)
{
    j->nic_only = true;
}

void sched_vm_set_layer(job *j, layer *l)
{
    layer_hold(l);
    layer_release(j->layer);
    j->layer = l;
}

unsigned sched_running(void)
{
    return nrunning;
}
unsigned sched_queued(void)
{
    return nqueued;
}
uint64_t sched_runs_total(void)
{
    return runs_total;
}
void sched_count_run(void)
{
    runs_total++;
}

static void job_unlink(job *j)
{
    for (job **p = &jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            return;
        }
}

static void job_free(job *j)
{
    if (j->state == JOB_QUEUED) {
        ev_timer_stop(EV_DEFAULT, &j->qtimer);
        nqueued--;
    } else {
        conn_close(&j->link);
        ev_child_stop(EV_DEFAULT, &j->child);
        ev_timer_stop(EV_DEFAULT, &j->deadline);
        if (j->uid_slot >= 0) /* the worker is reaped: its QEMU died with its pid namespace */
            spawn_uid_free(j->uid_slot);
        /* What QEMU left there, and the jail's (empty) mount point. */
        if (j->run_dir[0] && paths_rm_tree_at(AT_FDCWD, j->run_dir, 2) < 0)
            slog("vm %llu: cannot remove `%s`: %s", (unsigned long long)j->seq, j->run_dir,
                 strerror(errno));
        cgroup_release(&j->cg);
        nrunning--;
        if (j->closing)
            nclosing--;
    }
    job_unlink(j);
    layer_release(j->layer);
    free(j);
    sbxd_activity();
}

__attribute__((format(printf, 4, 5))) static void job_error(job *j, Sbx__Control__ErrorKind kind,
                                                            bool transient, const char *fmt, ...)
{
    if (j->why[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->why, sizeof j->why, fmt, ap);
    va_end(ap);
    j->why_kind = kind;
    j->why_transient = transient;
}

/* The job is over: free it, then tell its owner (if it still has one) why. */
static void job_end(job *j, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    const vm_owner_ops *ops = j->ops;
    void *owner = j->owner;
    char buf[sizeof j->why];
    snprintf(buf, sizeof buf, "%s", why);
    job_free(j);
    if (ops)
        ops->gone(owner, kind, transient, buf);
}

/* What the log calls it. */
static const char *job_kind(const job *j)
{
    if (!j->ops)
        return "closing";
    if (j->ops->probe)
        return "probe";
    if (j->ops->one_shot)
        return "run";
    return j->ops->background ? "background" : "kept";
}

static void qtimer_cb(EV_P_ ev_timer *w, int revents)
{
    job *j = w->data;
    slog("vm %llu: no slot in %u s (%u running, %u closing, %u queued)", (unsigned long long)j->seq,
         cfg.queue_timeout_seconds, nrunning, nclosing, nqueued);
    job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true,
              "all %u VM slots stayed busy for %u s; try again later", cfg.max_concurrent_vms,
              cfg.queue_timeout_seconds);
    job_end(j, SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY, true, j->why);
}

static job *job_new(void)
{
    job *j = calloc(1, sizeof *j);
    if (j) {
        j->seq = ++seq;
        j->link.fd = -1;
        j->uid_slot = -1;
    }
    return j;
}

static void deadline_cb(EV_P_ ev_timer *w, int revents)
{
    job *j = w->data;
    slog("vm %llu: its worker did not answer within %u s; killing it", (unsigned long long)j->seq,
         j->deadline_s);
    job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT, true,
              "the VM did not answer within %u s (its time limits plus run_grace_seconds); it was "
              "killed",
              j->deadline_s);
    if (j->pid > 0)
        kill(j->pid, SIGKILL); /* its exit (child_cb) frees the job and reports to the owner */
}

void sched_vm_deadline(job *j, uint32_t seconds)
{
    ev_timer_stop(EV_DEFAULT, &j->deadline);
    if (!seconds || j->state != JOB_RUNNING)
        return;
    j->deadline_s = seconds + cfg.run_grace_seconds;
    ev_timer_init(&j->deadline, deadline_cb, j->deadline_s, 0.);
    j->deadline.data = j;
    ev_timer_start(EV_DEFAULT, &j->deadline);
}

/* Whether one more run or session may wait for a slot (background VMs never wait in line
 * beyond the pool's own bound). */
static bool queue_full(void)
{
    return nqueued >= cfg.max_queued;
}

/* Queued work starts from the loop, never inside sched_open_vm: an owner must not hear of its
 * VM (started, gone) before it has the job pointer in hand. The prepare watcher runs before the
 * loop next waits, so this costs no time. */
static ev_prepare pump_soon;

static void pump_soon_cb(EV_P_ ev_prepare *w, int revents)
{
    ev_prepare_stop(EV_A_ w);
    sched_pump();
}

static void job_enqueue(job *j)
{
    if (nrunning >= cfg.max_concurrent_vms)
        slog("vm %llu: waiting for a slot (%s)", (unsigned long long)j->seq, job_kind(j));
    j->state = JOB_QUEUED;
    j->t_accept = now_ms();
    ev_timer_init(&j->qtimer, qtimer_cb, cfg.queue_timeout_seconds, 0);
    j->qtimer.data = j;
    ev_timer_start(EV_DEFAULT, &j->qtimer);
    job **p = &jobs;
    while (*p)
        p = &(*p)->next;
    *p = j;
    nqueued++;
    if (!ev_cb(&pump_soon))
        ev_prepare_init(&pump_soon, pump_soon_cb);
    ev_prepare_start(EV_DEFAULT, &pump_soon);
}

job *sched_open_vm(const char *language, uint32_t memory_mb, const vm_owner_ops *ops, void *owner)
{
    if (!ops->background && queue_full()) {
        errno = EAGAIN;
        return NULL;
    }
    job *j = job_new();
    if (!j)
        return NULL;
    snprintf(j->language, sizeof j->language, "%s", language);
    j->memory_mb = memory_mb;
    j->ops = ops;
    j->owner = owner;
    job_enqueue(j);
    return j;
}

int sched_vm_send(job *j, Sbx__Worker__ToWorker *m)
{
    if (j->state != JOB_RUNNING) {
        errno = ENOTCONN;
        return -1;
    }
    m->id = j->req_id;
    return conn_send(&j->link, &m->base);
}

bool sched_vm_started(const job *j)
{
    return j->state == JOB_RUNNING;
}

void sched_vm_set_request(job *j, uint64_t req_id)
{
    j->req_id = req_id;
    j->t_accept = now_ms();
}

void sched_vm_close(job *j)
{
    /* The owner is done with it: nothing is reported back from here on. */
    j->ops = NULL;
    j->owner = NULL;
    if (j->state == JOB_QUEUED) {
        job_free(j); /* it held no slot: nothing for the scheduler to do */
    } else if (j->pid > 0) {
        if (!j->closing) {
            j->closing = true;
            nclosing++;
        }
        /* SIGKILL, not SIGTERM: the worker is PID 1 of its pid namespace, and until it has
         * installed its handlers (right after the clone) the kernel drops any other signal
         * from us, which left a booting VM holding its slot forever. Its namespace dies with
         * it (QEMU too); sbxd removes its run directory and cgroup when it is reaped. */
        kill(j->pid, SIGKILL);
    }
}

void sched_vm_fill_result(job *j, Sbx__Control__ExecResult *res)
{
    uint64_t peak, cpu_ns;
    cgroup_usage(&j->cg, &peak, &cpu_ns);
    if (peak)
        res->external_memory_peak_mb = (peak + (1u << 20) - 1) >> 20;
    if (cpu_ns)
        res->external_cpu_time_ms = cpu_ns / 1000000u;
    /* The worker's message owns it: protobuf-c frees a string that is not its default. */
    char *arch = res->guest_arch == protobuf_c_empty_string ? strdup(cfg.guest_arch) : NULL;
    if (arch)
        res->guest_arch = arch;
    if (res->timing) {
        /* Queue wait and worker start count as setup (for the request that booted the VM); total
         * is from arrival to now. */
        if (res->timing->boot_ms && j->t_dispatch >= j->t_accept)
            res->timing->setup_ms += j->t_dispatch - j->t_accept;
        res->timing->total_ms = now_ms() - j->t_accept;
    }
}

/* A frame from the worker goes to the VM's owner. */
static void job_forward(job *j, Sbx__Worker__FromWorker *m)
{
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_BOOTED && j->snapshot[0])
        snapshot_booted(j->snapshot, m->booted);
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_ERROR)
        job_error(j, m->error->kind, m->error->transient, "%s",
                  m->error->message ? m->error->message : "");
    if (!j->ops)
        return;
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_BOOTED) {
        sched_vm_deadline(j, 0); /* from now on, its owner's requests carry deadlines */
        j->ops->booted(j->owner, m->booted);
    } else if (m->body_case != SBX__WORKER__FROM_WORKER__BODY_HELLO) {
        j->ops->frame(j->owner, m);
    }
}

static void job_finish(job *j, int status)
{
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
    job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
              "the VM worker %s before answering", how);
    job_end(j, j->why_kind, j->why_transient, j->why);
    sched_pump();
}

static void child_cb(EV_P_ ev_child *w, int revents)
{
    job *j = w->data;
    j->pid = -1;
    /* Read what the worker wrote before it died: its result may still be in the socket. */
    conn_drain(&j->link);
    job_finish(j, w->rstatus);
}

/* ---- the link to the worker (conn_ops): its frames go to the owner; when it breaks, the
 * worker is killed and its exit (child_cb) reports ---- */

static bool link_frame(void *owner, const uint8_t *data, size_t len)
{
    job *j = owner;
    Sbx__Worker__FromWorker *m = sbx__worker__from_worker__unpack(NULL, len, data);
    if (!m) {
        slog("vm %llu: undecodable frame from worker; killing it", (unsigned long long)j->seq);
        if (j->pid > 0)
            kill(j->pid, SIGKILL);
        conn_stop_reading(&j->link);
        return false;
    }
    if (m->body_case == SBX__WORKER__FROM_WORKER__BODY_BOOTED)
        slog("vm %llu: booted in %llu ms (%s)", (unsigned long long)j->seq,
             (unsigned long long)m->booted->boot_ms, job_kind(j));
    job_forward(j, m);
    sbx__worker__from_worker__free_unpacked(m, NULL);
    return true;
}

static void link_ended(void *owner, int err)
{
    job *j = owner;
    if (err == EMSGSIZE) {
        slog("vm %llu: oversized frame from worker; killing it", (unsigned long long)j->seq);
        if (j->pid > 0)
            kill(j->pid, SIGKILL);
    }
    /* EOF: the child watcher reports how it ended. */
}

static void link_write_failed(void *owner, int err)
{
    /* The worker is gone or going: its exit reports it. */
}

static const conn_ops link_conn = {
    .frame = link_frame,
    .ended = link_ended,
    .write_failed = link_write_failed,
};

static int queue_to_worker(job *j, Sbx__Worker__ToWorker *m)
{
    m->id = j->req_id;
    return conn_send(&j->link, &m->base);
}

/* Start a worker for j (already counted as running). Returns -1 after answering j. */
static int job_dispatch(job *j, const char *language, const char *accel, uint32_t memory_mb,
                        uint32_t boot_timeout_ms)
{
    sbx_err err = {0};
    char kernel[512], initrd[512], rootfs[512];
    j->t_dispatch = now_ms();
    if (assets_resolve(language, kernel, initrd, rootfs, sizeof kernel, &err) < 0) {
        job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_ASSET, false, "%s", err.msg);
        return -1;
    }
    bool userns = getuid() != 0;
    uid_t vm_uid = 0;
    gid_t vm_gid = 0;
    if (!userns) {
        j->uid_slot = spawn_uid_alloc();
        if (j->uid_slot < 0) {
            job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                      "no free uid for the VM (all 65536 from vm_uid_base are in use)");
            return -1;
        }
        vm_uid = vm_gid = cfg.vm_uid_base + (uid_t)j->uid_slot;
    }
    snprintf(j->run_dir, sizeof j->run_dir, "%s/vm-%llu", run_base, (unsigned long long)j->seq);
    /* The VM's user owns its run directory: QEMU creates its sockets there. */
    if (mkdir(j->run_dir, 0700) < 0 || (!userns && chown(j->run_dir, vm_uid, vm_gid) < 0)) {
        job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "create `%s`: %s", j->run_dir,
                  strerror(errno));
        rmdir(j->run_dir);
        j->run_dir[0] = '\0';
        return -1;
    }
    if (cgroup_create(&j->cg, j->seq, ((uint64_t)memory_mb + VM_OVERHEAD_MB) << 20, VM_PIDS_MAX,
                      VM_MILLI_CPUS, &err) < 0) {
        job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "%s", err.msg);
        return -1;
    }
    cleanup_close int net_fd = -1;
    static const Sbx__Control__NetworkRequest none = SBX__CONTROL__NETWORK_REQUEST__INIT;
    const Sbx__Control__NetworkRequest *net = j->net ? j->net : &none;
    net_mode mode = j->nic_only
                        ? NET_PORTS
                        : net_mode_of(net->allow_network, net->n_allowed_domains, net->n_expose);
    if (mode != NET_NONE) {
        Sbx__Net__NetPolicy pol = SBX__NET__NET_POLICY__INIT;
        pol.mode = (char *)net_mode_name(mode);
        pol.n_allowed_domains = net->n_allowed_domains;
        pol.allowed_domains = net->allowed_domains;
        pol.n_expose = net->n_expose;
        pol.expose = net->expose;
        pol.allow_private = cfg.egress_allow_private;
        pol.hosts_file = cfg.dns_hosts_file;
        pol.connect_timeout_ms = 10000;
        if (spawn_broker(&j->cg, j->seq, &pol, userns ? getuid() : vm_uid,
                         userns ? getgid() : vm_gid, &j->broker_pid, &net_fd, &err) < 0) {
            job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                      "start the VM's network: %s", err.msg);
            return -1;
        }
    }
    int fd;
    if (spawn_worker(&j->cg, j->seq, userns, net_fd, &j->pid, &fd, &err) < 0) {
        job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "start VM worker: %s",
                  err.msg);
        return -1;
    }
    Sbx__Control__Hello h = SBX__CONTROL__HELLO__INIT;
    h.protocol_version = SBX_PROTOCOL_VERSION;
    h.client = "sbxd/" SBX_VERSION;
    Sbx__Worker__ToWorker m1 = SBX__WORKER__TO_WORKER__INIT;
    m1.body_case = SBX__WORKER__TO_WORKER__BODY_HELLO;
    m1.hello = &h;
    Sbx__Worker__VmConfig vc = SBX__WORKER__VM_CONFIG__INIT;
    vc.qemu = cfg.qemu;
    vc.guest_arch = cfg.guest_arch;
    vc.kernel = kernel;
    vc.initrd = initrd;
    vc.rootfs = rootfs;
    vc.accel = (char *)accel;
    vc.memory_mb = memory_mb;
    vc.boot_timeout_ms = boot_timeout_ms;
    vc.run_dir = j->run_dir;
    vc.probe = j->ops->probe;
    vc.jail = true;
    vc.vm_uid = vm_uid;
    vc.vm_gid = vm_gid;
    vc.userns = userns;
    vc.test_hooks = cfg.test_hooks;
    vc.session = !j->ops->one_shot;
    vc.reclaim_idle_ms = j->ops->reclaim_idle ? cfg.balloon_idle_seconds * 1000u : 0;
    if (mode != NET_NONE) {
        vc.net_mode = (char *)net_mode_name(mode);
        vc.n_allowed_domains = net->n_allowed_domains;
        vc.allowed_domains = net->allowed_domains;
        vc.n_expose = net->n_expose;
        vc.expose = net->expose;
        vc.net_fd = SPAWN_NET_FD;
    }
    /* VMs with a NIC have snapshots of their own (the device set differs; the policy lives
     * outside the guest, so one template serves every policy). */
    if (j->layer)
        vc.layer = (char *)layer_path(j->layer);
    snapshot_prepare(&vc, language, j->layer, j->ops->probe, j->ops, j->owner, j->snapshot,
                     sizeof j->snapshot);
    Sbx__Worker__ToWorker m2 = SBX__WORKER__TO_WORKER__INIT;
    m2.body_case = SBX__WORKER__TO_WORKER__BODY_START;
    m2.start = &vc;
    conn_init(&j->link, fd, FRAME_MAX_WORKER, &link_conn, j);
    ev_child_init(&j->child, child_cb, j->pid, 0);
    j->child.data = j;
    ev_child_start(EV_DEFAULT, &j->child);
    /* The owner's first request goes behind the start (its watchers exist from here on). */
    if (queue_to_worker(j, &m1) < 0 || queue_to_worker(j, &m2) < 0 ||
        (j->ops->started && j->ops->started(j->owner, j) < 0)) {
        kill(j->pid, SIGKILL);
        job_error(j, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
    }
    /* The worker enforces the boot and run timeouts; this catches a worker that does not. A
     * VM is covered until it has booted, then by each request its owner sends. */
    sched_vm_deadline(j, boot_timeout_ms / 1000u);
    return 0;
}

static void job_start(job *j)
{
    ev_timer_stop(EV_DEFAULT, &j->qtimer);
    slog("vm %llu: starting (%s, %s; %u running)", (unsigned long long)j->seq, j->language,
         job_kind(j), nrunning);
    j->state = JOB_RUNNING;
    nqueued--;
    nrunning++;
    const char *accel = accel_verdict();
    if (job_dispatch(j, j->language, accel, j->memory_mb, cfg.boot_timeout_seconds * 1000u) < 0 &&
        j->pid <= 0)
        job_end(j, j->why_kind, j->why_transient, j->why);
}

static bool background(const job *j)
{
    return j->ops && j->ops->background;
}

void sched_pump(void)
{
    /* Runs and sessions first, in arrival order; background VMs (pool, templates) after them,
     * so none of those ever holds a run up. */
    for (int pass = 0; pass < 2; pass++) {
        for (job *j = jobs, *next; j; j = next) {
            next = j->next;
            if (j->state != JOB_QUEUED || background(j) != (pass == 1))
                continue;
            if (nrunning >= cfg.max_concurrent_vms) {
                /* A waiting run may take the slot of an idle pool VM (once its worker exits). */
                if (pass == 0 && !nclosing)
                    pool_evict_one();
                return;
            }
            if (!accel_verdict()) {
                accel_need();
                return;
            }
            job_start(j);
        }
    }
    /* Every run has a slot: spare capacity goes to the warm pool. */
    pool_refill();
}

job *sched_start_now(const char *language, uint32_t memory_mb, const char *accel,
                     uint32_t boot_timeout_ms, const vm_owner_ops *ops, void *owner, sbx_err *err)
{
    job *j = job_new();
    if (!j) {
        sbx_fail(err, ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(j->language, sizeof j->language, "%s", language);
    j->memory_mb = memory_mb;
    j->ops = ops;
    j->owner = owner;
    j->state = JOB_RUNNING;
    j->t_accept = now_ms();
    j->next = jobs;
    jobs = j;
    nrunning++;
    if (job_dispatch(j, language, accel, memory_mb, boot_timeout_ms) < 0 && j->pid <= 0) {
        sbx_fail(err, j->why_kind, "%s", j->why);
        j->ops = NULL; /* the caller learns it from the return value */
        job_free(j);
        return NULL;
    }
    return j;
}

void sched_shutdown(void)
{
    ev_prepare_stop(EV_DEFAULT, &pump_soon);
    for (job *j = jobs; j; j = j->next)
        if (j->state == JOB_RUNNING && j->pid > 0)
            kill(j->pid, SIGKILL);
    for (job *j = jobs; j; j = j->next)
        if (j->state == JOB_RUNNING && j->pid > 0)
            waitpid(j->pid, NULL, 0);
    while (jobs) {
        jobs->pid = -1;
        job_free(jobs);
    }
}
