/* A worker's stdout and stderr: a pipe that sbxd reads, so the worker inherits none of sbxd's
 * own descriptors; its lines go into sbxd's log with the VM's number in front. */
#ifndef SBX_WORKERLOG_H
#define SBX_WORKERLOG_H

#include <stdint.h>

/* A line longer than this is cut; past WORKERLOG_MAX_BYTES of one worker's output, the rest is
 * read and dropped (never left in the pipe: the worker must not block on its stderr). */
#define WORKERLOG_LINE_MAX 1024
#define WORKERLOG_MAX_BYTES (256u << 10)

/* Relay the read end of a worker's log pipe (fd, owned from here on) until the worker and
 * everything that shares the pipe are gone (EOF); then the fd is closed and the relay freed.
 * Returns -1 (fd closed) when it cannot be set up. */
int workerlog_start(int fd, uint64_t vm);
/* At exit: relay what is left in every pipe, close them, free everything. */
void workerlog_shutdown(void);

#endif
