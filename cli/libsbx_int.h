/* libsbx inside: what its rooms (client, autostart, run, session, file, status) share. Never
 * included by a libsbx user: nothing here is part of the API. */
#ifndef SBX_LIBSBX_INT_H
#define SBX_LIBSBX_INT_H

#include "libsbx.h"

#include "common.h"
#include "control.pb-c.h"
#include "frame.h"
#include "paths.h"
#include "sbx_limits.h"

#include <limits.h>
#include <sys/un.h>

_Static_assert(SBX_FILE_MAX == SBX_MAX_FILE, "libsbx.h and sbx_limits.h disagree on file size");

#define STATUS_TIMEOUT_MS 15000

/* Inside libsbx an error is an sbx_err (sbx_fail, sbx_wrap) whose code is the public error kind,
 * plus ERR_TRANSIENT when the same call may succeed if retried. error_out turns it into the
 * public sbx_error, at the API's edge and nowhere else. */
#define ERR_TRANSIENT (1 << 30)

typedef char socket_path_buf[sizeof(((struct sockaddr_un *)0)->sun_path)];

struct sbx_client {
    int fd;
    /* Set once the stream can no longer be trusted to be in step with the daemon (lost
     * connection, bad frame, timeout with a reply possibly still on its way). */
    bool broken;
    uint64_t next_id;
    frame_reader rd;
    socket_path_buf socket_path;
    char server[128];
    uint32_t daemon_uid; /* SO_PEERCRED of the connection */
    /* Where a PortsReady reply to the request in flight goes (set by the call that may get one;
     * client_recv_for hands it over and waits on, or drops it when fn is NULL). */
    sbx_ports_fn on_ports;
    void *ports_userdata; /* also on_progress's */
    /* Where Progress replies to the request in flight go (dropped when NULL). */
    sbx_progress_fn on_progress;
};

static inline void reply_freep(Sbx__Control__Reply **r)
{
    if (*r)
        sbx__control__reply__free_unpacked(*r, NULL);
}
#define cleanup_reply __attribute__((cleanup(reply_freep)))

/* ---- client.c ---- */

void copy_text(char *dst, size_t n, const char *src);
int error_out(int rc, const sbx_err *e, sbx_error *out);
int from_reply_error(sbx_err *e, const Sbx__Control__Error *re);
int reply_error(sbx_client *c, const Sbx__Control__Error *re, sbx_err *err);
int unexpected(sbx_client *c, const Sbx__Control__Reply *r, const char *waiting_for, sbx_err *err);
int unix_connect(const char *path, int *out);
int client_send(sbx_client *c, const Sbx__Control__Request *rq, sbx_err *err);
int client_recv(sbx_client *c, int timeout_ms, Sbx__Control__Reply **out, sbx_err *err);
int client_recv_for(sbx_client *c, uint64_t id, int timeout_ms, Sbx__Control__Reply **out,
                    sbx_err *err);
int client_ready(const sbx_client *c, sbx_err *err);
int request(sbx_client *c, Sbx__Control__Request *rq, int timeout_ms, const char *what,
            Sbx__Control__Reply **out, sbx_err *err);

/* ---- autostart.c ---- */

void socket_dir(const char *sock, char *dir, size_t n);
int autostart(const char *sock, const sbx_connect_opts *o, int *out, sbx_err *err);

/* ---- run.c ---- */

/* Where streamed output goes during one exec. */
struct output_cb {
    sbx_output_fn fn;
    void *userdata;
};

int exec_wait(sbx_client *c, uint64_t id, const struct output_cb *cb, sbx_result *out,
              sbx_err *err);
int check_env(const sbx_env *env, size_t n, sbx_err *err);
Sbx__Files__EnvVar **env_msgs(const sbx_env *env, size_t n);

/* ---- net.c ---- */

/* A request's NetworkRequest, pointing at the caller's strings. */
typedef struct {
    Sbx__Control__NetworkRequest req;
    Sbx__Control__PortExpose ports[SBX_EXPOSE_MAX];
    Sbx__Control__PortExpose *port_ptrs[SBX_EXPOSE_MAX];
} network_msg;

int check_network(const sbx_network *n, sbx_err *err);
Sbx__Control__NetworkRequest *network_request(const sbx_network *n, network_msg *m);
size_t ports_fill(sbx_exposed_port *out, Sbx__Control__ExposedPort *const *in, size_t n);
void ports_deliver(sbx_client *c, const Sbx__Control__PortsReady *p);
void progress_deliver(sbx_client *c, const Sbx__Control__Progress *p);
int report_fill(sbx_network_report **out, const Sbx__Control__NetworkReport *in, sbx_err *err);

/* ---- pkg.c ---- */

/* The package checks of sbx_check_packages, as an sbx_err with a public kind. */
int check_packages(const char *language, const char *const *packages, size_t n, bool skip,
                   sbx_err *err);

/* ---- session.c ---- */

int check_session_id(const char *id, sbx_err *err);

#endif
