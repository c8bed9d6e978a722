/* A minimal libsbx program: run print(1+1) in a sandbox, stream its output, show the result.
 * Build: make build/example. */
#include "libsbx.h"

#include <inttypes.h>
#include <stdio.h>

static void on_output(sbx_stream stream, const char *data, size_t len, void *userdata)
{
    fprintf(stream == SBX_STREAM_STDERR ? stderr : stdout, "[%s] %.*s",
            stream == SBX_STREAM_STDERR ? "err" : "out", (int)len, data);
}

int main(void)
{
    sbx_client *c;
    sbx_error err;
    /* NULL: the default socket; AUTOSTART: start a private daemon if none is listening. */
    if (sbx_connect(NULL, SBX_CONNECT_AUTOSTART, &c, &err) < 0) {
        fprintf(stderr, "connect: %s: %s\n", sbx_error_kind_name(err.kind), err.message);
        return 1;
    }
    sbx_run_opts opts = {.language = "python", .code = "print(1+1)", .on_output = on_output};
    sbx_result r;
    int rc = sbx_run(c, &opts, &r, &err);
    sbx_close(c);
    if (rc < 0) {
        fprintf(stderr, "run: %s%s: %s\n", sbx_error_kind_name(err.kind),
                err.transient ? " (transient)" : "", err.message);
        return 1;
    }
    printf("exit_code=%d timed_out=%d stdout=%zu bytes stderr=%zu bytes\n", r.exit_code,
           r.timed_out, r.stdout_len, r.stderr_len);
    printf("accelerator=%s start_mode=%s warm_pool_hit=%d\n", r.accelerator, r.start_mode,
           r.warm_pool_hit);
    printf("timing: setup %" PRIu64 " ms, boot %" PRIu64 " ms, execute %" PRIu64
           " ms, total %" PRIu64 " ms\n",
           r.timing.setup_ms, r.timing.boot_ms, r.timing.execute_ms, r.timing.total_ms);
    printf("guest time %" PRIu64 " ms, host cpu %" PRIu64 " ms, peak memory %" PRIu64 " MB\n",
           r.execution_time_ms, r.external_cpu_time_ms, r.external_memory_peak_mb);
    sbx_result_free(&r);
    return 0;
}
