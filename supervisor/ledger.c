/* The requests in flight, and the audit log: one JSON line per run, session request or file
 * request when it ends (its final reply, or its client leaving first). A line names who asked
 * (uid, pid), what (kind, language, the code's sha256 and size, limits, env variable names,
 * packages, network mode and domains, exposed ports, session, path) and how it ended (exit code
 * or error kind, start_mode, timings, what the network policy refused). Never the code, env
 * values or file contents. The file is opened O_APPEND and each line is one write(): lines of
 * concurrent writers never interleave, and a write that fails (a full disk) drops the line and
 * counts it instead of waiting. */
#include "ledger.h"

#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

/* Requests tracked at once; beyond, a request is served but not tracked (and counted). */
#define LEDGER_MAX 20000

typedef struct entry {
    client *c;
    uint64_t id;
    uid_t uid;
    pid_t pid;
    const char *kind;
    uint64_t t_unix_ms, t_mono_ms;
    json_t *req; /* what it asked, ready for the line */
    char language[16];
    struct entry *next;
} entry;

static entry *entries;
static unsigned nentries;
static int audit_fd = -1;
static uint64_t dropped, untracked;

uint64_t ledger_audit_dropped(void)
{
    return dropped;
}

void ledger_init(void)
{
    if (!cfg.audit_log[0])
        return;
    audit_fd = open(cfg.audit_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (audit_fd < 0)
        slog("warning: audit log `%s`: %s; requests are not audited", cfg.audit_log,
             strerror(errno));
    else
        slog("audit log: %s", cfg.audit_log);
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static json_t *strings(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i] ? v[i] : ""));
    return a;
}

static void code_fields(json_t *o, const ProtobufCBinaryData *code)
{
    unsigned char md[32];
    char hex[65];
    EVP_Digest(code->data, code->len, md, NULL, EVP_sha256(), NULL);
    sbx_hex(md, 32, hex);
    json_object_set_new(o, "code_sha256", json_string(hex));
    json_object_set_new(o, "code_bytes", json_integer((json_int_t)code->len));
}

/* Names only: the values may be secrets. */
static void env_fields(json_t *o, Sbx__Files__EnvVar **env, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(env[i] && env[i]->key ? env[i]->key : ""));
    json_object_set_new(o, "env_names", a);
}

static void network_fields(json_t *o, const Sbx__Control__NetworkRequest *n)
{
    if (!n)
        return;
    json_object_set_new(o, "allow_network", json_boolean(n->allow_network));
    json_object_set_new(o, "allowed_domains", strings(n->allowed_domains, n->n_allowed_domains));
    json_t *a = json_array();
    for (size_t i = 0; i < n->n_expose; i++)
        json_array_append_new(
            a, json_pack("{s:i, s:i, s:s}", "internal", (int)n->expose[i]->internal, "external",
                         (int)n->expose[i]->external, "protocol",
                         n->expose[i]->protocol && *n->expose[i]->protocol ? n->expose[i]->protocol
                                                                           : "tcp"));
    json_object_set_new(o, "expose", a);
}

/* What runs and sessions share: their VM's limits, environment, packages and network. */
static void vm_fields(json_t *o, uint32_t timeout_s, uint32_t memory_mb, Sbx__Files__EnvVar **env,
                      size_t n_env, char **packages, size_t n_packages,
                      const Sbx__Control__NetworkRequest *net)
{
    json_object_set_new(o, "timeout_seconds", json_integer(timeout_s));
    json_object_set_new(o, "memory_mb", json_integer(memory_mb));
    env_fields(o, env, n_env);
    json_object_set_new(o, "packages", strings(packages, n_packages));
    network_fields(o, net);
}

/* What a request asks, or NULL for those not audited (hello, status, listings, upload chunks). */
static json_t *describe(const Sbx__Control__Request *r, const char **kind, const char **language)
{
    json_t *o = json_object();
    *language = "";
    switch (r->body_case) {
    case SBX__CONTROL__REQUEST__BODY_RUN: {
        const Sbx__Control__RunRequest *x = r->run;
        *kind = "run";
        *language = x->language && *x->language ? x->language : "python";
        code_fields(o, &x->code);
        vm_fields(o, x->timeout_seconds, x->memory_mb, x->env, x->n_env, x->packages, x->n_packages,
                  x->network);
        break;
    }
    case SBX__CONTROL__REQUEST__BODY_SESSION_OPEN: {
        const Sbx__Control__SessionOpen *x = r->session_open;
        *kind = "session_open";
        *language = x->language && *x->language ? x->language : "python";
        vm_fields(o, x->timeout_seconds, x->memory_mb, x->env, x->n_env, x->packages, x->n_packages,
                  x->network);
        break;
    }
    case SBX__CONTROL__REQUEST__BODY_SESSION_EXEC:
        *kind = "session_exec";
        *language = session_language(r->session_exec->session_id);
        json_object_set_new(o, "session_id", json_string(r->session_exec->session_id));
        code_fields(o, &r->session_exec->code);
        json_object_set_new(o, "timeout_seconds", json_integer(r->session_exec->timeout_seconds));
        break;
    case SBX__CONTROL__REQUEST__BODY_SESSION_CLOSE:
        *kind = "session_close";
        json_object_set_new(o, "session_id", json_string(r->session_close->session_id));
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_WRITE:
        *kind = "file_write";
        json_object_set_new(o, "session_id", json_string(r->file_write->session_id));
        json_object_set_new(o, "path", json_string(r->file_write->path));
        json_object_set_new(o, "bytes", json_integer((json_int_t)r->file_write->size));
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_READ:
        *kind = "file_read";
        json_object_set_new(o, "session_id", json_string(r->file_read->session_id));
        json_object_set_new(o, "path", json_string(r->file_read->path));
        break;
    case SBX__CONTROL__REQUEST__BODY_FILE_LIST:
        *kind = "file_list";
        json_object_set_new(o, "session_id", json_string(r->file_list->session_id));
        json_object_set_new(o, "path", json_string(r->file_list->path));
        break;
    default:
        json_decref(o);
        return NULL;
    }
    return o;
}

void ledger_begin(client *c, const client_peer *peer, const Sbx__Control__Request *req)
{
    const char *kind, *language;
    json_t *what = describe(req, &kind, &language);
    if (!what)
        return;
    entry *e = nentries < LEDGER_MAX ? calloc(1, sizeof *e) : NULL;
    if (!e) {
        json_decref(what);
        untracked++;
        return;
    }
    e->c = c;
    e->id = req->id;
    e->uid = peer->uid;
    e->pid = peer->pid;
    e->kind = kind;
    e->req = what;
    snprintf(e->language, sizeof e->language, "%s", language);
    e->t_unix_ms = unix_ms();
    e->t_mono_ms = now_ms();
    e->next = entries;
    entries = e;
    nentries++;
}

static void write_line(json_t *line)
{
    char *text = json_dumps(line, JSON_COMPACT);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n';
    ssize_t w = write(audit_fd, text, n + 1);
    if (w != (ssize_t)(n + 1) && dropped++ == 0)
        slog("warning: audit log `%s`: %s; lines are dropped (and counted)", cfg.audit_log,
             w < 0 ? strerror(errno) : "short write");
    free(text);
}

static json_t *result_fields(const Sbx__Control__ExecResult *r)
{
    json_t *o =
        json_pack("{s:i, s:b, s:s, s:s, s:b}", "exit_code", r->exit_code, "timed_out", r->timed_out,
                  "start_mode", r->start_mode ? r->start_mode : "", "accelerator",
                  r->accelerator ? r->accelerator : "", "warm_pool_hit", r->warm_pool_hit);
    if (r->timing)
        json_object_set_new(o, "timing",
                            json_pack("{s:I, s:I, s:I, s:I}", "setup_ms",
                                      (json_int_t)r->timing->setup_ms, "boot_ms",
                                      (json_int_t)r->timing->boot_ms, "execute_ms",
                                      (json_int_t)r->timing->execute_ms, "total_ms",
                                      (json_int_t)r->timing->total_ms));
    if (r->package_layer && *r->package_layer)
        json_object_set_new(o, "package_layer", json_string(r->package_layer));
    json_t *ports = json_array();
    for (size_t i = 0; i < r->n_exposed_ports; i++)
        json_array_append_new(
            ports, json_pack("{s:i, s:i, s:s}", "internal", (int)r->exposed_ports[i]->internal,
                             "external", (int)r->exposed_ports[i]->external, "protocol",
                             r->exposed_ports[i]->protocol ? r->exposed_ports[i]->protocol : ""));
    json_object_set_new(o, "exposed_ports", ports);
    if (r->network) {
        json_t *b = json_array();
        for (size_t i = 0; i < r->network->n_blocked; i++)
            json_array_append_new(
                b, json_pack("{s:s, s:i, s:s}", "what",
                             r->network->blocked[i]->what ? r->network->blocked[i]->what : "",
                             "port", (int)r->network->blocked[i]->port, "reason",
                             r->network->blocked[i]->reason ? r->network->blocked[i]->reason : ""));
        json_object_set_new(o, "network",
                            json_pack("{s:s, s:o, s:i}", "mode",
                                      r->network->mode ? r->network->mode : "", "blocked", b,
                                      "blocked_total", (int)r->network->blocked_total));
    }
    return o;
}

static const char *error_name(Sbx__Control__ErrorKind k)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&sbx__control__error_kind__descriptor, (int)k);
    return v ? v->name : "ERROR_KIND_UNSPECIFIED";
}

/* The end of e: its line, its counts; e is freed. how: the final reply, or NULL (client gone). */
static void close_entry(entry *e, const Sbx__Control__Reply *how)
{
    if (how && how->body_case == SBX__CONTROL__REPLY__BODY_RESULT)
        metrics_result(e->kind, e->language, how->result);
    else if (how && how->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
        metrics_error(how->error->kind);
    if (audit_fd >= 0) {
        char when[40];
        time_t secs = (time_t)(e->t_unix_ms / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_t *line =
            json_pack("{s:s, s:I, s:i, s:i, s:s, s:I, s:s, s:O, s:I}", "time", when, "time_unix_ms",
                      (json_int_t)e->t_unix_ms, "uid", (int)e->uid, "pid", (int)e->pid, "request",
                      e->kind, "id", (json_int_t)e->id, "language", e->language, "asked", e->req,
                      "duration_ms", (json_int_t)(now_ms() - e->t_mono_ms));
        if (!how)
            json_object_set_new(line, "outcome", json_string("client gone"));
        else if (how->body_case == SBX__CONTROL__REPLY__BODY_RESULT)
            json_object_set_new(line, "result", result_fields(how->result));
        else if (how->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
            json_object_set_new(line, "error",
                                json_pack("{s:s, s:b}", "kind", error_name(how->error->kind),
                                          "transient", how->error->transient));
        else if (how->body_case == SBX__CONTROL__REPLY__BODY_SESSION)
            json_object_set_new(
                line, "session_id",
                json_string(how->session->session_id ? how->session->session_id : ""));
        else if (how->body_case == SBX__CONTROL__REPLY__BODY_FILE_DONE)
            json_object_set_new(line, "bytes", json_integer((json_int_t)how->file_done->size));
        if (line)
            write_line(line);
        json_decref(line);
    }
    json_decref(e->req);
    free(e);
    nentries--;
}

static bool final(const Sbx__Control__Reply *r)
{
    switch (r->body_case) {
    case SBX__CONTROL__REPLY__BODY_RESULT:
    case SBX__CONTROL__REPLY__BODY_ERROR:
    case SBX__CONTROL__REPLY__BODY_SESSION:
    case SBX__CONTROL__REPLY__BODY_SESSION_CLOSED:
    case SBX__CONTROL__REPLY__BODY_FILE_DONE:
    case SBX__CONTROL__REPLY__BODY_FILE_LISTING:
        return true;
    default:
        return false;
    }
}

void ledger_reply(client *c, const Sbx__Control__Reply *r)
{
    if (!c || !final(r))
        return;
    for (entry **p = &entries; *p; p = &(*p)->next) {
        entry *e = *p;
        /* A file read's chunks come before its FileDone; an upload's reply is one. */
        if (e->c != c || e->id != r->id)
            continue;
        *p = e->next;
        close_entry(e, r);
        return;
    }
}

void ledger_client_gone(client *c)
{
    for (entry **p = &entries; *p;) {
        entry *e = *p;
        if (e->c != c) {
            p = &e->next;
            continue;
        }
        *p = e->next;
        close_entry(e, NULL);
    }
}

void ledger_shutdown(void)
{
    while (entries) {
        entry *e = entries;
        entries = e->next;
        close_entry(e, NULL);
    }
    if (audit_fd >= 0)
        close(audit_fd);
    audit_fd = -1;
}
