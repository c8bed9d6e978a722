#!/usr/bin/python3
"""The Python client against the sbx CLI on the same daemon, in the same run.

`await scheduler.run('print(1)')` on a Scheduler that is already open, beside `sbx run 'print(1)'`
(a process per run, as a shell user would), both served from the warm pool, then both from a
memory snapshot restore (no pool). Runs alternate so both see the same machine. Prints medians
and the ratio python/sbx (target: at most 1.1).

usage: scripts/bench-python.py [-n RUNS] [--sbxd build/sbxd] [--sbx build/sbx] [--cache-dir DIR]
--cache-dir gives the daemons a cache of their own (its images still come from the default
cache, or EXEC_SANDBOX_IMAGES_DIR).
"""
import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
if not os.path.exists(os.path.join(ROOT, "clients/python/exec_sandbox/_proto/control_pb2.py")):
    subprocess.run([sys.executable, os.path.join(ROOT, "clients/python/genproto.py")], check=True)
from exec_sandbox import Scheduler, SchedulerConfig  # noqa: E402


def start_daemon(sbxd, sock, log, flags, env):
    p = subprocess.Popen([sbxd, "--socket", sock, "--idle-exit-seconds", "0", *flags],
                         stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                         stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while True:
        if p.poll() is not None:
            sys.exit("sbxd exited: " + open(log).read()[-2000:])
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock)
            return p
        except OSError:
            if time.time() > deadline:
                sys.exit("sbxd did not listen")
            time.sleep(0.02)
        finally:
            s.close()


async def wait_for(what, pred, scheduler, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        st = await scheduler.status()
        if pred(st):
            return
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}: {st}")
        await asyncio.sleep(0.05)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(label, scheduler, sbx, env, n, ready, expect_mode):
    py, cli = [], []
    for i in range(n):
        await wait_for("ready", ready, scheduler)
        t = time.perf_counter()
        r = await scheduler.run("print(1)")
        py.append((time.perf_counter() - t) * 1000)
        if r.stdout != "1\n" or r.start_mode != expect_mode:
            sys.exit(f"{label}: python run gave {r.stdout!r}, start_mode {r.start_mode}")
        await wait_for("ready", ready, scheduler)
        t = await asyncio.to_thread(time.perf_counter)
        p = await asyncio.to_thread(subprocess.run, [sbx, "run", "-q", "print(1)"],
                                    capture_output=True, env=env)
        cli.append((time.perf_counter() - t) * 1000)
        if p.returncode != 0 or p.stdout != b"1\n":
            sys.exit(f"{label}: sbx run gave {p.returncode} {p.stdout!r} {p.stderr[-500:]!r}")
    mp, mc = statistics.median(py), statistics.median(cli)
    print(f"{label:8} python median {mp:7.1f} ms  p90 {pct(py, 0.9):7.1f} | sbx run median "
          f"{mc:7.1f} ms  p90 {pct(cli, 0.9):7.1f} | ratio {mp / mc:.2f} (target <= 1.1)")
    return mp / mc


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=15)
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build", "sbxd"))
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build", "sbx"))
    ap.add_argument("--cache-dir")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sbx-bench-py-")
    env = dict(os.environ)
    if a.cache_dir:
        images = env.get("EXEC_SANDBOX_IMAGES_DIR") or os.path.join(
            env.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
                env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox"),
            "images")
        os.makedirs(a.cache_dir, mode=0o700, exist_ok=True)
        env["EXEC_SANDBOX_CACHE_DIR"] = a.cache_dir
        env["EXEC_SANDBOX_IMAGES_DIR"] = images
    daemons = []
    try:
        # Warm pool: one VM per language, always refilled before the next run is timed.
        sock = os.path.join(tmp, "pool.sock")
        daemons.append(start_daemon(a.sbxd, sock, os.path.join(tmp, "pool.log"),
                                    ["--warm-pool-size", "1"], env))
        env_pool = dict(env, EXEC_SANDBOX_SOCKET=sock)
        async with Scheduler(SchedulerConfig(socket=sock)) as s:
            await s.run("print(0)")  # first connection, Hello, and a first run
            await measure("warm", s, a.sbx, env_pool, a.n,
                          lambda st: st.pool_ready >= 2 and st.pool_booting == 0, "warm")
        # Restore: no pool; each run's VM starts from the python snapshot.
        sock = os.path.join(tmp, "restore.sock")
        daemons.append(start_daemon(a.sbxd, sock, os.path.join(tmp, "restore.log"),
                                    ["--warm-pool-size", "0"], env))
        env_restore = dict(env, EXEC_SANDBOX_SOCKET=sock)
        async with Scheduler(SchedulerConfig(socket=sock)) as s:
            await s.run("print(0)")
            await wait_for("the python snapshot", lambda st: any(
                x.language == "python" and x.state == "ready" for x in st.snapshots), s, 300)
            await measure("restore", s, a.sbx, env_restore, a.n,
                          lambda st: st.running_vms == 0, "restore")
    finally:
        for p in daemons:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
