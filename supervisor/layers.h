/* Package layers (supervisor/layers.c): one read-only squashfs image per package set, built once
 * by an install VM (install.c), cached on disk, attached to the VMs that ask for that set. */
#ifndef SBX_LAYERS_H
#define SBX_LAYERS_H

#include <stdbool.h>
#include <stddef.h>

#include "packages.h"
#include "sbxd.h"

typedef struct layer layer;
typedef struct layer_wait layer_wait;

typedef struct layer_result {
    layer *l;   /* set on success: held for the owner, who calls layer_release when done */
    bool built; /* this request's wait included installing it */
    Sbx__Control__ErrorKind kind;
    bool transient;
    const char *why;
} layer_result;

typedef void (*layer_cb)(void *owner, const layer_result *r);

/* Once, after snapshot_init: the cache directory, what it holds from before. */
void layers_init(void);
/* The layer for a request's package list (specs as pkg_check_list made them, language the
 * request's): ready at once, being checked or built, or built now. cb is called exactly once,
 * from the loop (never inside this call), unless the wait is cancelled first. *installing tells
 * whether the request waits for an install (worth a progress message). NULL with err when
 * nothing can be done (bad index URL, no cache directory...: err->code is an ErrorKind). */
layer_wait *layer_acquire(const char *language, const pkg_spec *specs, size_t n, layer_cb cb,
                          void *owner, bool *installing, sbx_err *err);
/* The owner went away: cb is not called. An install started for it goes on (the set is cached
 * for the next request). */
void layer_wait_cancel(layer_wait *w);
void layer_hold(layer *l);
void layer_release(layer *l);
const char *layer_path(const layer *l);   /* the image file */
const char *layer_name(const layer *l);   /* its directory name: <language>-<key16> */
const char *layer_key(const layer *l);    /* sha256 hex of everything that made it */
const char *layer_sha256(const layer *l); /* of its image: what a memory snapshot saw mounted */
/* Unpinned sets are built for one request and never cached (nor snapshotted). */
bool layer_ephemeral(const layer *l);
void layers_status(Sbx__Control__StatusReply *s);
/* Before sched_shutdown: installs and checks stop (their VMs and children). */
void layers_stop(void);
/* After it (nothing holds a layer any more): the table goes, unpinned layers are removed. */
void layers_shutdown(void);

#endif
