"""sbx-netbroker against a fake worker: the real binary, a SOCK_SEQPACKET socketpair and a policy
pipe, as sbxd sets them up. Loopback only: servers on 127.R.S.x (R, S random per run), names
from a hosts file or a fake name server on 127.R.S.77:53 (seen by the broker alone, through a
private mount namespace).

Run as root (binds 127.R.S.x:443, checks the drop to --uid/--gid):
    /usr/bin/python3 -m pytest -q tests/broker [--broker build/asan/sbx-netbroker]
"""
import array
import fcntl
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

# This run's loopback addresses, 127.R.S.x: other users of the machine's loopback (another
# test with a server on 127.0.0.2:443) must not collide with ours.
_rand = random.Random(os.getpid() ^ time.time_ns())
NET = f"127.{_rand.randint(10, 250)}.{_rand.randint(0, 255)}."
NET2 = f"127.{_rand.randint(10, 250)}.{_rand.randint(0, 255)}."
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (binds :443, drops ids)")


def _gen_protos():
    out = tempfile.mkdtemp(prefix="sbx-broker-pb-")
    proto = os.path.join(ROOT, "proto")
    subprocess.run(["protoc", f"--proto_path={proto}", f"--python_out={out}",
                    "files.proto", "control.proto", "net.proto"], check=True)
    sys.path.insert(0, out)


_gen_protos()
import net_pb2  # noqa: E402


def ip(s):
    """A dotted quad as the fixed32 of the wire (network byte order, as the packet has it)."""
    return struct.unpack("<I", socket.inet_aton(s))[0]


def unip(v):
    return socket.inet_ntoa(struct.pack("<I", v))


def frame(msg):
    b = msg.SerializeToString()
    return struct.pack(">I", len(b)) + b


class Broker:
    """One broker process and the worker's end of its socketpair."""

    def __init__(self, binary, tmp, mode="allowlist", domains=(), expose=(), allow_private=True,
                 hosts=None, connect_timeout_ms=0, ids=True, resolv=None, prefix=(),
                 binds=None):
        pol = net_pb2.NetPolicy(mode=mode, allowed_domains=list(domains),
                                allow_private=allow_private, connect_timeout_ms=connect_timeout_ms)
        for e in expose:
            x = pol.expose.add()
            x.internal, x.external = e[0], e[1]
            x.protocol = e[2] if len(e) > 2 else ""
        self.hostsdir = None
        if hosts is not None:
            # Readable by an unprivileged broker too (pytest's tmp_path is in a 0700 tree).
            self.hostsdir = tempfile.mkdtemp(prefix="sbx-broker-hosts-")
            os.chmod(self.hostsdir, 0o755)
            path = os.path.join(self.hostsdir, "hosts")
            with open(path, "w") as f:
                f.write(hosts)
            os.chmod(path, 0o644)
            pol.hosts_file = path
        self.worker, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pr, pw = os.pipe()
        os.write(pw, frame(pol))
        os.close(pw)
        self.errpath = os.path.join(tmp, f"stderr-{time.monotonic_ns()}")
        self.errf = open(self.errpath, "w+")
        argv = [binary, "--fd", str(broker_end.fileno()), "--policy-fd", str(pr)]
        if ids:
            argv += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        argv = list(prefix) + argv
        if os.environ.get("SBX_BROKER_STRACE"):  # debugging: the syscalls the filter must allow
            argv = ["strace", "-f", "-o", os.environ["SBX_BROKER_STRACE"] + f".{time.monotonic_ns()}"] + argv
        binds = dict(binds or {})
        if resolv:
            binds["/etc/resolv.conf"] = resolv
        if binds:
            # The broker's own view of /etc: a fake name server on loopback, other NSS set-ups.
            mounts = " && ".join(f'mount --bind "{src}" "{dst}"' for dst, src in binds.items())
            argv = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh"] + argv
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:exitcode=99")
        env.setdefault("UBSAN_OPTIONS", "exitcode=98:print_stacktrace=1")
        self.proc = subprocess.Popen(argv, pass_fds=(broker_end.fileno(), pr), stdout=self.errf,
                                     stderr=self.errf, env=env)
        broker_end.close()
        os.close(pr)
        self.listening, self.listen_fds = self.recv(timeout=10)
        assert self.listening.WhichOneof("body") == "listening"
        self.next_id = 100
        self.waited = False

    def recv(self, timeout=5):
        r, _, _ = select.select([self.worker], [], [], timeout)
        assert r, "no reply from the broker in time"
        data, anc, flags, _ = self.worker.recvmsg(70000, socket.CMSG_SPACE(4 * 16))
        if not data:
            try:
                rc = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                rc = None
            raise AssertionError(f"the broker closed the socket (exit {rc}): {self.stderr()}")
        fds = []
        for level, typ, d in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(d[: len(d) - len(d) % a.itemsize])
                fds += list(a)
        (n,) = struct.unpack(">I", data[:4])
        assert n == len(data) - 4
        m = net_pb2.NetMsg()
        m.ParseFromString(data[4:])
        return m, fds

    def send(self, msg):
        self.worker.send(frame(msg))

    def resolve(self, name, timeout=8):
        self.next_id += 1
        self.send(net_pb2.NetMsg(id=self.next_id, resolve=net_pb2.Resolve(name=name)))
        m, fds = self.recv(timeout)
        assert m.id == self.next_id and m.WhichOneof("body") == "resolved" and not fds
        return [unip(a) for a in m.resolved.ipv4], m.resolved.refused

    def connect(self, addr, port, sni="", name="", timeout=15):
        self.next_id += 1
        self.send(net_pb2.NetMsg(id=self.next_id, connect=net_pb2.Connect(
            ipv4=ip(addr), port=port, sni=sni, name=name)))
        m, fds = self.recv(timeout)
        assert m.id == self.next_id and m.WhichOneof("body") == "connected"
        if m.connected.ok:
            assert len(fds) == 1 and not m.connected.refused
            return socket.socket(fileno=fds[0]), ""
        assert not fds and m.connected.refused
        return None, m.connected.refused

    def wait(self, timeout=10):
        self.waited = True  # the test checks the exit status itself
        return self.proc.wait(timeout)

    def stderr(self):
        with open(self.errpath) as f:
            return f.read()

    def close(self):
        self.worker.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in self.listen_fds:
            os.close(fd)
        self.errf.close()
        if self.hostsdir:
            shutil.rmtree(self.hostsdir, ignore_errors=True)


@pytest.fixture
def broker_bin(request):
    b = request.config.getoption("--broker")
    assert os.access(b, os.X_OK), f"{b}: build it first (make {b})"
    return b


@pytest.fixture
def start(broker_bin, tmp_path):
    started = []

    def go(**kw):
        b = Broker(broker_bin, str(tmp_path), **kw)
        started.append(b)
        return b

    yield go
    for b in started:
        b.close()
        err = b.stderr()
        assert "AddressSanitizer" not in err and "runtime error" not in err, err
        assert b.waited or b.proc.returncode == 0, (b.proc.returncode, err)


def tcp_server(addr, port, backlog=16):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(backlog)
    return s


def full_listener(addr):
    """A listener whose accept queue is full: loopback never drops a SYN otherwise, so a connect
    to it stays pending. Returns it, its port and the sockets that fill it."""
    srv = tcp_server(addr, 0, backlog=0)
    port = srv.getsockname()[1]
    fill = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((addr, port))
        fill.append(c)
    time.sleep(0.2)
    return srv, port, fill


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


HOSTS = f"""# test names
{NET}2 a.good.test v1.a.good.test
{NET}3 b.good.test
{NET}4 evil.test good.test
{NET}6 mixed.good.test
198.51.100.7 mixed.good.test
::1 v6only.good.test
not-an-ip broken.good.test
"""


# --- resolve ---------------------------------------------------------------------------------

def test_allowlist_resolve(start):
    b = start(domains=["a.good.test", "b.good.test"], hosts=HOSTS)
    assert b.resolve("a.good.test") == ([NET + "2"], "")
    assert b.resolve("A.Good.Test") == ([NET + "2"], "")
    assert b.resolve("v1.a.good.test") == ([NET + "2"], "")  # subdomain of an allowed name
    # Parent, sibling and look-alikes: refused by policy before any lookup (none of these names
    # is in the hosts file, so an answer of any other kind would mean the resolver was asked).
    for name in ("good.test", "evil.test", "xa.good.test", "nothere.example.com", "test"):
        t0 = time.monotonic()
        assert b.resolve(name) == ([], "not on the allowlist")
        assert time.monotonic() - t0 < 1
    assert b.resolve("bad name!") == ([], "invalid name")
    assert b.resolve("") == ([], "invalid name")
    assert b.resolve("x" * 300 + ".good.test")[1] == "invalid name"
    # IPv6 and malformed hosts lines are skipped: this allowed name falls to the resolver.
    assert b.resolve("v6only.good.test")[0] == []
    err = b.stderr()
    assert "refused resolve evil.test: not on the allowlist" in err


def test_private_answers(start):
    b = start(domains=["good.test"], hosts=HOSTS, allow_private=False)
    assert b.resolve("a.good.test") == ([], "resolves only to private addresses")
    assert b.resolve("mixed.good.test") == (["198.51.100.7"], "")
    b2 = start(domains=["good.test"], hosts=HOSTS, allow_private=True)
    assert b2.resolve("a.good.test") == ([NET + "2"], "")
    assert sorted(b2.resolve("mixed.good.test")[0]) == [NET + "6", "198.51.100.7"]


def test_ports_mode_is_off(start):
    b = start(mode="ports", hosts=HOSTS, expose=[(80, 0)])
    assert b.resolve("a.good.test") == ([], "network is off")
    assert b.connect(NET + "2", 443, sni="a.good.test") == (None, "network is off")


def test_system_resolver_path(start):
    # Not in the policy's hosts file: a resolver child (under the broker's seccomp filter)
    # asks getaddrinfo, which answers from the system's /etc/hosts.
    b = start(mode="open", allow_private=True, hosts="")
    assert b.resolve("localhost") == (["127.0.0.1"], "")
    b2 = start(mode="open", allow_private=False, hosts="")
    assert b2.resolve("localhost") == ([], "resolves only to private addresses")


def test_v6_nameserver(start, tmp_path):
    # The filter answers socket(AF_INET6) with an errno, not a kill. glibc gives up on the
    # query there (IPv6 name servers are not supported), but one listed after an IPv4 server
    # that answers does no harm.
    resolv = tmp_path / "resolv.conf"
    dns = FakeDNS({"api.good.test": "198.51.100.20"})
    try:
        resolv.write_text(f"nameserver {NET}77\nnameserver ::1\noptions timeout:1 attempts:1\n")
        b = start(mode="open", allow_private=True, hosts="", resolv=str(resolv))
        assert b.resolve("api.good.test") == (["198.51.100.20"], "")
        resolv.write_text(f"nameserver ::1\nnameserver {NET}77\noptions timeout:1 attempts:1\n")
        b2 = start(mode="open", allow_private=True, hosts="", resolv=str(resolv))
        assert b2.resolve("api.good.test")[0] == []
        assert "seccomp" not in b.stderr() + b2.stderr()
    finally:
        dns.close()


class FakeDNS(threading.Thread):
    """UDP name server on NET.77:53: A records from `names`, never answers `silent`,
    NXDOMAIN for the rest."""

    def __init__(self, names, silent=()):
        super().__init__(daemon=True)
        self.names, self.silent = names, set(silent)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((NET + "77", 53))
        self.queries = []
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            # Stopped and joined before its socket closes: a thread blocked on a closed fd
            # number could read from whatever socket reuses it next.
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            q, peer = self.sock.recvfrom(4096)
            qid, flags = struct.unpack(">HH", q[:4])
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1: i + 1 + q[i]].decode())
                i += 1 + q[i]
            qtype = struct.unpack(">H", q[i + 1: i + 3])[0]
            question = q[12: i + 5]
            name = ".".join(labels).lower()
            self.queries.append((name, qtype))
            if name in self.silent:
                continue
            addr = self.names.get(name)
            rcode = 0 if addr else 3
            an = 1 if addr and qtype == 1 else 0
            resp = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, an, 0, 0) + question
            if an:
                resp += struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
            self.sock.sendto(resp, peer)

    def close(self):
        self.stop.set()
        self.join()
        self.sock.close()


def test_dns_resolver_and_deadline(start, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {NET}77\noptions timeout:3 attempts:3\n")
    dns = FakeDNS({"api.good.test": "198.51.100.20"}, silent={"slow.good.test"})
    try:
        b = start(domains=["good.test"], allow_private=False, hosts="", resolv=str(resolv))
        assert b.resolve("api.good.test") == (["198.51.100.20"], "")
        assert b.resolve("gone.good.test") == ([], "no such name")
        # A resolution that hangs does not hold up the others; its reply comes later, with
        # its own id, once the 5 s deadline kills the resolver child.
        b.send(net_pb2.NetMsg(id=1, resolve=net_pb2.Resolve(name="slow.good.test")))
        t0 = time.monotonic()
        assert b.resolve("api.good.test") == (["198.51.100.20"], "")
        assert time.monotonic() - t0 < 2
        # At most 32 resolver children at once; the one after is refused at once.
        for i in range(2, 33):
            b.send(net_pb2.NetMsg(id=i, resolve=net_pb2.Resolve(name="slow.good.test")))
        assert b.resolve("api.good.test") == ([], "too many pending resolutions")
        late = {}
        for _ in range(32):
            m, _ = b.recv(timeout=10)
            late[m.id] = m.resolved.refused
        assert late == {i: "resolution timed out after 5 s" for i in range(1, 33)}
        assert 4 < time.monotonic() - t0 < 8
        # The children are gone (killed and reaped), none left as a zombie.
        kids = open(f"/proc/{b.proc.pid}/task/{b.proc.pid}/children").read().split()
        assert kids == [], kids
        # Refused names never reach the name server.
        assert b.resolve("evil.test") == ([], "not on the allowlist")
        assert all(n.endswith("good.test") for n, _ in dns.queries), dns.queries
        # The answer counts for connects: the IP was returned for this name.
        _, why = b.connect("198.51.100.21", 443, sni="api.good.test")
        assert why == "198.51.100.21 was not resolved for api.good.test"
    finally:
        dns.close()


# --- connect ---------------------------------------------------------------------------------

@pytest.fixture
def servers():
    ss = [tcp_server(NET + "2", 443), tcp_server(NET + "3", 443)]
    yield ss
    for s in ss:
        s.close()


def echo_through(sock, server):
    server.settimeout(5)
    peer, _ = server.accept()
    sock.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    peer.sendall(b"world")
    sock.settimeout(5)
    assert sock.recv(5) == b"world"
    peer.close()


def test_allowlist_connect(start, servers):
    b = start(domains=["a.good.test", "b.good.test"], hosts=HOSTS)
    assert b.resolve("a.good.test")[0] == [NET + "2"]
    assert b.resolve("b.good.test")[0] == [NET + "3"]
    s, why = b.connect(NET + "2", 443, sni="a.good.test", name="a.good.test")
    assert s and why == ""
    # Not the host socket: one end of a Unix pair the broker copies to it (a worker taken over
    # could re-aim a host socket anywhere: connect(AF_UNSPEC), then connect or bind again).
    assert s.family == socket.AF_UNIX and s.type == socket.SOCK_STREAM
    s.setblocking(True)
    echo_through(s, servers[0])
    s.close()
    assert b.connect(NET + "2", 80, sni="a.good.test") == (None,
                                                             "port 80 refused: only TLS on 443")
    assert b.connect(NET + "4", 443, sni="evil.test") == (None, "SNI evil.test not allowed")
    assert b.connect(NET + "2", 443, sni="good.test") == (None, "SNI good.test not allowed")
    assert b.connect(NET + "2", 443, sni="") == (None, "no SNI: only TLS to a named server")
    assert b.connect(NET + "9", 443, sni="a.good.test") == (
        None, f"{NET}9 was not resolved for a.good.test")
    # SNI spoofing: an allowed name's SNI towards the address of another allowed name, even
    # with that other name as the hint: the check is against the SNI.
    assert b.connect(NET + "3", 443, sni="a.good.test", name="b.good.test") == (
        None, f"{NET}3 was not resolved for a.good.test")
    # Allowed but never resolved through this broker.
    assert b.connect(NET + "2", 443, sni="v1.a.good.test") == (
        None, f"{NET}2 was not resolved for v1.a.good.test")
    s, _ = b.connect(NET + "3", 443, sni="B.GOOD.TEST")
    assert s
    echo_through(s, servers[1])
    s.close()
    assert f"refused connect {NET}2:80 (SNI a.good.test): port 80 refused: only TLS on 443" \
        in b.stderr()


def test_answer_cache_caps(start, servers):
    # 300 names, one address each; 20 addresses for one name: replies carry at most 16, and
    # the broker remembers the 256 names answered last.
    hosts = "".join(f"{NET}2 n{i}.good.test\n" for i in range(300))
    hosts += "".join(f"{NET2}{i} many.good.test\n" for i in range(1, 21))
    b = start(domains=["good.test"], hosts=hosts)
    addrs, _ = b.resolve("many.good.test")
    assert addrs == [f"{NET2}{i}" for i in range(1, 17)]
    for i in range(300):
        assert b.resolve(f"n{i}.good.test") == ([NET + "2"], "")
    assert b.connect(NET + "2", 443, sni="n0.good.test") == (
        None, f"{NET}2 was not resolved for n0.good.test")  # evicted
    s, why = b.connect(NET + "2", 443, sni="n299.good.test")
    assert s, why
    s.close()
    s, why = b.connect(NET + "2", 443, sni="n44.good.test")  # 256 names back: still there
    assert s, why
    s.close()
    assert b.connect(NET + "2", 443, sni="n43.good.test")[1] == (
        f"{NET}2 was not resolved for n43.good.test")


def test_open_connect(start):
    srv = tcp_server(NET + "2", 0)
    port = srv.getsockname()[1]
    try:
        b = start(mode="open", allow_private=True)
        s, why = b.connect(NET + "2", port)
        assert s, why
        echo_through(s, srv)
        s.close()
        closed = free_port()
        assert b.connect("127.0.0.1", closed) == (
            None, f"connect 127.0.0.1:{closed}: Connection refused")
        assert b.connect(NET + "2", 0) == (None, "port 0 out of range")
        assert b.connect(NET + "2", 70000) == (None, "port 70000 out of range")
        b2 = start(mode="open", allow_private=False)
        for addr in (NET + "2", "10.1.2.3", "169.254.169.254", "192.168.1.1", "0.0.0.0",
                     "224.0.0.1", "100.64.0.1", "172.16.0.1"):
            assert b2.connect(addr, port) == (None, f"{addr} is a private address")
    finally:
        srv.close()


def test_pending_connects_and_timeout(start):
    srv, port, fill = full_listener(NET + "2")
    try:
        other = tcp_server(NET + "3", 0)
        b = start(mode="open", allow_private=True, connect_timeout_ms=700)
        b.send(net_pb2.NetMsg(id=7, connect=net_pb2.Connect(ipv4=ip(NET + "2"), port=port)))
        t0 = time.monotonic()
        s, why = b.connect(NET + "3", other.getsockname()[1])  # answered while 7 waits
        assert s, why
        s.close()
        m, fds = b.recv(timeout=5)
        if m.connected.ok:
            for fd in fds:
                os.close(fd)
            pytest.skip("this kernel's loopback accepted past the backlog")
        assert m.id == 7 and m.connected.refused == f"connect {NET}2:{port}: timed out " \
                                                   "after 700 ms"
        assert 0.5 < time.monotonic() - t0 < 3
        other.close()
    finally:
        for c in fill:
            c.close()
        srv.close()


def test_pending_connect_cap(start):
    srv, port, fill = full_listener(NET + "2")
    try:
        b = start(mode="open", allow_private=True, connect_timeout_ms=3000)
        for i in range(64):
            b.send(net_pb2.NetMsg(id=1000 + i, connect=net_pb2.Connect(ipv4=ip(NET + "2"),
                                                                       port=port)))
        s, why = b.connect(NET + "2", port)
        if s:
            s.close()
            pytest.skip("this kernel's loopback accepted past the backlog")
        assert why == "too many pending connections"
        got = set()
        for _ in range(64):
            m, fds = b.recv(timeout=10)
            for fd in fds:
                os.close(fd)
            got.add(m.id)
        assert got == set(range(1000, 1064))
    finally:
        for c in fill:
            c.close()
        srv.close()


def test_dies_with_its_parent(broker_bin, tmp_path):
    # sbxd stands in as a middle process that the test kills: the broker must follow it.
    worker, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pr, pw = os.pipe()
    os.write(pw, frame(net_pb2.NetPolicy(mode="open")))
    os.close(pw)
    middle = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, subprocess; "
         "subprocess.Popen(sys.argv[1:], close_fds=False).wait()",
         broker_bin, "--fd", str(end.fileno()), "--policy-fd", str(pr),
         "--uid", str(NOBODY), "--gid", str(NOBODY)], pass_fds=(end.fileno(), pr))
    end.close()
    os.close(pr)
    try:
        assert select.select([worker], [], [], 10)[0]
        worker.recvmsg(70000, socket.CMSG_SPACE(64))  # listening: the broker is up, confined
        kids = open(f"/proc/{middle.pid}/task/{middle.pid}/children").read().split()
        assert len(kids) == 1
        middle.kill()
        middle.wait()
        for _ in range(100):
            if not os.path.exists(f"/proc/{kids[0]}"):
                break
            with open(f"/proc/{kids[0]}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break  # dead, waiting for init to reap it
            time.sleep(0.05)
        else:
            pytest.fail("the broker outlived its parent")
    finally:
        worker.close()


# --- listening sockets -----------------------------------------------------------------------

def test_listening(start):
    explicit = free_port()
    b = start(mode="ports", expose=[(8000, 0), (8080, explicit, "tcp"), (53, 0, "udp")])
    ports = b.listening.listening.ports
    assert b.listening.id == 0 and not b.listening.listening.error
    # The host sockets stay in the broker: only the UDP port's datagram pair is handed over.
    assert len(ports) == 3 and len(b.listen_fds) == 1
    assert ports[0].internal == 8000 and ports[0].external >= 1024
    assert ports[0].host == "127.0.0.1" and ports[0].protocol == "tcp"
    assert ports[0].url == f"http://127.0.0.1:{ports[0].external}"
    assert ports[1].external == explicit and ports[1].protocol == "tcp"
    assert ports[2].protocol == "udp" and ports[2].url == "" and ports[2].external >= 1024
    for i in (0, 1):
        # A host client becomes an Inbound message with the worker's end of its relay.
        c = socket.create_connection(("127.0.0.1", ports[i].external), timeout=5)
        m, fds = b.recv(timeout=5)
        assert m.WhichOneof("body") == "inbound" and m.inbound.expose == i and len(fds) == 1
        peer = socket.socket(fileno=fds[0])
        assert peer.family == socket.AF_UNIX
        peer.setblocking(True)
        peer.settimeout(5)
        c.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        peer.sendall(b"pong")
        assert c.recv(4) == b"pong"
        peer.close()
        assert c.recv(4) == b""  # the worker's close reaches the client
        c.close()
    us = socket.socket(fileno=os.dup(b.listen_fds[0]))
    assert us.family == socket.AF_UNIX and us.type == socket.SOCK_SEQPACKET
    us.setblocking(True)
    us.settimeout(5)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.sendto(b"dgram", ("127.0.0.1", ports[2].external))
    got = us.recv(100)
    hdr, payload = got[:6], got[6:]
    assert payload == b"dgram" and hdr == socket.inet_aton("127.0.0.1") + struct.pack(
        ">H", c.getsockname()[1])
    us.send(hdr + b"answer")
    assert c.recvfrom(100) == (b"answer", ("127.0.0.1", ports[2].external))
    # Only peers that wrote first get datagrams: the worker cannot aim the port elsewhere.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(0.5)
    us.send(socket.inet_aton("127.0.0.1") + struct.pack(">H", other.getsockname()[1]) + b"x")
    with pytest.raises(socket.timeout):
        other.recvfrom(100)
    other.close()
    c.close()
    us.close()


def test_listening_port_in_use(start):
    busy = tcp_server("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        b = start(mode="ports", expose=[(8000, 0), (8080, port)])
        assert b.listen_fds == []
        err = b.listening.listening.error
        assert f"bind 127.0.0.1:{port}" in err and "in use" in err, err
        assert b.wait() == 1
    finally:
        busy.close()


def test_bad_policy(start):
    b = start(mode="allowlist", domains=[])
    assert "allowlist mode without a domain" in b.listening.listening.error
    assert b.wait() == 1
    b = start(mode="allowlist", domains=["x..test"])
    assert "x..test" in b.listening.listening.error
    assert b.listening.listening.error and b.wait() == 1
    b = start(mode="sideways")
    assert "mode `sideways`" in b.listening.listening.error and b.wait() == 1
    b = start(mode="ports", expose=[(0, 0)])
    assert b.listening.listening.error and b.wait() == 1


# --- life and death --------------------------------------------------------------------------

def test_exit_when_worker_closes(start):
    b = start(mode="open")
    b.worker.close()
    assert b.wait() == 0


@pytest.mark.parametrize("junk", [
    b"\x00\x00\x00\x05\xff\xff\xff\xff\xff",  # a frame that is not a NetMsg
    b"\x00\x00\x00\x09\x01",                  # length that is not the message's
    b"\x01\x02",                              # shorter than a header
    None,                                     # a message over 64 KiB
    "reply",                                  # a reply where a request belongs
])
def test_garbage_exits(start, junk):
    b = start(mode="open")
    if junk is None:
        body = b"\x12" + b"\x00" * 70000
        junk = struct.pack(">I", len(body)) + body
    elif junk == "reply":
        junk = frame(net_pb2.NetMsg(id=3, connected=net_pb2.Connected(ok=True)))
    b.worker.send(junk)
    assert b.wait() == 1
    assert "protocol error" in b.stderr()


def test_confined(start):
    b = start(mode="open", hosts=HOSTS)
    b.resolve("a.good.test")  # the loop runs: confinement is done
    with open(f"/proc/{b.proc.pid}/status") as f:
        st = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert st["Uid"].split() == [str(NOBODY)] * 4
    assert st["Gid"].split() == [str(NOBODY)] * 4
    assert st["Groups"].strip() == ""
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    assert int(st["CapBnd"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"


def test_root_without_ids_refused(start):
    b = start(mode="open", ids=False)
    assert "--uid and --gid" in b.listening.listening.error
    assert b.wait() == 1


def test_unprivileged_start(start):
    # sbxd not running as root: the broker keeps sbxd's ids, drops nothing it has not got,
    # and is confined all the same.
    b = start(mode="open", ids=False, hosts=HOSTS,
              prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert not b.listening.listening.error
    assert b.resolve("a.good.test") == ([NET + "2"], "")
    with open(f"/proc/{b.proc.pid}/status") as f:
        st = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert st["Uid"].split() == [str(NOBODY)] * 4 and st["Seccomp"].strip() == "2"
    b2 = start(mode="open", prefix=["setpriv", "--reuid=65534", "--regid=65534",
                                    "--clear-groups"])  # --uid 65534 --gid 65534: its own
    assert not b2.listening.listening.error
    b3 = start(mode="open", ids=False, prefix=["setpriv", "--reuid=65534", "--regid=65534",
                                               "--clear-groups"])
    b3.worker.close()
    assert b3.wait() == 0


def test_sigterm(start):
    b = start(mode="open")
    b.proc.terminate()
    assert b.wait() == -15
