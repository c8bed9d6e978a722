/* libsbx's status: the daemon's view of itself, copied into the public struct. Text from the
 * daemon is cut to fit and cleaned of control characters, never passed through raw. */
#include "libsbx_int.h"

static int status_get(sbx_client *c, sbx_status_info *out, sbx_err *err)
{
    memset(out, 0, sizeof *out);
    if (client_ready(c, err) < 0)
        return -1;
    Sbx__Control__StatusRequest st = SBX__CONTROL__STATUS_REQUEST__INIT;
    Sbx__Control__Request rq = SBX__CONTROL__REQUEST__INIT;
    rq.id = c->next_id++;
    rq.body_case = SBX__CONTROL__REQUEST__BODY_STATUS;
    rq.status = &st;
    cleanup_reply Sbx__Control__Reply *r = NULL;
    if (client_send(c, &rq, err) < 0 || client_recv_for(c, rq.id, STATUS_TIMEOUT_MS, &r, err) < 0) {
        return sbx_wrap(err, "status");
    }
    if (r->body_case == SBX__CONTROL__REPLY__BODY_ERROR)
        return from_reply_error(err, r->error);
    if (r->body_case != SBX__CONTROL__REPLY__BODY_STATUS)
        return unexpected(c, r, "waiting for status", err);
    const Sbx__Control__StatusReply *s = r->status;
    copy_text(out->version, sizeof out->version, s->version);
    copy_text(out->accelerator, sizeof out->accelerator, s->accelerator);
    copy_text(out->guest_arch, sizeof out->guest_arch, s->guest_arch);
    copy_text(out->host_arch, sizeof out->host_arch, s->host_arch);
    copy_text(out->accel_reason, sizeof out->accel_reason, s->accel_reason);
    out->running_vms = s->running_vms;
    out->queued = s->queued;
    out->max_concurrent_vms = s->max_concurrent_vms;
    out->runs_total = s->runs_total;
    out->uptime_ms = s->uptime_ms;
    copy_text(out->images_dir, sizeof out->images_dir, s->images_dir);
    out->pid = s->pid;
    out->daemon_uid = c->daemon_uid;
    out->sessions = s->sessions;
    copy_text(out->cgroup_mode, sizeof out->cgroup_mode, s->cgroup_mode);
    out->warm_pool_size = s->warm_pool_size;
    out->pool_ready = s->pool_ready;
    out->pool_booting = s->pool_booting;
    out->pool_memory_mb = s->pool_memory_mb;
    out->snapshots_enabled = s->snapshots_enabled;
    copy_text(out->snapshot_dir, sizeof out->snapshot_dir, s->snapshot_dir);
    out->n_snapshots = 0;
    for (size_t i = 0; i < s->n_snapshots && i < SBX_STATUS_SNAPSHOTS_MAX; i++) {
        const Sbx__Control__SnapshotInfo *x = s->snapshots[i];
        copy_text(out->snapshots[i].name, sizeof out->snapshots[i].name, x->name);
        copy_text(out->snapshots[i].language, sizeof out->snapshots[i].language, x->language);
        copy_text(out->snapshots[i].state, sizeof out->snapshots[i].state, x->state);
        out->snapshots[i].memory_mb = x->memory_mb;
        out->snapshots[i].disk_mb = x->disk_mb;
        out->snapshots[i].retry_in_s = x->retry_in_s;
        out->n_snapshots = (uint32_t)i + 1;
    }
    out->layer_cache_bytes = s->layer_cache_bytes;
    out->layer_cache_max_bytes = s->layer_cache_max_bytes;
    out->n_layers = 0;
    for (size_t i = 0; i < s->n_layers && i < SBX_STATUS_LAYERS_MAX; i++) {
        const Sbx__Control__LayerInfo *x = s->layers[i];
        copy_text(out->layers[i].name, sizeof out->layers[i].name, x->name);
        copy_text(out->layers[i].language, sizeof out->layers[i].language, x->language);
        copy_text(out->layers[i].state, sizeof out->layers[i].state, x->state);
        out->layers[i].size_bytes = x->size_bytes;
        out->layers[i].last_used_unix_ms = x->last_used_unix_ms;
        size_t used = 0;
        out->layers[i].packages[0] = '\0';
        for (size_t k = 0; k < x->n_packages; k++) {
            size_t room = sizeof out->layers[i].packages - used;
            int w = snprintf(out->layers[i].packages + used, room, "%s%s", k ? " " : "",
                             x->packages[k] ? x->packages[k] : "");
            if (w < 0 || (size_t)w >= room)
                break;
            used += (size_t)w;
        }
        out->n_layers = (uint32_t)i + 1;
    }
    const Sbx__Control__RemoteCacheInfo *rc = s->remote_cache;
    if (rc) {
        out->remote.enabled = rc->enabled;
        copy_text(out->remote.location, sizeof out->remote.location, rc->location);
        out->remote.reachable = rc->reachable;
        copy_text(out->remote.last_error, sizeof out->remote.last_error, rc->last_error);
        out->remote.hits = rc->hits;
        out->remote.misses = rc->misses;
        out->remote.errors = rc->errors;
        out->remote.uploads_done = rc->uploads_done;
        out->remote.uploads_failed = rc->uploads_failed;
        out->remote.uploads_queued = rc->uploads_queued;
        out->remote.uploads_in_flight = rc->uploads_in_flight;
        out->remote.max_concurrent_uploads = rc->max_concurrent_uploads;
        out->remote.signed_entries = rc->signed_entries;
    }
    const Sbx__Control__StatusLimits *l = s->limits;
    if (l) {
        out->limits.connections = l->connections;
        out->limits.max_connections = l->max_connections;
        out->limits.hello_timeout_seconds = l->hello_timeout_seconds;
        out->limits.frame_timeout_seconds = l->frame_timeout_seconds;
        out->limits.max_queued = l->max_queued;
        out->limits.queue_timeout_seconds = l->queue_timeout_seconds;
        out->limits.max_session_queue = l->max_session_queue;
        out->limits.max_client_buffer_mb = l->max_client_buffer_mb;
        out->limits.max_session_upload_mb = l->max_session_upload_mb;
        out->limits.run_grace_seconds = l->run_grace_seconds;
        out->limits.connections_refused = l->connections_refused;
        out->limits.clients_dropped = l->clients_dropped;
    }
    return 0;
}

int sbx_status(sbx_client *c, sbx_status_info *out, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(status_get(c, out, &e), &e, err);
}
