/* syscalls_add: lists of syscalls become seccomp rules on any architecture; one the architecture
 * does not have is skipped. Built on x86, so aarch64 is checked through a filter for that
 * architecture, with the pseudo numbers an arm64 build's SCMP_SYS() yields for poll and unlink. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <seccomp.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "syscalls.h"

static scmp_filter_ctx aarch64_filter(uint32_t dflt)
{
    scmp_filter_ctx ctx = seccomp_init(dflt);
    assert_non_null(ctx);
    assert_int_equal(seccomp_arch_add(ctx, SCMP_ARCH_AARCH64), 0);
    assert_int_equal(seccomp_arch_remove(ctx, SCMP_ARCH_NATIVE), 0);
    return ctx;
}

static void export_pfc(scmp_filter_ctx ctx, char *out, size_t n)
{
    int fd = memfd_create("pfc", 0);
    assert_true(fd >= 0);
    assert_int_equal(seccomp_export_pfc(ctx, fd), 0);
    ssize_t got = pread(fd, out, n - 1, 0);
    assert_true(got > 0);
    out[got] = '\0';
    close(fd);
}

static void test_absent_syscalls_skipped(void **state)
{
    /* Rules take the build's own numbers; libseccomp translates them for each filter arch. */
    int ppoll = SCMP_SYS(ppoll), unlinkat = SCMP_SYS(unlinkat);
    assert_true(seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, "ppoll") >= 0);
    assert_true(__PNR_poll < 0 && __PNR_unlink < 0);
    /* What libseccomp does with them by itself: refused, which would fail a whole filter. */
    scmp_filter_ctx raw = aarch64_filter(SCMP_ACT_KILL_PROCESS);
    assert_true(seccomp_rule_add(raw, SCMP_ACT_ALLOW, __PNR_poll, 0) < 0); /* -EFAULT in 2.5 */
    seccomp_release(raw);
    scmp_filter_ctx ctx = aarch64_filter(SCMP_ACT_KILL_PROCESS);
    const int allow[] = {__PNR_poll, ppoll, __PNR_unlink, unlinkat, ppoll};
    assert_int_equal(syscalls_add(ctx, SCMP_ACT_ALLOW, allow, 5), 0);
    /* The ones aarch64 has are in the filter (libseccomp's text form names each rule's syscall). */
    char pfc[16384];
    export_pfc(ctx, pfc, sizeof pfc);
    assert_non_null(strstr(pfc, "\"ppoll\""));
    assert_non_null(strstr(pfc, "\"unlinkat\""));
    seccomp_release(ctx);
    /* A kill list (on a filter that allows the rest, as QEMU's does). */
    ctx = aarch64_filter(SCMP_ACT_ALLOW);
    const int kill[] = {__PNR_open, SCMP_SYS(ptrace)};
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
