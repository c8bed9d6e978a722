/* QMP client: the few steps a worker needs (greeting, negotiation, a command and its reply). It
 * never parses a line longer than QMP_LINE_MAX, and never talks to a peer that is not our QEMU. */
#include "qmp.h"

#include <poll.h>
#include <string.h>
#include <unistd.h>

/* The next line from QEMU, NUL-terminated in q->buf[0..], its length in *n; the caller consumes
 * it with line_consume. */
static int line_next(qmp_conn *q, size_t *n, uint64_t deadline, sbx_err *err)
{
    for (;;) {
        char *nl = memchr(q->buf, '\n', q->len);
        if (nl) {
            *nl = '\0';
            *n = (size_t)(nl - q->buf);
            return 0;
        }
        if (q->len >= QMP_LINE_MAX)
            return sbx_fail(err, EMSGSIZE, "QMP: a line longer than %u bytes", QMP_LINE_MAX);
        uint64_t now = now_ms();
        if (now >= deadline)
            return sbx_fail(err, ETIMEDOUT, "QMP: no reply in time");
        struct pollfd p = {.fd = q->fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(deadline - now > 60000 ? 60000 : deadline - now));
        if (r < 0 && errno != EINTR)
            return sbx_fail(err, errno, "QMP: poll: %s", strerror(errno));
        if (r <= 0)
            continue;
        ssize_t got = read(q->fd, q->buf + q->len, QMP_LINE_MAX - q->len);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0)
            return sbx_fail(err, errno, "QMP: read: %s", strerror(errno));
        if (got == 0)
            return sbx_fail(err, EPIPE, "QMP: QEMU closed the connection");
        q->len += (size_t)got;
    }
}

static void line_consume(qmp_conn *q, size_t n)
{
    memmove(q->buf, q->buf + n + 1, q->len - n - 1);
    q->len -= n + 1;
}

/* One JSON object from QEMU; events are skipped when skip_events. */
static json_t *read_msg(qmp_conn *q, bool skip_events, uint64_t deadline, sbx_err *err)
{
    for (;;) {
        size_t n = 0;
        if (line_next(q, &n, deadline, err) < 0)
            return NULL;
        json_error_t je;
        /* Numbers as doubles: QEMU prints an unsupported statistic as 2^64-1, which jansson's
         * integers cannot hold (every number we read is exact as a double). */
        json_t *m = json_loadb(q->buf, n, JSON_DECODE_INT_AS_REAL, &je);
        if (!m || !json_is_object(m)) {
            json_decref(m);
            sbx_fail(err, EPROTO, "QMP: not a JSON object from QEMU (%s): %.80s",
                     m ? "another value" : je.text, q->buf);
            line_consume(q, n);
            return NULL;
        }
        line_consume(q, n);
        if (skip_events && json_object_get(m, "event")) {
            json_decref(m);
            continue;
        }
        return m;
    }
}

static int send_all(int fd, const char *s, size_t n, sbx_err *err)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return sbx_fail(err, errno, "QMP: write: %s", strerror(errno));
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int qmp_open(qmp_conn *q, qemu_vm *vm, uint64_t deadline, sbx_err *err)
{
    q->len = 0;
    q->next_id = 1;
    q->version[0] = '\0';
    q->fd = qemu_connect(vm, vm->qmp_sock, deadline, err);
    if (q->fd < 0)
        return -1;
    json_t *g = read_msg(q, true, deadline, err);
    if (!g) {
        sbx_wrap(err, "greeting");
        goto fail;
    }
    json_t *v = json_object_get(json_object_get(g, "QMP"), "version");
    json_t *qv = json_object_get(v, "qemu");
    if (!json_is_object(qv)) {
        json_decref(g);
        sbx_fail(err, EPROTO, "QMP: no greeting from QEMU");
        goto fail;
    }
    snprintf(q->version, sizeof q->version, "%lld.%lld.%lld",
             (long long)json_number_value(json_object_get(qv, "major")),
             (long long)json_number_value(json_object_get(qv, "minor")),
             (long long)json_number_value(json_object_get(qv, "micro")));
    json_decref(g);
    if (qmp_exec(q, "qmp_capabilities", NULL, NULL, deadline, err) < 0)
        goto fail;
    return 0;
fail:
    qmp_close(q);
    return -1;
}

int qmp_exec(qmp_conn *q, const char *cmd, json_t *args, json_t **ret, uint64_t deadline,
             sbx_err *err)
{
    if (ret)
        *ret = NULL;
    unsigned id = q->next_id++;
    json_t *m = json_pack("{s:s, s:I}", "execute", cmd, "id", (json_int_t)id);
    if (!m) {
        json_decref(args);
        return sbx_fail(err, ENOMEM, "QMP: out of memory");
    }
    if (args && json_object_set_new(m, "arguments", args) < 0) {
        json_decref(m);
        return sbx_fail(err, ENOMEM, "QMP: out of memory");
    }
    cleanup_free char *line = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    if (!line)
        return sbx_fail(err, ENOMEM, "QMP: out of memory");
    if (send_all(q->fd, line, strlen(line), err) < 0 || send_all(q->fd, "\n", 1, err) < 0)
        return -1;
    for (;;) {
        json_t *r = read_msg(q, true, deadline, err);
        if (!r)
            return sbx_wrap(err, "%s", cmd);
        json_t *rid = json_object_get(r, "id");
        if (!json_is_number(rid) || json_number_value(rid) != (double)id) {
            json_decref(r); /* a reply to something else: not ours */
            continue;
        }
        json_t *e = json_object_get(r, "error");
        if (e) {
            const char *desc = json_string_value(json_object_get(e, "desc"));
            sbx_fail(err, EIO, "QMP %s: %.400s", cmd, desc ? desc : "error");
            json_decref(r);
            return -1;
        }
        json_t *val = json_object_get(r, "return");
        if (!val) {
            json_decref(r);
            return sbx_fail(err, EPROTO, "QMP %s: a reply without a return value", cmd);
        }
        if (ret)
            *ret = json_incref(val);
        json_decref(r);
        return 0;
    }
}

int qmp_drain(qmp_conn *q)
{
    /* poll and read only: the worker's seccomp filter has no recv. */
    struct pollfd p = {.fd = q->fd, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, 0);
        if (r == 0)
            return 0; /* all read */
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        ssize_t got = read(q->fd, q->buf + q->len, QMP_LINE_MAX - q->len);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0)
            break; /* closed, or broken */
        q->len += (size_t)got;
        char *nl;
        while ((nl = memchr(q->buf, '\n', q->len)))
            line_consume(q, (size_t)(nl - q->buf));
        if (q->len >= QMP_LINE_MAX)
            break; /* a line longer than any event */
    }
    qmp_close(q);
    return -1;
}

void qmp_close(qmp_conn *q)
{
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
    q->len = 0;
}
