/* QMP, QEMU's JSON control protocol, on the unix socket QEMU serves in the VM's run directory:
 * connect (the peer must be our QEMU), greeting, capabilities negotiation, one command at a
 * time. Every line QEMU sends is capped before it is parsed. */
#ifndef SBX_QMP_H
#define SBX_QMP_H

#include <jansson.h>

#include "common.h"
#include "qemu.h"

/* The longest line taken from QEMU: replies and events we use are a few hundred bytes. */
#define QMP_LINE_MAX (64u * 1024u)

typedef struct {
    int fd;
    char buf[QMP_LINE_MAX + 1];
    size_t len;
    unsigned next_id;
    char version[32]; /* "10.0.2", from the greeting */
} qmp_conn;

/* Connect to vm->qmp_sock (retrying until deadline while QEMU lives), read the greeting and
 * leave capabilities negotiation mode. */
int qmp_open(qmp_conn *q, qemu_vm *vm, uint64_t deadline, sbx_err *err);
/* Run one command (args: an object or NULL, stolen) and wait until deadline for its reply,
 * skipping events. On success *ret (if given) holds the "return" value (caller json_decref's).
 * A QMP error reply is -1 with its description in err. */
int qmp_exec(qmp_conn *q, const char *cmd, json_t *args, json_t **ret, uint64_t deadline,
             sbx_err *err);
/* Read what QEMU sent unasked (events, between commands) and drop it; -1 when the connection
 * closed or broke (then q is closed). */
int qmp_drain(qmp_conn *q);
void qmp_close(qmp_conn *q);

#endif
