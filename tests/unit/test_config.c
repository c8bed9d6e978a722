/* sbxd settings: file, environment and flags, in that order of precedence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "config.h"

static void test_defaults(void **state)
{
    sbx_config c;
    sbx_err e = {0};
    char *argv[] = {"sbxd", NULL};
    unsetenv("EXEC_SANDBOX_MAX_CONCURRENT_VMS");
    setenv("EXEC_SANDBOX_CACHE_DIR", "/tmp/sbx-test-cache", 1);
    assert_int_equal(config_load(&c, 1, argv, &e), 0);
    assert_int_equal(c.max_concurrent_vms, 10);
    assert_int_equal(c.default_memory_mb, 256);
    assert_int_equal(c.default_timeout_seconds, 30);
    assert_int_equal(c.session_idle_timeout_seconds, 300);
    assert_string_equal(c.accel, "auto");
    assert_string_equal(c.images_dir, "/tmp/sbx-test-cache/images");
    assert_true(c.enable_package_validation);
    assert_string_equal(c.pypi_index_url, "https://pypi.org/simple");
    assert_string_equal(c.npm_registry_url, "https://registry.npmjs.org/");
    assert_string_equal(c.package_index_ca_file, "");
    assert_int_equal(c.package_install_timeout, 300);
    assert_true(c.snapshot_cache_max_bytes == 10ull << 30);
    assert_string_equal(c.s3_bucket, "");
    assert_string_equal(c.s3_region, "us-east-1");
    assert_string_equal(c.s3_prefix, "exec-sandbox/");
    assert_int_equal(c.max_concurrent_s3_uploads, 4);
    unsetenv("EXEC_SANDBOX_CACHE_DIR");
}

/* Byte counts past 4 GiB: a 64-bit key. */
static void test_sizes(void **state)
{
    sbx_config c;
    sbx_err e = {0};
    char *a1[] = {"sbxd", "--snapshot-cache-max-bytes", "21474836480", NULL};
    assert_int_equal(config_load(&c, 3, a1, &e), 0);
    assert_true(c.snapshot_cache_max_bytes == 20ull << 30);
    char *a2[] = {"sbxd", "--snapshot-cache-max-bytes", "1", NULL};
    assert_int_equal(config_load(&c, 3, a2, &e), 0);
    assert_true(c.snapshot_cache_max_bytes == 1);
    const char *bad[] = {"0", "-1", "12k", "", "18446744073709551616", "17592186044417"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *a[] = {"sbxd", "--snapshot-cache-max-bytes", (char *)bad[i], NULL};
        assert_int_equal(config_load(&c, 3, a, &e), -1);
        assert_non_null(strstr(e.msg, "snapshot_cache_max_bytes"));
    }
    char *a3[] = {"sbxd", "--package-install-timeout", "5", NULL};
    assert_int_equal(config_load(&c, 3, a3, &e), -1);
    assert_non_null(strstr(e.msg, "package_install_timeout"));
}

static void test_precedence(void **state)
{
    char path[] = "/tmp/sbx-config-XXXXXX";
    int fd = mkstemp(path);
    dprintf(fd, "# comment\nmax_concurrent_vms = 3\ndefault_memory_mb=512\n"
                "accel = \"tcg\"\n\n");
    close(fd);
    setenv("EXEC_SANDBOX_MAX_CONCURRENT_VMS", "4", 1);
    char *argv[] = {"sbxd", "--config", path, "--default-timeout-seconds=60", NULL};
    sbx_config c;
    sbx_err e = {0};
    assert_int_equal(config_load(&c, 4, argv, &e), 0);
    assert_int_equal(c.max_concurrent_vms, 4);  /* env beats file */
    assert_int_equal(c.default_memory_mb, 512); /* file beats default */
    assert_int_equal(c.default_timeout_seconds, 60);
    assert_string_equal(c.accel, "tcg");
    char *argv2[] = {"sbxd", "--config", path, "--max-concurrent-vms", "7", NULL};
    assert_int_equal(config_load(&c, 5, argv2, &e), 0);
    assert_int_equal(c.max_concurrent_vms, 7); /* flag beats env */
    unsetenv("EXEC_SANDBOX_MAX_CONCURRENT_VMS");
    unlink(path);
}

static void test_errors(void **state)
{
    sbx_config c;
    sbx_err e = {0};
    char *a1[] = {"sbxd", "--max-concurrent-vms", "0", NULL};
    assert_int_equal(config_load(&c, 3, a1, &e), -1);
    assert_non_null(strstr(e.msg, "max_concurrent_vms"));
    char *a2[] = {"sbxd", "--no-such-thing", "1", NULL};
    assert_int_equal(config_load(&c, 3, a2, &e), -1);
    assert_non_null(strstr(e.msg, "unknown"));
    char *a3[] = {"sbxd", "--accel", "hvf", NULL};
    assert_int_equal(config_load(&c, 3, a3, &e), -1);
    char *a4[] = {"sbxd", "--default-memory-mb", "12abc", NULL};
    assert_int_equal(config_load(&c, 3, a4, &e), -1);
    char *a5[] = {"sbxd", "--enable-package-validation", "maybe", NULL};
    assert_int_equal(config_load(&c, 3, a5, &e), -1);
    char *a6[] = {"sbxd", "--default-timeout-seconds", NULL};
    assert_int_equal(config_load(&c, 2, a6, &e), -1);
    assert_non_null(strstr(e.msg, "needs a value"));
    setenv("EXEC_SANDBOX_DEFAULT_MEMORY_MB", "99999", 1);
    char *a7[] = {"sbxd", NULL};
    assert_int_equal(config_load(&c, 1, a7, &e), -1);
    assert_non_null(strstr(e.msg, "EXEC_SANDBOX_DEFAULT_MEMORY_MB"));
    unsetenv("EXEC_SANDBOX_DEFAULT_MEMORY_MB");
    char *a8[] = {"sbxd", "--warm-pool-size", "101", NULL};
    assert_int_equal(config_load(&c, 3, a8, &e), -1);
    assert_non_null(strstr(e.msg, "warm_pool_size"));
    char *a9[] = {"sbxd", "--max-concurrent-s3-uploads", "17", NULL};
    assert_int_equal(config_load(&c, 3, a9, &e), -1);
    assert_non_null(strstr(e.msg, "max_concurrent_s3_uploads"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
