#!/usr/bin/env python3
"""End-to-end tests: real sbx, real sbxd, real QEMU VMs (whatever accelerator the host has).

Each test drives the `sbx` binary (or the raw control socket) exactly as a user would. The runner
starts its own sbxd on a private socket, prints one line per test, and ends with the line
"N passed, N failed". Exit status is non-zero if anything failed. The tests live in suite_*.py
beside this file, one per feature (suite_sessions.py, suite_snapshots.py, ...), registered with
harness.test; this file runs them and ends with the leak check.
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
    ap.add_argument("--guest-arch", help="run the tests marked any_arch against guests of this "
                    "architecture (its assets built: make assets ARCH=...); with another than "
                    "the host's, under TCG")
    args = ap.parse_args()
    if args.guest_arch:
        args.guest_arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(args.guest_arch,
                                                                       args.guest_arch)
        # Every daemon the tests start (theirs and the harness's) inherits it.
        os.environ["EXEC_SANDBOX_GUEST_ARCH"] = args.guest_arch
    # Suites in the order a newcomer reads them (and the quick ones first); any other suite_*.py
    # after them, by name.
    order = ["run", "limits", "sessions", "files", "pool", "snapshots", "memory", "daemon",
             "isolation"]
    found = sorted(os.path.basename(m)[6:-3] for m in glob.glob(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "suite_*.py")))
    for name in order + [f for f in found if f not in order]:
        importlib.import_module("suite_" + name)
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
            if args.guest_arch and not fn.any_arch and name != "no_leftovers":
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
