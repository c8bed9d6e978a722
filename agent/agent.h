/* What the rooms of sbx-agent share: the sandbox constants, logging, the host channel, and the
 * interfaces of sandbox.c (processes of the sandbox user), repl.c (persistent interpreters) and
 * files.c (file transfer confined to the home). */
#ifndef SBX_AGENT_H
#define SBX_AGENT_H

#include "agent.pb-c.h"
#include "common.h"
#include "frame.h"

#include <sys/types.h>

#define AGENT_CODE_DIR "/run/sbx"
#define AGENT_HOME "/home/user"
#define AGENT_UID 1000
#define AGENT_GID 1000

__attribute__((format(printf, 1, 2))) void agent_log(const char *fmt, ...);

/* ---- host channel (agent.c) ----------------------------------------------------------------- */

struct chan {
    int fd;
    frame_reader rd;
    frame_writer wr;
    uint64_t retry_at; /* host side closed: do not poll the port before this time */
    uint64_t skip;     /* bytes of an oversized frame still to throw away */
    bool connected;    /* bytes have come from the current host connection */
};

void chan_send(struct chan *c, Sbx__Agent__GuestMsg *m);
__attribute__((format(printf, 3, 4))) void chan_failure(struct chan *c, uint64_t id,
                                                        const char *fmt, ...);

/* ---- processes of the sandbox user (sandbox.c) ---------------------------------------------- */

/* A NULL-terminated environment built for one process. */
struct env_list {
    char **v;
    size_t n;
};
void env_list_free(struct env_list *e);
#define cleanup_env __attribute__((cleanup(env_list_free)))

/* The base environment of every sandbox process, then the request's variables (validated by
 * the caller); a request variable with a base name replaces the base one. */
int sandbox_env(struct env_list *e, Sbx__Agent__EnvVar **vars, size_t nvars, sbx_err *err);

/* The cgroups user processes are started in, so that everything they leave behind can be killed
 * at once however it detached itself (setsid, double fork). */
enum sandbox_cg {
    SANDBOX_CG_EXEC, /* one-shot execs */
    SANDBOX_CG_REPL, /* + 2 * language + slot: REPLs (see repl.c) */
    SANDBOX_CG_N = SANDBOX_CG_REPL + 6,
};

/* The descriptors a REPL gets besides stdio: commands in, results out. */
#define SANDBOX_CMD_FD 100
#define SANDBOX_RESULT_FD 101

struct sandbox_spawn {
    char *const *argv, *const *envp;
    int out, err;    /* write ends for stdout and stderr */
    int cmd, result; /* REPLs: become SANDBOX_CMD_FD and SANDBOX_RESULT_FD; else -1 */
    enum sandbox_cg cg;
};

/* Fork a process that becomes uid 1000 with no_new_privs in a new session in `cg`, stdin
 * /dev/null, cwd the home, and execs argv. Returns its pid, or -1 with err. */
pid_t sandbox_spawn(const struct sandbox_spawn *s, sbx_err *err);
/* Kill every process in `cg`. Without cgroups (the kernel lacks them), every process of the
 * sandbox user but those in `keep`. */
void sandbox_kill_cg(enum sandbox_cg cg, const pid_t *keep, size_t nkeep);
/* Move a process (all its threads) into `cg`. */
int sandbox_move(enum sandbox_cg cg, pid_t pid);
/* Whether `pid` is alone in `cg` (also when cgroups are missing: nothing can then be told). */
bool sandbox_alone(enum sandbox_cg cg, pid_t pid);
bool sandbox_has_cgroups(void);

/* ---- persistent interpreters (repl.c) ------------------------------------------------------- */

enum { REPL_PYTHON, REPL_JAVASCRIPT, REPL_RAW, REPL_N };

struct repl {
    int lang;
    pid_t pid;       /* 0: not running */
    int out[2];      /* read ends of its stdout and stderr; -1 at EOF */
    int cmd, result; /* write end of its command pipe, read end of its result pipe */
    char rbuf[64];   /* a partial result line */
    size_t rlen;
    uint64_t seq;  /* of the last command sent */
    unsigned slot; /* which of its language's two cgroups it is in */
    bool used;     /* code has run in it: it holds state */
    bool lost;     /* it ended while idle, holding state: the next exec reports a reset */
    bool warming;  /* a Warm waits for the REPL's answer to an empty command */
    uint64_t warm_id;
};

extern struct repl repls[REPL_N];

/* REPL_* for a language name, -1 if unknown. */
int repl_lang(const char *language);
/* Install the wrapper the first time (from the initramfs) and start the interpreter. */
int repl_start(struct repl *r, sbx_err *err);
/* Hand one exec to a running REPL: its code and variables, then the command line. */
int repl_send(struct repl *r, const Sbx__Agent__Exec *x, sbx_err *err);
/* Read what the result pipe holds. 1 with *rc: the result of the last command sent; 0: none
 * yet; -1: the pipe is closed (the REPL is ending). */
int repl_read_result(struct repl *r, int *rc);
/* After an exec: kill whatever it left running, the REPL itself excepted. */
void repl_sweep(struct repl *r);
/* Signal the REPL's process group; SIGKILL also kills everything in its cgroup. */
void repl_kill(struct repl *r, int sig);
/* It has ended: close its pipes (unread output is dropped). */
void repl_close(struct repl *r);
/* Pids of the running REPLs but `except`, for sweeping without cgroups. */
size_t repl_live_pids(pid_t *out, pid_t except);
/* The initramfs folder holding the wrappers, opened at boot before the root switch. */
void repl_set_source(int dirfd);

/* ---- files (files.c) ------------------------------------------------------------------------ */

void files_write(struct chan *c, uint64_t id, const Sbx__Agent__FileWrite *w);
void files_chunk(struct chan *c, uint64_t id, const Sbx__Agent__FileChunk *k);
void files_read(struct chan *c, uint64_t id, const Sbx__Agent__FileRead *r);
void files_list(struct chan *c, uint64_t id, const Sbx__Agent__FileList *l);
/* A FileRead in progress has its next chunk due (the channel's queue is short): the loop then
 * calls files_pump instead of sleeping. */
bool files_ready(const struct chan *c);
void files_pump(struct chan *c);
/* The host went away: drop any transfer in progress (and its partial file). */
void files_abort(void);

/* ---- main loop and dispatch (agent.c) ------------------------------------------------------- */

#define AGENT_CHUNK (64u * 1024u)

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

struct agent {
    struct chan ch;
    struct run run;
    int sigfd;
    int rng_fd;
    bool net_done; /* hostname and loopback, deferred until the first Ready */
    char kernel[65];
};

void agent_handle(struct agent *a, const uint8_t *data, size_t len);

/* ---- log and host channel (chan.c) ---------------------------------------------------------- */

__attribute__((format(printf, 1, 2), noreturn)) void agent_fatal(const char *fmt, ...);
void chan_flush(struct chan *c);
void chan_read(struct agent *a);
void agent_ready(struct agent *a, uint64_t id);

/* ---- boot (boot.c) -------------------------------------------------------------------------- */

extern int initrd_dev_fd;
int boot_early(sbx_err *err);
int boot_mount_newroot(sbx_err *err);
int boot_open_port(sbx_err *err);
void boot_net_and_name(void);
int boot_switch_root(sbx_err *err);
int boot_hide_cmdline(sbx_err *err);
void agent_hello(struct agent *a, const Sbx__Agent__Hello *h);

/* ---- exec (exec.c) -------------------------------------------------------------------------- */

int run_pipe_read(struct agent *a, int *fd, int s, bool to_exec);
int run_start(struct agent *a, uint64_t id, const Sbx__Agent__Exec *in, sbx_err *err);
void run_repl_result(struct agent *a, int rc);
void run_timers(struct agent *a, uint64_t now);
void agent_reap(struct agent *a);
void agent_warm(struct agent *a, uint64_t id, const Sbx__Agent__Warm *w);
void agent_warm_done(struct agent *a, struct repl *rp, bool ok);

/* zram.c: compressed swap in guest RAM, set up once after the first Ready. */
void zram_swap_on(int dev_dir_fd);

#endif
