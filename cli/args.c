/* sbx's argument parsing. The parser only looks at argv, so that every option, form and error can
 * be checked by tests/unit/test_cli_args.c without a daemon; it never talks to the daemon and
 * touches no file (sources.c loads the code the arguments name). */
#include "args.h"

#include "common.h"
#include "libsbx.h"
#include "sbx_limits.h"

#include <limits.h>
#include <strings.h>
#include <sys/stat.h>

typedef enum {
    OPT_HELP,
    OPT_VERSION,
    OPT_SOCKET,
    OPT_JSON,
    OPT_QUIET,
    OPT_LANGUAGE,
    OPT_CODE,
    OPT_TIMEOUT,
    OPT_MEMORY,
    OPT_ENV,
    OPT_CONCURRENCY,
    OPT_UPLOAD,
    OPT_DOWNLOAD,
    OPT_IDLE_TIMEOUT,
    OPT_NETWORK,
    OPT_ALLOW_DOMAIN,
    OPT_EXPOSE,
    OPT_PACKAGE,
    OPT_NO_VALIDATION,
} opt_id;

typedef struct {
    const char *name; /* long form, without the dashes */
    char short_name;  /* 0: none */
    bool has_value;
    opt_id id;
} opt;

static const opt global_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"version", 'V', false, OPT_VERSION},
    {"socket", 0, true, OPT_SOCKET},
    {NULL, 0, false, 0},
};

static const opt run_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"json", 0, false, OPT_JSON},
    {"quiet", 'q', false, OPT_QUIET},
    {"language", 'l', true, OPT_LANGUAGE},
    {"code", 'c', true, OPT_CODE},
    {"timeout", 't', true, OPT_TIMEOUT},
    {"memory", 'm', true, OPT_MEMORY},
    {"env", 'e', true, OPT_ENV},
    {"concurrency", 'j', true, OPT_CONCURRENCY},
    {"network", 0, false, OPT_NETWORK},
    {"allow-domain", 0, true, OPT_ALLOW_DOMAIN},
    {"expose", 0, true, OPT_EXPOSE},
    {"package", 'p', true, OPT_PACKAGE},
    {"no-validation", 0, false, OPT_NO_VALIDATION},
    {"upload", 0, true, OPT_UPLOAD},
    {"download", 0, true, OPT_DOWNLOAD},
    {NULL, 0, false, 0},
};

static const opt status_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"json", 0, false, OPT_JSON},
    {NULL, 0, false, 0},
};

static const opt session_new_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"json", 0, false, OPT_JSON},
    {"quiet", 'q', false, OPT_QUIET},
    {"language", 'l', true, OPT_LANGUAGE},
    {"timeout", 't', true, OPT_TIMEOUT},
    {"memory", 'm', true, OPT_MEMORY},
    {"env", 'e', true, OPT_ENV},
    {"idle-timeout", 0, true, OPT_IDLE_TIMEOUT},
    {"network", 0, false, OPT_NETWORK},
    {"allow-domain", 0, true, OPT_ALLOW_DOMAIN},
    {"expose", 0, true, OPT_EXPOSE},
    {"package", 'p', true, OPT_PACKAGE},
    {"no-validation", 0, false, OPT_NO_VALIDATION},
    {NULL, 0, false, 0},
};

static const opt session_exec_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"json", 0, false, OPT_JSON},
    {"quiet", 'q', false, OPT_QUIET},
    {"code", 'c', true, OPT_CODE},
    {"timeout", 't', true, OPT_TIMEOUT},
    {NULL, 0, false, 0},
};

/* ls, files */
static const opt session_json_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"json", 0, false, OPT_JSON},
    {NULL, 0, false, 0},
};

/* close, upload, download */
static const opt session_quiet_opts[] = {
    {"help", 'h', false, OPT_HELP},
    {"socket", 0, true, OPT_SOCKET},
    {"quiet", 'q', false, OPT_QUIET},
    {NULL, 0, false, 0},
};

static const struct {
    const char *name;
    args_session_cmd cmd;
    const opt *tab;
} session_cmds[] = {
    {"new", ARGS_SESSION_NEW, session_new_opts},
    {"exec", ARGS_SESSION_EXEC, session_exec_opts},
    {"ls", ARGS_SESSION_LS, session_json_opts},
    {"close", ARGS_SESSION_CLOSE, session_quiet_opts},
    {"upload", ARGS_SESSION_UPLOAD, session_quiet_opts},
    {"download", ARGS_SESSION_DOWNLOAD, session_quiet_opts},
    {"files", ARGS_SESSION_FILES, session_json_opts},
};
#define SESSION_CMD_LIST "new, exec, ls, close, upload, download, files"

static const opt *find_long(const opt *tab, const char *name, size_t len)
{
    for (; tab->name; tab++)
        if (strlen(tab->name) == len && !strncmp(tab->name, name, len))
            return tab;
    return NULL;
}

static const opt *find_short(const opt *tab, char c)
{
    for (; tab->name; tab++)
        if (tab->short_name && tab->short_name == c)
            return tab;
    return NULL;
}

/* A whole number for option `name`; anything but plain digits (sign, space, suffix) is refused
 * rather than half-read as strtoul would. */
static int parse_u32(const char *name, const char *text, uint32_t *out, sbx_err *err)
{
    uint64_t v = 0;
    if (!*text)
        return sbx_fail(err, 0, "--%s needs a whole number, not an empty value", name);
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return sbx_fail(err, 0, "--%s needs a whole number, not `%.64s`", name, text);
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return sbx_fail(err, 0, "--%s `%.64s` is out of range", name, text);
    }
    *out = (uint32_t)v;
    return 0;
}

static int add_env(args *a, const char *kv, sbx_err *err)
{
    const char *eq = strchr(kv, '=');
    if (!eq)
        return sbx_fail(err, 0, "--env wants KEY=VALUE, not `%.64s`", kv);
    cleanup_free char *key = strndup(kv, (size_t)(eq - kv));
    if (!key)
        return sbx_fail(err, 0, "out of memory");
    sbx_err why_err = {0};
    if (limits_check_env(key, eq + 1, &why_err) < 0)
        return sbx_fail(err, 0, "--env: %s", why_err.msg);
    for (size_t i = 0; i < a->n_env; i++)
        if (!strcmp(a->env[i].key, key)) {
            a->env[i].value = eq + 1;
            return 0;
        }
    if (limits_check_env_count(a->n_env + 1, &why_err) < 0)
        return sbx_fail(err, 0, "--env: %s", why_err.msg);
    a->env[a->n_env].key = steal_ptr(&key);
    a->env[a->n_env].value = eq + 1;
    a->n_env++;
    return 0;
}

static void add_source(args *a, const char *text, bool inline_only)
{
    a->sources[a->n_sources].text = text;
    a->sources[a->n_sources].inline_only = inline_only;
    a->n_sources++;
}

static int check_guest(const char *what, const char *arg, const char *guest, sbx_err *err)
{
    sbx_err why_err = {0};
    if (limits_check_guest_path(guest, &why_err) < 0)
        return sbx_fail(err, 0, "%s `%.200s`: %s", what, arg, why_err.msg);
    return 0;
}

/* The name a downloaded file gets here when no local path is given: the guest path's last
 * component, which must be a plain name. */
static int default_local(const char *what, const char *guest, char **out, sbx_err *err)
{
    const char *slash = strrchr(guest, '/');
    const char *base = slash ? slash + 1 : guest;
    if (!*base || !strcmp(base, "."))
        return sbx_fail(err, 0, "%s `%.200s`: no file name to save it under; give a local path",
                        what, guest);
    *out = strdup(base);
    return *out ? 0 : sbx_fail(err, 0, "out of memory");
}

static int add_transfer(args_transfer *list, size_t *n, const char *local, size_t local_len,
                        const char *guest, size_t guest_len, sbx_err *err)
{
    args_transfer *t = &list[*n];
    t->local = strndup(local, local_len);
    t->guest = strndup(guest, guest_len);
    if (!t->local || !t->guest) {
        free(t->local);
        free(t->guest);
        t->local = t->guest = NULL;
        return sbx_fail(err, 0, "out of memory");
    }
    (*n)++;
    return 0;
}

/* --upload LOCAL:GUEST. Split at the last ':', so a local path may hold colons; a guest path
 * given this way may not (`sbx session upload` takes any). */
static int add_upload(args *a, const char *val, sbx_err *err)
{
    const char *colon = strrchr(val, ':');
    if (!colon || colon == val || !colon[1])
        return sbx_fail(err, 0, "--upload wants LOCAL:GUEST, not `%.200s`", val);
    if (check_guest("--upload", val, colon + 1, err) < 0)
        return -1;
    return add_transfer(a->uploads, &a->n_uploads, val, (size_t)(colon - val), colon + 1,
                        strlen(colon + 1), err);
}

/* --download GUEST[:LOCAL]. Split at the first ':', for the same reason. */
static int add_download(args *a, const char *val, sbx_err *err)
{
    const char *colon = strchr(val, ':');
    size_t glen = colon ? (size_t)(colon - val) : strlen(val);
    if (glen == 0 || (colon && !colon[1]))
        return sbx_fail(err, 0, "--download wants GUEST or GUEST:LOCAL, not `%.200s`", val);
    cleanup_free char *guest = strndup(val, glen);
    if (!guest)
        return sbx_fail(err, 0, "out of memory");
    if (check_guest("--download", val, guest, err) < 0)
        return -1;
    cleanup_free char *local = NULL;
    if (colon)
        local = strdup(colon + 1);
    else if (default_local("--download", guest, &local, err) < 0)
        return -1;
    if (!local)
        return sbx_fail(err, 0, "out of memory");
    /* Two downloads to one place: the second would silently replace the first. */
    for (size_t i = 0; i < a->n_downloads; i++)
        if (!strcmp(a->downloads[i].local, local))
            return sbx_fail(err, 0, "two --download options save to `%.200s`", local);
    return add_transfer(a->downloads, &a->n_downloads, local, strlen(local), guest, glen, err);
}

/* --allow-domain D: a valid name, at most 100 of them (repeats are kept: the daemon does not
 * mind). */
static int add_domain(args *a, const char *d, sbx_err *err)
{
    sbx_err why_err = {0};
    if (net_check_domain(d, &why_err) < 0)
        return sbx_fail(err, 0, "--allow-domain: %s", why_err.msg);
    if (a->n_domains >= NET_MAX_DOMAINS)
        return sbx_fail(err, 0, "--allow-domain: more than %u domains", NET_MAX_DOMAINS);
    a->domains[a->n_domains++] = d;
    return 0;
}

/* --expose INTERNAL[:EXTERNAL][/tcp|/udp], at most 10. */
static int add_expose(args *a, const char *spec, sbx_err *err)
{
    sbx_err why_err = {0};
    if (net_check_expose_count(a->n_expose + 1, &why_err) < 0)
        return sbx_fail(err, 0, "--expose: more than %u ports", NET_MAX_EXPOSE);
    if (net_parse_expose(spec, &a->expose[a->n_expose], &why_err) < 0)
        return sbx_fail(err, 0, "--%s", why_err.msg);
    a->n_expose++;
    return 0;
}

/* Apply one option. Returns 0, 1 when parsing should stop here (help, version), or -1. */
static int apply(args *a, const opt *o, const char *val, sbx_err *err)
{
    sbx_err why_err = {0};
    switch (o->id) {
    case OPT_HELP:
        if (a->cmd == ARGS_CMD_NONE)
            a->cmd = ARGS_CMD_HELP;
        else
            a->help = true;
        return 1;
    case OPT_VERSION:
        a->cmd = ARGS_CMD_VERSION;
        return 1;
    case OPT_SOCKET:
        if (!*val)
            return sbx_fail(err, 0, "--socket needs a path");
        a->socket_path = val;
        return 0;
    case OPT_JSON:
        a->json = true;
        return 0;
    case OPT_QUIET:
        a->quiet = true;
        return 0;
    case OPT_LANGUAGE:
        a->language = limits_language_name(val);
        if (!a->language)
            return sbx_fail(err, 0, "unknown language `%.64s` (" SBX_LANGUAGES ")", val);
        return 0;
    case OPT_CODE:
        add_source(a, val, true);
        return 0;
    case OPT_TIMEOUT:
        if (parse_u32(o->name, val, &a->timeout_s, err) < 0)
            return -1;
        if (limits_check_timeout(a->timeout_s, &why_err) < 0)
            return sbx_fail(err, 0, "%s", why_err.msg);
        return 0;
    case OPT_MEMORY:
        if (parse_u32(o->name, val, &a->memory_mb, err) < 0)
            return -1;
        if (limits_check_memory(a->memory_mb, &why_err) < 0)
            return sbx_fail(err, 0, "%s", why_err.msg);
        return 0;
    case OPT_ENV:
        return add_env(a, val, err);
    case OPT_CONCURRENCY: {
        uint32_t j;
        if (parse_u32(o->name, val, &j, err) < 0)
            return -1;
        if (j < ARGS_CONCURRENCY_MIN || j > ARGS_CONCURRENCY_MAX)
            return sbx_fail(err, 0, "concurrency %u is out of range (%u-%u)", j,
                            ARGS_CONCURRENCY_MIN, ARGS_CONCURRENCY_MAX);
        a->concurrency = j;
        return 0;
    }
    case OPT_UPLOAD:
        return add_upload(a, val, err);
    case OPT_DOWNLOAD:
        return add_download(a, val, err);
    case OPT_IDLE_TIMEOUT:
        if (parse_u32(o->name, val, &a->idle_timeout_s, err) < 0)
            return -1;
        if (limits_check_idle_timeout(a->idle_timeout_s, &why_err) < 0)
            return sbx_fail(err, 0, "%s", why_err.msg);
        return 0;
    case OPT_NETWORK:
        a->network = true;
        return 0;
    case OPT_ALLOW_DOMAIN:
        return add_domain(a, val, err);
    case OPT_EXPOSE:
        return add_expose(a, val, err);
    case OPT_PACKAGE:
        if (a->n_packages >= SBX_PACKAGES_MAX)
            return sbx_fail(err, 0, "--package: more than %u packages", SBX_PACKAGES_MAX);
        a->packages[a->n_packages++] = val;
        return 0;
    case OPT_NO_VALIDATION:
        a->no_validation = true;
        return 0;
    }
    return sbx_fail(err, 0, "--%s: unknown option", o->name);
}

/* One argument that starts with '-' (and is not "-" or "--"). May consume the next argument as
 * the option's value. Returns like apply. */
static int parse_option(args *a, const opt *tab, int argc, char *const argv[], int *i, sbx_err *err)
{
    const char *s = argv[*i];
    if (s[1] == '-') {
        const char *name = s + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_long(tab, name, len);
        if (!o)
            return sbx_fail(err, 0, "unknown option `--%.*s`", (int)(len > 64 ? 64 : len), name);
        if (!o->has_value) {
            if (eq)
                return sbx_fail(err, 0, "--%s takes no value", o->name);
            return apply(a, o, NULL, err);
        }
        if (eq)
            return apply(a, o, eq + 1, err);
        if (*i + 1 >= argc)
            return sbx_fail(err, 0, "--%s needs a value", o->name);
        return apply(a, o, argv[++*i], err);
    }
    /* Short options: flags may be grouped (-qj4); a value is the rest of the argument or, when
     * nothing is left, the next one. */
    for (const char *p = s + 1; *p; p++) {
        const opt *o = find_short(tab, *p);
        if (!o)
            return sbx_fail(err, 0, "unknown option `-%c`", *p);
        if (!o->has_value) {
            int rc = apply(a, o, NULL, err);
            if (rc != 0)
                return rc;
            continue;
        }
        if (p[1])
            return apply(a, o, p + 1, err);
        if (*i + 1 >= argc)
            return sbx_fail(err, 0, "-%c/--%s needs a value", o->short_name, o->name);
        return apply(a, o, argv[++*i], err);
    }
    return 0;
}

/* A session id argument: the daemon decides which exist; this only refuses what cannot be one
 * (an empty $(sbx session new) that failed, most often). */
static int check_session_id(const char *id, sbx_err *err)
{
    if (!*id)
        return sbx_fail(err, 0, "the session id is empty");
    if (strlen(id) >= SBX_SESSION_ID_MAX)
        return sbx_fail(err, 0, "`%.64s...` is too long for a session id", id);
    for (const char *p = id; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return sbx_fail(err, 0,
                            "`%.64s` is not a session id (it holds a space or control "
                            "character)",
                            id);
    return 0;
}

/* The positional arguments of a session subcommand, after the options were taken out. */
static int session_positionals(args *a, const char *const *pos, size_t n, sbx_err *err)
{
    static const char *const usage[] = {
        [ARGS_SESSION_NEW] = "new takes no arguments",
        [ARGS_SESSION_EXEC] = "exec wants ID and one CODE, FILE or -",
        [ARGS_SESSION_LS] = "ls takes no arguments",
        [ARGS_SESSION_CLOSE] = "close wants ID",
        [ARGS_SESSION_UPLOAD] = "upload wants ID LOCAL GUEST",
        [ARGS_SESSION_DOWNLOAD] = "download wants ID GUEST [LOCAL]",
        [ARGS_SESSION_FILES] = "files wants ID [PATH]",
    };
    size_t min = 1, max = 1;
    switch (a->session_cmd) {
    case ARGS_SESSION_NEW:
    case ARGS_SESSION_LS:
        min = max = 0;
        break;
    case ARGS_SESSION_EXEC:
        /* The code may come from -c instead of an argument. */
        min = a->n_sources ? 1 : 2;
        max = a->n_sources ? 1 : 2;
        break;
    case ARGS_SESSION_CLOSE:
        break;
    case ARGS_SESSION_UPLOAD:
        min = max = 3;
        break;
    case ARGS_SESSION_DOWNLOAD:
    case ARGS_SESSION_FILES:
        max = a->session_cmd == ARGS_SESSION_DOWNLOAD ? 3 : 2;
        min = a->session_cmd == ARGS_SESSION_DOWNLOAD ? 2 : 1;
        break;
    case ARGS_SESSION_NONE:
        return 0;
    }
    if (a->session_cmd == ARGS_SESSION_EXEC && a->n_sources > 1)
        return sbx_fail(err, 0, "exec runs one piece of code; -c was given %zu times",
                        a->n_sources);
    if (n > max)
        return sbx_fail(err, 0, "session %s (got an extra `%.64s`)", usage[a->session_cmd],
                        pos[max]);
    if (n < min)
        return sbx_fail(err, 0, "session %s", usage[a->session_cmd]);
    if (max == 0)
        return 0;
    a->session_id = pos[0];
    if (check_session_id(pos[0], err) < 0)
        return -1;
    switch (a->session_cmd) {
    case ARGS_SESSION_EXEC:
        if (n == 2)
            add_source(a, pos[1], false);
        return 0;
    case ARGS_SESSION_UPLOAD:
        if (!*pos[1])
            return sbx_fail(err, 0, "upload: the local path is empty");
        if (check_guest("upload to", pos[2], pos[2], err) < 0)
            return -1;
        return add_transfer(a->uploads, &a->n_uploads, pos[1], strlen(pos[1]), pos[2],
                            strlen(pos[2]), err);
    case ARGS_SESSION_DOWNLOAD: {
        if (check_guest("download", pos[1], pos[1], err) < 0)
            return -1;
        cleanup_free char *local = NULL;
        if (n == 3 && !*pos[2])
            return sbx_fail(err, 0, "download: the local path is empty");
        if (n == 3)
            local = strdup(pos[2]);
        else if (default_local("download", pos[1], &local, err) < 0)
            return -1;
        if (!local)
            return sbx_fail(err, 0, "out of memory");
        return add_transfer(a->downloads, &a->n_downloads, local, strlen(local), pos[1],
                            strlen(pos[1]), err);
    }
    case ARGS_SESSION_FILES:
        /* "" and "." both mean the sandbox home. */
        if (n == 2 && *pos[1] && check_guest("files", pos[1], pos[1], err) < 0)
            return -1;
        a->guest_dir = n == 2 && *pos[1] ? pos[1] : NULL;
        return 0;
    default:
        return 0;
    }
}

int args_parse(int argc, char *const argv[], args *a, sbx_err *err)
{
    memset(a, 0, sizeof *a);
    a->concurrency = ARGS_CONCURRENCY_DEFAULT;
    *err = (sbx_err){0};
    /* No option adds more than one source, variable or transfer, so argc bounds every array. */
    a->sources = calloc((size_t)argc + 1, sizeof *a->sources);
    a->env = calloc((size_t)argc + 1, sizeof *a->env);
    a->uploads = calloc((size_t)argc + 1, sizeof *a->uploads);
    a->downloads = calloc((size_t)argc + 1, sizeof *a->downloads);
    a->domains = calloc((size_t)argc + 1, sizeof *a->domains);
    a->expose = calloc((size_t)argc + 1, sizeof *a->expose);
    a->packages = calloc((size_t)argc + 1, sizeof *a->packages);
    cleanup_free const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    if (!a->sources || !a->env || !a->uploads || !a->downloads || !a->domains || !a->expose ||
        !a->packages || !pos)
        return sbx_fail(err, 0, "out of memory");
    size_t n_pos = 0;

    int i = 1;
    for (; i < argc; i++) {
        const char *s = argv[i];
        if (s[0] != '-' || !s[1])
            break;
        int rc = parse_option(a, global_opts, argc, argv, &i, err);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    if (i >= argc)
        return sbx_fail(err, 0, "no command given (commands: run, session, status)");
    const opt *tab = NULL;
    if (!strcmp(argv[i], "run")) {
        a->cmd = ARGS_CMD_RUN;
        tab = run_opts;
    } else if (!strcmp(argv[i], "status")) {
        a->cmd = ARGS_CMD_STATUS;
        tab = status_opts;
    } else if (!strcmp(argv[i], "session")) {
        a->cmd = ARGS_CMD_SESSION;
        i++;
        if (i < argc && (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))) {
            a->help = true;
            return 0;
        }
        if (i >= argc)
            return sbx_fail(err, 0, "no session command given (" SESSION_CMD_LIST ")");
        for (size_t k = 0; k < ARRAY_LEN(session_cmds); k++)
            if (!strcmp(argv[i], session_cmds[k].name)) {
                a->session_cmd = session_cmds[k].cmd;
                tab = session_cmds[k].tab;
            }
        if (!tab)
            return sbx_fail(err, 0, "unknown session command `%.64s` (" SESSION_CMD_LIST ")",
                            argv[i]);
    } else {
        return sbx_fail(err, 0, "unknown command `%.64s` (commands: run, session, status)",
                        argv[i]);
    }

    bool options_done = false, stdin_seen = false;
    for (i++; i < argc; i++) {
        const char *s = argv[i];
        if (!options_done && !strcmp(s, "--")) {
            options_done = true;
            continue;
        }
        if (!options_done && s[0] == '-' && s[1]) {
            int rc = parse_option(a, tab, argc, argv, &i, err);
            if (rc != 0)
                return rc < 0 ? -1 : 0;
            continue;
        }
        if (a->cmd == ARGS_CMD_STATUS)
            return sbx_fail(err, 0, "`sbx status` takes no arguments (got `%.64s`)", s);
        if (a->cmd == ARGS_CMD_SESSION)
            pos[n_pos++] = s;
        else
            add_source(a, s, false);
    }
    if (a->n_domains && !a->network)
        return sbx_fail(err, 0,
                        "--allow-domain needs --network (an allowlist narrows network access, "
                        "it does not grant it)");
    if (a->cmd == ARGS_CMD_SESSION)
        return session_positionals(a, pos, n_pos, err);
    if (a->cmd == ARGS_CMD_RUN) {
        if (a->n_sources == 0)
            return sbx_fail(err, 0,
                            "no code to run: give SOURCE arguments, -c CODE, or - to read "
                            "standard input");
        if ((a->n_uploads || a->n_downloads) && a->n_sources != 1)
            return sbx_fail(err, 0,
                            "--upload and --download work with one source (got %zu); use a "
                            "session for more",
                            a->n_sources);
        for (size_t k = 0; k < a->n_sources; k++) {
            if (a->sources[k].inline_only || strcmp(a->sources[k].text, "-"))
                continue;
            if (stdin_seen)
                return sbx_fail(err, 0, "`-` (standard input) can be given only once");
            stdin_seen = true;
        }
    }
    return 0;
}

static void transfers_free(args_transfer *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) {
        free(t[i].local);
        free(t[i].guest);
    }
    free(t);
}

void args_free(args *a)
{
    for (size_t i = 0; a->env && i < a->n_env; i++)
        free(a->env[i].key);
    free(a->env);
    free(a->sources);
    free(a->domains);
    free(a->expose);
    free(a->packages);
    transfers_free(a->uploads, a->n_uploads);
    transfers_free(a->downloads, a->n_downloads);
    memset(a, 0, sizeof *a);
}

const char *args_command_name(const args *a)
{
    static const char *const session_names[] = {
        [ARGS_SESSION_NONE] = "sbx session",
        [ARGS_SESSION_NEW] = "sbx session new",
        [ARGS_SESSION_EXEC] = "sbx session exec",
        [ARGS_SESSION_LS] = "sbx session ls",
        [ARGS_SESSION_CLOSE] = "sbx session close",
        [ARGS_SESSION_UPLOAD] = "sbx session upload",
        [ARGS_SESSION_DOWNLOAD] = "sbx session download",
        [ARGS_SESSION_FILES] = "sbx session files",
    };
    switch (a->cmd) {
    case ARGS_CMD_RUN:
        return "sbx run";
    case ARGS_CMD_STATUS:
        return "sbx status";
    case ARGS_CMD_SESSION:
        return session_names[a->session_cmd];
    default:
        return "sbx";
    }
}
