/* sbx session: the session subcommands, and the checks of local files to move that can be made
 * before a VM is booted for nothing. It never starts a daemon to look for a session. */
#include "sbx.h"

#include <inttypes.h>
#include <sys/stat.h>

/* The checks of a local file to upload that can be made before a VM is booted for nothing. */
int check_upload_source(const char *path, sbx_err *why)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return sbx_fail(why, errno, "`%s`: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return sbx_fail(why, 0, "`%s` is not a regular file", path);
    if ((uint64_t)st.st_size > SBX_MAX_FILE) {
        sbx_fail(why, 0, "`%s` is %lld bytes; the file limit is %u (50 MiB)", path,
                 (long long)st.st_size, SBX_MAX_FILE);
        return -1;
    }
    return 0;
}

/* Where a download is saved: LOCAL, or GUEST's name inside LOCAL when that is an existing
 * directory (as cp does). Its directory must exist: finding that out after the run would
 * waste the run. */
int download_target(const args_transfer *t, char *out, size_t n, sbx_err *why)
{
    struct stat st;
    const char *slash = strrchr(t->guest, '/');
    const char *gbase = slash ? slash + 1 : t->guest;
    size_t ll = strlen(t->local);
    int r;
    if (stat(t->local, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (!*gbase || !strcmp(gbase, "."))
            return sbx_fail(why, 0, "`%s` has no file name to save in directory `%s`", t->guest,
                            t->local);
        r = snprintf(out, n, "%s%s%s", t->local, t->local[ll - 1] == '/' ? "" : "/", gbase);
    } else if (t->local[ll - 1] == '/')
        return sbx_fail(why, 0, "no directory `%s` to save `%s` in", t->local, t->guest);
    else {
        r = snprintf(out, n, "%s", t->local);
    }
    if (r < 0 || (size_t)r >= n)
        return sbx_fail(why, 0, "`%.200s...`: path too long", t->local);
    char dir[PATH_MAX];
    const char *ds = strrchr(out, '/');
    if (!ds)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", ds == out ? 1 : (int)(ds - out), out);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return sbx_fail(why, 0, "no directory `%s` to save `%s` in", dir, t->guest);
    return 0;
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
    return json_pack("{s:o, s:o, s:i, s:i, s:I, s:I, s:I, s:b, s:o, s:o, s:I, s:o, s:o}",
                     "session_id", json_text(s->session_id), "language", json_text(s->language),
                     "memory_mb", (int)s->memory_mb, "idle_timeout_seconds",
                     (int)s->idle_timeout_seconds, "exec_count", (json_int_t)s->exec_count,
                     "created_unix_ms", (json_int_t)s->created_unix_ms, "last_used_unix_ms",
                     (json_int_t)s->last_used_unix_ms, "busy", s->busy, "accelerator",
                     json_text(s->accelerator), "guest_arch", json_text(s->guest_arch), "boot_ms",
                     (json_int_t)s->boot_ms, "network_mode",
                     json_text(s->network_mode[0] ? s->network_mode : "none"), "exposed_ports",
                     json_ports(s->exposed_ports, s->n_exposed_ports));
}

int cmd_session_new(const args *a)
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
    sbx_port_expose ports[SBX_EXPOSE_MAX];
    sbx_session_opts o = {
        .language = a->language,
        .memory_mb = a->memory_mb,
        .timeout_seconds = a->timeout_s,
        .env = env,
        .n_env = a->n_env,
        .idle_timeout_seconds = a->idle_timeout_s,
        .network = network_opts(a, ports),
        .packages = a->packages,
        .n_packages = a->n_packages,
        .skip_package_validation = a->no_validation,
        .on_progress = a->quiet ? NULL : progress_cb,
    };
    int code = packages_check(a, a->language ? a->language : "python", true);
    if (code >= 0)
        return code;
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
    if (!a->quiet && s.n_exposed_ports)
        ports_cb(s.exposed_ports, s.n_exposed_ports, NULL);
    if (!a->quiet && isatty(STDERR_FILENO)) {
        char boot[32];
        fmt_ms(boot, sizeof boot, s.boot_ms);
        fprintf(stderr, "%s session \xc2\xb7 %s \xc2\xb7 boot %s \xc2\xb7 closes after %u s idle\n",
                s.language, s.accelerator[0] ? s.accelerator : "?", boot, s.idle_timeout_seconds);
    }
    return 0;
}

int cmd_session_exec(const args *a)
{
    sbx_err why = {0};
    run_source src;
    if (args_source_resolve(&a->sources[0], NULL, &src, &why) < 0) {
        fprintf(stderr, "sbx: %s (see sbx session --help)\n", why.msg);
        return EXIT_USAGE;
    }
    if (args_source_load(&src, stdin, &why) < 0) {
        fprintf(stderr, "sbx: %s\n", why.msg);
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

int cmd_session_ls(const args *a)
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

int cmd_session_close(const args *a)
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

/* One transfer between a local file and the guest, on an existing session, with a summary line
 * on a terminal: `from` and `to` name the ends as the user sees them; local is the host file. */
typedef int (*transfer_fn)(sbx_client *c, const char *session_id, const char *guest_path,
                           const char *local_path, sbx_error *err);

static int session_transfer(const args *a, transfer_fn op, const char *verb, const char *guest,
                            const char *local, const char *from, const char *to)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    uint64_t t0 = now_ms();
    int rc = connect_existing(a, &c, &e);
    if (rc == 0)
        rc = op(c, a->session_id, guest, local, &e);
    sbx_close(c);
    if (rc < 0)
        return session_error(a, &e);
    struct stat st;
    if (!a->quiet && isatty(STDERR_FILENO) && stat(local, &st) == 0) {
        char size[32], took[32];
        fmt_size(size, sizeof size, (uint64_t)st.st_size);
        fmt_ms(took, sizeof took, now_ms() - t0);
        fprintf(stderr, "sbx: %s %s to %s (%s, %s)\n", verb, from, to, size, took);
    }
    return 0;
}

int cmd_session_upload(const args *a)
{
    sbx_err why = {0};
    const args_transfer *t = &a->uploads[0];
    if (check_upload_source(t->local, &why) < 0) {
        fprintf(stderr, "sbx: %s\n", why.msg);
        return EXIT_USAGE;
    }
    return session_transfer(a, sbx_file_write_path, "uploaded", t->guest, t->local, t->local,
                            t->guest);
}

int cmd_session_download(const args *a)
{
    sbx_err why = {0};
    char target[PATH_MAX];
    const args_transfer *t = &a->downloads[0];
    if (download_target(t, target, sizeof target, &why) < 0) {
        fprintf(stderr, "sbx: %s\n", why.msg);
        return EXIT_USAGE;
    }
    return session_transfer(a, sbx_file_read_path, "downloaded", t->guest, target, t->guest,
                            target);
}

static int entry_cmp(const void *x, const void *y)
{
    return strcmp(((const sbx_file_entry *)x)->name, ((const sbx_file_entry *)y)->name);
}

int cmd_session_files(const args *a)
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
