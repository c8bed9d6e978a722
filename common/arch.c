/* Guest architectures (arch.h). */
#include "arch.h"

#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

static const struct {
    const char *name, *alias, *qemu;
} arches[] = {
    {"x86_64", "amd64", "qemu-system-x86_64"},
    {"aarch64", "arm64", "qemu-system-aarch64"},
};

const char *arch_canonical(const char *name)
{
    for (size_t i = 0; name && i < sizeof arches / sizeof arches[0]; i++)
        if (!strcmp(name, arches[i].name) || !strcmp(name, arches[i].alias))
            return arches[i].name;
    return NULL;
}

const char *arch_host(void)
{
    static char machine[65];
    if (!machine[0]) {
        struct utsname u;
        snprintf(machine, sizeof machine, "%s", uname(&u) == 0 ? u.machine : "unknown");
    }
    const char *c = arch_canonical(machine);
    return c ? c : machine;
}

const char *arch_qemu_binary(const char *arch)
{
    for (size_t i = 0; arch && i < sizeof arches / sizeof arches[0]; i++)
        if (!strcmp(arch, arches[i].name))
            return arches[i].qemu;
    return NULL;
}

int arch_images_dir(const char *cache, const char *arch, char *out, size_t n)
{
    int r = !strcmp(arch, "x86_64") ? snprintf(out, n, "%s/images", cache)
                                    : snprintf(out, n, "%s/images/%s", cache, arch);
    return r >= 0 && (size_t)r < n ? 0 : -1;
}
