/* Which accelerator runs VMs. `auto` trusts KVM only after a probe VM really boots on it: some
 * hosts expose a /dev/kvm on which guests hang. The verdict is cached on disk, keyed by what
 * could change it (QEMU binary, guest kernel, host kernel, the /dev/kvm device). */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "arch.h"
#include "paths.h"
#include "sbxd.h"

static char verdict[8];
static char reason[512];
static char cache_key[1024];
static bool probing;

const char *accel_verdict(void)
{
    return verdict[0] ? verdict : NULL;
}

const char *accel_reason(void)
{
    return reason;
}

static void decide(const char *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void decide(const char *v, const char *fmt, ...)
{
    snprintf(verdict, sizeof verdict, "%s", v);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    slog("accelerator: %s (%s)", verdict, reason);
}

/* In the cache directory, which main() checked at start and which is checked again on each
 * use; the file is read and written through the directory's fd, never through a link. */
#define VERDICT_FILE "accel-verdict"

/* What identifies the QEMU binary (resolved to an absolute path at start-up) for the cache key. */
static void qemu_identity(char *out, size_t n)
{
    struct stat st;
    if (stat(cfg.qemu, &st) == 0)
        snprintf(out, n, "%s:%lld:%lld", cfg.qemu, (long long)st.st_size, (long long)st.st_mtime);
    else
        snprintf(out, n, "%s:missing", cfg.qemu);
}

void accel_init(void)
{
    if (strcmp(cfg.guest_arch, arch_host())) {
        decide("tcg", "%s guests on a %s host: no KVM across architectures", cfg.guest_arch,
               arch_host());
        return;
    }
    if (!strcmp(cfg.accel, "tcg")) {
        decide("tcg", "configured");
        return;
    }
    if (!strcmp(cfg.accel, "kvm")) {
        decide("kvm", "configured");
        return;
    }
    struct stat st = {0};
    int api = KVM_API_VERSION;
    /* Test hook: a host without KVM still runs the probe (which then fails for real), so that
     * the tests reach the verdict cache on any host. */
    if (cfg.test_hooks && getenv("EXEC_SANDBOX_TEST_ASSUME_KVM")) {
        slog("test hook: probing KVM without looking at /dev/kvm");
    } else {
        int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (kvm < 0) {
            decide("tcg", "auto: /dev/kvm not usable (%s)", strerror(errno));
            return;
        }
        api = ioctl(kvm, KVM_GET_API_VERSION, 0);
        fstat(kvm, &st);
        close(kvm);
    }
    if (api != KVM_API_VERSION) {
        decide("tcg", "auto: /dev/kvm reports API %d", api);
        return;
    }
    char qemu[1200], kernel[1024] = "";
    qemu_identity(qemu, sizeof qemu);
    char link[600];
    snprintf(link, sizeof link, "%s/vmlinux", cfg.images_dir);
    if (!realpath(link, kernel))
        snprintf(kernel, sizeof kernel, "missing");
    struct utsname u;
    uname(&u);
    snprintf(cache_key, sizeof cache_key, "qemu=%.400s kernel=%.400s host=%.64s kvm=%llx", qemu,
             kernel, u.release, (unsigned long long)st.st_rdev);
    char line[1600];
    sbx_err err = {0};
    cleanup_close int dir = paths_dir_open(cfg.cache_dir, geteuid(), 0, &err);
    cleanup_close int fd =
        dir < 0 ? -1 : paths_open_read_at(dir, cfg.cache_dir, VERDICT_FILE, geteuid(), &err);
    cleanup_fclose FILE *f = fd < 0 ? NULL : fdopen(fd, "r");
    if (f)
        steal_fd(&fd); /* the FILE owns it now */
    else if (err.code != ENOENT)
        slog("accelerator: cached verdict not used: %s", err.msg);
    if (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char v[8] = "", why[600] = "";
        if (!strcmp(line, cache_key) && fscanf(f, "%7s %599[^\n]", v, why) >= 1 &&
            (!strcmp(v, "kvm") || !strcmp(v, "tcg"))) {
            decide(v, "auto, cached probe: %s", why[0] ? why : v);
            return;
        }
    }
    /* Undecided: the first run triggers the probe. */
}

static void probe_done(bool booted, const char *why);

/* The probe is a VM owner like any other: it only boots (on KVM, within a short limit). */
#define PROBE_BOOT_TIMEOUT_MS 6000
static bool probe_booted_ok;

static void probe_booted(void *owner, const Sbx__Worker__Booted *b)
{
    probe_booted_ok = true;
}

static void probe_frame(void *owner, Sbx__Worker__FromWorker *m) {}

static void probe_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    probe_done(probe_booted_ok, why);
}

static const vm_owner_ops probe_ops = {
    .booted = probe_booted,
    .frame = probe_frame,
    .gone = probe_gone,
    .one_shot = true,
    .probe = true,
};

void accel_need(void)
{
    if (probing || verdict[0])
        return;
    probing = true;
    slog("accelerator: probing KVM with a test boot");
    sbx_err err = {0};
    probe_booted_ok = false;
    if (!sched_start_now("raw", 256, "kvm", PROBE_BOOT_TIMEOUT_MS, &probe_ops, NULL, &err)) {
        probing = false;
        decide("tcg", "auto: KVM probe could not start: %s", err.msg);
        sched_pump();
    }
}

static void probe_done(bool booted, const char *why)
{
    probing = false;
    if (booted)
        decide("kvm", "auto: a probe VM booted on KVM");
    else
        decide("tcg", "auto: a probe VM failed on KVM (%s)", why);
    char text[sizeof cache_key + 64];
    int len = snprintf(text, sizeof text, "%s\n%s %s\n", cache_key, verdict,
                       booted ? "probe booted" : "probe failed");
    sbx_err err = {0};
    cleanup_close int dir = paths_dir_open(cfg.cache_dir, geteuid(), 0700, &err);
    if (dir < 0 ||
        paths_write_at(dir, cfg.cache_dir, VERDICT_FILE, text,
                       len < (int)sizeof text ? (size_t)len : sizeof text - 1, 0644, &err) < 0)
        slog("warning: accelerator verdict not cached: %s", err.msg);
    sched_pump();
}
