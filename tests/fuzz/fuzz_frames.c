/* libFuzzer target for the decoders that read untrusted bytes: the one frame reader, then the
 * protobuf messages of one boundary (chosen at build time: FUZZ_CONTROL, FUZZ_WORKER or
 * FUZZ_AGENT), then the validators a decoded request goes through. The input is split into
 * reads at sizes taken from its first byte, so partial frames are exercised too. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "frame.h"
#include "sbx_limits.h"

#include "agent.pb-c.h"
#include "control.pb-c.h"
#include "worker.pb-c.h"

#if defined(FUZZ_CONTROL)
#define CAP FRAME_MAX_CONTROL
static void decode(const uint8_t *d, size_t n)
{
    sbx_err lim = {0};
    Sbx__Control__Request *r = sbx__control__request__unpack(NULL, n, d);
    if (r) {
        if (r->body_case == SBX__CONTROL__REQUEST__BODY_RUN) {
            limits_check_code(r->run->code.data, r->run->code.len, &lim);
            limits_language_ok(r->run->language);
            for (size_t i = 0; i < r->run->n_env; i++)
                limits_check_env(r->run->env[i]->key, r->run->env[i]->value, &lim);
        } else if (r->body_case == SBX__CONTROL__REQUEST__BODY_FILE_WRITE) {
            limits_check_guest_path(r->file_write->path, &lim);
        } else if (r->body_case == SBX__CONTROL__REQUEST__BODY_FILE_READ) {
            limits_check_guest_path(r->file_read->path, &lim);
        }
        sbx__control__request__free_unpacked(r, NULL);
    }
    Sbx__Control__Reply *p = sbx__control__reply__unpack(NULL, n, d);
    if (p)
        sbx__control__reply__free_unpacked(p, NULL);
}
#elif defined(FUZZ_WORKER)
#define CAP FRAME_MAX_WORKER
static void decode(const uint8_t *d, size_t n)
{
    Sbx__Worker__FromWorker *f = sbx__worker__from_worker__unpack(NULL, n, d);
    if (f)
        sbx__worker__from_worker__free_unpacked(f, NULL);
    Sbx__Worker__ToWorker *t = sbx__worker__to_worker__unpack(NULL, n, d);
    if (t)
        sbx__worker__to_worker__free_unpacked(t, NULL);
}
#elif defined(FUZZ_AGENT)
#define CAP FRAME_MAX_AGENT
static void decode(const uint8_t *d, size_t n)
{
    sbx_err lim = {0};
    Sbx__Agent__GuestMsg *g = sbx__agent__guest_msg__unpack(NULL, n, d);
    if (g)
        sbx__agent__guest_msg__free_unpacked(g, NULL);
    Sbx__Agent__HostMsg *h = sbx__agent__host_msg__unpack(NULL, n, d);
    if (h) {
        if (h->body_case == SBX__AGENT__HOST_MSG__BODY_EXEC)
            limits_check_code(h->exec->code.data, h->exec->code.len, &lim);
        sbx__agent__host_msg__free_unpacked(h, NULL);
    }
}
#else
#error "define FUZZ_CONTROL, FUZZ_WORKER or FUZZ_AGENT"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    frame_reader r;
    /* A small cap as well as the real one: the oversize path must be reached too. */
    frame_reader_init(&r, step & 1 ? 256 : CAP);
    for (size_t off = 0; off < size; off += step) {
        size_t n = size - off < step ? size - off : step;
        if (frame_reader_feed(&r, data + off, n) < 0)
            break;
        const uint8_t *f;
        size_t len;
        int rc;
        while ((rc = frame_reader_next(&r, &f, &len)) == 1)
            decode(f, len);
        if (rc < 0)
            break; /* oversized: the connection would be closed */
    }
    frame_reader_free(&r);
    return 0;
}
