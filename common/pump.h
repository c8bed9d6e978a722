/* Bytes from one non-blocking socket to another through a buffer, half-closes passed on: the one
 * splice both the worker's network process (vmworker/netconn.c) and the broker's relays
 * (netbroker/relay.c) use. */
#ifndef SBX_PUMP_H
#define SBX_PUMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PUMP_BUF (32u << 10)

typedef struct {
    uint8_t data[PUMP_BUF];
    size_t len;
    bool eof;  /* the source said so */
    bool shut; /* ...and we passed it on, every byte delivered */
} pump_buf;

/* Moves what it can from `from` through p to `to` without blocking; -1 when either end broke. */
int pump_move(int from, int to, pump_buf *p);
/* Poll events for the two ends of one direction (what `from` and `to` are waited for). */
short pump_events_from(const pump_buf *p);
short pump_events_to(const pump_buf *p);

#endif
