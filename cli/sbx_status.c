/* sbx status: the daemon's view of itself, as text or JSON. It never starts a daemon: none
 * listening is an answer (exit 3), not an error. */
#include "sbx.h"

#include "paths.h"

#include <inttypes.h>
#include <sys/un.h>

int cmd_status(const args *a)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (a->socket_path)
        snprintf(path, sizeof path, "%s", a->socket_path);
    else if (paths_default_socket(path, sizeof path) < 0)
        snprintf(path, sizeof path, "(default path too long)");
    sbx_client *c = NULL;
    sbx_error e = {0};
    sbx_status_info s;
    sbx_connect_opts o = {.socket_path = a->socket_path, .client_name = "sbx/" SBX_VERSION};
    if (sbx_connect_ex(&o, &c, &e) < 0 && e.kind == SBX_ERR_CONNECT) {
        if (a->json)
            json_print(json_pack("{s:b, s:o, s:o}", "running", 0, "socket", json_text(path),
                                 "reason", json_text(e.message)));
        else
            printf("sbxd is not running (%s)\n", e.message);
        return EXIT_NOT_RUNNING;
    }
    int rc = c ? sbx_status(c, &s, &e) : -1;
    sbx_close(c);
    if (rc < 0) {
        print_error(&e);
        return EXIT_SANDBOX;
    }
    const __typeof__(s.limits) *l = &s.limits;
    if (a->json) {
        json_t *limits = json_pack(
            "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}", "connections",
            (int)l->connections, "max_connections", (int)l->max_connections,
            "hello_timeout_seconds", (int)l->hello_timeout_seconds, "frame_timeout_seconds",
            (int)l->frame_timeout_seconds, "max_queued", (int)l->max_queued,
            "queue_timeout_seconds", (int)l->queue_timeout_seconds, "max_session_queue",
            (int)l->max_session_queue, "max_client_buffer_mb", (int)l->max_client_buffer_mb,
            "max_session_upload_mb", (int)l->max_session_upload_mb, "run_grace_seconds",
            (int)l->run_grace_seconds, "connections_refused", (json_int_t)l->connections_refused,
            "clients_dropped", (json_int_t)l->clients_dropped);
        json_t *snaps = json_array();
        for (uint32_t i = 0; i < s.n_snapshots; i++)
            json_array_append_new(snaps, json_pack("{s:o, s:o, s:i, s:o, s:I, s:i}", "name",
                                                   json_text(s.snapshots[i].name), "language",
                                                   json_text(s.snapshots[i].language), "memory_mb",
                                                   (int)s.snapshots[i].memory_mb, "state",
                                                   json_text(s.snapshots[i].state), "disk_mb",
                                                   (json_int_t)s.snapshots[i].disk_mb, "retry_in_s",
                                                   (int)s.snapshots[i].retry_in_s));
        json_t *layers = json_array();
        for (uint32_t i = 0; i < s.n_layers; i++)
            json_array_append_new(layers,
                                  json_pack("{s:o, s:o, s:o, s:I, s:I, s:o}", "name",
                                            json_text(s.layers[i].name), "language",
                                            json_text(s.layers[i].language), "state",
                                            json_text(s.layers[i].state), "size_bytes",
                                            (json_int_t)s.layers[i].size_bytes, "last_used_unix_ms",
                                            (json_int_t)s.layers[i].last_used_unix_ms, "packages",
                                            json_text(s.layers[i].packages)));
        json_t *remote = json_pack(
            "{s:b, s:o, s:b, s:o, s:I, s:I, s:I, s:I, s:I, s:i, s:i, s:i, s:b}", "enabled",
            s.remote.enabled, "location", json_text(s.remote.location), "reachable",
            s.remote.reachable, "last_error", json_text(s.remote.last_error), "hits",
            (json_int_t)s.remote.hits, "misses", (json_int_t)s.remote.misses, "errors",
            (json_int_t)s.remote.errors, "uploads_done", (json_int_t)s.remote.uploads_done,
            "uploads_failed", (json_int_t)s.remote.uploads_failed, "uploads_queued",
            (int)s.remote.uploads_queued, "uploads_in_flight", (int)s.remote.uploads_in_flight,
            "max_concurrent_uploads", (int)s.remote.max_concurrent_uploads, "signed_entries",
            s.remote.signed_entries);
        json_t *pkg =
            json_pack("{s:I, s:I, s:o, s:o}", "bytes", (json_int_t)s.layer_cache_bytes, "max_bytes",
                      (json_int_t)s.layer_cache_max_bytes, "layers", layers, "remote", remote);
        return json_print(json_pack(
                   "{s:b, s:o, s:o, s:i, s:o, s:o, s:i, s:i, s:i, s:I, s:I, s:o, s:i, s:o, s:i, "
                   "s:i, s:i, s:I, s:b, s:o, s:o, s:I, s:o, s:o, s:o, s:o}",
                   "running", 1, "socket", json_text(path), "version", json_text(s.version), "pid",
                   (int)s.pid, "accelerator", json_text(s.accelerator), "accel_reason",
                   json_text(s.accel_reason), "running_vms", (int)s.running_vms, "queued",
                   (int)s.queued, "max_concurrent_vms", (int)s.max_concurrent_vms, "runs_total",
                   (json_int_t)s.runs_total, "uptime_ms", (json_int_t)s.uptime_ms, "images_dir",
                   json_text(s.images_dir), "sessions", (int)s.sessions, "cgroup_mode",
                   json_text(s.cgroup_mode), "warm_pool_size", (int)s.warm_pool_size, "pool_ready",
                   (int)s.pool_ready, "pool_booting", (int)s.pool_booting, "pool_memory_mb",
                   (json_int_t)s.pool_memory_mb, "snapshots_enabled", (int)s.snapshots_enabled,
                   "snapshot_dir", json_text(s.snapshot_dir), "snapshots", snaps, "uid",
                   (json_int_t)s.daemon_uid, "limits", limits, "package_layers", pkg, "guest_arch",
                   json_text(s.guest_arch), "host_arch", json_text(s.host_arch))) < 0
                   ? EXIT_SANDBOX
                   : 0;
    }
    char up[48];
    fmt_duration(up, sizeof up, s.uptime_ms);
    printf("sbxd         %s (pid %u, uid %u), up %s\n", s.version, s.pid, s.daemon_uid, up);
    printf("socket       %s\n", path);
    printf("accelerator  %s%s%s%s\n", s.accelerator[0] ? s.accelerator : "not probed yet",
           s.accel_reason[0] ? " (" : "", s.accel_reason, s.accel_reason[0] ? ")" : "");
    printf("guests       %s on a %s host\n", s.guest_arch[0] ? s.guest_arch : "?",
           s.host_arch[0] ? s.host_arch : "?");
    printf("vms          %u running of %u, %u queued\n", s.running_vms, s.max_concurrent_vms,
           s.queued);
    printf("sessions     %u open\n", s.sessions);
    if (s.warm_pool_size)
        printf("warm pool    %u per language: %u ready, %u starting, %" PRIu64 " MB of guest RAM\n",
               s.warm_pool_size, s.pool_ready, s.pool_booting, s.pool_memory_mb);
    if (s.snapshots_enabled)
        printf("snapshots    on, in %s\n", s.snapshot_dir);
    else
        printf("snapshots    off\n");
    for (uint32_t i = 0; i < s.n_snapshots; i++) {
        printf("  %-40s %s", s.snapshots[i].name, s.snapshots[i].state);
        if (!strcmp(s.snapshots[i].state, "ready"))
            printf(", %" PRIu64 " MiB of RAM file on disk", s.snapshots[i].disk_mb);
        else if (!strcmp(s.snapshots[i].state, "failed"))
            printf(", next try in %u s", s.snapshots[i].retry_in_s);
        putchar('\n');
    }
    printf("packages     %u layer%s, %" PRIu64 " MiB of %" PRIu64 " MiB on disk\n", s.n_layers,
           s.n_layers == 1 ? "" : "s", s.layer_cache_bytes >> 20, s.layer_cache_max_bytes >> 20);
    for (uint32_t i = 0; i < s.n_layers; i++) {
        printf("  %-40s %s", s.layers[i].name, s.layers[i].state);
        if (!strcmp(s.layers[i].state, "ready"))
            printf(", %" PRIu64 " KiB", s.layers[i].size_bytes >> 10);
        printf(": %s\n", s.layers[i].packages);
    }
    if (s.remote.enabled) {
        printf("remote cache %s%s, %s%s%s\n", s.remote.location,
               s.remote.signed_entries ? " (signed entries)" : "",
               s.remote.reachable ? "reachable" : "not reachable or refusing",
               s.remote.last_error[0] ? "; last error: " : "", s.remote.last_error);
        printf("  %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
               " failed downloads; uploads: %" PRIu64 " done, %" PRIu64
               " failed, %u in flight (at most %u), %u queued\n",
               s.remote.hits, s.remote.misses, s.remote.errors, s.remote.uploads_done,
               s.remote.uploads_failed, s.remote.uploads_in_flight, s.remote.max_concurrent_uploads,
               s.remote.uploads_queued);
    }
    printf("runs         %" PRIu64 "\n", s.runs_total);
    printf("connections  %u open of %u; Hello within %u s, a frame within %u s; %" PRIu64
           " refused, %" PRIu64 " dropped for not reading (over %u MiB)\n",
           l->connections, l->max_connections, l->hello_timeout_seconds, l->frame_timeout_seconds,
           l->connections_refused, l->clients_dropped, l->max_client_buffer_mb);
    printf("queues       %u runs may wait, %u s each; %u requests per session, %u MiB of "
           "uploads; sbxd's deadline: timeout + %u s\n",
           l->max_queued, l->queue_timeout_seconds, l->max_session_queue, l->max_session_upload_mb,
           l->run_grace_seconds);
    if (s.cgroup_mode[0])
        printf("cgroups      %s\n", s.cgroup_mode);
    printf("images       %s\n", s.images_dir);
    return 0;
}
