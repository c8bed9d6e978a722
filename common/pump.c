/* See pump.h. */
#include "pump.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int pump_move(int from, int to, pump_buf *p)
{
    if (!p->eof && p->len < PUMP_BUF) {
        ssize_t r = read(from, p->data + p->len, PUMP_BUF - p->len);
        if (r > 0)
            p->len += (size_t)r;
        else if (r == 0)
            p->eof = true;
        else if (errno != EAGAIN && errno != EINTR)
            return -1;
    }
    if (p->len) {
        ssize_t w = send(to, p->data, p->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (w > 0) {
            memmove(p->data, p->data + w, p->len - (size_t)w);
            p->len -= (size_t)w;
        }
    }
    if (p->eof && !p->len && !p->shut) {
        shutdown(to, SHUT_WR);
        p->shut = true;
    }
    return 0;
}

short pump_events_from(const pump_buf *p)
{
    return (short)(!p->eof && p->len < PUMP_BUF ? POLLIN : 0);
}

short pump_events_to(const pump_buf *p)
{
    return (short)(p->len ? POLLOUT : 0);
}
