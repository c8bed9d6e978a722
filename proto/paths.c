/* Default locations. */
#include "paths.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fit(int r, size_t n)
{
    return (r < 0 || (size_t)r >= n) ? -1 : 0;
}

int paths_default_socket(char *out, size_t n)
{
    const char *s = getenv("EXEC_SANDBOX_SOCKET");
    if (s && *s)
        return fit(snprintf(out, n, "%s", s), n);
    const char *rt = getenv("XDG_RUNTIME_DIR");
    if (rt && *rt && access(rt, W_OK) == 0)
        return fit(snprintf(out, n, "%s/exec-sandbox/sbxd.sock", rt), n);
    return fit(snprintf(out, n, "/tmp/exec-sandbox-%u/sbxd.sock", (unsigned)getuid()), n);
}

int paths_cache_dir(char *out, size_t n)
{
    const char *s = getenv("EXEC_SANDBOX_CACHE_DIR");
    if (s && *s)
        return fit(snprintf(out, n, "%s", s), n);
    s = getenv("XDG_CACHE_HOME");
    if (s && *s)
        return fit(snprintf(out, n, "%s/exec-sandbox", s), n);
    s = getenv("HOME");
    if (!s || !*s)
        s = "/tmp";
    return fit(snprintf(out, n, "%s/.cache/exec-sandbox", s), n);
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
