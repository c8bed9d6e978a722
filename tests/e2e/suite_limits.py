"""Limits: output caps, timeouts, environment, memory, and the capacity queue."""
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


@test(fast=True, any_arch=True)
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


@test()
def memory_option_sets_guest_ram(c):
    j, _ = c.run_json("-m", "512", "-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")
    kb = int(j["stdout"])
    ok(400 * 1024 < kb <= 512 * 1024, f"MemTotal {kb} kB for -m 512")
    j, _ = c.run_json("-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")
    ok(int(j["stdout"]) <= 256 * 1024, "default 256 MB")


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
