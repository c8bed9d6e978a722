/* sbxd settings: defaults < config file < EXEC_SANDBOX_<KEY> environment < command-line flags. */
#ifndef SBX_CONFIG_H
#define SBX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct {
    /* The reference's configuration table. */
    uint32_t max_concurrent_vms;
    uint32_t warm_pool_size;
    uint32_t default_memory_mb;
    uint32_t default_timeout_seconds;
    uint32_t session_idle_timeout_seconds;
    char images_dir[512];
    char snapshot_cache_dir[512];
    char s3_bucket[256];
    char s3_region[64];
    uint32_t max_concurrent_s3_uploads;
    char s3_endpoint_url[512];
    char s3_prefix[256];
    char cache_signing_key_file[512];
    char metrics_listen[256]; /* ADDRESS:PORT or a socket path: Prometheus text; "": off */
    char audit_log[512];      /* a file: one JSON line per request; "": off */
    char asset_base_url[512]; /* missing assets are prefetched from here at start; "": build */
    bool enable_package_validation;
    bool auto_download_assets;
    /* Ours. */
    char socket[108];
    char accel[8];       /* auto | kvm | tcg */
    char qemu[512];      /* the QEMU for guest_arch (default: qemu-system-<guest_arch>) */
    char guest_arch[16]; /* x86_64 | aarch64 (default: the host's) */
    char cache_dir[512];
    uint32_t idle_exit_seconds;     /* 0: serve forever */
    uint32_t balloon_idle_seconds;  /* idle cold VMs inflate their balloon after this (0: never) */
    uint32_t queue_timeout_seconds; /* how long a run may wait for a VM slot */
    uint32_t boot_timeout_seconds;
    char log[512];
    uint32_t vm_uid_base;   /* first of 65536 uids, one per live VM (sbxd as root) */
    char allowed_uids[256]; /* comma-separated uids allowed on the control socket */
    bool test_hooks;        /* test-only triggers; never in production */
    bool snapshots;         /* start VMs from memory snapshots (supervisor/snapshot.c) */
    /* What one local peer may hold (issue: sbxd holds against hostile clients). */
    uint32_t max_connections;       /* control connections at once; more are closed at accept */
    uint32_t hello_timeout_seconds; /* a connection must complete its Hello within this */
    uint32_t frame_timeout_seconds; /* a frame that has begun must be complete within this */
    uint32_t max_queued;            /* runs and sessions waiting for a VM slot */
    uint32_t max_session_queue;     /* requests waiting on one session */
    uint32_t max_client_buffer_mb;  /* replies queued for a client that does not read them */
    uint32_t max_session_upload_mb; /* upload bytes held for one session */
    uint32_t run_grace_seconds;     /* sbxd's own deadline: timeout + boot + this, then kill */
    bool egress_allow_private;
    char dns_hosts_file[512];
    /* Packages (supervisor/layers.c, install.c). */
    char pypi_index_url[512]; /* a PEP 503 simple index */
    char npm_registry_url[512];
    char package_index_ca_file[512]; /* a private index's CA (PEM), given to the installers */
    uint32_t package_install_timeout;
    uint64_t snapshot_cache_max_bytes; /* package layers and their memory snapshots, on disk */
} sbx_config;

void config_defaults(sbx_config *c);
/* Apply one "key" = "value" pair; key uses underscores. -1 with err on unknown key / bad value. */
int config_set(sbx_config *c, const char *key, const char *value, sbx_err *err);
/* Read a file of `key = value` lines (# comments, blank lines). */
int config_load_file(sbx_config *c, const char *path, sbx_err *err);
/* Apply every EXEC_SANDBOX_<KEY> variable present in the environment. */
int config_load_env(sbx_config *c, sbx_err *err);
/* Parse argv flags (--key value, --key=value, dashes or underscores; --config FILE is read first
 * wherever it appears). Returns 0, 1 if --help/--version was printed, -1 with err. */
int config_load_args(sbx_config *c, int argc, char **argv, sbx_err *err);
/* Everything: defaults, file, env, args, then the cross-field checks. */
int config_load(sbx_config *c, int argc, char **argv, sbx_err *err);

#endif
