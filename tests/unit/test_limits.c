/* Request validation against the contract's limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common.h"
#include "sbx_limits.h"

static sbx_err lim = {0};

static void test_language(void **state)
{
    assert_true(limits_language_ok("python"));
    assert_true(limits_language_ok("javascript"));
    assert_true(limits_language_ok("typescript"));
    assert_true(limits_language_ok("raw"));
    assert_false(limits_language_ok("ruby"));
    assert_false(limits_language_ok("ts"));
    assert_false(limits_language_ok("TypeScript"));
    assert_false(limits_language_ok(""));
    assert_false(limits_language_ok(NULL));
    /* The canonical spelling is a static string, never the caller's. */
    char ts[] = "typescript";
    assert_string_equal(limits_language_name(ts), "typescript");
    assert_ptr_not_equal(limits_language_name(ts), ts);
    assert_ptr_equal(limits_language_name(ts), limits_language_name("typescript"));
    assert_null(limits_language_name("typescrip"));
    assert_null(limits_language_name(NULL));
    /* The list the error messages give names it too. */
    assert_non_null(strstr(SBX_LANGUAGES, "typescript"));
}

static void test_code(void **state)
{
    assert_int_equal(limits_check_code((const uint8_t *)"x", 1, &lim), 0);
    assert_int_equal(limits_check_code((const uint8_t *)"", 0, &lim), -1);
    assert_non_null(strstr(lim.msg, "empty"));
    assert_int_equal(limits_check_code((const uint8_t *)"a\0b", 3, &lim), -1);
    assert_non_null(strstr(lim.msg, "NUL"));
    uint8_t *big = calloc(1, SBX_MAX_CODE + 1);
    memset(big, 'a', SBX_MAX_CODE + 1);
    assert_int_equal(limits_check_code(big, SBX_MAX_CODE, &lim), 0);
    assert_int_equal(limits_check_code(big, SBX_MAX_CODE + 1, &lim), -1);
    free(big);
}

static void test_ranges(void **state)
{
    assert_int_equal(limits_check_timeout(0, &lim), -1);
    assert_int_equal(limits_check_timeout(1, &lim), 0);
    assert_int_equal(limits_check_timeout(300, &lim), 0);
    assert_int_equal(limits_check_timeout(301, &lim), -1);
    assert_int_equal(limits_check_memory(127, &lim), -1);
    assert_int_equal(limits_check_memory(128, &lim), 0);
    assert_int_equal(limits_check_memory(2048, &lim), 0);
    assert_int_equal(limits_check_memory(99999, &lim), -1);
    assert_non_null(strstr(lim.msg, "99999"));
    assert_int_equal(limits_check_env_count(100, &lim), 0);
    assert_int_equal(limits_check_env_count(101, &lim), -1);
}

static void test_env(void **state)
{
    assert_int_equal(limits_check_env("API_KEY", "secret", &lim), 0);
    assert_int_equal(limits_check_env("_x1", "", &lim), 0);
    const char *denied[] = {"LD_PRELOAD",   "LD_LIBRARY_PATH", "PATH",       "PYTHONPATH",
                            "NODE_OPTIONS", "BASH_ENV",        "PYTHONHOME", "HOME"};
    for (size_t i = 0; i < ARRAY_LEN(denied); i++)
        assert_int_equal(limits_check_env(denied[i], "x", &lim), -1);
    /* The blocklist holds in any letter case, with a message that names the variable. */
    const char *spellings[] = {"ld_preload", "Ld_Preload", "lD_lIbRaRy_PaTh", "path",
                               "Path",       "pythonpath", "node_options",    "Bash_Env",
                               "ifs",        "bun_options"};
    for (size_t i = 0; i < ARRAY_LEN(spellings); i++) {
        assert_int_equal(limits_check_env(spellings[i], "x", &lim), -1);
        assert_non_null(strstr(lim.msg, spellings[i]));
        assert_non_null(strstr(lim.msg, "not allowed"));
    }
    /* ...but only those names: a prefix, a suffix or a near miss is data. */
    const char *fine[] = {"LD", "ld", "LDX_A", "PATHS", "my_path", "PYTHONPATH2", "HOMEDIR", "E"};
    for (size_t i = 0; i < ARRAY_LEN(fine); i++)
        assert_int_equal(limits_check_env(fine[i], "x", &lim), 0);
    assert_int_equal(limits_check_env("", "x", &lim), -1);
    assert_int_equal(limits_check_env("1ABC", "x", &lim), -1);
    assert_int_equal(limits_check_env("A-B", "x", &lim), -1);
    assert_int_equal(limits_check_env("A=B", "x", &lim), -1);
    assert_int_equal(limits_check_env("A", "line1\nline2", &lim), -1);
    assert_non_null(strstr(lim.msg, "newline"));
}

static void test_idle_timeout(void **state)
{
    assert_int_equal(limits_check_idle_timeout(9, &lim), -1);
    assert_non_null(strstr(lim.msg, "10-3600"));
    assert_int_equal(limits_check_idle_timeout(10, &lim), 0);
    assert_int_equal(limits_check_idle_timeout(3600, &lim), 0);
    assert_int_equal(limits_check_idle_timeout(3601, &lim), -1);
}

static void test_guest_path(void **state)
{
    const char *ok[] = {"a",   "input.csv", "dir/file.txt", "...",
                        "..a", "a..",       "a/..b/c",      ".hidden"};
    for (size_t i = 0; i < ARRAY_LEN(ok); i++)
        if (limits_check_guest_path(ok[i], &lim) != 0)
            fail_msg("`%s` refused: %s", ok[i], lim.msg);
    const char *bad[] = {"",     "/etc/passwd", "/",         "..",   "../x",
                         "a/..", "a/../b",      "a/../../b", "./..", "a//../b",
                         "./x",  "a/./b",       "dir/",      "a//b", "."};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (limits_check_guest_path(bad[i], &lim) != -1)
            fail_msg("`%s` accepted", bad[i]);
    assert_int_equal(limits_check_guest_path(NULL, &lim), -1);
    assert_int_equal(limits_check_guest_path("/abs", &lim), -1);
    assert_non_null(strstr(lim.msg, "absolute"));
    assert_int_equal(limits_check_guest_path("x/../y", &lim), -1);
    assert_non_null(strstr(lim.msg, ".."));
    /* 255 bytes is the limit; 256 is over. */
    char p[SBX_MAX_PATH + 2];
    memset(p, 'a', sizeof p - 1);
    p[SBX_MAX_PATH] = '\0';
    assert_int_equal(limits_check_guest_path(p, &lim), 0);
    p[SBX_MAX_PATH] = 'a';
    p[SBX_MAX_PATH + 1] = '\0';
    assert_int_equal(limits_check_guest_path(p, &lim), -1);
    assert_non_null(strstr(lim.msg, "256 bytes"));
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
