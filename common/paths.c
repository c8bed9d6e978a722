/* Default locations, and the directories and files that hold state: found without following a
 * link that someone else could have planted, and trusted only when nobody else can change them. */
#include "paths.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static int fit(int r, size_t n)
{
    return (r < 0 || (size_t)r >= n) ? -1 : 0;
}

bool paths_socket_named(void)
{
    const char *s = getenv("EXEC_SANDBOX_SOCKET");
    return s && *s;
}

int paths_user_socket(char *out, size_t n)
{
    const char *rt = getenv("XDG_RUNTIME_DIR");
    if (rt && *rt && access(rt, W_OK) == 0)
        return fit(snprintf(out, n, "%s/exec-sandbox/sbxd.sock", rt), n);
    return fit(snprintf(out, n, "/tmp/exec-sandbox-%u/sbxd.sock", (unsigned)getuid()), n);
}

int paths_default_socket(char *out, size_t n)
{
    if (paths_socket_named())
        return fit(snprintf(out, n, "%s", getenv("EXEC_SANDBOX_SOCKET")), n);
    return paths_user_socket(out, n);
}

int paths_cache_dir(char *out, size_t n, sbx_err *err)
{
    const char *s = getenv("EXEC_SANDBOX_CACHE_DIR");
    const char *suffix = "";
    if (!s || !*s) {
        s = getenv("XDG_CACHE_HOME");
        suffix = "/exec-sandbox";
    }
    if (!s || !*s) {
        s = getenv("HOME");
        suffix = "/.cache/exec-sandbox";
    }
    /* No home (a system service): root's cache goes where the FHS puts caches; anyone else must
     * say. Never the shared /tmp, where another user could create the directory first. */
    if ((!s || !*s) && geteuid() == 0) {
        s = PATHS_SYSTEM_CACHE_DIR;
        suffix = "";
    }
    if (!s || !*s)
        return sbx_fail(err, ENOENT,
                        "no cache directory: $HOME is not set; set EXEC_SANDBOX_CACHE_DIR (or "
                        "cache_dir, --cache-dir) to a directory of uid %u that others cannot write",
                        (unsigned)geteuid());
    if (fit(snprintf(out, n, "%s%s", s, suffix), n) < 0)
        return sbx_fail(err, ENAMETOOLONG,
                        "cache directory path `%s...` is too long (at most %zu "
                        "bytes)",
                        s, n - 1);
    return 0;
}

int paths_exe_dir(char *out, size_t n)
{
    char buf[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (l <= 0)
        return -1;
    buf[l] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    return fit(snprintf(out, n, "%s", buf), n);
}

int paths_mkdir_p(const char *path, unsigned mode)
{
    char buf[PATH_MAX];
    if (fit(snprintf(buf, sizeof buf, "%s", path), sizeof buf) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -1;
            if (c == '\0')
                break;
            *p = c;
        }
    }
    return 0;
}

int paths_which(const char *name, char *out, size_t n)
{
    if (strchr(name, '/')) {
        char real[PATH_MAX];
        if (!realpath(name, real) || access(real, X_OK) != 0)
            return -1;
        return fit(snprintf(out, n, "%s", real), n);
    }
    const char *p = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", p && *p ? p : "/usr/local/bin:/usr/bin:/bin");
    for (char *save, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char cand[PATH_MAX], real[PATH_MAX];
        snprintf(cand, sizeof cand, "%s/%s", d, name);
        if (access(cand, X_OK) == 0 && realpath(cand, real))
            return fit(snprintf(out, n, "%s", real), n);
    }
    return -1;
}

/* One directory on the way to state. The last one must be `uid`'s and writable by nobody else;
 * those above it may belong to root too, and may be writable by others only with the sticky bit
 * (/tmp), where others can add entries but not replace ours. */
static int dir_trusted(int fd, const char *here, const char *path, uid_t uid, bool last,
                       sbx_err *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return sbx_fail(err, errno, "stat `%s`: %s", here, strerror(errno));
    unsigned mode = (unsigned)st.st_mode & 07777;
    if (!S_ISDIR(st.st_mode))
        return sbx_fail(err, ENOTDIR, "`%s` is not a directory", here);
    if (last && st.st_uid != uid)
        return sbx_fail(err, EPERM, "`%s` belongs to uid %u, not to uid %u", here,
                        (unsigned)st.st_uid, (unsigned)uid);
    if (last && (mode & 022))
        return sbx_fail(err, EPERM, "`%s` is writable by %s (mode %04o)", here,
                        (mode & 002) ? "everyone" : "its group", mode);
    if (!last && st.st_uid != 0 && st.st_uid != uid)
        return sbx_fail(err, EPERM,
                        "`%s`, on the way to `%s`, belongs to uid %u (neither root "
                        "nor uid %u)",
                        here, path, (unsigned)st.st_uid, (unsigned)uid);
    if (!last && (mode & 022) && !(mode & S_ISVTX))
        return sbx_fail(err, EPERM,
                        "`%s`, on the way to `%s`, is writable by others (mode %04o) "
                        "without the sticky bit",
                        here, path, mode);
    return 0;
}

int paths_dir_open(const char *path, uid_t uid, unsigned create_mode, sbx_err *err)
{
    if (create_mode && paths_mkdir_p(path, create_mode) < 0)
        return sbx_fail(err, errno, "create `%s`: %s", path, strerror(errno));
    /* Links are resolved once, here; the walk below then refuses any link it meets, so what is
     * checked is what is opened. */
    char real[PATH_MAX];
    if (!realpath(path, real))
        return sbx_fail(err, errno, "`%s`: %s", path, strerror(errno));
    cleanup_close int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sbx_fail(err, errno, "open `/`: %s", strerror(errno));
    char here[PATH_MAX] = "/";
    size_t used = 1;
    const char *p = real;
    for (;;) {
        while (*p == '/')
            p++;
        size_t len = strcspn(p, "/");
        if (dir_trusted(fd, here, path, uid, len == 0, err) < 0)
            return -1;
        if (len == 0) {
            /* Opened for reading only once checked, so that the error above names the owner
             * even where this uid may not read the directory. */
            int dir = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dir < 0)
                return sbx_fail(err, errno, "open `%s`: %s", here, strerror(errno));
            return dir;
        }
        if (len > NAME_MAX || used + len + 2 > sizeof here)
            return sbx_fail(err, ENAMETOOLONG, "`%s`: path too long", path);
        char name[NAME_MAX + 1];
        memcpy(name, p, len);
        name[len] = '\0';
        int next = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0)
            return sbx_fail(err, errno, "open `%s%s%s`: %s", here, used > 1 ? "/" : "", name,
                            strerror(errno));
        close(fd);
        fd = next;
        used +=
            (size_t)snprintf(here + used, sizeof here - used, "%s%s", used > 1 ? "/" : "", name);
        p += len;
    }
}

int paths_write_at(int dirfd, const char *dir, const char *name, const void *data, size_t len,
                   unsigned mode, sbx_err *err)
{
    /* A fresh name that nobody can have prepared (O_EXCL), never through a link (O_NOFOLLOW);
     * the rename then replaces whatever sits at `name`, a planted link included, without
     * following it. */
    char tmp[NAME_MAX + 1];
    cleanup_close int fd = -1;
    for (int tries = 0; fd < 0 && tries < 8; tries++) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint32_t)now_ms() ^ (uint32_t)tries;
        if (fit(snprintf(tmp, sizeof tmp, ".%.200s.%d.%08x", name, (int)getpid(), r), sizeof tmp) <
            0)
            return sbx_fail(err, ENAMETOOLONG, "`%s/%s`: name too long", dir, name);
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            return sbx_fail(err, errno, "create `%s/%s`: %s", dir, tmp, strerror(errno));
    }
    if (fd < 0)
        return sbx_fail(err, EEXIST, "create a temporary file in `%s`: every name taken", dir);
    if (sbx_write_all(fd, data, len) < 0 || fchmod(fd, mode) < 0 || close(steal_fd(&fd)) < 0 ||
        renameat(dirfd, tmp, dirfd, name) < 0) {
        int saved = errno;
        unlinkat(dirfd, tmp, 0);
        return sbx_fail(err, saved, "write `%s/%s`: %s", dir, name, strerror(saved));
    }
    return 0;
}

int paths_open_read_at(int dirfd, const char *dir, const char *name, uid_t uid, sbx_err *err)
{
    /* O_NONBLOCK: a FIFO in its place must not hang the daemon. */
    cleanup_close int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return sbx_fail(err, errno, "open `%s/%s`: %s", dir, name,
                        errno == ELOOP ? "a symbolic link, not followed" : strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return sbx_fail(err, errno, "stat `%s/%s`: %s", dir, name, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return sbx_fail(err, EINVAL, "`%s/%s` is not a regular file", dir, name);
    if (st.st_uid != uid || (st.st_mode & 022))
        return sbx_fail(err, EPERM,
                        "`%s/%s` belongs to uid %u with mode %04o (want uid %u, not "
                        "writable by others)",
                        dir, name, (unsigned)st.st_uid, (unsigned)st.st_mode & 07777,
                        (unsigned)uid);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        return sbx_fail(err, errno, "`%s/%s`: fcntl: %s", dir, name, strerror(errno));
    return steal_fd(&fd);
}

int paths_rm_tree_at(int at, const char *name, unsigned depth)
{
    if (unlinkat(at, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -1;
    if (depth == 0) {
        errno = ELOOP;
        return -1;
    }
    /* Opened without following a link, and emptied through its own fd: a directory renamed
     * or replaced by a link meanwhile can only make this fail, never reach outside. */
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            paths_rm_tree_at(dirfd(d), e->d_name, depth - 1) < 0)
            rc = -1;
    closedir(d);
    if (unlinkat(at, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        rc = -1;
    return rc;
}
