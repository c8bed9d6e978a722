#!/usr/bin/env python3
"""End-to-end tests: real sbx, real sbxd, real QEMU VMs (whatever accelerator the host has).

Each test drives the `sbx` binary (or the raw control socket) exactly as a user would. The runner
starts its own sbxd on a private socket, prints one line per test, and ends with the line
"N passed, N failed". Exit status is non-zero if anything failed. Tests live here and in
suite_*.py beside this file (one module per subject), all registered with harness.test.
"""
import argparse
import glob
import importlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, TESTS, Ctx, Skip, descendants, eq, ok, project_cgroups,  # noqa: E402
                     project_processes, test, wait_for)

# --- languages, output, exit codes -------------------------------------------------------------

@test(fast=True)
def python_hello(c):
    r = c.sbx("run", "-q", 'print("Hello from sandbox")', check_rc=0)
    eq(r.out, "Hello from sandbox\n", "stdout")


@test(fast=True)
def javascript_hello(c):
    r = c.sbx("run", "-q", "-l", "javascript", 'console.log("hi from js", 6*7)', check_rc=0)
    eq(r.out, "hi from js 42\n", "stdout")


@test(fast=True)
def raw_shell_and_tools(c):
    code = ('echo "$BASH_VERSION" | cut -d. -f1; for t in git curl jq tar gzip unzip file; do '
            'command -v $t >/dev/null || echo missing $t; done; echo \'{"a":5}\' | jq .a')
    r = c.sbx("run", "-q", "-l", "raw", code, check_rc=0)
    lines = r.out.split()
    ok(lines[0].isdigit() and int(lines[0]) >= 5, "bash version: " + r.out)
    ok("missing" not in r.out, "tools missing: " + r.out)
    eq(lines[-1], "5", "jq output")


@test()
def exit_codes_and_signals(c):
    c.sbx("run", "-q", "import sys; sys.exit(3)", check_rc=3)
    c.sbx("run", "-q", "-l", "raw", "exit 7", check_rc=7)
    c.sbx("run", "-q", "-l", "javascript", "process.exit(5)", check_rc=5)
    j, _ = c.run_json("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    eq(j["exit_code"], 137, "exit code for SIGKILL")
    c.sbx("run", "-q", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", check_rc=139)


@test(fast=True)
def stderr_kept_apart(c):
    r = c.sbx("run", "-q", "import sys; print('out'); print('err', file=sys.stderr)", check_rc=0)
    eq(r.out, "out\n", "stdout")
    ok("err\n" in r.err and "out" not in r.err, "stderr: " + r.err)
    j, _ = c.run_json("import sys; sys.stderr.write('E'); sys.stdout.write('O')")
    eq((j["stdout"], j["stderr"]), ("O", "E"), "json streams")


@test()
def unicode_round_trip(c):
    s = "héllo wörld ✓ 日本語 🚀"
    r = c.sbx("run", "-q", f"print({s!r})", check_rc=0)
    eq(r.out, s + "\n", "python unicode")
    r = c.sbx("run", "-q", "-l", "raw", f"echo '{s}'", check_rc=0)
    eq(r.out, s + "\n", "shell unicode")


@test()
def hundred_thousand_lines(c):
    r = c.sbx("run", "-q", "for i in range(100000): print(i)", check_rc=0)
    lines = r.out.split("\n")
    eq(len(lines), 100001, "line count")
    eq(lines[99999], "99999", "last line")
    eq(lines[:3], ["0", "1", "2"], "first lines")


@test()
def stdout_cap_1mb(c):
    j, r = c.run_json("import sys\nfor _ in range(4): sys.stdout.write('x' * (1 << 20))")
    eq(len(j["stdout"]), 1 << 20, "stdout length")
    eq(j["stdout_truncated"], True, "stdout_truncated")
    eq(j["exit_code"], 0, "exit code (excess drained, not a broken pipe)")
    r = c.sbx("run", "-q", "import sys\nsys.stdout.write('y' * (3 << 20))")
    eq(len(r.stdout), 1 << 20, "streamed stdout length")
    ok("truncated" in r.err, "truncation message: " + r.err)
    j, _ = c.run_json("import sys\nsys.stderr.write('z' * 300000)")
    eq(len(j["stderr"]), 100 * 1024, "stderr cap")
    eq(j["stderr_truncated"], True, "stderr_truncated")


@test(fast=True)
def timeout_busy_loop(c):
    t0 = time.time()
    r = c.sbx("run", "-q", "-t", "2", "while True: pass")
    took = time.time() - t0
    eq(r.returncode, 124, "exit status on timeout: " + r.err)
    ok("timed out" in r.err, "timeout message: " + r.err)
    ok(took < 25, f"took {took:.1f}s")


@test()
def timeout_sigterm_ignored(c):
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('armed', flush=True)\nwhile True: time.sleep(0.1)")
    t0 = time.time()
    j, _ = c.run_json("-t", "2", code)
    took = time.time() - t0
    eq(j["timed_out"], True, "timed_out")
    eq(j["exit_code"], 137, "killed by SIGKILL after the grace")
    eq(j["stdout"], "armed\n", "output before the timeout is kept")
    ok(took < 25, f"took {took:.1f}s")
    r = c.sbx("run", "-q", "-l", "raw", "-t", "2", "trap '' TERM; sleep 100 & wait; sleep 100")
    eq(r.returncode, 124, "raw SIGTERM-ignoring")


@test(fast=True)
def env_vars(c):
    r = c.sbx("run", "-q", "-e", "API_KEY=secret", "-e", "DEBUG=1", "-e", "EMPTY=",
              "import os; print(os.environ['API_KEY'], os.environ['DEBUG'], repr(os.environ['EMPTY']))",
              check_rc=0)
    eq(r.out, "secret 1 ''\n", "env")
    for bad in ["LD_PRELOAD=/x.so", "PATH=/evil", "PYTHONPATH=/x", "NODE_OPTIONS=--x",
                "BASH_ENV=/x", "1BAD=x", "NOEQUALS"]:
        r = c.sbx("run", "-q", "-e", bad, "print(1)")
        eq(r.returncode, 2, "exit for env " + bad)
        ok(r.err.strip(), "message for " + bad)
    r = c.sbx("run", "-q", *sum([["-e", f"V{i}=x"] for i in range(101)], []), "print(1)")
    eq(r.returncode, 2, "101 env vars")


@test(fast=True)
def stdin_source(c):
    r = c.sbx("run", "-q", "-", input=b"print(6*7)\n", check_rc=0)
    eq(r.out, "42\n", "stdin")


@test()
def file_sources_detect_language(c):
    d = c.tmp
    open(f"{d}/a.py", "w").write("print('py', 1+1)\n")
    open(f"{d}/b.js", "w").write("console.log('js', 1+1)\n")
    open(f"{d}/c.sh", "w").write("echo sh $((1+1))\n")
    eq(c.sbx("run", "-q", f"{d}/a.py", check_rc=0).out, "py 2\n", "py file")
    eq(c.sbx("run", "-q", f"{d}/b.js", check_rc=0).out, "js 2\n", "js file")
    eq(c.sbx("run", "-q", f"{d}/c.sh", check_rc=0).out, "sh 2\n", "sh file")


@test()
def concurrency_j2_four_files(c):
    d = c.tmp
    names = []
    for i in range(4):
        n = f"{d}/m{i}.py"
        open(n, "w").write(f"print('source-{i}')\nimport sys; sys.exit({i})\n")
        names.append(n)
    r = c.sbx("run", "-q", "-j", "2", *names)
    eq(r.returncode, 1, "some sources failed -> 1")
    for i in range(4):
        ok(f"source-{i}" in r.out, f"output of source {i}: {r.out}")
    pos = [r.out.index(f"source-{i}") for i in range(4)]
    eq(pos, sorted(pos), "outputs in source order")
    j, _ = c.run_json("-j", "2", *names)
    eq([x["exit_code"] for x in j], [0, 1, 2, 3], "per-source exit codes")
    eq([x["stdout"] for x in j], [f"source-{i}\n" for i in range(4)], "outputs kept apart")


@test(fast=True)
def usage_errors_exit_2(c):
    cases = [
        (["-l", "cobol", "print(1)"], "language"),
        (["-t", "0", "print(1)"], "timeout"),
        (["-t", "301", "print(1)"], "timeout"),
        (["-m", "99999", "print(1)"], "memory"),
        ([""], "empty"),
        (["/nonexistent/script.py"], "not found"),
        (["-p", "requests", "print(1)"], "not available"),
    ]
    for args, word in cases:
        r = c.sbx("run", "-q", *args)
        eq(r.returncode, 2, f"exit for {args}: {r.err}")
        ok(word in r.err.lower(), f"message for {args} should mention {word!r}: {r.err}")
    r = c.sbx("run", "-q", "-c", "")
    eq(r.returncode, 2, "empty -c")
    r = c.sbx("frobnicate")
    eq(r.returncode, 2, "unknown command")


@test(fast=True)
def json_result_fields(c):
    j, _ = c.run_json("print('x')")
    for k in ["stdout", "stderr", "exit_code", "timed_out", "stdout_truncated",
              "stderr_truncated", "execution_time_ms", "external_cpu_time_ms",
              "external_memory_peak_mb", "timing", "accelerator", "warm_pool_hit",
              "start_mode"]:
        ok(k in j, "missing field " + k)
    for k in ["setup_ms", "boot_ms", "execute_ms", "total_ms"]:
        ok(isinstance(j["timing"][k], int), "timing." + k)
    ok(j["timing"]["boot_ms"] > 0, "boot_ms > 0")
    ok(j["timing"]["total_ms"] >= j["timing"]["boot_ms"] + j["timing"]["execute_ms"], "total")
    ok(j["external_cpu_time_ms"] > 0, "external cpu measured")
    ok(j["external_memory_peak_mb"] > 10, "external memory measured")
    ok(j["accelerator"] in ("kvm", "tcg"), "accelerator")
    eq(j["start_mode"], "cold", "start_mode")
    eq(j["warm_pool_hit"], False, "warm_pool_hit")


@test()
def memory_option_sets_guest_ram(c):
    j, _ = c.run_json("-m", "512", "-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")
    kb = int(j["stdout"])
    ok(400 * 1024 < kb <= 512 * 1024, f"MemTotal {kb} kB for -m 512")
    j, _ = c.run_json("-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")
    ok(int(j["stdout"]) <= 256 * 1024, "default 256 MB")


@test()
def fresh_vm_per_run_and_no_host_files(c):
    marker = os.path.join(c.tmp, "host-marker-file")
    open(marker, "w").write("secret")
    c.sbx("run", "-q", "-l", "raw", "echo leak > /tmp/state; echo leak > ~/state", check_rc=0)
    r = c.sbx("run", "-q", "-l", "raw",
              f"ls /tmp/state ~/state 2>/dev/null; cat {marker} 2>/dev/null; ls /sys/class/net; "
              "id -u; cat /proc/self/status | grep NoNewPrivs")
    ok("state" not in r.out, "state leaked between runs: " + r.out)
    ok("secret" not in r.out, "host file visible: " + r.out)
    eq(r.out.split()[0], "lo", "only loopback (no network device)")
    ok("1000" in r.out.split(), "runs as uid 1000: " + r.out)
    ok("NoNewPrivs:\t1" in r.out, "no_new_privs: " + r.out)


@test()
def root_is_read_only(c):
    r = c.sbx("run", "-q", "-l", "raw", "touch /usr/x 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok")
    ok("rc=1" in r.out and "tmp-ok" in r.out, r.out)


# --- sessions, files, streaming (issue 4) -------------------------------------------------------

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


@test(fast=True)
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


def _sha(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()


@test()
def session_files_round_trip(c):
    sid = _session(c)
    d = os.path.join(c.tmp, "files")
    os.makedirs(d, exist_ok=True)
    try:
        for name, data in [("empty.bin", b""), ("one.bin", b"x"),
                           ("big.bin", os.urandom(50 * 1024 * 1024))]:
            local = os.path.join(d, name)
            open(local, "wb").write(data)
            c.sbx("session", "upload", sid, local, "in/" + name, check_rc=0)
            back = os.path.join(d, "back-" + name)
            c.sbx("session", "download", sid, "in/" + name, back, check_rc=0)
            eq(_sha(open(back, "rb").read()), _sha(data), f"{name} round trip")
        j, _ = _sx(c, sid, "import os, hashlib\n"
                             "p='in/big.bin'; st=os.stat(p)\n"
                             "print(st.st_uid, st.st_size, hashlib.sha256(open(p,'rb').read()).hexdigest())\n"
                             "open('made.txt','w').write('from code')", rc=0)
        uid, size, sha = j["stdout"].split()
        eq((uid, int(size)), ("1000", 50 * 1024 * 1024), "uploaded file owned by the sandbox user")
        c.sbx("session", "download", sid, "made.txt", os.path.join(d, "made.txt"), check_rc=0)
        eq(open(os.path.join(d, "made.txt")).read(), "from code", "file made by code")
        ls = json.loads(c.sbx("session", "files", "--json", sid, check_rc=0).out)
        entries = ls if isinstance(ls, list) else ls.get("entries", [])
        names = {e["name"]: e for e in entries}
        ok(names.get("in", {}).get("is_dir") and names.get("made.txt", {}).get("size") == 9,
           f"listing: {entries}")
        big = os.path.join(d, "too-big.bin")
        with open(big, "wb") as f:
            f.truncate(51 * 1024 * 1024)
        r = c.sbx("session", "upload", sid, big, "too-big.bin")
        ok(r.returncode != 0 and "50" in r.err, "51 MB refused: " + r.err)
        _sx(c, sid, "import os; os.symlink('/etc/passwd', 'link'); os.symlink('/', 'rootlink')", rc=0)
        for bad in ["../../etc/passwd", "/etc/passwd", "link", "rootlink/etc/passwd"]:
            r = c.sbx("session", "download", sid, bad, os.path.join(d, "escaped"))
            ok(r.returncode != 0 and not os.path.exists(os.path.join(d, "escaped")),
               f"{bad} must be refused: {r.returncode} {r.err}")
        r = c.sbx("session", "upload", sid, os.path.join(d, "one.bin"), "rootlink/tmp/evil")
        ok(r.returncode != 0, "upload through a symlink refused: " + r.err)
    finally:
        c.sbx("session", "close", sid)


@test()
def run_with_upload_and_download(c):
    d = os.path.join(c.tmp, "updown")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "local.csv"), "w").write("name,score\nalice,95\n")
    r = c.sbx("run", "-q", "--upload", os.path.join(d, "local.csv") + ":input.csv",
              "--download", "output.csv:" + os.path.join(d, "result.csv"),
              "-c", "open('output.csv','w').write(open('input.csv').read().upper())", check_rc=0)
    eq(open(os.path.join(d, "result.csv")).read(), "NAME,SCORE\nALICE,95\n", "downloaded result")
    r = subprocess.run([c.sbx_bin, "run", "-q", "--download", "out.txt", "-c",
                        "open('out.txt','w').write('data')"], capture_output=True, env=c.env(),
                       cwd=d, timeout=120)
    eq(r.returncode, 0, r.stderr.decode())
    eq(open(os.path.join(d, "out.txt")).read(), "data", "download without a local path")


@test(fast=True)
def output_streams_while_code_runs(c):
    code = ("import sys, time\nprint('first', flush=True)\ntime.sleep(5)\nprint('second')")
    p = subprocess.Popen([c.sbx_bin, "run", "-q", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=c.env())
    first = p.stdout.readline()
    t_first = time.time()
    rest, _ = p.communicate(timeout=60)
    t_end = time.time()
    eq(first, b"first\n", "first line")
    eq(rest, b"second\n", "second line")
    ok(t_end - t_first >= 3, f"first line came {t_end - t_first:.1f}s before the end")


@test()
def libsbx_example_program(c):
    ex = os.path.join(os.path.dirname(c.sbx_bin), "example")
    if not os.path.exists(ex):
        ex = os.path.join(ROOT, "build", "example")
    r = subprocess.run([ex], capture_output=True, env=c.env(), timeout=120)
    eq(r.returncode, 0, r.stderr.decode())
    ok(b"2" in r.stdout, "example printed the result: " + r.stdout.decode())


# --- warm pool (issue 5) ------------------------------------------------------------------------

def _pool_daemon(c, name, *flags):
    sock = os.path.join(c.tmp, name + ".sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--warm-pool-size", "1", *flags, sock=sock,
                       log=os.path.join(c.tmp, name + ".log"), env=env)
    return p, env


def _status_json(c, env):
    return json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)


@test()
def warm_pool_serves_and_refills(c):
    p, env = _pool_daemon(c, "pool")
    try:
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "python and js pool VMs")
        st = _status_json(c, env)
        eq(st["pool_memory_mb"], 2 * 256, "pool memory accounted")
        j, _ = c.run_json("x = 42; print('warm')", env=env)
        eq((j["stdout"], j["warm_pool_hit"], j["start_mode"]), ("warm\n", True, "warm"), "a hit")
        ok(j["timing"]["boot_ms"] == 0 and j["timing"]["total_ms"] < 1000,
           f"a hit takes one exec: {j['timing']}")
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "the pool to refill")
        j, _ = c.run_json("print(x)", env=env)
        eq(j["warm_pool_hit"], True, "second hit")
        ok("NameError" in j["stderr"], "a pool VM is used once: no state from the previous run")
        j, _ = c.run_json("-l", "javascript", "console.log(6*7)", env=env)
        eq((j["stdout"], j["start_mode"]), ("42\n", "warm"), "javascript hit")
        # Bypassed, not misused: another memory size, another language.
        j, _ = c.run_json("-m", "512", "print(1)", env=env)
        eq((j["warm_pool_hit"], j["start_mode"]), (False, "cold"), "-m 512 boots its own VM")
        j, _ = c.run_json("-l", "raw", "echo 1", env=env)
        eq(j["warm_pool_hit"], False, "raw is not pooled")
        j, _ = c.run_json("import sys; sys.exit(3)", env=env)
        eq(j["exit_code"], 3, "exit codes through the pool")
    finally:
        p.terminate()
        p.wait(10)


@test()
def warm_pool_replaces_dead_vms_and_yields_slots(c):
    p, env = _pool_daemon(c, "pool2", "--max-concurrent-vms", "2")
    try:
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "pool ready")
        qemus = [x for x, comm in descendants(p.pid) if comm.startswith("qemu-system")]
        eq(len(qemus), 2, "two pool QEMUs")
        for q in qemus:
            os.kill(q, signal.SIGKILL)
        # A run that lands on a VM dying under it gets a VM of its own, never the error.
        j, r = c.run_json("print('right after')", env=env)
        eq(j.get("stdout"), "right after\n", "run right after the pool died: " + r.out +
           open(os.path.join(c.tmp, "pool2.log")).read()[-3000:])

        def replaced():
            now = [x for x, comm in descendants(p.pid) if comm.startswith("qemu-system")]
            return (not set(now) & set(qemus) and len(now) == 2 and
                    _status_json(c, env)["pool_ready"] == 2)
        wait_for(replaced, 60, "dead pool VMs replaced")
        j, _ = c.run_json("print('after')", env=env)
        eq((j["stdout"], j["warm_pool_hit"]), ("after\n", True), "a replaced VM serves")
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "pool refilled")
        # Both slots hold idle pool VMs: a raw run must still get one, not a capacity error.
        j, r = c.run_json("-l", "raw", "echo yielded", env=env)
        eq(j.get("stdout"), "yielded\n", f"the pool yields a slot: {r.err}")
    finally:
        p.terminate()
        p.wait(10)


# --- daemon behaviour --------------------------------------------------------------------------

def _qemu_pss_mb(daemon_pid):
    """Host PSS of the one QEMU below a daemon, in MiB."""
    qemus = [q for q, comm in descendants(daemon_pid) if comm.startswith("qemu")]
    eq(len(qemus), 1, "one QEMU below the daemon")
    for line in open(f"/proc/{qemus[0]}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no Pss in smaps_rollup")


# Fills the guest's page cache (the image is read through virtio-blk), then goes idle.
_FILL_CACHE = """import os
n = 0
for root, dirs, files in os.walk('/usr/lib'):
    for f in files:
        try:
            n += len(open(os.path.join(root, f), 'rb').read())
        except OSError:
            pass
print(n >> 20 > 150)"""

# Waits (up to 10 s) for the guest to have most of its memory available again.
_MEM_BACK = """import time
t0 = time.time()
while True:
    kb = int([l for l in open('/proc/meminfo') if l.startswith('MemAvailable:')][0].split()[1])
    if kb > 180 * 1024 or time.time() - t0 > 10:
        break
    time.sleep(0.05)
print(kb > 180 * 1024)"""


@test()
def idle_vm_gives_memory_back(c):
    """The balloon: an idle (cold-booted) session VM gives its free memory and page cache back to
    the host, and has it again for its next exec."""
    sock, log = os.path.join(c.tmp, "balloon.sock"), os.path.join(c.tmp, "balloon.log")
    # Cold boots even when the suite runs with snapshots: restored VMs have no balloon.
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_SNAPSHOTS="0")
    p = c.start_daemon("--balloon-idle-seconds", "2", sock=sock, log=log, env=env)
    try:
        sid = _session(c, env=env)
        j, _ = _sx(c, sid, _FILL_CACHE, "-t", "120", rc=0, env=env)
        eq(j["stdout"], "True\n", "the guest read its image into its page cache")
        busy = _qemu_pss_mb(p.pid)
        wait_for(lambda: "the idle VM gave back" in open(log).read(), 30, "the balloon to inflate")
        idle = _qemu_pss_mb(p.pid)
        ok(busy - idle >= 50, f"QEMU PSS {busy} MiB after the exec, {idle} MiB once idle")
        j, _ = _sx(c, sid, _MEM_BACK, rc=0, env=env)
        eq(j["stdout"], "True\n", "the next exec has the guest's memory back")
        j, _ = _sx(c, sid, "x = bytearray(160 << 20); print(len(x) >> 20)", rc=0, env=env)
        eq(j["stdout"], "160\n", "and can use it")
        ok("reclaim off" not in open(log).read(), "no QMP failure: " + open(log).read()[-800:])
        c.sbx("session", "close", sid, env=env)
    finally:
        p.terminate()
        p.wait(10)


@test(fast=True)
def status_reports_accelerator(c):
    r = c.sbx("status", "--json", check_rc=0)
    j = json.loads(r.out)
    ok(j.get("accelerator") in ("kvm", "tcg"), f"accelerator in status: {j}")
    ok(j.get("accel_reason"), "accel reason")


@test()
def accel_auto_probe_falls_back_and_caches(c):
    cache = os.path.join(c.tmp, "probe-cache")
    sock = os.path.join(c.tmp, "probe.sock")
    log = os.path.join(c.tmp, "probe.log")
    images = os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                          os.path.expanduser("~/.cache/exec-sandbox"), "images")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--accel", "auto", "--cache-dir", cache, "--images-dir", images,
                       sock=sock, log=log, env=env)
    try:
        t0 = time.time()
        j, _ = c.run_json("print(1)", env=env)
        took = time.time() - t0
        eq(j["stdout"], "1\n", "runs after the probe")
        kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        print(f"    [auto verdict: {st['accelerator']} ({st['accel_reason']}); "
              f"first run {took:.1f}s]")
        eq(j["accelerator"], st["accelerator"], "result names the accelerator in force")
        if kvm_usable:
            ok(os.path.exists(os.path.join(cache, "accel-verdict")), "verdict cached")
            ok("probe" in st["accel_reason"], st["accel_reason"])
        p.terminate()
        p.wait(10)
        p = c.start_daemon("--accel", "auto", "--cache-dir", cache, "--images-dir", images,
                           sock=sock, log=log, env=env)
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        if kvm_usable:
            ok("cached" in st["accel_reason"], "second daemon uses the cache: " + st["accel_reason"])
    finally:
        p.terminate()
        p.wait(10)


def _kill_mid_run(c, victim):
    """Start a long run, SIGKILL its worker or QEMU once the code is running."""
    proc = subprocess.Popen([c.sbx_bin, "run", "-q", "-t", "60",
                             "import time\nprint('started', flush=True)\ntime.sleep(50)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env())
    ok(proc.stdout.readline() == b"started\n", "run started")
    procs = descendants(c.daemon.pid)
    target = [p for p, comm in procs if comm.startswith(victim)]
    ok(target, f"no {victim} under sbxd: {procs}")
    os.kill(target[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


@test(fast=True)
def worker_sigkill_is_contained(c):
    rc, err = _kill_mid_run(c, "sbx-vmworker")
    eq(rc, 125, "sandbox error exit: " + err)
    ok("CommunicationError" in err and "retry" in err, "clear transient error: " + err)
    c.sbx("run", "-q", "print('still serving')", check_rc=0)


@test()
def qemu_sigkill_is_contained(c):
    rc, err = _kill_mid_run(c, "qemu-system")
    eq(rc, 125, "sandbox error exit: " + err)
    ok("CommunicationError" in err, "transient error: " + err)
    eq(c.sbx("run", "-q", "print(2)", check_rc=0).out, "2\n", "next run")


@test()
def host_kills_vm_when_guest_stops_answering(c):
    """A frozen guest (QEMU stopped) cannot hold a run past its timeout plus the host's grace."""
    proc = subprocess.Popen([c.sbx_bin, "run", "--json", "-q", "-t", "2",
                             "import time\nprint('started', flush=True)\ntime.sleep(50)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env())
    qemu = wait_for(lambda: [p for p, comm in descendants(c.daemon.pid)
                             if comm.startswith("qemu-system")], 30, "QEMU to start")
    wait_for(lambda: json.loads(c.sbx("status", "--json").out)["running_vms"] >= 1, 30, "run")
    time.sleep(1.5)  # let the guest boot and start the code
    t0 = time.time()
    os.kill(qemu[0], signal.SIGSTOP)
    out, err = proc.communicate(timeout=60)
    took = time.time() - t0
    j = json.loads(out)
    eq(j["timed_out"], True, "timed out: " + err.decode())
    eq(proc.returncode, 124, "exit status")
    ok(took < 15, f"host gave up after {took:.1f}s")
    ok(not os.path.exists(f"/proc/{qemu[0]}"), "frozen QEMU was killed")


@test()
def capacity_queue_then_error(c):
    sock = os.path.join(c.tmp, "cap.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--max-concurrent-vms", "1", "--queue-timeout-seconds", "1", sock=sock,
                       log=os.path.join(c.tmp, "cap.log"), env=env)
    try:
        slow = subprocess.Popen([c.sbx_bin, "run", "-q", "import time; time.sleep(8)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        wait_for(lambda: json.loads(c.sbx("status", "--json", env=env).out)["running_vms"] == 1,
                 20, "first VM to run")
        r = c.sbx("run", "-q", "print(1)", env=env)
        eq(r.returncode, 125, "capacity error exit: " + r.err)
        ok("VmCapacityError" in r.err, r.err)
        slow.communicate(timeout=60)
        eq(slow.returncode, 0, "the admitted run finished")
    finally:
        p.terminate()
        p.wait(10)


@test()
def config_from_environment(c):
    sock = os.path.join(c.tmp, "envcfg.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_DEFAULT_TIMEOUT_SECONDS="2",
                EXEC_SANDBOX_DEFAULT_MEMORY_MB="384")
    p = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "envcfg.log"), env=env)
    try:
        j, _ = c.run_json("-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2; sleep 20",
                          env=env)
        eq(j["timed_out"], True, "default timeout 2 s from EXEC_SANDBOX_DEFAULT_TIMEOUT_SECONDS")
        ok(256 * 1024 < int(j["stdout"]) <= 384 * 1024, "memory from env: " + j["stdout"])
    finally:
        p.terminate()
        p.wait(10)


@test()
def bad_frames_close_only_that_connection(c):
    def conn():
        s = socket.socket(socket.AF_UNIX)
        s.connect(c.sock)
        s.settimeout(10)
        return s
    s = conn()
    s.sendall(struct.pack(">I", 0x7fffffff) + b"x")  # oversized
    eq(s.recv(100), b"", "oversized frame closes")
    s = conn()
    s.sendall(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")  # undecodable
    eq(s.recv(100), b"", "corrupt frame closes")
    s = conn()
    s.sendall(struct.pack(">I", 100) + b"abc")  # truncated
    s.close()
    c.sbx("run", "-q", "print('alive')", check_rc=0)


@test()
def killed_daemon_leaves_nothing_behind(c):
    """SIGKILL of sbxd mid-run: its workers and QEMUs die with it (parent-death signal, pid
    namespace), and the next daemon removes the run directory and cgroups it could not."""
    sock = os.path.join(c.tmp, "victim.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "victim.log"), env=env)
    proc = _long_run(c, env=env)
    mine = [x for x, _ in descendants(p.pid)]
    ok(mine, "a VM under the daemon")
    run_dirs = [d for d in os.listdir("/tmp") if d.startswith(f"sbxd-{p.pid}-")]
    eq(len(run_dirs), 1, "the daemon's run directory")
    p.kill()
    p.wait()
    proc.communicate(timeout=60)
    ok(proc.returncode != 0, "the client was told")
    wait_for(lambda: not any(os.path.exists(f"/proc/{x}") for x in mine), 15,
             "the dead daemon's workers and QEMUs to die")
    ok(os.path.exists("/tmp/" + run_dirs[0]), "its run directory is still there")
    p2 = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "victim.log"), env=env)
    try:
        ok(not os.path.exists("/tmp/" + run_dirs[0]), "the next daemon removed it")
        ok(not [g for g in project_cgroups() if f"vm-{p.pid}-" in g], "and its cgroups")
    finally:
        p2.terminate()
        p2.wait(10)


@test()
def embedded_daemon_autostart(c):
    rt = tempfile.mkdtemp(prefix="sbx-rt-", dir=c.tmp)
    env = dict(c.env())
    env.pop("EXEC_SANDBOX_SOCKET", None)
    env["XDG_RUNTIME_DIR"] = rt
    env["EXEC_SANDBOX_IDLE_EXIT_SECONDS"] = "3"
    env["EXEC_SANDBOX_SBXD"] = c.sbxd_bin
    r = subprocess.run([c.sbx_bin, "run", "-q", "print('auto')"], capture_output=True, env=env,
                       timeout=120)
    eq(r.stdout, b"auto\n", "autostarted run: " + r.stderr.decode())
    sock = os.path.join(rt, "exec-sandbox", "sbxd.sock")
    ok(os.path.exists(sock), "per-user socket created")
    r = subprocess.run([c.sbx_bin, "status", "--json"], capture_output=True, env=env, timeout=30)
    pid = json.loads(r.stdout)["pid"]
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30, "the embedded daemon to exit when idle")


# --- memory snapshots (issue 5) ----------------------------------------------------------------

def _snap_daemon(c, name, **extra):
    """A private sbxd with memory snapshots on, in a snapshot directory of its own."""
    d = os.path.join(c.tmp, "snap-" + name)
    os.makedirs(d, exist_ok=True)
    sock, log, sdir = (os.path.join(d, x) for x in ("s.sock", "log", "snapshots"))
    env = c.env(**{"EXEC_SANDBOX_SOCKET": sock, "EXEC_SANDBOX_SNAPSHOTS": "1",
                   "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR": sdir, **extra})
    return c.start_daemon(sock=sock, log=log, env=env), env, log, sdir


def _snap_stop(p, sdir):
    """Stop a snapshot daemon; nothing of it may stay behind."""
    pid = p.pid
    p.terminate()
    p.wait(30)
    eq(descendants(pid), [], "processes left by the daemon")
    if os.path.isdir(sdir):
        eq([x for x in os.listdir(sdir) if x.startswith(".")], [], "staging directories left")
    eq([d for d in os.listdir("/tmp") if d.startswith(f"sbxd-{pid}-")], [], "run directory left")


def _srun(c, env, lang, code, *flags):
    return c.run_json("-l", lang, *flags, code, env=env)[0]


def _until_restore(c, env, lang, code, *flags, timeout=120):
    """Run until a run reports start_mode "restore": the template is built in the background
    while runs boot cold."""
    deadline, modes = time.time() + timeout, []
    while time.time() < deadline:
        j = _srun(c, env, lang, code, *flags)
        modes.append(j["start_mode"])
        if j["start_mode"] == "restore":
            return j
        time.sleep(0.3)
    raise AssertionError(f"no {lang} run restored within {timeout} s: {modes}")


def _snap_of(sdir, lang):
    names = [x for x in os.listdir(sdir) if x.startswith(lang + "-256m-")]
    eq(len(names), 1, f"one {lang} snapshot in {os.listdir(sdir)}")
    return os.path.join(sdir, names[0])


def _sha_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


@test()
def snapshot_first_run_cold_then_restore(c):
    p, env, log, sdir = _snap_daemon(c, "basic")
    try:
        j = _srun(c, env, "python", "print(1)")
        eq((j["start_mode"], j["stdout"], j["exit_code"]), ("cold", "1\n", 0), "first run")
        j = _until_restore(c, env, "python", "print(2)")
        eq((j["stdout"], j["exit_code"]), ("2\n", 0), "a restored run")
        ok(0 < j["timing"]["boot_ms"] < 5000, f"boot_ms is the restore time: {j['timing']}")
        snap = _snap_of(sdir, "python")
        meta = open(os.path.join(snap, "meta")).read()
        ok("key = " in meta and "state_sha256 = " in meta, "meta: " + meta)
        mem = os.path.join(snap, "mem")
        eq(os.path.getsize(mem), 256 << 20, "RAM file size")
        before = _sha_file(mem)
        seen = []
        for _ in range(2):
            j = _srun(c, env, "python", "import os, random, time\n"
                      "print(os.urandom(16).hex(), random.random(), time.time())")
            host = time.time()
            eq(j["start_mode"], "restore", "start mode")
            u, r, t = j["stdout"].split()
            ok(abs(float(t) - host) < 2, f"guest clock {t}, host {host}")
            seen.append((u, r))
        ok(seen[0][0] != seen[1][0], f"os.urandom differs between restored VMs: {seen}")
        ok(seen[0][1] != seen[1][1], f"random.random differs between restored VMs: {seen}")
        eq(_sha_file(mem), before, "the RAM file stays byte-identical")
        # The benchmark's restore floor starts QEMU with a copy of qemu.c's arguments: a device
        # that differs would make every bare restore fail, as the snapshot's state would not load.
        r = subprocess.run([os.path.join(ROOT, "scripts/floor-restore.py"), "--runs", "1", snap],
                           capture_output=True, text=True, timeout=60, env=env)
        ok(r.returncode == 0 and "restore floor" in r.stdout,
           f"scripts/floor-restore.py restores sbxd's snapshot: {r.stdout} {r.stderr[-800:]}")
    finally:
        _snap_stop(p, sdir)


@test()
def snapshot_restored_languages(c):
    p, env, log, sdir = _snap_daemon(c, "langs")
    try:
        for lang, code in [("python", "print(1)"), ("javascript", "console.log(1)"),
                           ("raw", "echo 1")]:
            _srun(c, env, lang, code)  # queues the language's template
        cases = [
            ("python", "import sys; print('py', 6*7); print('err', file=sys.stderr); sys.exit(3)",
             3, "py 42\n", "err\n"),
            ("python", "raise ValueError('boom')", 1, "", "ValueError: boom"),
            ("javascript", "console.log('js', 6*7); console.error('err'); process.exit(5)",
             5, "js 42\n", "err\n"),
            ("javascript", "throw new Error('bad js')", 1, "", "bad js"),
            ("raw", "echo sh $((6*7)); echo err >&2; exit 7", 7, "sh 42\n", "err\n"),
        ]
        for lang, code, rc, out, err in cases:
            j = _until_restore(c, env, lang, code)
            eq((j["exit_code"], j["stdout"]), (rc, out), f"{lang}: {code!r} ({j['stderr'][-300:]})")
            ok(err in j["stderr"], f"{lang} stderr: {j['stderr']!r}")
            eq(j["interpreter_reset"] if "interpreter_reset" in j else False, False,
               "no interpreter_reset on a one-shot run")
        j = _srun(c, env, "python", "import os; print(os.environ['GREETING'])", "-e", "GREETING=hi")
        eq((j["start_mode"], j["stdout"]), ("restore", "hi\n"), "env in a restored VM")
        r = c.sbx("run", "-q", "-t", "2", "while True: pass", env=env)
        eq(r.returncode, 124, "timeout in a restored VM: " + r.err)
        js = [_srun(c, env, "javascript", "console.log(Math.random())")["stdout"] for _ in range(2)]
        ok(js[0] != js[1], f"Math.random differs between restored VMs: {js}")
        sh = [_srun(c, env, "raw", "echo $RANDOM-$RANDOM")["stdout"] for _ in range(2)]
        ok(sh[0] != sh[1], f"$RANDOM differs between restored VMs: {sh}")
        sid = _session(c, env=env)
        try:
            j, _ = _sx(c, sid, "x = 41", rc=0, env=env)
            eq(j["start_mode"], "restore", "a session starts from the snapshot")
            eq(_sx(c, sid, "print(x + 1)", rc=0, env=env)[0]["stdout"], "42\n", "session state")
        finally:
            c.sbx("session", "close", sid, env=env)
    finally:
        _snap_stop(p, sdir)


@test()
def snapshot_broken_files_fall_back_to_cold(c):
    p, env, log, sdir = _snap_daemon(c, "broken")

    def rewrite(path, data):
        os.chmod(path, 0o644)
        open(path, "wb").write(data)
        os.chmod(path, 0o444)

    try:
        _srun(c, env, "raw", "echo 1")
        _until_restore(c, env, "raw", "echo 1")
        # A truncated state file: sbxd sees that it does not match its meta.
        snap = _snap_of(sdir, "raw")
        rewrite(os.path.join(snap, "state"), open(os.path.join(snap, "state"), "rb").read()[:100])
        j = _srun(c, env, "raw", "echo still; exit 4")
        eq((j["stdout"], j["exit_code"], j["start_mode"]), ("still\n", 4, "cold"), "truncated state")
        ok("is not usable" in open(log).read(), "warning logged")
        _until_restore(c, env, "raw", "echo 1")
        # A state file QEMU cannot load, its checksum in meta made to agree: the worker gives the
        # restore up and boots cold in the same slot; sbxd removes the snapshot.
        snap = _snap_of(sdir, "raw")
        st = os.path.join(snap, "state")
        data = bytearray(open(st, "rb").read())
        data[0:4] = b"XXXX"
        rewrite(st, bytes(data))
        meta = os.path.join(snap, "meta")
        text = "".join(f"state_sha256 = {_sha(bytes(data))}\n" if l.startswith("state_sha256 =")
                       else l for l in open(meta).readlines())
        rewrite(meta, text.encode())
        t0 = time.time()
        j = _srun(c, env, "raw", "echo again; exit 5")
        eq((j["stdout"], j["exit_code"], j["start_mode"]), ("again\n", 5, "cold"), "corrupt state")
        ok(time.time() - t0 < 30, "no hang")
        text = open(log).read()
        ok("restore failed" in text and "warning" in text, "warning logged: " + text[-1500:])
        ok(not os.path.exists(snap), "the broken snapshot is removed")
        _until_restore(c, env, "raw", "echo 1")
        # A truncated RAM file.
        mem = os.path.join(_snap_of(sdir, "raw"), "mem")
        os.chmod(mem, 0o644)
        os.truncate(mem, 4096)
        j = _srun(c, env, "raw", "echo ram")
        eq((j["stdout"], j["start_mode"]), ("ram\n", "cold"), "truncated RAM file")
    finally:
        _snap_stop(p, sdir)


@test()
def warm_pool_moves_to_snapshots(c):
    """With snapshots on, the pool's first VMs boot cold while the templates are built; once a
    language's snapshot is ready they make way for VMs restored from it (less host memory)."""
    p, env, log, sdir = _snap_daemon(c, "pool", EXEC_SANDBOX_WARM_POOL_SIZE="1")

    def restored_pool():
        try:
            qemus = [q for q, comm in descendants(p.pid) if comm.startswith("qemu")]
            cmds = [open(f"/proc/{q}/cmdline").read() for q in qemus]
        except OSError:
            return False
        return (len(qemus) == 2 and all("-incoming" in x for x in cmds) and
                _status_json(c, env)["pool_ready"] == 2)
    try:
        wait_for(restored_pool, 120, "two pool VMs restored from snapshots, nothing else")
        ok("replacing a cold-booted" in open(log).read(), "the cold pool VMs were replaced")
        st = _status_json(c, env)
        eq((st["snapshots_enabled"], st["snapshot_dir"]), (True, sdir), "status: snapshots on")
        ready = sorted((x["language"], x["memory_mb"], x["state"]) for x in st["snapshots"])
        eq(ready, [("javascript", 256, "ready"), ("python", 256, "ready")], "status lists them")
        ok(all(x["disk_mb"] > 10 and x["name"] in os.listdir(sdir) for x in st["snapshots"]),
           f"each with its RAM file on disk: {st['snapshots']}")
        text = c.sbx("status", env=env, check_rc=0).out
        ok(f"snapshots    on, in {sdir}" in text and text.count(" MiB of RAM file on disk") == 2, text)
        j, _ = c.run_json("print(1)", env=env)
        eq((j["stdout"], j["start_mode"], j["warm_pool_hit"]), ("1\n", "warm", True), "a hit")
    finally:
        _snap_stop(p, sdir)


@test()
def snapshots_off_by_config(c):
    p, env, log, sdir = _snap_daemon(c, "off", EXEC_SANDBOX_SNAPSHOTS="false")
    try:
        for _ in range(2):
            eq(_srun(c, env, "raw", "echo 1")["start_mode"], "cold", "snapshots off")
        ok(not os.path.exists(sdir), "no snapshot directory made")
        ok("memory snapshots: off" in open(log).read(), "the log says so")
        st = _status_json(c, env)
        eq((st["snapshots_enabled"], st["snapshots"]), (False, []), "sbx status says so")
    finally:
        _snap_stop(p, sdir)


# --- isolation (issue 3): each test tries to get through one layer ------------------------------

def _status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _long_run(c, env=None, seconds=30):
    proc = subprocess.Popen([c.sbx_bin, "run", "-q", "-t", str(seconds + 10),
                             f"import time\nprint('started', flush=True)\ntime.sleep({seconds})"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or c.env())
    ok(proc.stdout.readline() == b"started\n", "long run started")
    return proc


@test(fast=True)
def jail_of_a_running_vm(c):
    proc = _long_run(c)
    try:
        procs = descendants(c.daemon.pid)
        worker = [p for p, comm in procs if comm == "sbx-vmworker"]
        qemu = [p for p, comm in procs if comm.startswith("qemu-system")]
        ok(worker and qemu, f"worker and QEMU under sbxd: {procs}")
        me = c.daemon.pid
        for pid, what in [(worker[0], "worker"), (qemu[0], "QEMU")]:
            st = _status(pid)
            eq(st["CapEff"], "0000000000000000", what + " CapEff")
            eq(st["CapPrm"], "0000000000000000", what + " CapPrm")
            eq(st["CapBnd"], "0000000000000000", what + " CapBnd")
            eq(st["NoNewPrivs"], "1", what + " NoNewPrivs")
            eq(st["Seccomp"], "2", what + " Seccomp (filter mode)")
            ok(st["Uid"].split()[0] != "0" and st["Uid"].split()[1] != "0", what + " uid " + st["Uid"])
            for ns in ["mnt", "pid", "net", "ipc", "uts"]:
                ok(os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/{me}/ns/{ns}"),
                   f"{what} shares the {ns} namespace with sbxd")
        cmd = open(f"/proc/{qemu[0]}/cmdline", "rb").read().split(b"\0")
        ok(b"-sandbox" in cmd and any(a.startswith(b"on,obsolete=deny,elevateprivileges=deny,"
                                                   b"spawn=deny,resourcecontrol=deny") for a in cmd),
           "QEMU -sandbox options")
        # The jail's root: only what QEMU needs.
        top = sorted(os.listdir(f"/proc/{worker[0]}/root"))
        ok(set(top) <= {"assets", "dev", "etc", "proc", "tmp", "usr", "vm", "bin", "sbin", "lib",
                        "lib32", "lib64", "libx32"}, f"jail root holds {top}")
        eq(sorted(os.listdir(f"/proc/{worker[0]}/root/assets")),
           ["initramfs.cpio", "qemu-system-x86_64", "rootfs.sqfs", "vmlinux"], "assets")
        ok(not os.path.exists(f"/proc/{worker[0]}/root/home") and
           not os.path.exists(f"/proc/{worker[0]}/root/root"), "no host homes in the jail")
        # The cgroup and its limits.
        cg = open(f"/proc/{qemu[0]}/cgroup").read()
        ok("/exec-sandbox/vm-" in cg, "QEMU in a VM cgroup: " + cg)
        paths = {}
        for line in cg.splitlines():
            _, ctrls, path = line.split(":", 2)
            for ctl in (ctrls or "unified").split(","):
                paths[ctl] = path
        if "memory" in paths:  # v1
            base = "/sys/fs/cgroup"
            lim = int(open(f"{base}/memory{paths['memory']}/memory.limit_in_bytes").read())
            pids = open(f"{base}/pids{paths['pids']}/pids.max").read().strip()
            quota = int(open(f"{base}/cpu{paths['cpu']}/cpu.cfs_quota_us").read())
        else:  # v2
            d = "/sys/fs/cgroup" + paths["unified"]
            if not os.path.exists(d + "/memory.max"):
                d = "/sys/fs/cgroup/unified" + paths["unified"]
            lim = int(open(d + "/memory.max").read())
            pids = open(d + "/pids.max").read().strip()
            quota = int(open(d + "/cpu.max").read().split()[0])
        eq(lim, (256 + 384) << 20, "memory limit: guest RAM + overhead")
        eq(pids, "256", "pids limit")
        eq(quota, 150000, "cpu quota (1.5 CPU)")
    finally:
        proc.kill()
        proc.wait()


@test()
def seccomp_violation_kills_worker(c):
    sock = os.path.join(c.tmp, "hooks.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--test-hooks", "true", sock=sock, log=os.path.join(c.tmp, "hooks.log"),
                       env=env)
    try:
        r = c.sbx("run", "-q", "__sbx_test_hook__:seccomp", env=env)
        eq(r.returncode, 125, "sandbox error: " + r.err)
        ok("CommunicationError" in r.err and "signal 31" in r.err, "killed by SIGSYS: " + r.err)
        eq(c.sbx("run", "-q", "print('next')", env=env, check_rc=0).out, "next\n", "next run")
        log = open(os.path.join(c.tmp, "hooks.log")).read()
        ok("test hook" in log, "the worker reached the forbidden syscall")
    finally:
        p.terminate()
        p.wait(10)
    # Without test_hooks the same code is only code.
    r = c.sbx("run", "-q", "__sbx_test_hook__:seccomp")
    eq(r.returncode, 1, "ordinary python error without test hooks: " + r.err)


@test()
def control_socket_refuses_other_uids(c):
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    d = tempfile.mkdtemp(prefix="sbx-uid-", dir="/tmp")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "s.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", c.sbx_bin, "status"]
    try:
        for allowed in [None, "65534"]:
            flags = ["--allowed-uids", allowed] if allowed else []
            p = c.start_daemon(*flags, sock=sock, log=os.path.join(c.tmp, "uid.log"), env=env)
            os.chmod(sock, 0o666)  # the socket file is not what keeps them out
            try:
                r = subprocess.run(nobody, capture_output=True, env=env, timeout=30, cwd="/")
                err = r.stderr.decode()
                if allowed:
                    eq(r.returncode, 0, "listed uid is served: " + err)
                else:
                    ok(r.returncode != 0 and "65534" in err and "may not use" in err,
                       f"refused with a clear error (exit {r.returncode}): {err}")
                    # and the daemon keeps serving its own user
                    eq(c.sbx("status", env=env).returncode, 0, "still serving")
            finally:
                p.terminate()
                p.wait(10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test()
def guest_cannot_reach_host_loopback(c):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    code = (f"for h in 127.0.0.1 10.0.2.2 192.168.0.1; do curl -s -m 2 http://$h:{port}/ "
            "&& echo REACHED $h; done; echo done")
    r = c.sbx("run", "-q", "-l", "raw", code)
    ok("REACHED" not in r.out and "done" in r.out, r.out + r.err)
    try:
        conn, _ = srv.accept()
        conn.close()
        raise AssertionError("the host server got a connection from the guest")
    except socket.timeout:
        pass
    finally:
        srv.close()


@test()
def fork_bomb_is_contained(c):
    t0 = time.time()
    r = c.sbx("run", "-q", "-l", "raw", "-t", "5", "b() { b | b & }; b; sleep 30")
    ok(r.returncode in (124, 125) or r.returncode != 0, f"fork bomb exit {r.returncode}")
    ok(time.time() - t0 < 40, "the host stopped it in time")
    eq(c.sbx("run", "-q", "print('after bomb')", check_rc=0).out, "after bomb\n", "next run")


@test()
def guest_memory_exhaustion(c):
    j, _ = c.run_json("-t", "60", "x = bytearray(2 * 1024**3)\nprint('allocated')")
    ok(j["exit_code"] != 0 and "allocated" not in j["stdout"], f"2 GiB in 256 MB: {j['exit_code']}")
    ok(j["external_memory_peak_mb"] <= 256 + 384, "host memory stayed within the cgroup")
    j, _ = c.run_json("-t", "60", "import os\nb=[]\nwhile True: b.append(os.urandom(16 * 1024**2))")
    ok(j["exit_code"] != 0, "growing allocation stopped in the guest")
    eq(c.sbx("run", "-q", "print('ok')", check_rc=0).out, "ok\n", "next run")


@test()
def guest_has_compressed_swap(c):
    """zram: compressible memory beyond the guest's RAM size fits; /sys stays read-only."""
    j, _ = c.run_json("-t", "60", "-l", "raw", "cat /proc/swaps; touch /sys/x 2>&1")
    ok("/dev/zram0" in j["stdout"], "zram swap active: " + j["stdout"])
    ok("Read-only file system" in j["stdout"], "/sys read-only for the code: " + j["stdout"])
    j, _ = c.run_json("-t", "60", "b = []\nfor i in range(30):\n    b.append(bytearray(10 << 20))\n"
                      "    b[-1][::4096] = b'x' * len(b[-1][::4096])\nprint(len(b) * 10, 'MB')")
    eq((j["exit_code"], j["stdout"]), (0, "300 MB\n"), "300 MB of compressible data in 256 MB")


@test()
def fill_disk_and_tmp(c):
    code = ("dd if=/dev/zero of=/tmp/fill bs=1M 2>&1 | grep -m1 -o 'No space left'; rm /tmp/fill; "
            "dd if=/dev/zero of=$HOME/fill bs=1M 2>&1 | grep -m1 -o 'No space left'; "
            "rm $HOME/fill; touch /usr/x 2>&1; echo alive")
    r = c.sbx("run", "-q", "-l", "raw", "-t", "60", code)
    eq(r.out.count("No space left"), 2, "/tmp and the home fill up with ENOSPC: " + r.out)
    ok("Read-only file system" in r.out, "root is read-only: " + r.out)
    ok(r.out.rstrip().endswith("alive"), "guest still works: " + r.out)


@test(fast=True)
def guest_privileged_operations_refused(c):
    code = r"""
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name, r, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
sc("io_uring_setup", 425, 1, 0)
sc("bpf", 321, 0, 0, 0)
sc("init_module", 175, 0, 0, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("userfaultfd", 323, 0)
sc("ptrace_attach_1", 101, 16, 1, 0, 0)
try:
    os.kill(1, signal.SIGKILL); print("kill1 ok")
except OSError as e:
    print("kill1", errno.errorcode[e.errno])
for dev in ["/dev/vda", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/vport0p1", "/dev/vport1p1"]:
    print("dev", dev, os.path.exists(dev))
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:3])
print("uid", os.getuid(), os.geteuid())
st = dict(l.split(":", 1) for l in open("/proc/self/status"))
print("nnp", st["NoNewPrivs"].strip(), "capeff", st["CapEff"].strip())
r = os.system("mount -t tmpfs x /mnt 2>/dev/null")
print("mount", r != 0)
"""
    r = c.sbx("run", "-q", code)
    out = r.out
    for name in ["io_uring_setup", "bpf", "init_module", "kexec_load", "userfaultfd"]:
        ok(f"{name} -1 ENOSYS" in out, f"{name} must be ENOSYS (not in the kernel): {out}")
    ok("ptrace_attach_1 -1 EPERM" in out or "ptrace_attach_1 -1 ESRCH" in out, "ptrace PID 1: " + out)
    ok("kill1 EPERM" in out or "kill1 ESRCH" in out, "kill PID 1: " + out)
    ok("True" not in "".join(l for l in out.splitlines() if l.startswith("dev ")), "devices: " + out)
    ok("pids [1]" not in out and not any(l.startswith("pids [1,") for l in out.splitlines()),
       "PID 1 hidden from the code: " + out)
    ok("uid 1000 1000" in out, "uid: " + out)
    ok("nnp 1 capeff 0000000000000000" in out, "no_new_privs and no caps: " + out)
    ok("mount True" in out, "mount refused: " + out)


@test()
def unprivileged_daemon_uses_user_namespace(c):
    """sbxd run by an ordinary user: the worker and QEMU run as that user inside a user
    namespace, still jailed; without a writable cgroup the daemon says so and carries on."""
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    if os.getuid() != 0:
        raise Skip("needs root to switch to another user for the test")
    d = tempfile.mkdtemp(prefix="sbx-unpriv-", dir="/tmp")
    images = os.path.join(d, "cache", "images")
    os.makedirs(images)
    src = os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                       os.path.expanduser("~/.cache/exec-sandbox"), "images")
    for f in ["vmlinux", "initramfs.cpio", "raw.sqfs"]:
        shutil.copy(os.path.join(src, f), images)
    subprocess.run(["chown", "-R", "65534:65534", d], check=True)
    sock = os.path.join(d, "s.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_CACHE_DIR=os.path.join(d, "cache"),
                HOME=d)
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    log = os.path.join(d, "log")
    p = subprocess.Popen(drop + [c.sbxd_bin, "--socket", sock], stdout=open(log, "w"),
                         stderr=subprocess.STDOUT, env=env, cwd="/")
    try:
        wait_for(lambda: os.path.exists(sock), 15, "unprivileged sbxd")
        run = subprocess.Popen(drop + [c.sbx_bin, "run", "-q", "-l", "raw", "-t", "30",
                                       "echo started; sleep 20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
        ok(run.stdout.readline() == b"started\n", "runs under an unprivileged daemon")
        procs = descendants(p.pid)
        worker = [x for x, comm in procs if comm == "sbx-vmworker"]
        qemu = [x for x, comm in procs if comm.startswith("qemu-system")]
        ok(worker and qemu, f"worker and QEMU: {procs}")
        for pid in worker + qemu:
            st = _status(pid)
            eq(st["Uid"].split()[0], "65534", "runs as the daemon's user (seen from the host)")
            eq(st["CapEff"], "0000000000000000", "no capabilities")
            ok(os.readlink(f"/proc/{pid}/ns/user") != os.readlink(f"/proc/{p.pid}/ns/user"),
               "in its own user namespace")
        run.kill()
        run.wait()
        ok("without a cgroup" in open(log).read(), "the missing cgroup layer is logged")
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@test()
def apparmor_profile_confines_worker(c):
    flag = "/sys/module/apparmor/parameters/enabled"
    if not os.path.exists(flag) or open(flag).read().strip() != "Y":
        raise Skip("AppArmor is not enabled on this host (layer 6 is absent here)")
    r = subprocess.run([os.path.join(ROOT, "scripts/install-apparmor.sh")], capture_output=True)
    eq(r.returncode, 0, "profile loads: " + r.stderr.decode())
    proc = _long_run(c)
    try:
        worker = [p for p, comm in descendants(c.daemon.pid) if comm == "sbx-vmworker"]
        label = open(f"/proc/{worker[0]}/attr/current").read()
        ok("sbx-vmworker" in label, "worker confined: " + label)
    finally:
        proc.kill()
        proc.wait()


@test()
def valgrind_clean_daemon(c):
    """sbxd under valgrind: no errors, no leaks, through a run, a timeout, a bad frame and
    shutdown. (Workers install a seccomp filter that valgrind's own syscalls would trip, so they
    are checked by the ASan/LSan build instead.)"""
    if not shutil.which("valgrind"):
        raise AssertionError("valgrind not installed (scripts/setup-host.sh installs it)")
    sock = os.path.join(c.tmp, "vg.sock")
    log = os.path.join(c.tmp, "vg.log")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_VMWORKER=os.path.join(ROOT, "build/sbx-vmworker"))
    p = subprocess.Popen(["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                          "--show-leak-kinds=definite,indirect,possible", "--errors-for-leak-kinds=definite,indirect,possible",
                          "--trace-children=no",
                          os.path.join(ROOT, "build/sbxd"), "--socket", sock],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: os.path.exists(sock), 60, "sbxd under valgrind")
        eq(c.sbx("run", "-q", "print('vg')", env=env, check_rc=0).out, "vg\n", "run under valgrind")
        eq(c.sbx("run", "-q", "-t", "1", "while True: pass", env=env).returncode, 124, "timeout")
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(struct.pack(">I", 3) + b"\xff\xff\xff")
        s.recv(10)
        s.close()
    finally:
        p.terminate()
        rc = p.wait(60)
    out = open(log).read()
    ok(rc == 0 and "==" not in out, f"valgrind exit {rc}:\n{out[-3000:]}")


@test()
def no_leftovers(c):
    time.sleep(0.5)
    left = [p for p in descendants(c.daemon.pid)]
    eq(left, [], "processes left under sbxd")
    eq(project_processes(), [], "workers or QEMUs left anywhere on the host")
    mounts = [l for l in open("/proc/mounts") if "/sbxd-" in l or "sbx-jail" in l]
    eq(mounts, [], "jail mounts visible on the host")
    for d in os.listdir("/tmp"):
        if d.startswith("sbxd-"):
            pid = int(d.split("-")[1])
            ok(os.path.exists(f"/proc/{pid}"), f"/tmp/{d} left by a daemon that exited")
    wait_for(lambda: not project_cgroups(), 10, "VM cgroups to be removed: " + str(project_cgroups()))
    run_dirs = [d for d in os.listdir("/tmp") if d.startswith(f"sbxd-{c.daemon.pid}-")]
    for d in run_dirs:
        eq(os.listdir(os.path.join("/tmp", d)), [], "files left in run dir")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    ap.add_argument("--fast", action="store_true", help="only the fast subset")
    ap.add_argument("-k", help="only tests whose name contains this")
    args = ap.parse_args()
    for mod in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "suite_*.py"))):
        importlib.import_module(os.path.basename(mod)[:-3])
    # The leak check looks at what every other test left behind: it runs last.
    TESTS.sort(key=lambda t: t[0].__name__ == "no_leftovers")
    c = Ctx(args)
    c.daemon = c.start_daemon()
    passed = failed = skipped = 0
    t_all = time.time()
    try:
        for fn, fast in TESTS:
            name = fn.__name__
            if args.fast and not fast and name != "no_leftovers":
                continue
            if args.k and args.k not in name:
                continue
            t0 = time.time()
            try:
                fn(c)
                passed += 1
                print(f"PASS {name} ({time.time() - t0:.1f}s)", flush=True)
            except Skip as e:
                skipped += 1
                print(f"SKIP {name}: {e}", flush=True)
            except Exception as e:
                failed += 1
                print(f"FAIL {name} ({time.time() - t0:.1f}s): {e}", flush=True)
                if not isinstance(e, AssertionError):
                    traceback.print_exc()
    finally:
        c.daemon.terminate()
        try:
            c.daemon.wait(15)
        except subprocess.TimeoutExpired:
            c.daemon.kill()
        if c.daemon.returncode not in (0, -signal.SIGTERM):
            failed += 1
            print(f"FAIL sbxd exited with {c.daemon.returncode}")
        log = open(c.log).read()
        if "ERROR: AddressSanitizer" in log or "runtime error:" in log or "LeakSanitizer" in log:
            failed += 1
            print("FAIL sanitizer report in sbxd log:\n" + log[-4000:])
        if failed:
            print("--- sbxd log tail ---\n" + log[-3000:])
        shutil.rmtree(c.tmp, ignore_errors=True)
    print(f"e2e: {time.time() - t_all:.0f}s")
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
