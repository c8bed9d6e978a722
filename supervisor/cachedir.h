/* The cache directories sbxd keeps (memory snapshots, package layers): each entry a directory
 * published by renaming a staging directory (.tmp-<pid>-<n>) into place, with a `meta` file of
 * `key = value` lines, and removed by renaming it away (.bad-<pid>-<n>) before removing it, so
 * that nobody ever finds an entry half-written or half-removed. */
#ifndef SBX_CACHEDIR_H
#define SBX_CACHEDIR_H

#include <stddef.h>

/* One `name = value` line of meta into out ("" when missing). */
void cachedir_meta_get(const char *meta, const char *name, char *out, size_t n);
/* rm -r of a directory holding plain files only (nothing in it is followed); what names the
 * cache in the log line on failure. */
void cachedir_rm(const char *path, const char *what);
/* Rename base/name out of the way, then remove it. */
void cachedir_retire(const char *base, const char *name, const char *what);
/* At start: remove what was being removed, and the staging directories of daemons that are
 * gone. */
void cachedir_clean(const char *base, const char *what);

#endif
