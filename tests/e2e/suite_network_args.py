"""Network requests that are refused before any VM boots: sbx's usage errors for --network,
--allow-domain and --expose, and sbxd's own validation of a NetworkRequest on the raw protocol
(a client need not be sbx). None of these tests boots a VM."""
import json

import wire
from harness import *  # noqa: F401,F403


@test(fast=True)
def network_usage_errors(c):
    cases = [
        (["run", "--allow-domain", "example.com", "print(1)"], "--allow-domain needs --network"),
        (["session", "new", "--allow-domain", "example.com"], "--allow-domain needs --network"),
        (["run", "--network", "--allow-domain", "1.2.3.4", "print(1)"], "IP address"),
        (["run", "--network", "--allow-domain", "*.example.com", "print(1)"], "wildcard"),
        (["run", "--network", "--allow-domain", "localhost", "print(1)"], "single label"),
        (["run", "--network", "--allow-domain", "a..com", "print(1)"], "empty label"),
        (["run", "--network", "--allow-domain", "a" * 64 + ".com", "print(1)"], "64 bytes"),
        (["run", "--expose", "8080:80", "print(1)"], "below 1024"),
        (["run", "--expose", "70000", "print(1)"], "out of range"),
        (["run", "--expose", "0", "print(1)"], "out of range"),
        (["run", "--expose", "8080/sctp", "print(1)"], "sctp"),
        (["run", "--expose", "8080:", "print(1)"], "no host port"),
        (["run", "--expose", ":9000", "print(1)"], "no guest port"),
        (["session", "new", "--expose", "abc"], "no guest port"),
        (["run", "--network=yes", "print(1)"], "takes no value"),
        (["session", "exec", "--network", "ID", "print(1)"], "unknown option `--network`"),
    ]
    for argv, want in cases:
        r = c.sbx(*argv)
        eq(r.returncode, 2, f"exit status of {argv}: {r.err}")
        ok(want in r.err, f"{argv}: stderr {r.err!r} lacks {want!r}")
        eq(r.out, "", f"{argv}: nothing on stdout")
    many = sum([["--expose", str(1000 + i)] for i in range(11)], [])
    r = c.sbx("run", *many, "print(1)")
    eq(r.returncode, 2, "11 exposed ports")
    ok("more than 10 ports" in r.err, r.err)
    many = sum([["--allow-domain", f"d{i}.example.com"] for i in range(101)], [])
    r = c.sbx("session", "new", "--network", *many)
    eq(r.returncode, 2, "101 domains")
    ok("more than 100 domains" in r.err, r.err)


def _network_error(conn, id, net, session=False):
    pb = wire.pb()
    if session:
        conn.send(id, session_open=pb.SessionOpen(language="python", network=net))
    else:
        conn.send(id, run=pb.RunRequest(language="python", code=b"print(1)", network=net))
    r = conn.until(id, kinds=("result", "error", "session", "ports"))
    eq(r.WhichOneof("body"), "error", f"reply to {net}")
    eq(r.error.kind, pb.ERROR_VM_CONFIG, f"kind for {net}: {r.error.message}")
    eq(r.error.transient, False, "permanent")
    return r.error.message


@test(fast=True)
def network_daemon_validation(c):
    pb = wire.pb()
    PE = pb.PortExpose
    bad = [
        (pb.NetworkRequest(allowed_domains=["example.com"]), "allowed_domains need allow_network"),
        (pb.NetworkRequest(allow_network=True, allowed_domains=["ok.com", "bad..com"]), "bad..com"),
        (pb.NetworkRequest(allow_network=True, allowed_domains=["10.0.0.1"]), "IP address"),
        (pb.NetworkRequest(allow_network=True, allowed_domains=["x.com"] * 101), "101 allowed domains"),
        (pb.NetworkRequest(expose=[PE(internal=1000 + i) for i in range(11)]), "11 exposed ports"),
        (pb.NetworkRequest(expose=[PE(internal=0)]), "out of range"),
        (pb.NetworkRequest(expose=[PE(internal=65536)]), "out of range"),
        (pb.NetworkRequest(expose=[PE(internal=8080, external=80)]), "below 1024"),
        (pb.NetworkRequest(expose=[PE(internal=8080, external=70000)]), "out of range"),
        (pb.NetworkRequest(expose=[PE(internal=8080, protocol="sctp")]), "sctp"),
        (pb.NetworkRequest(expose=[PE(internal=8080), PE(internal=8080, protocol="tcp")]),
         "8080/tcp is exposed twice"),
        (pb.NetworkRequest(expose=[PE(internal=53, protocol="udp"), PE(internal=53, protocol="udp")]),
         "53/udp is exposed twice"),
        (pb.NetworkRequest(expose=[PE(internal=1, external=5000), PE(internal=2, external=5000)]),
         "host port 5000/tcp"),
    ]
    conn = wire.Conn(c.sock).hello()
    try:
        id = 10
        for session in (False, True):
            for net, want in bad:
                id += 1
                msg = _network_error(conn, id, net, session)
                ok(want in msg, f"{'session' if session else 'run'} {net}: {msg!r} lacks {want!r}")
                ok(msg.startswith("network: "), f"message names the network: {msg!r}")
        # (The same number over tcp and udp is two ports: network_udp_expose boots one.)
        # The connection is still good for other requests.
        conn.send(100, status=pb.StatusRequest())
        eq(conn.until(100, kinds=("status", "error")).WhichOneof("body"), "status", "status after")
    finally:
        conn.close()


class _FakeNetDaemon:
    """A stand-in for sbxd with its network side in place, enough for sbx to meet every network
    reply: PortsReady before the output, a result with exposed ports and a network report, a
    SessionInfo with ports. It lets the CLI and libsbx be checked before the real one exists."""

    def __init__(self, path):
        import socket
        import threading
        self.requests = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _ports(self, net):
        return [wire.pb().ExposedPort(
            internal=e.internal, external=e.external or 40000 + i, host="127.0.0.1",
            protocol=e.protocol or "tcp",
            url="" if e.protocol == "udp" else f"http://127.0.0.1:{e.external or 40000 + i}")
            for i, e in enumerate(net.expose)]

    def _serve(self):
        import struct
        pb = wire.pb()
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            buf = b""
            with s:
                while True:
                    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                        b = s.recv(65536)
                        if not b:
                            break
                        buf += b
                    else:
                        n = struct.unpack(">I", buf[:4])[0]
                        rq = pb.Request.FromString(buf[4:4 + n])
                        buf = buf[4 + n:]
                        self.requests.append(rq)
                        for reply in self._answer(pb, rq):
                            s.sendall(wire.frame(reply))
                        continue
                    break

    def _answer(self, pb, rq):
        body = rq.WhichOneof("body")
        if body == "hello":
            return [pb.Reply(id=rq.id, hello=pb.HelloOk(protocol_version=1, server="fake-net/0"))]
        if body == "run":
            net = rq.run.network
            ports = self._ports(net)
            report = pb.NetworkReport(
                mode="allowlist" if net.allowed_domains else "open" if net.allow_network
                else "ports", allowed_domains=net.allowed_domains,
                blocked=[pb.Blocked(what="evil.example", port=443, reason="not allowed")],
                blocked_total=3) if rq.run.HasField("network") else None
            out = [pb.Reply(id=rq.id, ports=pb.PortsReady(ports=ports))] if ports else []
            if rq.run.stream:
                out.append(pb.Reply(id=rq.id, chunk=pb.OutputChunk(stream=1, data=b"serving\n")))
            return out + [pb.Reply(id=rq.id, result=pb.ExecResult(
                stdout=b"serving\n", exposed_ports=ports, network=report, accelerator="tcg",
                start_mode="cold"))]
        if body == "session_open":
            ports = self._ports(rq.session_open.network)
            return [pb.Reply(id=rq.id, ports=pb.PortsReady(ports=ports)),
                    pb.Reply(id=rq.id, session=pb.SessionInfo(
                        session_id="ab" * 16, language="python", exposed_ports=ports,
                        network_mode="ports"))]
        return [pb.Reply(id=rq.id, error=pb.Error(kind=9, message="not in this fake"))]

    def close(self):
        import socket
        self.srv.shutdown(socket.SHUT_RDWR)
        self.srv.close()


@test(fast=True)
def network_cli_meets_every_network_reply(c):
    import os
    sock = os.path.join(c.tmp, "fake-net.sock")
    fake = _FakeNetDaemon(sock)
    try:
        r = c.sbx("--socket", sock, "run", "--network", "--allow-domain", "example.com",
                  "--expose", "8000", "--expose", "9000:9001/udp", "print('x')", check_rc=0)
        lines = r.err.splitlines()
        eq(lines[:2], ["sbx: port 8000/tcp -> http://127.0.0.1:40000",
                       "sbx: port 9000/udp -> 127.0.0.1:9001"], "ports on stderr: " + r.err)
        eq(r.out, "serving\n", "output after the ports")
        ok("3 connection attempts blocked, first evil.example:443 (not allowed)" in r.err, r.err)
        net = fake.requests[-1].run.network
        eq((net.allow_network, list(net.allowed_domains)), (True, ["example.com"]), "request")
        eq([(e.internal, e.external, e.protocol) for e in net.expose],
           [(8000, 0, "tcp"), (9000, 9001, "udp")], "exposes sent")
        # -q: no port lines; --json: the fields.
        r = c.sbx("--socket", sock, "run", "-q", "--json", "--expose", "8000", "print('x')",
                  check_rc=0)
        eq(r.err, "", "nothing on stderr with -q")
        j = json.loads(r.out)
        eq(j["exposed_ports"], [{"internal": 8000, "external": 40000, "host": "127.0.0.1",
                                 "protocol": "tcp", "url": "http://127.0.0.1:40000"}], "JSON ports")
        eq(j["network"], {"mode": "ports", "allowed_domains": [], "blocked_total": 3, "blocked": [
            {"what": "evil.example", "port": 443, "reason": "not allowed"}]}, "JSON network")
        r = c.sbx("--socket", sock, "run", "-q", "--json", "print('x')", check_rc=0)
        j = json.loads(r.out)
        eq((j["network"], j["exposed_ports"]), (None, []), "no network interface")
        ok(not fake.requests[-1].run.HasField("network"), "no NetworkRequest when none was asked")
        # Sessions: the id alone on stdout, the ports on stderr, both in --json.
        r = c.sbx("--socket", sock, "session", "new", "--expose", "8000:8080", check_rc=0)
        eq(r.out, "ab" * 16 + "\n", "session id")
        eq(r.err.splitlines(), ["sbx: port 8000/tcp -> http://127.0.0.1:8080"], "session ports")
        r = c.sbx("--socket", sock, "session", "new", "--json", "--expose", "8000", check_rc=0)
        j = json.loads(r.out)
        eq((j["network_mode"], j["exposed_ports"][0]["external"]), ("ports", 40000), "session JSON")
    finally:
        fake.close()
