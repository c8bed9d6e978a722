/* libsbx's runs: one-shot runs, and the replies of any exec (run or session) up to its result,
 * streamed output included. It checks requests against the limits before sending them, and
 * never trusts the daemon to repeat what it streamed. */
#include "libsbx_int.h"

/* What was streamed of one output stream: counted, and kept up to the stream's limit in case the
 * final result comes without it. */
struct sink {
    char *buf;
    size_t len, cap, limit;
    size_t streamed;
};

static void sink_add(struct sink *s, const uint8_t *data, size_t n)
{
    s->streamed += n;
    size_t take = s->len < s->limit ? s->limit - s->len : 0;
    if (take > n)
        take = n;
    if (take == 0)
        return;
    if (s->len + take > s->cap) {
        size_t ncap = s->cap ? s->cap : 4096;
        while (ncap < s->len + take)
            ncap *= 2;
        if (ncap > s->limit)
            ncap = s->limit;
        char *nb = realloc(s->buf, ncap);
        if (!nb)
            return; /* only a fallback copy: the result normally carries the output */
        s->buf = nb;
        s->cap = ncap;
    }
    memcpy(s->buf + s->len, data, take);
    s->len += take;
}

static int dup_bytes(char **dst, size_t *dlen, const void *src, size_t n)
{
    *dst = malloc(n + 1);
    if (!*dst)
        return -1;
    if (n)
        memcpy(*dst, src, n);
    (*dst)[n] = '\0';
    *dlen = n;
    return 0;
}

/* One stream of the final result: the result's bytes, unless streaming delivered more than the
 * result holds (a daemon that does not repeat streamed output); then what was streamed. */
static int take_stream(char **dst, size_t *dlen, const ProtobufCBinaryData *res, struct sink *s,
                       const struct output_cb *cb, sbx_stream which)
{
    if (cb->fn && s->streamed < res->len)
        cb->fn(which, (const char *)res->data + s->streamed, res->len - s->streamed, cb->userdata);
    if (s->len > res->len)
        return dup_bytes(dst, dlen, s->buf, s->len);
    return dup_bytes(dst, dlen, res->data, res->len);
}

static int result_fill(sbx_result *out, const Sbx__Control__ExecResult *r, struct sink sinks[2],
                       const struct output_cb *cb, sbx_err *err)
{
    if (take_stream(&out->stdout_buf, &out->stdout_len, &r->stdout, &sinks[0], cb,
                    SBX_STREAM_STDOUT) < 0 ||
        take_stream(&out->stderr_buf, &out->stderr_len, &r->stderr, &sinks[1], cb,
                    SBX_STREAM_STDERR) < 0) {
        sbx_result_free(out);
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory for the result");
    }
    out->exit_code = r->exit_code;
    out->timed_out = r->timed_out;
    out->stdout_truncated = r->stdout_truncated;
    out->stderr_truncated = r->stderr_truncated;
    out->execution_time_ms = r->execution_time_ms;
    out->external_cpu_time_ms = r->external_cpu_time_ms;
    out->external_memory_peak_mb = r->external_memory_peak_mb;
    if (r->timing) {
        out->timing.setup_ms = r->timing->setup_ms;
        out->timing.boot_ms = r->timing->boot_ms;
        out->timing.execute_ms = r->timing->execute_ms;
        out->timing.total_ms = r->timing->total_ms;
    }
    copy_text(out->accelerator, sizeof out->accelerator, r->accelerator);
    copy_text(out->guest_arch, sizeof out->guest_arch, r->guest_arch);
    out->warm_pool_hit = r->warm_pool_hit;
    copy_text(out->start_mode, sizeof out->start_mode, r->start_mode);
    out->exec_count = r->exec_count;
    out->interpreter_reset = r->interpreter_reset;
    out->n_exposed_ports = ports_fill(out->exposed_ports, r->exposed_ports, r->n_exposed_ports);
    copy_text(out->package_layer, sizeof out->package_layer, r->package_layer);
    out->package_layer_built = r->package_layer_built;
    if (report_fill(&out->network, r->network, err) < 0) {
        sbx_result_free(out);
        return -1;
    }
    return 0;
}

/* The replies of one run or session exec, up to its result or error. */
int exec_wait(sbx_client *c, uint64_t id, const struct output_cb *cb, sbx_result *out, sbx_err *err)
{
    struct sink sinks[2] = {{.limit = SBX_MAX_STDOUT}, {.limit = SBX_MAX_STDERR}};
    int rc = 1;
    while (rc == 1) {
        cleanup_reply Sbx__Control__Reply *r = NULL;
        if (client_recv_for(c, id, -1, &r, err) < 0) {
            sbx_wrap(err, "during the run");
            rc = -1;
            break;
        }
        switch (r->body_case) {
        case SBX__CONTROL__REPLY__BODY_CHUNK: {
            const Sbx__Control__OutputChunk *ch = r->chunk;
            bool is_err = ch->stream == SBX__CONTROL__STREAM__STREAM_STDERR;
            if (!cb->fn || ch->data.len == 0)
                break;
            sink_add(&sinks[is_err], ch->data.data, ch->data.len);
            cb->fn(is_err ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT, (const char *)ch->data.data,
                   ch->data.len, cb->userdata);
            break;
        }
        case SBX__CONTROL__REPLY__BODY_RESULT:
            rc = result_fill(out, r->result, sinks, cb, err);
            break;
        case SBX__CONTROL__REPLY__BODY_ERROR:
            rc = reply_error(c, r->error, err);
            break;
        default:
            rc = unexpected(c, r, "waiting for a run result", err);
            break;
        }
    }
    free(sinks[0].buf);
    free(sinks[1].buf);
    return rc;
}

int check_env(const sbx_env *env, size_t n, sbx_err *err)
{
    sbx_err why_err = {0};
    if (limits_check_env_count(n, &why_err) < 0)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    for (size_t i = 0; i < n; i++) {
        if (!env[i].key || !env[i].value)
            return sbx_fail(err, SBX_ERR_VM_CONFIG, "environment variable %zu has no %s", i,
                            env[i].key ? "value" : "name");
        if (limits_check_env(env[i].key, env[i].value, &why_err) < 0)
            return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    }
    return 0;
}

/* The same checks sbxd makes, so a bad request fails here with the same kind and no round
 * trip; the daemon still checks for itself. */
static int run_validate(const sbx_run_opts *o, const char *lang, size_t code_len, sbx_err *err)
{
    sbx_err why_err = {0};
    if (!limits_language_ok(lang))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "unknown language `%.64s` (" SBX_LANGUAGES ")",
                        lang);
    if (!o->code)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "no code given");
    if (limits_check_code((const uint8_t *)o->code, code_len, &why_err) < 0 ||
        (o->timeout_seconds && limits_check_timeout(o->timeout_seconds, &why_err) < 0) ||
        (o->memory_mb && limits_check_memory(o->memory_mb, &why_err) < 0))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    if (check_env(o->env, o->n_env, err) < 0 || check_network(&o->network, err) < 0)
        return -1;
    return check_packages(lang, o->packages, o->n_packages, o->skip_package_validation, err);
}

/* EnvVar messages pointing at the caller's strings; free() the array (one allocation). */
Sbx__Files__EnvVar **env_msgs(const sbx_env *env, size_t n)
{
    size_t k = n ? n : 1;
    Sbx__Files__EnvVar **p = calloc(1, k * sizeof *p + k * sizeof **p);
    if (!p)
        return NULL;
    Sbx__Files__EnvVar *vars = (Sbx__Files__EnvVar *)(p + k);
    for (size_t i = 0; i < n; i++) {
        sbx__files__env_var__init(&vars[i]);
        vars[i].key = (char *)env[i].key;
        vars[i].value = (char *)env[i].value;
        p[i] = &vars[i];
    }
    return p;
}

static int run_code(sbx_client *c, const sbx_run_opts *o, sbx_result *out, sbx_err *err)
{
    memset(out, 0, sizeof *out);
    const char *lang = o->language ? o->language : "python";
    size_t code_len = o->code_len ? o->code_len : (o->code ? strlen(o->code) : 0);
    if (run_validate(o, lang, code_len, err) < 0 || client_ready(c, err) < 0)
        return -1;
    cleanup_free Sbx__Files__EnvVar **varp = env_msgs(o->env, o->n_env);
    if (!varp)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    Sbx__Control__RunRequest run = SBX__CONTROL__RUN_REQUEST__INIT;
    run.language = (char *)lang;
    run.code.data = (uint8_t *)o->code;
    run.code.len = code_len;
    run.timeout_seconds = o->timeout_seconds;
    run.memory_mb = o->memory_mb;
    run.n_env = o->n_env;
    run.env = varp;
    run.stream = o->on_output != NULL;
    network_msg net;
    run.network = network_request(&o->network, &net);
    run.packages = (char **)o->packages;
    run.n_packages = o->n_packages;
    run.skip_package_validation = o->skip_package_validation;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_RUN;
    rq.run = &run;
    if (client_send(c, &rq, err) < 0)
        return -1;
    struct output_cb cb = {o->on_output, o->userdata};
    c->on_ports = o->on_ports;
    c->on_progress = o->on_progress;
    c->ports_userdata = o->userdata;
    int rc = exec_wait(c, rq.id, &cb, out, err);
    c->on_ports = NULL;
    c->on_progress = NULL;
    return rc;
}

int sbx_run(sbx_client *c, const sbx_run_opts *o, sbx_result *out, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(run_code(c, o, out, &e), &e, err);
}

void sbx_result_free(sbx_result *r)
{
    free(r->stdout_buf);
    free(r->stderr_buf);
    free(r->network);
    memset(r, 0, sizeof *r);
}
