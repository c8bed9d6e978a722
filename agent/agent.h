/* What the rooms of sbx-agent offer each other: the sandbox constants, and the functions of
 * chan.c (log, host channel), boot.c, exec.c, sandbox.c, repl.c, files.c and zram.c. No room
 * reaches into another's variables: each keeps its state private behind these functions. */
#ifndef SBX_AGENT_H
#define SBX_AGENT_H

#include "agent.pb-c.h"
#include "common.h"
#include "frame.h"

#include <poll.h>
#include <sys/types.h>

#define AGENT_CODE_DIR "/run/sbx"
#define AGENT_HOME "/home/user"
#define AGENT_UID 1000
#define AGENT_GID 1000

#define AGENT_CHUNK (64u * 1024u) /* one read of a pipe or of the port */

/* ---- log and host channel (chan.c) ---------------------------------------------------------- */

/* To the kernel console. */
__attribute__((format(printf, 1, 2))) void agent_log(const char *fmt, ...);
/* Log, then end the VM (PID 1 must never return). */
__attribute__((format(printf, 1, 2), noreturn)) void agent_fatal(const char *fmt, ...);

/* The one channel to the host. Frames that arrive go to the handler, one at a time. */
struct chan;
typedef void chan_handler(struct chan *c, const uint8_t *data, size_t len);
struct chan *chan_open(int fd, chan_handler *handle);
void chan_send(struct chan *c, Sbx__Agent__GuestMsg *m);
__attribute__((format(printf, 3, 4))) void chan_failure(struct chan *c, uint64_t id,
                                                        const char *fmt, ...);
/* Ready: the protocol version, the kernel release, the uptime. */
void chan_ready(struct chan *c, uint64_t id);
/* Bytes queued for the host. */
size_t chan_queued(const struct chan *c);
/* The port's entry in the loop's poll set (left at fd -1 while the host side is closed); returns
 * when the loop must look again (UINT64_MAX: no deadline). */
uint64_t chan_poll_set(struct chan *c, uint64_t now, struct pollfd *p);
void chan_poll_event(struct chan *c, short revents);

/* ---- what PID 1 sets up (boot.c) ------------------------------------------------------------ */

/* In order: devtmpfs and fds 0-2; the new root with its mounts and /dev; the port (returns its
 * fd); the root switch; the kernel command line hidden. Each fails with err (fatal to PID 1). */
int boot_early(sbx_err *err);
int boot_mount_newroot(sbx_err *err);
int boot_open_port(sbx_err *err);
int boot_switch_root(sbx_err *err);
int boot_hide_cmdline(sbx_err *err);
/* The initramfs /dev (out of the code's reach), or -1 before boot_early. */
int boot_dev_dir(void);
void sleep_ms(unsigned ms);
/* Each Hello: reseed the RNG, set the clock. */
void boot_hello(const Sbx__Agent__Hello *h);
/* After each Ready to a Hello; does its work once: hostname, loopback, zram swap. */
void boot_late(void);

/* ---- the NIC (net.c) ------------------------------------------------------------------------ */

/* Address, route and resolver of eth0 from the host's NetConfig. */
int net_apply(const Sbx__Agent__NetConfig *n, sbx_err *err);

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
int sandbox_env(struct env_list *e, Sbx__Files__EnvVar **vars, size_t nvars, sbx_err *err);

/* The cgroups user processes are started in, so that everything they leave behind can be killed
 * at once however it detached itself (setsid, double fork). */
enum sandbox_cg {
    SANDBOX_CG_EXEC,                    /* one-shot execs */
    SANDBOX_CG_REPL,                    /* + 2 * language + slot: REPLs (see repl.c) */
    SANDBOX_CG_N = SANDBOX_CG_REPL + 8, /* two per REPL_* */
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

/* The languages the agent runs, each with its REPL: */
enum { REPL_PYTHON, REPL_JAVASCRIPT, REPL_TYPESCRIPT, REPL_RAW, REPL_N };

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

/* The REPL of a language (REPL_*). */
struct repl *repl_get(int lang);
/* REPL_* for a language name, -1 if unknown. */
int repl_lang(const char *language);
/* A language's name, and its interpreter (which one-shot execs run as well). */
const char *repl_name(int lang);
const char *repl_interp(int lang);
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

/* ---- running code (exec.c) ----------------------------------------------------------------- */

/* The signalfd that reports SIGCHLD: every child of PID 1 is reaped here. */
void exec_init(int sigchld_fd);
/* An exec is in progress (one at a time). */
bool exec_busy(void);
/* Start an exec (its answers, output then ExecDone, come later through the loop). */
int exec_start(struct chan *c, uint64_t id, const Sbx__Agent__Exec *x, sbx_err *err);
/* Start a language's REPL; Ready answers once it waits for code. */
void exec_warm(struct chan *c, uint64_t id, const Sbx__Agent__Warm *w);
/* The exec's deadline, grace and drain. */
void exec_timers(struct chan *c, uint64_t now);
/* exec.c's slice of the loop's poll set (EXEC_PFD_N entries); `pipes`: the host queue has room
 * for more output. Returns the next deadline (UINT64_MAX: none). After poll: exec_poll_sig
 * before the port is served, exec_poll_events after. */
#define EXEC_PFD_N (3 + 3 * REPL_N)
uint64_t exec_poll_set(struct pollfd *p, bool pipes);
void exec_poll_sig(struct chan *c, const struct pollfd *p);
void exec_poll_events(struct chan *c, const struct pollfd *p);

/* ---- files (files.c) ------------------------------------------------------------------------ */

void files_write(struct chan *c, uint64_t id, const Sbx__Agent__FileWrite *w);
void files_chunk(struct chan *c, uint64_t id, const Sbx__Files__FileChunk *k);
void files_read(struct chan *c, uint64_t id, const Sbx__Agent__FileRead *r);
void files_list(struct chan *c, uint64_t id, const Sbx__Agent__FileList *l);
/* A FileRead in progress has its next chunk due (the channel's queue is short): the loop then
 * calls files_pump instead of sleeping. */
bool files_ready(const struct chan *c);
void files_pump(struct chan *c);
/* The host went away: drop any transfer in progress (and its partial file). */
void files_abort(void);

/* pkgs.c: the package layer, mounted on the first Hello that says the VM has one. */
#define AGENT_PKGS_DIR AGENT_CODE_DIR "/packages"
int pkgs_mount(int dev_dir_fd, sbx_err *err);
bool pkgs_mounted(void);

/* zram.c: compressed swap in guest RAM, set up once after the first Ready. */
void zram_swap_on(int dev_dir_fd);

#endif
