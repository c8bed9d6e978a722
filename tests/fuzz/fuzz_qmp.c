/* libFuzzer target for the worker's QMP reader (vmworker/qmp.c): QEMU's side of the socket is
 * the input. A VM that took over its QEMU controls those bytes, and the worker parses them. The
 * first byte picks the path: draining unasked events first, and an over-long line first (to
 * reach the line cap, which is larger than the inputs libFuzzer makes). Then one command's reply
 * is read, and its value looked at the way balloon.c does. */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qmp.h"

static void put(int fd, const void *d, size_t n)
{
    const char *p = d;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    int buf = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if (mode & 2) {
        static char pad[QMP_LINE_MAX + 16];
        memset(pad, 'x', sizeof pad);
        put(sv[1], pad, sizeof pad);
    }
    put(sv[1], data, size);
    shutdown(sv[1], SHUT_WR); /* QEMU has said all it will say */
    static qmp_conn q;
    q.fd = sv[0];
    q.len = 0;
    q.next_id = 1;
    if (!(mode & 1) || qmp_drain(&q) == 0) {
        sbx_err err = {0};
        json_t *ret = NULL;
        if (qmp_exec(&q, "query-balloon", NULL, &ret, now_ms() + 1000, &err) == 0) {
            (void)json_number_value(json_object_get(ret, "actual"));
            json_t *st = json_object_get(ret, "stats");
            (void)json_number_value(json_object_get(st, "stat-available-memory"));
            json_decref(ret);
        }
    }
    qmp_close(&q);
    close(sv[1]);
    return 0;
}
