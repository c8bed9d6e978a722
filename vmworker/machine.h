/* The QEMU machine per guest architecture: what differs on the command line between an x86_64
 * guest (microvm) and an aarch64 guest (virt). Pure data, no state: vmworker/qemu.c builds the
 * command line from it. Names, aliases and QEMU binaries are common/arch.c's. */
#ifndef SBX_MACHINE_H
#define SBX_MACHINE_H

typedef struct {
    const char *arch;    /* canonical name (arch.h): "x86_64" | "aarch64" */
    const char *machine; /* -M value (",memory-backend=mem" is appended for snapshots) */
    const char *cmdline; /* kernel command line, console= included */
    const char *virtio;  /* virtio transport, the suffix of the device models: "device" is
                          * virtio-mmio (virtio-blk-device), "pci" would be virtio-blk-pci */
} qemu_machine;

/* The machine for guest_arch, a name or alias arch_canonical() knows (x86_64/amd64,
 * aarch64/arm64); NULL or "": the host's architecture. NULL when there is none for it. */
const qemu_machine *qemu_machine_for(const char *guest_arch);
/* The -cpu model: `configured` when set, else the host's CPU under KVM (which only runs guests
 * of the host's architecture) and QEMU's fullest emulated one under TCG, for either machine. */
const char *qemu_cpu_for(const char *accel, const char *configured);

#endif
