"""Hostile local peers: clients that close, stall, flood or lie at every step of the protocol.

Each attack runs against the suite's ASan daemon (a use-after-free or leak there fails the run at
the end) and, where memory is the promise, against a release daemon whose RSS is read before
and after. After each: the daemon is alive and `sbx run 'print(1)'` answers.
"""
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from harness import ROOT, descendants, eq, ok, test, wait_for
import wire


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_s(pid):
    st = open(f"/proc/{pid}/stat").read()
    f = st[st.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def alive_and_serving(c, p, env=None, what=""):
    ok(p.poll() is None, f"sbxd died ({what}): exit {p.returncode}")
    r = c.sbx("run", "-q", "print(1)", env=env)
    eq((r.returncode, r.out), (0, "1\n"), f"a run after {what}: {r.err}")


def raise_nofile(n=4096):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


class Daemon:
    """A daemon of the test's own, on its own socket, with its own settings."""

    def __init__(self, c, name, *flags, binary=None, prefix=(), env=None):
        self.dir = tempfile.mkdtemp(prefix=f"sbx-{name}-")
        self.sock = os.path.join(self.dir, "s.sock")
        self.log = os.path.join(self.dir, "log")
        self.env = c.env(EXEC_SANDBOX_SOCKET=self.sock, **(env or {}))
        if binary:  # the release daemon runs the release worker beside it
            self.env["EXEC_SANDBOX_VMWORKER"] = os.path.join(os.path.dirname(binary),
                                                             "sbx-vmworker")
        self.p = subprocess.Popen([*prefix, binary or c.sbxd_bin, "--socket", self.sock, *flags],
                                  stdin=subprocess.DEVNULL, stdout=open(self.log, "w"),
                                  stderr=subprocess.STDOUT, env=self.env)
        wait_for(lambda: self.p.poll() is not None or os.path.exists(self.sock), 30, "sbxd")
        ok(self.p.poll() is None, "sbxd started: " + open(self.log).read()[-1000:])

    def logtext(self):
        return open(self.log).read()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        log = self.logtext()
        shutil.rmtree(self.dir, ignore_errors=True)
        for bad in ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer"):
            ok(bad not in log, "sanitizer report in a test daemon's log:\n" + log[-3000:])
        return self.p.returncode


def connect(path, timeout=10):
    """A blocking connect: it waits while the daemon's listen backlog is full."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(timeout)
    return s


def send_and_close(path, data, n=200):
    """n connections, each sends data and closes at once (the pattern that crashed sbxd)."""
    for _ in range(n):
        s = connect(path)
        try:
            s.sendall(data)
        except OSError:
            pass
        s.close()


def open_session(c, env):
    r = c.sbx("session", "new", env=env, check_rc=0)
    return r.out.strip()


def attacks_by_state(c, sock, env):
    """Send-and-close in every protocol state; returns nothing, raises on a dead daemon."""
    pb = wire.pb()
    status = wire.frame(wire.request(7, status=pb.StatusRequest()))
    run = wire.frame(wire.request(2, run=pb.RunRequest(
        language="python", code=b"while True: print('x' * 1000)", stream=True)))
    import json
    def daemon_status():
        return json.loads(c.sbx("status", "--json", env=env).stdout)
    before = daemon_status()
    sid = open_session(c, env)
    upload = wire.frame(wire.request(3, file_write=pb.FileWrite(
        session_id=sid, path="up.bin", size=1 << 20, sha256=b"\0" * 32)))
    chunk = wire.frame(wire.request(3, file_chunk=wire.files().FileChunk(zdata=b"\x28\xb5\x2f\xfd" + b"x" * 64)))
    sexec = wire.frame(wire.request(4, session_exec=pb.SessionExec(
        session_id=sid, code=b"import time; time.sleep(0.5); print('ran')", stream=True)))
    hello = wire.hello_frame()
    sopen = wire.frame(wire.request(5, session_open=pb.SessionOpen(language="python")))
    cases = {
        "before Hello": (status, 200),
        "refused Hello": (wire.hello_frame(version=999) + status, 200),
        "mid-frame": (hello + status[:5], 200),
        "header only": (hello[:3], 200),
        "after Hello": (hello + status, 200),
        "mid-run": (hello + run, 20),
        "mid-upload": (hello + upload + chunk, 20),
        "mid-session exec": (hello + sexec, 20),
        "garbage": (hello + struct.pack(">I", 6) + b"\xff" * 6, 200),
    }
    for what, (data, n) in cases.items():
        send_and_close(sock, data, n)
    # A session open whose client goes before its VM is ready (after its Hello was answered, so
    # the open is read while the connection lives).
    for _ in range(5):
        conn = wire.Conn(sock).hello()
        conn.s.sendall(sopen)
        time.sleep(0.05)
        conn.close()
    # Sessions whose opener vanished before learning their id are stopped, not kept idle: only
    # the test's own session is left, with its one VM.
    def settled():
        st = daemon_status()
        return (st["sessions"] == before["sessions"] + 1 and st["queued"] == 0 and
                st["running_vms"] == before["running_vms"] + 1)
    wait_for(settled, 60, "abandoned runs and session opens stopped")
    ok("its opener went away while it was starting" in open(c.log).read(),
       "a session whose opener vanished was stopped")
    # the session survived its clients' vanishing and still serves its owner
    r = c.sbx("session", "exec", sid, "print('still here')", env=env)
    eq((r.returncode, r.out.strip().splitlines()[-1:]), (0, ["still here"]),
       "session after the attacks: " + r.err)
    c.sbx("session", "close", sid, env=env)


@test()
def hostile_clients_send_and_close_in_every_state(c):
    attacks_by_state(c, c.sock, c.env())
    alive_and_serving(c, c.daemon, what="send-and-close in every state")


@test()
def hostile_clients_idle_slow_huge_and_deaf(c):
    """1,000 idle connections, a slow loris, a 4 GiB frame and a client that never reads, each
    against a release daemon whose RSS must come back within 10 MB."""
    raise_nofile()
    rel = os.path.join(ROOT, "build", "sbxd")
    d = Daemon(c, "hostile", "--hello-timeout-seconds", "2", "--frame-timeout-seconds", "3",
               "--max-client-buffer-mb", "4", "--max-connections", "300", binary=rel)
    try:
        alive_and_serving(c, d.p, d.env, "start")
        base = rss_kb(d.p.pid)
        pb = wire.pb()

        # 1,000 idle connections: the daemon keeps serving meanwhile (idle ones without a
        # Hello make way) and closes them all on its own.
        idle = []
        for _ in range(1000):
            try:
                idle.append(connect(d.sock, timeout=10))
            except OSError:
                break
        eq(len(idle), 1000, "1,000 connects accepted or queued by the kernel")
        t0 = time.time()
        alive_and_serving(c, d.p, d.env, "1,000 idle connections held open")
        closed = sum(wire.closed_by_peer(s, 8) for s in idle)
        eq(closed, 1000, f"idle connections closed by the daemon ({time.time() - t0:.0f} s)")
        for s in idle:
            s.close()

        # slow loris: 3 bytes of a header, before and after Hello
        loris = connect(d.sock)
        loris.sendall(wire.hello_frame()[:3])
        t0 = time.time()
        ok(wire.closed_by_peer(loris, 10), "loris before Hello closed")
        ok(time.time() - t0 < 5, "within the Hello deadline")
        loris = wire.Conn(d.sock).hello()
        loris.s.sendall(struct.pack(">I", 100) + b"abc")
        t0 = time.time()
        ok(loris.closed_by_peer(10), "loris inside a frame closed")
        ok(2 <= time.time() - t0 < 8, f"by the frame deadline ({time.time() - t0:.1f} s)")

        # a frame that claims 4 GiB: closed before anything is allocated for it
        big = wire.Conn(d.sock).hello()
        big.s.sendall(b"\xff\xff\xff\xff" + b"x" * 100)
        ok(big.closed_by_peer(5), "4 GiB frame closes the connection")
        ok(rss_kb(d.p.pid) - base < 10 * 1024, "no allocation for the claimed 4 GiB")

        # a client that asks for output and never reads it: dropped at max_client_buffer_mb
        deaf = wire.Conn(d.sock).hello()
        deaf.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for i in range(8):
            deaf.send(100 + i, run=pb.RunRequest(
                language="python", code=b"import sys\nfor i in range(20): sys.stdout.write('x' * 50000)",
                stream=True, timeout_seconds=60))
        wait_for(lambda: "does not read its replies" in d.logtext(), 180, "the deaf client dropped")
        deaf.close()
        alive_and_serving(c, d.p, d.env, "a client that never reads")
        wait_for(lambda: not [x for x in descendants(d.p.pid) if x[1] == "sbx-vmworker"], 60,
                 "its runs' VMs stopped")
        time.sleep(1)
        grown = rss_kb(d.p.pid) - base
        print(f"    sbxd RSS: {base} kB at start, {base + grown} kB after the attacks")
        ok(grown < 10 * 1024, f"sbxd RSS back within 10 MB of the start (grew {grown} kB)")
    finally:
        eq(d.stop(), 0, "release daemon exits cleanly")


@test()
def hostile_accept_out_of_descriptors_does_not_spin(c):
    """With its descriptors used up, sbxd pauses accepting (no busy loop) and recovers."""
    raise_nofile()
    prlimit = shutil.which("prlimit")
    ok(prlimit, "prlimit (util-linux) is needed")
    d = Daemon(c, "emfile", "--max-connections", "5000", "--hello-timeout-seconds", "30",
               prefix=[prlimit, "--nofile=96"])
    try:
        held = []
        for _ in range(200):
            s = connect(d.sock)
            s.sendall(wire.hello_frame())
            held.append(s)
        time.sleep(1)
        t0 = cpu_s(d.p.pid)
        time.sleep(3)
        spent = cpu_s(d.p.pid) - t0
        ok(spent < 0.6, f"sbxd used {spent:.2f} s of CPU in 3 s while out of descriptors")
        ok("pausing new connections" in d.logtext(), "EMFILE logged")
        for s in held:
            s.close()
        alive_and_serving(c, d.p, d.env, "running out of descriptors")
    finally:
        d.stop()


@test()
def idle_connection_does_not_hold_off_idle_exit(c):
    d = Daemon(c, "idle", "--idle-exit-seconds", "2")
    try:
        conn = wire.Conn(d.sock).hello()
        try:
            d.p.wait(12)
        except subprocess.TimeoutExpired:
            raise AssertionError("an idle connection kept the daemon up past idle_exit_seconds")
        eq(d.p.returncode, 0, "idle exit is a clean exit")
        conn.close()
    finally:
        d.stop()


@test()
def run_queue_is_bounded(c):
    d = Daemon(c, "queue", "--max-concurrent-vms", "1", "--max-queued", "1")
    try:
        long = subprocess.Popen([c.sbx_bin, "run", "-q", "-l", "raw", "-t", "60",
                                 "echo started; sleep 30"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=d.env)
        eq(long.stdout.readline(), b"started\n", "first run holds the only slot")
        queued = subprocess.Popen([c.sbx_bin, "run", "-q", "print('queued')"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env)
        wait_for(lambda: "waiting for a slot" in d.logtext(), 20, "second run queued")
        t0 = time.time()
        r = c.sbx("run", "-q", "print('third')", env=d.env)
        ok(r.returncode != 0 and "max_queued" in r.err, f"third run refused: {r.returncode} {r.err}")
        ok(time.time() - t0 < 10, "refused at once, not after the queue timeout")
        long.kill()
        long.wait()
        out, err = queued.communicate(timeout=120)
        eq((queued.returncode, out), (0, b"queued\n"), "the queued run ran: " + err.decode())
    finally:
        d.stop()


@test()
def session_queue_is_bounded(c):
    d = Daemon(c, "squeue", "--max-session-queue", "2")
    try:
        sid = open_session(c, d.env)
        pb = wire.pb()
        conn = wire.Conn(d.sock, timeout=120).hello()
        for i in range(4):
            conn.send(10 + i, session_exec=pb.SessionExec(session_id=sid,
                                                          code=b"import time; time.sleep(1)"))
        got = {}
        while len(got) < 4:
            r = conn.recv()
            ok(r is not None, "connection open")
            if r.WhichOneof("body") in ("result", "error"):
                got[r.id] = r
        kinds = sorted(r.WhichOneof("body") for r in got.values())
        eq(kinds, ["error", "error", "result", "result"], "two queued, two refused")
        for r in got.values():
            if r.WhichOneof("body") == "error":
                ok("max_session_queue" in r.error.message, r.error.message)
                eq(r.error.kind, pb.ERROR_VM_CAPACITY, "capacity error")
        conn.close()
    finally:
        d.stop()


@test()
def sessions_belong_to_their_uid(c):
    """Another allowed uid can neither list, exec in, read/write files of nor close a session;
    root can see them all."""
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    d = Daemon(c, "owner", "--allowed-uids", "65534")
    os.chmod(d.dir, 0o755)
    os.chmod(d.sock, 0o666)
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", c.sbx_bin]

    def as_nobody(*args):
        r = subprocess.run(nobody + list(args), capture_output=True, env=d.env, timeout=120,
                           cwd="/")
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    try:
        sid = open_session(c, d.env)
        c.sbx("session", "exec", sid, "secret = 42", env=d.env, check_rc=0)
        rc, out, err = as_nobody("session", "ls")
        eq(rc, 0, "nobody may list: " + err)
        ok(sid not in out, "root's session not listed for another uid: " + out)
        for args in (["session", "exec", sid, "print(secret)"],
                     ["session", "download", sid, "x", "/tmp/sbx-e2e-nobody-download"],
                     ["session", "upload", sid, "/etc/hostname", "stolen"],
                     ["session", "files", sid],
                     ["session", "close", sid]):
            rc, out, err = as_nobody(*args)
            ok(rc != 0 and "42" not in out and ("no session" in err or "closed" in err),
               f"{args[1]} refused as no such session: {rc} {out} {err}")
        r = c.sbx("session", "exec", sid, "print(secret)", env=d.env, check_rc=0)
        eq(r.out.strip().splitlines()[-1], "42", "the session is intact for its owner")
        rc, out, err = as_nobody("session", "new")
        eq(rc, 0, "nobody opens its own session: " + err)
        theirs = out.strip()
        r = c.sbx("session", "ls", env=d.env, check_rc=0)
        ok(theirs in r.out and sid in r.out, "root sees every session: " + r.out)
        c.sbx("session", "close", theirs, env=d.env, check_rc=0)
        c.sbx("session", "close", sid, env=d.env, check_rc=0)
    finally:
        d.stop()


@test()
def wedged_worker_is_killed_by_sbxd_deadline(c):
    """A worker that stops answering (SIGSTOP) is killed at timeout + boot timeout + grace and
    the run gets a timeout error; the slot is free again."""
    d = Daemon(c, "wedge", "--run-grace-seconds", "1", "--boot-timeout-seconds", "10",
               "--max-concurrent-vms", "1")
    try:
        p = subprocess.Popen([c.sbx_bin, "run", "-q", "-l", "raw", "-t", "3", "echo go; sleep 60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env)
        eq(p.stdout.readline(), b"go\n", "running")
        worker = [x for x, comm in descendants(d.p.pid) if comm == "sbx-vmworker"]
        eq(len(worker), 1, "one worker")
        os.kill(worker[0], signal.SIGSTOP)
        t0 = time.time()
        out, err = p.communicate(timeout=60)
        took = time.time() - t0
        # The VM failed, not the code: a sandbox error (125), of the timeout kind.
        eq(p.returncode, 125, f"sandbox error exit code ({err.decode()})")
        ok("VmTimeoutError" in err.decode() and "did not answer" in err.decode(),
           "sbxd's own deadline: " + err.decode())
        ok(took < 20, f"killed by the deadline ({took:.0f} s)")
        wait_for(lambda: not descendants(d.p.pid), 20, "the wedged worker reaped")
        alive_and_serving(c, d.p, d.env, "a wedged worker")
    finally:
        d.stop()


@test()
def two_live_vms_never_share_a_uid(c):
    runs = [c.sbx_bin, "run", "-q", "-l", "raw", "-t", "60", "echo up; sleep 30"]
    ps = [subprocess.Popen(runs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env())
          for _ in range(3)]
    try:
        for p in ps:
            eq(p.stdout.readline(), b"up\n", "running")
        uids = []
        for pid, comm in descendants(c.daemon.pid):
            if comm.startswith("qemu-system"):
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("Uid:"):
                        uids.append(int(line.split()[1]))
        eq(len(uids), 3, f"three QEMUs: {uids}")
        eq(len(set(uids)), 3, f"each VM its own uid: {uids}")
        ok(all(u >= 100000 for u in uids), f"from the reserved range: {uids}")
    finally:
        for p in ps:
            p.kill()
            p.wait()


@test()
def soak_100_with_kills_and_disconnects(c):
    """scripts/soak.py at CI size: 100 runs and session execs at -j 4 against the ASan daemon,
    while workers and QEMUs are SIGKILLed and clients vanish; every awaited request is answered
    exactly once and nothing leaks (the script's own checks, its exit status)."""
    r = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "soak.py"), "--runs",
                        "100", "-j", "4", "--kill-every", "2", "--sbxd", c.sbxd_bin,
                        "--max-seconds", "600"],
                       capture_output=True, text=True, timeout=900, env=c.env())
    print("    " + "\n    ".join(r.stdout.strip().splitlines()[:16]))
    eq(r.returncode, 0, "soak: " + r.stdout[-3000:] + r.stderr[-2000:])
