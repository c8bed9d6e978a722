/* Guest architectures: their names, the host's, where their assets live and which QEMU runs
 * them. One table, shared by sbxd, sbx-vmworker and sbx (bundles), so all agree. */
#ifndef SBX_ARCH_H
#define SBX_ARCH_H

#include <stddef.h>

/* The canonical name of an architecture (x86_64, aarch64) for a name or alias (amd64, arm64);
 * NULL for one this project has no guests for. */
const char *arch_canonical(const char *name);
/* The host's architecture: its canonical name, or uname's machine if it has none. */
const char *arch_host(void);
/* The QEMU system emulator for guests of arch (canonical), e.g. qemu-system-aarch64. */
const char *arch_qemu_binary(const char *arch);
/* Where arch's images live under a cache directory: CACHE/images for x86_64 (where they always
 * were), CACHE/images/<arch> for any other. Returns 0, or -1 when it does not fit. */
int arch_images_dir(const char *cache, const char *arch, char *out, size_t n);

#endif
