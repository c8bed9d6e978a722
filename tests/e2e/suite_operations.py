"""Operations (issue 15, part): Prometheus metrics on metrics_listen and the audit log. A daemon of
its own serves a few runs, a session and some refused requests; the scrape's counts must match
what was asked, the endpoint must answer while VMs boot and shrug off hostile scrapers, and the
audit log must hold one line per request with what was asked and how it ended, never the code or
env values."""
import hashlib
import json
import os
import re
import socket
import subprocess
import time

from harness import *  # noqa: F401,F403
from suite_network import free_port

MARKER = "sbx-audit-marker-7d1f"  # in the code of a run: must never reach the audit log
ENV_VALUE = "sbx-env-secret-91a2"   # an env value: same


def scrape(where, path="/metrics", timeout=10):
    """GET path from ADDRESS:PORT or a Unix socket path: (status, body, seconds)."""
    t0 = time.monotonic()
    if where.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(where)
    else:
        host, port = where.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = read_all(s)
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, body.decode(), time.monotonic() - t0


def series(body, name):
    """{labels-string: value} of one metric name."""
    out = {}
    for m in re.finditer(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", body, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def total(body, name, **labels):
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in series(body, name).items() if all(w in k for w in want))


@test()
def metrics_and_audit(c):
    where = f"127.0.0.1:{free_port()}"
    audit = os.path.join(c.tmp, "audit.jsonl")
    sock = os.path.join(c.tmp, "ops.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_METRICS_LISTEN=where,
                EXEC_SANDBOX_AUDIT_LOG=audit)
    p = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "ops-sbxd.log"), env=env)
    try:
        status, body, _ = scrape(where)
        eq(status, 200, "scrape answered")
        eq(total(body, "sbx_requests_total"), 0, "nothing yet")

        def run(*args, rc=0):
            return c.sbx("run", "-q", *args, env=env, check_rc=rc)

        code = f"print('{MARKER}'[:3])"
        run("-e", f"SBX_TOKEN={ENV_VALUE}", code)
        run("print(1)")
        run("print(2)")
        run("-l", "javascript", "console.log(1)")
        run("import sys; sys.exit(3)", rc=3)
        run("-t", "1", "import time; time.sleep(10)", rc=124)
        run("-l", "cobol", "x", rc=2)  # refused by sbx itself: never reaches the daemon
        # Refused by the daemon (a raw client need not be sbx): a VmConfigError.
        import wire
        pb = wire.pb()
        conn = wire.Conn(sock).hello()
        conn.send(7, run=pb.RunRequest(language="cobol", code=b"x"))
        eq(conn.until(7, kinds=("error",)).error.kind, pb.ERROR_VM_CONFIG, "daemon refusal")
        conn.close()
        sid = c.sbx("session", "new", "-q", env=env, check_rc=0).out.strip()
        c.sbx("session", "exec", sid, "x = 41", env=env, check_rc=0)
        c.sbx("session", "exec", sid, "print(x + 1)", env=env, check_rc=0)
        c.sbx("session", "close", sid, env=env, check_rc=0)

        status, body, _ = scrape(where)
        eq(status, 200, "scrape")
        eq(total(body, "sbx_requests_total", kind="run", language="python", outcome="ok"), 3,
           "python runs ok")
        eq(total(body, "sbx_requests_total", kind="run", language="python", outcome="error"), 1,
           "python run that exited 3")
        eq(total(body, "sbx_requests_total", kind="run", language="python", outcome="timeout"),
           1, "python run that timed out")
        eq(total(body, "sbx_requests_total", kind="run", language="javascript"), 1, "js run")
        eq(total(body, "sbx_requests_total", kind="session_exec", language="python"), 2,
           "session execs")
        results = total(body, "sbx_requests_total")
        eq(results, 8, "every result counted once")
        for phase in ("setup", "boot", "execute", "total"):
            eq(total(body, f"sbx_{phase}_seconds_count"), results, f"{phase} histogram count")
            inf = total(body, f"sbx_{phase}_seconds_bucket", le="+Inf")
            eq(inf, results, f"{phase}: the +Inf bucket holds every observation")
        ok(total(body, "sbx_total_seconds_sum") > 1, "the total latencies add up to something")
        eq(total(body, "sbx_errors_total", kind="ERROR_VM_CONFIG"), 1, "the daemon's refusal")
        ok(total(body, "sbx_runs_total") >= 6, "runs_total")
        ok(total(body, "sbx_daemon_rss_bytes") > 1 << 20, "daemon RSS")
        for name in ("sbx_vms_running", "sbx_queued_requests", "sbx_sessions_open",
                     "sbx_pool_ready", "sbx_snapshot_hits_total", "sbx_snapshot_misses_total",
                     "sbx_package_layer_hits_total", "sbx_remote_cache_hits_total",
                     "sbx_network_blocked_total"):
            ok(name in series(body, name) or series(body, name), f"{name} present")

        # Scrapes cost no VM work and answer while VMs boot.
        bg = subprocess.Popen([c.sbx_bin, "run", "-q", "import time; time.sleep(3)"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=c.tmp)
        try:
            worst = max(scrape(where)[2] for _ in range(10))
            ok(worst < 1.0, f"scrapes while a VM boots: slowest {worst:.3f} s")
        finally:
            bg.wait(60)
        # Hostile scrapers: a silent connection, a huge request, another path.
        addr = (where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1]))
        quiet = socket.create_connection(addr)
        big = socket.create_connection(addr)
        try:
            big.sendall(b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 9000)
            try:
                got = big.recv(100)
            except ConnectionResetError:
                got = b""  # closed with the rest unread: a reset
            eq(got, b"", "an oversized request is closed unanswered")
            eq(scrape(where, "/other")[0], 404, "another path")
            st, _, secs = scrape(where)
            ok(st == 200 and secs < 1.0, "a silent connection holds nobody up")
        finally:
            quiet.close()
            big.close()

        # The audit log: one line per request that reached the daemon.
        lines = [json.loads(ln) for ln in open(audit)]
        kinds = [ln["request"] for ln in lines]
        eq(kinds.count("run"), 8, f"runs (6 sbx + the raw refusal + the one while scraping): "
                                  f"{kinds}")
        for k in ("session_open", "session_close"):
            eq(kinds.count(k), 1, k)
        eq(kinds.count("session_exec"), 2, "session execs")
        text = open(audit).read()
        ok(MARKER not in text and ENV_VALUE not in text, "no code, no env values")
        first = lines[0]
        eq(first["asked"]["code_sha256"], hashlib.sha256(code.encode()).hexdigest(), "code sha")
        eq(first["asked"]["code_bytes"], len(code), "code size")
        eq(first["asked"]["env_names"], ["SBX_TOKEN"], "env names only")
        eq((first["result"]["exit_code"], first["language"], first["uid"]), (0, "python",
                                                                            os.getuid()),
           "result, language, peer")
        for ln in lines:
            for f in ("time", "uid", "pid", "request", "duration_ms"):
                ok(f in ln, f"{f} in {ln}")
            ok("result" in ln or "error" in ln or ln["request"].startswith("session_"),
               f"how it ended: {ln}")
        refused = [ln for ln in lines if "error" in ln]
        eq([ln["error"]["kind"] for ln in refused], ["ERROR_VM_CONFIG"], "the refusal")
        timed = [ln for ln in lines if ln.get("result", {}).get("timed_out")]
        eq(len(timed), 1, "the timeout")
        execs = [ln for ln in lines if ln["request"] == "session_exec"]
        ok(all(ln["asked"]["session_id"] == sid and ln["language"] == "python" for ln in execs),
           f"execs name their session: {execs}")
    finally:
        p.terminate()
        p.wait(30)


@test(fast=True)
def metrics_on_a_unix_socket(c):
    path = os.path.join(c.tmp, "metrics.sock")
    sock = os.path.join(c.tmp, "ops2.sock")
    log = os.path.join(c.tmp, "ops2-sbxd.log")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_METRICS_LISTEN=path)
    p = c.start_daemon(sock=sock, log=log, env=env)
    try:
        st, body, _ = scrape(path)
        eq(st, 200, "answered on the socket")
        ok("# TYPE sbx_requests_total counter" in body, body[:500])
    finally:
        p.terminate()
        p.wait(30)
    ok(not os.path.exists(path), "the socket is removed at exit")
