/* Where things live by default, shared by sbx and sbxd so both agree without configuration. */
#ifndef SBX_PATHS_H
#define SBX_PATHS_H

#include <stddef.h>

/* $EXEC_SANDBOX_SOCKET, else $XDG_RUNTIME_DIR/exec-sandbox/sbxd.sock, else
 * /tmp/exec-sandbox-<uid>/sbxd.sock. Returns 0, or -1 if it does not fit. */
int paths_default_socket(char *out, size_t n);
/* $EXEC_SANDBOX_CACHE_DIR, else $XDG_CACHE_HOME/exec-sandbox, else $HOME/.cache/exec-sandbox. */
int paths_cache_dir(char *out, size_t n);
/* Directory holding the running executable (from /proc/self/exe). */
int paths_exe_dir(char *out, size_t n);
/* Resolve an executable name through $PATH (a name with a slash is taken as is) to an absolute
 * path. Returns 0, or -1 when not found. */
int paths_which(const char *name, char *out, size_t n);
/* mkdir -p with the given mode for each created component. */
int paths_mkdir_p(const char *path, unsigned mode);

#endif
