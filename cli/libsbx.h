/* libsbx: the C client of sbxd's control socket. Everything `sbx` does goes through here, so any
 * other program gets the same behaviour (autostart, validation, error kinds) by linking it.
 *
 * Conventions: functions return 0 on success and -1 on failure with `*err` filled in (err may be
 * NULL when the caller does not care why). A client is a single blocking connection; it is not
 * thread-safe, but separate clients may be used from separate threads at the same time. */
#ifndef SBX_LIBSBX_H
#define SBX_LIBSBX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error kinds. 1..12 carry the daemon's ErrorKind numbers (proto/control.proto) unchanged, so a
 * binding can forward them; the client-side kinds start at 100. */
typedef enum {
    SBX_ERR_NONE = 0,
    SBX_ERR_VM_CONFIG = 1,     /* permanent: the request breaks a limit or names a bad value */
    SBX_ERR_VM_TIMEOUT = 2,    /* transient: the VM did not boot in time */
    SBX_ERR_VM_CAPACITY = 3,   /* transient: every VM slot busy and the queue wait expired */
    SBX_ERR_COMMUNICATION = 4, /* transient: worker, QEMU, guest or the connection died */
    SBX_ERR_GUEST_AGENT = 5,   /* permanent: the guest agent refused the request */
    SBX_ERR_PACKAGE_NOT_ALLOWED = 6, /* permanent: a package is not on the allowlist */
    SBX_ERR_SNAPSHOT = 7,            /* transient: a snapshot could not be made or restored */
    SBX_ERR_SESSION_CLOSED = 8,      /* permanent: the session is gone */
    SBX_ERR_PROTOCOL = 9,            /* permanent: malformed frame or protocol version mismatch */
    SBX_ERR_ASSET = 10,              /* permanent: kernel or image missing or unusable */
    SBX_ERR_INTERNAL = 11,           /* transient: a daemon-side failure with no better kind */
    SBX_ERR_PERMISSION = 12,         /* permanent: this user may not use the daemon */
    SBX_ERR_CONNECT = 100,           /* no daemon could be reached (or started, with autostart) */
} sbx_error_kind;

/* Why a call failed. */
typedef struct {
    int kind;          /* an sbx_error_kind; unknown daemon kinds are passed through as numbers */
    bool transient;    /* true when the same call may succeed if retried */
    char message[512]; /* human-readable, NUL-terminated, names the thing that failed */
} sbx_error;

/* The exception name the reference project uses for a kind ("VmConfigError", "VmTimeoutError",
 * ...); "SandboxError" for kinds it does not know. Never NULL, static storage. */
const char *sbx_error_kind_name(int kind);

/* ---- connecting ---- */

/* A connection to sbxd that has completed the Hello exchange. Opaque. */
typedef struct sbx_client sbx_client;

/* sbx_connect flag: when no daemon listens on the socket, start a private one for this user
 * (detached, `sbxd --socket PATH --idle-exit-seconds 300`, logging to sbxd.log beside the socket)
 * and wait up to 20 s for it. Concurrent callers start at most one daemon between them. The binary
 * is $EXEC_SANDBOX_SBXD, else `sbxd` beside the running executable, else `sbxd` from $PATH. */
#define SBX_CONNECT_AUTOSTART 1u

/* Called with short progress notes ("starting sandbox daemon ...") during a slow connect. */
typedef void (*sbx_progress_fn)(const char *message, void *userdata);

/* Everything sbx_connect_ex accepts; zero-initialise and set what you need. */
typedef struct {
    const char *socket_path;     /* NULL: $EXEC_SANDBOX_SOCKET, else the per-user default */
    unsigned flags;              /* SBX_CONNECT_* */
    const char *client_name;     /* sent in Hello, e.g. "mytool/1.2"; NULL: "libsbx/<version>" */
    sbx_progress_fn on_progress; /* optional */
    void *userdata;              /* passed to on_progress */
} sbx_connect_opts;

/* Connect to sbxd at socket_path (NULL: the default) and say Hello. flags: SBX_CONNECT_*.
 * On success *out holds a client to release with sbx_close. */
int sbx_connect(const char *socket_path, unsigned flags, sbx_client **out, sbx_error *err);
/* The same, with a progress callback and a client name. */
int sbx_connect_ex(const sbx_connect_opts *opts, sbx_client **out, sbx_error *err);
/* The socket path this client connected to. */
const char *sbx_client_socket(const sbx_client *c);
/* The server string the daemon sent in its Hello reply (e.g. "sbxd/0.1.0"). */
const char *sbx_client_server(const sbx_client *c);
/* False once the connection is lost or out of step with the daemon (after a transient
 * SBX_ERR_COMMUNICATION or an SBX_ERR_PROTOCOL): close it and connect again. */
bool sbx_client_usable(const sbx_client *c);
/* Close the connection and free the client. NULL is accepted. */
void sbx_close(sbx_client *c);

/* ---- running code ---- */

/* Which output stream a chunk belongs to. */
typedef enum {
    SBX_STREAM_STDOUT = 1,
    SBX_STREAM_STDERR = 2,
} sbx_stream;

/* Called on the caller's thread, from inside sbx_run, for each piece of output. The bytes are
 * valid only during the call and are not NUL-terminated. Keep it quick: the run waits on it. */
typedef void (*sbx_output_fn)(sbx_stream stream, const char *data, size_t len, void *userdata);

/* One environment variable for the code. */
typedef struct {
    const char *key;
    const char *value;
} sbx_env;

/* A run request; zero-initialise and set what you need. */
typedef struct {
    const char *language;     /* "python", "javascript" or "raw"; NULL: "python" */
    const char *code;         /* the code; may not contain NUL bytes */
    size_t code_len;          /* its length in bytes; 0: strlen(code) */
    uint32_t timeout_seconds; /* 0: the daemon's default (30); else 1..300 */
    uint32_t memory_mb;       /* 0: the daemon's default (256); else 128..2048 */
    const sbx_env *env;       /* n_env variables, at most 100 */
    size_t n_env;
    /* When set, output is streamed: on_output receives every byte of stdout and stderr exactly
     * once, as it is produced, plus (once the result arrives) any tail the daemon put in the
     * result without streaming it. The result still holds the full captured output. */
    sbx_output_fn on_output;
    void *userdata; /* passed to on_output */
} sbx_run_opts;

/* Where the time of a run went, as measured by the daemon. */
typedef struct {
    uint64_t setup_ms;   /* resources prepared before the VM started */
    uint64_t boot_ms;    /* VM start until the guest agent answered */
    uint64_t execute_ms; /* the code's run, seen from the host */
    uint64_t total_ms;   /* request received until result sent */
} sbx_timing;

/* What a run produced. Free with sbx_result_free. */
typedef struct {
    char *stdout_buf;           /* captured stdout (at most 1 MiB), NUL-terminated for convenience;
                                   may itself contain NULs and invalid UTF-8: use stdout_len */
    size_t stdout_len;          /* its length in bytes */
    char *stderr_buf;           /* captured stderr (at most 100 KiB), like stdout_buf */
    size_t stderr_len;          /* its length in bytes */
    int exit_code;              /* the code's exit status; 128+n when killed by signal n */
    bool timed_out;             /* the code was stopped because it hit its timeout */
    bool stdout_truncated;      /* stdout went over its limit and was cut */
    bool stderr_truncated;      /* stderr went over its limit and was cut */
    uint64_t execution_time_ms; /* run time measured inside the guest */
    uint64_t external_cpu_time_ms;    /* CPU time of the VM measured by the host */
    uint64_t external_memory_peak_mb; /* peak memory of the VM measured by the host */
    sbx_timing timing;                /* the phases of the request */
    char accelerator[16];             /* "kvm" or "tcg" */
    bool warm_pool_hit;               /* a pre-booted VM served the run */
    char start_mode[16];              /* how the VM was started, e.g. "cold" */
} sbx_result;

/* Run code in a fresh VM and wait for its result. The request is checked against the limits
 * first (SBX_ERR_VM_CONFIG without contacting the daemon). A connection lost during the run is
 * a transient SBX_ERR_COMMUNICATION and leaves the client unusable: close it and reconnect.
 * On success *out must be released with sbx_result_free; on failure *out is zeroed. */
int sbx_run(sbx_client *c, const sbx_run_opts *opts, sbx_result *out, sbx_error *err);
/* Release what a result owns and zero it. Safe on a zeroed result. */
void sbx_result_free(sbx_result *r);

/* ---- daemon status ---- */

/* The daemon's view of itself. Strings are NUL-terminated, cut to fit. */
typedef struct {
    char version[64];            /* sbxd version */
    char accelerator[16];        /* accelerator in force: "kvm", "tcg", or "" before the probe */
    char accel_reason[256];      /* why that accelerator was chosen */
    uint32_t running_vms;        /* VMs running now */
    uint32_t queued;             /* requests waiting for a VM slot */
    uint32_t max_concurrent_vms; /* the slot count */
    uint64_t runs_total;         /* runs served since start */
    uint64_t uptime_ms;          /* time since start */
    char images_dir[1024];       /* where the daemon looks for kernel and images */
    uint32_t pid;                /* the daemon's process id */
} sbx_status_info;

/* Ask the daemon for its status. */
int sbx_status(sbx_client *c, sbx_status_info *out, sbx_error *err);

/* ---- helpers ---- */

/* A copy of len bytes as valid UTF-8, each invalid sequence replaced by U+FFFD (embedded NULs
 * are kept), NUL-terminated; *out_len (if not NULL) gets its length. For callers that must emit
 * text (JSON) from output bytes. NULL when out of memory; free() the result. */
char *sbx_utf8_sanitize(const char *data, size_t len, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif
