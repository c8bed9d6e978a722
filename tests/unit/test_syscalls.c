/* syscalls_add: lists of syscalls become seccomp rules on any architecture; one the architecture
 * does not have is skipped. Built on x86, so aarch64 is checked through a filter for that
 * architecture, with the pseudo numbers an arm64 build's SCMP_SYS() yields for poll and unlink. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <seccomp.h>

#include "syscalls.h"

static scmp_filter_ctx aarch64_filter(uint32_t dflt)
{
    scmp_filter_ctx ctx = seccomp_init(dflt);
    assert_non_null(ctx);
    assert_int_equal(seccomp_arch_add(ctx, SCMP_ARCH_AARCH64), 0);
    assert_int_equal(seccomp_arch_remove(ctx, SCMP_ARCH_NATIVE), 0);
    return ctx;
}

static void test_absent_syscalls_skipped(void **state)
{
    int ppoll = seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, "ppoll");
    int unlinkat = seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, "unlinkat");
    assert_true(ppoll >= 0 && unlinkat >= 0);
    assert_true(__PNR_poll < 0 && __PNR_unlink < 0);
    /* What libseccomp does with them by itself: refused, which would fail a whole filter. */
    scmp_filter_ctx raw = aarch64_filter(SCMP_ACT_KILL_PROCESS);
    assert_int_equal(seccomp_rule_add(raw, SCMP_ACT_ALLOW, __PNR_poll, 0), -EFAULT);
    seccomp_release(raw);
    scmp_filter_ctx ctx = aarch64_filter(SCMP_ACT_KILL_PROCESS);
    const int allow[] = {__PNR_poll, ppoll, __PNR_unlink, unlinkat, ppoll};
    assert_int_equal(syscalls_add(ctx, SCMP_ACT_ALLOW, allow, 5), 0);
    seccomp_release(ctx);
    /* A kill list (on a filter that allows the rest, as QEMU's does). */
    ctx = aarch64_filter(SCMP_ACT_ALLOW);
    const int kill[] = {__PNR_open, seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, "ptrace")};
    assert_int_equal(syscalls_add(ctx, SCMP_ACT_KILL_PROCESS, kill, 2), 0);
    seccomp_release(ctx);
}

static void test_errors_reported(void **state)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    assert_non_null(ctx);
    const int ok[] = {SCMP_SYS(read), SCMP_SYS(read)}; /* a duplicate is no error */
    assert_int_equal(syscalls_add(ctx, SCMP_ACT_ALLOW, ok, 2), 0);
    /* The filter's default action as a rule's: libseccomp refuses it, and so do we. */
    const int bad[] = {SCMP_SYS(write)};
    assert_true(syscalls_add(ctx, SCMP_ACT_KILL_PROCESS, bad, 1) < 0);
    seccomp_release(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absent_syscalls_skipped),
        cmocka_unit_test(test_errors_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
