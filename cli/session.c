/* libsbx's sessions: open, exec, close and list the VMs sbxd keeps across execs. It never holds
 * session state of its own: sbxd owns a session, the client only names it by id. */
#include "libsbx_int.h"

int check_session_id(const char *id, sbx_err *err)
{
    if (!id || !*id)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "no session id given");
    if (strlen(id) >= SBX_SESSION_ID_MAX)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "`%.64s...` is too long for a session id", id);
    return 0;
}

static int info_fill(sbx_session_info *out, const Sbx__Control__SessionInfo *si, sbx_err *err)
{
    memset(out, 0, sizeof *out);
    size_t n = si->session_id ? strlen(si->session_id) : 0;
    /* An id we would have to cut could never be used again: refuse it rather than mangle it. */
    if (n == 0 || n >= sizeof out->session_id)
        return sbx_fail(err, SBX_ERR_PROTOCOL, "sbxd sent a session id of %zu bytes", n);
    copy_text(out->session_id, sizeof out->session_id, si->session_id);
    copy_text(out->language, sizeof out->language, si->language);
    out->memory_mb = si->memory_mb;
    out->idle_timeout_seconds = si->idle_timeout_seconds;
    out->exec_count = si->exec_count;
    out->created_unix_ms = si->created_unix_ms;
    out->last_used_unix_ms = si->last_used_unix_ms;
    out->busy = si->busy;
    copy_text(out->accelerator, sizeof out->accelerator, si->accelerator);
    copy_text(out->guest_arch, sizeof out->guest_arch, si->guest_arch);
    out->boot_ms = si->boot_ms;
    copy_text(out->network_mode, sizeof out->network_mode, si->network_mode);
    out->n_exposed_ports = ports_fill(out->exposed_ports, si->exposed_ports, si->n_exposed_ports);
    return 0;
}

static int session_open(sbx_client *c, const sbx_session_opts *opts, sbx_session_info *out,
                        sbx_err *err)
{
    static const sbx_session_opts defaults;
    const sbx_session_opts *o = opts ? opts : &defaults;
    memset(out, 0, sizeof *out);
    const char *lang = o->language ? o->language : "python";
    sbx_err why_err = {0};
    if (!limits_language_ok(lang))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "unknown language `%.64s` (" SBX_LANGUAGES ")",
                        lang);
    if ((o->timeout_seconds && limits_check_timeout(o->timeout_seconds, &why_err) < 0) ||
        (o->memory_mb && limits_check_memory(o->memory_mb, &why_err) < 0) ||
        (o->idle_timeout_seconds &&
         limits_check_idle_timeout(o->idle_timeout_seconds, &why_err) < 0))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    if (check_env(o->env, o->n_env, err) < 0 || check_network(&o->network, err) < 0 ||
        check_packages(lang, o->packages, o->n_packages, o->skip_package_validation, err) < 0)
        return -1;
    cleanup_free Sbx__Files__EnvVar **varp = env_msgs(o->env, o->n_env);
    if (!varp)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    Sbx__Control__SessionOpen so = SBX__CONTROL__SESSION_OPEN__INIT;
    so.language = (char *)lang;
    so.memory_mb = o->memory_mb;
    so.timeout_seconds = o->timeout_seconds;
    so.n_env = o->n_env;
    so.env = varp;
    so.idle_timeout_seconds = o->idle_timeout_seconds;
    network_msg net;
    so.network = network_request(&o->network, &net);
    so.packages = (char **)o->packages;
    so.n_packages = o->n_packages;
    so.skip_package_validation = o->skip_package_validation;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_OPEN;
    rq.session_open = &so;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    /* No deadline of our own: booting is bounded by the daemon, which answers either way. */
    c->on_ports = o->on_ports;
    c->on_progress = o->on_progress;
    c->ports_userdata = o->userdata;
    int rc = request(c, &rq, -1, "open session", &r, err);
    c->on_ports = NULL;
    c->on_progress = NULL;
    if (rc < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION)
        return unexpected(c, r, "waiting for the new session", err);
    return info_fill(out, r->session, err);
}

int sbx_session_open(sbx_client *c, const sbx_session_opts *opts, sbx_session_info *out,
                     sbx_error *err)
{
    sbx_err e = {0};
    return error_out(session_open(c, opts, out, &e), &e, err);
}

static int session_exec(sbx_client *c, const char *session_id, const char *code, size_t code_len,
                        uint32_t timeout_seconds, sbx_output_fn on_output, void *userdata,
                        sbx_result *out, sbx_err *err)
{
    memset(out, 0, sizeof *out);
    sbx_err why_err = {0};
    if (check_session_id(session_id, err) < 0)
        return -1;
    if (!code)
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "no code given");
    size_t len = code_len ? code_len : strlen(code);
    if (limits_check_code((const uint8_t *)code, len, &why_err) < 0 ||
        (timeout_seconds && limits_check_timeout(timeout_seconds, &why_err) < 0))
        return sbx_fail(err, SBX_ERR_VM_CONFIG, "%s", why_err.msg);
    if (client_ready(c, err) < 0)
        return -1;
    Sbx__Control__SessionExec se = SBX__CONTROL__SESSION_EXEC__INIT;
    se.session_id = (char *)session_id;
    se.code.data = (uint8_t *)code;
    se.code.len = len;
    se.timeout_seconds = timeout_seconds;
    se.stream = on_output != NULL;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_EXEC;
    rq.session_exec = &se;
    if (client_send(c, &rq, err) < 0)
        return -1;
    struct output_cb cb = {on_output, userdata};
    return exec_wait(c, rq.id, &cb, out, err);
}

int sbx_session_exec(sbx_client *c, const char *session_id, const char *code, size_t code_len,
                     uint32_t timeout_seconds, sbx_output_fn on_output, void *userdata,
                     sbx_result *out, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(
        session_exec(c, session_id, code, code_len, timeout_seconds, on_output, userdata, out, &e),
        &e, err);
}

static int session_close(sbx_client *c, const char *session_id, uint64_t *exec_count, sbx_err *err)
{
    if (exec_count)
        *exec_count = 0;
    if (check_session_id(session_id, err) < 0)
        return -1;
    Sbx__Control__SessionClose sc = SBX__CONTROL__SESSION_CLOSE__INIT;
    sc.session_id = (char *)session_id;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE;
    rq.session_close = &sc;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, -1, "close session", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION_CLOSED)
        return unexpected(c, r, "waiting for the session to close", err);
    if (exec_count)
        *exec_count = r->session_closed->exec_count;
    return 0;
}

int sbx_session_close(sbx_client *c, const char *session_id, uint64_t *exec_count, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(session_close(c, session_id, exec_count, &e), &e, err);
}

static int session_list(sbx_client *c, sbx_session_info **out, size_t *n, sbx_err *err)
{
    *out = NULL;
    *n = 0;
    Sbx__Control__SessionList sl = SBX__CONTROL__SESSION_LIST__INIT;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_SESSION_LIST;
    rq.session_list = &sl;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (request(c, &rq, STATUS_TIMEOUT_MS, "list sessions", &r, err) < 0)
        return -1;
    if (r->body_case != SBX__CONTROL__REPLY__BODY_SESSION_LISTING)
        return unexpected(c, r, "waiting for the session list", err);
    size_t k = r->session_listing->n_sessions;
    if (k == 0)
        return 0;
    cleanup_free sbx_session_info *list = calloc(k, sizeof *list);
    if (!list)
        return sbx_fail(err, SBX_ERR_INTERNAL, "out of memory");
    for (size_t i = 0; i < k; i++)
        if (info_fill(&list[i], r->session_listing->sessions[i], err) < 0)
            return -1;
    *out = steal_ptr(&list);
    *n = k;
    return 0;
}

int sbx_session_list(sbx_client *c, sbx_session_info **out, size_t *n, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(session_list(c, out, n, &e), &e, err);
}

void sbx_session_list_free(sbx_session_info *list)
{
    free(list);
}
