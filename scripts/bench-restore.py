#!/usr/bin/env python3
"""Memory-snapshot benchmark: `sbx run` of print(1) per language started cold (a daemon with
snapshots off) and restored (a daemon with snapshots on, after its template is built), beside the
restore floor measured in the same run (scripts/floor-restore.py: a bare QEMU restoring the same
snapshot to the agent answering). Also the host memory of one VM of each kind: the Pss of its
QEMU process (/proc/PID/smaps_rollup) while the run sleeps. A measurement, not a test.

usage: scripts/bench-restore.py [--runs N] [--langs python,javascript,raw] [--sbx P] [--sbxd P]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import pss_kb, qemus_below  # scripts/bench.py, beside this one

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = {"python": "print(1)", "javascript": "console.log(1)", "raw": "echo 1"}
SLEEP = {"python": "import time; print(1, flush=True); time.sleep(4)",
         "javascript": "console.log(1); await new Promise(r => setTimeout(r, 4000))",
         "raw": "echo 1; sleep 4"}


def daemon(a, tmp, name, snapshots):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    sock = os.path.join(d, "s.sock")
    env = dict(os.environ, EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_SNAPSHOTS=snapshots,
               EXEC_SANDBOX_SNAPSHOT_CACHE_DIR=os.path.join(d, "snapshots"))
    p = subprocess.Popen([a.sbxd, "--socket", sock], stdout=open(os.path.join(d, "log"), "w"),
                         stderr=subprocess.STDOUT, env=env)
    while not os.path.exists(sock):
        time.sleep(0.05)
    return p, env, os.path.join(d, "snapshots")


def run(a, env, lang, code=None):
    t0 = time.monotonic()
    r = subprocess.run([a.sbx, "run", "--json", "-q", "-l", lang, code or CODE[lang]], env=env,
                       capture_output=True, text=True)
    ms = (time.monotonic() - t0) * 1000
    m = re.search(r'"start_mode": "(\w+)"', r.stdout)
    if r.returncode != 0 or '"stdout": "1\\n"' not in r.stdout:
        sys.exit(f"sbx run {lang} failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    return ms, m.group(1) if m else "?"


def qemu_pss_mb(a, d, env, lang):
    """Pss of the QEMU of a VM whose run is sleeping after printing."""
    p = subprocess.Popen([a.sbx, "run", "-q", "-l", lang, "-t", "30", SLEEP[lang]], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()
    time.sleep(0.5)
    pss = [pss_kb(q) / 1024 for q in qemus_below(d.pid)]
    p.wait()
    return pss[0] if pss else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--langs", default="python,javascript,raw")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    ap.add_argument("--guest-arch", default=os.uname().machine,
                    help="x86_64 or aarch64 (another than the host's runs under TCG)")
    a = ap.parse_args()
    a.guest_arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(a.guest_arch, a.guest_arch)
    # The daemons (EXEC_SANDBOX_GUEST_ARCH) and the floors (ARCH) inherit it.
    os.environ["EXEC_SANDBOX_GUEST_ARCH"] = os.environ["ARCH"] = a.guest_arch
    tmp = tempfile.mkdtemp(prefix="sbx-bench-restore-")
    cold, cenv, _ = daemon(a, tmp, "cold", "0")
    warm, wenv, sdir = daemon(a, tmp, "restore", "1")
    try:
        qemu = subprocess.run([f"qemu-system-{a.guest_arch}", "--version"], capture_output=True,
                              text=True).stdout.split("\n")[0]
        print(f"# {qemu}; {a.guest_arch} guests on {os.uname().machine}; "
              f"{os.cpu_count()} cores; runs per cell: {a.runs}; print(1), request "
              "to result, ms")
        print(f"{'language':<11} {'what':<26} {'min':>6} {'median':>7} {'max':>6}")
        for lang in a.langs.split(","):
            run(a, cenv, lang)  # settles the accelerator verdict and the page cache
            deadline = time.time() + 180
            while run(a, wenv, lang)[1] != "restore":
                if time.time() > deadline:
                    sys.exit(f"{lang}: no restore after 180 s")
                time.sleep(0.5)
            rows = []
            c = [run(a, cenv, lang)[0] for _ in range(a.runs)]
            rows.append(("sbx run, cold", c))
            r = []
            for _ in range(a.runs):
                ms, mode = run(a, wenv, lang)
                if mode != "restore":
                    sys.exit(f"{lang}: a run started {mode}")
                r.append(ms)
            rows.append(("sbx run, restore", r))
            snap = [x for x in os.listdir(sdir) if x.startswith(lang + "-")][0]
            fl = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/floor-restore.py"),
                                 "--runs", str(a.runs), os.path.join(sdir, snap)],
                                capture_output=True, text=True)
            f = [float(x) for x in re.findall(r"restore to agent Ready: (\d+) ms", fl.stderr)]
            fp = [float(x) for x in re.findall(r"to the print: (\d+) ms", fl.stderr)]
            if len(f) != a.runs or len(fp) != a.runs:
                sys.exit(f"floor-restore failed: {fl.stderr[-1500:]}")
            rows.append(("floor: bare restore, Ready", f))
            rows.append(("floor: bare restore, print", fp))
            print(f"# {lang}: restore median is {statistics.median(r) / statistics.median(fp):.2f}x"
                  f" the print floor and {statistics.median(r) / statistics.median(c):.2f}x cold")
            for what, xs in rows:
                print(f"{lang:<11} {what:<26} {min(xs):>6.0f} {statistics.median(xs):>7.0f} "
                      f"{max(xs):>6.0f}")
            print(f"{lang:<11} {'QEMU Pss, MiB: cold':<26} {qemu_pss_mb(a, cold, cenv, lang):>6.0f}"
                  f"   restored {qemu_pss_mb(a, warm, wenv, lang):.0f}")
    finally:
        for p in (cold, warm):
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
