/* The package layer, when the host attached one: a read-only squashfs disk (the virtio disk whose
 * serial is "sbx-packages"), mounted once on AGENT_PKGS_DIR and put on the interpreters' paths.
 * The code can read and run what is there, never change it: a run that writes into it fails, and
 * the next VM gets the same bytes. A VM restored from a snapshot has it mounted already. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define PKGS_SERIAL "sbx-packages"
#define PKGS_WAIT_MS 2000

static bool mounted;

bool pkgs_mounted(void)
{
    return mounted;
}

/* The block device (vda, vdb...) whose serial is ours, into name; 0 when none (yet). */
static int find_disk(char *name, size_t n)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        if (strncmp(e->d_name, "vd", 2) || strlen(e->d_name) > 16)
            continue;
        char p[64], serial[64];
        snprintf(p, sizeof p, "/sys/block/%s/serial", e->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, serial, sizeof serial - 1);
        close(fd);
        serial[r > 0 ? r : 0] = '\0';
        serial[strcspn(serial, "\n")] = '\0';
        if (!strcmp(serial, PKGS_SERIAL)) {
            snprintf(name, n, "%s", e->d_name);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

int pkgs_mount(int dev_dir_fd, sbx_err *err)
{
    if (mounted)
        return 0;
    if (dev_dir_fd < 0)
        return sbx_fail(err, ENODEV, "package layer: no device directory");
    char disk[32];
    uint64_t until = now_ms() + PKGS_WAIT_MS;
    /* The node in devtmpfs comes a little after the sysfs entry. */
    while (!find_disk(disk, sizeof disk) || faccessat(dev_dir_fd, disk, F_OK, 0) < 0) {
        if (now_ms() >= until)
            return sbx_fail(err, ENODEV, "package layer: no disk with serial `%s`", PKGS_SERIAL);
        sleep_ms(2);
    }
    /* The node lives in the initramfs /dev, which has no path from here: through our fd. */
    char src[64];
    snprintf(src, sizeof src, "/proc/self/fd/%d/%s", dev_dir_fd, disk);
    if (mkdir(AGENT_PKGS_DIR, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", AGENT_PKGS_DIR, strerror(errno));
    if (mount(src, AGENT_PKGS_DIR, "squashfs", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        return sbx_fail(err, errno, "mount the package layer (%s) on `%s`: %s", disk,
                        AGENT_PKGS_DIR, strerror(errno));
    mounted = true;
    return 0;
}
