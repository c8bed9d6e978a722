/* Where things live by default, shared by sbx and sbxd so both agree without configuration; and
 * the one way sbxd and sbx open the directories and files that hold their state. */
#ifndef SBX_PATHS_H
#define SBX_PATHS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common.h"

/* Root's cache when there is no $HOME (a system service). */
#define PATHS_SYSTEM_CACHE_DIR "/var/cache/exec-sandbox"

/* True when $EXEC_SANDBOX_SOCKET names a socket: the user's explicit choice of daemon. */
bool paths_socket_named(void);
/* The implicit per-user socket: $XDG_RUNTIME_DIR/exec-sandbox/sbxd.sock when that directory is
 * writable, else /tmp/exec-sandbox-<uid>/sbxd.sock. Returns 0, or -1 if it does not fit. */
int paths_user_socket(char *out, size_t n);
/* $EXEC_SANDBOX_SOCKET, else paths_user_socket. */
int paths_default_socket(char *out, size_t n);
/* $EXEC_SANDBOX_CACHE_DIR, else $XDG_CACHE_HOME/exec-sandbox, else $HOME/.cache/exec-sandbox,
 * else (no $HOME) PATHS_SYSTEM_CACHE_DIR for root; -1 with err for anyone else. */
int paths_cache_dir(char *out, size_t n, sbx_err *err);
/* Directory holding the running executable (from /proc/self/exe). */
int paths_exe_dir(char *out, size_t n);
/* Resolve an executable name through $PATH (a name with a slash is taken as is) to an absolute
 * path. Returns 0, or -1 when not found. */
int paths_which(const char *name, char *out, size_t n);
/* mkdir -p with the given mode for each created component. */
int paths_mkdir_p(const char *path, unsigned mode);

/* Open `path` (created first, mkdir -p with create_mode, unless that is 0) as a directory that
 * only `uid` can change: it must belong to uid and be writable by nobody else, and every
 * directory above it must belong to root or uid and be writable by others only with the sticky
 * bit. Links are resolved once; the walk that checks opens each component with O_NOFOLLOW.
 * Returns an O_RDONLY|O_DIRECTORY fd for the *at calls below, or -1 with err naming the path, the
 * owner or mode found (err->code ENOENT when it does not exist). */
int paths_dir_open(const char *path, uid_t uid, unsigned create_mode, sbx_err *err);
/* Replace dirfd/name (dir names dirfd in messages) with len bytes of data, mode `mode`: written
 * to a new temporary file (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed over name, so a link planted
 * at name is replaced, never followed, and readers see the old or the new file whole. */
int paths_write_at(int dirfd, const char *dir, const char *name, const void *data, size_t len,
                   unsigned mode, sbx_err *err);
/* Open dirfd/name for reading: not through a link, a regular file of `uid` that others cannot
 * write. Returns the fd, or -1 with err (err->code ENOENT when absent, ELOOP for a link). */
int paths_open_read_at(int dirfd, const char *dir, const char *name, uid_t uid, sbx_err *err);
/* rm -r of at/name that never follows a link, at most `depth` levels deep. 0, or -1 with
 * errno (what could be removed is). */
int paths_rm_tree_at(int at, const char *name, unsigned depth);

#endif
