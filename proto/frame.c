/* Length-prefixed protobuf framing, shared by all programs. A length is checked against the
 * reader's cap before anything is allocated for it, never after. */
#include "frame.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void frame_reader_init(frame_reader *r, size_t max_frame)
{
    memset(r, 0, sizeof *r);
    r->max_frame = max_frame;
}

void frame_reader_free(frame_reader *r)
{
    free(r->buf);
    memset(r, 0, sizeof *r);
}

static int reader_reserve(frame_reader *r, size_t extra)
{
    if (r->start > 0 && (r->start == r->len || r->len + extra > r->cap)) {
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->start = 0;
    }
    if (r->len + extra <= r->cap)
        return 0;
    size_t ncap = r->cap ? r->cap : 4096;
    while (ncap < r->len + extra)
        ncap *= 2;
    uint8_t *nb = realloc(r->buf, ncap);
    if (!nb)
        return -1;
    r->buf = nb;
    r->cap = ncap;
    return 0;
}

int frame_reader_feed(frame_reader *r, const void *data, size_t n)
{
    if (reader_reserve(r, n) < 0)
        return -1;
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return 0;
}

ssize_t frame_reader_fill(frame_reader *r, int fd)
{
    /* Callers take every complete frame after each fill, so the buffer holds at most one capped
     * frame plus one read: a peer cannot make it grow without bound. */
    size_t want = 65536;
    if (reader_reserve(r, want) < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, r->buf + r->len, r->cap - r->len);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        r->len += (size_t)n;
    return n;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int frame_reader_next(frame_reader *r, const uint8_t **data, size_t *len)
{
    size_t avail = r->len - r->start;
    if (avail < FRAME_HDR)
        return 0;
    uint32_t n = be32(r->buf + r->start);
    if (n > r->max_frame) {
        errno = EMSGSIZE;
        return -1;
    }
    if (avail - FRAME_HDR < n)
        return 0;
    *data = r->buf + r->start + FRAME_HDR;
    *len = n;
    r->start += FRAME_HDR + n;
    return 1;
}

size_t frame_reader_pending(const frame_reader *r)
{
    return r->len - r->start;
}

void frame_writer_free(frame_writer *w)
{
    free(w->buf);
    memset(w, 0, sizeof *w);
}

int frame_writer_put(frame_writer *w, const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > UINT32_MAX - FRAME_HDR) {
        errno = EMSGSIZE;
        return -1;
    }
    if (w->off == w->len)
        w->off = w->len = 0;
    if (w->len + FRAME_HDR + n > w->cap) {
        if (w->off > 0) {
            memmove(w->buf, w->buf + w->off, w->len - w->off);
            w->len -= w->off;
            w->off = 0;
        }
        size_t ncap = w->cap ? w->cap : 4096;
        while (ncap < w->len + FRAME_HDR + n)
            ncap *= 2;
        if (ncap > w->cap) {
            uint8_t *nb = realloc(w->buf, ncap);
            if (!nb) {
                errno = ENOMEM;
                return -1;
            }
            w->buf = nb;
            w->cap = ncap;
        }
    }
    uint8_t *p = w->buf + w->len;
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
    protobuf_c_message_pack(msg, p + FRAME_HDR);
    w->len += FRAME_HDR + n;
    return 0;
}

int frame_writer_flush(frame_writer *w, int fd)
{
    while (w->off < w->len) {
        ssize_t n = write(fd, w->buf + w->off, w->len - w->off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return -1;
        }
        w->off += (size_t)n;
    }
    w->off = w->len = 0;
    return 0;
}

int frame_send(int fd, const ProtobufCMessage *msg)
{
    frame_writer w = {0};
    if (frame_writer_put(&w, msg) < 0)
        return -1;
    int rc;
    while ((rc = frame_writer_flush(&w, fd)) == 1) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
    }
    frame_writer_free(&w);
    return rc;
}

int frame_recv(int fd, frame_reader *r, const uint8_t **data, size_t *len, int timeout_ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int rc = frame_reader_next(r, data, len);
        if (rc != 0)
            return rc;
        int wait = -1;
        if (timeout_ms >= 0) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            long el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
            if (el >= timeout_ms) {
                errno = ETIMEDOUT;
                return -1;
            }
            wait = timeout_ms - (int)el;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (pr == 0)
            continue;
        ssize_t n = frame_reader_fill(r, fd);
        if (n == 0) {
            if (frame_reader_pending(r) == 0)
                return 0;
            errno = EPROTO;
            return -1;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
    }
}
