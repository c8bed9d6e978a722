/* Where a VM's guest assets are: kernel, initramfs and the language's root image, resolved in
 * images_dir. It only finds files; building them is scripts/build-assets.sh's business.
 * TypeScript has no image of its own: Bun, in the JavaScript image, runs it. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sbxd.h"

int assets_resolve(const char *language, char *kernel, char *initrd, char *rootfs, size_t n,
                   sbx_err *err)
{
    const char *names[3] = {"vmlinux", "initramfs.cpio", NULL};
    char img[64];
    snprintf(img, sizeof img, "%s.sqfs", !strcmp(language, "typescript") ? "javascript" : language);
    names[2] = img;
    char *outs[3] = {kernel, initrd, rootfs};
    for (int i = 0; i < 3; i++) {
        char p[600], real[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", cfg.images_dir, names[i]);
        if (!realpath(p, real) || access(real, R_OK) != 0)
            return sbx_fail(err, ENOENT,
                            "guest asset `%s` (%s) is missing in %s: build the assets with `make "
                            "assets ARCH=%s` or fetch them with `sbx prefetch --arch %s --from "
                            "URL|PATH`",
                            names[i], cfg.guest_arch, cfg.images_dir, cfg.guest_arch,
                            cfg.guest_arch);
        if (strlen(real) >= n)
            return sbx_fail(err, ENAMETOOLONG, "asset path `%s` is too long", real);
        strcpy(outs[i], real);
    }
    return 0;
}
