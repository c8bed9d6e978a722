/* syscalls_add: lists of syscalls become seccomp rules on any architecture; one the architecture
 * does not have is skipped. Built on x86, so aarch64 is checked through a filter for that
 * architecture, with the pseudo numbers an arm64 build's SCMP_SYS() yields for poll and unlink. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <seccomp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "syscalls.h"
/* After seccomp.h: the filters' own lists. */
#include "confine_syscalls.h"
#include "jail_syscalls.h"

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

/* What an arm64 program calls in place of an x86_64 syscall that arm64 does not have. */
static const char *const arm64_equivalent[][2] = {
    {"poll", "ppoll"},
    {"unlink", "unlinkat"},
    {"readlink", "readlinkat"},
    {"dup2", "dup3"},
    {"open", "openat"},
    {"stat", "newfstatat"},
    {"lstat", "newfstatat"},
    {"pipe", "pipe2"},
    {"access", "faccessat"},
    {"rename", "renameat2"},
    {"epoll_wait", "epoll_pwait"},
    {"select", "pselect6"},
    {"fork", "clone"},
    {"vfork", "clone"},
    {"getdents", "getdents64"},
    {"mkdir", "mkdirat"},
    {"rmdir", "unlinkat"},
    {"alarm", "setitimer"},
    {"epoll_create", "epoll_create1"},
    {"eventfd", "eventfd2"},
    {"creat", "openat"},
};

static bool in_list(const int *list, size_t n, int nr)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == nr)
            return true;
    return false;
}

/* Every syscall an allow list names, on an arm64 host: either arm64 has it, or the list also
 * allows what arm64 calls instead (the sanitizer lists once lacked dup3 that way). Names come
 * from this build's own numbers, pseudo ones included, so the check reads the same on either
 * kind of host. */
static void check_allow_list(const char *what, const int *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, list[i]);
        assert_non_null(name);
        if (seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, name) < 0) {
            const char *instead = NULL;
            for (size_t k = 0; k < sizeof arm64_equivalent / sizeof *arm64_equivalent; k++)
                if (!strcmp(arm64_equivalent[k][0], name))
                    instead = arm64_equivalent[k][1];
            if (!instead)
                fail_msg("%s: %s has no arm64 syscall and no known equivalent", what, name);
            if (!in_list(list, n, seccomp_syscall_resolve_name(instead)))
                fail_msg("%s allows %s but not %s, which arm64 calls instead", what, name, instead);
        }
        free(name);
    }
}

static void test_lists_hold_on_arm64(void **state)
{
    check_allow_list("worker", jail_worker_allow,
                     sizeof jail_worker_allow / sizeof *jail_worker_allow);
    check_allow_list("worker network process", jail_worker_net,
                     sizeof jail_worker_net / sizeof *jail_worker_net);
    check_allow_list("broker", confine_allow, sizeof confine_allow / sizeof *confine_allow);
    /* What QEMU may never do: each exists on arm64 too, so nothing there is left unforbidden
     * for want of its name. */
    for (size_t i = 0; i < sizeof jail_qemu_kill / sizeof *jail_qemu_kill; i++) {
        char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, jail_qemu_kill[i]);
        assert_non_null(name);
        if (seccomp_syscall_resolve_name_arch(SCMP_ARCH_AARCH64, name) < 0)
            fail_msg("QEMU's kill list: %s does not exist on arm64: name what arm64 has", name);
        free(name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absent_syscalls_skipped),
        cmocka_unit_test(test_errors_reported),
        cmocka_unit_test(test_lists_hold_on_arm64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
