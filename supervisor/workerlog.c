/* Relaying each worker's stdout/stderr into sbxd's log, bounded: the worker is jailed but
 * reads guest bytes (and may put some in its messages), so its output is treated as untrusted:
 * one fixed buffer per worker, lines cut at a cap, control bytes replaced, a byte budget per
 * worker after which the rest is discarded. */
#include "workerlog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "sbxd.h"

typedef struct relay {
    ev_io io;
    struct relay *next;
    uint64_t vm;
    size_t logged; /* bytes of this worker's lines in sbxd's log so far */
    size_t len;
    bool cut;    /* the current line passed WORKERLOG_LINE_MAX: the rest of it is dropped */
    bool capped; /* WORKERLOG_MAX_BYTES reached, and said so */
    char line[WORKERLOG_LINE_MAX];
} relay;

/* Every live relay: what workerlog_shutdown drains and frees. */
static relay *relays;

static void relay_emit(relay *r)
{
    if (r->len == 0 && !r->cut)
        return;
    if (r->logged < WORKERLOG_MAX_BYTES) {
        slog("vm %llu: %.*s%s", (unsigned long long)r->vm, (int)r->len, r->line,
             r->cut ? " [line cut]" : "");
        r->logged += r->len;
    } else if (!r->capped) {
        r->capped = true;
        slog("vm %llu: the worker wrote over %u KiB of log; the rest of it is dropped",
             (unsigned long long)r->vm, WORKERLOG_MAX_BYTES >> 10);
    }
    r->len = 0;
    r->cut = false;
}

static void relay_end(relay *r)
{
    for (relay **p = &relays; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    relay_emit(r);
    ev_io_stop(EV_DEFAULT, &r->io);
    close(r->io.fd);
    free(r);
}

/* Read what the pipe holds, up to `rounds` reads. Returns false once the relay has ended (EOF
 * or error: freed). */
static bool relay_read(relay *r, int rounds)
{
    char buf[4096];
    while (rounds-- > 0) {
        ssize_t n = read(r->io.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n <= 0) {
            relay_end(r);
            return false;
        }
        for (ssize_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)buf[i];
            if (ch == '\n') {
                relay_emit(r);
            } else if (r->len < sizeof r->line) {
                /* Nothing the worker writes may forge or garble a line of sbxd's log. */
                r->line[r->len++] = (ch < 0x20 && ch != '\t') || ch == 0x7f ? '?' : (char)ch;
            } else {
                r->cut = true;
            }
        }
    }
    return true;
}

static void relay_cb(EV_P_ ev_io *w, int revents)
{
    relay_read(w->data, 16); /* then let the loop serve others; the rest comes next turn */
}

int workerlog_start(int fd, uint64_t vm)
{
    relay *r = calloc(1, sizeof *r);
    if (!r || fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        free(r);
        close(fd);
        return -1;
    }
    r->vm = vm;
    ev_io_init(&r->io, relay_cb, fd, EV_READ);
    r->io.data = r;
    ev_io_start(EV_DEFAULT, &r->io);
    r->next = relays;
    relays = r;
    return 0;
}

void workerlog_shutdown(void)
{
    /* Workers still running when sbxd stops: log what they wrote last, then let go. */
    while (relays) {
        relay *r = relays;
        if (relay_read(r, 64))
            relay_end(r);
    }
}
