/* QEMU machine per guest architecture (see machine.h). The choices for aarch64 were measured
 * under TCG on x86 (issue 16): virtio-mmio reaches the agent's Ready ~20 ms sooner than
 * virtio-pci on virt, and gic-version=3 is what every KVM host (Graviton, Ampere) has as well
 * as what TCG emulates, so a template taken on one boots the same everywhere. */
#include "machine.h"

#include <string.h>

#include "arch.h"
#include "common.h"

/* Kernel options every guest gets: reboot (not halt) on panic so QEMU exits with -no-reboot,
 * and a quiet console (serial output is slow under TCG). */
#define CMDLINE_COMMON "panic=-1 reboot=t quiet loglevel=1"

static const qemu_machine machines[] = {
    {
        .arch = "x86_64",
        .machine = "microvm,acpi=off,x-option-roms=off,rtc=on",
        /* The TCG-friendly timer options measured in MEASUREMENTS.md. */
        .cmdline = "console=ttyS0 " CMDLINE_COMMON " tsc=reliable no_timer_check i8042.noaux "
                   "nolapic_timer random.trust_cpu=on",
        .virtio = "device",
    },
    {
        .arch = "aarch64",
        .machine = "virt,gic-version=3",
        .cmdline = "console=ttyAMA0 " CMDLINE_COMMON " random.trust_cpu=on",
        .virtio = "device",
    },
};

const qemu_machine *qemu_machine_for(const char *guest_arch)
{
    const char *a = arch_canonical(guest_arch && *guest_arch ? guest_arch : arch_host());
    for (size_t i = 0; a && i < ARRAY_LEN(machines); i++)
        if (!strcmp(a, machines[i].arch))
            return &machines[i];
    return NULL;
}

const char *qemu_cpu_for(const char *accel, const char *configured)
{
    if (configured && *configured)
        return configured;
    return accel && !strcmp(accel, "kvm") ? "host" : "max";
}
