/* One connection type for sbxd's peers, the control socket's clients and the links to workers:
 * a frame reader with a cap, and a writer that asks libev for write readiness only while output
 * is queued. The owner embeds a conn and hears of it through conn_ops. */
#ifndef SBX_CONN_H
#define SBX_CONN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

typedef struct {
    /* One complete frame (valid during the call). false: stop reading, the owner is closing. */
    bool (*frame)(void *owner, const uint8_t *data, size_t len);
    /* No more input: err 0 at EOF, else the errno (EMSGSIZE: a frame over the cap). */
    void (*ended)(void *owner, int err);
    /* A write failed (errno): what was queued is lost. */
    void (*write_failed)(void *owner, int err);
    /* Optional: the last queued byte was written. */
    void (*drained)(void *owner);
    /* Optional: after each read whose frames were all handed out (deadlines, activity). */
    void (*after_read)(void *owner);
} conn_ops;

typedef struct {
    int fd; /* -1 once closed */
    ev_io rio, wio;
    frame_reader rd;
    frame_writer wr;
    const conn_ops *ops;
    void *owner;
    bool reading;
} conn;

/* Take a connected, non-blocking socket; reading starts at once. */
void conn_init(conn *c, int fd, size_t max_frame, const conn_ops *ops, void *owner);
/* Queue one frame and write what the socket takes now. -1 with errno when it cannot be queued
 * (a failed write is reported through write_failed instead). */
int conn_send(conn *c, const ProtobufCMessage *m);
size_t conn_queued(const conn *c);
/* Bytes of a frame that has begun and is not complete. */
size_t conn_partial(const conn *c);
void conn_stop_reading(conn *c);
/* Read what is left in the socket without waiting (the peer has exited): frames, then EOF. */
void conn_drain(conn *c);
/* Stop its watchers, close its socket and free its buffers: no callbacks after this. The conn
 * itself is the owner's memory. */
void conn_close(conn *c);

#endif
