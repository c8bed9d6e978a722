/* Framing: round trips, short reads, oversized and corrupt frames. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "control.pb-c.h"
#include "frame.h"
#include "sbx_limits.h"
#include "worker.pb-c.h"
#include "agent.pb-c.h"

static Sbx__Control__Request *make_run(const char *code)
{
    static Sbx__Control__RunRequest run;
    static Sbx__Control__Request req;
    sbx__control__run_request__init(&run);
    sbx__control__request__init(&req);
    run.language = "python";
    run.code.data = (uint8_t *)code;
    run.code.len = strlen(code);
    req.id = 42;
    req.body_case = SBX__CONTROL__REQUEST__BODY_RUN;
    req.run = &run;
    return &req;
}

static void test_roundtrip_byte_by_byte(void **state)
{
    frame_writer w = {0};
    assert_int_equal(frame_writer_put(&w, &make_run("print(1)")->base), 0);
    assert_int_equal(frame_writer_put(&w, &make_run("print(2)")->base), 0);
    frame_reader r;
    frame_reader_init(&r, FRAME_MAX_CONTROL);
    const uint8_t *d;
    size_t len;
    int frames = 0;
    for (size_t i = 0; i < w.len; i++) {
        assert_int_equal(frame_reader_feed(&r, w.buf + i, 1), 0);
        int rc;
        while ((rc = frame_reader_next(&r, &d, &len)) == 1) {
            Sbx__Control__Request *m = sbx__control__request__unpack(NULL, len, d);
            assert_non_null(m);
            assert_int_equal(m->id, 42);
            assert_int_equal(m->body_case, SBX__CONTROL__REQUEST__BODY_RUN);
            assert_memory_equal(m->run->code.data, frames ? "print(2)" : "print(1)", 8);
            sbx__control__request__free_unpacked(m, NULL);
            frames++;
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(frames, 2);
    assert_int_equal(frame_reader_pending(&r), 0);
    frame_reader_free(&r);
    frame_writer_free(&w);
}

static void test_oversized_rejected_before_allocation(void **state)
{
    frame_reader r;
    frame_reader_init(&r, 1024);
    uint8_t hdr[4] = {0x7f, 0xff, 0xff, 0xff}; /* announces 2 GiB */
    assert_int_equal(frame_reader_feed(&r, hdr, 4), 0);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_reader_next(&r, &d, &len), -1);
    assert_int_equal(errno, EMSGSIZE);
    assert_true(r.cap < 1u << 20); /* nothing sized by the peer's number */
    frame_reader_free(&r);
}

static void test_exact_cap_accepted(void **state)
{
    frame_reader r;
    frame_reader_init(&r, 16);
    uint8_t f[4 + 16] = {0, 0, 0, 16};
    assert_int_equal(frame_reader_feed(&r, f, sizeof f), 0);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_reader_next(&r, &d, &len), 1);
    assert_int_equal(len, 16);
    uint8_t g[4] = {0, 0, 0, 17};
    assert_int_equal(frame_reader_feed(&r, g, sizeof g), 0);
    assert_int_equal(frame_reader_next(&r, &d, &len), -1);
    frame_reader_free(&r);
}

static void test_corrupt_payload_fails_decode(void **state)
{
    uint8_t junk[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff};
    frame_reader r;
    frame_reader_init(&r, FRAME_MAX_CONTROL);
    frame_reader_feed(&r, junk, sizeof junk);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_reader_next(&r, &d, &len), 1);
    assert_null(sbx__control__request__unpack(NULL, len, d));
    frame_reader_free(&r);
}

static void test_truncated_stream_over_socket(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uint8_t part[] = {0, 0, 0, 10, 1, 2, 3};
    assert_int_equal(write(sv[0], part, sizeof part), (ssize_t)sizeof part);
    close(sv[0]);
    frame_reader r;
    frame_reader_init(&r, FRAME_MAX_CONTROL);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_recv(sv[1], &r, &d, &len, 1000), -1);
    assert_int_equal(errno, EPROTO);
    frame_reader_free(&r);
    close(sv[1]);
}

static void test_send_recv_and_timeout(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    frame_reader r;
    frame_reader_init(&r, FRAME_MAX_CONTROL);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_recv(sv[1], &r, &d, &len, 50), -1);
    assert_int_equal(errno, ETIMEDOUT);
    assert_int_equal(frame_send(sv[0], &make_run("x=1")->base), 0);
    assert_int_equal(frame_recv(sv[1], &r, &d, &len, 1000), 1);
    Sbx__Control__Request *m = sbx__control__request__unpack(NULL, len, d);
    assert_non_null(m);
    assert_int_equal(m->run->code.len, 3);
    sbx__control__request__free_unpacked(m, NULL);
    close(sv[0]);
    assert_int_equal(frame_recv(sv[1], &r, &d, &len, 1000), 0); /* clean EOF */
    frame_reader_free(&r);
    close(sv[1]);
}

static void test_large_frame_grows_buffer(void **state)
{
    size_t n = 1u << 20;
    char *code = malloc(n + 1);
    memset(code, 'a', n);
    code[n] = '\0';
    frame_writer w = {0};
    assert_int_equal(frame_writer_put(&w, &make_run(code)->base), 0);
    frame_reader r;
    frame_reader_init(&r, FRAME_MAX_CONTROL);
    assert_int_equal(frame_reader_feed(&r, w.buf, w.len), 0);
    const uint8_t *d;
    size_t len;
    assert_int_equal(frame_reader_next(&r, &d, &len), 1);
    Sbx__Control__Request *m = sbx__control__request__unpack(NULL, len, d);
    assert_int_equal(m->run->code.len, n);
    sbx__control__request__free_unpacked(m, NULL);
    frame_reader_free(&r);
    frame_writer_free(&w);
    free(code);
}

/* The largest request the limits allow must fit the frame cap on every hop it takes. */
static void test_largest_valid_request_fits_all_caps(void **state)
{
    static char keys[SBX_MAX_ENV][SBX_MAX_ENV_KEY + 1];
    char *value = malloc(SBX_MAX_ENV_VALUE + 1);
    memset(value, 'v', SBX_MAX_ENV_VALUE);
    value[SBX_MAX_ENV_VALUE] = '\0';
    char *code = malloc(SBX_MAX_CODE + 1);
    memset(code, 'c', SBX_MAX_CODE);
    code[SBX_MAX_CODE] = '\0';
    Sbx__Files__EnvVar env[SBX_MAX_ENV], *envp[SBX_MAX_ENV];
    Sbx__Files__EnvVar aenv[SBX_MAX_ENV], *aenvp[SBX_MAX_ENV];
    for (unsigned i = 0; i < SBX_MAX_ENV; i++) {
        memset(keys[i], 'K', SBX_MAX_ENV_KEY);
        keys[i][0] = (char)('A' + i % 26);
        sbx__files__env_var__init(&env[i]);
        env[i].key = keys[i];
        env[i].value = value;
        envp[i] = &env[i];
        sbx__files__env_var__init(&aenv[i]);
        aenv[i].key = keys[i];
        aenv[i].value = value;
        aenvp[i] = &aenv[i];
    }
    Sbx__Control__Request *req = make_run(code);
    req->run->n_env = SBX_MAX_ENV;
    req->run->env = envp;
    req->run->language = "javascript";
    req->run->timeout_seconds = SBX_TIMEOUT_MAX;
    req->run->memory_mb = SBX_MEMORY_MAX;
    assert_true(protobuf_c_message_get_packed_size(&req->base) <= FRAME_MAX_CONTROL);

    Sbx__Worker__ExecRequest ex = SBX__WORKER__EXEC_REQUEST__INIT;
    ex.language = "javascript";
    ex.code = req->run->code;
    ex.timeout_ms = SBX_TIMEOUT_MAX * 1000u;
    ex.n_env = SBX_MAX_ENV;
    ex.env = envp;
    Sbx__Worker__ToWorker tw = SBX__WORKER__TO_WORKER__INIT;
    tw.id = UINT64_MAX;
    tw.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
    tw.exec = &ex;
    assert_true(protobuf_c_message_get_packed_size(&tw.base) <= FRAME_MAX_WORKER);

    Sbx__Agent__Exec ae = SBX__AGENT__EXEC__INIT;
    ae.language = "javascript";
    ae.code = req->run->code;
    ae.timeout_ms = SBX_TIMEOUT_MAX * 1000u;
    ae.n_env = SBX_MAX_ENV;
    ae.env = aenvp;
    ae.max_stdout = SBX_MAX_STDOUT;
    ae.max_stderr = SBX_MAX_STDERR;
    Sbx__Agent__HostMsg hm = SBX__AGENT__HOST_MSG__INIT;
    hm.id = UINT64_MAX;
    hm.body_case = SBX__AGENT__HOST_MSG__BODY_EXEC;
    hm.exec = &ae;
    assert_true(protobuf_c_message_get_packed_size(&hm.base) <= FRAME_MAX_AGENT);

    /* And the largest result fits the worker->sbxd and sbxd->client hops. */
    Sbx__Control__ExecResult res = SBX__CONTROL__EXEC_RESULT__INIT;
    res.stdout.data = (uint8_t *)code;
    res.stdout.len = SBX_MAX_STDOUT;
    res.stderr.data = (uint8_t *)code;
    res.stderr.len = SBX_MAX_STDERR;
    res.accelerator = "tcg";
    res.start_mode = "cold";
    Sbx__Worker__FromWorker fw = SBX__WORKER__FROM_WORKER__INIT;
    fw.id = UINT64_MAX;
    fw.body_case = SBX__WORKER__FROM_WORKER__BODY_RESULT;
    fw.result = &res;
    assert_true(protobuf_c_message_get_packed_size(&fw.base) <= FRAME_MAX_WORKER);
    free(value);
    free(code);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_byte_by_byte),
        cmocka_unit_test(test_oversized_rejected_before_allocation),
        cmocka_unit_test(test_exact_cap_accepted),
        cmocka_unit_test(test_corrupt_payload_fails_decode),
        cmocka_unit_test(test_truncated_stream_over_socket),
        cmocka_unit_test(test_send_recv_and_timeout),
        cmocka_unit_test(test_large_frame_grows_buffer),
        cmocka_unit_test(test_largest_valid_request_fits_all_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
