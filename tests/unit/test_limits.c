/* Request validation against the contract's limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common.h"
#include "sbx_limits.h"

static char msg[256];

static void test_language(void **state)
{
    assert_true(limits_language_ok("python"));
    assert_true(limits_language_ok("javascript"));
    assert_true(limits_language_ok("raw"));
    assert_false(limits_language_ok("ruby"));
    assert_false(limits_language_ok(""));
    assert_false(limits_language_ok(NULL));
}

static void test_code(void **state)
{
    assert_int_equal(limits_check_code((const uint8_t *)"x", 1, msg, sizeof msg), 0);
    assert_int_equal(limits_check_code((const uint8_t *)"", 0, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "empty"));
    assert_int_equal(limits_check_code((const uint8_t *)"a\0b", 3, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "NUL"));
    uint8_t *big = calloc(1, SBX_MAX_CODE + 1);
    memset(big, 'a', SBX_MAX_CODE + 1);
    assert_int_equal(limits_check_code(big, SBX_MAX_CODE, msg, sizeof msg), 0);
    assert_int_equal(limits_check_code(big, SBX_MAX_CODE + 1, msg, sizeof msg), -1);
    free(big);
}

static void test_ranges(void **state)
{
    assert_int_equal(limits_check_timeout(0, msg, sizeof msg), -1);
    assert_int_equal(limits_check_timeout(1, msg, sizeof msg), 0);
    assert_int_equal(limits_check_timeout(300, msg, sizeof msg), 0);
    assert_int_equal(limits_check_timeout(301, msg, sizeof msg), -1);
    assert_int_equal(limits_check_memory(127, msg, sizeof msg), -1);
    assert_int_equal(limits_check_memory(128, msg, sizeof msg), 0);
    assert_int_equal(limits_check_memory(2048, msg, sizeof msg), 0);
    assert_int_equal(limits_check_memory(99999, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "99999"));
    assert_int_equal(limits_check_env_count(100, msg, sizeof msg), 0);
    assert_int_equal(limits_check_env_count(101, msg, sizeof msg), -1);
}

static void test_env(void **state)
{
    assert_int_equal(limits_check_env("API_KEY", "secret", msg, sizeof msg), 0);
    assert_int_equal(limits_check_env("_x1", "", msg, sizeof msg), 0);
    const char *denied[] = {"LD_PRELOAD",   "LD_LIBRARY_PATH", "PATH",       "PYTHONPATH",
                            "NODE_OPTIONS", "BASH_ENV",        "PYTHONHOME", "HOME"};
    for (size_t i = 0; i < ARRAY_LEN(denied); i++)
        assert_int_equal(limits_check_env(denied[i], "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("1ABC", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A-B", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A=B", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A", "line1\nline2", msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "newline"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_language),
        cmocka_unit_test(test_code),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
