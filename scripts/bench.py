#!/usr/bin/env python3
"""Cold-start benchmark: `sbx run` of print(1) per language, beside its floor measured in the same
run (a bare QEMU boot of the same kernel and image whose init is the interpreter printing 1,
scripts/floor-boot.sh). Prints a table; it is a measurement, not a test.

usage: scripts/bench.py [--runs N] [--langs python,javascript,raw] [--sbx PATH] [--sbxd PATH]
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = {"python": "print(1)", "javascript": "console.log(1)", "raw": "echo 1"}


def floor(lang, runs):
    r = subprocess.run([os.path.join(ROOT, "scripts/floor-boot.sh"), lang, str(runs)],
                       capture_output=True, text=True)
    ms = [int(m) for m in re.findall(r"print at (\d+) ms", r.stderr)]
    if r.returncode != 0 or len(ms) != runs:
        sys.exit(f"floor-boot {lang} failed: {r.stderr[-2000:]}")
    return ms


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--langs", default="python,javascript,raw")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sbx-bench-")
    sock = os.path.join(tmp, "sbxd.sock")
    env = dict(os.environ, EXEC_SANDBOX_SOCKET=sock)
    d = subprocess.Popen([a.sbxd, "--socket", sock], stdout=open(os.path.join(tmp, "log"), "w"),
                         stderr=subprocess.STDOUT, env=env)
    while not os.path.exists(sock):
        time.sleep(0.05)
    try:
        # One warm-up run settles the accelerator verdict and the page cache.
        subprocess.run([a.sbx, "run", "-q", "print(1)"], env=env, capture_output=True, check=True)
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                              text=True).stdout.split("\n")[0]
        st = subprocess.run([a.sbx, "status"], env=env, capture_output=True, text=True).stdout
        print(f"# {qemu}; {os.cpu_count()} cores; runs per cell: {a.runs}")
        print("# " + " ".join(st.split()))
        print(f"{'language':<11} {'what':<22} {'min ms':>7} {'median':>7} {'p95':>7}  ratio")
        for lang in a.langs.split(","):
            f = floor(lang, a.runs)
            s = []
            for _ in range(a.runs):
                t0 = time.monotonic()
                r = subprocess.run([a.sbx, "run", "-q", "-l", lang, CODE[lang]], env=env,
                                   capture_output=True)
                s.append(int((time.monotonic() - t0) * 1000))
                if r.stdout != b"1\n":
                    sys.exit(f"sbx run {lang} printed {r.stdout!r}: {r.stderr[-500:]!r}")
            fm, sm = statistics.median(f), statistics.median(s)
            print(f"{lang:<11} {'floor (bare qemu)':<22} {min(f):>7} {fm:>7.0f} {pct(f, 95):>7}")
            print(f"{lang:<11} {'sbx run (cold)':<22} {min(s):>7} {sm:>7.0f} {pct(s, 95):>7}"
                  f"  {sm / fm:.2f}x floor")
    finally:
        d.terminate()
        d.wait()


if __name__ == "__main__":
    main()
