/* Seccomp rules for lists of syscalls (syscalls.h). */
#include "syscalls.h"

#include <errno.h>
#include <seccomp.h>

int syscalls_add(void *ctx, uint32_t action, const int *nrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (nrs[i] < 0)
            continue;
        int rc = seccomp_rule_add(ctx, action, nrs[i], 0);
        if (rc < 0 && rc != -EEXIST)
            return rc;
    }
    return 0;
}
