/* Inside the network process (net.h): what its rooms share. netloop.c owns the process (slirp,
 * timers, the poll loop, the frame socket to QEMU, the broker's socket); netfilter.c decides on
 * every guest frame and answers DNS; netconn.c carries the byte streams (egress through the
 * proxy, exposed ports inwards). Single-threaded: nothing here locks. */
#ifndef SBX_VM_NETINT_H
#define SBX_VM_NETINT_H

#include <poll.h>
#include <slirp/libslirp.h>

#include "net.h"
#include "net.pb-c.h"
#include "netparse.h"
#include "netpolicy.h"

typedef struct {
    const Sbx__Worker__VmConfig *cfg;
    net_mode mode;
    const char *const *allowed;
    size_t n_allowed;
    Slirp *slirp;
    net_shared *sh;
    int broker;
    int egress; /* the Unix listener every guestfwd connects to */
    char egress_path[108];
    uint64_t next_id;
} netproc;
extern netproc N;

/* netloop.c */
int broker_send(Sbx__Net__NetMsg *m);
/* Sockets slirp holds now. */
size_t slirp_sockets(void);
void qemu_send_frame(const uint8_t *f, size_t len);

/* netfilter.c */
/* Who asked a DNS question: a UDP frame (answered as a frame from the address it went to) or a
 * TCP connection (netconn.c, by its id). */
typedef struct {
    bool tcp;
    uint64_t conn;
    uint8_t frame[1600];
    size_t len;
} dns_asker;
/* One DNS query (the message, without TCP's length): answered now or once the broker resolved. */
void dns_query_in(const uint8_t *msg, size_t len, const dns_asker *from);
void filter_frame(const uint8_t *f, size_t len);
void filter_resolved(uint64_t id, const Sbx__Net__Resolved *r);
/* A frame from slirp on its way to the guest (addresses the guest chose are put back). */
void filter_to_guest(const uint8_t *f, size_t len);
void filter_expire(uint64_t now);
/* The real address and the name behind a virtual one (network byte order); false if none. */
bool vip_lookup(uint32_t vip, uint32_t *real, const char **name);

/* netudp.c: UDP port forwarding */
void udp_expose_add(int fd, uint16_t internal);
/* A datagram from the guest's exposed port to a peer's stand-in port: sent on; true if so. */
bool udp_from_guest(const net_pkt *p);
size_t udp_poll_fill(struct pollfd *p, size_t cap);
void udp_poll_done(const struct pollfd *p, size_t n);

/* netconn.c */
#define CONN_MAX 256u
/* Connections open now. */
size_t conn_count(void);
/* A DNS answer for the TCP connection `id` (length-prefixed there), if it is still open. */
void conn_dns_answer(uint64_t id, const uint8_t *msg, size_t len);
/* A guestfwd connection slirp just made for the guest's connection to vip:port. */
void conn_egress(int fd, uint32_t vip, uint16_t port);
/* A host client on an exposed port: joined to slirp's listener at path. */
void conn_inbound(int fd, const char *path);
void conn_connected(uint64_t id, const Sbx__Net__Connected *c, int fd);
/* Poll entries for every connection (at most cap), and their handling after poll. */
size_t conn_poll_fill(struct pollfd *p, size_t cap, uint64_t *deadline);
void conn_poll_done(const struct pollfd *p, size_t n, uint64_t now);

#endif
