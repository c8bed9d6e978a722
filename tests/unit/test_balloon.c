/* The balloon's target from the guest's statistics (vmworker/balloon.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "balloon.h"

/* balloon.c's other functions talk QMP; only balloon_target_mb runs here. */
int qmp_exec(qmp_conn *q, const char *cmd, json_t *args, json_t **ret, uint64_t deadline,
             sbx_err *err)
{
    json_decref(args);
    return -1;
}

/* The worker's logger (vmworker/worker.h), silent here. */
void wlog(const char *fmt, ...);
void wlog(const char *fmt, ...) {}

static void test_takes_what_is_available_less_headroom(void **state)
{
    /* 256 MB VM, 213 MB available: leave max(32, 256/8) = 32 MB of it. */
    assert_int_equal(balloon_target_mb(256, 213), 256 - (213 - 32));
    /* A larger VM keeps an eighth of its RAM as headroom. */
    assert_int_equal(balloon_target_mb(2048, 1800), 2048 - (1800 - 256));
}

static void test_too_little_to_take(void **state)
{
    assert_int_equal(balloon_target_mb(256, 40), 256); /* 8 MB over headroom: not worth it */
    assert_int_equal(balloon_target_mb(256, 32 + 16), 256 - 16); /* exactly the minimum */
    assert_int_equal(balloon_target_mb(256, 0), 256);
    assert_int_equal(balloon_target_mb(256, -1), 256); /* no statistics */
}

static void test_guest_claims_are_capped(void **state)
{
    /* A guest claiming more than the VM has gets at most the VM less headroom taken. */
    assert_int_equal(balloon_target_mb(256, 1e12), 32);
    assert_int_equal(balloon_target_mb(256, 256), 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_takes_what_is_available_less_headroom),
        cmocka_unit_test(test_too_little_to_take),
        cmocka_unit_test(test_guest_claims_are_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
