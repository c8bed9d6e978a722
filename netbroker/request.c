/* A request from the worker, as it arrived: one whole seqpacket message. Pure (no I/O), so that
 * the fuzz target (tests/fuzz/fuzz_netbroker.c) runs exactly what the broker runs. */
#include "broker.h"
#include "frame.h"

Sbx__Net__NetMsg *request_parse(const uint8_t *buf, size_t n, const char **why)
{
    if (n > FRAME_HDR + BROKER_MAX_MSG) {
        *why = "a request larger than 64 KiB";
        return NULL;
    }
    if (n < FRAME_HDR) {
        *why = "a message that is not one frame";
        return NULL;
    }
    uint32_t len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
    if (len != n - FRAME_HDR) {
        *why = "a message that is not one frame";
        return NULL;
    }
    Sbx__Net__NetMsg *m = sbx__net__net_msg__unpack(NULL, len, buf + FRAME_HDR);
    if (!m) {
        *why = "not a NetMsg";
        return NULL;
    }
    if ((m->body_case != SBX__NET__NET_MSG__BODY_RESOLVE || !m->resolve) &&
        (m->body_case != SBX__NET__NET_MSG__BODY_CONNECT || !m->connect)) {
        sbx__net__net_msg__free_unpacked(m, NULL);
        *why = "a request that is neither resolve nor connect";
        return NULL;
    }
    return m;
}
