#!/usr/bin/python3
"""Throughput under load: --runs print(1) runs with `sbx run -q --json -j J` on the default path
(each VM restored from the python memory snapshot), beside the floor: the same number of bare
QEMU restores of the same snapshot to the same print (scripts/floor-restore.py's restore_once: no
sbxd, no worker, no jail), J at a time, measured in the same run. For each J: runs/s (runs over
the batch's wall time) and latency p50/p95 (sbx: the result's timing.total_ms, arrival at sbxd to
result; floor: QEMU start to the print), and sbx's runs/s against the target of >= 0.8x the
floor's. Beside sbx's row, the p50 of the parts of its timing: setup (queue wait for a slot and
worker start), boot (the restore) and execute.

The daemon is its own (build/sbxd, private socket and snapshot cache, snapshots on) with
--max-concurrent-vms 2 x the largest J by default, so that admission is not what limits it.
A measurement that prints a table, not a test.

usage: scripts/bench-throughput.py [--runs N] [--jobs 2,4,8] [--max-vms M] [--sbx P] [--sbxd P]
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import pct  # noqa: E402  scripts/bench.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 0.8


def floor_module():
    spec = importlib.util.spec_from_file_location(
        "floor_restore", os.path.join(ROOT, "scripts/floor-restore.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def start_daemon(a, tmp, max_vms):
    sock = os.path.join(tmp, "sbxd.sock")
    log = os.path.join(tmp, "sbxd.log")
    env = dict(os.environ, EXEC_SANDBOX_SOCKET=sock,
               EXEC_SANDBOX_SBXD=os.path.join(tmp, "no-autostart"))
    p = subprocess.Popen([a.sbxd, "--socket", sock, "--max-concurrent-vms", str(max_vms),
                          "--snapshots", "true", "--snapshot-cache-dir",
                          os.path.join(tmp, "snapshots"), "--idle-exit-seconds", "0"],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.time() > deadline:
            raise RuntimeError("sbxd did not start: " + open(log).read()[-1500:])
        time.sleep(0.05)
    return p, env, log


def sbx_batch(a, env, runs, j):
    """(wall s, [total_ms], [errors], {timing part: [ms]}) of one `sbx run -j j` of runs
    print(1)s."""
    t0 = time.monotonic()
    try:
        r = subprocess.run([a.sbx, "run", "-q", "--json", "-j", str(j), "-t", "60",
                            *["print(1)"] * runs], env=env, capture_output=True, text=True,
                           timeout=a.batch_timeout)
    except subprocess.TimeoutExpired:
        return time.monotonic() - t0, [], [f"sbx run timed out after {a.batch_timeout} s"], {}
    wall = time.monotonic() - t0
    try:
        res = json.loads(r.stdout)
    except ValueError:
        return wall, [], [f"exit {r.returncode}: {r.stderr.strip()[-400:]}"], {}
    res = res if isinstance(res, list) else [res]
    ms, errs, parts = [], [], {"setup_ms": [], "boot_ms": [], "execute_ms": []}
    for x in res:
        if "error" in x:
            errs.append(f"{x['error'].get('type')}: {x['error'].get('message')}")
        elif x.get("stdout") != "1\n" or x.get("start_mode") != "restore":
            errs.append(f"stdout {x.get('stdout')!r}, start_mode {x.get('start_mode')}")
        else:
            ms.append(x["timing"]["total_ms"])
            for k in parts:
                parts[k].append(x["timing"][k])
    return wall, ms, errs, parts


def floor_batch(fr, snap, images, qemu, runs, j, timeout):
    """(wall s, [ms to the print], [errors]) of runs bare restores, j at a time."""
    meta = fr.parse_meta(os.path.join(snap, "meta"))
    lang, mem_mb = meta["language"], int(meta["memory_mb"])
    left = [runs]
    ms, errs = [], []
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def worker():
        while True:
            with lock:
                if left[0] == 0 or time.monotonic() > deadline:
                    return
                left[0] -= 1
            try:
                _, t, _ = fr.restore_once(snap, images, qemu, lang, mem_mb)
                with lock:
                    ms.append(t)
            except Exception as e:  # noqa: BLE001  reported, not fatal
                with lock:
                    errs.append(f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(j)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if left[0]:
        errs.append(f"{left[0]} restores not started within {timeout} s")
    return time.monotonic() - t0, ms, errs


def wait_restore(a, env, log, deadline_s=240):
    t0 = time.time()
    while True:
        why = ""
        try:
            r = subprocess.run([a.sbx, "run", "--json", "-q", "print(1)"], env=env,
                               capture_output=True, text=True, timeout=120)
            why = r.stderr[-500:]
            j = json.loads(r.stdout)
        except (subprocess.TimeoutExpired, ValueError) as e:
            j, why = {}, why or str(e)
        if j.get("stdout") != "1\n":
            raise RuntimeError(f"warm-up run failed: {j or why}")
        if j.get("start_mode") == "restore":
            return time.time() - t0
        if time.time() - t0 > deadline_s:
            raise RuntimeError(f"no restore after {deadline_s} s: {open(log).read()[-1500:]}")
        time.sleep(0.5)


def line(j, what, wall, ms, runs, errs, extra=""):
    rate = len(ms) / wall if wall else 0
    lat = f"{pct(ms, 50):>6.0f} {pct(ms, 95):>6.0f}" if ms else f"{'-':>6} {'-':>6}"
    bad = f"  {len(errs)} FAILED: {errs[0][:120]}" if errs else ""
    print(f"{j:>3} {what:<26} {len(ms):>4}/{runs:<4} {wall:>6.1f} {rate:>7.2f} {lat}{extra}{bad}",
          flush=True)
    return rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--jobs", default="2,4,8")
    ap.add_argument("--max-vms", type=int, default=0,
                    help="sbxd --max-concurrent-vms (default: 2 x the largest -j, at most 100)")
    ap.add_argument("--batch-timeout", type=int, default=600, help="s for one batch of runs")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    a = ap.parse_args()
    jobs = [int(x) for x in a.jobs.split(",")]
    max_vms = a.max_vms or min(100, 2 * max(jobs))
    if max_vms < max(jobs):
        ap.error("--max-vms must be at least the largest -j")
    fr = floor_module()
    cache = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
    images = os.path.join(cache, "images")
    qemu = os.environ.get("QEMU", "qemu-system-x86_64")

    tmp = tempfile.mkdtemp(prefix="sbx-bench-tput-")
    p = None
    try:
        p, env, log = start_daemon(a, tmp, max_vms)
        ver = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.split("\n")[0]
        print(f"# {ver}; {os.cpu_count()} cores; {a.runs} print(1) runs per row; "
              f"sbxd --max-concurrent-vms {max_vms}", flush=True)
        took = wait_restore(a, env, log)
        sdir = os.path.join(tmp, "snapshots")
        snaps = [x for x in os.listdir(sdir) if x.startswith("python-")
                 and os.path.exists(os.path.join(sdir, x, "meta"))]
        if not snaps:
            raise RuntimeError(f"no python snapshot in {sdir}: {os.listdir(sdir)}")
        snap = os.path.join(sdir, snaps[0])
        print(f"# python snapshot ready after {took:.0f} s: {snaps[0]}", flush=True)
        print(f"{'-j':>3} {'what':<26} {'ok':>9} {'wall s':>6} {'runs/s':>7} {'p50':>6} "
              f"{'p95':>6}  (latency ms)")
        for j in jobs:
            wall, ms, errs, parts = sbx_batch(a, env, a.runs, j)
            split = "  (p50 " + ", ".join(f"{k[:-3]} {pct(v, 50):.0f}" for k, v in parts.items()
                                          if v) + ")" if ms else ""
            rate = line(j, "sbx run, restore", wall, ms, a.runs, errs, split)
            fwall, fms, ferrs = floor_batch(fr, snap, images, qemu, a.runs, j, a.batch_timeout)
            frate = line(j, "floor: bare restore", fwall, fms, a.runs, ferrs)
            ratio = rate / frate if frate else 0
            print(f"{j:>3} {'  ratio of runs/s':<26} {ratio:>24.2f}x floor (target >= "
                  f"{TARGET}x: {'ok' if ratio >= TARGET else 'BELOW'})", flush=True)
    finally:
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
