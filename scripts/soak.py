#!/usr/bin/env python3
"""Soak: many runs and session execs at once, while workers and QEMUs are SIGKILLed and clients
vanish at random moments. Prints figures, and exits non-zero if a promise broke: a request left
unanswered or answered twice, the daemon dead, or anything leaked (processes, cgroups, run
directories, the socket).

    scripts/soak.py [--runs 1000] [-j 4] [--sbxd build/sbxd] [--kill-every 2.0] [--seed N]

Requests go over the control socket by hand (tests/e2e/wire.py), one connection per thread, so
a reply that arrives twice or never is seen. Traffic stays on this machine.
"""
import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import descendants, project_cgroups, project_processes  # noqa: E402
import wire  # noqa: E402


def cgroup_of(pid):
    try:
        return open(f"/proc/{pid}/cgroup").read()
    except OSError:
        return ""


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = self.answered_once = self.abandoned = 0
        self.twice = []
        self.unanswered = []
        self.results = 0
        self.errors = collections.Counter()

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def error_name(pb, kind):
    return pb.ErrorKind.Name(kind)


def worker(sock, n, tally, rng, stop_at, pb):
    """n requests: runs, and execs in a session of this thread's own; some abandoned mid-way."""
    conn = None
    sid = None
    next_id = 1
    for _ in range(n):
        if time.time() > stop_at:
            break
        try:
            if conn is None:
                conn = wire.Conn(sock, timeout=180).hello()
            rid = next_id
            next_id += 1
            use_session = rng.random() < 0.3
            if use_session and sid is None:
                conn.send(rid, session_open=pb.SessionOpen(language="python"))
                r = conn.until(rid, ("session", "error"))
                tally.add(sent=1, answered_once=1)
                if r.WhichOneof("body") == "session":
                    sid = r.session.session_id
                else:
                    tally.errors[error_name(pb, r.error.kind)] += 1
                continue
            code = rng.choice([b"print(1)", b"import time; time.sleep(0.3); print(2)",
                               b"print('x' * 20000)"])
            if use_session:
                conn.send(rid, session_exec=pb.SessionExec(session_id=sid, code=code,
                                                           stream=rng.random() < 0.5))
            else:
                conn.send(rid, run=pb.RunRequest(language="python", code=code,
                                                 stream=rng.random() < 0.5, timeout_seconds=30))
            if rng.random() < 0.1:
                # vanish at a random moment: before, during or after the VM starts
                time.sleep(rng.random() * 1.5)
                conn.close()
                conn = None
                tally.add(abandoned=1)
                continue
            tally.add(sent=1)
            r = conn.until(rid)
            tally.add(answered_once=1)
            if r.WhichOneof("body") == "result":
                tally.add(results=1)
            else:
                with tally.lock:
                    tally.errors[error_name(pb, r.error.kind)] += 1
                if use_session and r.error.kind == pb.ERROR_SESSION_CLOSED:
                    sid = None
            if use_session and r.WhichOneof("body") == "error" and "died" in r.error.message:
                sid = None
        except (OSError, AssertionError) as e:
            with tally.lock:
                tally.unanswered.append(f"request {next_id - 1}: {e}")
            conn = None
    if conn is not None:
        # Anything more on this connection is a second answer to something.
        conn.s.settimeout(2)
        try:
            while True:
                r = conn.recv()
                if r is None:
                    break
                if r.WhichOneof("body") in ("result", "error"):
                    tally.twice.append(r.id)
        except OSError:
            pass
        if sid:
            try:
                conn.s.settimeout(30)
                conn.send(next_id, session_close=pb.SessionClose(session_id=sid))
                conn.until(next_id, ("session_closed", "error"))
            except (OSError, AssertionError):
                pass
        conn.close()


def killer(daemon_pid, every, rng, stop, kills):
    while not stop.wait(rng.expovariate(1.0 / every)):
        procs = [p for p in descendants(daemon_pid)
                 if p[1] == "sbx-vmworker" or p[1].startswith("qemu-system")]
        if procs:
            pid, comm = rng.choice(procs)
            try:
                os.kill(pid, signal.SIGKILL)
                kills[comm.split("-")[0] if comm.startswith("qemu") else comm] += 1
            except ProcessLookupError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="requests in all")
    ap.add_argument("-j", type=int, default=4, help="clients at once")
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build", "sbxd"))
    ap.add_argument("--kill-every", type=float, default=2.0,
                    help="mean seconds between SIGKILLs of a worker or QEMU (0: none)")
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    pb = wire.pb()
    d = tempfile.mkdtemp(prefix="sbx-soak-")
    sock = os.path.join(d, "s.sock")
    env = dict(os.environ, EXEC_SANDBOX_SOCKET=sock,
               EXEC_SANDBOX_VMWORKER=os.path.join(os.path.dirname(args.sbxd), "sbx-vmworker"))
    log = os.path.join(d, "sbxd.log")
    p = subprocess.Popen([args.sbxd, "--socket", sock, "--max-concurrent-vms", str(args.j + 2)],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                         stdin=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not os.path.exists(sock) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    tally = Tally()
    kills = collections.Counter()
    stop = threading.Event()
    t0 = time.time()
    # warm up (the snapshot is built in the background on first use) before the first RSS
    worker(sock, 3, tally, random.Random(seed), time.time() + 300, pb)
    rss_first = rss_kb(p.pid)
    kt = threading.Thread(target=killer, args=(p.pid, args.kill_every, random.Random(seed + 1),
                                               stop, kills), daemon=True)
    if args.kill_every > 0:
        kt.start()
    per = (args.runs - 3 + args.j - 1) // args.j
    ts = [threading.Thread(target=worker, args=(sock, per, tally, random.Random(seed + 2 + i),
                                                t0 + args.max_seconds, pb))
          for i in range(args.j)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    alive = p.poll() is None
    time.sleep(2)  # abandoned runs are being stopped
    rss_last = rss_kb(p.pid) if alive else 0
    elapsed = time.time() - t0
    daemon_pid = p.pid
    p.terminate()
    try:
        rc = p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    time.sleep(1)
    # Only what this daemon made: other daemons may be running VMs on this host meanwhile.
    mine = f"/exec-sandbox/vm-{daemon_pid}-"
    leaked_procs = [(pid, exe) for pid, exe in project_processes() if mine in cgroup_of(pid)]
    leaked_cgroups = [x for x in project_cgroups() if mine in x]
    leaked_dirs = [x for x in os.listdir("/tmp") if x.startswith(f"sbxd-{daemon_pid}-")]
    leaked_socket = os.path.exists(sock)
    text = open(log).read()
    sanitizer = any(s in text for s in ("AddressSanitizer", "runtime error:", "LeakSanitizer"))

    print(f"soak: seed {seed}, {args.j} clients, {elapsed:.0f} s")
    print(f"  requests sent (awaited):   {tally.sent}")
    print(f"  answered exactly once:     {tally.answered_once}  (results {tally.results})")
    print(f"  answered twice:            {len(tally.twice)}")
    print(f"  never answered:            {len(tally.unanswered)}")
    print(f"  abandoned by their client: {tally.abandoned}")
    print(f"  errors by kind:            {dict(tally.errors) or '-'}")
    print(f"  SIGKILLs sent:             {dict(kills) or '-'}")
    print(f"  sbxd alive to the end:     {alive}  (exit {rc} on SIGTERM)")
    print(f"  sbxd RSS first / last:     {rss_first} kB / {rss_last} kB")
    print(f"  leaked processes:          {len(leaked_procs)} {leaked_procs[:5]}")
    print(f"  leaked cgroups:            {len(leaked_cgroups)}")
    print(f"  leaked run dirs:           {len(leaked_dirs)}")
    print(f"  leaked socket:             {int(leaked_socket)}")
    for u in tally.unanswered[:5]:
        print("    unanswered:", u)
    bad = (tally.twice or tally.unanswered or not alive or rc not in (0, -signal.SIGTERM)
           or leaked_procs or leaked_cgroups or leaked_dirs or leaked_socket or sanitizer
           or tally.answered_once != tally.sent)
    if bad:
        print("soak: FAILED (sbxd log tail follows)\n" + text[-3000:])
    shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
