/* What the worker's own files share. */
#ifndef SBX_WORKER_H
#define SBX_WORKER_H

/* One line on stderr (sbxd's log), prefixed with the worker's pid. */
__attribute__((format(printf, 1, 2))) void wlog(const char *fmt, ...);

#endif
