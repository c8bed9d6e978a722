/* Running code: the one exec in progress (one-shot or in a REPL) with its caps, deadline and
 * reaping, and Warm. Every child of PID 1 is reaped here. It never reads host frames or touches
 * the filesystem beyond the code files it writes (boot.c, files.c own those). */
#include "agent.h"
#include "sbx_limits.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define AGENT_TERM_GRACE_MS 1000
#define AGENT_DRAIN_MS 200

/* ---- exec --------------------------------------------------------------------------------- */

struct run {
    pid_t pid; /* 0: no exec in progress; keep_state: the REPL's */
    uint64_t id;
    struct repl *repl; /* keep_state: the REPL running it */
    int fd[2];         /* one-shot: read ends of stdout, stderr; -1 once at EOF */
    size_t cap[2], sent[2];
    bool trunc[2];
    uint64_t start_ms, deadline_ms, kill_ms, exit_ms, drain_until_ms;
    bool term_sent, kill_sent, timed_out, exited;
    bool reset;   /* keep_state: the REPL had ended since the last exec, its state with it */
    bool have_rc; /* keep_state: the REPL reported the code's exit code */
    int rc;
    int status;
};

static struct run run = {.fd = {-1, -1}};
static int sigfd = -1; /* SIGCHLD */

void exec_init(int sigchld_fd)
{
    sigfd = sigchld_fd;
}

bool exec_busy(void)
{
    return run.pid != 0;
}

/* An exec runs either as a fresh interpreter process (one-shot), or in the language's REPL
 * (keep_state, repl.c). Either way its output streams under the caps, and the deadline sends
 * SIGTERM to its process group, then SIGKILL after the grace. A one-shot exec ends when its
 * process has exited and its pipes are drained; a REPL exec when the REPL reports the result,
 * or when the REPL itself ends (then the REPL's state is gone: interpreter_reset). */

static void run_kill(struct run *r, int sig)
{
    if (r->repl) {
        repl_kill(r->repl, sig);
        return;
    }
    if (kill(-r->pid, sig) < 0 && errno != ESRCH)
        agent_log("kill %d: %s", -r->pid, strerror(errno));
    if (sig == SIGKILL) {
        /* Code may have left processes outside its group (setsid, double fork): all of them
         * are in the exec's cgroup. */
        pid_t keep[REPL_N];
        sandbox_kill_cg(SANDBOX_CG_EXEC, keep, repl_live_pids(keep, 0));
    }
}

static int run_write_code(const char *path, const uint8_t *code, size_t len, sbx_err *err)
{
    cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", path, strerror(errno));
    if (fchown(fd, 0, 0) < 0 || fchmod(fd, 0644) < 0)
        return sbx_fail(err, errno, "chmod `%s`: %s", path, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, code + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return sbx_fail(err, errno, "write `%s`: %s", path, strerror(errno));
        }
        off += (size_t)n;
    }
    return 0;
}

static int run_validate(const Sbx__Agent__Exec *x, sbx_err *err)
{
    sbx_err why_err = {0};
    if (repl_lang(x->language) < 0)
        return sbx_fail(err, EINVAL, "unknown language `%.32s` (" SBX_LANGUAGES ")",
                        x->language ? x->language : "");
    if (limits_check_code(x->code.data, x->code.len, &why_err) < 0)
        return sbx_fail(err, EINVAL, "%s", why_err.msg);
    if (x->timeout_ms > SBX_TIMEOUT_MAX * 1000u)
        return sbx_fail(err, EINVAL, "timeout %u ms is over the limit of %u s", x->timeout_ms,
                        SBX_TIMEOUT_MAX);
    if (limits_check_env_count(x->n_env, &why_err) < 0)
        return sbx_fail(err, EINVAL, "%s", why_err.msg);
    for (size_t i = 0; i < x->n_env; i++) {
        const Sbx__Files__EnvVar *v = x->env[i];
        if (!v || !v->key || !v->value)
            return sbx_fail(err, EINVAL, "environment variable %zu is incomplete", i);
        if (limits_check_env(v->key, v->value, &why_err) < 0)
            return sbx_fail(err, EINVAL, "%s", why_err.msg);
    }
    return 0;
}

/* A one-shot exec: the code in a file, a fresh interpreter for it. The file's extension is what
 * tells Bun to read TypeScript. */
static pid_t run_spawn_oneshot(const Sbx__Agent__Exec *x, int fd[2], sbx_err *err)
{
    static const char *const files[REPL_N] = {
        [REPL_PYTHON] = AGENT_CODE_DIR "/code.py",
        [REPL_JAVASCRIPT] = AGENT_CODE_DIR "/code.js",
        [REPL_TYPESCRIPT] = AGENT_CODE_DIR "/code.ts",
        [REPL_RAW] = AGENT_CODE_DIR "/code.sh",
    };
    int lang = repl_lang(x->language);
    const char *interp = repl_interp(lang), *path = files[lang];
    if (run_write_code(path, x->code.data, x->code.len, err) < 0)
        return -1;
    cleanup_env struct env_list env = {0};
    if (sandbox_env(&env, x->env, x->n_env, err) < 0)
        return -1;
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (out[i] >= 0)
                close(out[i]);
            if (errp[i] >= 0)
                close(errp[i]);
        }
        return sbx_fail(err, e, "pipe: %s", strerror(e));
    }
    char *argv[] = {(char *)interp, (char *)path, NULL};
    struct sandbox_spawn s = {
        .argv = argv,
        .envp = env.v,
        .out = out[1],
        .err = errp[1],
        .cmd = -1,
        .result = -1,
        .cg = SANDBOX_CG_EXEC,
    };
    pid_t pid = sandbox_spawn(&s, err);
    close(out[1]);
    close(errp[1]);
    if (pid < 0) {
        close(out[0]);
        close(errp[0]);
        return -1;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    fd[0] = out[0];
    fd[1] = errp[0];
    return pid;
}

static void exec_reap(struct chan *c);
static void warm_done(struct chan *c, struct repl *rp, bool ok);

/* Editors on some systems save UTF-8 with a byte-order mark. Python and Bun skip one; bash
 * takes it as part of the first word ("\xef\xbb\xbfecho: command not found"). One place for all
 * languages, one-shot and REPL alike: the code handed to any interpreter starts after the mark.
 * Only one, at the very start: a mark anywhere else is the code's own business. Code that was
 * only a mark becomes empty, which every interpreter runs as nothing (exit 0). */
static ProtobufCBinaryData run_code_without_bom(ProtobufCBinaryData code)
{
    static const uint8_t bom[] = {0xEF, 0xBB, 0xBF};
    if (code.len >= sizeof bom && !memcmp(code.data, bom, sizeof bom)) {
        code.data += sizeof bom;
        code.len -= sizeof bom;
    }
    return code;
}

int exec_start(struct chan *c, uint64_t id, const Sbx__Agent__Exec *in, sbx_err *err)
{
    struct run *r = &run;
    if (run_validate(in, err) < 0)
        return -1;
    /* A shallow copy, read only: the fields still point into the unpacked message. */
    Sbx__Agent__Exec stripped = *in;
    stripped.code = run_code_without_bom(in->code);
    const Sbx__Agent__Exec *x = &stripped;
    int fd[2] = {-1, -1};
    struct repl *rp = NULL;
    bool reset = false;
    pid_t pid;
    uint64_t start = now_ms();
    if (x->keep_state) {
        rp = repl_get(repl_lang(x->language));
        /* A REPL that ended while idle is noticed now, so the code goes to a fresh one. */
        exec_reap(c);
        if (rp->lost) {
            reset = true;
            rp->lost = false;
        }
        /* The exec's command supersedes the warm's: answer the warm now. */
        warm_done(c, rp, true);
        if (repl_start(rp, err) < 0 || repl_send(rp, x, err) < 0)
            return -1;
        rp->used = true;
        pid = rp->pid;
    } else {
        pid = run_spawn_oneshot(x, fd, err);
        if (pid < 0)
            return -1;
    }
    uint32_t timeout = x->timeout_ms ? x->timeout_ms : SBX_TIMEOUT_DEFAULT * 1000u;
    *r = (struct run){
        .pid = pid,
        .id = id,
        .repl = rp,
        .fd = {fd[0], fd[1]},
        .cap = {x->max_stdout && x->max_stdout < SBX_MAX_STDOUT ? x->max_stdout : SBX_MAX_STDOUT,
                x->max_stderr && x->max_stderr < SBX_MAX_STDERR ? x->max_stderr : SBX_MAX_STDERR},
        .start_ms = start,
        .deadline_ms = start + timeout,
        .reset = reset,
    };
    return 0;
}

/* Output of the exec in progress, under its caps. */
static void run_emit(struct chan *c, int s, const uint8_t *buf, size_t n)
{
    struct run *r = &run;
    size_t room = r->cap[s] - r->sent[s];
    size_t take = n < room ? n : room;
    if (take < n)
        r->trunc[s] = true;
    if (take == 0)
        return;
    r->sent[s] += take;
    Sbx__Agent__Output o = SBX__AGENT__OUTPUT__INIT;
    o.stream = (uint32_t)s + 1;
    o.data.data = (uint8_t *)buf;
    o.data.len = take;
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = r->id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_OUTPUT;
    m.output = &o;
    chan_send(c, &m);
}

/* One read from an output pipe: 1 bytes went on, 0 nothing there, -1 EOF (the fd is closed). */
static int run_pipe_read(struct chan *c, int *fd, int s, bool to_exec)
{
    static uint8_t buf[AGENT_CHUNK];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        agent_log("read pipe: %s", strerror(errno));
        n = 0;
    }
    if (n == 0) {
        close(*fd);
        *fd = -1;
        return -1;
    }
    /* A REPL's output between execs (a thread, a timer) belongs to no exec: dropped. */
    if (to_exec)
        run_emit(c, s, buf, (size_t)n);
    return 1;
}

static void run_finish(struct chan *c)
{
    struct run *r = &run;
    Sbx__Agent__ExecDone d = SBX__AGENT__EXEC_DONE__INIT;
    if (r->repl && r->exited && !r->have_rc) {
        /* It may have reported before ending. */
        int rc;
        if (repl_read_result(r->repl, &rc) == 1) {
            r->have_rc = true;
            r->rc = rc;
        }
    }
    if (r->have_rc)
        d.exit_code = r->rc;
    else if (WIFEXITED(r->status))
        d.exit_code = WEXITSTATUS(r->status);
    else if (WIFSIGNALED(r->status))
        d.exit_code = 128 + WTERMSIG(r->status);
    else
        d.exit_code = -1;
    d.timed_out = r->timed_out;
    d.stdout_truncated = r->trunc[0];
    d.stderr_truncated = r->trunc[1];
    d.execution_time_ms = (r->exit_ms ? r->exit_ms : now_ms()) - r->start_ms;
    d.interpreter_reset = r->repl && (r->reset || r->exited);
    Sbx__Agent__GuestMsg m = SBX__AGENT__GUEST_MSG__INIT;
    m.id = r->id;
    m.body_case = SBX__AGENT__GUEST_MSG__BODY_DONE;
    m.done = &d;
    chan_send(c, &m);
    for (int s = 0; s < 2; s++)
        if (r->fd[s] >= 0)
            close(r->fd[s]);
    if (r->repl && r->exited)
        repl_close(r->repl);
    *r = (struct run){.fd = {-1, -1}};
}

/* The REPL reported the exec's result: everything the code wrote before is already in the
 * pipes (the wrapper flushed first), so take it, clean up after the code, and end the exec. */
static void run_repl_result(struct chan *c, int rc)
{
    struct run *r = &run;
    struct repl *rp = r->repl;
    r->exit_ms = now_ms();
    r->have_rc = true;
    r->rc = rc;
    /* Bounded: the pipe holds what was written before the result, at most its capacity; a
     * thread still printing must not keep the exec open. */
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 32 && rp->out[s] >= 0; i++)
            if (run_pipe_read(c, &rp->out[s], s, true) <= 0)
                break;
    repl_sweep(rp);
    run_finish(c);
}

static int *run_out_fd(struct run *r, int s)
{
    return r->repl ? &r->repl->out[s] : &r->fd[s];
}

/* Deadlines: SIGTERM at the timeout, SIGKILL after the grace, and an end to draining. */
void exec_timers(struct chan *c, uint64_t now)
{
    struct run *r = &run;
    if (!r->pid)
        return;
    if (!r->exited) {
        if (!r->term_sent && now >= r->deadline_ms) {
            r->term_sent = r->timed_out = true;
            r->kill_ms = now + AGENT_TERM_GRACE_MS;
            run_kill(r, SIGTERM);
        } else if (r->term_sent && !r->kill_sent && now >= r->kill_ms) {
            r->kill_sent = true;
            run_kill(r, SIGKILL);
        }
        return;
    }
    if ((*run_out_fd(r, 0) < 0 && *run_out_fd(r, 1) < 0) || now >= r->drain_until_ms)
        run_finish(c);
}

/* A REPL ended: during its exec, that exec ends with its status; while idle, its state is lost
 * and the next exec will say so. */
static void run_repl_ended(struct chan *c, struct repl *rp, int status)
{
    struct run *r = &run;
    if (r->pid && r->repl == rp && !r->exited) {
        r->exited = true;
        r->status = status;
        if (!r->exit_ms)
            r->exit_ms = now_ms();
        r->drain_until_ms = now_ms() + AGENT_DRAIN_MS;
        return;
    }
    if (rp->used)
        rp->lost = true;
    warm_done(c, rp, false);
    repl_close(rp);
}

static void exec_reap(struct chan *c)
{
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        ;
    struct run *r = &run;
    /* Kill what a process left behind before reaping it, so its pid (its group's id) cannot be
     * reused in between. */
    if (r->pid && !r->repl && !r->exited) {
        siginfo_t ci = {0};
        if (waitid(P_PID, (id_t)r->pid, &ci, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            ci.si_pid == r->pid) {
            r->exit_ms = now_ms();
            run_kill(r, SIGKILL);
        }
    }
    for (int i = 0; i < REPL_N; i++) {
        struct repl *rp = repl_get(i);
        siginfo_t ci = {0};
        if (rp->pid && waitid(P_PID, (id_t)rp->pid, &ci, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            ci.si_pid == rp->pid) {
            if (r->repl == rp && !r->exit_ms)
                r->exit_ms = now_ms();
            repl_kill(rp, SIGKILL);
        }
    }
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0)
            break;
        if (r->pid && p == r->pid && !r->repl && !r->exited) {
            r->exited = true;
            r->status = st;
            if (!r->exit_ms)
                r->exit_ms = now_ms();
            r->drain_until_ms = now_ms() + AGENT_DRAIN_MS;
            continue;
        }
        for (int i = 0; i < REPL_N; i++)
            if (repl_get(i)->pid == p)
                run_repl_ended(c, repl_get(i), st);
    }
}

/* Warm answers Ready (with the Warm's id) only once the REPL has run an empty command: its
 * interpreter has started, loaded its wrapper and waits for the next command. A memory snapshot
 * taken after that answer never holds a half-started REPL. */
void exec_warm(struct chan *c, uint64_t id, const Sbx__Agent__Warm *w)
{
    int l = repl_lang(w->language);
    if (l < 0) {
        chan_failure(c, id, "warm: unknown language `%.32s` (" SBX_LANGUAGES ")", w->language);
        return;
    }
    sbx_err err = {0};
    struct repl *rp = repl_get(l);
    exec_reap(c);
    if (run.pid && run.repl == rp) {
        chan_ready(c, id); /* busy with an exec: it is as warm as it gets */
        return;
    }
    if (rp->warming) {
        chan_failure(c, rp->warm_id, "warm: superseded by another warm");
        rp->warming = false;
    }
    Sbx__Agent__Exec empty = SBX__AGENT__EXEC__INIT;
    if (repl_start(rp, &err) < 0 || repl_send(rp, &empty, &err) < 0) {
        chan_failure(c, id, "warm: %s", err.msg);
        return;
    }
    rp->warming = true;
    rp->warm_id = id;
}

/* The REPL answered the warm's empty command (ok), or ended before it could (!ok). */
static void warm_done(struct chan *c, struct repl *rp, bool ok)
{
    if (!rp->warming)
        return;
    rp->warming = false;
    if (ok)
        chan_ready(c, rp->warm_id);
    else
        chan_failure(c, rp->warm_id, "warm: the %s REPL ended while starting", repl_name(rp->lang));
}

/* ---- the loop's poll set ------------------------------------------------------------------ */

/* This room's slice of it: SIGCHLD, the one-shot exec's stdout and stderr, then per REPL its
 * stdout, stderr and results (EXEC_PFD_N in all). */
enum { XFD_SIG, XFD_OUT, XFD_ERR, XFD_REPL };

uint64_t exec_poll_set(struct pollfd *p, bool pipes)
{
    struct run *r = &run;
    uint64_t next = UINT64_MAX;
    p[XFD_SIG] = (struct pollfd){.fd = sigfd, .events = POLLIN};
    if (r->pid) {
        for (int s = 0; s < 2 && pipes; s++)
            if (r->fd[s] >= 0)
                p[XFD_OUT + s] = (struct pollfd){.fd = r->fd[s], .events = POLLIN};
        next = r->exited      ? r->drain_until_ms
               : r->kill_sent ? UINT64_MAX
               : r->term_sent ? r->kill_ms
                              : r->deadline_ms;
    }
    for (int i = 0; i < REPL_N; i++) {
        struct repl *rp = repl_get(i);
        /* Output between execs is read (and dropped) whatever the queue holds. */
        bool mine = r->pid && r->repl == rp;
        for (int s = 0; s < 2; s++)
            if (rp->out[s] >= 0 && (pipes || !mine))
                p[XFD_REPL + 3 * i + s] = (struct pollfd){.fd = rp->out[s], .events = POLLIN};
        if (rp->result >= 0)
            p[XFD_REPL + 3 * i + 2] = (struct pollfd){.fd = rp->result, .events = POLLIN};
    }
    return next;
}

void exec_poll_sig(struct chan *c, const struct pollfd *p)
{
    if (p[XFD_SIG].revents)
        exec_reap(c);
}

void exec_poll_events(struct chan *c, const struct pollfd *p)
{
    struct run *r = &run;
    for (int s = 0; s < 2; s++)
        if (p[XFD_OUT + s].revents && r->pid && !r->repl && r->fd[s] >= 0)
            run_pipe_read(c, &r->fd[s], s, true);
    for (int i = 0; i < REPL_N; i++) {
        struct repl *rp = repl_get(i);
        bool mine = r->pid && r->repl == rp;
        for (int s = 0; s < 2; s++)
            if (p[XFD_REPL + 3 * i + s].revents && rp->out[s] >= 0)
                run_pipe_read(c, &rp->out[s], s, mine);
        if (p[XFD_REPL + 3 * i + 2].revents && rp->result >= 0) {
            int rc;
            int got = repl_read_result(rp, &rc);
            if (got == 1 && mine && !r->exited)
                run_repl_result(c, rc);
            else if (got == 1 && rp->warming)
                warm_done(c, rp, true);
        }
    }
}
