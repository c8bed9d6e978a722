/* The one framing implementation: u32 big-endian length | protobuf message.
 * Used on every boundary (client<->sbxd, sbxd<->worker, worker<->agent). The length is checked
 * against the reader's cap before anything is allocated for it. */
#ifndef SBX_FRAME_H
#define SBX_FRAME_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FRAME_HDR 4u

/* Caps per boundary (bytes of one message, header excluded). */
#define FRAME_MAX_CONTROL (3u << 20) /* 1 MiB code + 100 env vars of 8 KiB + overhead */
#define FRAME_MAX_WORKER (4u << 20)  /* a result carries up to 1 MiB + 100 KiB of output */
#define FRAME_MAX_AGENT (3u << 20)

typedef struct {
    uint8_t *buf;
    size_t start; /* first unconsumed byte */
    size_t len;   /* bytes held, from 0 */
    size_t cap;
    size_t max_frame;
} frame_reader;

void frame_reader_init(frame_reader *r, size_t max_frame);
void frame_reader_free(frame_reader *r);
/* Feed bytes that arrived by other means (tests, fuzzers). Returns -1 on ENOMEM. */
int frame_reader_feed(frame_reader *r, const void *data, size_t n);
/* One read(2) into the buffer. Returns bytes read, 0 on EOF, -1 with errno (EAGAIN included). */
ssize_t frame_reader_fill(frame_reader *r, int fd);
/* Next complete frame: 1 and (*data, *len) valid until the next call; 0 when more bytes are
 * needed; -1 with errno=EMSGSIZE when the announced length exceeds the cap (the stream is then
 * unusable and the connection must be closed). */
int frame_reader_next(frame_reader *r, const uint8_t **data, size_t *len);
/* Bytes buffered but not yet returned as frames (a partial frame at EOF is a truncation). */
size_t frame_reader_pending(const frame_reader *r);

typedef struct {
    uint8_t *buf;
    size_t off; /* first unsent byte */
    size_t len;
    size_t cap;
} frame_writer;

void frame_writer_free(frame_writer *w);
/* Append one framed message. -1 with errno ENOMEM / EMSGSIZE (over 4 GiB). */
int frame_writer_put(frame_writer *w, const ProtobufCMessage *msg);
/* Write as much as the fd takes without blocking. 0 when all sent, 1 when bytes remain, -1 on
 * error (EAGAIN is not an error). */
int frame_writer_flush(frame_writer *w, int fd);
static inline size_t frame_writer_queued(const frame_writer *w)
{
    return w->len - w->off;
}

/* Blocking helpers for simple peers. frame_send writes the whole frame (retrying on EINTR and
 * waiting on EAGAIN). frame_recv blocks up to timeout_ms (-1: forever) for one frame: 1 frame,
 * 0 EOF (clean, between frames), -1 error with errno (ETIMEDOUT, EMSGSIZE, EPROTO=truncated). */
int frame_send(int fd, const ProtobufCMessage *msg);
int frame_recv(int fd, frame_reader *r, const uint8_t **data, size_t *len, int timeout_ms);

#endif
