/* What PID 1 sets up: mounts, root switch, a /dev from scratch, the port, the hidden kernel
 * command line, hostname and loopback, and each Hello's RNG seed and clock. It must never leave
 * the code a way to the initramfs, the disk, the port or the command line. */
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define AGENT_PORT_NAME "sbx.agent"
#define AGENT_ROOT_DEV "/dev/vda"
#define AGENT_NEWROOT "/newroot"
#define AGENT_PORTS_DIR AGENT_NEWROOT "/sys/class/virtio-ports"

/* How long boot waits for devices the kernel may still be probing. */
#define AGENT_ROOT_WAIT_MS 2000
#define AGENT_PORT_WAIT_MS 3000
/* Hello.seed: fewer bytes would be a weak reseed, more is pointless. */
#define AGENT_SEED_MIN 16
#define AGENT_SEED_MAX 512

/* The initramfs /dev: the console, the port and urandom are opened from it, and the code never
 * sees it. */
static int initrd_dev_fd = -1;
static int rng_fd = -1;

int boot_dev_dir(void)
{
    return initrd_dev_fd;
}

void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- boot --------------------------------------------------------------------------------- */

struct boot_mount {
    const char *src, *dst, *type;
    unsigned long flags;
    const char *data;
    bool required; /* without it the sandbox would be unsafe or useless */
};

static int boot_mount_all(const struct boot_mount *m, size_t n, sbx_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (mount(m[i].src, m[i].dst, m[i].type, m[i].flags, m[i].data) == 0)
            continue;
        if (m[i].required)
            return sbx_fail(err, errno, "mount %s on `%s`: %s", m[i].type, m[i].dst,
                            strerror(errno));
        agent_log("mount %s on `%s`: %s (continuing)", m[i].type, m[i].dst, strerror(errno));
    }
    return 0;
}

/* The initramfs needs only devtmpfs: the root disk, the console and the port are opened from it.
 * proc and sysfs are mounted once, in the new root (a mount there plus a detach here would cost
 * milliseconds of boot under TCG and serve nothing). */
int boot_early(sbx_err *err)
{
    /* EBUSY: the kernel mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT with a disk root). */
    if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
        return sbx_fail(err, errno, "mount devtmpfs on `/dev`: %s", strerror(errno));
    /* The initramfs has no /dev/console, so the kernel left fds 0-2 closed: fill them, so that
     * nothing opened later lands on 0-2 by accident. */
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        return sbx_fail(err, errno, "open `/dev/null`: %s", strerror(errno));
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
    initrd_dev_fd = open("/dev", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return 0;
}

static int boot_mount_root(sbx_err *err)
{
    /* Wait for the node before trying to mount: every failed mount attempt makes the kernel
     * print to the (slow, serial) console. */
    uint64_t until = now_ms() + AGENT_ROOT_WAIT_MS;
    struct stat st;
    while (stat(AGENT_ROOT_DEV, &st) < 0) {
        if (errno != ENOENT || now_ms() >= until)
            return sbx_fail(err, errno, "root disk `%s`: %s", AGENT_ROOT_DEV, strerror(errno));
        sleep_ms(2);
    }
    if (mount(AGENT_ROOT_DEV, AGENT_NEWROOT, "squashfs", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) <
        0)
        return sbx_fail(err, errno, "mount `%s` (squashfs) on `%s`: %s", AGENT_ROOT_DEV,
                        AGENT_NEWROOT, strerror(errno));
    return 0;
}

/* The code's /dev is a fresh tmpfs holding only harmless nodes: no disks, no memory devices,
 * no virtio port, no console. */
static int boot_populate_dev(sbx_err *err)
{
    static const struct {
        const char *name;
        unsigned maj, min;
    } nodes[] = {
        {"null", 1, 3},    {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8},
        {"urandom", 1, 9}, {"tty", 5, 0},  {"ptmx", 5, 2},
    };
    static const struct {
        const char *name, *target;
    } links[] = {
        {"fd", "/proc/self/fd"},
        {"stdin", "/proc/self/fd/0"},
        {"stdout", "/proc/self/fd/1"},
        {"stderr", "/proc/self/fd/2"},
    };
    const char *dev = AGENT_NEWROOT "/dev";
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64") < 0)
        return sbx_fail(err, errno, "mount tmpfs on `%s`: %s", dev, strerror(errno));
    cleanup_close int dfd = open(dev, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return sbx_fail(err, errno, "open `%s`: %s", dev, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(nodes); i++)
        if (mknodat(dfd, nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
            return sbx_fail(err, errno, "mknod `%s/%s`: %s", dev, nodes[i].name, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(links); i++)
        if (symlinkat(links[i].target, dfd, links[i].name) < 0)
            return sbx_fail(err, errno, "symlink `%s/%s`: %s", dev, links[i].name, strerror(errno));
    if (mkdirat(dfd, "pts", 0755) < 0 || mkdirat(dfd, "shm", 01777) < 0)
        return sbx_fail(err, errno, "mkdir in `%s`: %s", dev, strerror(errno));
    static const struct boot_mount sub[] = {
        {"devpts", AGENT_NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620,gid=5", false},
        {"tmpfs", AGENT_NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=25%",
         false},
    };
    return boot_mount_all(sub, ARRAY_LEN(sub), err);
}

int boot_mount_newroot(sbx_err *err)
{
    if (boot_mount_root(err) < 0)
        return -1;
    if (boot_populate_dev(err) < 0)
        return -1;
    static const struct boot_mount m[] = {
        {"proc", AGENT_NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2",
         true},
        {"sysfs", AGENT_NEWROOT "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
         true},
        {"tmpfs", AGENT_NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=50%", true},
        {"tmpfs", AGENT_NEWROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=10%", true},
        {"tmpfs", AGENT_NEWROOT "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=25%",
         false},
        {"tmpfs", AGENT_NEWROOT AGENT_HOME, "tmpfs", MS_NOSUID | MS_NODEV,
         "mode=0700,uid=1000,gid=1000,size=50%", true},
    };
    return boot_mount_all(m, ARRAY_LEN(m), err);
}

/* 1: `vport` is the agent's port, opened into *fd; 0: it is not (or not there yet); -1: error. */
static int boot_try_port(const char *vport, int *fd, sbx_err *err)
{
    char path[160], name[64];
    snprintf(path, sizeof path, AGENT_PORTS_DIR "/%s/name", vport);
    cleanup_close int nfd = open(path, O_RDONLY | O_CLOEXEC);
    if (nfd < 0)
        return 0;
    ssize_t n = read(nfd, name, sizeof name - 1);
    if (n <= 0)
        return 0;
    name[n] = '\0';
    name[strcspn(name, "\n")] = '\0';
    if (strcmp(name, AGENT_PORT_NAME) != 0)
        return 0;
    snprintf(path, sizeof path, "/dev/%s", vport);
    *fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (*fd >= 0)
        return 1;
    if (errno == ENOENT)
        return 0;
    return sbx_fail(err, errno, "open `%s`: %s", path, strerror(errno));
}

/* Finds the port by name in the new root's sysfs and opens its node from the initramfs /dev,
 * which the code never sees. The port appears a little after the driver probes (control
 * messages from QEMU), so wait for it. */
int boot_open_port(sbx_err *err)
{
    uint64_t until = now_ms() + AGENT_PORT_WAIT_MS;
    for (;;) {
        int fd = -1, rc = 0;
        DIR *d = opendir(AGENT_PORTS_DIR);
        if (d) {
            struct dirent *de;
            while (rc == 0 && (de = readdir(d)))
                if (de->d_name[0] != '.' && strlen(de->d_name) <= 64)
                    rc = boot_try_port(de->d_name, &fd, err);
            closedir(d);
        }
        if (rc != 0)
            return rc < 0 ? -1 : fd;
        if (now_ms() >= until)
            return sbx_fail(err, ENOENT, "no virtio port named `%s` after %d ms", AGENT_PORT_NAME,
                            AGENT_PORT_WAIT_MS);
        sleep_ms(2);
    }
}

/* Costs ~10 ms under TCG (loopback up), so it runs right after the first Ready is on its way
 * rather than before it; any exec is handled after it. */
static void boot_net_and_name(void)
{
    if (sethostname("sandbox", 7) < 0)
        agent_log("sethostname: %s", strerror(errno));
    /* Bringing lo up makes the kernel add 127.0.0.1/8 and ::1 on its own. */
    cleanup_close int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    struct ifreq ifr = {0};
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        agent_log("loopback up: %s", strerror(errno));
}

/* Once, after the first Ready is on its way: hostname, loopback and zram swap (milliseconds under
 * TCG that the first answer need not wait for). */
void boot_late(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    boot_net_and_name();
    zram_swap_on(initrd_dev_fd);
}

int boot_switch_root(sbx_err *err)
{
    /* The initramfs (and its devtmpfs, with the disk and the port) ends up below the new root,
     * out of reach of a process without CAP_SYS_CHROOT. */
    if (chdir(AGENT_NEWROOT) < 0)
        return sbx_fail(err, errno, "chdir `%s`: %s", AGENT_NEWROOT, strerror(errno));
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
        return sbx_fail(err, errno, "move `%s` to `/`: %s", AGENT_NEWROOT, strerror(errno));
    if (chroot(".") < 0)
        return sbx_fail(err, errno, "chroot: %s", strerror(errno));
    if (chdir("/") < 0)
        return sbx_fail(err, errno, "chdir `/`: %s", strerror(errno));
    if (mkdir(AGENT_CODE_DIR, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", AGENT_CODE_DIR, strerror(errno));
    return 0;
}

/* The kernel command line is the host's business (what it tunes, and any parameter it may
 * one day pass to the agent): the code (uid 1000) must not read it. An empty, read-only file is
 * bind-mounted over each file that shows it (/proc/cmdline, bootconfig, a device tree's
 * bootargs). The code cannot unmount it (no capabilities); in a
 * user namespace of its own the copy of this mount is locked to what it covers, and a fresh
 * proc instance there is refused because this one is not fully visible. The kernel log holds
 * the line as well ("Kernel command line: ..."): dmesg_restrict puts syslog(2) behind
 * CAP_SYSLOG. Any failure is fatal: a VM that would show the line does not serve code. */
int boot_hide_cmdline(sbx_err *err)
{
    static const struct {
        const char *path;
        bool required; /* bootconfig exists only with CONFIG_BOOT_CONFIG */
    } shown[] = {
        {"/proc/cmdline", true},
        {"/proc/bootconfig", false},
        /* Device-tree machines (aarch64's virt) also hand the line over in /chosen, readable by
         * all (/proc/device-tree links here). */
        {"/sys/firmware/devicetree/base/chosen/bootargs", false},
    };
    static const char empty[] = AGENT_CODE_DIR "/empty";
    cleanup_close int fd =
        open(empty, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)0444);
    if (fd < 0)
        return sbx_fail(err, errno, "create `%s`: %s", empty, strerror(errno));
    for (size_t i = 0; i < ARRAY_LEN(shown); i++) {
        const char *p = shown[i].path;
        if (!shown[i].required && access(p, F_OK) < 0 && errno == ENOENT)
            continue;
        /* A bind mount takes the flags of its source's mount; read-only needs a remount. */
        if (mount(empty, p, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, p, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            return sbx_fail(err, errno, "cover `%s`: %s", p, strerror(errno));
    }
    cleanup_close int dr = open("/proc/sys/kernel/dmesg_restrict", O_WRONLY | O_CLOEXEC);
    if (dr < 0 || write(dr, "1", 1) != 1)
        return sbx_fail(err, errno, "set kernel.dmesg_restrict: %s", strerror(errno));
    return 0;
}

/* Seed and clock, on every Hello: after a memory snapshot is restored, VMs that share its
 * memory must not share their RNG state, and the guest clock is as old as the snapshot. */
void boot_hello(const Sbx__Agent__Hello *h)
{
    if (h->seed.len >= AGENT_SEED_MIN && h->seed.len <= AGENT_SEED_MAX) {
        union {
            struct rand_pool_info info;
            uint8_t raw[sizeof(struct rand_pool_info) + AGENT_SEED_MAX];
        } u;
        u.info.entropy_count = (int)h->seed.len * 8;
        u.info.buf_size = (int)h->seed.len;
        memcpy(u.info.buf, h->seed.data, h->seed.len);
        if (rng_fd < 0)
            rng_fd = openat(initrd_dev_fd, "urandom", O_WRONLY | O_CLOEXEC);
        if (rng_fd < 0 || ioctl(rng_fd, RNDADDENTROPY, &u.info) < 0)
            agent_log("seeding the RNG: %s", strerror(errno));
        /* Adding entropy alone leaves the crng's key as it was until its next scheduled reseed
         * (up to a minute away), so every VM restored from one snapshot would draw the same
         * bytes: reseed it from the pool, which now holds this VM's seed, at once. */
        else if (ioctl(rng_fd, RNDRESEEDCRNG) < 0)
            agent_log("reseeding the RNG: %s", strerror(errno));
        explicit_bzero(&u, sizeof u);
    } else if (h->seed.len) {
        agent_log("seed of %zu bytes ignored (%d-%d expected)", h->seed.len, AGENT_SEED_MIN,
                  AGENT_SEED_MAX);
    }
    if (h->host_time_ns) {
        struct timespec ts = {.tv_sec = (time_t)(h->host_time_ns / 1000000000u),
                              .tv_nsec = (long)(h->host_time_ns % 1000000000u)};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0)
            agent_log("setting the clock: %s", strerror(errno));
    }
}
