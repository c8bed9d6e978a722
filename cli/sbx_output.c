/* sbx's output: what it prints for a result or an error, as text for a person or as JSON, and
 * the exit status each calls for. It never talks to the daemon. */
#include "arch.h"
#include "sbx.h"

#include <inttypes.h>

int error_exit(const sbx_error *e)
{
    return (e->kind == SBX_ERR_VM_CONFIG || e->kind == SBX_ERR_PACKAGE_NOT_ALLOWED) ? EXIT_USAGE
                                                                                    : EXIT_SANDBOX;
}

/* libsbx hands out its public sbx_error; context goes before its message the way sbx_wrap puts
 * it before any other error's. */
void error_wrap(sbx_error *e, const char *fmt, ...)
{
    _Static_assert(sizeof e->message == sizeof((sbx_err *)0)->msg, "message sizes differ");
    char ctx[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    sbx_err w = {.code = e->kind};
    memcpy(w.msg, e->message, sizeof w.msg);
    sbx_wrap(&w, "%s", ctx);
    memcpy(e->message, w.msg, sizeof e->message);
}

void print_error(const sbx_error *e)
{
    fprintf(stderr, "sbx: %s: %s\n", sbx_error_kind_name(e->kind), e->message);
}

/* ---- output ---- */

void fmt_ms(char *out, size_t n, uint64_t ms)
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
    /* A guest of another architecture than this host's says which. */
    bool foreign = r->guest_arch[0] && strcmp(r->guest_arch, arch_host());
    fprintf(stderr,
            "%s \xc2\xb7 %s%s%s \xc2\xb7 %s \xc2\xb7 boot %s \xc2\xb7 exec %s \xc2\xb7 total %s\n",
            language, foreign ? r->guest_arch : "", foreign ? " " : "",
            r->accelerator[0] ? r->accelerator : "?", mode, boot, exec, total);
}

/* Whether there are network refusals to tell a person about (--json has them all; -q none). */
static bool blocked_note(const args *a, const sbx_network_report *n)
{
    return n && n->blocked_total && !a->quiet && !a->json;
}

/* The count of what the network refused, and the first refusal. */
static void print_blocked(const sbx_network_report *n)
{
    fprintf(stderr, "sbx: network (%s): %u connection attempt%s blocked", n->mode, n->blocked_total,
            n->blocked_total == 1 ? "" : "s");
    if (n->n_blocked && n->blocked[0].port)
        fprintf(stderr, ", first %s:%u (%s)", n->blocked[0].what, n->blocked[0].port,
                n->blocked[0].reason);
    else if (n->n_blocked)
        fprintf(stderr, ", first %s (%s)", n->blocked[0].what, n->blocked[0].reason);
    fputc('\n', stderr);
}

/* What sbx adds on stderr after the output: timeout, truncation, lost session state, blocked
 * network access. */
void print_notes(const args *a, const sbx_result *r)
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
    if (blocked_note(a, r->network))
        print_blocked(r->network);
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

void stream_cb(sbx_stream stream, const char *data, size_t len, void *userdata)
{
    bool err = stream == SBX_STREAM_STDERR;
    FILE *f = err ? stderr : stdout;
    fwrite(data, 1, len, f);
    fflush(f);
    if (len)
        line_ended[err] = data[len - 1] == '\n';
}

/* The exposed ports, as soon as they are bound: one line each, before the code's output. */
void ports_cb(const sbx_exposed_port *ports, size_t n, void *userdata)
{
    end_lines();
    for (size_t i = 0; i < n; i++)
        if (ports[i].url[0])
            fprintf(stderr, "sbx: port %u/%s -> %s\n", ports[i].internal, ports[i].protocol,
                    ports[i].url);
        else
            fprintf(stderr, "sbx: port %u/%s -> %s:%u\n", ports[i].internal, ports[i].protocol,
                    ports[i].host, ports[i].external);
    fflush(stderr);
}

/* News of a slow first step (a package install): one line on stderr. */
void progress_cb(const char *message, void *userdata)
{
    end_lines();
    fprintf(stderr, "sbx: %s\n", message);
    fflush(stderr);
}

/* Before sbx's own lines on stderr: end the code's unfinished line, so `sbx: ...` starts a line
 * of its own (on stdout only for a terminal, where both streams share the screen). */
void end_lines(void)
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
json_t *json_bytes(const char *data, size_t len)
{
    size_t n;
    cleanup_free char *s = sbx_utf8_sanitize(data, len, &n);
    return s ? json_stringn_nocheck(s, n) : NULL;
}

json_t *json_text(const char *s)
{
    return json_bytes(s, strlen(s));
}

json_t *json_ports(const sbx_exposed_port *ports, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(
            arr,
            json_pack("{s:i, s:i, s:o, s:o, s:o}", "internal", (int)ports[i].internal, "external",
                      (int)ports[i].external, "host", json_text(ports[i].host), "protocol",
                      json_text(ports[i].protocol), "url", json_text(ports[i].url)));
    return arr;
}

/* The network report, or null for a VM without a network interface. */
static json_t *json_network(const sbx_network_report *n)
{
    if (!n)
        return json_null();
    json_t *domains = json_array(), *blocked = json_array();
    for (size_t i = 0; domains && i < n->n_allowed_domains; i++)
        json_array_append_new(domains, json_text(n->allowed_domains[i]));
    for (size_t i = 0; blocked && i < n->n_blocked; i++)
        json_array_append_new(
            blocked, json_pack("{s:o, s:i, s:o}", "what", json_text(n->blocked[i].what), "port",
                               (int)n->blocked[i].port, "reason", json_text(n->blocked[i].reason)));
    return json_pack("{s:o, s:o, s:o, s:I}", "mode", json_text(n->mode), "allowed_domains", domains,
                     "blocked", blocked, "blocked_total", (json_int_t)n->blocked_total);
}

/* The result fields; language and source when known (a session exec knows neither). */
json_t *json_result_fields(const char *language, const char *source, const sbx_result *r)
{
    json_t *j = json_pack(
        "{s:o, s:o, s:i, s:b, s:b, s:b, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:o, s:o, s:b,"
        " s:o, s:o, s:o, s:o, s:b}",
        "stdout", json_bytes(r->stdout_buf, r->stdout_len), "stderr",
        json_bytes(r->stderr_buf, r->stderr_len), "exit_code", r->exit_code, "timed_out",
        r->timed_out, "stdout_truncated", r->stdout_truncated, "stderr_truncated",
        r->stderr_truncated, "execution_time_ms", (json_int_t)r->execution_time_ms,
        "external_cpu_time_ms", (json_int_t)r->external_cpu_time_ms, "external_memory_peak_mb",
        (json_int_t)r->external_memory_peak_mb, "timing", "setup_ms",
        (json_int_t)r->timing.setup_ms, "boot_ms", (json_int_t)r->timing.boot_ms, "execute_ms",
        (json_int_t)r->timing.execute_ms, "total_ms", (json_int_t)r->timing.total_ms, "accelerator",
        json_text(r->accelerator), "guest_arch", json_text(r->guest_arch), "warm_pool_hit",
        r->warm_pool_hit, "start_mode", json_text(r->start_mode), "exposed_ports",
        json_ports(r->exposed_ports, r->n_exposed_ports), "network", json_network(r->network),
        "package_layer", json_text(r->package_layer), "package_layer_built",
        r->package_layer_built);
    if (j && language)
        json_object_set_new(j, "language", json_string(language));
    if (j && source)
        json_object_set_new(j, "source", json_text(source));
    return j;
}

json_t *json_result(const run_source *src, const sbx_result *r)
{
    return json_result_fields(src->language, src->arg, r);
}

json_t *json_error(const run_source *src, const sbx_error *e)
{
    return json_pack("{s:{s:s, s:o, s:b}, s:s, s:o}", "error", "type", sbx_error_kind_name(e->kind),
                     "message", json_text(e->message), "transient", e->transient, "language",
                     src->language, "source", json_text(src->arg));
}

int json_print(json_t *j)
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

/* ---- the end of one run or exec ---- */

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
int report_result(const args *a, json_t *j, const sbx_result *r, const char *language)
{
    if (a->json && json_print(j) < 0)
        return EXIT_SANDBOX;
    bool notes = r->timed_out || r->stdout_truncated || r->stderr_truncated ||
                 (r->interpreter_reset && a->cmd == ARGS_CMD_SESSION && !a->json) ||
                 blocked_note(a, r->network);
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
int report_error(const args *a, const run_source *src, const sbx_error *e)
{
    if (a->json) {
        json_print(json_error(src, e));
    } else {
        end_lines();
        print_error(e);
    }
    return error_exit(e);
}

void fmt_duration(char *out, size_t n, uint64_t ms)
{
    uint64_t s = ms / 1000;
    if (s < 60)
        snprintf(out, n, "%" PRIu64 " s", s);
    else if (s < 3600)
        snprintf(out, n, "%" PRIu64 " min %" PRIu64 " s", s / 60, s % 60);
    else
        snprintf(out, n, "%" PRIu64 " h %" PRIu64 " min", s / 3600, s / 60 % 60);
}

void fmt_size(char *out, size_t n, uint64_t b)
{
    if (b < 1024)
        snprintf(out, n, "%" PRIu64 " B", b);
    else if (b < (1u << 20))
        snprintf(out, n, "%.1f KiB", (double)b / 1024.0);
    else
        snprintf(out, n, "%.1f MiB", (double)b / (1024.0 * 1024.0));
}
