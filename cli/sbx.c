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
    "  status     show what the daemon is doing (sbx status --help)\n"
    "\n"
    "Options:\n"
    "      --socket PATH  the daemon's control socket; default $EXEC_SANDBOX_SOCKET, else\n"
    "                     $XDG_RUNTIME_DIR/exec-sandbox/sbxd.sock, else\n"
    "                     /tmp/exec-sandbox-UID/sbxd.sock\n"
    "  -V, --version      print the version and exit\n"
    "  -h, --help         print this help and exit\n"
    "\n"
    "If no daemon listens on the socket, `sbx run` starts a private one for this user\n"
    "(sbxd from $EXEC_SANDBOX_SBXD, beside sbx, or in $PATH); it exits after 5 idle minutes.\n";

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
    "      --json             print results as JSON instead of output (no live output)\n"
    "  -q, --quiet            no progress or summary lines\n"
    "      --socket PATH      the daemon's control socket\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "Not available yet in this version (refused, exit status 2):\n"
    "  -p/--package, --network, --allow-domain, --expose, --no-validation, --upload,\n"
    "  --download\n"
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
    "  125             any other sandbox error (no daemon, VM failed to start, ...)\n";

static const char status_help[] =
    "Usage: sbx status [--json] [--socket PATH]\n"
    "\n"
    "Show the daemon's version, accelerator, VMs and counters. Does not start a daemon.\n"
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

/* What sbx adds on stderr after the output: timeout and truncation. */
static void print_notes(const args *a, const sbx_result *r)
{
    if (r->timed_out)
        fprintf(stderr, "sbx: timed out after %u s\n",
                a->timeout_s ? a->timeout_s : SBX_TIMEOUT_DEFAULT);
    if (r->stdout_truncated)
        fprintf(stderr, "sbx: stdout truncated at 1 MiB (limit)\n");
    if (r->stderr_truncated)
        fprintf(stderr, "sbx: stderr truncated at 100 KiB (limit)\n");
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

static json_t *json_result(const run_source *src, const sbx_result *r)
{
    return json_pack("{s:o, s:o, s:i, s:b, s:b, s:b, s:I, s:I, s:I,"
                     " s:{s:I, s:I, s:I, s:I}, s:o, s:b, s:o, s:[], s:s, s:o}",
                     "stdout", json_bytes(r->stdout_buf, r->stdout_len), "stderr",
                     json_bytes(r->stderr_buf, r->stderr_len), "exit_code", r->exit_code,
                     "timed_out", r->timed_out, "stdout_truncated", r->stdout_truncated,
                     "stderr_truncated", r->stderr_truncated, "execution_time_ms",
                     (json_int_t)r->execution_time_ms, "external_cpu_time_ms",
                     (json_int_t)r->external_cpu_time_ms, "external_memory_peak_mb",
                     (json_int_t)r->external_memory_peak_mb, "timing", "setup_ms",
                     (json_int_t)r->timing.setup_ms, "boot_ms", (json_int_t)r->timing.boot_ms,
                     "execute_ms", (json_int_t)r->timing.execute_ms, "total_ms",
                     (json_int_t)r->timing.total_ms, "accelerator", json_text(r->accelerator),
                     "warm_pool_hit", r->warm_pool_hit, "start_mode", json_text(r->start_mode),
                     "exposed_ports", "language", src->language, "source", json_text(src->arg));
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
    if (rc < 0) {
        if (a->json) {
            json_print(json_error(src, &e));
        } else {
            end_lines();
            print_error(&e);
        }
        return error_exit(&e);
    }
    if (a->json && json_print(json_result(src, &r)) < 0) {
        sbx_result_free(&r);
        return EXIT_SANDBOX;
    }
    bool notes = r.timed_out || r.stdout_truncated || r.stderr_truncated;
    bool summary = !a->quiet && isatty(STDERR_FILENO);
    if (!a->json && (notes || summary))
        end_lines();
    fflush(stdout);
    print_notes(a, &r);
    if (summary)
        print_summary(src->language, &r);
    int code = result_exit(&r);
    sbx_result_free(&r);
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
    if (code < 0)
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
    if (a->json) {
        return json_print(json_pack(
                   "{s:b, s:o, s:o, s:i, s:o, s:o, s:i, s:i, s:i, s:I, s:I, s:o}", "running", 1,
                   "socket", json_text(path), "version", json_text(s.version), "pid", (int)s.pid,
                   "accelerator", json_text(s.accelerator), "accel_reason",
                   json_text(s.accel_reason), "running_vms", (int)s.running_vms, "queued",
                   (int)s.queued, "max_concurrent_vms", (int)s.max_concurrent_vms, "runs_total",
                   (json_int_t)s.runs_total, "uptime_ms", (json_int_t)s.uptime_ms, "images_dir",
                   json_text(s.images_dir))) < 0
                   ? EXIT_SANDBOX
                   : 0;
    }
    char up[48];
    fmt_duration(up, sizeof up, s.uptime_ms);
    printf("sbxd         %s (pid %u), up %s\n", s.version, s.pid, up);
    printf("socket       %s\n", path);
    printf("accelerator  %s%s%s%s\n", s.accelerator[0] ? s.accelerator : "not probed yet",
           s.accel_reason[0] ? " (" : "", s.accel_reason, s.accel_reason[0] ? ")" : "");
    printf("vms          %u running of %u, %u queued\n", s.running_vms, s.max_concurrent_vms,
           s.queued);
    printf("runs         %" PRIu64 "\n", s.runs_total);
    printf("images       %s\n", s.images_dir);
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    char why[512];
    if (args_parse(argc, argv, &a, why, sizeof why) < 0) {
        fprintf(stderr, "sbx: %s (see %s --help)\n", why,
                a.cmd == ARGS_CMD_RUN      ? "sbx run"
                : a.cmd == ARGS_CMD_STATUS ? "sbx status"
                                           : "sbx");
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
    }
    args_free(&a);
    return code;
}
