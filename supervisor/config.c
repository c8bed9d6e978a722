/* sbxd configuration: one table of keys drives the file, environment and flag parsers. A key
 * is added to the table, never parsed by hand elsewhere. */
#include "config.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "sbx_limits.h"
#include "paths.h"

enum kind { K_U32, K_U64, K_BOOL, K_STR };

struct key {
    const char *name;
    enum kind kind;
    size_t off;
    size_t size; /* string buffer size */
    uint32_t min, max;
    const char *help;
};

#define U32(f, lo, hi, h)                                                                          \
    {                                                                                              \
#f, K_U32, offsetof(sbx_config, f), 0, lo, hi, h                                           \
    }
/* 64-bit sizes: min and max in MiB. */
#define U64(f, lo, hi, h)                                                                          \
    {                                                                                              \
#f, K_U64, offsetof(sbx_config, f), 0, lo, hi, h                                           \
    }
#define BOOL(f, h)                                                                                 \
    {                                                                                              \
#f, K_BOOL, offsetof(sbx_config, f), 0, 0, 1, h                                            \
    }
#define STR(f, h)                                                                                  \
    {                                                                                              \
#f, K_STR, offsetof(sbx_config, f), sizeof(((sbx_config *)0)->f), 0, 0, h                  \
    }

static const struct key keys[] = {
    U32(max_concurrent_vms, SBX_MAX_CONCURRENT_MIN, SBX_MAX_CONCURRENT_MAX, "parallel VMs (1-100)"),
    U32(warm_pool_size, 0, 100, "pre-started VMs per language, python and javascript (0: off)"),
    U32(default_memory_mb, SBX_MEMORY_MIN, SBX_MEMORY_MAX, "VM memory, MB (128-2048)"),
    U32(default_timeout_seconds, SBX_TIMEOUT_MIN, SBX_TIMEOUT_MAX, "run timeout, s (1-300)"),
    U32(session_idle_timeout_seconds, 10, 3600, "session idle timeout, s (10-3600)"),
    U32(balloon_idle_seconds, 0, 3600,
        "idle time after which a cold-booted session VM gives back free memory (0: never)"),
    STR(images_dir, "kernel and guest images (default: CACHE/images, CACHE/images/aarch64 for "
                    "aarch64 guests)"),
    STR(snapshot_cache_dir, "local snapshot cache"),
    STR(s3_bucket, "S3 bucket of the remote package-layer cache (unset: none)"),
    STR(s3_region, "S3 region"),
    U32(max_concurrent_s3_uploads, 1, 16, "background S3 uploads (1-16)"),
    STR(s3_endpoint_url, "an S3-compatible store's URL (path-style; default: AWS's for s3_region)"),
    STR(s3_prefix, "key prefix of the remote cache's objects"),
    STR(cache_signing_key_file,
        "a key (file, 16-512 bytes, 0600): remote cache entries are signed, and checked"),
    BOOL(enable_package_validation, "check packages against the allowlists"),
    BOOL(auto_download_assets, "download assets (this version builds them locally instead)"),
    STR(socket, "control socket path"),
    STR(accel, "auto | kvm | tcg"),
    STR(qemu, "QEMU binary (default: qemu-system-x86_64 or -aarch64, per guest_arch)"),
    STR(guest_arch, "guests' architecture: x86_64 | aarch64 (default: the host's; another runs "
                    "under TCG)"),
    STR(cache_dir, "cache directory, uid's own, not writable by others (default: "
                   "~/.cache/exec-sandbox; without $HOME: /var/cache/exec-sandbox for root)"),
    U32(idle_exit_seconds, 0, 86400, "exit after this long with no clients and no VMs (0: never)"),
    U32(queue_timeout_seconds, 1, 3600, "how long a run waits for a free VM slot"),
    U32(boot_timeout_seconds, 1, 600, "how long a VM may take to boot"),
    STR(log, "log file (default: stderr)"),
    U32(vm_uid_base, 100000, 4000000000u, "first of the 65536 uids VMs run as (one per live VM)"),
    STR(allowed_uids, "uids allowed on the control socket, comma-separated (default: own + 0)"),
    BOOL(test_hooks, "honour test-only triggers (tests only)"),
    BOOL(snapshots, "start VMs from memory snapshots, built in the background (default: on)"),
    U32(max_connections, 1, 100000, "control connections at once (more are closed at once)"),
    U32(hello_timeout_seconds, 1, 600, "a new connection must send its Hello within this, s"),
    U32(frame_timeout_seconds, 1, 3600, "a frame that has begun must be complete within this, s"),
    U32(max_queued, 1, 100000, "runs and sessions waiting for a VM slot (more: capacity error)"),
    U32(max_session_queue, 1, 10000, "requests waiting on one session (more: capacity error)"),
    U32(max_client_buffer_mb, 1, 4096,
        "replies held for a client that does not read them, MiB (more: the client is dropped)"),
    U32(max_session_upload_mb, 1, 4096, "upload bytes held for one session, MiB"),
    U32(run_grace_seconds, 1, 3600,
        "sbxd kills a VM whose worker has not answered by timeout + boot timeout + this, s"),
    BOOL(egress_allow_private,
         "let VMs with network reach private, loopback and link-local addresses (default: off)"),
    STR(dns_hosts_file, "hosts file (/etc/hosts format) the VMs' resolver consults first"),
    STR(metrics_listen, "serve Prometheus metrics on ADDRESS:PORT or a socket path (off if unset)"),
    STR(audit_log, "append one JSON line per request to this file (off if unset)"),
    STR(asset_base_url, "where missing guest assets are prefetched from at start (a URL or a "
                        "directory of bundles; unset: build them with make assets)"),
    STR(pypi_index_url, "Python package index (PEP 503 simple API) for installs"),
    STR(npm_registry_url, "npm registry for JavaScript installs"),
    STR(package_index_ca_file, "CA certificates (PEM) the installers trust (default: the host's "
                               "store; none: the image's)"),
    U32(package_install_timeout, 10, 3600, "how long one package install may take, s"),
    U64(snapshot_cache_max_bytes, 1, 16u << 20,
        "bytes of package layers (and their memory snapshots) kept on disk, LRU beyond"),
};

void config_defaults(sbx_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_concurrent_vms = 10;
    c->warm_pool_size = 0;
    c->default_memory_mb = SBX_MEMORY_DEFAULT;
    c->default_timeout_seconds = SBX_TIMEOUT_DEFAULT;
    c->session_idle_timeout_seconds = 300;
    c->balloon_idle_seconds = 30;
    snprintf(c->snapshot_cache_dir, sizeof c->snapshot_cache_dir, "/tmp/exec-sandbox-cache");
    snprintf(c->s3_region, sizeof c->s3_region, "us-east-1");
    c->max_concurrent_s3_uploads = 4;
    snprintf(c->s3_prefix, sizeof c->s3_prefix, "exec-sandbox/");
    c->enable_package_validation = true;
    c->auto_download_assets = true;
    snprintf(c->accel, sizeof c->accel, "auto");
    c->queue_timeout_seconds = 120;
    c->boot_timeout_seconds = 30;
    c->vm_uid_base = 2100000000u;
    c->snapshots = true;
    c->max_connections = 256;
    c->hello_timeout_seconds = 5;
    c->frame_timeout_seconds = 30;
    c->max_queued = 1000;
    c->max_session_queue = 64;
    c->max_client_buffer_mb = 64;
    c->max_session_upload_mb = 128;
    c->run_grace_seconds = 15;
    snprintf(c->pypi_index_url, sizeof c->pypi_index_url, "https://pypi.org/simple");
    snprintf(c->npm_registry_url, sizeof c->npm_registry_url, "https://registry.npmjs.org/");
    c->package_install_timeout = 300;
    c->snapshot_cache_max_bytes = 10ull << 30;
}

static const struct key *find_key(const char *name)
{
    char norm[64];
    size_t n = strlen(name);
    if (n >= sizeof norm)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        norm[i] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
    for (size_t i = 0; i < ARRAY_LEN(keys); i++)
        if (!strcmp(keys[i].name, norm))
            return &keys[i];
    return NULL;
}

int config_set(sbx_config *c, const char *name, const char *value, sbx_err *err)
{
    const struct key *k = find_key(name);
    if (!k)
        return sbx_fail(err, EINVAL, "unknown setting `%s`", name);
    char *field = (char *)c + k->off;
    switch (k->kind) {
    case K_U32: {
        char *end;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-' || v < k->min || v > k->max)
            return sbx_fail(err, EINVAL, "%s: `%s` is not a number in %u-%u", k->name, value,
                            k->min, k->max);
        *(uint32_t *)field = (uint32_t)v;
        break;
    }
    case K_U64: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-' || v < 1 ||
            v > (unsigned long long)k->max << 20)
            return sbx_fail(err, EINVAL, "%s: `%s` is not a number of bytes in 1-%llu", k->name,
                            value, (unsigned long long)k->max << 20);
        *(uint64_t *)field = (uint64_t)v;
        break;
    }
    case K_BOOL:
        if (!strcasecmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") ||
            !strcasecmp(value, "on"))
            *(bool *)field = true;
        else if (!strcasecmp(value, "0") || !strcasecmp(value, "false") ||
                 !strcasecmp(value, "no") || !strcasecmp(value, "off"))
            *(bool *)field = false;
        else
            return sbx_fail(err, EINVAL, "%s: `%s` is not a boolean", k->name, value);
        break;
    case K_STR:
        if (strlen(value) >= k->size)
            return sbx_fail(err, ENAMETOOLONG, "%s: value longer than %zu characters", k->name,
                            k->size - 1);
        memcpy(field, value, strlen(value) + 1);
        break;
    }
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int config_load_file(sbx_config *c, const char *path, sbx_err *err)
{
    cleanup_fclose FILE *f = fopen(path, "re");
    if (!f)
        return sbx_fail(err, errno, "open config `%s`: %s", path, strerror(errno));
    char line[1024];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f))
            return sbx_fail(err, EINVAL, "%s:%d: line too long", path, lineno);
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq)
            return sbx_fail(err, EINVAL, "%s:%d: expected `key = value`", path, lineno);
        *eq = '\0';
        char *v = trim(eq + 1);
        size_t vl = strlen(v);
        if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
            v[vl - 1] = '\0';
            v++;
        }
        if (config_set(c, trim(s), v, err) < 0)
            return sbx_wrap(err, "%s:%d", path, lineno);
    }
    return 0;
}

int config_load_env(sbx_config *c, sbx_err *err)
{
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        char var[96];
        snprintf(var, sizeof var, "EXEC_SANDBOX_%s", keys[i].name);
        for (char *p = var; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        const char *v = getenv(var);
        if (v && config_set(c, keys[i].name, v, err) < 0)
            return sbx_wrap(err, "environment %s", var);
    }
    return 0;
}

static void usage(void)
{
    printf("usage: sbxd [--config FILE] [--KEY VALUE]...\n\n"
           "Runs the exec-sandbox supervisor on a Unix control socket. Every setting can come\n"
           "from a config file (`key = value` lines), an EXEC_SANDBOX_<KEY> environment variable,\n"
           "or a flag (later ones win, in that order).\n\nsettings:\n");
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", keys[i].name);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        printf("  %-34s %s\n", flag, keys[i].help);
    }
}

int config_load_args(sbx_config *c, int argc, char **argv, sbx_err *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("sbxd %s (protocol %d)\n", SBX_VERSION, SBX_PROTOCOL_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0)
            return sbx_fail(err, EINVAL, "unexpected argument `%s` (see sbxd --help)", a);
        char name[64];
        const char *val;
        const char *eq = strchr(a, '=');
        if (eq) {
            size_t n = (size_t)(eq - a - 2);
            if (n >= sizeof name)
                return sbx_fail(err, EINVAL, "unknown flag `%s`", a);
            memcpy(name, a + 2, n);
            name[n] = '\0';
            val = eq + 1;
        } else {
            if (strlen(a + 2) >= sizeof name)
                return sbx_fail(err, EINVAL, "unknown flag `%s`", a);
            strcpy(name, a + 2);
            if (i + 1 >= argc)
                return sbx_fail(err, EINVAL, "flag `%s` needs a value", a);
            val = argv[++i];
        }
        if (!strcmp(name, "config"))
            continue; /* read first, in config_load */
        if (config_set(c, name, val, err) < 0)
            return -1;
    }
    return 0;
}

int config_load(sbx_config *c, int argc, char **argv, sbx_err *err)
{
    config_defaults(c);
    const char *file = getenv("EXEC_SANDBOX_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            file = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9))
            file = argv[i] + 9;
    }
    if (file && *file && config_load_file(c, file, err) < 0)
        return -1;
    if (config_load_env(c, err) < 0)
        return -1;
    int rc = config_load_args(c, argc, argv, err);
    if (rc != 0)
        return rc;
    if (strcmp(c->accel, "auto") && strcmp(c->accel, "kvm") && strcmp(c->accel, "tcg"))
        return sbx_fail(err, EINVAL, "accel: `%s` is not auto, kvm or tcg", c->accel);
    for (const char *p = c->allowed_uids; *p; p++)
        if (!((*p >= '0' && *p <= '9') || *p == ',' || *p == ' '))
            return sbx_fail(err, EINVAL, "allowed_uids: `%s` is not a comma-separated list of uids",
                            c->allowed_uids);
    /* A host of another architecture runs x86_64 guests under TCG, as it always could. */
    const char *arch = c->guest_arch[0]              ? arch_canonical(c->guest_arch)
                       : arch_canonical(arch_host()) ? arch_host()
                                                     : "x86_64";
    if (!arch)
        return sbx_fail(err, EINVAL, "guest_arch: `%s` is not x86_64 or aarch64", c->guest_arch);
    snprintf(c->guest_arch, sizeof c->guest_arch, "%s", arch);
    if (!strcmp(c->accel, "kvm") && strcmp(arch, arch_host()))
        return sbx_fail(err, EINVAL, "accel kvm: %s guests cannot use KVM on a %s host", arch,
                        arch_host());
    if (!c->qemu[0])
        snprintf(c->qemu, sizeof c->qemu, "%s", arch_qemu_binary(arch));
    if (!c->cache_dir[0] && paths_cache_dir(c->cache_dir, sizeof c->cache_dir, err) < 0)
        return -1;
    if (!c->images_dir[0] &&
        arch_images_dir(c->cache_dir, arch, c->images_dir, sizeof c->images_dir) < 0)
        return sbx_fail(err, ENAMETOOLONG, "images directory path too long");
    if (!c->socket[0] && paths_default_socket(c->socket, sizeof c->socket) < 0)
        return sbx_fail(err, ENAMETOOLONG, "socket path too long (max 107 characters)");
    return 0;
}
