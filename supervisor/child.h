/* Work that must not run on sbxd's loop (hashing a layer, packing one, an S3 transfer) runs in a
 * forked child (supervisor/child.c): in a process group of its own, dying with sbxd, bounded in
 * wall-clock time, reporting one line on a pipe. */
#ifndef SBX_CHILD_H
#define SBX_CHILD_H

#include "common.h"

typedef struct child child;

/* Runs in the child (fd 0: in_fd or /dev/null, fd 1: the report pipe, fd 2: err_fd or
 * /dev/null, nothing else open); writes its one line to fd 1 and returns its exit status. */
typedef int (*child_body)(void *arg);
/* The child ended: ok when it exited 0; line is what it wrote (at most CHILD_LINE_MAX bytes,
 * NUL-terminated, "" when nothing). Called once, from the loop, unless cancelled. */
typedef void (*child_done)(void *owner, bool ok, const char *line);

#define CHILD_LINE_MAX 1024

/* what names it in the log. NULL with err when it cannot be started. */
child *child_start(const char *what, child_body body, void *arg, int in_fd, int err_fd,
                   unsigned wall_s, child_done done, void *owner, sbx_err *err);
/* Kill it (its whole process group) and forget it: done is not called. */
void child_cancel(child *c);
/* Its pid (the process group's id too). */
pid_t child_pid(const child *c);

#endif
