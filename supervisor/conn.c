/* sbxd's connections (conn.h): reading frames under a cap and writing with write interest only
 * while queued, for clients and worker links alike. It owns no peer and frees nothing but its
 * buffers: what a connection belongs to, and when that may be freed, is the owner's business. */
#include "conn.h"

#include <errno.h>
#include <unistd.h>

/* Hand out the frames in the buffer. false when the owner stopped reading or input ended. */
static bool deliver(conn *c)
{
    const uint8_t *f;
    size_t len;
    int r;
    while (c->fd >= 0 && c->reading && (r = frame_reader_next(&c->rd, &f, &len)) != 0) {
        if (r < 0) {
            conn_stop_reading(c);
            c->ops->ended(c->owner, EMSGSIZE);
            return false;
        }
        if (!c->ops->frame(c->owner, f, len))
            return false;
    }
    return c->fd >= 0;
}

static void read_cb(EV_P_ ev_io *w, int revents)
{
    conn *c = w->data;
    ssize_t n = frame_reader_fill(&c->rd, c->fd);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        int e = n == 0 ? 0 : errno;
        conn_stop_reading(c);
        c->ops->ended(c->owner, e);
        return;
    }
    if (deliver(c) && c->ops->after_read)
        c->ops->after_read(c->owner);
}

static void flush(conn *c)
{
    int rc = frame_writer_flush(&c->wr, c->fd);
    if (rc < 0) {
        int e = errno;
        ev_io_stop(EV_DEFAULT, &c->wio);
        c->ops->write_failed(c->owner, e);
    } else if (rc == 1) {
        ev_io_start(EV_DEFAULT, &c->wio);
    } else {
        ev_io_stop(EV_DEFAULT, &c->wio);
        if (c->ops->drained)
            c->ops->drained(c->owner);
    }
}

static void write_cb(EV_P_ ev_io *w, int revents)
{
    flush(w->data);
}

void conn_init(conn *c, int fd, size_t max_frame, const conn_ops *ops, void *owner)
{
    c->fd = fd;
    c->ops = ops;
    c->owner = owner;
    frame_reader_init(&c->rd, max_frame);
    c->wr = (frame_writer){0};
    ev_io_init(&c->rio, read_cb, fd, EV_READ);
    ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    c->reading = true;
    ev_io_start(EV_DEFAULT, &c->rio);
}

int conn_send(conn *c, const ProtobufCMessage *m)
{
    if (c->fd < 0) {
        errno = ENOTCONN;
        return -1;
    }
    if (frame_writer_put(&c->wr, m) < 0)
        return -1;
    if (!ev_is_active(&c->wio))
        flush(c);
    return 0;
}

size_t conn_queued(const conn *c)
{
    return frame_writer_queued(&c->wr);
}

size_t conn_partial(const conn *c)
{
    return frame_reader_pending(&c->rd);
}

void conn_stop_reading(conn *c)
{
    c->reading = false;
    ev_io_stop(EV_DEFAULT, &c->rio);
}

void conn_drain(conn *c)
{
    if (c->fd < 0)
        return;
    c->reading = true;
    for (;;) {
        ssize_t n = frame_reader_fill(&c->rd, c->fd);
        if (!deliver(c))
            return;
        if (n <= 0)
            break;
    }
    conn_stop_reading(c);
}

void conn_close(conn *c)
{
    if (c->fd < 0)
        return;
    c->reading = false;
    ev_io_stop(EV_DEFAULT, &c->rio);
    ev_io_stop(EV_DEFAULT, &c->wio);
    close(c->fd);
    c->fd = -1;
    frame_reader_free(&c->rd);
    frame_writer_free(&c->wr);
}
