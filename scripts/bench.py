#!/usr/bin/env python3
"""Start-up benchmark: each way of starting a VM beside its floor, measured in the same run.

- cold `sbx run` of print(1) per language, beside a bare QEMU boot of the same kernel and image
  whose init is the interpreter printing 1 (scripts/floor-boot.sh);
- warm pool `sbx run`, beside one exec round trip to the REPL of an already-running VM (a
  session exec through the same client, daemon and worker, in a fresh session whose REPL has
  been started with the same warm-up code as a pool VM's: the same state a pool VM is in), with
  VMs booted cold and with VMs restored from snapshots (the default);
- throughput: 40 runs at -j 4;
- memory: host PSS of an idle pool VM's QEMU (booted cold; and restored from a snapshot, the
  default), of a session VM after work and once its balloon took back what the guest does not
  use, and the RSS of sbxd and a worker.
Restore-from-snapshot rows come from scripts/bench-restore.py (its daemons here run with snapshots
off, so that cold means cold).
It prints a table; it is a measurement, not a test.

usage: scripts/bench.py [--runs N] [--langs python,javascript,raw] [--skip cold,warm,tput,mem]
                       [--guest-arch x86_64|aarch64]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = {"python": "print(1)", "javascript": "console.log(1)", "raw": "echo 1"}
# Reads the guest's image (about 200 MB of page cache), as a session that has worked would.
FILL_CACHE = """import os
for root, dirs, files in os.walk('/usr/lib'):
    for f in files:
        try:
            open(os.path.join(root, f), 'rb').read()
        except OSError:
            pass"""
# How long a VM idles after its REPL's warm-up before a warm-path measurement.
SETTLE_S = 3
# What supervisor/pool.c runs to start a pool VM's REPL (pool_warmup_code).
WARMUP = {"python": "print(end='')", "javascript": "process.stdout.write('')"}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(lang, what, xs, floor=None):
    med = statistics.median(xs)
    ratio = f"  {med / statistics.median(floor):.2f}x floor" if floor else ""
    print(f"{lang:<11} {what:<30} {min(xs):>7.0f} {med:>7.0f} {pct(xs, 95):>7.0f}{ratio}",
          flush=True)


class Daemon:
    def __init__(self, a, *flags):
        self.tmp = tempfile.mkdtemp(prefix="sbx-bench-")
        self.sock = os.path.join(self.tmp, "sbxd.sock")
        self.env = dict(os.environ, EXEC_SANDBOX_SOCKET=self.sock, EXEC_SANDBOX_SNAPSHOTS="0")
        self.a = a
        self.p = subprocess.Popen([a.sbxd, "--socket", self.sock, *flags],
                                  stdout=open(os.path.join(self.tmp, "log"), "w"),
                                  stderr=subprocess.STDOUT, env=self.env)
        while not os.path.exists(self.sock):
            time.sleep(0.05)

    def sbx(self, *args, check=True):
        r = subprocess.run([self.a.sbx, *args], env=self.env, capture_output=True)
        if check and r.returncode != 0:
            sys.exit(f"sbx {' '.join(args)[:80]}: exit {r.returncode}: {r.stderr[-500:]!r}")
        return r

    def timed(self, *args, expect=b"1\n"):
        t0 = time.monotonic()
        r = self.sbx(*args)
        ms = (time.monotonic() - t0) * 1000
        if expect is not None and r.stdout != expect:
            sys.exit(f"sbx {' '.join(args)[:80]} printed {r.stdout!r}: {r.stderr[-300:]!r}")
        return ms

    def status(self):
        return json.loads(self.sbx("status", "--json").stdout)

    def close(self):
        self.p.terminate()
        self.p.wait()


def floor_boot(lang, runs):
    r = subprocess.run([os.path.join(ROOT, "scripts/floor-boot.sh"), lang, str(runs)],
                       capture_output=True, text=True)
    ms = [int(m) for m in re.findall(r"print at (\d+) ms", r.stderr)]
    if r.returncode != 0 or len(ms) != runs:
        sys.exit(f"floor-boot {lang} failed: {r.stderr[-2000:]}")
    return ms


def rss_kb(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pss_kb(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    out.append((int(d), st[st.index("(") + 1:st.rindex(")")]))
            except (OSError, ValueError):
                pass
    return out


def workers_of(daemon_pid):
    return [w for w, comm in children(daemon_pid) if comm == "sbx-vmworker"]


def qemus_below(daemon_pid):
    """The QEMU processes of a daemon's VMs (each a child of its VM's worker)."""
    return [q for w in workers_of(daemon_pid) for q, comm in children(w)
            if comm.startswith("qemu")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--langs", default="python,javascript,raw")
    ap.add_argument("--skip", default="")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    ap.add_argument("--guest-arch", default=os.uname().machine,
                    help="x86_64 or aarch64 (another than the host's runs under TCG)")
    a = ap.parse_args()
    a.guest_arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(a.guest_arch, a.guest_arch)
    # The daemons (EXEC_SANDBOX_GUEST_ARCH) and the floors (ARCH) inherit it.
    os.environ["EXEC_SANDBOX_GUEST_ARCH"] = os.environ["ARCH"] = a.guest_arch
    skip = set(a.skip.split(","))
    langs = a.langs.split(",")
    qemu = subprocess.run([f"qemu-system-{a.guest_arch}", "--version"], capture_output=True,
                          text=True).stdout.split("\n")[0]
    print(f"# {qemu}; {a.guest_arch} guests on {os.uname().machine}; {os.cpu_count()} cores; "
          f"{a.runs} runs per row; times in ms")
    print(f"{'language':<11} {'what':<30} {'min':>7} {'median':>7} {'p95':>7}")

    if "cold" not in skip:
        d = Daemon(a, "--snapshots", "false") if "--snapshots" in subprocess.run(
            [a.sbxd, "--help"], capture_output=True, text=True).stdout else Daemon(a)
        try:
            d.timed("run", "-q", "print(1)")  # settles the accelerator verdict, page cache
            st = d.status()
            print(f"# accelerator {st['accelerator']} ({st['accel_reason']})")
            for lang in langs:
                f = floor_boot(lang, a.runs)
                s = [d.timed("run", "-q", "-l", lang, CODE[lang]) for _ in range(a.runs)]
                row(lang, "floor: bare qemu boot", f)
                row(lang, "sbx run, cold boot", s, f)
        finally:
            d.close()

    if "warm" not in skip:
        warm(a, langs, restored=False)
        warm(a, langs, restored=True)

    if "tput" not in skip:
        d = Daemon(a)
        try:
            d.timed("run", "-q", "print(1)")
            codes = [f"print({i})" for i in range(40)]
            t0 = time.monotonic()
            r = d.sbx("run", "-q", "-j", "4", *codes)
            took = time.monotonic() - t0
            ok = all(f"\n{i}\n" in "\n" + r.stdout.decode() for i in range(40))
            print(f"{'python':<11} {'throughput, 40 runs at -j 4':<30} {40 / took:>7.2f} runs/s"
                  f" ({took:.1f} s{'' if ok else ', OUTPUT MISSING'})")
        finally:
            d.close()

    if "mem" not in skip:
        memory(a)


def warm(a, langs, restored):
    """Warm pool runs beside exec round trips in a running REPL, in VMs booted cold or (the
    default) restored from the language's snapshot: pool VMs and the floor's session VMs alike."""
    snapdir = tempfile.mkdtemp(prefix="sbx-bench-snap-")
    flags = ["--snapshots", "true", "--snapshot-cache-dir", snapdir] if restored else []
    d = Daemon(a, "--warm-pool-size", "1", *flags)
    how = "restored" if restored else "cold"
    try:
        if restored:
            pool_qemus(d, restored=True)  # the templates are built, the pool restored
        for lang in [l for l in langs if l in ("python", "javascript")]:
            # Interleaved, so that the host's drift weighs on both alike; each VM settled for
            # SETTLE_S first (a VM that just booted still has guest work under way, such as the
            # balloon's free-page reporting 2 s after a cold boot, which would land in one column
            # or the other by chance).
            f, w = [], []
            for _ in range(a.runs):
                sid = d.sbx("session", "new", "-l", lang).stdout.decode().strip()
                d.timed("session", "exec", "-q", sid, WARMUP[lang], expect=b"")
                time.sleep(SETTLE_S)
                f.append(d.timed("session", "exec", "-q", sid, CODE[lang]))
                d.sbx("session", "close", sid)
                deadline = time.time() + 60
                while d.status()["pool_ready"] < 2 and time.time() < deadline:
                    time.sleep(0.1)
                time.sleep(SETTLE_S)
                t0 = time.monotonic()
                r = d.sbx("run", "--json", "-q", "-l", lang, CODE[lang])
                w.append((time.monotonic() - t0) * 1000)
                j = json.loads(r.stdout)
                if not j["warm_pool_hit"] or j["stdout"] != "1\n":
                    sys.exit(f"not a warm hit: {j}")
            row(lang, f"floor: REPL exec, {how} VM", f)
            row(lang, f"sbx run, warm pool, {how}", w, f)
    finally:
        d.close()
        shutil.rmtree(snapdir, ignore_errors=True)


def qemu_language(pid):
    """The language of a VM, from the image its jail binds as the root filesystem."""
    for line in open(f"/proc/{pid}/mountinfo"):
        f = line.split()
        if f[4].endswith("/rootfs.sqfs"):
            return os.path.basename(f[3]).split("-")[0]
    return "?"


def pool_qemus(d, restored):
    """{language: QEMU pid} of the daemon's pool once both VMs are ready (and, when restored,
    both started from a snapshot)."""
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            qemus = qemus_below(d.p.pid)
            cmds = [open(f"/proc/{q}/cmdline").read() for q in qemus]
            if (len(qemus) == 2 and d.status()["pool_ready"] == 2 and
                    all(("-incoming" in c) == restored for c in cmds)):
                return {qemu_language(q): q for q in qemus}
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the pool did not fill in time: " + open(os.path.join(d.tmp, "log")).read()[-1500:])


def memory(a):
    """Host PSS of idle pool VMs (booted cold; restored from a snapshot, the default), of a session
    VM before and after its balloon took back what the guest does not use; sbxd and worker
    RSS."""
    balloon_s = 8
    d = Daemon(a, "--warm-pool-size", "1", "--balloon-idle-seconds", str(balloon_s))
    try:
        q = pool_qemus(d, restored=False)
        time.sleep(balloon_s + 2)  # pool VMs have no balloon: this is their idle state
        log = os.path.join(d.tmp, "log")
        for lang in sorted(q):
            pss = pss_kb(q[lang]) / 1024
            print(f"{lang:<11} {'idle pool VM, cold, QEMU PSS':<30} {pss:>7.0f} MB "
                  f"({pss / 256:.0%} of 256 MB)")
        # A session VM that has worked: its guest read its image (page cache), then idles.
        sid = d.sbx("session", "new").stdout.decode().strip()
        d.sbx("session", "exec", "-q", "-t", "120", sid, FILL_CACHE)
        pids = set(q.values())
        sq = [x for x in qemus_below(d.p.pid) if x not in pids]
        busy = pss_kb(sq[0]) / 1024
        deadline = time.time() + 60
        while "the idle VM gave back" not in open(log).read() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        idle = pss_kb(sq[0]) / 1024
        print(f"{'python':<11} {'session after reading files':<30} {busy:>7.0f} MB ({busy / 256:.0%})")
        print(f"{'python':<11} {f'  ...after its balloon ({balloon_s} s)':<30} {idle:>7.0f} MB "
              f"({idle / 256:.0%})")
        d.sbx("session", "close", sid)
        print(f"{'daemon':<11} {'sbxd RSS':<30} {rss_kb(d.p.pid) / 1024:>7.1f} MB")
        wr = [rss_kb(w) / 1024 for w in workers_of(d.p.pid)]
        print(f"{'daemon':<11} {'sbx-vmworker RSS (each)':<30} {statistics.median(wr):>7.1f} MB")
    finally:
        d.close()
    # The default: pool VMs restored from the language's snapshot (built first, in a cache of
    # this run's own).
    snapdir = tempfile.mkdtemp(prefix="sbx-bench-snap-")
    d = Daemon(a, "--warm-pool-size", "1", "--snapshots", "true", "--snapshot-cache-dir", snapdir)
    try:
        q = pool_qemus(d, restored=True)
        time.sleep(2)
        for lang in sorted(q):
            pss = pss_kb(q[lang]) / 1024
            print(f"{lang:<11} {'idle pool VM, restored, PSS':<30} {pss:>7.0f} MB "
                  f"({pss / 256:.0%} of 256 MB)")
    finally:
        d.close()
        shutil.rmtree(snapdir, ignore_errors=True)

if __name__ == "__main__":
    main()
