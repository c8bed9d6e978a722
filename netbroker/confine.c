/* The one place the broker's privileges narrow, once the policy, the hosts file and the
 * listening sockets are in hand: ids (when started as root), capabilities, no_new_privs, then a
 * seccomp allow-list of what the loop and its resolver children use, in that order. A broker
 * that a hostile worker took over can then open IPv4 sockets and little else, which it could
 * do anyway: the filter takes away the rest of the kernel.
 *
 * The resolver's part was measured with strace (getaddrinfo, glibc 2.36, nsswitch "hosts: files
 * dns"). NSS modules beyond files and dns (mdns, systemd, resolve) are not supported: loading
 * one needs mprotect and whatever its constructor calls, the child dies of SIGSYS, and the
 * broker logs that and answers "resolver failed". */
#include "broker.h"
#include "syscalls.h"

#include <cap-ng.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>

/* After seccomp.h (its SCMP_SYS). */
#include "confine_syscalls.h"

static int set_ids(bool want, uid_t uid, gid_t gid, sbx_err *err)
{
    capng_clear(CAPNG_SELECT_BOTH);
    if (geteuid() == 0) {
        if (!want || uid == 0)
            return sbx_fail(err, EPERM,
                            "started as root: --uid and --gid must name an "
                            "unprivileged user");
        if (capng_change_id((int)uid, (int)gid, CAPNG_DROP_SUPP_GRP | CAPNG_CLEAR_BOUNDING))
            return sbx_fail(err, EPERM, "change to uid %u gid %u: %s", (unsigned)uid, (unsigned)gid,
                            strerror(errno));
    } else {
        if (want && (uid != getuid() || gid != getgid()))
            return sbx_fail(err, EPERM, "not root: cannot change to uid %u gid %u", (unsigned)uid,
                            (unsigned)gid);
        if (capng_apply(CAPNG_SELECT_CAPS))
            return sbx_fail(err, EPERM, "drop capabilities");
    }
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (getresuid(&r, &e, &s) < 0 || getresgid(&rg, &eg, &sg) < 0 || r != e || e != s || rg != eg ||
        eg != sg || (want && (r != uid || rg != gid)) || r == 0)
        return sbx_fail(err, EPERM, "ids not as asked after the change (uid %u, gid %u)",
                        (unsigned)r, (unsigned)rg);
    capng_get_caps_process();
    if (capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE)
        return sbx_fail(err, EPERM, "capabilities remain after dropping them");
    return 0;
}

/* Bits of open(2)'s flags that write, create or truncate: the broker only reads files (the
 * resolver's /etc/resolv.conf, /etc/nsswitch.conf, /etc/hosts, /etc/host.conf, /etc/gai.conf). */
#define OPEN_WRITE_BITS                                                                            \
    (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_EXCL | O_TMPFILE | O_DIRECTORY)

/* glibc's fork(): clone with exactly these flags. Threads (CLONE_VM, CLONE_THREAD) and new
 * namespaces stay out. */
#define FORK_FLAGS (CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD)

static int load_filter(sbx_err *err)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx)
        return sbx_fail(err, ENOMEM, "seccomp_init failed");
    int rc = syscalls_add(ctx, SCMP_ACT_ALLOW, confine_allow, ARRAY_LEN(confine_allow));
    /* IPv4 only: the upstream connects and the resolver's queries. glibc's getaddrinfo first
     * tries nscd's Unix socket, and resolv.conf may name an IPv6 server: those fail with an
     * errno (and glibc moves on to the next source or server) rather than killing the
     * resolver child. Any other family kills. */
    struct {
        uint32_t action;
        int sys;
        struct scmp_arg_cmp cmp;
    } const conds[] = {
        {SCMP_ACT_ALLOW, SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, AF_INET)},
        {SCMP_ACT_ALLOW, SCMP_SYS(socketpair), SCMP_A0(SCMP_CMP_EQ, AF_UNIX)},
        {SCMP_ACT_ERRNO(EACCES), SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, AF_UNIX)},
        {SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, AF_INET6)},
        {SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, AF_NETLINK)},
        {SCMP_ACT_ALLOW, SCMP_SYS(clone), SCMP_A0(SCMP_CMP_EQ, FORK_FLAGS)},
        {SCMP_ACT_ALLOW, SCMP_SYS(prctl), SCMP_A0(SCMP_CMP_EQ, PR_SET_PDEATHSIG)},
        {SCMP_ACT_ALLOW, SCMP_SYS(openat), SCMP_A2(SCMP_CMP_MASKED_EQ, OPEN_WRITE_BITS, 0)},
        /* The resolver asks how many bytes a TCP reply holds. */
        {SCMP_ACT_ALLOW, SCMP_SYS(ioctl), SCMP_A1(SCMP_CMP_EQ, FIONREAD)},
    };
    for (size_t i = 0; i < ARRAY_LEN(conds) && rc == 0; i++) {
        rc = seccomp_rule_add(ctx, conds[i].action, conds[i].sys, 1, conds[i].cmp);
        if (rc == -EEXIST) /* allowed outright in a sanitizer build */
            rc = 0;
    }
    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0)
        return sbx_fail(err, -rc, "install seccomp filter: %s", strerror(-rc));
    return 0;
}

int confine(bool want_ids, uid_t uid, gid_t gid, pid_t parent, sbx_err *err)
{
    if (set_ids(want_ids, uid, gid, err) < 0)
        return -1;
    /* A change of ids clears the parent-death signal: set it again, then make sure sbxd did not
     * go in between (we would be orphaned with nobody to stop us). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        return sbx_fail(err, ESRCH, "the parent went away");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return sbx_fail(err, errno, "no_new_privs: %s", strerror(errno));
    return load_filter(err);
}
