#!/usr/bin/env python3
"""Package-install benchmark (issue 13): `sbx run -p SPEC` beside its floors, in one run. It prints
a table; it is a measurement, not a test.

1. First install of one small package per language, each on a fresh daemon (snapshots off) with a
   cache of its own: Python attrs==99.0.1 from a local PyPI (tests/e2e/pkgindex.py: a fake,
   pure-Python wheel; pip resolves its dependency six), JavaScript is-number@7.0.0 from the real
   npm registry (skipped, with the reason, when curl cannot reach it). The wall clock of the
   first run (which installs and packs the layer), of the second (the layer cached), their
   difference (what the install cost the run) and meta's install_ms / pack_ms; the floor: plain
   cold runs of the same language, no packages, on the same daemon before it installs.
2. Restore with a package layer beside restore without one: the Python daemon restarted with
   memory snapshots on (the same cache, so the same layer); once both templates restore, N
   alternating runs of print(1) without packages, print(1) with -p attrs==99.0.1 and (for
   information) `import attrs` with it. Median and p90 of the wall clock; target: the package
   run's median at most 1.3x the no-package one's.
3. Each layer's size on disk: meta's size, `du` of layer.sqfs and the installed tree (the sum of
   the regular files' sizes inside the image, from `unsquashfs -lln`).
4. The remote layer cache (issue 14): a first `-p attrs==99.0.1` run on a fresh host whose layer
   another host built and uploaded to S3 (a real s3rver on loopback behind tests/e2e/s3front.py),
   beside the same first run building locally (section 1's). Skipped, with the reason, when
   s3rver is not installed (scripts/setup-s3rver.sh).

The local index listens on 127.0.0.6:443 (root, or CAP_NET_BIND_SERVICE): one user at a time; an
e2e run of suite_packages uses the same address.

usage: scripts/bench-packages.py [--runs N] [--sbx P] [--sbxd P] [--index-ip IP]
Env: EXEC_SANDBOX_IMAGES_DIR (default: EXEC_SANDBOX_CACHE_DIR/images, else
~/.cache/exec-sandbox/images).
"""
import argparse
import errno
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from pkgindex import VERSION, PkgIndex, npm_unreachable  # noqa: E402  tests/e2e/pkgindex.py

ATTRS = f"attrs=={VERSION}"
NPM_PKG = "is-number@7.0.0"
LANGS = {
    # language: (spec, code using it, its stdout, floor code, floor stdout)
    "python": (ATTRS, "import attrs; print(attrs.SBX_FAKE)", f"attrs {VERSION} on six {VERSION}\n",
               "print(1)", "1\n"),
    "javascript": (NPM_PKG, 'console.log(require("is-number")(5))', "true\n",
                   "console.log(1)", "1\n"),
}
TARGET_RATIO = 1.3
INSTALL_TIMEOUT_S = 180
RUN_TIMEOUT_S = 60
RESTORE_WAIT_S = 120
# Settings a caller's environment may carry that would point a daemon of ours elsewhere.
STRIP_ENV = ("EXEC_SANDBOX_PYPI_INDEX_URL", "EXEC_SANDBOX_NPM_REGISTRY_URL",
             "EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE", "EXEC_SANDBOX_DNS_HOSTS_FILE",
             "EXEC_SANDBOX_SNAPSHOT_CACHE_MAX_BYTES", "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR",
             "EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE", "EXEC_SANDBOX_SNAPSHOTS",
             "EXEC_SANDBOX_SOCKET", "EXEC_SANDBOX_CACHE_DIR", "EXEC_SANDBOX_IMAGES_DIR",
             "EXEC_SANDBOX_WARM_POOL_SIZE")


class Fail(Exception):
    pass


def images_dir():
    if os.environ.get("EXEC_SANDBOX_IMAGES_DIR"):
        return os.environ["EXEC_SANDBOX_IMAGES_DIR"]
    cache = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
    return os.path.join(cache, "images")


class Daemon:
    """A private sbxd: its own socket, cache directory (so its own layers/) and snapshot
    directory; the real images; no warm pool. Another Daemon on the same cache is a restart."""

    def __init__(self, a, d, cache, snapshots, idx=None, extra=None):
        self.dir, self.cache = d, cache
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.makedirs(cache, mode=0o700, exist_ok=True)
        images = images_dir()
        verdict = os.path.join(os.path.dirname(images), "accel-verdict")
        mine = os.path.join(cache, "accel-verdict")
        if os.path.isfile(verdict) and not os.path.exists(mine):
            shutil.copyfile(verdict, mine)  # skips the accelerator probe (re-probed if stale)
            os.chmod(mine, 0o600)
        self.sock = os.path.join(d, "sbxd.sock")
        self.log = os.path.join(d, "sbxd.log")
        self.snaps = os.path.join(d, "snapshots")
        env = {k: v for k, v in os.environ.items() if k not in STRIP_ENV}
        env.update(EXEC_SANDBOX_SOCKET=self.sock, EXEC_SANDBOX_CACHE_DIR=cache,
                   EXEC_SANDBOX_IMAGES_DIR=images, EXEC_SANDBOX_SNAPSHOT_CACHE_DIR=self.snaps,
                   EXEC_SANDBOX_SNAPSHOTS=snapshots,
                   EXEC_SANDBOX_PACKAGE_INSTALL_TIMEOUT=str(INSTALL_TIMEOUT_S))
        if idx is not None:
            hosts = os.path.join(d, "hosts")
            with open(hosts, "w") as f:
                f.write(idx.hosts_line + "\n")
            env.update(EXEC_SANDBOX_DNS_HOSTS_FILE=hosts, EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE="1",
                       EXEC_SANDBOX_PYPI_INDEX_URL=idx.url,
                       EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE=idx.ca_file)
        env.update(extra or {})
        self.env = env
        self.a = a
        self.p = subprocess.Popen([a.sbxd, "--socket", self.sock, "--warm-pool-size", "0",
                                   "--idle-exit-seconds", "0"], stdin=subprocess.DEVNULL,
                                  stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Fail(f"sbxd did not start ({self.log}): {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=2000):
        try:
            return open(self.log, errors="replace").read()[-n:]
        except OSError:
            return ""

    def run(self, lang, code, out, spec=None, timeout=RUN_TIMEOUT_S):
        """One `sbx run --json -q`: (wall ms, its JSON). Fails unless it printed out."""
        argv = [self.a.sbx, "run", "--json", "-q", "-t", str(timeout), "-l", lang]
        if spec:
            argv += ["-p", spec]
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv + [code], env=self.env, capture_output=True, text=True,
                               timeout=timeout + INSTALL_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            raise Fail(f"sbx run {lang} {spec or ''}: no answer; sbxd log: {self.log_tail()}")
        ms = (time.monotonic() - t0) * 1000
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise Fail(f"sbx run {lang} {spec or ''}: no JSON (exit {r.returncode}): "
                       f"{r.stdout[-800:]} {r.stderr[-800:]}")
        if r.returncode != 0 or j.get("exit_code") != 0 or j.get("stdout") != out:
            brief = {k: v for k, v in j.items() if k != "code"}
            raise Fail(f"sbx run {lang} {spec or ''} failed (exit {r.returncode}): "
                       f"{json.dumps(brief)[-2000:]} {r.stderr[-800:]}")
        return ms, j

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p = None


def pct(xs, q):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def start_index(tmp, ip):
    idx = PkgIndex(tmp, ip=ip)
    try:
        return idx.start()
    except OSError as e:
        who = ""
        try:
            who = subprocess.run(["ss", "-ltnpH", f"src {ip}:443"], capture_output=True,
                                 text=True, timeout=10).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            pass
        if e.errno == errno.EADDRINUSE:
            raise Fail(f"{ip}:443 is in use ({' '.join(who) or 'by another process'}): the "
                       "local PyPI needs it to itself; another bench-packages.py or an e2e run of "
                       "suite_packages may hold it. Wait for it to end, or pass --index-ip "
                       "127.0.0.N (a free loopback address).")
        raise Fail(f"cannot listen on {ip}:443 (root or CAP_NET_BIND_SERVICE needed): {e}")


def layer_sizes(layer_dir):
    """(meta's size, du of layer.sqfs, installed tree bytes or None, files or None, meta dict)."""
    meta = {}
    with open(os.path.join(layer_dir, "meta")) as f:
        for line in f:
            k, sep, v = line.partition(" = ")
            if sep:
                meta[k.strip()] = v.strip()
    sqfs = os.path.join(layer_dir, "layer.sqfs")
    du = int(subprocess.run(["du", "-B1", sqfs], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    tree = files = None
    try:
        r = subprocess.run(["unsquashfs", "-lln", sqfs], capture_output=True, text=True,
                           timeout=60)
        if r.returncode == 0:
            tree = files = 0
            for line in r.stdout.splitlines():
                f = line.split()
                if len(f) >= 6 and line.startswith("-"):
                    tree += int(f[2])
                    files += 1
    except (OSError, subprocess.TimeoutExpired, ValueError):
        tree = files = None
    return int(meta.get("size", 0)), du, tree, files, meta


def first_install(a, tmp, lang, idx, floor_runs):
    """Section 1 for one language on a fresh daemon (snapshots off). Returns its row and the
    daemon's directories (the daemon stopped)."""
    spec, code, out, fcode, fout = LANGS[lang]
    d = Daemon(a, os.path.join(tmp, lang), os.path.join(tmp, lang, "cache"), "0", idx)
    try:
        d.run(lang, fcode, fout)  # settles the page cache; not counted
        floor = []
        for _ in range(floor_runs):
            ms, j = d.run(lang, fcode, fout)
            if j.get("start_mode") != "cold":
                raise Fail(f"{lang} floor run started {j.get('start_mode')}")
            floor.append(ms)
        w1, j1 = d.run(lang, code, out, spec)
        if j1.get("package_layer_built") is not True:
            raise Fail(f"{lang}: the first run did not build the layer: {json.dumps(j1)[:800]}")
        w2, j2 = d.run(lang, code, out, spec)
        if j2.get("package_layer_built") is not False or \
                j2.get("package_layer") != j1.get("package_layer"):
            raise Fail(f"{lang}: the second run did not find the layer cached: "
                       f"{json.dumps(j2)[:800]}")
        layer = os.path.join(d.cache, "layers", j1["package_layer"])
        return dict(lang=lang, spec=spec, floor=floor, w1=w1, w2=w2,
                    t1=j1["timing"]["total_ms"], t2=j2["timing"]["total_ms"],
                    layer=j1["package_layer"], sizes=layer_sizes(layer), dir=d.dir,
                    cache=d.cache)
    finally:
        d.stop()


def wait_restore(d, label, *run_args):
    deadline, modes = time.monotonic() + RESTORE_WAIT_S, []
    while True:
        _, j = d.run(*run_args)
        modes.append(j.get("start_mode"))
        if modes[-1] == "restore":
            return len(modes)
        if time.monotonic() > deadline:
            raise Fail(f"{label}: no restore within {RESTORE_WAIT_S} s (start modes {modes}); "
                       f"sbxd log: {d.log_tail()}")
        time.sleep(1)


def remote_first_run(a, tmp, idx, py):
    from s3front import S3Server
    try:
        srv = S3Server(os.path.join(tmp, "s3"))
    except FileNotFoundError as e:
        print(f"\n## 4. remote cache: skipped ({e})", flush=True)
        return
    ds = []
    try:
        s3 = dict(EXEC_SANDBOX_S3_BUCKET=srv.bucket, EXEC_SANDBOX_S3_ENDPOINT_URL=srv.endpoint,
                  AWS_ACCESS_KEY_ID=srv.access_key, AWS_SECRET_ACCESS_KEY=srv.secret_key,
                  AWS_SESSION_TOKEN="", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        spec, code, out = LANGS["python"][0], LANGS["python"][1], LANGS["python"][2]
        up = Daemon(a, os.path.join(tmp, "s3-up"), os.path.join(tmp, "s3-up-cache"), "0", idx, s3)
        ds.append(up)
        w_build, j = up.run("python", code, out, spec)
        deadline = time.monotonic() + 120
        while "uploaded" not in up.log_tail(100000):
            if time.monotonic() > deadline:
                raise Fail(f"the upload did not finish: {up.log_tail()}")
            time.sleep(0.2)
        rows = []
        for i in range(3):
            d = Daemon(a, os.path.join(tmp, f"s3-fresh{i}"), os.path.join(tmp, f"s3-fresh{i}-c"),
                       "0", idx, s3)
            ds.append(d)
            w, jj = d.run("python", code, out, spec)
            if jj.get("package_layer_built") or "ready from the remote cache" not in d.log_tail():
                raise Fail(f"fresh host {i}: not served from the remote cache: {d.log_tail()}")
            w2, _ = d.run("python", code, out, spec)
            rows.append((w, w2))
        print("\n## 4. a fresh host's first -p run, wall ms: its layer from S3 (s3rver behind a "
              "SigV4-verifying front, loopback) beside building it; floor: the same host's "
              "second run (layer cached)", flush=True)
        med = statistics.median(r[0] for r in rows)
        floor = statistics.median(r[1] for r in rows)
        print(f"{'first run, from S3 (median of 3 hosts)':<44} {med:>7.0f}")
        print(f"{'first run, building here (this run)':<44} {w_build:>7.0f}")
        print(f"{'first run, building here (section 1)':<44} {py['w1']:>7.0f}")
        print(f"{'second run, cached (floor)':<44} {floor:>7.0f}")
        print(f"# from S3 / building: {med / w_build:.2f}; from S3 - cached: {med - floor:.0f} ms "
              f"(download, decompress, check)", flush=True)
    finally:
        for d in ds:
            d.stop()
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="restore runs per row (default 10)")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    ap.add_argument("--index-ip", default="127.0.0.6",
                    help="loopback address of the local PyPI (port 443; default 127.0.0.6)")
    a = ap.parse_args()
    for b in (a.sbx, a.sbxd):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench-packages: {b} missing: run `make all` first")
    if a.runs < 1:
        sys.exit("bench-packages: --runs must be at least 1")
    tmp = tempfile.mkdtemp(prefix="sbx-bench-packages-")
    idx = d = None
    try:
        idx = start_index(tmp, a.index_ip)
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                              text=True).stdout.split("\n")[0]
        print(f"# {qemu}; {os.cpu_count()} cores; restore runs per row: {a.runs}; "
              f"images {images_dir()}", flush=True)

        # --- 1. first install --------------------------------------------------------------
        floor_runs = min(a.runs, 5)
        rows = [first_install(a, tmp, "python", idx, floor_runs)]
        why = npm_unreachable()
        if why:
            print(f"# javascript skipped: registry.npmjs.org not reachable ({why})", flush=True)
        else:
            rows.append(first_install(a, tmp, "javascript", None, floor_runs))
        print(f"\n## 1. first install (fresh daemon and cache, snapshots off), wall ms; floor: "
              f"a cold run without packages (median of {floor_runs})")
        print(f"{'language':<11} {'package':<16} {'1st run':>8} {'2nd run':>8} {'install':>8} "
              f"{'meta inst':>9} {'meta pack':>9} {'floor':>6} {'1st/floor':>9}")
        for r in rows:
            fl = statistics.median(r["floor"])
            m = r["sizes"][4]
            print(f"{r['lang']:<11} {r['spec']:<16} {r['w1']:>8.0f} {r['w2']:>8.0f} "
                  f"{r['w1'] - r['w2']:>8.0f} {m.get('install_ms', '?'):>9} "
                  f"{m.get('pack_ms', '?'):>9} {fl:>6.0f} {r['w1'] / fl:>8.1f}x")
        print("# install = 1st run - 2nd run (the 2nd finds the layer cached, boots cold); "
              "meta inst/pack: install_ms/pack_ms of the layer's meta; timing.total_ms 1st/2nd: " +
              ", ".join(f"{r['lang']} {r['t1']}/{r['t2']}" for r in rows), flush=True)

        # --- 2. restore with a layer beside restore without -------------------------------
        py = rows[0]
        spec, _, _, fcode, fout = LANGS["python"]
        # The Python daemon's cache again (its layer), now with snapshots on: a restart.
        d = Daemon(a, os.path.join(tmp, "restore"), py["cache"], "1", idx)
        t0 = time.monotonic()
        n0 = wait_restore(d, "python without packages", "python", fcode, fout)
        n1 = wait_restore(d, f"python with {spec}", "python", fcode, fout, spec)
        print(f"\n## 2. restore (snapshots on; both templates ready after {n0} + {n1} runs, "
              f"{time.monotonic() - t0:.0f} s), wall ms, {a.runs} alternating runs each",
              flush=True)
        cases = [("print(1), no packages", fcode, fout, None),
                 (f"print(1), -p {spec}", fcode, fout, spec),
                 (f"import attrs, -p {spec}", "import attrs; print(1)", "1\n", spec)]
        ms = {c[0]: [] for c in cases}
        tot = {c[0]: [] for c in cases}
        other = {c[0]: [] for c in cases}
        for _ in range(a.runs):
            for what, code, out, sp in cases:
                w, j = d.run("python", code, out, sp)
                if j.get("start_mode") != "restore":
                    other[what].append(j.get("start_mode"))
                if sp and (j.get("package_layer") != py["layer"] or j.get("package_layer_built")):
                    raise Fail(f"{what}: not the cached layer: {json.dumps(j)[:800]}")
                ms[what].append(w)
                tot[what].append(j["timing"]["total_ms"])
        print(f"{'what':<30} {'median':>7} {'p90':>6} {'min':>6} {'max':>6} "
              f"{'total_ms med':>12}  not restored")
        for what, *_ in cases:
            xs = ms[what]
            print(f"{what:<30} {statistics.median(xs):>7.0f} {pct(xs, 0.9):>6.0f} "
                  f"{min(xs):>6.0f} {max(xs):>6.0f} {statistics.median(tot[what]):>12.0f}  "
                  f"{len(other[what])} {','.join(map(str, other[what]))}".rstrip())
        base = statistics.median(ms[cases[0][0]])
        ratio = statistics.median(ms[cases[1][0]]) / base
        ratio_i = statistics.median(ms[cases[2][0]]) / base
        print(f"# ratio, median wall, package/no-package (print(1) both): {ratio:.2f} "
              f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}); "
              f"importing attrs: {ratio_i:.2f} (informative); floor: the no-package restore")
        d.stop()
        d = None

        # --- 3. layer sizes ---------------------------------------------------------------
        print("\n## 3. package layer on disk, bytes")
        print(f"{'language':<11} {'layer':<28} {'meta size':>10} {'du sqfs':>10} "
              f"{'tree':>10} {'files':>6} {'sqfs/tree':>9}")
        for r in rows:
            size, du, tree, files, _ = r["sizes"]
            print(f"{r['lang']:<11} {r['layer']:<28} {size:>10} {du:>10} "
                  f"{tree if tree is not None else '-':>10} "
                  f"{files if files is not None else '-':>6} "
                  f"{(f'{size / tree:.2f}' if tree else '-'):>9}")
        print("# tree: the regular files' sizes summed (unsquashfs -lln); du: blocks on disk",
              flush=True)

        # --- 4. a fresh host: from S3 versus building -----------------------------------------
        remote_first_run(a, tmp, idx, py)
    except Fail as e:
        sys.exit(f"bench-packages: {e}")
    finally:
        if d is not None:
            d.stop()
        if idx is not None:
            idx.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
