/* The guest's NIC (issue 12): a network process forked by the worker inside its jail runs
 * libslirp behind QEMU's `-netdev stream` and filters every guest frame before slirp sees it
 * (netfilter.c); connections the policy may allow are handed, as byte streams, to the proxy
 * (netconn.c), which asks the broker (netbroker/, in the host's network namespace) for a connected
 * socket. The worker itself only starts the process and reads what it reported. */
#ifndef SBX_VM_NET_H
#define SBX_VM_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "worker.h"

/* The guest's side (host byte order): a /24 for the guest, inside slirp's /16 whose upper half
 * holds the virtual addresses that stand for the real ones our resolver returned. */
#define NET_VNETWORK 0x0a000000u /* 10.0.0.0/16 */
#define NET_VNETMASK 0xffff0000u
#define NET_GUEST 0x0a00020fu /* 10.0.2.15/24 */
#define NET_GUEST_PREFIX 24u
#define NET_GATEWAY 0x0a000202u    /* 10.0.2.2 */
#define NET_NAMESERVER 0x0a000203u /* 10.0.2.3 */
#define NET_VIP_BASE 0x0a008000u   /* 10.0.128.0: + 1 .. NET_MAX_VIPS */
#define NET_MAX_VIPS 1024u

#define NET_MAX_BLOCKED 32u
#define NET_CONNECT_TIMEOUT_MS 10000u /* the broker's, for its connect() */

typedef struct {
    char what[256];
    uint32_t port;
    char reason[128];
} net_blocked;

/* Written by the network process, read by the worker (a shared anonymous mapping). */
typedef struct {
    volatile int state; /* 0 starting, 1 serving, -1 failed (error says why) */
    char error[256];
    uint32_t n_ports;
    struct {
        uint32_t internal, external;
        bool udp;
    } ports[10];
    volatile uint32_t blocked_total;
    volatile uint32_t blocked_n; /* entries of blocked[] complete */
    net_blocked blocked[NET_MAX_BLOCKED];
} net_shared;

/* Whether the VM has a NIC at all (net_mode other than "" / "none"). */
bool net_wanted(const Sbx__Worker__VmConfig *cfg);
/* Forks the network process on cfg->net_fd (the broker's socket); QEMU's end of the frame
 * socket is left in *qemu_fd. It gets ready (the broker's listening sockets in hand) while QEMU
 * boots or restores: net_ready waits for that, and fails if it could not. */
int net_start(const Sbx__Worker__VmConfig *cfg, int *qemu_fd, vm_err *err);
int net_ready(vm_err *err);
/* For Booted and results: the exposed ports and what was refused so far. Results point into
 * static storage, valid until the next call. */
size_t net_ports(Sbx__Control__ExposedPort ***out);
Sbx__Control__NetworkReport *net_report(void);

/* ---- inside the network process ---- */

/* Its loop: never returns. */
__attribute__((noreturn)) void net_main(const Sbx__Worker__VmConfig *cfg, int frames, int broker,
                                        net_shared *sh);
/* How many sockets slirp may hold, from the descriptor limit the process got. */
size_t net_socket_cap(void);
/* One line in the daemon's log and one entry in the report. */
__attribute__((format(printf, 3, 4))) void net_block(const char *what, uint32_t port,
                                                     const char *fmt, ...);

#endif
