/* sbx: the command line. Parses (args.c), loads the sources, and does everything else through
 * libsbx, so the CLI can do nothing another libsbx program could not. */
#include "args.h"
#include "common.h"
#include "libsbx.h"
#include "paths.h"
#include "sbx_limits.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>

#define EXIT_USAGE 2
#define EXIT_TIMEOUT 124
#define EXIT_SANDBOX 125
#define EXIT_NOT_RUNNING 3

static const char main_help[] =
    "Usage: sbx [--socket PATH] COMMAND [OPTIONS]\n"
    "\n"
    "Run untrusted Python, JavaScript or shell code in throw-away QEMU microVMs.\n"
    "\n"
    "Commands:\n"
    "  run        run code, each source in a fresh VM (sbx run --help)\n"
    "  session    keep a VM across several execs, move files in and out\n"
    "             (sbx session --help)\n"
    "  status     show what the daemon is doing (sbx status --help)\n"
    "\n"
    "Options:\n"
    "      --socket PATH  the daemon's control socket; default $EXEC_SANDBOX_SOCKET, else\n"
    "                     $XDG_RUNTIME_DIR/exec-sandbox/sbxd.sock, else\n"
    "                     /tmp/exec-sandbox-UID/sbxd.sock\n"
    "  -V, --version      print the version and exit\n"
    "  -h, --help         print this help and exit\n"
    "\n"
    "If no daemon listens on the socket, `sbx run` and `sbx session new` start a private one\n"
    "for this user (sbxd from $EXEC_SANDBOX_SBXD, beside sbx, or in $PATH); it exits after\n"
    "5 idle minutes. The per-user socket is used only when its directory is this user's alone\n"
    "and the daemon on it runs as this user or root; a socket named with --socket or\n"
    "$EXEC_SANDBOX_SOCKET may be any user's daemon (sbx status shows its uid).\n";

static const char run_help[] =
    "Usage: sbx run [OPTIONS] [SOURCE...]\n"
    "\n"
    "Run code in a fresh microVM that is thrown away afterwards.\n"
    "\n"
    "Each SOURCE is `-` (read standard input), the path of an existing file, or the code\n"
    "itself. A file's extension picks its language (.py python, .js/.mjs javascript, .sh raw).\n"
    "An argument that looks like a file name (ends in one of those extensions, no spaces,\n"
    "quotes or parentheses) but names no file is an error, not code.\n"
    "\n"
    "Options:\n"
    "  -c, --code CODE        code to run, never taken for a file name (repeatable)\n"
    "  -l, --language LANG    python, javascript or raw (a shell); default: by file\n"
    "                         extension, else python\n"
    "  -t, --timeout SECONDS  wall-clock limit, 1-300 (daemon default 30)\n"
    "  -m, --memory MB        guest memory, 128-2048 (daemon default 256)\n"
    "  -e, --env KEY=VALUE    environment variable for the code (repeatable, up to 100)\n"
    "  -j, --concurrency N    VMs at once when there are several sources, 1-100 (default 10)\n"
    "      --upload LOCAL:GUEST\n"
    "                         copy a local file into the VM before the code runs; GUEST is\n"
    "                         relative to the sandbox home (repeatable)\n"
    "      --download GUEST[:LOCAL]\n"
    "                         copy a file out of the VM after the code ran; LOCAL defaults\n"
    "                         to GUEST's name in the current directory, and may be an\n"
    "                         existing directory (repeatable)\n"
    "      --json             print results as JSON instead of output (no live output)\n"
    "  -q, --quiet            no progress or summary lines\n"
    "      --socket PATH      the daemon's control socket\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "Not available yet in this version (refused, exit status 2):\n"
    "  -p/--package, --network, --allow-domain, --expose, --no-validation\n"
    "\n"
    "--upload and --download take one source; the run then goes through a session that\n"
    "is closed afterwards, also on errors and on ^C. GUEST may not contain `:` there (use\n"
    "`sbx session upload/download`). Files are at most 50 MiB. Downloads are tried even\n"
    "when the code failed; a file is saved only once it arrived whole (size and SHA-256\n"
    "checked), never in part.\n"
    "\n"
    "One source: its output is shown as it is produced. Several sources: they run\n"
    "concurrently, each in its own VM, and each one's output is printed afterwards, in the\n"
    "order given, under a header line (stderr lines go to stderr). With --json: one JSON\n"
    "object per run (an array for several sources) with the output and all result fields.\n"
    "\n"
    "Exit status:\n"
    "  one source      the code's own exit status; 124 if it timed out\n"
    "  several         0 if every one exited 0, else 1\n"
    "  2               bad usage, or a request the sandbox refuses (VmConfigError,\n"
    "                  PackageNotAllowedError)\n"
    "  125             any other sandbox error (no daemon, VM failed to start, ...), or a\n"
    "                  file that could not be uploaded or downloaded; a failed download\n"
    "                  leaves the code's own exit status (or 124) when that is not 0\n";

static const char session_help[] =
    "Usage: sbx session COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "A session keeps one microVM, and the interpreter state in it (variables, imports,\n"
    "functions, files, the shell's directory), across several execs. The daemon holds it,\n"
    "not this command: it stays until `sbx session close` or until it has been idle for\n"
    "its idle timeout. Execs on one session run one at a time.\n"
    "\n"
    "Commands:\n"
    "  new [-l LANG] [-m MB] [-t SECONDS] [-e KEY=VALUE]... [--idle-timeout SECONDS]\n"
    "        start a session and print its id alone on stdout: ID=$(sbx session new)\n"
    "        -t is the default time limit of each exec (1-300, daemon default 30);\n"
    "        --idle-timeout 10-3600 s (daemon default 300); --json prints the session\n"
    "  exec ID CODE|FILE|- [-c CODE] [-t SECONDS] [--json] [-q]\n"
    "        run code in the session; output, --json and exit status as for `sbx run`\n"
    "        with one source, and the JSON object also has exec_count and\n"
    "        interpreter_reset. If the interpreter had to be restarted (it died, or was\n"
    "        killed at the time limit) a note says so on stderr: state was lost.\n"
    "  ls [--json]\n"
    "        list the daemon's sessions\n"
    "  close ID\n"
    "        close the session and destroy its VM\n"
    "  upload ID LOCAL GUEST\n"
    "        copy a local file to GUEST, a path relative to the sandbox home\n"
    "  download ID GUEST [LOCAL]\n"
    "        copy GUEST out to LOCAL (default: GUEST's name in the current directory;\n"
    "        an existing directory keeps that name); saved only once it arrived whole\n"
    "  files ID [PATH] [--json]\n"
    "        list a directory of the sandbox (default: the sandbox home)\n"
    "\n"
    "Every command takes --socket PATH and -h/--help. Files are at most 50 MiB; guest\n"
    "paths are relative, at most 255 bytes, without `..`.\n"
    "\n"
    "Exit status: 0 on success (exec: the code's own exit status, 124 if it timed out);\n"
    "2 for bad usage or a refused request (VmConfigError); 125 for other errors, a\n"
    "session that is gone (SessionClosedError) among them.\n";

static const char status_help[] =
    "Usage: sbx status [--json] [--socket PATH]\n"
    "\n"
    "Show the daemon's version, accelerator, VMs, sessions and counters. Does not start a\n"
    "daemon.\n"
    "\n"
    "Options:\n"
    "      --json         print one JSON object\n"
    "      --socket PATH  the daemon's control socket\n"
    "  -h, --help         print this help and exit\n"
    "\n"
    "Exit status: 0 when a daemon answered, 3 when none is listening, 125 on other errors.\n";

static int error_exit(const sbx_error *e)
{
    return (e->kind == SBX_ERR_VM_CONFIG || e->kind == SBX_ERR_PACKAGE_NOT_ALLOWED) ? EXIT_USAGE
                                                                                    : EXIT_SANDBOX;
}

static void print_error(const sbx_error *e)
{
    fprintf(stderr, "sbx: %s: %s\n", sbx_error_kind_name(e->kind), e->message);
}

static void progress_cb(const char *msg, void *userdata)
{
    fprintf(stderr, "sbx: %s\n", msg);
}

static int connect_client(const args *a, bool show_progress, sbx_client **out, sbx_error *err)
{
    sbx_connect_opts o = {
        .socket_path = a->socket_path,
        .flags = SBX_CONNECT_AUTOSTART,
        .client_name = "sbx/" SBX_VERSION,
        .on_progress = show_progress ? progress_cb : NULL,
    };
    return sbx_connect_ex(&o, out, err);
}

/* ---- output ---- */

static void fmt_ms(char *out, size_t n, uint64_t ms)
{
    if (ms < 1000)
        snprintf(out, n, "%" PRIu64 " ms", ms);
    else
        snprintf(out, n, "%.1f s", (double)ms / 1000.0);
}

/* One line for a person at a terminal; scripts get it nowhere else (not on pipes, not in JSON). */
static void print_summary(const char *language, const sbx_result *r)
{
    char boot[32], exec[32], total[32];
    fmt_ms(boot, sizeof boot, r->timing.boot_ms);
    fmt_ms(exec, sizeof exec, r->timing.execute_ms);
    fmt_ms(total, sizeof total, r->timing.total_ms);
    const char *mode = r->warm_pool_hit ? "warm" : r->start_mode[0] ? r->start_mode : "cold";
    fprintf(stderr,
            "%s \xc2\xb7 %s \xc2\xb7 %s \xc2\xb7 boot %s \xc2\xb7 exec %s \xc2\xb7 total %s\n",
            language, r->accelerator[0] ? r->accelerator : "?", mode, boot, exec, total);
}

/* What sbx adds on stderr after the output: timeout, truncation, lost session state. */
static void print_notes(const args *a, const sbx_result *r)
{
    if (r->timed_out && (a->timeout_s || a->cmd != ARGS_CMD_SESSION))
        fprintf(stderr, "sbx: timed out after %u s\n",
                a->timeout_s ? a->timeout_s : SBX_TIMEOUT_DEFAULT);
    else if (r->timed_out)
        fprintf(stderr, "sbx: timed out (the session's time limit)\n");
    if (r->stdout_truncated)
        fprintf(stderr, "sbx: stdout truncated at 1 MiB (limit)\n");
    if (r->stderr_truncated)
        fprintf(stderr, "sbx: stderr truncated at 100 KiB (limit)\n");
    if (r->interpreter_reset && a->cmd == ARGS_CMD_SESSION && !a->json)
        fprintf(stderr, "sbx: the interpreter was restarted; session state was lost\n");
}

static int result_exit(const sbx_result *r)
{
    if (r->timed_out)
        return EXIT_TIMEOUT;
    if (r->exit_code < 0 || r->exit_code > 255) {
        fprintf(stderr, "sbx: the code ended with exit status %d, which no process can return\n",
                r->exit_code);
        return EXIT_SANDBOX;
    }
    return r->exit_code;
}

/* Whether the last byte the code wrote to each stream ended a line (0 stdout, 1 stderr). */
static bool line_ended[2] = {true, true};

static void stream_cb(sbx_stream stream, const char *data, size_t len, void *userdata)
{
    bool err = stream == SBX_STREAM_STDERR;
    FILE *f = err ? stderr : stdout;
    fwrite(data, 1, len, f);
    fflush(f);
    if (len)
        line_ended[err] = data[len - 1] == '\n';
}

/* Before sbx's own lines on stderr: end the code's unfinished line, so `sbx: ...` starts a line
 * of its own (on stdout only for a terminal, where both streams share the screen). */
static void end_lines(void)
{
    if (!line_ended[0] && isatty(STDOUT_FILENO))
        fputc('\n', stdout);
    fflush(stdout);
    if (!line_ended[1])
        fputc('\n', stderr);
    line_ended[0] = line_ended[1] = true;
}

/* ---- JSON ---- */

/* Output is bytes; JSON strings must be UTF-8. */
static json_t *json_bytes(const char *data, size_t len)
{
    size_t n;
    cleanup_free char *s = sbx_utf8_sanitize(data, len, &n);
    return s ? json_stringn_nocheck(s, n) : NULL;
}

static json_t *json_text(const char *s)
{
    return json_bytes(s, strlen(s));
}

/* The result fields; language and source when known (a session exec knows neither). */
static json_t *json_result_fields(const char *language, const char *source, const sbx_result *r)
{
    json_t *j = json_pack(
        "{s:o, s:o, s:i, s:b, s:b, s:b, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:o, s:b, s:o,"
        " s:[]}",
        "stdout", json_bytes(r->stdout_buf, r->stdout_len), "stderr",
        json_bytes(r->stderr_buf, r->stderr_len), "exit_code", r->exit_code, "timed_out",
        r->timed_out, "stdout_truncated", r->stdout_truncated, "stderr_truncated",
        r->stderr_truncated, "execution_time_ms", (json_int_t)r->execution_time_ms,
        "external_cpu_time_ms", (json_int_t)r->external_cpu_time_ms, "external_memory_peak_mb",
        (json_int_t)r->external_memory_peak_mb, "timing", "setup_ms",
        (json_int_t)r->timing.setup_ms, "boot_ms", (json_int_t)r->timing.boot_ms, "execute_ms",
        (json_int_t)r->timing.execute_ms, "total_ms", (json_int_t)r->timing.total_ms, "accelerator",
        json_text(r->accelerator), "warm_pool_hit", r->warm_pool_hit, "start_mode",
        json_text(r->start_mode), "exposed_ports");
    if (j && language)
        json_object_set_new(j, "language", json_string(language));
    if (j && source)
        json_object_set_new(j, "source", json_text(source));
    return j;
}

static json_t *json_result(const run_source *src, const sbx_result *r)
{
    return json_result_fields(src->language, src->arg, r);
}

static json_t *json_error(const run_source *src, const sbx_error *e)
{
    return json_pack("{s:{s:s, s:o, s:b}, s:s, s:o}", "error", "type", sbx_error_kind_name(e->kind),
                     "message", json_text(e->message), "transient", e->transient, "language",
                     src->language, "source", json_text(src->arg));
}

static int json_print(json_t *j)
{
    if (!j) {
        fprintf(stderr, "sbx: out of memory building JSON\n");
        return -1;
    }
    json_dumpf(j, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(j);
    return 0;
}

/* ---- one source ---- */

/* A summary for a session exec, which has no boot of its own. */
static void print_session_summary(const sbx_result *r)
{
    char exec[32], total[32];
    fmt_ms(exec, sizeof exec, r->timing.execute_ms);
    fmt_ms(total, sizeof total, r->timing.total_ms);
    fprintf(stderr, "exec #%" PRIu64 " \xc2\xb7 %s \xc2\xb7 exec %s \xc2\xb7 total %s\n",
            r->exec_count, r->accelerator[0] ? r->accelerator : "?", exec, total);
}

/* After the streamed output (or instead of it, with --json): the JSON object j (taken), sbx's
 * notes and, for a person, the summary (language NULL: a session exec's). Returns the exit
 * status the result calls for. */
static int report_result(const args *a, json_t *j, const sbx_result *r, const char *language)
{
    if (a->json && json_print(j) < 0)
        return EXIT_SANDBOX;
    bool notes = r->timed_out || r->stdout_truncated || r->stderr_truncated ||
                 (r->interpreter_reset && a->cmd == ARGS_CMD_SESSION && !a->json);
    bool summary = !a->quiet && isatty(STDERR_FILENO);
    if (!a->json && (notes || summary))
        end_lines();
    fflush(stdout);
    print_notes(a, r);
    if (summary && language)
        print_summary(language, r);
    else if (summary)
        print_session_summary(r);
    return result_exit(r);
}

/* An error that ends a command with one source: as JSON, or on stderr. */
static int report_error(const args *a, const run_source *src, const sbx_error *e)
{
    if (a->json) {
        json_print(json_error(src, e));
    } else {
        end_lines();
        print_error(e);
    }
    return error_exit(e);
}

static int run_one(const args *a, const sbx_env *env, run_source *src)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_result r = {0};
    sbx_run_opts o = {
        .language = src->language,
        .code = src->code,
        .code_len = src->code_len,
        .timeout_seconds = a->timeout_s,
        .memory_mb = a->memory_mb,
        .env = env,
        .n_env = a->n_env,
        .on_output = a->json ? NULL : stream_cb,
    };
    int rc = connect_client(a, !a->quiet, &c, &e);
    if (rc == 0)
        rc = sbx_run(c, &o, &r, &e);
    sbx_close(c);
    if (rc < 0)
        return report_error(a, src, &e);
    int code = report_result(a, a->json ? json_result(src, &r) : NULL, &r, src->language);
    sbx_result_free(&r);
    return code;
}

/* ---- one source with --upload/--download: through a session ---- */

/* Prefix context to an error's message. */
__attribute__((format(printf, 2, 3))) static void error_context(sbx_error *e, const char *fmt, ...)
{
    char prefix[256], old[sizeof e->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->message, sizeof old);
    snprintf(e->message, sizeof e->message, "%s: %s", prefix, old);
}

/* The checks of a local file to upload that can be made before a VM is booted for nothing. */
static int check_upload_source(const char *path, char *why, size_t n)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        snprintf(why, n, "`%s`: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, n, "`%s` is not a regular file", path);
        return -1;
    }
    if ((uint64_t)st.st_size > SBX_MAX_FILE) {
        snprintf(why, n, "`%s` is %lld bytes; the file limit is %u (50 MiB)", path,
                 (long long)st.st_size, SBX_MAX_FILE);
        return -1;
    }
    return 0;
}

/* Where a download is saved: LOCAL, or GUEST's name inside LOCAL when that is an existing
 * directory (as cp does). Its directory must exist: finding that out after the run would
 * waste the run. */
static int download_target(const args_transfer *t, char *out, size_t n, char *why, size_t wn)
{
    struct stat st;
    const char *slash = strrchr(t->guest, '/');
    const char *gbase = slash ? slash + 1 : t->guest;
    size_t ll = strlen(t->local);
    int r;
    if (stat(t->local, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (!*gbase || !strcmp(gbase, ".")) {
            snprintf(why, wn, "`%s` has no file name to save in directory `%s`", t->guest,
                     t->local);
            return -1;
        }
        r = snprintf(out, n, "%s%s%s", t->local, t->local[ll - 1] == '/' ? "" : "/", gbase);
    } else if (t->local[ll - 1] == '/') {
        snprintf(why, wn, "no directory `%s` to save `%s` in", t->local, t->guest);
        return -1;
    } else {
        r = snprintf(out, n, "%s", t->local);
    }
    if (r < 0 || (size_t)r >= n) {
        snprintf(why, wn, "`%.200s...`: path too long", t->local);
        return -1;
    }
    char dir[PATH_MAX];
    const char *ds = strrchr(out, '/');
    if (!ds)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", ds == out ? 1 : (int)(ds - out), out);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(why, wn, "no directory `%s` to save `%s` in", dir, t->guest);
        return -1;
    }
    return 0;
}

/* Closes the run's session when sbx is interrupted: a session outlives its client, so without
 * this ^C would leave the VM running until its idle timeout. The signals are blocked everywhere
 * and taken with sigwait on this thread, which may then use libsbx like any other code.
 * SIGUSR1, sent to this thread alone, tells it to stop (cancelling a thread in sigwait upsets
 * the sanitizers). */
typedef struct {
    pthread_mutex_t mu;
    const char *socket_path;
    char session_id[SBX_SESSION_ID_MAX]; /* "" while there is none to close */
    bool stop;
    sigset_t set;
} closer;

static void closer_set(closer *cl, const char *id)
{
    pthread_mutex_lock(&cl->mu);
    snprintf(cl->session_id, sizeof cl->session_id, "%s", id);
    pthread_mutex_unlock(&cl->mu);
}

static void *closer_main(void *arg)
{
    closer *cl = arg;
    int sig = 0;
    char id[SBX_SESSION_ID_MAX];
    for (;;) {
        if (sigwait(&cl->set, &sig) != 0)
            return NULL;
        pthread_mutex_lock(&cl->mu);
        bool stop = cl->stop;
        memcpy(id, cl->session_id, sizeof id);
        pthread_mutex_unlock(&cl->mu);
        if (stop)
            return NULL;
        if (sig != SIGUSR1)
            break;
    }
    if (id[0]) {
        sbx_client *c = NULL;
        sbx_error e;
        sbx_connect_opts o = {.socket_path = cl->socket_path, .client_name = "sbx/" SBX_VERSION};
        if (sbx_connect_ex(&o, &c, &e) == 0)
            sbx_session_close(c, id, NULL, &e);
        sbx_close(c);
    }
    _exit(128 + sig);
}

/* Close the run's session, on a fresh connection when the run's own was lost. */
static void close_run_session(const args *a, sbx_client *c, const char *id)
{
    sbx_client *fresh = NULL;
    sbx_error e = {0};
    sbx_connect_opts o = {.socket_path = a->socket_path, .client_name = "sbx/" SBX_VERSION};
    int rc;
    if (sbx_client_usable(c))
        rc = sbx_session_close(c, id, NULL, &e);
    else
        rc = sbx_connect_ex(&o, &fresh, &e) < 0 ? -1 : sbx_session_close(fresh, id, NULL, &e);
    sbx_close(fresh);
    /* Gone already (its VM died, say) is what closing wanted. */
    if (rc < 0 && e.kind != SBX_ERR_SESSION_CLOSED)
        fprintf(stderr,
                "sbx: could not close session %s (%s: %s); sbxd ends it once it has been idle "
                "for its timeout\n",
                id, sbx_error_kind_name(e.kind), e.message);
}

static int session_run_steps(const args *a, const sbx_env *env, run_source *src,
                             char (*targets)[PATH_MAX], closer *cl)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_session_info info;
    /* Idle only between our own requests, so a short idle timeout costs nothing and bounds how
     * long the VM outlives an sbx that was killed outright. */
    uint32_t idle = (a->timeout_s ? a->timeout_s : SBX_TIMEOUT_DEFAULT) + 60;
    sbx_session_opts so = {
        .language = src->language,
        .memory_mb = a->memory_mb,
        .timeout_seconds = a->timeout_s,
        .env = env,
        .n_env = a->n_env,
        .idle_timeout_seconds = idle > SBX_IDLE_TIMEOUT_MAX ? SBX_IDLE_TIMEOUT_MAX : idle,
    };
    if (connect_client(a, !a->quiet, &c, &e) < 0 || sbx_session_open(c, &so, &info, &e) < 0) {
        sbx_close(c);
        return report_error(a, src, &e);
    }
    closer_set(cl, info.session_id);

    int code = -1;
    for (size_t i = 0; i < a->n_uploads && code < 0; i++) {
        const args_transfer *t = &a->uploads[i];
        if (sbx_file_write_path(c, info.session_id, t->guest, t->local, &e) < 0) {
            error_context(&e, "upload `%.100s` to `%.100s`", t->local, t->guest);
            code = report_error(a, src, &e);
        }
    }
    sbx_result r = {0};
    if (code < 0 && sbx_session_exec(c, info.session_id, src->code, src->code_len, a->timeout_s,
                                     a->json ? NULL : stream_cb, NULL, &r, &e) < 0)
        code = report_error(a, src, &e);
    /* Downloads come after a failed exec too: what the code left may explain the failure. */
    bool download_failed = false;
    for (size_t i = 0; code < 0 && i < a->n_downloads && sbx_client_usable(c); i++) {
        const args_transfer *t = &a->downloads[i];
        if (sbx_file_read_path(c, info.session_id, t->guest, targets[i], &e) < 0) {
            end_lines();
            fprintf(stderr, "sbx: download `%s`: %s: %s\n", t->guest, sbx_error_kind_name(e.kind),
                    e.message);
            download_failed = true;
        }
    }
    close_run_session(a, c, info.session_id);
    closer_set(cl, "");
    sbx_close(c);
    if (code >= 0)
        return code;
    /* The run's VM was booted for the session, not for the exec: report it as a run's. */
    if (!r.timing.boot_ms)
        r.timing.boot_ms = info.boot_ms;
    if (!r.accelerator[0])
        snprintf(r.accelerator, sizeof r.accelerator, "%s", info.accelerator);
    code = report_result(a, a->json ? json_result(src, &r) : NULL, &r, src->language);
    sbx_result_free(&r);
    return download_failed && code == 0 ? EXIT_SANDBOX : code;
}

static int run_session(const args *a, const sbx_env *env, run_source *src)
{
    char why[PATH_MAX + 256];
    for (size_t i = 0; i < a->n_uploads; i++)
        if (check_upload_source(a->uploads[i].local, why, sizeof why) < 0) {
            fprintf(stderr, "sbx: --upload: %s\n", why);
            return EXIT_USAGE;
        }
    cleanup_free char(*targets)[PATH_MAX] = calloc(a->n_downloads ? a->n_downloads : 1, PATH_MAX);
    if (!targets) {
        fprintf(stderr, "sbx: out of memory\n");
        return EXIT_SANDBOX;
    }
    for (size_t i = 0; i < a->n_downloads; i++)
        if (download_target(&a->downloads[i], targets[i], PATH_MAX, why, sizeof why) < 0) {
            fprintf(stderr, "sbx: --download: %s\n", why);
            return EXIT_USAGE;
        }

    closer cl = {.socket_path = a->socket_path};
    pthread_mutex_init(&cl.mu, NULL);
    sigemptyset(&cl.set);
    sigaddset(&cl.set, SIGINT);
    sigaddset(&cl.set, SIGTERM);
    sigaddset(&cl.set, SIGHUP);
    sigaddset(&cl.set, SIGUSR1);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &cl.set, &old);
    pthread_t th;
    bool watching = pthread_create(&th, NULL, closer_main, &cl) == 0;
    int code = session_run_steps(a, env, src, targets, &cl);
    if (watching) {
        pthread_mutex_lock(&cl.mu);
        cl.stop = true;
        pthread_mutex_unlock(&cl.mu);
        pthread_kill(th, SIGUSR1);
        pthread_join(th, NULL);
    }
    /* A signal that came in the meantime is delivered now, as it would have been. */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_destroy(&cl.mu);
    return code;
}

/* ---- several sources ---- */

typedef struct {
    run_source src;
    sbx_result res;
    sbx_error err;
    bool failed; /* err holds why; res is empty */
    bool done;
} job;

typedef struct {
    const args *a;
    const sbx_env *env;
    job *jobs;
    size_t n, next;
    sbx_client *spare; /* the connection made up front, for the first worker */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool;

/* One worker per concurrent run, each with its own connection (kept across its runs). */
static void *pool_worker(void *arg)
{
    pool *p = arg;
    sbx_client *c = NULL;
    pthread_mutex_lock(&p->mu);
    c = steal_ptr(&p->spare);
    pthread_mutex_unlock(&p->mu);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next < p->n ? p->next++ : p->n;
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n)
            break;
        job *j = &p->jobs[i];
        sbx_run_opts o = {
            .language = j->src.language,
            .code = j->src.code,
            .code_len = j->src.code_len,
            .timeout_seconds = p->a->timeout_s,
            .memory_mb = p->a->memory_mb,
            .env = p->env,
            .n_env = p->a->n_env,
        };
        bool ok = (c || connect_client(p->a, false, &c, &j->err) == 0) &&
                  sbx_run(c, &o, &j->res, &j->err) == 0;
        if (c && !sbx_client_usable(c)) {
            sbx_close(c);
            c = NULL;
        }
        pthread_mutex_lock(&p->mu);
        j->failed = !ok;
        j->done = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    sbx_close(c);
    return NULL;
}

static void put_block(FILE *f, const char *data, size_t len)
{
    fwrite(data, 1, len, f);
    if (len && data[len - 1] != '\n')
        fputc('\n', f);
}

static void print_job(const args *a, size_t i, size_t n, const job *j)
{
    char label[64], state[64];
    args_source_label(&j->src, label, sizeof label);
    if (j->failed)
        snprintf(state, sizeof state, "%s", sbx_error_kind_name(j->err.kind));
    else if (j->res.timed_out)
        snprintf(state, sizeof state, "timed out");
    else
        snprintf(state, sizeof state, "exit %d", j->res.exit_code);
    printf("\xe2\x94\x80\xe2\x94\x80 [%zu/%zu] %s (%s) %s \xe2\x94\x80\xe2\x94\x80\n", i + 1, n,
           label, j->src.language, state);
    if (j->failed) {
        fflush(stdout);
        print_error(&j->err);
        return;
    }
    put_block(stdout, j->res.stdout_buf, j->res.stdout_len);
    fflush(stdout);
    put_block(stderr, j->res.stderr_buf, j->res.stderr_len);
    print_notes(a, &j->res);
}

static int run_many(const args *a, const sbx_env *env, job *jobs, size_t n)
{
    uint64_t t0 = now_ms();
    pool p = {.a = a, .env = env, .jobs = jobs, .n = n};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    /* Connect (and autostart) once up front: one progress message, one daemon, and a daemon
     * that cannot be reached is one error rather than n. */
    sbx_error e = {0};
    size_t started = 0;
    pthread_t threads[ARGS_CONCURRENCY_MAX];
    if (connect_client(a, !a->quiet, &p.spare, &e) < 0) {
        for (size_t i = 0; i < n; i++) {
            jobs[i].err = e;
            jobs[i].failed = jobs[i].done = true;
        }
    } else {
        size_t want = a->concurrency < n ? a->concurrency : n;
        for (; started < want; started++)
            if (pthread_create(&threads[started], NULL, pool_worker, &p) != 0)
                break;
        if (started == 0)
            pool_worker(&p);
    }

    int code = 0;
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&p.mu);
        while (!jobs[i].done)
            pthread_cond_wait(&p.cv, &p.mu);
        pthread_mutex_unlock(&p.mu);
        if (!a->json)
            print_job(a, i, n, &jobs[i]);
        if (!jobs[i].failed && !jobs[i].res.timed_out && jobs[i].res.exit_code == 0)
            ok++;
        else
            code = 1;
    }
    for (size_t t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    sbx_close(p.spare);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);

    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(arr, jobs[i].failed ? json_error(&jobs[i].src, &jobs[i].err)
                                                      : json_result(&jobs[i].src, &jobs[i].res));
        if (json_print(arr) < 0)
            return EXIT_SANDBOX;
    }
    if (!a->quiet && isatty(STDERR_FILENO)) {
        char wall[32];
        fmt_ms(wall, sizeof wall, now_ms() - t0);
        fprintf(stderr, "%zu runs \xc2\xb7 %zu exited 0 \xc2\xb7 %zu did not \xc2\xb7 %s\n", n, ok,
                n - ok, wall);
    }
    return code;
}

/* ---- commands ---- */

static int cmd_run(const args *a)
{
    char why[512];
    cleanup_free job *jobs = calloc(a->n_sources, sizeof *jobs);
    cleanup_free sbx_env *env = calloc(a->n_env ? a->n_env : 1, sizeof *env);
    if (!jobs || !env) {
        fprintf(stderr, "sbx: out of memory\n");
        return EXIT_SANDBOX;
    }
    for (size_t i = 0; i < a->n_env; i++) {
        env[i].key = a->env[i].key;
        env[i].value = a->env[i].value;
    }
    int code = -1;
    for (size_t i = 0; i < a->n_sources && code < 0; i++) {
        if (args_source_resolve(&a->sources[i], a->language, &jobs[i].src, why, sizeof why) < 0) {
            fprintf(stderr, "sbx: %s (see sbx run --help)\n", why);
            code = EXIT_USAGE;
        } else if (args_source_load(&jobs[i].src, stdin, why, sizeof why) < 0) {
            fprintf(stderr, "sbx: %s\n", why);
            code = EXIT_USAGE;
        }
    }
    if (code < 0 && (a->n_uploads || a->n_downloads))
        code = run_session(a, env, &jobs[0].src);
    else if (code < 0)
        code = a->n_sources == 1 ? run_one(a, env, &jobs[0].src)
                                 : run_many(a, env, jobs, a->n_sources);
    for (size_t i = 0; i < a->n_sources; i++) {
        args_source_free(&jobs[i].src);
        sbx_result_free(&jobs[i].res);
    }
    return code;
}

static void fmt_duration(char *out, size_t n, uint64_t ms)
{
    uint64_t s = ms / 1000;
    if (s < 60)
        snprintf(out, n, "%" PRIu64 " s", s);
    else if (s < 3600)
        snprintf(out, n, "%" PRIu64 " min %" PRIu64 " s", s / 60, s % 60);
    else
        snprintf(out, n, "%" PRIu64 " h %" PRIu64 " min", s / 3600, s / 60 % 60);
}

/* ---- sessions ---- */

/* Sessions live in a running daemon: starting one to look for a session would find none. */
static int connect_existing(const args *a, sbx_client **c, sbx_error *e)
{
    sbx_connect_opts o = {.socket_path = a->socket_path, .client_name = "sbx/" SBX_VERSION};
    return sbx_connect_ex(&o, c, e);
}

static int session_error(const args *a, const sbx_error *e)
{
    print_error(e);
    if (e->kind == SBX_ERR_CONNECT && a->session_id)
        fprintf(stderr, "sbx: no daemon is running, so there is no session %s\n", a->session_id);
    return error_exit(e);
}

static json_t *json_session(const sbx_session_info *s)
{
    return json_pack("{s:o, s:o, s:i, s:i, s:I, s:I, s:I, s:b, s:o, s:I}", "session_id",
                     json_text(s->session_id), "language", json_text(s->language), "memory_mb",
                     (int)s->memory_mb, "idle_timeout_seconds", (int)s->idle_timeout_seconds,
                     "exec_count", (json_int_t)s->exec_count, "created_unix_ms",
                     (json_int_t)s->created_unix_ms, "last_used_unix_ms",
                     (json_int_t)s->last_used_unix_ms, "busy", s->busy, "accelerator",
                     json_text(s->accelerator), "boot_ms", (json_int_t)s->boot_ms);
}

static int cmd_session_new(const args *a)
{
    cleanup_free sbx_env *env = calloc(a->n_env ? a->n_env : 1, sizeof *env);
    if (!env) {
        fprintf(stderr, "sbx: out of memory\n");
        return EXIT_SANDBOX;
    }
    for (size_t i = 0; i < a->n_env; i++) {
        env[i].key = a->env[i].key;
        env[i].value = a->env[i].value;
    }
    sbx_session_opts o = {
        .language = a->language,
        .memory_mb = a->memory_mb,
        .timeout_seconds = a->timeout_s,
        .env = env,
        .n_env = a->n_env,
        .idle_timeout_seconds = a->idle_timeout_s,
    };
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_session_info s;
    int rc = connect_client(a, !a->quiet, &c, &e);
    if (rc == 0)
        rc = sbx_session_open(c, &o, &s, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    if (a->json)
        return json_print(json_session(&s)) < 0 ? EXIT_SANDBOX : 0;
    printf("%s\n", s.session_id);
    fflush(stdout);
    if (!a->quiet && isatty(STDERR_FILENO)) {
        char boot[32];
        fmt_ms(boot, sizeof boot, s.boot_ms);
        fprintf(stderr, "%s session \xc2\xb7 %s \xc2\xb7 boot %s \xc2\xb7 closes after %u s idle\n",
                s.language, s.accelerator[0] ? s.accelerator : "?", boot, s.idle_timeout_seconds);
    }
    return 0;
}

static int cmd_session_exec(const args *a)
{
    char why[512];
    run_source src;
    if (args_source_resolve(&a->sources[0], NULL, &src, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s (see sbx session --help)\n", why);
        return EXIT_USAGE;
    }
    if (args_source_load(&src, stdin, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s\n", why);
        args_source_free(&src);
        return EXIT_USAGE;
    }
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_result r = {0};
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = sbx_session_exec(c, a->session_id, src.code, src.code_len, a->timeout_s,
                              a->json ? NULL : stream_cb, NULL, &r, &e);
    sbx_close(c);
    int code;
    if (rc < 0 && a->json) {
        json_print(json_pack("{s:{s:s, s:o, s:b}, s:o}", "error", "type",
                             sbx_error_kind_name(e.kind), "message", json_text(e.message),
                             "transient", e.transient, "session_id", json_text(a->session_id)));
        code = error_exit(&e);
    } else if (rc < 0) {
        end_lines();
        code = session_error(a, &e);
    } else {
        json_t *j = NULL;
        if (a->json) {
            j = json_result_fields(NULL, src.arg, &r);
            if (j) {
                json_object_set_new(j, "session_id", json_text(a->session_id));
                json_object_set_new(j, "exec_count", json_integer((json_int_t)r.exec_count));
                json_object_set_new(j, "interpreter_reset", json_boolean(r.interpreter_reset));
            }
        }
        code = report_result(a, j, &r, NULL);
    }
    sbx_result_free(&r);
    args_source_free(&src);
    return code;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int cmd_session_ls(const args *a)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_session_info *list = NULL;
    size_t n = 0;
    int rc = connect_existing(a, &c, &e);
    bool no_daemon = rc < 0 && e.kind == SBX_ERR_CONNECT;
    if (rc == 0)
        rc = sbx_session_list(c, &list, &n, &e);
    sbx_close(c);
    if (rc < 0 && !no_daemon)
        return session_error(a, &e);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(arr, json_session(&list[i]));
        sbx_session_list_free(list);
        return json_print(arr) < 0 ? EXIT_SANDBOX : 0;
    }
    if (n == 0 && isatty(STDERR_FILENO))
        fprintf(stderr, "no sessions%s\n", no_daemon ? " (sbxd is not running)" : "");
    if (n)
        printf("%-36s  %-10s  %6s  %5s  %10s  %-16s  %s\n", "ID", "LANGUAGE", "MEMORY", "EXECS",
               "AGE", "IDLE", "STATE");
    uint64_t now = wall_ms();
    for (size_t i = 0; i < n; i++) {
        const sbx_session_info *s = &list[i];
        char age[48], idle[48], limit[48];
        fmt_duration(age, sizeof age, now > s->created_unix_ms ? now - s->created_unix_ms : 0);
        fmt_duration(idle, sizeof idle,
                     now > s->last_used_unix_ms ? now - s->last_used_unix_ms : 0);
        snprintf(limit, sizeof limit, "%s of %u s", idle, s->idle_timeout_seconds);
        printf("%-36s  %-10s  %4uMB  %5" PRIu64 "  %10s  %-16s  %s\n", s->session_id, s->language,
               s->memory_mb, s->exec_count, age, s->busy ? "-" : limit, s->busy ? "busy" : "idle");
    }
    sbx_session_list_free(list);
    return 0;
}

static int cmd_session_close(const args *a)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    uint64_t execs = 0;
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = sbx_session_close(c, a->session_id, &execs, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    if (!a->quiet && isatty(STDERR_FILENO))
        fprintf(stderr, "sbx: closed session %s after %" PRIu64 " exec%s\n", a->session_id, execs,
                execs == 1 ? "" : "s");
    return 0;
}

static void fmt_size(char *out, size_t n, uint64_t b)
{
    if (b < 1024)
        snprintf(out, n, "%" PRIu64 " B", b);
    else if (b < (1u << 20))
        snprintf(out, n, "%.1f KiB", (double)b / 1024.0);
    else
        snprintf(out, n, "%.1f MiB", (double)b / (1024.0 * 1024.0));
}

static int cmd_session_upload(const args *a)
{
    char why[PATH_MAX + 256];
    const args_transfer *t = &a->uploads[0];
    if (check_upload_source(t->local, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s\n", why);
        return EXIT_USAGE;
    }
    sbx_client *c = NULL;
    sbx_error e = {0};
    uint64_t t0 = now_ms();
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = sbx_file_write_path(c, a->session_id, t->guest, t->local, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    struct stat st;
    if (!a->quiet && isatty(STDERR_FILENO) && stat(t->local, &st) == 0) {
        char size[32], took[32];
        fmt_size(size, sizeof size, (uint64_t)st.st_size);
        fmt_ms(took, sizeof took, now_ms() - t0);
        fprintf(stderr, "sbx: uploaded %s to %s (%s, %s)\n", t->local, t->guest, size, took);
    }
    return 0;
}

static int cmd_session_download(const args *a)
{
    char why[PATH_MAX + 256], target[PATH_MAX];
    const args_transfer *t = &a->downloads[0];
    if (download_target(t, target, sizeof target, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s\n", why);
        return EXIT_USAGE;
    }
    sbx_client *c = NULL;
    sbx_error e = {0};
    uint64_t t0 = now_ms();
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = sbx_file_read_path(c, a->session_id, t->guest, target, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    struct stat st;
    if (!a->quiet && isatty(STDERR_FILENO) && stat(target, &st) == 0) {
        char size[32], took[32];
        fmt_size(size, sizeof size, (uint64_t)st.st_size);
        fmt_ms(took, sizeof took, now_ms() - t0);
        fprintf(stderr, "sbx: downloaded %s to %s (%s, %s)\n", t->guest, target, size, took);
    }
    return 0;
}

static int entry_cmp(const void *x, const void *y)
{
    return strcmp(((const sbx_file_entry *)x)->name, ((const sbx_file_entry *)y)->name);
}

static int cmd_session_files(const args *a)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_file_entry *list = NULL;
    size_t n = 0;
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = sbx_file_list(c, a->session_id, a->guest_dir, &list, &n, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    if (n)
        qsort(list, n, sizeof *list, entry_cmp);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(arr, json_pack("{s:o, s:b, s:I}", "name", json_text(list[i].name),
                                                 "is_dir", list[i].is_dir, "size",
                                                 (json_int_t)list[i].size));
        sbx_file_list_free(list);
        return json_print(arr) < 0 ? EXIT_SANDBOX : 0;
    }
    for (size_t i = 0; i < n; i++) {
        /* Names come from the guest: no control characters on the terminal. */
        char name[1024];
        size_t k = 0;
        for (const char *p = list[i].name; *p && k + 1 < sizeof name; p++)
            name[k++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? '?' : *p;
        name[k] = '\0';
        if (list[i].is_dir)
            printf("%12s  %s/\n", "-", name);
        else
            printf("%12" PRIu64 "  %s\n", list[i].size, name);
    }
    sbx_file_list_free(list);
    return 0;
}

static int cmd_session(const args *a)
{
    switch (a->session_cmd) {
    case ARGS_SESSION_NEW:
        return cmd_session_new(a);
    case ARGS_SESSION_EXEC:
        return cmd_session_exec(a);
    case ARGS_SESSION_LS:
        return cmd_session_ls(a);
    case ARGS_SESSION_CLOSE:
        return cmd_session_close(a);
    case ARGS_SESSION_UPLOAD:
        return cmd_session_upload(a);
    case ARGS_SESSION_DOWNLOAD:
        return cmd_session_download(a);
    case ARGS_SESSION_FILES:
        return cmd_session_files(a);
    case ARGS_SESSION_NONE:
        break;
    }
    fputs(session_help, stdout);
    return 0;
}

static int cmd_status(const args *a)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (a->socket_path)
        snprintf(path, sizeof path, "%s", a->socket_path);
    else if (paths_default_socket(path, sizeof path) < 0)
        snprintf(path, sizeof path, "(default path too long)");
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_status_info s;
    sbx_connect_opts o = {.socket_path = a->socket_path, .client_name = "sbx/" SBX_VERSION};
    if (sbx_connect_ex(&o, &c, &e) < 0 && e.kind == SBX_ERR_CONNECT) {
        if (a->json)
            json_print(json_pack("{s:b, s:o, s:o}", "running", 0, "socket", json_text(path),
                                 "reason", json_text(e.message)));
        else
            printf("sbxd is not running (%s)\n", e.message);
        return EXIT_NOT_RUNNING;
    }
    int rc = c ? sbx_status(c, &s, &e) : -1;
    sbx_close(c);
    if (rc < 0) {
        print_error(&e);
        return EXIT_SANDBOX;
    }
    const __typeof__(s.limits) *l = &s.limits;
    if (a->json) {
        json_t *limits = json_pack(
            "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}", "connections",
            (int)l->connections, "max_connections", (int)l->max_connections,
            "hello_timeout_seconds", (int)l->hello_timeout_seconds, "frame_timeout_seconds",
            (int)l->frame_timeout_seconds, "max_queued", (int)l->max_queued,
            "queue_timeout_seconds", (int)l->queue_timeout_seconds, "max_session_queue",
            (int)l->max_session_queue, "max_client_buffer_mb", (int)l->max_client_buffer_mb,
            "max_session_upload_mb", (int)l->max_session_upload_mb, "run_grace_seconds",
            (int)l->run_grace_seconds, "connections_refused", (json_int_t)l->connections_refused,
            "clients_dropped", (json_int_t)l->clients_dropped);
        json_t *snaps = json_array();
        for (uint32_t i = 0; i < s.n_snapshots; i++)
            json_array_append_new(snaps, json_pack("{s:o, s:o, s:i, s:o, s:I, s:i}", "name",
                                                   json_text(s.snapshots[i].name), "language",
                                                   json_text(s.snapshots[i].language), "memory_mb",
                                                   (int)s.snapshots[i].memory_mb, "state",
                                                   json_text(s.snapshots[i].state), "disk_mb",
                                                   (json_int_t)s.snapshots[i].disk_mb, "retry_in_s",
                                                   (int)s.snapshots[i].retry_in_s));
        return json_print(json_pack(
                   "{s:b, s:o, s:o, s:i, s:o, s:o, s:i, s:i, s:i, s:I, s:I, s:o, s:i, s:o, s:i, "
                   "s:i, s:i, s:I, s:b, s:o, s:o, s:I, s:o}",
                   "running", 1, "socket", json_text(path), "version", json_text(s.version), "pid",
                   (int)s.pid, "accelerator", json_text(s.accelerator), "accel_reason",
                   json_text(s.accel_reason), "running_vms", (int)s.running_vms, "queued",
                   (int)s.queued, "max_concurrent_vms", (int)s.max_concurrent_vms, "runs_total",
                   (json_int_t)s.runs_total, "uptime_ms", (json_int_t)s.uptime_ms, "images_dir",
                   json_text(s.images_dir), "sessions", (int)s.sessions, "cgroup_mode",
                   json_text(s.cgroup_mode), "warm_pool_size", (int)s.warm_pool_size, "pool_ready",
                   (int)s.pool_ready, "pool_booting", (int)s.pool_booting, "pool_memory_mb",
                   (json_int_t)s.pool_memory_mb, "snapshots_enabled", (int)s.snapshots_enabled,
                   "snapshot_dir", json_text(s.snapshot_dir), "snapshots", snaps, "uid",
                   (json_int_t)s.daemon_uid, "limits", limits)) < 0
                   ? EXIT_SANDBOX
                   : 0;
    }
    char up[48];
    fmt_duration(up, sizeof up, s.uptime_ms);
    printf("sbxd         %s (pid %u, uid %u), up %s\n", s.version, s.pid, s.daemon_uid, up);
    printf("socket       %s\n", path);
    printf("accelerator  %s%s%s%s\n", s.accelerator[0] ? s.accelerator : "not probed yet",
           s.accel_reason[0] ? " (" : "", s.accel_reason, s.accel_reason[0] ? ")" : "");
    printf("vms          %u running of %u, %u queued\n", s.running_vms, s.max_concurrent_vms,
           s.queued);
    printf("sessions     %u open\n", s.sessions);
    if (s.warm_pool_size)
        printf("warm pool    %u per language: %u ready, %u starting, %" PRIu64 " MB of guest RAM\n",
               s.warm_pool_size, s.pool_ready, s.pool_booting, s.pool_memory_mb);
    if (s.snapshots_enabled)
        printf("snapshots    on, in %s\n", s.snapshot_dir);
    else
        printf("snapshots    off\n");
    for (uint32_t i = 0; i < s.n_snapshots; i++) {
        printf("  %-40s %s", s.snapshots[i].name, s.snapshots[i].state);
        if (!strcmp(s.snapshots[i].state, "ready"))
            printf(", %" PRIu64 " MiB of RAM file on disk", s.snapshots[i].disk_mb);
        else if (!strcmp(s.snapshots[i].state, "failed"))
            printf(", next try in %u s", s.snapshots[i].retry_in_s);
        putchar('\n');
    }
    printf("runs         %" PRIu64 "\n", s.runs_total);
    printf("connections  %u open of %u; Hello within %u s, a frame within %u s; %" PRIu64
           " refused, %" PRIu64 " dropped for not reading (over %u MiB)\n",
           l->connections, l->max_connections, l->hello_timeout_seconds, l->frame_timeout_seconds,
           l->connections_refused, l->clients_dropped, l->max_client_buffer_mb);
    printf("queues       %u runs may wait, %u s each; %u requests per session, %u MiB of "
           "uploads; sbxd's deadline: timeout + %u s\n",
           l->max_queued, l->queue_timeout_seconds, l->max_session_queue, l->max_session_upload_mb,
           l->run_grace_seconds);
    if (s.cgroup_mode[0])
        printf("cgroups      %s\n", s.cgroup_mode);
    printf("images       %s\n", s.images_dir);
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    char why[512];
    if (args_parse(argc, argv, &a, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s (see %s --help)\n", why, args_command_name(&a));
        args_free(&a);
        return EXIT_USAGE;
    }
    int code = 0;
    switch (a.cmd) {
    case ARGS_CMD_HELP:
    case ARGS_CMD_NONE:
        fputs(main_help, stdout);
        break;
    case ARGS_CMD_VERSION:
        printf("sbx %s (control protocol %d)\n", SBX_VERSION, SBX_PROTOCOL_VERSION);
        break;
    case ARGS_CMD_RUN:
        if (a.help)
            fputs(run_help, stdout);
        else
            code = cmd_run(&a);
        break;
    case ARGS_CMD_STATUS:
        if (a.help)
            fputs(status_help, stdout);
        else
            code = cmd_status(&a);
        break;
    case ARGS_CMD_SESSION:
        if (a.help)
            fputs(session_help, stdout);
        else
            code = cmd_session(&a);
        break;
    }
    args_free(&a);
    return code;
}
