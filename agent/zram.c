/* Compressed swap in guest RAM (zram, lz4), set up once after the first Ready: idle pages of the
 * code compress instead of pushing the guest into the OOM killer. A failure here is logged, never
 * fatal: the VM then serves without swap. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "agent.h"

#define PAGE 4096u
#define SYSFS_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

static int write_attr(const char *name, const char *val)
{
    char p[128];
    snprintf(p, sizeof p, "/sys/block/zram0/%s", name);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, val, strlen(val));
    close(fd);
    return n == (ssize_t)strlen(val) ? 0 : -1;
}

void zram_swap_on(int dev_dir_fd)
{
    struct sysinfo si;
    if (dev_dir_fd < 0 || sysinfo(&si) < 0)
        return;
    /* Half of RAM as the uncompressed swap size: at lz4's ~2-3x ratio it costs ~20% of RAM. */
    unsigned long long size = (unsigned long long)si.totalram * si.mem_unit / 2 / PAGE * PAGE;
    /* sysfs is read-only for the code; writable for these two writes, before any code runs. */
    if (mount(NULL, "/sys", NULL, MS_REMOUNT | SYSFS_FLAGS, NULL) < 0) {
        agent_log("zram: remount /sys: %s", strerror(errno));
        return;
    }
    char v[32];
    snprintf(v, sizeof v, "%llu", size);
    write_attr("comp_algorithm", "lz4");
    int rc = write_attr("disksize", v);
    int e = errno;
    if (mount(NULL, "/sys", NULL, MS_REMOUNT | MS_RDONLY | SYSFS_FLAGS, NULL) < 0)
        agent_log("zram: remount /sys read-only: %s", strerror(errno));
    errno = e;
    if (rc < 0) {
        agent_log("zram: set disksize: %s", strerror(errno));
        return;
    }
    /* The device node lives in the initramfs /dev the code cannot see. */
    int fd = openat(dev_dir_fd, "zram0", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        agent_log("zram: open zram0: %s", strerror(errno));
        return;
    }
    /* A version-1 swap header: what mkswap writes. */
    unsigned char hdr[PAGE];
    memset(hdr, 0, sizeof hdr);
    uint32_t version = 1, last_page = (uint32_t)(size / PAGE - 1);
    memcpy(hdr + 1024, &version, 4);
    memcpy(hdr + 1028, &last_page, 4);
    memcpy(hdr + PAGE - 10, "SWAPSPACE2", 10);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (pwrite(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr)
        agent_log("zram: write swap header: %s", strerror(errno));
    else if (swapon(path, 0) < 0)
        agent_log("zram: swapon: %s", strerror(errno));
    close(fd);
}
