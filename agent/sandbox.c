/* Processes of the sandbox user: how one is started (uid 1000, no_new_privs, its own session,
 * a clean environment, in a cgroup of ours) and how whatever it leaves behind is killed. Nothing
 * started here may keep root's identity, a capability or a descriptor of the agent's.
 *
 * cgroup v2 is mounted detached (fsmount without a mount point), so the tree is reachable only
 * through the agent's descriptors and appears nowhere in the code's view of the filesystem.
 * Killing a cgroup (cgroup.kill) is atomic with respect to fork, which no walk over /proc is;
 * the walk remains as the fallback for a kernel without cgroups. */
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ---- environment ---------------------------------------------------------------------------- */

void env_list_free(struct env_list *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

int sandbox_env(struct env_list *e, Sbx__Files__EnvVar **vars, size_t nvars, sbx_err *err)
{
    static const char *const base[] = {
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "HOME=" AGENT_HOME,
        "USER=sandbox",
        "LANG=C.UTF-8",
        "TERM=dumb",
        "TMPDIR=/tmp",
        /* Python's cap on int<->str conversions (4300 digits, a guard for servers that parse
         * untrusted numbers) is lifted, as in the reference's image: here the code is the
         * untrusted party and its own CPU time is already bounded. In the environment rather
         * than in the REPL wrapper, so that one-shot runs, the REPL (and with it every VM
         * restored from its snapshot) and any python3 the code starts all get it. */
        "PYTHONINTMAXSTRDIGITS=0",
    };
    /* A package layer: pip's --target tree, and Bun's node_modules (require and import). */
    static const char *const pkgs[] = {
        "PYTHONPATH=" AGENT_PKGS_DIR,
        "NODE_PATH=" AGENT_PKGS_DIR "/node_modules",
    };
    size_t npkgs = pkgs_mounted() ? ARRAY_LEN(pkgs) : 0;
    e->v = calloc(ARRAY_LEN(base) + npkgs + nvars + 1, sizeof *e->v);
    if (!e->v)
        return sbx_fail(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < ARRAY_LEN(base) + npkgs; i++) {
        const char *kv = i < ARRAY_LEN(base) ? base[i] : pkgs[i - ARRAY_LEN(base)];
        if (!(e->v[e->n] = strdup(kv)))
            return sbx_fail(err, ENOMEM, "out of memory");
        e->n++;
    }
    for (size_t i = 0; i < nvars; i++) {
        size_t kl = strlen(vars[i]->key), vl = strlen(vars[i]->value);
        char *kv = malloc(kl + vl + 2);
        if (!kv)
            return sbx_fail(err, ENOMEM, "out of memory");
        memcpy(kv, vars[i]->key, kl);
        kv[kl] = '=';
        memcpy(kv + kl + 1, vars[i]->value, vl + 1);
        size_t j = 0;
        while (j < e->n && strncmp(e->v[j], kv, kl + 1) != 0)
            j++;
        if (j < e->n)
            free(e->v[j]);
        else
            e->n++;
        e->v[j] = kv;
    }
    e->v[e->n] = NULL;
    return 0;
}

/* ---- cgroups -------------------------------------------------------------------------------- */

/* "exec", then two per REPL language: "python.0", "python.1", "javascript.0"... */
static const char *cg_name(enum sandbox_cg cg)
{
    static char names[SANDBOX_CG_N][32];
    if (cg == SANDBOX_CG_EXEC)
        return "exec";
    int r = (int)cg - SANDBOX_CG_REPL;
    if (!names[cg][0])
        snprintf(names[cg], sizeof names[cg], "%s.%d", repl_name(r / 2), r % 2);
    return names[cg];
}

static int cg_dir[SANDBOX_CG_N];
static enum { CG_UNTRIED, CG_ON, CG_OFF } cg_state;

/* Mounted on first use rather than at boot: a one-shot exec pays a few syscalls, boot nothing. */
static bool cg_init(void)
{
    if (cg_state != CG_UNTRIED)
        return cg_state == CG_ON;
    cg_state = CG_OFF;
    cleanup_close int fs = fsopen("cgroup2", FSOPEN_CLOEXEC);
    if (fs < 0 || fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        agent_log("cgroup2: %s; leftover processes are found through /proc instead",
                  strerror(errno));
        return false;
    }
    cleanup_close int root =
        fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    if (root < 0) {
        agent_log("fsmount cgroup2: %s; leftover processes are found through /proc instead",
                  strerror(errno));
        return false;
    }
    for (int i = 0; i < SANDBOX_CG_N; i++) {
        if (mkdirat(root, cg_name(i), 0755) < 0 && errno != EEXIST) {
            agent_log("mkdir cgroup `%s`: %s", cg_name(i), strerror(errno));
            return false;
        }
        cg_dir[i] = openat(root, cg_name(i), O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cg_dir[i] < 0) {
            agent_log("open cgroup `%s`: %s", cg_name(i), strerror(errno));
            return false;
        }
    }
    cg_state = CG_ON;
    return true;
}

bool sandbox_has_cgroups(void)
{
    return cg_init();
}

static int cg_write(enum sandbox_cg cg, const char *file, const char *text)
{
    cleanup_close int fd = openat(cg_dir[cg], file, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Without cgroups: SIGKILL every process whose real uid is the sandbox user's, but `keep`,
 * pass after pass until a pass finds none (what forks in between is caught by the next). */
static void sweep_proc(const pid_t *keep, size_t nkeep)
{
    for (int pass = 0; pass < 50; pass++) {
        DIR *d = opendir("/proc");
        if (!d)
            return;
        int killed = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            char *end;
            long pid = strtol(de->d_name, &end, 10);
            if (*end || pid <= 1)
                continue;
            bool kept = false;
            for (size_t i = 0; i < nkeep; i++)
                kept |= keep[i] == (pid_t)pid;
            if (kept)
                continue;
            char path[64], buf[1024];
            snprintf(path, sizeof path, "/proc/%ld/status", pid);
            cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
            ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
            if (n <= 0)
                continue;
            buf[n] = '\0';
            const char *uid = strstr(buf, "\nUid:");
            if (uid && strtol(uid + 5, NULL, 10) == AGENT_UID && kill((pid_t)pid, SIGKILL) == 0)
                killed++;
        }
        closedir(d);
        if (!killed)
            return;
    }
}

void sandbox_kill_cg(enum sandbox_cg cg, const pid_t *keep, size_t nkeep)
{
    if (!cg_init()) {
        sweep_proc(keep, nkeep);
        return;
    }
    if (cg_write(cg, "cgroup.kill", "1") < 0)
        agent_log("kill cgroup `%s`: %s", cg_name(cg), strerror(errno));
}

int sandbox_move(enum sandbox_cg cg, pid_t pid)
{
    if (!cg_init())
        return -1;
    char text[32];
    snprintf(text, sizeof text, "%d", (int)pid);
    if (cg_write(cg, "cgroup.procs", text) < 0) {
        agent_log("move %d to cgroup `%s`: %s", (int)pid, cg_name(cg), strerror(errno));
        return -1;
    }
    return 0;
}

bool sandbox_alone(enum sandbox_cg cg, pid_t pid)
{
    if (!cg_init())
        return true;
    cleanup_close int fd = openat(cg_dir[cg], "cgroup.procs", O_RDONLY | O_CLOEXEC);
    char buf[256];
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (n < 0)
        return false;
    buf[n] = '\0';
    for (char *p = buf; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v != pid)
            return false;
        p = end + strspn(end, "\n");
    }
    return true;
}

/* ---- starting a process -----------------------------------------------------------------------
 */

__attribute__((noreturn)) static void child_die(const char *what)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "sbx-agent: %s: %s\n", what, strerror(errno));
    ssize_t w = write(2, buf, n > 0 && (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    (void)w;
    _exit(errno == ENOENT ? 127 : 126);
}

/* In the forked child: join the cgroup, become the sandbox user and exec. Nothing of the agent
 * survives: fds, signal mask, dispositions and environment are all reset. */
__attribute__((noreturn)) static void child_exec(const struct sandbox_spawn *s, int procs_fd)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    /* Until the dups, errors go to the stderr pipe directly. */
    if (dup2(s->err, 2) < 0)
        _exit(126);
    /* First, while nothing of the code runs yet: a process outside the cgroup would escape the
     * kill that ends the exec. */
    if (procs_fd >= 0 && write(procs_fd, "0", 1) != 1)
        child_die("join cgroup");
    if (setsid() < 0)
        child_die("setsid");
    int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nul < 0)
        child_die("open /dev/null");
    if (dup2(nul, 0) < 0 || dup2(s->out, 1) < 0)
        child_die("dup2");
    int keep_from = 3;
    if (s->cmd >= 0) {
        /* Pipes belong to their creator (root) with mode 0600, and bash opens its script again
         * through /proc/self/fd: hand the command pipe to the sandbox user. */
        if (s->cmd >= SANDBOX_CMD_FD || s->result >= SANDBOX_CMD_FD)
            child_die("REPL pipes above the fixed descriptors");
        if (fchown(s->cmd, AGENT_UID, AGENT_GID) < 0 || dup2(s->cmd, SANDBOX_CMD_FD) < 0 ||
            dup2(s->result, SANDBOX_RESULT_FD) < 0)
            child_die("REPL pipes");
        if (close_range(3, SANDBOX_CMD_FD - 1, 0) < 0)
            child_die("close_range");
        keep_from = SANDBOX_RESULT_FD + 1;
    }
    if (close_range((unsigned)keep_from, ~0u, 0) < 0)
        for (int fd = keep_from; fd < 1024; fd++)
            close(fd);
    if (setgroups(0, NULL) < 0)
        child_die("setgroups");
    if (setgid(AGENT_GID) < 0)
        child_die("setgid");
    if (setuid(AGENT_UID) < 0)
        child_die("setuid");
    if (getuid() != AGENT_UID || geteuid() != AGENT_UID || getgid() != AGENT_GID ||
        getegid() != AGENT_GID || setuid(0) == 0) {
        errno = EPERM;
        child_die("dropping root");
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_die("no_new_privs");
    if (chdir(AGENT_HOME) < 0)
        child_die("chdir " AGENT_HOME);
    umask(022);
    execve(s->argv[0], s->argv, s->envp);
    child_die(s->argv[0]);
}

pid_t sandbox_spawn(const struct sandbox_spawn *s, sbx_err *err)
{
    cleanup_close int procs = -1;
    if (cg_init()) {
        procs = openat(cg_dir[s->cg], "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (procs < 0)
            return sbx_fail(err, errno, "open cgroup `%s`: %s", cg_name(s->cg), strerror(errno));
    }
    pid_t pid = fork();
    if (pid == 0)
        child_exec(s, procs);
    if (pid < 0)
        return sbx_fail(err, errno, "fork: %s", strerror(errno));
    return pid;
}
