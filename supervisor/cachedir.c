/* Publishing, reading and removing entries of sbxd's cache directories (see cachedir.h). */
#include "cachedir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "paths.h"
#include "sbxd.h"

void cachedir_meta_get(const char *meta, const char *name, char *out, size_t n)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *l = meta; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, nl) || strncmp(l + nl, " = ", 3))
            continue;
        const char *v = l + nl + 3;
        size_t vl = strcspn(v, "\n");
        snprintf(out, n, "%.*s", (int)(vl < n ? vl : n - 1), v);
        return;
    }
}

void cachedir_rm(const char *path, const char *what)
{
    if (paths_rm_tree_at(AT_FDCWD, path, 1) < 0)
        slog("%s: remove `%s`: %s", what, path, strerror(errno));
}

void cachedir_retire(const char *base, const char *name, const char *what)
{
    static unsigned n;
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, "%s/%s", base, name);
    snprintf(to, sizeof to, "%s/.bad-%d-%u", base, (int)getpid(), ++n);
    if (rename(from, to) == 0)
        cachedir_rm(to, what);
    else if (errno != ENOENT)
        slog("%s: rename `%s`: %s", what, from, strerror(errno));
}

void cachedir_clean(const char *base, const char *what)
{
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid = 0;
        /* Our own pid too: nothing is staged yet, and a daemon before us had it (containers
         * start sbxd with the same pid every time). */
        bool stale = !strncmp(e->d_name, ".bad-", 5) ||
                     (sscanf(e->d_name, ".tmp-%d-", &pid) == 1 && pid > 0 &&
                      (pid == getpid() || (kill(pid, 0) < 0 && errno == ESRCH)));
        if (stale) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", base, e->d_name);
            cachedir_rm(p, what);
        }
    }
    if (d)
        closedir(d);
}
