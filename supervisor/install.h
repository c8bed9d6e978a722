/* Installing a package set (supervisor/install.c): an install VM whose only egress is the
 * package index runs the language's installer into a directory, sbxd reads the tree out as a tar,
 * and a packer child (packer.c) turns it into a squashfs image. */
#ifndef SBX_INSTALL_H
#define SBX_INSTALL_H

#include <stdbool.h>
#include <stdint.h>

#include "sbxd.h"

/* The most a package tree may hold (the tar read out of the install VM), and its image. */
#define INSTALL_TREE_MAX (1536ull << 20)

typedef struct install install;

typedef struct {
    bool ok;
    /* ok: the image's sha256 (hex) and size, in the staging directory as LAYER_FILE. */
    char sha256[65];
    uint64_t size;
    uint64_t install_ms, pack_ms;
    /* not ok: what to tell the waiters. */
    Sbx__Control__ErrorKind kind;
    bool transient;
    char why[1536];
} install_outcome;

typedef void (*install_done)(void *owner, const install_outcome *o);

#define LAYER_FILE "layer.sqfs"

/* Install specs (canonical, for language "python" or "javascript") from index_url into an image
 * in staging (a directory sbxd owns, empty). done is called once, from the loop, never inside
 * this call. NULL with err when it cannot start. */
install *install_start(const char *language, const char *const *specs, size_t n,
                       const char *staging, install_done done, void *owner, sbx_err *err);
/* Stop it (its VM, its packer): done is not called. */
void install_cancel(install *in);

/* The index the language installs from, and the host names its install VM may reach. */
const char *install_index_url(const char *language);
int install_index_hosts(const char *language, char hosts[2][256], size_t *n, sbx_err *err);

#endif
