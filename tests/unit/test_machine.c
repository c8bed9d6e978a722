/* The QEMU machine per guest architecture (vmworker/machine.c); names and aliases are
 * common/arch.c's (test_arch.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "arch.h"
#include "machine.h"

/* The x86_64 command line as the worker has always given it: snapshots and the measured boot
 * times depend on it, so it is pinned here word for word. */
static const char x86_cmdline[] = "console=ttyS0 panic=-1 reboot=t quiet loglevel=1 "
                                  "tsc=reliable no_timer_check i8042.noaux nolapic_timer "
                                  "random.trust_cpu=on";

static void test_x86_64_is_microvm(void **state)
{
    const qemu_machine *m = qemu_machine_for("x86_64");
    assert_non_null(m);
    assert_string_equal(m->arch, "x86_64");
    assert_string_equal(m->machine, "microvm,acpi=off,x-option-roms=off,rtc=on");
    assert_string_equal(m->cmdline, x86_cmdline);
    assert_string_equal(m->virtio, "device");
}

static void test_aarch64_is_virt(void **state)
{
    const qemu_machine *m = qemu_machine_for("aarch64");
    assert_non_null(m);
    assert_string_equal(m->arch, "aarch64");
    assert_string_equal(m->machine, "virt,gic-version=3");
    /* virt's PL011, and none of the x86-only kernel options. */
    assert_non_null(strstr(m->cmdline, "console=ttyAMA0 "));
    static const char *const x86_only[] = {"ttyS0", "tsc=", "i8042.", "nolapic_timer",
                                           "no_timer_check"};
    for (size_t i = 0; i < sizeof x86_only / sizeof x86_only[0]; i++)
        assert_null(strstr(m->cmdline, x86_only[i]));
    /* virtio-mmio: measured faster to the agent than virtio-pci on virt under TCG. */
    assert_string_equal(m->virtio, "device");
}

static void test_common_kernel_options(void **state)
{
    static const char *const archs[] = {"x86_64", "aarch64"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        const qemu_machine *m = qemu_machine_for(archs[i]);
        assert_non_null(m);
        /* Panic reboots, so that -no-reboot ends QEMU; the console stays quiet. */
        assert_non_null(strstr(m->cmdline, "panic=-1 "));
        assert_non_null(strstr(m->cmdline, " quiet loglevel=1"));
        assert_non_null(strstr(m->cmdline, "random.trust_cpu=on"));
        /* qemu.c appends the snapshot memory backend itself. */
        assert_null(strstr(m->machine, "memory-backend"));
        assert_true(!strcmp(m->virtio, "device") || !strcmp(m->virtio, "pci"));
    }
}

static void test_debian_names_are_aliases(void **state)
{
    assert_ptr_equal(qemu_machine_for("amd64"), qemu_machine_for("x86_64"));
    assert_ptr_equal(qemu_machine_for("arm64"), qemu_machine_for("aarch64"));
}

static void test_default_is_the_host(void **state)
{
    /* NULL on a host of an architecture without guests (arch_host() is then uname's name). */
    assert_ptr_equal(qemu_machine_for(NULL), qemu_machine_for(arch_host()));
    assert_ptr_equal(qemu_machine_for(""), qemu_machine_for(NULL));
#if defined(__x86_64__) || defined(__aarch64__)
    assert_non_null(qemu_machine_for(NULL));
#endif
}

static void test_cpu_model(void **state)
{
    assert_string_equal(qemu_cpu_for("kvm", NULL), "host");
    assert_string_equal(qemu_cpu_for("kvm", ""), "host");
    assert_string_equal(qemu_cpu_for("tcg", NULL), "max");
    assert_string_equal(qemu_cpu_for(NULL, NULL), "max");
    assert_string_equal(qemu_cpu_for("kvm", "cortex-a72"), "cortex-a72");
    assert_string_equal(qemu_cpu_for("tcg", "Skylake-Server"), "Skylake-Server");
}

static void test_unknown_is_refused(void **state)
{
    static const char *const bad[] = {"riscv64", "x86",      "i386",     "arm",
                                      "AARCH64", " aarch64", "aarch64 ", "x86_64,x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(qemu_machine_for(bad[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_x86_64_is_microvm),
        cmocka_unit_test(test_aarch64_is_virt),
        cmocka_unit_test(test_common_kernel_options),
        cmocka_unit_test(test_debian_names_are_aliases),
        cmocka_unit_test(test_default_is_the_host),
        cmocka_unit_test(test_cpu_model),
        cmocka_unit_test(test_unknown_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
