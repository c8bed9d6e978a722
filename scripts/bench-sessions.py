#!/usr/bin/python3
"""Many sessions at once: a daemon of its own (build/sbxd, a private socket and snapshot cache,
--max-concurrent-vms 100, snapshots on as by default) first builds its python snapshot, then this
opens python sessions one after the other (each restored from the snapshot, each running one
print(1)) until --sessions or the first failure, and with all of them open measures:

- exec latency: one print(1) per session (its second), `sbx session exec` request to result,
  p50/p95, beside the floor: the same exec (a session's second) with that session alone open on
  the otherwise idle daemon, measured first in the same run;
- host memory per idle session: Pss (/proc/PID/smaps_rollup) of its worker and its QEMU (the
  worker's process tree), mean and max, against the target of 80 MiB; and the QEMU's private
  part (the template's pages that all sessions share are split N ways in Pss, so Pss per session
  falls as N grows; the private part does not); sbxd's RSS;
- that none was lost: every session still answers at the end, in the same interpreter
  (exec_count 3, no interpreter reset);
- the time to close them all, one after the other (requests answered; all VM processes gone).

A measurement that prints a table, not a test. The target on a 2-core 24 GiB host: 100 sessions
held, none lost, <= 80 MiB Pss each.

usage: scripts/bench-sessions.py [--sessions N] [--floor-execs K] [--sbx P] [--sbxd P]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import children, pct, pss_kb, rss_kb, workers_of  # noqa: E402  scripts/bench.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALL_TIMEOUT_S = 120  # any one sbx call
TARGET_PSS_MIB = 80


class Daemon:
    """A private sbxd; sbx calls against it. Never autostarts another daemon on its socket."""

    def __init__(self, a, tmp, max_vms):
        self.a, self.tmp = a, tmp
        self.sock = os.path.join(tmp, "sbxd.sock")
        self.log = os.path.join(tmp, "sbxd.log")
        self.env = dict(os.environ, EXEC_SANDBOX_SOCKET=self.sock,
                        EXEC_SANDBOX_SBXD=os.path.join(tmp, "no-autostart"))
        self.p = subprocess.Popen(
            [a.sbxd, "--socket", self.sock, "--max-concurrent-vms", str(max_vms),
             "--snapshots", "true", "--snapshot-cache-dir", os.path.join(tmp, "snapshots"),
             "--idle-exit-seconds", "0", "--session-idle-timeout-seconds", "3600"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 30
        while not os.path.exists(self.sock):
            if self.p.poll() is not None or time.time() > deadline:
                raise RuntimeError("sbxd did not start: " + self.log_tail())
            time.sleep(0.05)

    def log_tail(self, n=1500):
        try:
            return open(self.log, errors="replace").read()[-n:]
        except OSError:
            return ""

    def sbx(self, *args, timeout=CALL_TIMEOUT_S):
        """(returncode, stdout, stderr, ms); returncode -1 when the call timed out."""
        t0 = time.monotonic()
        try:
            r = subprocess.run([self.a.sbx, *args], env=self.env, capture_output=True, text=True,
                               timeout=timeout)
            rc, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", f"timed out after {timeout} s"
        return rc, out, err, (time.monotonic() - t0) * 1000

    def exec_json(self, sid):
        """One print(1) in session sid: (ms, result dict) or (ms, error text)."""
        rc, out, err, ms = self.sbx("session", "exec", "--json", "-q", sid, "print(1)")
        try:
            j = json.loads(out)
        except ValueError:
            return ms, f"exit {rc}: {err.strip()[-300:] or out[-300:]}"
        if rc != 0 or j.get("stdout") != "1\n":
            return ms, f"exit {rc}: {j.get('error') or j.get('stdout')!r} {err.strip()[-200:]}"
        return ms, j

    def new_session(self):
        """(session id, None) or (None, the failure's message)."""
        rc, out, err, _ = self.sbx("session", "new", "-l", "python", "--idle-timeout", "3600")
        sid = out.strip()
        if rc != 0 or not sid:
            return None, f"session new: exit {rc}: {err.strip()[-400:]}"
        return sid, None

    def close(self):
        """Terminates sbxd; kills what is left of its VMs' process trees (ours alone)."""
        left = descendants(self.p.pid) if self.p.poll() is None else []
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def descendants(pid):
    out = []
    for c, _ in children(pid):
        out += [c] + descendants(c)
    return out


def uss_kb(pid):
    """Private_Clean + Private_Dirty: what this process alone holds."""
    n = 0
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            n += int(line.split()[1])
    return n


def tree_pss_kb(pid):
    """Pss of a process and everything below it (a worker: itself and its QEMU)."""
    total = 0
    for p in [pid] + descendants(pid):
        try:
            total += pss_kb(p)
        except OSError:
            pass
    return total


def wait_restore(d, deadline_s=240):
    """Runs sessions until one starts from the python snapshot (the template built in the
    background after the first one booted cold). Returns the time it took, s."""
    t0 = time.time()
    while True:
        sid, err = d.new_session()
        if err:
            raise RuntimeError(err)
        try:
            _, j = d.exec_json(sid)
        finally:
            d.sbx("session", "close", sid)
        if isinstance(j, str):
            raise RuntimeError("warm-up exec: " + j)
        if j.get("start_mode") == "restore":
            return time.time() - t0
        if time.time() - t0 > deadline_s:
            raise RuntimeError(f"no restored session after {deadline_s} s: {d.log_tail()}")
        time.sleep(0.5)


def wait_gone(d, deadline_s=60):
    """Seconds until the daemon has no worker left (every VM destroyed), or None."""
    t0 = time.monotonic()
    while workers_of(d.p.pid):
        if time.monotonic() - t0 > deadline_s:
            return None
        time.sleep(0.02)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--floor-execs", type=int, default=20,
                    help="samples of the floor (each a fresh session's second exec)")
    ap.add_argument("--settle", type=float, default=3, help="s of idling before Pss is read")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sbx-bench-sessions-")
    d = None
    sids = []
    try:
        d = Daemon(a, tmp, max(100, a.sessions))
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=30).stdout.split("\n")[0]
        print(f"# {qemu}; {os.cpu_count()} cores; up to {a.sessions} python sessions, "
              f"--max-concurrent-vms {max(100, a.sessions)}", flush=True)
        took = wait_restore(d)
        print(f"# python snapshot ready after {took:.1f} s; sessions now start from it",
              flush=True)
        rss_idle = rss_kb(d.p.pid) / 1024

        # Floor: the same exec as below (a session's second print(1)) in one open session, the
        # daemon otherwise idle; a fresh session for each sample, closed before the next.
        floor = []
        for _ in range(a.floor_execs):
            sid, err = d.new_session()
            if err:
                raise RuntimeError(err)
            try:
                d.exec_json(sid)
                ms, j = d.exec_json(sid)
            finally:
                d.sbx("session", "close", sid)
            if isinstance(j, str):
                raise RuntimeError("floor exec: " + j)
            floor.append(ms)
            wait_gone(d)

        # Open sessions one after the other, each with one print(1), until N or a failure.
        failure = None
        modes = {}
        t_open = time.monotonic()
        while len(sids) < a.sessions:
            sid, err = d.new_session()
            if err:
                failure = f"session {len(sids) + 1}: {err}"
                break
            sids.append(sid)
            _, j = d.exec_json(sid)
            if isinstance(j, str):
                failure = f"session {len(sids)}: first exec: {j}"
                break
            modes[j.get("start_mode", "?")] = modes.get(j.get("start_mode", "?"), 0) + 1
            if len(sids) % 10 == 0:
                print(f"# {len(sids)} open ({time.monotonic() - t_open:.0f} s)", flush=True)
        open_s = time.monotonic() - t_open
        held = len(sids) if failure is None else len(sids) - ("first exec" in failure)

        # With all open: one exec per session.
        lat, lat_err = [], []
        for sid in sids:
            ms, j = d.exec_json(sid)
            (lat_err.append(f"{sid}: {j}") if isinstance(j, str) else lat.append(ms))

        # Idle memory per session: each worker's tree (worker + QEMU).
        time.sleep(a.settle)
        workers = workers_of(d.p.pid)
        pss = [tree_pss_kb(w) / 1024 for w in workers]
        qemus = [q for w in workers for q, comm in children(w) if comm.startswith("qemu")]
        qemu_pss = [pss_kb(q) / 1024 for q in qemus]
        qemu_uss = [uss_kb(q) / 1024 for q in qemus]
        rss_open = rss_kb(d.p.pid) / 1024

        # None lost: every session answers, in the interpreter it started with.
        lost = []
        for sid in sids:
            _, j = d.exec_json(sid)
            if isinstance(j, str):
                lost.append(f"{sid}: {j}")
            elif j.get("interpreter_reset") or j.get("exec_count") != 3:
                lost.append(f"{sid}: exec_count {j.get('exec_count')}, "
                            f"interpreter_reset {j.get('interpreter_reset')}")
        rc, out, _, _ = d.sbx("session", "ls", "--json")
        try:
            listed = len(json.loads(out)) if rc == 0 else -1
        except ValueError:
            listed = -1

        # Close them all, one after the other.
        t0 = time.monotonic()
        close_err = []
        for sid in sids:
            rc, _, err, _ = d.sbx("session", "close", sid)
            if rc != 0:
                close_err.append(f"{sid}: exit {rc}: {err.strip()[-200:]}")
        close_s = time.monotonic() - t0
        gone_s = wait_gone(d)
        gone_s = None if gone_s is None else close_s + gone_s
        closed = list(sids)
        sids = []
        rss_after = rss_kb(d.p.pid) / 1024

        # The table.
        print(f"sessions held            {held} of {a.sessions} (opened in {open_s:.1f} s; "
              f"start modes {modes})")
        if failure:
            print(f"  first failure          {failure}")
        print(f"none lost                {'yes' if not lost and listed == len(closed) else 'NO'}"
              f" ({len(closed) - len(lost)} of {len(closed)} answered at the end with their "
              f"interpreter; session ls listed {listed})")
        for x in lost[:5]:
            print(f"  lost                   {x}")
        print(f"{'exec latency, ms':<24} {'n':>4} {'min':>6} {'p50':>6} {'p95':>6}")
        print(f"{'  floor: 1 open session':<24} {len(floor):>4} {min(floor):>6.0f} "
              f"{pct(floor, 50):>6.0f} {pct(floor, 95):>6.0f}")
        if lat:
            ratio = pct(lat, 50) / pct(floor, 50)
            print(f"{f'  all {len(closed)} open':<24} {len(lat):>4} {min(lat):>6.0f}"
                  f" {pct(lat, 50):>6.0f} {pct(lat, 95):>6.0f}  (p50 {ratio:.2f}x floor)")
        for x in lat_err[:5]:
            print(f"  exec failed            {x}")
        if pss:
            ok = "ok" if max(pss) <= TARGET_PSS_MIB else "OVER"
            print(f"Pss per idle session     mean {statistics.mean(pss):.1f} MiB, max "
                  f"{max(pss):.1f} MiB over {len(pss)} (target <= {TARGET_PSS_MIB} MiB: {ok}); "
                  f"of it QEMU mean {statistics.mean(qemu_pss or [0]):.1f} MiB ({len(qemus)} QEMUs), of "
                  f"which private {statistics.mean(qemu_uss or [0]):.1f} MiB; total "
                  f"{sum(pss) / 1024:.2f} GiB")
        print(f"sbxd RSS                 {rss_idle:.1f} MiB idle, {rss_open:.1f} MiB with all "
              f"open, {rss_after:.1f} MiB after closing")
        gone = f"{gone_s:.1f} s" if gone_s is not None else "NOT within 60 s"
        print(f"close all                {close_s:.1f} s for {len(closed)} closes "
              f"({1000 * close_s / max(1, len(closed)):.0f} ms each); every VM gone after "
              f"{gone}{'; errors: ' + '; '.join(close_err[:3]) if close_err else ''}")
    finally:
        if d:
            for sid in sids:  # left open by an error above
                d.sbx("session", "close", sid, timeout=30)
            d.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
