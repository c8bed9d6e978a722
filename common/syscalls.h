/* Seccomp rules for lists of syscalls, on whatever architecture this is built for. (seccomp.h
 * is not included here: it defines names such as EV_NONE that others use.) */
#ifndef SBX_SYSCALLS_H
#define SBX_SYSCALLS_H

#include <stddef.h>
#include <stdint.h>

/* Adds `action` for each of the n syscalls (SCMP_SYS numbers). One that this architecture does
 * not have (libseccomp's negative pseudo number: poll, open, unlink... on aarch64) is skipped:
 * nothing can call it here, so there is nothing to allow or forbid; libseccomp itself would
 * refuse it (-EFAULT). A rule already present (-EEXIST) is not an error. Returns 0 or the
 * first other libseccomp error. */
int syscalls_add(void *ctx /* scmp_filter_ctx */, uint32_t action, const int *nrs, size_t n);

#endif
