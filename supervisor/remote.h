/* The remote package-layer cache (L3) on S3 or an S3-compatible store (supervisor/remote.c):
 * layers built here are uploaded in the background; a layer missing here is looked for there
 * before it is built. Nothing about it can fail a run: any trouble means a local build. */
#ifndef SBX_REMOTE_H
#define SBX_REMOTE_H

#include <stdbool.h>
#include <stdint.h>

#include "sbxd.h"

/* Once, at start: the settings and credentials (s3_bucket unset: off). */
void remote_init(void);
bool remote_enabled(void);

typedef enum { REMOTE_HIT, REMOTE_MISS, REMOTE_FAILED } remote_result;
/* hit: the layer is in dir as LAYER_FILE, its sha256 and size checked against the object's
 * metadata (and its signature, with cache_signing_key_file). */
typedef void (*remote_fetched)(void *owner, remote_result r, const char *sha256, uint64_t size);
typedef struct remote_fetch remote_fetch;
/* Look for layer key in the remote cache, streaming it into dir. cb is called once, from the
 * loop, unless cancelled. NULL when it cannot even start (then: build locally). */
remote_fetch *remote_fetch_start(const char *key, const char *dir, remote_fetched cb, void *owner);
void remote_fetch_cancel(remote_fetch *f);

/* Queue an upload of a layer just built here (at most max_concurrent_s3_uploads at once). */
void remote_upload(const char *key, const char *path, const char *sha256, uint64_t size);

void remote_status(Sbx__Control__StatusReply *s);
/* In a child that parses untrusted input (the packer): the credentials and signing key out of
 * its memory. */
void remote_forget(void);
/* Stop every transfer (sbxd is going). */
void remote_stop(void);

#endif
