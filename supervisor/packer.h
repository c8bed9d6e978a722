/* Hashing a layer image in a child, and packing an install's tar into one (supervisor/packer.c). */
#ifndef SBX_PACKER_H
#define SBX_PACKER_H

#include <stdbool.h>
#include <stdint.h>

#include "sbxd.h"

/* The child is done: the file's sha256 (hex) and size, or ok = false. */
typedef void (*hash_done)(void *owner, bool ok, const char *sha256, uint64_t size);
typedef struct hasher hasher;

/* sha256 of a file, in a child. NULL with err when it cannot start. */
hasher *hash_file(const char *path, hash_done done, void *owner, sbx_err *err);
/* The packer: the tar on tar_fd into an image at path (stderr to log_fd), as the VM uid of
 * uid_slot (-1: sbxd's own, when sbxd is not root; the hasher owns the slot from here), then its
 * sha256. */
hasher *packer_start(const char *path, int tar_fd, int log_fd, int uid_slot, hash_done done,
                     void *owner, sbx_err *err);
/* Kill it (its whole process group): done is not called. */
void hash_cancel(hasher *h);

#endif
