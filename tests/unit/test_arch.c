/* Guest architectures (common/arch.c) and sbxd's guest_arch setting: names and aliases, the QEMU
 * per architecture, where each one's images live, and what sbxd refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "arch.h"
#include "config.h"

static void test_names(void **state)
{
    assert_string_equal(arch_canonical("x86_64"), "x86_64");
    assert_string_equal(arch_canonical("amd64"), "x86_64");
    assert_string_equal(arch_canonical("aarch64"), "aarch64");
    assert_string_equal(arch_canonical("arm64"), "aarch64");
    const char *bad[] = {"", "riscv64", "ARM64", "x86", "aarch64 ", "i686"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_null(arch_canonical(bad[i]));
    assert_null(arch_canonical(NULL));
    struct utsname u;
    assert_int_equal(uname(&u), 0);
    const char *host = arch_canonical(u.machine);
    assert_string_equal(arch_host(), host ? host : u.machine);
}

static void test_qemu_and_images(void **state)
{
    assert_string_equal(arch_qemu_binary("x86_64"), "qemu-system-x86_64");
    assert_string_equal(arch_qemu_binary("aarch64"), "qemu-system-aarch64");
    assert_null(arch_qemu_binary("arm64")); /* canonical names only */
    char d[64];
    assert_int_equal(arch_images_dir("/c", "x86_64", d, sizeof d), 0);
    assert_string_equal(d, "/c/images");
    assert_int_equal(arch_images_dir("/c", "aarch64", d, sizeof d), 0);
    assert_string_equal(d, "/c/images/aarch64");
    char small[12];
    assert_int_equal(arch_images_dir("/c", "aarch64", small, sizeof small), -1);
}

static void test_config(void **state)
{
    sbx_config c;
    sbx_err e = {0};
    setenv("EXEC_SANDBOX_CACHE_DIR", "/tmp/sbx-test-cache", 1);
    char *a0[] = {"sbxd", NULL};
    assert_int_equal(config_load(&c, 1, a0, &e), 0);
    assert_string_equal(c.guest_arch, arch_host());
    /* An alias, and the QEMU and images that follow from it unless set. */
    char *a1[] = {"sbxd", "--guest-arch", "arm64", NULL};
    assert_int_equal(config_load(&c, 3, a1, &e), 0);
    assert_string_equal(c.guest_arch, "aarch64");
    assert_string_equal(c.qemu, "qemu-system-aarch64");
    assert_string_equal(c.images_dir, "/tmp/sbx-test-cache/images/aarch64");
    char *a2[] = {"sbxd", "--guest-arch", "x86_64", "--qemu", "/opt/q", "--images-dir", "/i", NULL};
    assert_int_equal(config_load(&c, 7, a2, &e), 0);
    assert_string_equal(c.qemu, "/opt/q");
    assert_string_equal(c.images_dir, "/i");
    setenv("EXEC_SANDBOX_GUEST_ARCH", "x86_64", 1);
    assert_int_equal(config_load(&c, 1, a0, &e), 0);
    assert_string_equal(c.qemu, "qemu-system-x86_64");
    assert_string_equal(c.images_dir, "/tmp/sbx-test-cache/images");
    unsetenv("EXEC_SANDBOX_GUEST_ARCH");
    char *a3[] = {"sbxd", "--guest-arch", "riscv64", NULL};
    assert_int_equal(config_load(&c, 3, a3, &e), -1);
    assert_non_null(strstr(e.msg, "guest_arch: `riscv64`"));
    /* KVM cannot run another architecture's guests. */
    const char *other = strcmp(arch_host(), "aarch64") ? "aarch64" : "x86_64";
    char *a4[] = {"sbxd", "--guest-arch", (char *)other, "--accel", "kvm", NULL};
    assert_int_equal(config_load(&c, 5, a4, &e), -1);
    assert_non_null(strstr(e.msg, "cannot use KVM"));
    char *a5[] = {"sbxd", "--guest-arch", (char *)other, "--accel", "tcg", NULL};
    assert_int_equal(config_load(&c, 5, a5, &e), 0);
    unsetenv("EXEC_SANDBOX_CACHE_DIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_qemu_and_images),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
