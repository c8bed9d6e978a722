/* The guest's NIC, when the host gave the VM one: address, default route and resolver, applied
 * on every Hello (a VM restored from a snapshot gets them again). Nothing here decides what the
 * network may reach: the host does, outside the guest. */
#include "agent.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#define NET_IF "eth0"
#define RESOLV_CONF "/etc/resolv.conf"

static void set_sin(struct sockaddr *sa, uint32_t be_addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = be_addr};
    memcpy(sa, &sin, sizeof sin);
}

static int if_set(int s, unsigned long req, uint32_t be_addr, const char *what, sbx_err *err)
{
    struct ifreq ifr = {0};
    memcpy(ifr.ifr_name, NET_IF, sizeof NET_IF);
    set_sin(&ifr.ifr_addr, be_addr);
    if (ioctl(s, req, &ifr) < 0 && !(req == SIOCSIFADDR && errno == EEXIST))
        return sbx_fail(err, errno, "%s of %s: %s", what, NET_IF, strerror(errno));
    return 0;
}

static int if_up(int s, sbx_err *err)
{
    struct ifreq ifr = {0};
    memcpy(ifr.ifr_name, NET_IF, sizeof NET_IF);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return sbx_fail(err, errno, "%s: %s", NET_IF, strerror(errno));
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return sbx_fail(err, errno, "bring %s up: %s", NET_IF, strerror(errno));
    return 0;
}

static int default_route(int s, uint32_t gw, sbx_err *err)
{
    struct rtentry rt = {0};
    set_sin(&rt.rt_dst, 0);
    set_sin(&rt.rt_genmask, 0);
    set_sin(&rt.rt_gateway, gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = (char *)NET_IF;
    if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
        return sbx_fail(err, errno, "default route: %s", strerror(errno));
    return 0;
}

/* The image's /etc is read-only: the file is written in the agent's own directory and bound
 * over the image's once; a later Hello (after a restore) rewrites it in place. */
static int write_resolver(uint32_t ns, sbx_err *err)
{
    static const char ours[] = AGENT_CODE_DIR "/resolv.conf";
    static bool bound;
    char ip[INET_ADDRSTRLEN], body[64];
    inet_ntop(AF_INET, &ns, ip, sizeof ip);
    int n = snprintf(body, sizeof body, "nameserver %s\n", ip);
    cleanup_close int fd = open(ours, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0 || sbx_write_all(fd, body, (size_t)n) < 0)
        return sbx_fail(err, errno, "write %s: %s", ours, strerror(errno));
    if (!bound && mount(ours, RESOLV_CONF, NULL, MS_BIND, NULL) < 0)
        return sbx_fail(err, errno, "bind %s over %s: %s", ours, RESOLV_CONF, strerror(errno));
    bound = true;
    return 0;
}

int net_apply(const Sbx__Agent__NetConfig *n, sbx_err *err)
{
    /* What was applied last. A VM restored from a snapshot finds here what its template set up
     * (its kernel's state came back with it), and the restore pays for no ioctl at all. */
    static struct {
        bool done;
        uint32_t address, prefix_len, gateway, nameserver;
    } applied;
    if (applied.done && applied.address == n->address && applied.prefix_len == n->prefix_len &&
        applied.gateway == n->gateway && applied.nameserver == n->nameserver)
        return 0;
    if (n->prefix_len < 8 || n->prefix_len > 30)
        return sbx_fail(err, EINVAL, "NIC prefix /%u", n->prefix_len);
    cleanup_close int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return sbx_fail(err, errno, "socket: %s", strerror(errno));
    uint32_t mask = htonl(~0u << (32 - n->prefix_len));
    if (if_set(s, SIOCSIFADDR, n->address, "address", err) < 0 ||
        if_set(s, SIOCSIFNETMASK, mask, "netmask", err) < 0 || if_up(s, err) < 0 ||
        default_route(s, n->gateway, err) < 0 || write_resolver(n->nameserver, err) < 0)
        return -1;
    applied.done = true;
    applied.address = n->address;
    applied.prefix_len = n->prefix_len;
    applied.gateway = n->gateway;
    applied.nameserver = n->nameserver;
    return 0;
}
