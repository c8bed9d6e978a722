/* Persistent interpreters for keep_state execs: one REPL process per language, started on the
 * first such exec (or a Warm), that keeps its state from one exec to the next. It never talks to
 * the host nor decides when an exec ends (exec.c does); it never trusts what the REPL writes.
 *
 * The protocol with a REPL (the wrappers are agent/repl/repl.{py,js,sh}; TypeScript's is
 * repl.js, told by its last argument to read TypeScript):
 *   - it runs as uid 1000 like any code (sandbox.c), stdin /dev/null, its stdout and stderr
 *     pipes to the agent for its whole life, in its own session and cgroup;
 *   - before each exec the agent writes the code to /run/sbx/repl/<language>.code and, if the
 *     exec sets variables, them to <language>.env (root's files, readable by the REPL);
 *   - then one command line on fd 100: "SEQ HAS_ENV\n" (python, javascript, typescript), or for
 *     bash, which reads its script from that pipe, the shell line that sources both files;
 *   - the REPL answers "SEQ EXIT_CODE\n" on fd 101 after the code's output has been written.
 * So the end of an exec travels on its own pipe: nothing the code prints can fake it, and the
 * sequence number makes a late or stray line harmless. The code itself could write to fd 101,
 * but it could equally print whatever it likes: it only misleads itself. A REPL that exits
 * (sys.exit, process.exit, exit, a crash, the timeout's kill) ends its exec with its exit
 * status, and the next exec starts a fresh one. */
#include "agent.h"
#include "sbx_limits.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>

#define REPL_DIR AGENT_CODE_DIR "/repl"
#define REPL_WRAPPER_MAX (256u * 1024u)

_Static_assert(SANDBOX_CG_N == SANDBOX_CG_REPL + 2 * REPL_N, "two cgroups per REPL");

/* mode: the wrapper's last argument, for a wrapper that serves more than one language. */
static const struct {
    const char *name, *interp, *wrapper, *mode;
} langs[REPL_N] = {
    [REPL_PYTHON] = {"python", "/usr/bin/python3", "repl.py", NULL},
    [REPL_JAVASCRIPT] = {"javascript", "/usr/local/bin/bun", "repl.js", "js"},
    [REPL_TYPESCRIPT] = {"typescript", "/usr/local/bin/bun", "repl.js", "ts"},
    [REPL_RAW] = {"raw", "/bin/bash", "repl.sh", NULL},
};

#define REPL_IDLE(l) [l] = {.lang = l, .out = {-1, -1}, .cmd = -1, .result = -1}
static struct repl repls[REPL_N] = {
    REPL_IDLE(REPL_PYTHON),
    REPL_IDLE(REPL_JAVASCRIPT),
    REPL_IDLE(REPL_TYPESCRIPT),
    REPL_IDLE(REPL_RAW),
};

static int source_dir = -1;
static bool installed[REPL_N];

struct repl *repl_get(int lang)
{
    return &repls[lang];
}

void repl_set_source(int dirfd)
{
    source_dir = dirfd;
}

int repl_lang(const char *language)
{
    for (int i = 0; i < REPL_N; i++)
        if (language && !strcmp(language, langs[i].name))
            return i;
    return -1;
}

const char *repl_name(int lang)
{
    return langs[lang].name;
}

const char *repl_interp(int lang)
{
    return langs[lang].interp;
}

static int write_file(const char *path, const void *data, size_t len, sbx_err *err)
{
    cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", path, strerror(errno));
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(err, errno, "write `%s`: %s", path, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The initramfs, which holds the wrappers, is out of reach below the new root, but its folder
 * was opened before the switch: copy the wrapper into the root's /run, where the REPL (uid 1000)
 * may read it but not change it. */
static int repl_install(int lang, sbx_err *err)
{
    if (installed[lang])
        return 0;
    const char *name = langs[lang].wrapper;
    if (source_dir < 0)
        return sbx_fail(err, ENOENT, "the initramfs has no /repl folder (REPL wrappers)");
    cleanup_close int src = openat(source_dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (src < 0)
        return sbx_fail(err, errno, "REPL wrapper `/repl/%s` in the initramfs: %s", name,
                        strerror(errno));
    cleanup_free uint8_t *buf = malloc(REPL_WRAPPER_MAX);
    if (!buf)
        return sbx_fail(err, ENOMEM, "out of memory");
    size_t len = 0;
    for (;;) {
        ssize_t n = read(src, buf + len, REPL_WRAPPER_MAX - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return sbx_fail(err, errno, "read `/repl/%s`: %s", name, strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == REPL_WRAPPER_MAX)
            return sbx_fail(err, EFBIG, "REPL wrapper `/repl/%s` is too large", name);
    }
    if (mkdir(REPL_DIR, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", REPL_DIR, strerror(errno));
    char path[128];
    snprintf(path, sizeof path, REPL_DIR "/%s", name);
    if (write_file(path, buf, len, err) < 0)
        return -1;
    /* Once for every language it serves: a REPL may be reading it already. */
    for (int i = 0; i < REPL_N; i++)
        if (!strcmp(langs[i].wrapper, name))
            installed[i] = true;
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_pipes(int p[][2], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        close_fd(&p[i][0]);
        close_fd(&p[i][1]);
    }
}

static enum sandbox_cg repl_cg(const struct repl *r)
{
    return (enum sandbox_cg)(SANDBOX_CG_REPL + 2 * r->lang + (int)r->slot);
}

int repl_start(struct repl *r, sbx_err *err)
{
    if (r->pid)
        return 0;
    const char *interp = langs[r->lang].interp;
    if (access(interp, X_OK) < 0)
        return sbx_fail(err, errno, "no %s interpreter in this image (`%s`: %s)",
                        langs[r->lang].name, interp, strerror(errno));
    if (repl_install(r->lang, err) < 0)
        return -1;
    char wrapper[128], code[128], env_file[128];
    snprintf(wrapper, sizeof wrapper, REPL_DIR "/%s", langs[r->lang].wrapper);
    snprintf(code, sizeof code, REPL_DIR "/%s.code", langs[r->lang].name);
    snprintf(env_file, sizeof env_file, REPL_DIR "/%s.env", langs[r->lang].name);
    char *argv[6] = {(char *)interp};
    if (r->lang == REPL_RAW) {
        argv[1] = "--noprofile";
        argv[2] = "--norc";
        argv[3] = "/proc/self/fd/100";
    } else {
        argv[1] = wrapper;
        argv[2] = code;
        argv[3] = env_file;
        argv[4] = (char *)langs[r->lang].mode;
    }
    cleanup_env struct env_list env = {0};
    if (sandbox_env(&env, NULL, 0, err) < 0)
        return -1;
    /* [0] stdout, [1] stderr, [2] commands, [3] results */
    int p[4][2] = {{-1, -1}, {-1, -1}, {-1, -1}, {-1, -1}};
    for (int i = 0; i < 4; i++)
        if (pipe2(p[i], O_CLOEXEC) < 0) {
            int e = errno;
            close_pipes(p, 4);
            return sbx_fail(err, e, "pipe: %s", strerror(e));
        }
    r->slot = 0;
    struct sandbox_spawn s = {
        .argv = argv,
        .envp = env.v,
        .out = p[0][1],
        .err = p[1][1],
        .cmd = p[2][0],
        .result = p[3][1],
        .cg = repl_cg(r),
    };
    pid_t pid = sandbox_spawn(&s, err);
    close_fd(&p[0][1]);
    close_fd(&p[1][1]);
    close_fd(&p[2][0]);
    close_fd(&p[3][1]);
    if (pid < 0) {
        close_pipes(p, 4);
        return -1;
    }
    r->pid = pid;
    r->out[0] = p[0][0];
    r->out[1] = p[1][0];
    r->cmd = p[2][1];
    r->result = p[3][0];
    r->rlen = 0;
    r->seq = 0;
    r->used = false;
    fcntl(r->out[0], F_SETFL, O_NONBLOCK);
    fcntl(r->out[1], F_SETFL, O_NONBLOCK);
    fcntl(r->cmd, F_SETFL, O_NONBLOCK);
    fcntl(r->result, F_SETFL, O_NONBLOCK);
    if (r->lang == REPL_RAW) {
        static const char prelude[] = "builtin source " REPL_DIR "/repl.sh\n";
        if (write(r->cmd, prelude, sizeof prelude - 1) != (ssize_t)sizeof prelude - 1)
            agent_log("bash REPL prelude: %s", strerror(errno));
    }
    return 0;
}

/* Variables for the REPL to set before the code: KEY=VALUE\0 entries, or for bash export
 * lines with the value single-quoted (keys are identifiers, checked by the caller). */
static int build_env(int lang, const Sbx__Agent__Exec *x, char **out, size_t *len, sbx_err *err)
{
    size_t cap = 1;
    for (size_t i = 0; i < x->n_env; i++)
        cap += strlen(x->env[i]->key) + 4 * strlen(x->env[i]->value) + 16;
    char *buf = malloc(cap), *p = buf;
    if (!buf)
        return sbx_fail(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < x->n_env; i++) {
        const char *k = x->env[i]->key, *v = x->env[i]->value;
        if (lang != REPL_RAW) {
            p += sprintf(p, "%s=%s", k, v) + 1;
            continue;
        }
        p += sprintf(p, "export %s='", k);
        for (; *v; v++) {
            if (*v == '\'') {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else {
                *p++ = *v;
            }
        }
        memcpy(p, "'\n", 2);
        p += 2;
    }
    *out = buf;
    *len = (size_t)(p - buf);
    return 0;
}

int repl_send(struct repl *r, const Sbx__Agent__Exec *x, sbx_err *err)
{
    const char *name = langs[r->lang].name;
    char code[128], env_file[128], line[320];
    snprintf(code, sizeof code, REPL_DIR "/%s.code", name);
    snprintf(env_file, sizeof env_file, REPL_DIR "/%s.env", name);
    if (write_file(code, x->code.data, x->code.len, err) < 0)
        return -1;
    if (x->n_env > 0) {
        cleanup_free char *env = NULL;
        size_t len = 0;
        if (build_env(r->lang, x, &env, &len, err) < 0 || write_file(env_file, env, len, err) < 0)
            return -1;
    }
    unsigned long long seq = ++r->seq;
    int n;
    /* bash seeds $RANDOM once, at start: a shell restored from a memory snapshot would repeat
     * every other restored shell's numbers. Reseed it from the kernel with each exec. */
    unsigned rnd = 0;
    if (r->lang == REPL_RAW && getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
        rnd = (unsigned)now_ms() ^ (unsigned)r->seq;
    if (r->lang == REPL_RAW)
        n = snprintf(line, sizeof line,
                     "RANDOM=%u; %s%s%sbuiltin source %s; builtin printf '%%s %%d\\n' %llu \"$?\" "
                     ">&%d; builtin disown -a\n",
                     rnd & 0x7fffffffu, x->n_env ? "builtin source " : "", x->n_env ? env_file : "",
                     x->n_env ? "; " : "", code, seq, SANDBOX_RESULT_FD);
    else
        n = snprintf(line, sizeof line, "%llu %d\n", seq, x->n_env > 0);
    if (n < 0 || (size_t)n >= sizeof line)
        return sbx_fail(err, E2BIG, "command line too long");
    /* Under PIPE_BUF, and the pipe is empty between execs: it goes whole or not at all. */
    if (write(r->cmd, line, (size_t)n) != n)
        return sbx_fail(err, errno, "%s REPL does not take commands: %s", name, strerror(errno));
    r->rlen = 0;
    return 0;
}

/* "SEQ RC" with SEQ the current command's: 1 and *rc; anything else: 0. */
static int parse_result(const struct repl *r, const char *line, int *rc)
{
    char *end;
    errno = 0;
    unsigned long long seq = strtoull(line, &end, 10);
    if (end == line || *end != ' ' || errno || seq != r->seq)
        return 0;
    const char *p = end + 1;
    long v = strtol(p, &end, 10);
    if (end == p || *end || v < INT_MIN || v > INT_MAX)
        return 0;
    *rc = (int)v;
    return 1;
}

int repl_read_result(struct repl *r, int *rc)
{
    if (r->result < 0)
        return -1;
    for (;;) {
        ssize_t n = read(r->result, r->rbuf + r->rlen, sizeof r->rbuf - 1 - r->rlen);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        if (n == 0) {
            close_fd(&r->result);
            return -1;
        }
        r->rlen += (size_t)n;
        r->rbuf[r->rlen] = '\0';
        char *nl;
        while ((nl = memchr(r->rbuf, '\n', r->rlen))) {
            *nl = '\0';
            int found = parse_result(r, r->rbuf, rc);
            size_t used = (size_t)(nl + 1 - r->rbuf);
            memmove(r->rbuf, nl + 1, r->rlen - used);
            r->rlen -= used;
            if (found)
                return 1;
        }
        /* A line longer than any result is noise: drop it. */
        if (r->rlen == sizeof r->rbuf - 1)
            r->rlen = 0;
    }
}

size_t repl_live_pids(pid_t *out, pid_t except)
{
    size_t n = 0;
    for (int i = 0; i < REPL_N; i++)
        if (repls[i].pid && repls[i].pid != except)
            out[n++] = repls[i].pid;
    return n;
}

void repl_sweep(struct repl *r)
{
    enum sandbox_cg cg = repl_cg(r);
    if (!sandbox_has_cgroups()) {
        pid_t keep[REPL_N];
        sandbox_kill_cg(cg, keep, repl_live_pids(keep, 0));
        return;
    }
    /* The usual case, nothing left behind, costs one read. Otherwise the REPL moves to its
     * other cgroup and the one it leaves is killed with all that remained in it. */
    if (sandbox_alone(cg, r->pid))
        return;
    r->slot ^= 1;
    if (sandbox_move(repl_cg(r), r->pid) < 0) {
        r->slot ^= 1;
        return;
    }
    sandbox_kill_cg(cg, NULL, 0);
}

void repl_kill(struct repl *r, int sig)
{
    if (!r->pid)
        return;
    if (kill(-r->pid, sig) < 0 && errno != ESRCH)
        agent_log("kill %d: %s", -r->pid, strerror(errno));
    if (sig == SIGKILL) {
        pid_t keep[REPL_N];
        sandbox_kill_cg(repl_cg(r), keep, repl_live_pids(keep, r->pid));
    }
}

void repl_close(struct repl *r)
{
    close_fd(&r->out[0]);
    close_fd(&r->out[1]);
    close_fd(&r->cmd);
    close_fd(&r->result);
    r->pid = 0;
    r->rlen = 0;
}
