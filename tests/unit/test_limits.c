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
    /* The blocklist holds in any letter case, with a message that names the variable. */
    const char *spellings[] = {"ld_preload", "Ld_Preload", "lD_lIbRaRy_PaTh", "path",
                               "Path",       "pythonpath", "node_options",    "Bash_Env",
                               "ifs",        "bun_options"};
    for (size_t i = 0; i < ARRAY_LEN(spellings); i++) {
        assert_int_equal(limits_check_env(spellings[i], "x", msg, sizeof msg), -1);
        assert_non_null(strstr(msg, spellings[i]));
        assert_non_null(strstr(msg, "not allowed"));
    }
    /* ...but only those names: a prefix, a suffix or a near miss is data. */
    const char *fine[] = {"LD", "ld", "LDX_A", "PATHS", "my_path", "PYTHONPATH2", "HOMEDIR", "E"};
    for (size_t i = 0; i < ARRAY_LEN(fine); i++)
        assert_int_equal(limits_check_env(fine[i], "x", msg, sizeof msg), 0);
    assert_int_equal(limits_check_env("", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("1ABC", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A-B", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A=B", "x", msg, sizeof msg), -1);
    assert_int_equal(limits_check_env("A", "line1\nline2", msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "newline"));
}

static void test_idle_timeout(void **state)
{
    assert_int_equal(limits_check_idle_timeout(9, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "10-3600"));
    assert_int_equal(limits_check_idle_timeout(10, msg, sizeof msg), 0);
    assert_int_equal(limits_check_idle_timeout(3600, msg, sizeof msg), 0);
    assert_int_equal(limits_check_idle_timeout(3601, msg, sizeof msg), -1);
}

static void test_guest_path(void **state)
{
    const char *ok[] = {"a",   "input.csv", "dir/file.txt", "...",
                        "..a", "a..",       "a/..b/c",      ".hidden"};
    for (size_t i = 0; i < ARRAY_LEN(ok); i++)
        if (limits_check_guest_path(ok[i], msg, sizeof msg) != 0)
            fail_msg("`%s` refused: %s", ok[i], msg);
    const char *bad[] = {"",     "/etc/passwd", "/",         "..",   "../x",
                         "a/..", "a/../b",      "a/../../b", "./..", "a//../b",
                         "./x",  "a/./b",       "dir/",      "a//b", "."};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (limits_check_guest_path(bad[i], msg, sizeof msg) != -1)
            fail_msg("`%s` accepted", bad[i]);
    assert_int_equal(limits_check_guest_path(NULL, msg, sizeof msg), -1);
    assert_int_equal(limits_check_guest_path("/abs", msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "absolute"));
    assert_int_equal(limits_check_guest_path("x/../y", msg, sizeof msg), -1);
    assert_non_null(strstr(msg, ".."));
    /* 255 bytes is the limit; 256 is over. */
    char p[SBX_MAX_PATH + 2];
    memset(p, 'a', sizeof p - 1);
    p[SBX_MAX_PATH] = '\0';
    assert_int_equal(limits_check_guest_path(p, msg, sizeof msg), 0);
    p[SBX_MAX_PATH] = 'a';
    p[SBX_MAX_PATH + 1] = '\0';
    assert_int_equal(limits_check_guest_path(p, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "256 bytes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_language),     cmocka_unit_test(test_code),
        cmocka_unit_test(test_ranges),       cmocka_unit_test(test_env),
        cmocka_unit_test(test_idle_timeout), cmocka_unit_test(test_guest_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
