/* Requests on the control socket: each decoded frame is checked (who asks, Hello first) and
 * validated with defaults filled in before anything else sees it, then handed to the scheduler,
 * the sessions, or answered here (status). Nothing in this file owns a connection: control.c
 * does, and is told what to do with it. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "arch.h"
#include "cgroup.h"
#include "layers.h"
#include "ledger.h"
#include "remote.h"
#include "netpolicy.h"
#include "packages.h"
#include "sbx_limits.h"
#include "sbxd.h"
#include "snapshot.h"

bool control_error_transient(Sbx__Control__ErrorKind k)
{
    return k == SBX__CONTROL__ERROR_KIND__ERROR_VM_TIMEOUT ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_VM_CAPACITY ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_SNAPSHOT ||
           k == SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL;
}

void control_send_error(client *c, uint64_t id, Sbx__Control__ErrorKind kind, bool transient,
                        const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Sbx__Control__Error e = SBX__CONTROL__ERROR__INIT;
    e.kind = kind;
    e.transient = transient;
    e.message = msg;
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = id;
    r.body_case = SBX__CONTROL__REPLY__BODY_ERROR;
    r.error = &e;
    control_send(c, &r);
}

/* An absent language means python. protobuf-c leaves an absent string pointing at its shared
 * empty string, which must not be freed; one sent empty on the wire was allocated. */
static int default_language(char **lang)
{
    if (*lang && **lang)
        return 0;
    if (*lang != protobuf_c_empty_string)
        free(*lang);
    *lang = strdup("python");
    return *lang ? 0 : -1;
}

/* A run's or a session's network: domains only with network, each a valid name; at most 10
 * exposed ports, each valid and none twice (the same guest port and protocol, or the same chosen
 * host port and protocol). Returns 0, or -1 with err. */
static int check_network(const Sbx__Control__NetworkRequest *n, sbx_err *err)
{
    if (n->n_allowed_domains && !n->allow_network)
        return sbx_fail(err, EINVAL,
                        "allowed_domains need allow_network: a domain allowlist narrows network "
                        "access, it does not grant it");
    if (net_check_domains((const char *const *)n->allowed_domains, n->n_allowed_domains, err) < 0 ||
        net_check_expose_count(n->n_expose, err) < 0)
        return -1;
    for (size_t i = 0; i < n->n_expose; i++) {
        const Sbx__Control__PortExpose *e = n->expose[i];
        if (net_check_expose(e->internal, e->external, e->protocol, err) < 0)
            return -1;
        bool udp = e->protocol && !strcmp(e->protocol, "udp");
        for (size_t j = 0; j < i; j++) {
            const Sbx__Control__PortExpose *o = n->expose[j];
            if (udp != (o->protocol && !strcmp(o->protocol, "udp")))
                continue;
            if (o->internal == e->internal)
                return sbx_fail(err, EINVAL, "guest port %u/%s is exposed twice", e->internal,
                                udp ? "udp" : "tcp");
            if (e->external && o->external == e->external)
                return sbx_fail(err, EINVAL, "host port %u/%s is asked for twice", e->external,
                                udp ? "udp" : "tcp");
        }
    }
    return 0;
}

/* A run's or a session open's packages, after the rest of the request was found valid:
 * syntax, count and duplicates (VmConfigError), then each name on its language's top-10k list
 * unless the request or the daemon's enable_package_validation = false skips it
 * (PackageNotAllowedError, permanent). Returns 0, or -1 after replying. */
static int check_packages(client *c, uint64_t id, const char *language, char **specs, size_t n,
                          bool skip_validation)
{
    sbx_err why = {0};
    if (!n)
        return 0;
    if (pkg_check_list(language, (const char *const *)specs, n,
                       skip_validation || !cfg.enable_package_validation, NULL, &why) < 0) {
        bool denied = why.code == PKG_ERR_NOT_ALLOWED;
        control_send_error(c, id,
                           denied ? SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_NOT_ALLOWED
                                  : SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG,
                           false, "%s", why.msg);
        return -1;
    }
    return 0;
}

void control_send_layer(client *c, Sbx__Control__Reply *r, const char *layer_name, bool built)
{
    Sbx__Control__ExecResult *res =
        r->body_case == SBX__CONTROL__REPLY__BODY_RESULT ? r->result : NULL;
    char *owned = res ? res->package_layer : NULL;
    if (res) {
        res->package_layer = (char *)layer_name;
        res->package_layer_built = built;
    }
    control_send(c, r);
    if (res)
        res->package_layer = owned;
}

layer_wait *request_packages(client *c, uint64_t id, const char *language, char **specs, size_t n,
                             layer_cb cb, void *owner)
{
    sbx_err err = {0};
    pkg_spec *list = calloc(n ? n : 1, sizeof *list);
    bool installing = false;
    layer_wait *w = NULL;
    /* Validated already: this only gives the canonical order and forms. */
    if (!list || pkg_check_list(language, (const char *const *)specs, n, true, list, &err) < 0) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "%s",
                           list ? err.msg : "out of memory");
    } else if (!(w = layer_acquire(language, list, n, cb, owner, &installing, &err))) {
        Sbx__Control__ErrorKind kind = (Sbx__Control__ErrorKind)err.code;
        control_send_error(c, id, kind, control_error_transient(kind), "%s", err.msg);
    } else if (installing) {
        char msg[128];
        snprintf(msg, sizeof msg, "installing %zu package%s (first time for this set)...", n,
                 n == 1 ? "" : "s");
        Sbx__Control__Progress p = SBX__CONTROL__PROGRESS__INIT;
        p.message = msg;
        Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
        r.id = id;
        r.body_case = SBX__CONTROL__REPLY__BODY_PROGRESS;
        r.progress = &p;
        control_send(c, &r);
    }
    free(list);
    return w;
}

/* What runs and sessions share: a language (default python), a VM (memory, default timeout), an
 * environment and a network. Defaults are filled in; returns 0, or -1 after replying with a
 * VmConfigError. */
static int check_vm_request(client *c, uint64_t id, char **language, uint32_t *memory_mb,
                            uint32_t *timeout_seconds, Sbx__Files__EnvVar **env, size_t n_env,
                            const Sbx__Control__NetworkRequest *net)
{
    sbx_err lim = {0};
    const Sbx__Control__ErrorKind bad = SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG;
    if (default_language(language) < 0)
        return -1;
    if (!limits_language_ok(*language)) {
        control_send_error(c, id, bad, false, "unknown language `%.32s` (" SBX_LANGUAGES ")",
                           *language);
        return -1;
    }
    if (!*timeout_seconds)
        *timeout_seconds = cfg.default_timeout_seconds;
    if (!*memory_mb)
        *memory_mb = cfg.default_memory_mb;
    if (limits_check_timeout(*timeout_seconds, &lim) < 0 ||
        limits_check_memory(*memory_mb, &lim) < 0 || limits_check_env_count(n_env, &lim) < 0) {
        control_send_error(c, id, bad, false, "%s", lim.msg);
        return -1;
    }
    for (size_t i = 0; i < n_env; i++)
        if (limits_check_env(env[i]->key, env[i]->value, &lim) < 0) {
            control_send_error(c, id, bad, false, "%s", lim.msg);
            return -1;
        }
    if (net && check_network(net, &lim) < 0) {
        control_send_error(c, id, bad, false, "network: %s", lim.msg);
        return -1;
    }
    return 0;
}

/* Validate and fill defaults. Returns 0, or -1 after replying with a VmConfigError. */
static int check_run(client *c, uint64_t id, Sbx__Control__RunRequest *run)
{
    sbx_err lim = {0};
    if (check_vm_request(c, id, &run->language, &run->memory_mb, &run->timeout_seconds, run->env,
                         run->n_env, run->network) < 0)
        return -1;
    if (limits_check_code(run->code.data, run->code.len, &lim) < 0) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG, false, "%s", lim.msg);
        return -1;
    }
    return check_packages(c, id, run->language, run->packages, run->n_packages,
                          run->skip_package_validation);
}

/* Sessions and files: validate what sbxd can before the request reaches a VM. Returns 0, or -1
 * after replying with a VmConfigError. */
static int check_session(client *c, uint64_t id, Sbx__Control__Request *r)
{
    sbx_err lim = {0};
    const Sbx__Control__ErrorKind bad = SBX__CONTROL__ERROR_KIND__ERROR_VM_CONFIG;
    const char *path = NULL;
    bool empty_ok = false;
    switch (r->body_case) {
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN: {
        Sbx__Control__SessionOpen *o = r->session_open;
        if (check_vm_request(c, id, &o->language, &o->memory_mb, &o->timeout_seconds, o->env,
                             o->n_env, o->network) < 0)
            return -1;
        if (!o->idle_timeout_seconds)
            o->idle_timeout_seconds = cfg.session_idle_timeout_seconds;
        if (limits_check_idle_timeout(o->idle_timeout_seconds, &lim) < 0) {
            control_send_error(c, id, bad, false, "%s", lim.msg);
            return -1;
        }
        return check_packages(c, id, o->language, o->packages, o->n_packages,
                              o->skip_package_validation);
    }
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC: {
        Sbx__Control__SessionExec *e = r->session_exec;
        if (limits_check_code(e->code.data, e->code.len, &lim) < 0 ||
            (e->timeout_seconds && limits_check_timeout(e->timeout_seconds, &lim) < 0)) {
            control_send_error(c, id, bad, false, "%s", lim.msg);
            return -1;
        }
        return 0;
    }
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
        path = r->file_write->path;
        if (r->file_write->size > SBX_MAX_FILE) {
            control_send_error(c, id, bad, false, "file is %llu bytes; the limit is %u (50 MiB)",
                               (unsigned long long)r->file_write->size, SBX_MAX_FILE);
            return -1;
        }
        if (r->file_write->sha256.len != 32) {
            control_send_error(c, id, bad, false, "FileWrite needs a 32-byte sha256");
            return -1;
        }
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_CHUNK:
        /* A zstd frame of one chunk's content can only be this big. */
        if (r->file_chunk->zdata.len > SBX_FILE_CHUNK + (64u << 10)) {
            control_send_error(c, id, bad, false, "file chunk of %zu bytes is too large",
                               r->file_chunk->zdata.len);
            return -1;
        }
        return 0;
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
        path = r->file_read->path;
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        path = r->file_list->path;
        empty_ok = true;
        break;
    default:
        return 0;
    }
    if (empty_ok && (!path || !*path))
        return 0;
    if (limits_check_guest_path(path, &lim) < 0) {
        control_send_error(c, id, bad, false, "%s", lim.msg);
        return -1;
    }
    return 0;
}

static void send_status(client *c, uint64_t id)
{
    Sbx__Control__StatusReply s = SBX__CONTROL__STATUS_REPLY__INIT;
    s.version = SBX_VERSION;
    s.accelerator = (char *)(accel_verdict() ? accel_verdict() : "");
    s.accel_reason = (char *)accel_reason();
    s.guest_arch = cfg.guest_arch;
    s.host_arch = (char *)arch_host();
    s.running_vms = sched_running();
    s.queued = sched_queued();
    s.max_concurrent_vms = cfg.max_concurrent_vms;
    s.runs_total = sched_runs_total();
    s.uptime_ms = now_ms() - started_ms;
    s.images_dir = cfg.images_dir;
    s.pid = (uint32_t)getpid();
    s.sessions = session_count();
    s.cgroup_mode = (char *)cgroup_mode();
    uint64_t pool_mb;
    pool_stats(&s.pool_ready, &s.pool_booting, &pool_mb);
    s.pool_memory_mb = pool_mb;
    s.warm_pool_size = cfg.warm_pool_size;
    snapshot_status(&s);
    layers_status(&s);
    remote_status(&s);
    Sbx__Control__StatusLimits l = SBX__CONTROL__STATUS_LIMITS__INIT;
    l.connections = control_clients();
    l.max_connections = cfg.max_connections;
    l.hello_timeout_seconds = cfg.hello_timeout_seconds;
    l.frame_timeout_seconds = cfg.frame_timeout_seconds;
    l.max_queued = cfg.max_queued;
    l.queue_timeout_seconds = cfg.queue_timeout_seconds;
    l.max_session_queue = cfg.max_session_queue;
    l.max_client_buffer_mb = cfg.max_client_buffer_mb;
    l.max_session_upload_mb = cfg.max_session_upload_mb;
    l.run_grace_seconds = cfg.run_grace_seconds;
    control_counters(&l.connections_refused, &l.clients_dropped);
    s.limits = &l;
    Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
    r.id = id;
    r.body_case = SBX__CONTROL__REPLY__BODY_STATUS;
    r.status = &s;
    control_send(c, &r);
}

bool control_reply_from_worker(Sbx__Worker__FromWorker *m, uint64_t id, Sbx__Control__Reply *r,
                               bool *final)
{
    r->id = id;
    *final = true;
    switch (m->body_case) {
    case SBX__WORKER__FROM_WORKER__BODY_CHUNK:
        r->body_case = SBX__CONTROL__REPLY__BODY_CHUNK;
        r->chunk = m->chunk;
        *final = false;
        return true;
    case SBX__WORKER__FROM_WORKER__BODY_RESULT:
        r->body_case = SBX__CONTROL__REPLY__BODY_RESULT;
        r->result = m->result;
        return true;
    case SBX__WORKER__FROM_WORKER__BODY_ERROR:
        r->body_case = SBX__CONTROL__REPLY__BODY_ERROR;
        r->error = m->error;
        return true;
    case SBX__WORKER__FROM_WORKER__BODY_FILE_CHUNK:
        r->body_case = SBX__CONTROL__REPLY__BODY_FILE_CHUNK;
        r->file_chunk = m->file_chunk;
        *final = false;
        return true;
    case SBX__WORKER__FROM_WORKER__BODY_FILE_DONE:
        r->body_case = SBX__CONTROL__REPLY__BODY_FILE_DONE;
        r->file_done = m->file_done;
        return true;
    case SBX__WORKER__FROM_WORKER__BODY_FILE_LISTING:
        r->body_case = SBX__CONTROL__REPLY__BODY_FILE_LISTING;
        r->file_listing = m->file_listing;
        return true;
    default:
        return false;
    }
}

/* One frame from a client, already cut to its length by control.c: decode, check who may ask,
 * validate, dispatch. Replies go through control_send; the verdict tells control.c what to do
 * with the connection. */
request_verdict request_handle(client *c, const client_peer *peer, const uint8_t *data, size_t len)
{
    Sbx__Control__Request *req = sbx__control__request__unpack(NULL, len, data);
    if (!req) {
        slog("client pid %d: undecodable frame (%zu bytes); closing", (int)peer->pid, len);
        return REQUEST_CLOSE;
    }
    uint64_t id = req->id;
    request_verdict v = REQUEST_OK;
    if (peer->refused) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PERMISSION, false,
                           "uid %u may not use this sbxd (allowed: %u, 0%s%s; see allowed_uids)",
                           (unsigned)peer->uid, (unsigned)getuid(), cfg.allowed_uids[0] ? ", " : "",
                           cfg.allowed_uids);
        v = REQUEST_CLOSE_AFTER_REPLY;
        goto out;
    }
    if (!peer->helloed && req->body_case != SBX__CONTROL__REQUEST__BODY_HELLO) {
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                           "the first request on a connection must be Hello");
        v = REQUEST_CLOSE_AFTER_REPLY;
        goto out;
    }
    ledger_begin(c, peer, req);
    switch (req->body_case) {
    case SBX__CONTROL__REQUEST__BODY_HELLO: {
        if (peer->helloed) {
            control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "Hello was already sent on this connection");
            v = REQUEST_CLOSE_AFTER_REPLY;
            break;
        }
        if (req->hello->protocol_version != SBX_PROTOCOL_VERSION) {
            control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                               "client speaks protocol %u, this sbxd speaks %d: upgrade the one "
                               "that is older",
                               req->hello->protocol_version, SBX_PROTOCOL_VERSION);
            v = REQUEST_CLOSE_AFTER_REPLY;
            break;
        }
        v = REQUEST_HELLOED;
        Sbx__Control__HelloOk ok = SBX__CONTROL__HELLO_OK__INIT;
        ok.protocol_version = SBX_PROTOCOL_VERSION;
        ok.server = "sbxd/" SBX_VERSION;
        Sbx__Control__Reply r = SBX__CONTROL__REPLY__INIT;
        r.id = id;
        r.body_case = SBX__CONTROL__REPLY__BODY_HELLO;
        r.hello = &ok;
        control_send(c, &r);
        break;
    }
    case SBX__CONTROL__REQUEST__BODY_RUN:
        if (check_run(c, id, req->run) == 0) {
            run_submit(c, id, req->run);
            req->run = NULL; /* now owned by the scheduler */
            req->body_case = SBX__CONTROL__REQUEST__BODY__NOT_SET;
        }
        break;
    case SBX__CONTROL__REQUEST__BODY_STATUS:
        send_status(c, id);
        break;
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN:
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC:
    case SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE:
    case SBX__CONTROL__REQUEST__BODY_SESSION_LIST:
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
    case SBX__CONTROL__REQUEST__BODY_FILE_CHUNK:
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        if (check_session(c, id, req) == 0) {
            session_handle(c, peer->uid, req);
            return v; /* session_handle owns req now */
        }
        break;
    default:
        control_send_error(c, id, SBX__CONTROL__ERROR_KIND__ERROR_PROTOCOL, false,
                           "unknown request type; closing the connection");
        v = REQUEST_CLOSE_AFTER_REPLY;
        break;
    }
out:
    sbx__control__request__free_unpacked(req, NULL);
    return v;
}

void control_send_ports(client *c, uint64_t id, const Sbx__Worker__Booted *b)
{
    if (!b->n_exposed_ports)
        return;
    Sbx__Control__PortsReady pr = SBX__CONTROL__PORTS_READY__INIT;
    pr.n_ports = b->n_exposed_ports;
    pr.ports = b->exposed_ports;
    Sbx__Control__Reply reply = SBX__CONTROL__REPLY__INIT;
    reply.id = id;
    reply.body_case = SBX__CONTROL__REPLY__BODY_PORTS;
    reply.ports = &pr;
    control_send(c, &reply);
}
