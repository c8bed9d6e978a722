/* sbx run: one source streamed, one with files through a session that a closer thread ends on
 * ^C, several on a pool of threads. It never leaves a session it opened behind: closed at the
 * end, on errors and on signals. */
#include "sbx.h"

#include <pthread.h>
#include <signal.h>

static int run_one(const args *a, const sbx_env *env, run_source *src)
{
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_result r = {0};
    sbx_port_expose ports[SBX_EXPOSE_MAX];
    sbx_run_opts o = {
        .language = src->language,
        .code = src->code,
        .code_len = src->code_len,
        .timeout_seconds = a->timeout_s,
        .memory_mb = a->memory_mb,
        .env = env,
        .n_env = a->n_env,
        .on_output = a->json ? NULL : stream_cb,
        .network = network_opts(a, ports),
        .on_ports = a->quiet ? NULL : ports_cb,
        .packages = a->packages,
        .n_packages = a->n_packages,
        .skip_package_validation = a->no_validation,
        .on_progress = a->quiet ? NULL : progress_cb,
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
    sbx_port_expose ports[SBX_EXPOSE_MAX];
    sbx_session_opts so = {
        .language = src->language,
        .memory_mb = a->memory_mb,
        .timeout_seconds = a->timeout_s,
        .env = env,
        .n_env = a->n_env,
        .idle_timeout_seconds = idle > SBX_IDLE_TIMEOUT_MAX ? SBX_IDLE_TIMEOUT_MAX : idle,
        .network = network_opts(a, ports),
        .packages = a->packages,
        .n_packages = a->n_packages,
        .skip_package_validation = a->no_validation,
        .on_progress = a->quiet ? NULL : progress_cb,
    };
    if (connect_client(a, !a->quiet, &c, &e) < 0 || sbx_session_open(c, &so, &info, &e) < 0) {
        sbx_close(c);
        return report_error(a, src, &e);
    }
    closer_set(cl, info.session_id);
    if (!a->quiet && info.n_exposed_ports)
        ports_cb(info.exposed_ports, info.n_exposed_ports, NULL);

    int code = -1;
    for (size_t i = 0; i < a->n_uploads && code < 0; i++) {
        const args_transfer *t = &a->uploads[i];
        if (sbx_file_write_path(c, info.session_id, t->guest, t->local, &e) < 0) {
            error_wrap(&e, "upload `%.100s` to `%.100s`", t->local, t->guest);
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
    if (!r.guest_arch[0])
        snprintf(r.guest_arch, sizeof r.guest_arch, "%s", info.guest_arch);
    if (!r.n_exposed_ports) {
        memcpy(r.exposed_ports, info.exposed_ports, sizeof r.exposed_ports);
        r.n_exposed_ports = info.n_exposed_ports;
    }
    code = report_result(a, a->json ? json_result(src, &r) : NULL, &r, src->language);
    sbx_result_free(&r);
    return download_failed && code == 0 ? EXIT_SANDBOX : code;
}

static int run_session(const args *a, const sbx_env *env, run_source *src)
{
    sbx_err why = {0};
    for (size_t i = 0; i < a->n_uploads; i++)
        if (check_upload_source(a->uploads[i].local, &why) < 0) {
            fprintf(stderr, "sbx: --upload: %s\n", why.msg);
            return EXIT_USAGE;
        }
    cleanup_free char(*targets)[PATH_MAX] = calloc(a->n_downloads ? a->n_downloads : 1, PATH_MAX);
    if (!targets) {
        fprintf(stderr, "sbx: out of memory\n");
        return EXIT_SANDBOX;
    }
    for (size_t i = 0; i < a->n_downloads; i++)
        if (download_target(&a->downloads[i], targets[i], PATH_MAX, &why) < 0) {
            fprintf(stderr, "sbx: --download: %s\n", why.msg);
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
        sbx_port_expose ports[SBX_EXPOSE_MAX];
        sbx_run_opts o = {
            .language = j->src.language,
            .code = j->src.code,
            .code_len = j->src.code_len,
            .timeout_seconds = p->a->timeout_s,
            .memory_mb = p->a->memory_mb,
            .env = p->env,
            .n_env = p->a->n_env,
            .network = network_opts(p->a, ports),
            .on_ports = p->a->quiet ? NULL : ports_cb,
            .packages = p->a->packages,
            .n_packages = p->a->n_packages,
            .skip_package_validation = p->a->no_validation,
            .on_progress = p->a->quiet ? NULL : progress_cb,
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
int cmd_run(const args *a)
{
    sbx_err why = {0};
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
        if (args_source_resolve(&a->sources[i], a->language, &jobs[i].src, &why) < 0) {
            fprintf(stderr, "sbx: %s (see sbx run --help)\n", why.msg);
            code = EXIT_USAGE;
        } else if (args_source_load(&jobs[i].src, stdin, &why) < 0) {
            fprintf(stderr, "sbx: %s\n", why.msg);
            code = EXIT_USAGE;
        } else {
            /* Each source's language decides its specs' syntax and list. */
            code = packages_check(a, jobs[i].src.language, i == 0);
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
