/* Mount namespace root, credentials and seccomp for the worker, and the seccomp filter QEMU gets
 * on top of its own -sandbox. It never reports success with a capability left or a host path
 * writable that the VM does not need. */
#include "jail.h"
#include "syscalls.h"
#include "worker.h"

#include <cap-ng.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

/* After seccomp.h (its SCMP_SYS), which must follow worker.h (whose names it would shadow). */
#include "jail_syscalls.h"

static int mkdir_in(const char *root, const char *rel, sbx_err *err)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", p, strerror(errno));
    return 0;
}

/* Mount attributes for p and every mount below it: MS_REMOUNT changes only the top mount of a
 * recursive bind, and a host with something mounted under /usr (or under an asset directory)
 * would otherwise hand that over writable. */
static int seal_tree(const char *p, uint64_t attrs, unsigned long ms_flags, sbx_err *err)
{
    struct mount_attr a = {.attr_set = attrs};
    if (mount_setattr(AT_FDCWD, p, AT_RECURSIVE | AT_SYMLINK_NOFOLLOW, &a, sizeof a) == 0)
        return 0;
    if (errno != ENOSYS)
        return sbx_fail(err, errno, "seal the mounts under `%s`: %s", p, strerror(errno));
    /* Kernels before 5.12: remount each mount below p, as /proc/self/mountinfo lists them. */
    cleanup_fclose FILE *mi = fopen("/proc/self/mountinfo", "re");
    if (!mi)
        return sbx_fail(err, errno, "open /proc/self/mountinfo: %s", strerror(errno));
    char line[4096], mp[PATH_MAX];
    size_t pl = strlen(p);
    while (fgets(line, sizeof line, mi)) {
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 || strncmp(mp, p, pl) ||
            mp[pl] != '/' || strstr(mp, "\\"))
            continue; /* not below p, or an escaped name: none of ours has one */
        if (mount(NULL, mp, NULL, MS_REMOUNT | MS_BIND | ms_flags, NULL) < 0)
            return sbx_fail(err, errno, "remount `%s`: %s", mp, strerror(errno));
    }
    return 0;
}

/* Bind src onto root/rel (a file or a directory), read-only unless rw. */
static int bind_in(const char *root, const char *rel, const char *src, bool rw, bool dir,
                   sbx_err *err)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    if (dir) {
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return sbx_fail(err, errno, "mkdir `%s`: %s", p, strerror(errno));
    } else {
        int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return sbx_fail(err, errno, "create `%s`: %s", p, strerror(errno));
        close(fd);
    }
    if (mount(src, p, NULL, MS_BIND | MS_REC, NULL) < 0)
        return sbx_fail(err, errno, "bind `%s` on `%s`: %s", src, p, strerror(errno));
    unsigned long fl = MS_REMOUNT | MS_BIND | MS_NOSUID | (rw ? MS_NOEXEC | MS_NODEV : MS_RDONLY);
    if (!rw && !dir)
        fl |= MS_NODEV; /* kernel, images: data only */
    if (mount(NULL, p, NULL, fl, NULL) < 0)
        return sbx_fail(err, errno, "remount `%s`: %s", p, strerror(errno));
    if (dir) {
        uint64_t attrs =
            MOUNT_ATTR_NOSUID | (rw ? MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NODEV : MOUNT_ATTR_RDONLY);
        if (seal_tree(p, attrs, fl & ~(MS_REMOUNT | MS_BIND), err) < 0)
            return -1;
    }
    return 0;
}

/* /lib, /bin... are symlinks into /usr on merged-/usr hosts and directories elsewhere. */
static int top_dir(const char *root, const char *name, sbx_err *err)
{
    char host[64], link[PATH_MAX], p[PATH_MAX];
    snprintf(host, sizeof host, "/%s", name);
    struct stat st;
    if (lstat(host, &st) < 0)
        return 0;
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(host, link, sizeof link - 1);
        if (n < 0)
            return sbx_fail(err, errno, "readlink `%s`: %s", host, strerror(errno));
        link[n] = '\0';
        snprintf(p, sizeof p, "%s/%s", root, name);
        if (symlink(link, p) < 0)
            return sbx_fail(err, errno, "symlink `%s`: %s", p, strerror(errno));
        return 0;
    }
    return S_ISDIR(st.st_mode) ? bind_in(root, name, host, false, true, err) : 0;
}

static int dev_node(const char *root, const char *name, bool kvm_owner, const jail_spec *s,
                    sbx_err *err)
{
    char host[64], rel[64];
    snprintf(host, sizeof host, "/dev/%s", name);
    snprintf(rel, sizeof rel, "dev/%s", name);
    struct stat st;
    if (stat(host, &st) < 0)
        return sbx_fail(err, errno, "`%s`: %s", host, strerror(errno));
    if (!s->userns && kvm_owner) {
        /* Our own node, owned by the VM's uid: no host group membership needed. */
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", root, rel);
        if (mknod(p, S_IFCHR | 0600, st.st_rdev) < 0 || chown(p, s->uid, s->gid) < 0)
            return sbx_fail(err, errno, "mknod `%s`: %s", p, strerror(errno));
        return 0;
    }
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return sbx_fail(err, errno, "create `%s`: %s", p, strerror(errno));
    close(fd);
    if (mount(host, p, NULL, MS_BIND, NULL) < 0)
        return sbx_fail(err, errno, "bind `%s`: %s", host, strerror(errno));
    return 0;
}

static int build_root(const jail_spec *s, const char *root, sbx_err *err)
{
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", root, strerror(errno));
    if (mount("sbx-jail", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") < 0)
        return sbx_fail(err, errno, "mount tmpfs on `%s`: %s", root, strerror(errno));
    static const char *const dirs[] = {"assets", "dev", "proc", "tmp", "etc", ".old"};
    for (size_t i = 0; i < ARRAY_LEN(dirs); i++)
        if (mkdir_in(root, dirs[i], err) < 0)
            return -1;
    if (bind_in(root, "usr", "/usr", false, true, err) < 0)
        return -1;
    static const char *const tops[] = {"lib", "lib64", "lib32", "libx32", "bin", "sbin"};
    for (size_t i = 0; i < ARRAY_LEN(tops); i++)
        if (top_dir(root, tops[i], err) < 0)
            return -1;
    /* The dynamic loader finds multiarch libraries through its cache. */
    if (access("/etc/ld.so.cache", R_OK) == 0 &&
        bind_in(root, "etc/ld.so.cache", "/etc/ld.so.cache", false, false, err) < 0)
        return -1;
    if (bind_in(root, "assets/vmlinux", s->kernel, false, false, err) < 0 ||
        bind_in(root, "assets/initramfs.cpio", s->initrd, false, false, err) < 0 ||
        bind_in(root, "assets/rootfs.sqfs", s->rootfs, false, false, err) < 0 ||
        bind_in(root, "assets/qemu-system-x86_64", s->qemu, false, false, err) < 0 ||
        (s->layer && bind_in(root, "assets/layer.sqfs", s->layer, false, false, err) < 0))
        return -1;
    /* QEMU's executable needs exec rights on its bind mount. */
    char q[PATH_MAX];
    snprintf(q, sizeof q, "%s/assets/qemu-system-x86_64", root);
    if (mount(NULL, q, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        return sbx_fail(err, errno, "remount `%s`: %s", q, strerror(errno));
    /* /vm is the one place QEMU may write (its sockets and its stderr log): a tmpfs of its own,
     * capped in bytes and inodes, so a QEMU that a guest took over cannot fill the host's disk
     * through it. Nothing outside the jail needs what it holds. */
    char p[PATH_MAX], opts[128];
    snprintf(p, sizeof p, "%s/vm", root);
    snprintf(opts, sizeof opts, "size=%dk,nr_inodes=%d,mode=0700,uid=%u,gid=%u", JAIL_VM_DIR_KB,
             JAIL_VM_DIR_INODES, (unsigned)s->uid, (unsigned)s->gid);
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "mkdir `%s`: %s", p, strerror(errno));
    if (mount("sbx-vm", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0)
        return sbx_fail(err, errno, "mount tmpfs on `%s`: %s", p, strerror(errno));
    /* A memory snapshot's directory (mem, state): read-only for a restore, so the RAM file every
     * restored VM maps stays byte-identical; data only either way. */
    if (s->snapshot_dir) {
        if (bind_in(root, "assets/snapshot", s->snapshot_dir, s->snapshot_rw, true, err) < 0)
            return -1;
        snprintf(q, sizeof q, "%s/assets/snapshot", root);
        unsigned long fl = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        if (mount(NULL, q, NULL, fl | (s->snapshot_rw ? 0 : MS_RDONLY), NULL) < 0)
            return sbx_fail(err, errno, "remount `%s`: %s", q, strerror(errno));
        if (seal_tree(q,
                      MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC |
                          (s->snapshot_rw ? 0 : MOUNT_ATTR_RDONLY),
                      MS_NOSUID | MS_NODEV | MS_NOEXEC | (s->snapshot_rw ? 0 : MS_RDONLY), err) < 0)
            return -1;
    }
    snprintf(p, sizeof p, "%s/dev", root);
    if (mount("sbx-dev", p, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755") < 0)
        return sbx_fail(err, errno, "mount /dev: %s", strerror(errno));
    static const char *const devs[] = {"null", "zero", "urandom", "random"};
    for (size_t i = 0; i < ARRAY_LEN(devs); i++)
        if (dev_node(root, devs[i], false, s, err) < 0)
            return -1;
    if (s->kvm && dev_node(root, "kvm", true, s, err) < 0)
        return -1;
    /* Only the processes of the jail's pid namespace (the worker and QEMU): subset=pid also
     * leaves out /proc/sys, /proc/kcore, sysrq-trigger and every other system-wide file.
     * Kernels before 5.8 do not know the option; the pid namespace still holds. */
    snprintf(p, sizeof p, "%s/proc", root);
    if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid") < 0) {
        if (errno != EINVAL)
            return sbx_fail(err, errno, "mount /proc: %s", strerror(errno));
        wlog("warning: this kernel refuses /proc subset=pid; the jail's /proc keeps its "
             "system-wide files");
        if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            return sbx_fail(err, errno, "mount /proc: %s", strerror(errno));
    }
    snprintf(p, sizeof p, "%s/tmp", root);
    if (mount("sbx-tmp", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=1777") < 0)
        return sbx_fail(err, errno, "mount /tmp: %s", strerror(errno));
    return 0;
}

int jail_enter(const jail_spec *s, sbx_err *err)
{
    /* Nothing we mount may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return sbx_fail(err, errno, "make mounts private: %s", strerror(errno));
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s/root", s->run_dir);
    if (build_root(s, root, err) < 0)
        return sbx_wrap(err, "jail");
    char old[PATH_MAX];
    snprintf(old, sizeof old, "%s/.old", root);
    if (syscall(SYS_pivot_root, root, old) < 0)
        return sbx_fail(err, errno, "jail: pivot_root: %s", strerror(errno));
    if (chdir("/") < 0 || umount2("/.old", MNT_DETACH) < 0 || rmdir("/.old") < 0)
        return sbx_fail(err, errno, "jail: detach the host root: %s", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        return sbx_fail(err, errno, "jail: remount / read-only: %s", strerror(errno));
    sethostname("sbx-vm", 6);
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);

    /* Capabilities and ids first, then no_new_privs (seccomp comes later, once set up). */
    capng_clear(CAPNG_SELECT_ALL);
    if (!s->userns) {
        if (capng_change_id((int)s->uid, (int)s->gid, CAPNG_DROP_SUPP_GRP | CAPNG_CLEAR_BOUNDING))
            return sbx_fail(err, EPERM, "jail: change to uid %u: %s", (unsigned)s->uid,
                            strerror(errno));
    } else if (capng_apply(CAPNG_SELECT_ALL)) {
        return sbx_fail(err, EPERM, "jail: drop capabilities");
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return sbx_fail(err, errno, "jail: no_new_privs: %s", strerror(errno));
    capng_get_caps_process();
    if (capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE)
        return sbx_fail(err, EPERM, "jail: capabilities remain after dropping them");
    return 0;
}

/* The worker's allowlist, plus extra (each allowed outright) and Unix sockets when unix_sockets. */
static int load_allowlist(const int *extra, size_t n_extra, bool unix_sockets, sbx_err *err)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx)
        return sbx_fail(err, ENOMEM, "seccomp_init failed");
    int rc = syscalls_add(ctx, SCMP_ACT_ALLOW, jail_worker_allow, ARRAY_LEN(jail_worker_allow));
    if (rc == 0)
        rc = syscalls_add(ctx, SCMP_ACT_ALLOW, extra, n_extra);
    /* AF_INET too: libslirp opens one while it sets a Unix forward up. The process is in the
     * worker's network namespace, which has no interface but a loopback that is down. */
    if (rc == 0 && unix_sockets)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    if (rc == 0 && unix_sockets)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_EQ, AF_INET));
    /* Files are opened read-only (/proc/PID/stat, QEMU's log). O_RDONLY is 0, so the flags are
     * masked with every bit that writes, creates or truncates, and must have none of them:
     * checking the access mode alone would let O_RDONLY|O_CREAT or O_RDONLY|O_TRUNC through. */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(openat), 1,
                              SCMP_A2(SCMP_CMP_MASKED_EQ, JAIL_OPEN_WRITE_BITS, 0));
    /* stdio asks whether stderr is a terminal. */
    if (rc == 0 || rc == -EEXIST)
        rc =
            seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, TCGETS));
    if (rc == -EEXIST) /* already allowed outright in a sanitizer build */
        rc = 0;
    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0)
        return sbx_fail(err, -rc, "install seccomp filter: %s", strerror(-rc));
    return 0;
}

int jail_seccomp(sbx_err *err)
{
    return load_allowlist(NULL, 0, false, err);
}

int jail_seccomp_net(sbx_err *err)
{
    return load_allowlist(jail_worker_net, ARRAY_LEN(jail_worker_net), true, err);
}

int jail_qemu_filter(void **filter, sbx_err *err)
{
    *filter = NULL;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx)
        return sbx_fail(err, ENOMEM, "QEMU filter: seccomp_init failed");
    int rc = syscalls_add(ctx, SCMP_ACT_KILL_PROCESS, jail_qemu_kill, ARRAY_LEN(jail_qemu_kill));
    /* Sockets: the chardevs and QMP are AF_UNIX; any other family is a way out. */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_NE, AF_UNIX));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(socketpair), 1,
                              SCMP_A0(SCMP_CMP_NE, AF_UNIX));
    /* Threads are clone() without namespace flags; clone3 passes its flags in memory, which a
     * filter cannot read, so it answers ENOSYS and glibc falls back to clone(). */
    static const unsigned long ns_flags[] = {CLONE_NEWNS,    CLONE_NEWUSER, CLONE_NEWPID,
                                             CLONE_NEWNET,   CLONE_NEWIPC,  CLONE_NEWUTS,
                                             CLONE_NEWCGROUP};
    for (size_t i = 0; i < ARRAY_LEN(ns_flags) && rc == 0; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i]));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    /* QEMU 10 (built with liburing) tries io_uring_setup for its event loop at start and falls
     * back to ppoll/epoll when the kernel has none, so setup answers ENOSYS rather than kill.
     * With no ring ever made, io_uring_enter/register above are never legitimate. */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(io_uring_setup), 0);
    if (rc < 0) {
        seccomp_release(ctx);
        return sbx_fail(err, -rc, "QEMU filter: add rule: %s", strerror(-rc));
    }
    *filter = ctx;
    return 0;
}

int jail_qemu_confine(void *filter)
{
    /* Set already when the worker is jailed (jail_enter); needed here for the filter whatever
     * the worker's state, and harmless twice. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    int rc = seccomp_load((scmp_filter_ctx)filter);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}
