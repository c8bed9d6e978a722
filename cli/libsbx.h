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

/* The API is all libsbx exports: it is built with hidden visibility, and libsbx.a keeps only
 * what is marked so global. */
#define SBX_API __attribute__((visibility("default")))

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
    SBX_ERR_PACKAGE_INSTALL = 13,    /* installing the packages failed: permanent (no such
                                        version, no wheel) or transient (index unreachable) */
    SBX_ERR_CONNECT = 100,           /* no daemon could be reached (or started, with autostart) */
    SBX_ERR_LOCAL_FILE = 101,        /* a local file could not be read or written (the message
                                        names it); nothing is wrong with the sandbox */
} sbx_error_kind;

/* Why a call failed. */
typedef struct {
    int kind;          /* an sbx_error_kind; unknown daemon kinds are passed through as numbers */
    bool transient;    /* true when the same call may succeed if retried */
    char message[512]; /* human-readable, NUL-terminated, names the thing that failed */
} sbx_error;

/* The exception name the reference project uses for a kind ("VmConfigError", "VmTimeoutError",
 * ...); "SandboxError" for kinds it does not know. Never NULL, static storage. */
SBX_API const char *sbx_error_kind_name(int kind);

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
 * On success *out holds a client to release with sbx_close.
 * The implicit per-user socket (no socket_path, no $EXEC_SANDBOX_SOCKET) is trusted only when its
 * directory belongs to this user and nobody else can write it, and the daemon on it runs as this
 * user or root (SO_PEERCRED); otherwise SBX_ERR_PERMISSION, before a single byte is sent. A socket
 * named by socket_path or $EXEC_SANDBOX_SOCKET may be served by any uid: sbx_status reports it. */
SBX_API int sbx_connect(const char *socket_path, unsigned flags, sbx_client **out, sbx_error *err);
/* The same, with a progress callback and a client name. */
SBX_API int sbx_connect_ex(const sbx_connect_opts *opts, sbx_client **out, sbx_error *err);
/* The socket path this client connected to. */
SBX_API const char *sbx_client_socket(const sbx_client *c);
/* The server string the daemon sent in its Hello reply (e.g. "sbxd/0.1.0"). */
SBX_API const char *sbx_client_server(const sbx_client *c);
/* False once the connection is lost or out of step with the daemon (after a transient
 * SBX_ERR_COMMUNICATION or an SBX_ERR_PROTOCOL): close it and connect again. */
SBX_API bool sbx_client_usable(const sbx_client *c);
/* Close the connection and free the client. NULL is accepted. */
SBX_API void sbx_close(sbx_client *c);

/* ---- network ---- */

/* A run or a session has no network interface at all unless it asks for one: exposed ports (the
 * host reaches the guest; the guest reaches nothing), an allowlist (TLS to the named domains and
 * their subdomains), or open network (any public address). Everything is enforced on the host. */

#define SBX_EXPOSE_MAX 10   /* exposed ports per run or session */
#define SBX_DOMAINS_MAX 100 /* allowed domains per run or session */
#define SBX_BLOCKED_MAX 32  /* refusals a network report lists at most */

/* One guest port to reach from the host, on 127.0.0.1 only. */
typedef struct {
    uint16_t internal; /* the guest's port, 1..65535 */
    uint16_t external; /* the host's port, 1024..65535; 0: the OS chooses one */
    bool udp;          /* false: tcp */
} sbx_port_expose;

/* The network of a run or a session; all zero (the default): no network interface. */
typedef struct {
    bool allow_network;                 /* outbound access; with domains, TLS to those only */
    const char *const *allowed_domains; /* n_allowed_domains names (RFC 1035, <= 253 bytes, at
                                           most 100); they need allow_network */
    size_t n_allowed_domains;
    const sbx_port_expose *expose; /* n_expose ports, at most 10 */
    size_t n_expose;
} sbx_network;

/* A guest port the daemon made reachable. Strings are NUL-terminated. */
typedef struct {
    uint16_t internal;
    uint16_t external;
    char host[64];    /* "127.0.0.1" */
    char protocol[8]; /* "tcp" or "udp" */
    char url[96];     /* "http://127.0.0.1:EXTERNAL" for tcp, "" for udp */
} sbx_exposed_port;

/* Called on the caller's thread, once, as soon as the exposed ports of a run or a session are
 * bound: before the code's output, so a caller can connect while the code still runs. The array
 * is valid only during the call. */
typedef void (*sbx_ports_fn)(const sbx_exposed_port *ports, size_t n, void *userdata);

/* One refused attempt of the code to reach something. */
typedef struct {
    char what[256]; /* a name, an address or a protocol */
    uint32_t port;  /* 0 when it does not apply */
    char reason[128];
} sbx_blocked;

/* What the network of a run did. */
typedef struct {
    char mode[16]; /* "ports", "allowlist" or "open" ("none" with no interface) */
    size_t n_allowed_domains;
    char allowed_domains[SBX_DOMAINS_MAX][256];
    size_t n_blocked; /* the first refusals, at most SBX_BLOCKED_MAX */
    sbx_blocked blocked[SBX_BLOCKED_MAX];
    uint32_t blocked_total; /* every refusal, counted */
} sbx_network_report;

/* Parse an expose spec as `sbx --expose` takes it, "INTERNAL[:EXTERNAL][/tcp|/udp]"
 * (SBX_ERR_VM_CONFIG with a message naming the spec when it is not one). */
SBX_API int sbx_parse_expose(const char *spec, sbx_port_expose *out, sbx_error *err);

/* ---- packages ---- */

/* A run or a session may ask for packages to be installed before its code runs. Python specs
 * are `name==version`, JavaScript ones `name@version` or `@scope/name@version`; the name alone
 * is unpinned (allowed, but such an install is never cached). Only exact versions: no ranges,
 * extras, URLs or tags with other characters. Names must be among their language's 10,000 most
 * downloaded (lists compiled into libsbx and sbxd) unless validation is skipped; sbxd checks
 * again, and also skips the lists when its enable_package_validation is false. */

#define SBX_PACKAGES_MAX 50 /* packages per run or session */

/* Check specs as sbxd will, without a daemon: language "python" or "javascript" (NULL:
 * python), at most SBX_PACKAGES_MAX, each well-formed, no package twice (Python names compare
 * in their PEP 503 form): SBX_ERR_VM_CONFIG otherwise. Unless skip_validation, a name off its
 * list is SBX_ERR_PACKAGE_NOT_ALLOWED, its message naming the package. */
SBX_API int sbx_check_packages(const char *language, const char *const *packages, size_t n,
                               bool skip_validation, sbx_error *err);

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
    const char *language;     /* "python", "javascript", "typescript", "raw"; NULL: python */
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
    void *userdata;               /* passed to on_output and on_ports */
    sbx_network network;          /* zero: no network interface */
    sbx_ports_fn on_ports;        /* optional: the exposed ports, before the code's output */
    const char *const *packages;  /* n_packages specs to install first (sbx_check_packages) */
    size_t n_packages;            /* at most SBX_PACKAGES_MAX */
    bool skip_package_validation; /* do not check names against the top-10k lists */
    sbx_progress_fn on_progress;  /* optional: news of a first install (userdata as above) */
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
    char guest_arch[16];              /* the guest's architecture: "x86_64" or "aarch64" */
    bool warm_pool_hit;               /* a pre-booted VM served the run */
    char start_mode[16];              /* how the VM was started, e.g. "cold" */
    uint64_t exec_count;              /* sessions: execs so far, this one included; 0 for runs */
    bool interpreter_reset;           /* sessions: the interpreter had to be restarted during
                                         this exec (it died or was killed at the timeout), so
                                         variables and imports of earlier execs are gone */
    size_t n_exposed_ports;           /* runs with exposed ports: how they were bound */
    sbx_exposed_port exposed_ports[SBX_EXPOSE_MAX];
    sbx_network_report *network; /* NULL when the VM had no network interface */
    char package_layer[64];      /* the package layer the VM had ("" without packages) */
    bool package_layer_built;    /* runs: it was installed for this request */
} sbx_result;

/* Run code in a fresh VM and wait for its result. The request is checked against the limits
 * first (SBX_ERR_VM_CONFIG without contacting the daemon). A connection lost during the run is
 * a transient SBX_ERR_COMMUNICATION and leaves the client unusable: close it and reconnect.
 * On success *out must be released with sbx_result_free; on failure *out is zeroed. */
SBX_API int sbx_run(sbx_client *c, const sbx_run_opts *opts, sbx_result *out, sbx_error *err);
/* Release what a result owns and zero it. Safe on a zeroed result. */
SBX_API void sbx_result_free(sbx_result *r);

/* ---- daemon status ---- */

#define SBX_STATUS_SNAPSHOTS_MAX 32 /* snapshots a status lists at most */
#define SBX_STATUS_LAYERS_MAX 32    /* package layers a status lists at most */

/* The daemon's view of itself. Strings are NUL-terminated, cut to fit. */
typedef struct {
    char version[64];            /* sbxd version */
    char accelerator[16];        /* accelerator in force: "kvm", "tcg", or "" before the probe */
    char accel_reason[256];      /* why that accelerator was chosen */
    char guest_arch[16];         /* the architecture of the daemon's guests */
    char host_arch[16];          /* the daemon host's architecture */
    uint32_t running_vms;        /* VMs running now */
    uint32_t queued;             /* requests waiting for a VM slot */
    uint32_t max_concurrent_vms; /* the slot count */
    uint64_t runs_total;         /* runs served since start */
    uint64_t uptime_ms;          /* time since start */
    char images_dir[1024];       /* where the daemon looks for kernel and images */
    uint32_t pid;                /* the daemon's process id */
    uint32_t daemon_uid;         /* the uid it runs as, from SO_PEERCRED of this connection */
    uint32_t sessions;           /* sessions open now */
    char cgroup_mode[8];         /* how VMs are confined: "v2", "v1" or "none" */
    uint32_t warm_pool_size;     /* configured pool VMs per pooled language (0: no pool) */
    uint32_t pool_ready;         /* pool VMs ready to take a run */
    uint32_t pool_booting;       /* pool VMs still booting or starting their REPL */
    uint64_t pool_memory_mb;     /* guest RAM the pool holds */
    bool snapshots_enabled;      /* VMs start from memory snapshots when one is ready */
    char snapshot_dir[512];      /* the snapshot cache */
    uint32_t n_snapshots;        /* entries used in snapshots[] */
    struct {
        char name[128];      /* directory in the snapshot cache */
        char language[16];   /* "python", "javascript", "typescript", "raw" */
        uint32_t memory_mb;  /* guest RAM it was made for */
        char state[16];      /* "ready", "building" or "failed" */
        uint64_t disk_mb;    /* ready: its RAM file's size on disk */
        uint32_t retry_in_s; /* failed: seconds until it may be built again */
    } snapshots[SBX_STATUS_SNAPSHOTS_MAX];
    /* What one local peer may hold (sbxd's config keys of the same names), and how often the
     * bounds were hit. */
    struct {
        uint32_t connections; /* open now */
        uint32_t max_connections, hello_timeout_seconds, frame_timeout_seconds;
        uint32_t max_queued, queue_timeout_seconds, max_session_queue;
        uint32_t max_client_buffer_mb, max_session_upload_mb, run_grace_seconds;
        uint64_t connections_refused; /* closed at accept */
        uint64_t clients_dropped;     /* dropped for not reading their replies */
    } limits;
    /* Package layers: on disk (with their memory snapshots) against snapshot_cache_max_bytes,
     * and those known, most recently used first. */
    uint64_t layer_cache_bytes, layer_cache_max_bytes;
    uint32_t n_layers;
    struct {
        char name[64];              /* directory in the layer cache */
        char language[16];          /* "python" or "javascript" */
        char state[16];             /* "ready", "checking" or "building" */
        uint64_t size_bytes;        /* ready: its image's size */
        uint64_t last_used_unix_ms; /* when a VM last got it */
        char packages[512];         /* its specs, space-separated (cut to fit) */
    } layers[SBX_STATUS_LAYERS_MAX];
    /* The remote package-layer cache (s3_bucket): counts since the daemon started. */
    struct {
        bool enabled;
        char location[512];   /* s3://bucket/prefix at endpoint */
        bool reachable;       /* the last transfer was answered and not refused */
        char last_error[300]; /* "" when none */
        uint64_t hits, misses, errors, uploads_done, uploads_failed;
        uint32_t uploads_queued, uploads_in_flight, max_concurrent_uploads;
        bool signed_entries;
    } remote;
} sbx_status_info;

/* Ask the daemon for its status. */
SBX_API int sbx_status(sbx_client *c, sbx_status_info *out, sbx_error *err);

/* ---- sessions ---- */

/* A session keeps one VM, and the interpreter state in it, across execs. sbxd holds it, not the
 * connection: it outlives the client that opened it and can be used from any other connection
 * by its id, until sbx_session_close or until it sits idle for its idle timeout. Execs on one
 * session run one at a time, in the order they arrive. A session that is gone (closed, timed out
 * idle, its VM died) answers every call with SBX_ERR_SESSION_CLOSED, whose message says why. */

#define SBX_SESSION_ID_MAX 128 /* bytes of a session id, NUL included */

/* A session request; zero-initialise and set what you need. */
typedef struct {
    const char *language;     /* "python", "javascript", "typescript", "raw"; NULL: python */
    uint32_t memory_mb;       /* 0: the daemon's default (256); else 128..2048 */
    uint32_t timeout_seconds; /* default limit of each exec; 0: the daemon's (30) */
    const sbx_env *env;       /* n_env variables for every exec, at most 100 */
    size_t n_env;
    uint32_t idle_timeout_seconds; /* 10..3600; 0: the daemon's session_idle_timeout_seconds */
    sbx_network network;           /* zero: no network interface */
    sbx_ports_fn on_ports;         /* optional: the exposed ports, as soon as they are bound */
    void *userdata;                /* passed to on_ports */
    const char *const *packages;   /* as in sbx_run_opts */
    size_t n_packages;
    bool skip_package_validation;
    sbx_progress_fn on_progress; /* as in sbx_run_opts (userdata as above) */
} sbx_session_opts;

/* What sbxd says about a session. Strings are NUL-terminated. */
typedef struct {
    char session_id[SBX_SESSION_ID_MAX];
    char language[16];
    uint32_t memory_mb;
    uint32_t idle_timeout_seconds;
    uint64_t exec_count;        /* execs so far */
    uint64_t created_unix_ms;   /* wall-clock time of creation, ms since the epoch */
    uint64_t last_used_unix_ms; /* wall-clock time of the last exec or file transfer */
    bool busy;                  /* an exec or file transfer is in progress */
    char accelerator[16];       /* "kvm" or "tcg" */
    char guest_arch[16];        /* "x86_64" or "aarch64" */
    uint64_t boot_ms;           /* how long its VM took to boot */
    char network_mode[16];      /* "none", "ports", "allowlist" or "open" ("" from an older sbxd) */
    size_t n_exposed_ports;
    sbx_exposed_port exposed_ports[SBX_EXPOSE_MAX];
} sbx_session_info;

/* Open a session: boots its VM and returns once it is ready. Checked against the limits first
 * (SBX_ERR_VM_CONFIG without contacting the daemon). */
SBX_API int sbx_session_open(sbx_client *c, const sbx_session_opts *opts, sbx_session_info *out,
                             sbx_error *err);
/* Run code in a session and wait for its result; state left by earlier execs is there. code_len
 * 0: strlen(code). timeout_seconds 0: the session's default. on_output (optional) streams
 * output exactly as in sbx_run_opts. The result's exec_count and interpreter_reset are set.
 * A timed-out exec is a result (timed_out), not an error; the session stays open. On success
 * *out must be released with sbx_result_free; on failure it is zeroed. */
SBX_API int sbx_session_exec(sbx_client *c, const char *session_id, const char *code,
                             size_t code_len, uint32_t timeout_seconds, sbx_output_fn on_output,
                             void *userdata, sbx_result *out, sbx_error *err);
/* Close a session and destroy its VM. *exec_count (if not NULL) gets how many execs it ran.
 * A session that is already gone is SBX_ERR_SESSION_CLOSED. */
SBX_API int sbx_session_close(sbx_client *c, const char *session_id, uint64_t *exec_count,
                              sbx_error *err);
/* The sessions sbxd holds (every user's that this daemon serves). *out is an array of *n
 * entries (NULL when there are none) to release with sbx_session_list_free. */
SBX_API int sbx_session_list(sbx_client *c, sbx_session_info **out, size_t *n, sbx_error *err);
SBX_API void sbx_session_list_free(sbx_session_info *list);

/* ---- files in a session ---- */

/* Guest paths are relative to the sandbox home (where the code starts), 1..255 bytes, without
 * a `..` component; files are at most SBX_FILE_MAX bytes. Transfers travel in chunks of
 * 256 KiB, each zstd-compressed, and end with a size and SHA-256 check on the receiving side.
 * A path the guest refuses, or a file it cannot read or write, is an error of the kind sbxd
 * reports (the message says what); a local file that cannot be read or written is
 * SBX_ERR_LOCAL_FILE. */

#define SBX_FILE_MAX (50u << 20) /* 50 MiB */

/* Write len bytes of data to guest_path in the session (created or replaced). */
SBX_API int sbx_file_write(sbx_client *c, const char *session_id, const char *guest_path,
                           const void *data, size_t len, sbx_error *err);
/* The same from a local file, streamed without holding it in memory. A file that changes while
 * it is being sent is refused (SBX_ERR_LOCAL_FILE) and nothing is written in the guest. */
SBX_API int sbx_file_write_path(sbx_client *c, const char *session_id, const char *guest_path,
                                const char *local_path, sbx_error *err);
/* Read guest_path into memory: *data gets a malloc'd buffer of *len bytes plus a NUL after them
 * (for convenience; the file may itself contain NULs); free() it. */
SBX_API int sbx_file_read(sbx_client *c, const char *session_id, const char *guest_path,
                          char **data, size_t *len, sbx_error *err);
/* Read guest_path into local_path. The bytes go to a temporary file beside local_path, which
 * replaces local_path only after size and SHA-256 have checked out; on any failure local_path
 * is left as it was and no partial file remains. The new file gets mode 0666 less the umask. */
SBX_API int sbx_file_read_path(sbx_client *c, const char *session_id, const char *guest_path,
                               const char *local_path, sbx_error *err);

/* One entry of a directory listing. */
typedef struct {
    const char *name; /* the name as the guest has it (any bytes but '/' and NUL) */
    bool is_dir;
    uint64_t size; /* bytes; 0 for directories */
} sbx_file_entry;

/* List the directory at path in the session; "" or NULL: the sandbox home. *out is an array of
 * *n entries (NULL when empty), names included in the same allocation; release it with
 * sbx_file_list_free. */
SBX_API int sbx_file_list(sbx_client *c, const char *session_id, const char *path,
                          sbx_file_entry **out, size_t *n, sbx_error *err);
SBX_API void sbx_file_list_free(sbx_file_entry *entries);

/* ---- helpers ---- */

/* A copy of len bytes as valid UTF-8, each invalid sequence replaced by U+FFFD (embedded NULs
 * are kept), NUL-terminated; *out_len (if not NULL) gets its length. For callers that must emit
 * text (JSON) from output bytes. NULL when out of memory; free() the result. */
SBX_API char *sbx_utf8_sanitize(const char *data, size_t len, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif
