/* The control socket and the life of each client: accept (bounded by max_connections, with a
 * back-off when the process is out of descriptors), authenticate by SO_PEERCRED, read frames
 * (conn.c) under a deadline (Hello within hello_timeout_seconds, any frame once begun within
 * frame_timeout_seconds), queue replies (a client that lets more than max_client_buffer_mb pile
 * up is dropped).
 *
 * A connection is never freed under a caller. Closing one only marks it dead, stops its
 * watchers and closes its socket; replies to a dead connection are dropped. The scheduler,
 * sessions and pool learn that it is gone, and its memory is released, from an ev_prepare
 * watcher: after every callback of that loop iteration has returned. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "ledger.h"
#include "paths.h"
#include "sbxd.h"

#define CLIENT_LINGER_S 5.     /* a closing client has this long to take its last reply */
#define REFUSED_MAX_FRAME 4096 /* what a refused uid may send before it is told no */
/* Connections of uids that are not allowed, at once: each only ever gets its "no". */
#define REFUSED_MAX_CONNECTIONS 16

struct client {
    conn conn;
    ev_timer deadline; /* Hello, a frame in progress, or the last reply of a closing client */
    client_peer peer;
    bool closing; /* close once the queue is flushed */
    bool dead;    /* closed: waiting for the reaper */
    client *next;
};

static int listen_fd = -1;
static ev_io listen_io;
static ev_timer accept_backoff;
static ev_prepare reaper;
static client *clients;   /* live */
static client *graveyard; /* dead, freed by the reaper */
static unsigned nclients, nrefused_uid;
static uint64_t refused_total, dropped_total;

unsigned control_clients(void)
{
    return nclients;
}

void control_counters(uint64_t *refused, uint64_t *dropped)
{
    *refused = refused_total;
    *dropped = dropped_total;
}

uid_t control_client_uid(const client *c)
{
    return c->peer.uid;
}

static void reap_cb(EV_P_ ev_prepare *w, int revents)
{
    while (graveyard) {
        client *c = graveyard;
        graveyard = c->next;
        /* Their replies to it have been dropped since it died; now they forget it. */
        run_client_gone(c);
        session_client_gone(c);
        ledger_client_gone(c);
        pool_client_gone(c);
        free(c);
    }
    ev_prepare_stop(EV_A_ w);
}

/* Close now, free later (see the top of this file). Safe to call from anywhere, any number of
 * times. */
static void client_close(client *c)
{
    if (c->dead)
        return;
    c->dead = true;
    conn_close(&c->conn);
    ev_timer_stop(EV_DEFAULT, &c->deadline);
    for (client **p = &clients; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    nclients--;
    nrefused_uid -= c->peer.refused;
    c->next = graveyard;
    graveyard = c;
    ev_prepare_start(EV_DEFAULT, &reaper);
    sbxd_activity();
}

static void set_deadline(client *c, double seconds)
{
    ev_timer_stop(EV_DEFAULT, &c->deadline);
    ev_timer_set(&c->deadline, seconds, 0.);
    ev_timer_start(EV_DEFAULT, &c->deadline);
}

static void deadline_cb(EV_P_ ev_timer *w, int revents)
{
    client *c = w->data;
    if (c->closing)
        slog("client pid %d: did not take its last reply in time; closing", (int)c->peer.pid);
    else if (!c->peer.helloed)
        slog("client pid %d: no Hello within %u s; closing", (int)c->peer.pid,
             cfg.hello_timeout_seconds);
    else
        slog("client pid %d: a frame stayed incomplete for %u s; closing", (int)c->peer.pid,
             cfg.frame_timeout_seconds);
    client_close(c);
}

void control_send(client *c, Sbx__Control__Reply *r)
{
    ledger_reply(c, r);
    if (!c || c->dead)
        return;
    size_t add = protobuf_c_message_get_packed_size(&r->base) + FRAME_HDR;
    if (conn_queued(&c->conn) + add > (size_t)cfg.max_client_buffer_mb << 20) {
        slog("client pid %d: does not read its replies (%zu bytes queued, limit %u MiB); "
             "dropping it",
             (int)c->peer.pid, conn_queued(&c->conn), cfg.max_client_buffer_mb);
        dropped_total++;
        client_close(c);
        return;
    }
    if (conn_send(&c->conn, &r->base) < 0) {
        slog("client pid %d: cannot queue reply: %s; closing", (int)c->peer.pid, strerror(errno));
        client_close(c);
    }
}

/* After a read: Hello has its own deadline from accept; later, only a frame in progress has
 * one (a helloed client may stay quiet as long as it likes). */
static void update_deadline(client *c)
{
    if (c->closing || !c->peer.helloed)
        return;
    if (conn_partial(&c->conn) == 0)
        ev_timer_stop(EV_DEFAULT, &c->deadline);
    else if (!ev_is_active(&c->deadline))
        set_deadline(c, cfg.frame_timeout_seconds);
}

static void start_closing(client *c)
{
    if (c->dead) /* its reply could not be sent: already closed */
        return;
    c->closing = true;
    conn_stop_reading(&c->conn);
    if (!conn_queued(&c->conn))
        client_close(c);
    else
        set_deadline(c, CLIENT_LINGER_S);
}

/* ---- the connection's side (conn_ops) ---- */

static bool client_frame(void *owner, const uint8_t *data, size_t len)
{
    client *c = owner;
    switch (request_handle(c, &c->peer, data, len)) {
    case REQUEST_OK:
        break;
    case REQUEST_HELLOED:
        c->peer.helloed = true;
        ev_timer_stop(EV_DEFAULT, &c->deadline);
        break;
    case REQUEST_CLOSE_AFTER_REPLY:
        start_closing(c);
        break;
    case REQUEST_CLOSE:
        client_close(c);
        break;
    }
    return !c->dead && !c->closing;
}

static void client_ended(void *owner, int err)
{
    client *c = owner;
    if (err == EMSGSIZE)
        slog("client pid %d: frame over the %zu-byte limit; closing", (int)c->peer.pid,
             c->conn.rd.max_frame);
    else if (conn_partial(&c->conn))
        slog("client pid %d: connection closed inside a frame", (int)c->peer.pid);
    client_close(c);
}

static void client_write_failed(void *owner, int err)
{
    client *c = owner;
    /* A client that went away is no news; anything else is. */
    if (err != EPIPE && err != ECONNRESET)
        slog("client pid %d: write: %s; closing", (int)c->peer.pid, strerror(err));
    client_close(c);
}

static void client_drained(void *owner)
{
    client *c = owner;
    if (c->closing)
        client_close(c);
}

static void client_after_read(void *owner)
{
    client *c = owner;
    sbxd_activity();
    update_deadline(c);
}

static const conn_ops client_conn = {
    .frame = client_frame,
    .ended = client_ended,
    .write_failed = client_write_failed,
    .drained = client_drained,
    .after_read = client_after_read,
};

/* Our own user and root always; others only when listed in allowed_uids. */
static bool uid_allowed(uid_t uid)
{
    if (uid == getuid() || uid == 0)
        return true;
    for (const char *p = cfg.allowed_uids; *p;) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (end != p && v == uid)
            return true;
        p = *end ? end + 1 : end;
    }
    return false;
}

client *control_adopt(int fd, uid_t uid, pid_t pid)
{
    client *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->peer.uid = uid;
    c->peer.pid = pid;
    ev_timer_init(&c->deadline, deadline_cb, cfg.hello_timeout_seconds, 0.);
    c->deadline.data = c;
    c->next = clients;
    clients = c;
    nclients++;
    sbxd_activity();
    if (!uid_allowed(uid)) {
        /* Answer its Hello (with its id) rather than hang up while it is still writing. */
        slog("refused client pid %d uid %u (not allowed)", (int)pid, (unsigned)uid);
        c->peer.refused = true;
        nrefused_uid++;
    }
    conn_init(&c->conn, fd, c->peer.refused ? REFUSED_MAX_FRAME : FRAME_MAX_CONTROL, &client_conn,
              c);
    ev_timer_start(EV_DEFAULT, &c->deadline);
    return c;
}

/* Whether a new connection from uid may be taken. When max_connections are open, the oldest
 * connection still without a Hello makes way: a client that connects and speaks at once always
 * gets in, however many idle sockets someone holds open. Uids that are not allowed share a few
 * places of their own. */
static bool room_for(uid_t uid)
{
    if (!uid_allowed(uid))
        return nrefused_uid < REFUSED_MAX_CONNECTIONS && nclients < cfg.max_connections;
    if (nclients < cfg.max_connections)
        return true;
    client *oldest = NULL;
    for (client *c = clients; c; c = c->next) /* newest first */
        if (!c->peer.helloed && !c->closing)
            oldest = c;
    if (!oldest)
        return false;
    slog("client pid %d: closed without a Hello to make room (max_connections %u)",
         (int)oldest->peer.pid, cfg.max_connections);
    client_close(oldest);
    return true;
}

static void backoff_cb(EV_P_ ev_timer *w, int revents)
{
    ev_io_start(EV_A_ & listen_io);
}

static void accept_cb(EV_P_ ev_io *w, int revents)
{
    /* A bounded batch per wake-up, so a flood of connects cannot starve the rest of the loop. */
    for (int i = 0; i < 64; i++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The pending connection stays in the backlog and would wake us at once again:
                 * stop listening for a moment instead of spinning. */
                slog("accept: %s; pausing new connections for 100 ms", strerror(errno));
                ev_io_stop(EV_A_ & listen_io);
                ev_timer_set(&accept_backoff, 0.1, 0.);
                ev_timer_start(EV_A_ & accept_backoff);
            }
            return;
        }
        struct ucred uc;
        socklen_t ul = sizeof uc;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0) {
            close(fd);
            continue;
        }
        if (!room_for(uc.uid)) {
            if (refused_total++ % 100 == 0)
                slog("refused a connection from pid %d uid %u: %u connections open "
                     "(max_connections %u); %llu refused so far",
                     (int)uc.pid, (unsigned)uc.uid, nclients, cfg.max_connections,
                     (unsigned long long)refused_total);
            close(fd);
            continue;
        }
        control_adopt(fd, uc.uid, uc.pid);
    }
}

static void start_accepting(int fd)
{
    ev_io_init(&listen_io, accept_cb, fd, EV_READ);
    ev_io_start(EV_DEFAULT, &listen_io);
    ev_timer_init(&accept_backoff, backoff_cb, 0.1, 0.);
    ev_prepare_init(&reaper, reap_cb);
}

/* Socket activation (systemd's sbxd.socket): LISTEN_PID names us and LISTEN_FDS is 1, so fd 3
 * is the control socket, already listening. 1: taken (cfg.socket gets its path); 0: not
 * activated; -1 with err: activated with something that is not one listening Unix socket. */
static bool activated;

static int take_activated(sbx_err *err)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds || strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (strcmp(fds, "1"))
        return sbx_fail(err, EINVAL, "socket activation passed %s sockets; sbxd takes one", fds);
    const int fd = 3;
    int type = 0, listening = 0;
    socklen_t l1 = sizeof type, l2 = sizeof listening;
    struct sockaddr_un sa = {0};
    socklen_t sl = sizeof sa;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l1) < 0 || type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l2) < 0 || !listening ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0 || sa.sun_family != AF_UNIX)
        return sbx_fail(err, EINVAL,
                        "socket activation: fd 3 is not a listening Unix stream socket");
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return sbx_fail(err, errno, "socket activation: fd 3: %s", strerror(errno));
    if (sl > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0])
        snprintf(cfg.socket, sizeof cfg.socket, "%.*s",
                 (int)(sl - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
    listen_fd = fd;
    activated = true;
    return 1;
}

int control_listen(sbx_err *err)
{
    int a = take_activated(err);
    if (a < 0)
        return -1;
    if (a > 0) {
        slog("control socket from socket activation: %s", cfg.socket);
        start_accepting(listen_fd);
        return 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(cfg.socket) >= sizeof sa.sun_path)
        return sbx_fail(err, ENAMETOOLONG, "socket path `%s` is too long", cfg.socket);
    strcpy(sa.sun_path, cfg.socket);
    char dir[sizeof sa.sun_path];
    strcpy(dir, cfg.socket);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (paths_mkdir_p(dir, 0700) < 0)
            return sbx_fail(err, errno, "create `%s`: %s", dir, strerror(errno));
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_fail(err, errno, "socket: %s", strerror(errno));
    /* The socket file is born with mode 0660 (no chmod afterwards, which would follow a symlink
     * planted at its path). */
    mode_t old_mask = umask(0117);
    int brc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    if (brc < 0 && e == EADDRINUSE) {
        /* A live daemon answers; a stale file from a dead one does not. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            umask(old_mask);
            close(fd);
            return sbx_fail(err, EADDRINUSE, "another sbxd already serves `%s`", cfg.socket);
        }
        struct stat st;
        if (lstat(cfg.socket, &st) == 0 && !S_ISSOCK(st.st_mode)) {
            umask(old_mask);
            close(fd);
            return sbx_fail(err, EEXIST, "`%s` exists and is not a socket; not removing it",
                            cfg.socket);
        }
        unlink(cfg.socket);
        brc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
        e = errno;
    }
    umask(old_mask);
    if (brc < 0) {
        close(fd);
        return sbx_fail(err, e, "bind `%s`: %s", cfg.socket, strerror(e));
    }
    if (listen(fd, 128) < 0) {
        close(fd);
        return sbx_fail(err, errno, "listen `%s`: %s", cfg.socket, strerror(errno));
    }
    listen_fd = fd;
    start_accepting(fd);
    return 0;
}

void control_shutdown_clients(void)
{
    while (clients)
        client_close(clients);
    reap_cb(EV_DEFAULT, &reaper, 0);
}

void control_shutdown(void)
{
    control_shutdown_clients();
    if (listen_fd >= 0) {
        ev_io_stop(EV_DEFAULT, &listen_io);
        ev_timer_stop(EV_DEFAULT, &accept_backoff);
        close(listen_fd);
        if (!activated) /* systemd's socket stays for the next start */
            unlink(cfg.socket);
        listen_fd = -1;
    }
}
