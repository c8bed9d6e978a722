/* Per-VM cgroups, v2 or v1: created before the worker runs an instruction, read for the
 * external figures, removed when the VM ends. It never moves sbxd itself into a VM's cgroup. */
#include "cgroup.h"
#include "sbxd.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <linux/magic.h>

#define PARENT "exec-sandbox"

static enum { CG_NONE, CG_V1, CG_V2 } mode;
static char v2_root[256];
/* v1: the hierarchies we use. cpu and cpuacct may be one co-mounted hierarchy or two. */
#define NCTRL 4
static const char *const v1_ctrls[NCTRL] = {"memory", "pids", "cpu", "cpuacct"};
static char v1_root[NCTRL][256];
static bool v1_dup[NCTRL]; /* same hierarchy as an earlier entry: skip when creating */

/* How many directories a VM's cgroup spans. */
static int ndirs(void)
{
    return mode == CG_V2 ? 1 : NCTRL;
}

const char *cgroup_mode(void)
{
    return mode == CG_V2 ? "v2" : mode == CG_V1 ? "v1" : "none";
}

static int write_file(const char *dir, const char *file, const char *val)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, val, strlen(val));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(val) ? 0 : -1;
}

static int read_file(const char *dir, const char *file, char *buf, size_t n)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    if (r < 0)
        return -1;
    buf[r] = '\0';
    return 0;
}

static bool is_fs(const char *path, long magic)
{
    struct statfs s;
    return statfs(path, &s) == 0 && s.f_type == magic;
}

static bool v2_usable(const char *root)
{
    char ctl[256];
    if (!is_fs(root, CGROUP2_SUPER_MAGIC) || read_file(root, "cgroup.controllers", ctl, sizeof ctl))
        return false;
    if (!strstr(ctl, "memory") || !strstr(ctl, "pids") || !strstr(ctl, "cpu"))
        return false;
    char parent[300];
    snprintf(parent, sizeof parent, "%s/" PARENT, root);
    if ((mkdir(parent, 0755) < 0 && errno != EEXIST) || access(parent, W_OK) < 0)
        return false;
    /* Children get the controllers only if every level down to us enables them. */
    write_file(root, "cgroup.subtree_control", "+memory +pids +cpu");
    if (write_file(parent, "cgroup.subtree_control", "+memory +pids +cpu") < 0)
        return false;
    snprintf(v2_root, sizeof v2_root, "%s", parent);
    return true;
}

static int kill_all(const char *dir);

/* VM cgroups of daemons that died without removing them: kill what is left and remove them. */
static void remove_stale(const char *parent)
{
    DIR *d = opendir(parent);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid;
        unsigned long long seq;
        if (sscanf(e->d_name, "vm-%d-%llu", &pid, &seq) != 2)
            continue;
        /* At start none is ours yet: one with our pid is an earlier sbxd's that had it (PID 1
         * of a restarted container). */
        if (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH))
            continue;
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", parent, e->d_name);
        kill_all(dir);
        rmdir(dir);
    }
    closedir(d);
}

bool cgroup_init(char *why, size_t n)
{
    if (v2_usable("/sys/fs/cgroup") || v2_usable("/sys/fs/cgroup/unified")) {
        mode = CG_V2;
        remove_stale(v2_root);
        snprintf(why, n, "cgroup v2 at %s", v2_root);
        return true;
    }
    for (int i = 0; i < NCTRL; i++) {
        char root[256], real[256];
        snprintf(root, sizeof root, "/sys/fs/cgroup/%s", v1_ctrls[i]);
        if (!is_fs(root, CGROUP_SUPER_MAGIC) || !realpath(root, real)) {
            snprintf(why, n, "no cgroup v2 with memory+pids+cpu and no v1 %s hierarchy",
                     v1_ctrls[i]);
            return false;
        }
        snprintf(v1_root[i], sizeof v1_root[i], "%s/" PARENT, real);
        for (int j = 0; j < i; j++)
            if (!strcmp(v1_root[i], v1_root[j]))
                v1_dup[i] = true;
        if ((mkdir(v1_root[i], 0755) < 0 && errno != EEXIST) || access(v1_root[i], W_OK) < 0) {
            snprintf(why, n, "cannot create cgroups under %s: %s", v1_root[i], strerror(errno));
            return false;
        }
    }
    mode = CG_V1;
    for (int i = 0; i < NCTRL; i++)
        if (!v1_dup[i])
            remove_stale(v1_root[i]);
    snprintf(why, n, "cgroup v1 (memory, pids, cpu) under /sys/fs/cgroup/*/" PARENT);
    return true;
}

int cgroup_path(const cgroup_vm *cg, const char *controller, char *out, size_t n)
{
    if (mode == CG_V2) {
        snprintf(out, n, "%s/%s", v2_root, cg->name);
        return 0;
    }
    for (int i = 0; i < NCTRL; i++)
        if (mode == CG_V1 && !strcmp(controller, v1_ctrls[i])) {
            snprintf(out, n, "%s/%s", v1_root[i], cg->name);
            return 0;
        }
    return -1;
}

int cgroup_create(cgroup_vm *cg, uint64_t seq, uint64_t mem_bytes, unsigned pids,
                  unsigned milli_cpus, sbx_err *err)
{
    memset(cg, 0, sizeof *cg);
    if (mode == CG_NONE)
        return 0;
    snprintf(cg->name, sizeof cg->name, "vm-%d-%llu", (int)getpid(), (unsigned long long)seq);
    char mem[32], pid[32], dir[512];
    snprintf(mem, sizeof mem, "%llu", (unsigned long long)mem_bytes);
    snprintf(pid, sizeof pid, "%u", pids);
    unsigned period = 100000, quota = milli_cpus * 100;
    for (int i = 0; i < ndirs(); i++) {
        if (v1_dup[i])
            continue;
        cgroup_path(cg, v1_ctrls[i], dir, sizeof dir);
        if (mkdir(dir, 0755) < 0) {
            int e = errno;
            cg->active = true;
            cgroup_destroy(cg);
            return sbx_fail(err, e, "create cgroup `%s`: %s", dir, strerror(e));
        }
    }
    cg->active = true;
    int bad = 0;
    char cpu[64];
    if (mode == CG_V2) {
        cgroup_path(cg, "memory", dir, sizeof dir);
        snprintf(cpu, sizeof cpu, "%u %u", quota, period);
        bad |= write_file(dir, "memory.max", mem);
        write_file(dir, "memory.swap.max", "0"); /* absent without swap accounting */
        bad |= write_file(dir, "pids.max", pid);
        bad |= write_file(dir, "cpu.max", cpu);
    } else {
        cgroup_path(cg, "memory", dir, sizeof dir);
        bad |= write_file(dir, "memory.limit_in_bytes", mem);
        write_file(dir, "memory.memsw.limit_in_bytes", mem);
        cgroup_path(cg, "pids", dir, sizeof dir);
        bad |= write_file(dir, "pids.max", pid);
        cgroup_path(cg, "cpu", dir, sizeof dir);
        snprintf(cpu, sizeof cpu, "%u", period);
        bad |= write_file(dir, "cpu.cfs_period_us", cpu);
        snprintf(cpu, sizeof cpu, "%u", quota);
        bad |= write_file(dir, "cpu.cfs_quota_us", cpu);
    }
    if (bad) {
        int e = errno;
        cgroup_destroy(cg);
        return sbx_fail(err, e, "set limits in cgroup `%s`: %s", cg->name, strerror(e));
    }
    return 0;
}

int cgroup_attach(const cgroup_vm *cg, pid_t p, sbx_err *err)
{
    if (!cg->active)
        return 0;
    char dir[512], v[32];
    snprintf(v, sizeof v, "%d", (int)p);
    for (int i = 0; i < ndirs(); i++) {
        if (v1_dup[i])
            continue;
        cgroup_path(cg, v1_ctrls[i], dir, sizeof dir);
        if (write_file(dir, "cgroup.procs", v) < 0)
            return sbx_fail(err, errno, "move pid %d into `%s`: %s", (int)p, dir, strerror(errno));
    }
    return 0;
}

static uint64_t read_u64(const char *dir, const char *file, const char *key)
{
    char buf[4096];
    if (read_file(dir, file, buf, sizeof buf) < 0)
        return 0;
    const char *p = buf;
    if (key) {
        p = strstr(buf, key);
        if (!p)
            return 0;
        p += strlen(key);
    }
    return strtoull(p, NULL, 10);
}

void cgroup_usage(const cgroup_vm *cg, uint64_t *peak, uint64_t *cpu_ns)
{
    *peak = *cpu_ns = 0;
    if (!cg->active)
        return;
    char dir[512];
    if (mode == CG_V2) {
        cgroup_path(cg, "memory", dir, sizeof dir);
        *peak = read_u64(dir, "memory.peak", NULL); /* Linux >= 5.19 */
        *cpu_ns = read_u64(dir, "cpu.stat", "usage_usec ") * 1000u;
    } else {
        cgroup_path(cg, "memory", dir, sizeof dir);
        *peak = read_u64(dir, "memory.max_usage_in_bytes", NULL);
        cgroup_path(cg, "cpuacct", dir, sizeof dir);
        *cpu_ns = read_u64(dir, "cpuacct.usage", NULL);
    }
}

/* SIGKILL every task listed; returns how many were listed. */
static int kill_all(const char *dir)
{
    char buf[8192];
    if (read_file(dir, "cgroup.procs", buf, sizeof buf) < 0)
        return 0;
    int n = 0;
    for (char *s = buf, *e; *s; s = e) {
        long p = strtol(s, &e, 10);
        if (e == s)
            break;
        if (p > 0) {
            kill((pid_t)p, SIGKILL);
            n++;
        }
    }
    return n;
}

int cgroup_destroy(cgroup_vm *cg)
{
    if (!cg->active)
        return 0;
    char dir[512];
    int busy = 0;
    for (int i = 0; i < ndirs(); i++) {
        if (v1_dup[i])
            continue;
        cgroup_path(cg, v1_ctrls[i], dir, sizeof dir);
        if (mode == CG_V2)
            write_file(dir, "cgroup.kill", "1");
        kill_all(dir);
        if (rmdir(dir) < 0 && errno != ENOENT) {
            if (errno != EBUSY)
                return -1;
            busy = 1;
        }
    }
    if (!busy)
        cg->active = false;
    return busy;
}

/* Removing a cgroup fails while its last tasks are still exiting: retry a few times from the
 * loop rather than block it. */
typedef struct {
    cgroup_vm cg;
    int tries;
    ev_timer t;
} cg_reaper;

static void cg_retry_cb(EV_P_ ev_timer *w, int revents)
{
    cg_reaper *r = w->data;
    int rc = cgroup_destroy(&r->cg);
    if (rc == 1 && ++r->tries < 100)
        return;
    if (rc != 0)
        slog("cgroup %s could not be removed", r->cg.name);
    ev_timer_stop(EV_A_ w);
    free(r);
}

void cgroup_release(cgroup_vm *cg)
{
    if (cgroup_destroy(cg) != 1)
        return;
    cg_reaper *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->cg = *cg;
    ev_timer_init(&r->t, cg_retry_cb, 0.02, 0.05);
    r->t.data = r;
    ev_timer_start(EV_DEFAULT, &r->t);
}
