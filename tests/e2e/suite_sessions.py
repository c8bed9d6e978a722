"""Sessions: state across execs, resets, timeouts, idle close, side by side, a VM that dies."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from harness import *  # noqa: F401,F403


def _session(c, *args, env=None):
    r = c.sbx("session", "new", *args, env=env, check_rc=0)
    sid = r.out.strip()
    ok(len(sid) >= 16 and "\n" not in sid, "session id alone on stdout: " + repr(r.out))
    return sid


def _sx(c, sid, code, *args, rc=None, env=None):
    """Exec in a session; returns (json result, CompletedProcess)."""
    r = c.sbx("session", "exec", "--json", "-q", *args, sid, code, env=env)
    try:
        j = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"session exec: not JSON (exit {r.returncode}): {r.out} {r.err}")
    if rc is not None:
        eq(r.returncode, rc, f"exit of {code!r}: {r.err}")
    return j, r


@test(fast=True, any_arch=True)
def session_python_state_persists(c):
    sid = _session(c)
    try:
        _sx(c, sid, "import math\nx = math.pi * 2\ndef f(n): return n + 1", rc=0)
        j, _ = _sx(c, sid, "print(f'{x:.4f}', f(41))", rc=0)
        eq(j["stdout"], "6.2832 42\n", "state across execs")
        eq(j["exec_count"], 2, "exec_count")
        j, _ = _sx(c, sid, "x +* 2")
        ok(j["exit_code"] != 0 and "SyntaxError" in j["stderr"], "syntax error reported")
        eq(j["interpreter_reset"], False, "a syntax error keeps the interpreter")
        j, _ = _sx(c, sid, "raise ValueError('boom')")
        ok(j["exit_code"] == 1 and "ValueError: boom" in j["stderr"], "exception reported")
        j, _ = _sx(c, sid, "print(x > 6)", rc=0)
        eq(j["stdout"], "True\n", "state kept after errors")
        eq(j["exec_count"], 5, "exec_count counts every exec")
    finally:
        c.sbx("session", "close", sid)


@test()
def session_javascript_and_shell_state(c):
    sid = _session(c, "-l", "javascript")
    try:
        _sx(c, sid, "const greet = (n) => `Hello, ${n}!`; let count = 1; function twice(v) { return 2 * v }", rc=0)
        j, _ = _sx(c, sid, "count += 1; console.log(greet('World'), twice(count))", rc=0)
        eq(j["stdout"], "Hello, World! 4\n", "js state")
        _sx(c, sid, "const limit = 1", rc=0)
        j, _ = _sx(c, sid, "const limit = 2; console.log(limit)", rc=0)
        eq(j["stdout"], "2\n", "const redeclared in a later exec")
        j, _ = _sx(c, sid, "console.log(greet('again'))", rc=0)
        eq(j["stdout"], "Hello, again!\n", "session still usable")
    finally:
        c.sbx("session", "close", sid)
    sid = _session(c, "-l", "raw")
    try:
        _sx(c, sid, "cd /tmp && export MY_VAR=hello; say() { echo \"said $1\"; }", rc=0)
        j, _ = _sx(c, sid, "echo $MY_VAR from $(pwd); say it", rc=0)
        eq(j["stdout"], "hello from /tmp\nsaid it\n", "shell env, cwd and functions")
    finally:
        c.sbx("session", "close", sid)


@test()
def session_resets_and_timeouts(c):
    sid = _session(c)
    try:
        _sx(c, sid, "keep = 1", rc=0)
        j, r = _sx(c, sid, "while True: pass", "-t", "2")
        eq(j["timed_out"], True, "timed out")
        eq(j["interpreter_reset"], True, "a timeout restarts the interpreter")
        eq(r.returncode, 124, "exit status on timeout")
        j, _ = _sx(c, sid, "print('keep' in globals())", rc=0)
        eq(j["stdout"], "False\n", "state is gone after the reset, the VM is not")
        _sx(c, sid, "keep = 2", rc=0)
        j, _ = _sx(c, sid, "import os; os._exit(7)")
        eq((j["exit_code"], j["interpreter_reset"]), (7, True), "os._exit resets")
        j, _ = _sx(c, sid, "print('alive')", rc=0)
        eq(j["stdout"], "alive\n", "same session carries on")
    finally:
        c.sbx("session", "close", sid)


@test()
def sessions_side_by_side_and_serialised(c):
    a, b = _session(c), _session(c)
    try:
        _sx(c, a, "v = 'A'", rc=0)
        _sx(c, b, "v = 'B'", rc=0)
        eq(_sx(c, a, "print(v)")[0]["stdout"], "A\n", "session A")
        eq(_sx(c, b, "print(v)")[0]["stdout"], "B\n", "session B")
        # Two execs at once on one session: the second waits for the first.
        t0 = time.time()
        p1 = subprocess.Popen([c.sbx_bin, "session", "exec", "-q", a,
                               "import time; time.sleep(3); order = ['first']"],
                              env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        j, _ = _sx(c, a, "order.append('second'); print(order)", rc=0)
        p1.communicate(timeout=60)
        eq(p1.returncode, 0, "first exec")
        eq(j["stdout"], "['first', 'second']\n", "execs ran one at a time, in order")
        ok(time.time() - t0 >= 3, "second waited")
        ls = json.loads(c.sbx("session", "ls", "--json", check_rc=0).out)
        ids = [x["session_id"] for x in (ls if isinstance(ls, list) else ls.get("sessions", []))]
        ok(a in ids and b in ids, f"both sessions listed: {ls}")
    finally:
        c.sbx("session", "close", a)
        c.sbx("session", "close", b)
    r = c.sbx("session", "exec", a, "print(1)")
    eq(r.returncode, 125, "exec on a closed session")
    ok("SessionClosedError" in r.err and "closed by request" in r.err, r.err)


@test()
def session_idle_timeout_closes(c):
    sid = _session(c, "--idle-timeout", "10")
    _sx(c, sid, "x = 1", rc=0)
    time.sleep(12)
    r = c.sbx("session", "exec", sid, "print(x)")
    eq(r.returncode, 125, "after idle timeout: " + r.err)
    ok("SessionClosedError" in r.err and "idle" in r.err, r.err)
    r = c.sbx("session", "new", "--idle-timeout", "5")
    eq(r.returncode, 2, "idle timeout below 10 s refused")


@test()
def session_vm_killed_reports_closed(c):
    sid = _session(c)
    _sx(c, sid, "x = 1", rc=0)
    qemu = [p for p, comm in descendants(c.daemon.pid) if comm.startswith("qemu-system")]
    ok(len(qemu) == 1, f"one QEMU for the session: {qemu}")
    os.kill(qemu[0], signal.SIGKILL)
    time.sleep(1)
    r = c.sbx("session", "exec", sid, "print(x)")
    eq(r.returncode, 125, "exec after the VM died")
    ok("SessionClosedError" in r.err and "died" in r.err, r.err)
    eq(c.sbx("run", "-q", "print('ok')", check_rc=0).out, "ok\n", "daemon still serves")
