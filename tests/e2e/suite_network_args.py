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
        (["run", "-p", "requests", "print(1)"], "--package is not available yet"),
        (["run", "--no-validation", "print(1)"], "--no-validation is not available yet"),
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
        # The same port number over tcp and udp is two ports, and is not refused as a duplicate
        # (it is refused below only because this daemon has no network yet).
        msg = _network_error(conn, 99, pb.NetworkRequest(
            expose=[PE(internal=53), PE(internal=53, protocol="udp")]))
        ok("twice" not in msg, msg)
        # The connection is still good for other requests.
        conn.send(100, status=pb.StatusRequest())
        eq(conn.until(100, kinds=("status", "error")).WhichOneof("body"), "status", "status after")
    finally:
        conn.close()
