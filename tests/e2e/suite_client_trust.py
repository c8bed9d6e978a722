"""The client trusts only its own daemon (issue 9, item 2).

On the implicit per-user socket, sbx/libsbx must refuse a directory that another uid owns or
others can write, and a daemon whose SO_PEERCRED uid is neither the user's nor root's, before a
single byte (Hello, code, env) is sent. A socket named explicitly is the user's choice: any uid
may serve it, and `sbx status` shows which.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

from harness import Ctx, eq, ok, test, wait_for  # noqa: F401

NOBODY = 65534
SECRET = "hunter2-must-not-leave"

# A listener that counts what it is sent, one line per event, and never answers.
LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    print("connection", flush=True)
    c.settimeout(20)
    n = 0
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
    except OSError:
        pass
    print("bytes", n, flush=True)
    c.close()
"""


def _setpriv():
    p = shutil.which("setpriv")
    ok(p, "setpriv (util-linux) is needed")
    return [p, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class Planted:
    """A listening socket bound by uid 65534 at `bind_path` (moved to `move_to` once listening,
    when given: SO_PEERCRED keeps the uid that called listen())."""

    def __init__(self, bind_path, move_to=None):
        # Debian's interpreter, which any uid may run (an interpreter under /root may not be).
        self.p = subprocess.Popen(_setpriv() + ["/usr/bin/python3", "-c", LISTENER, bind_path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        line = self.p.stdout.readline()
        if line != b"ready\n":
            self.p.kill()
            raise AssertionError("planted listener did not start: " + self.p.stderr.read().decode())
        if move_to:
            os.rename(bind_path, move_to)

    def report(self):
        """(connections, total bytes received), once the listener has seen the clients go."""
        time.sleep(0.5)
        self.p.kill()
        out = self.p.communicate()[0].decode().split("\n")
        conns = sum(1 for x in out if x == "connection")
        total = sum(int(x.split()[1]) for x in out if x.startswith("bytes "))
        return conns, total


def _env(c, **extra):
    env = c.env()
    env.pop("EXEC_SANDBOX_SOCKET", None)
    env["EXEC_SANDBOX_SBXD"] = c.sbxd_bin
    env.update(extra)
    return env


def _runtime_dir():
    """An XDG_RUNTIME_DIR that uid 65534 can reach into (mode 0755, root's)."""
    rt = tempfile.mkdtemp(prefix="sbx-trust-", dir="/tmp")
    os.chmod(rt, 0o755)
    return rt


def _refused(c, env, sock, words):
    r = c.sbx("run", "-q", "-e", f"SECRET={SECRET}", "print(1)", env=env, timeout=60)
    ok(r.returncode != 0, f"sbx run must fail (exit {r.returncode}): {r.out} {r.err}")
    for w in words + [sock, "nothing was sent"]:
        ok(w in r.err, f"error names {w!r}: {r.err}")
    return r


@test()
def client_refuses_socket_dir_of_another_uid(c):
    rt = _runtime_dir()
    try:
        d = os.path.join(rt, "exec-sandbox")
        os.mkdir(d, 0o700)
        os.chown(d, NOBODY, NOBODY)
        sock = os.path.join(d, "sbxd.sock")
        planted = Planted(sock)
        env = _env(c, XDG_RUNTIME_DIR=rt)
        _refused(c, env, sock, [f"belongs to uid {NOBODY}", "--socket"])
        st = c.sbx("status", env=env, timeout=60)
        ok(st.returncode != 0 and f"uid {NOBODY}" in st.err, "status refuses too: " + st.err)
        eq(planted.report(), (0, 0), "connections and bytes the planted socket got")
        ok(not os.path.exists(os.path.join(d, "sbxd.log")), "no daemon was started there")
    finally:
        shutil.rmtree(rt, ignore_errors=True)


@test()
def client_refuses_daemon_of_another_uid_in_own_dir(c):
    rt = _runtime_dir()
    stage = tempfile.mkdtemp(prefix="sbx-stage-", dir="/tmp")
    os.chown(stage, NOBODY, NOBODY)
    try:
        d = os.path.join(rt, "exec-sandbox")
        os.mkdir(d, 0o700)  # the user's own, as it should be
        sock = os.path.join(d, "sbxd.sock")
        planted = Planted(os.path.join(stage, "s.sock"), move_to=sock)
        env = _env(c, XDG_RUNTIME_DIR=rt)
        _refused(c, env, sock, [f"runs as uid {NOBODY}", "--socket", "EXEC_SANDBOX_SOCKET"])
        r = c.sbx("session", "new", env=env, timeout=60)
        ok(r.returncode != 0 and f"uid {NOBODY}" in r.err, "session new refused: " + r.err)
        conns, total = planted.report()
        ok(conns >= 1, "the client did connect (the directory was fine)")
        eq(total, 0, "bytes the planted daemon received (no Hello, no code, no env)")
    finally:
        shutil.rmtree(rt, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


@test()
def client_refuses_world_writable_socket_dir(c):
    rt = _runtime_dir()
    try:
        d = os.path.join(rt, "exec-sandbox")
        os.mkdir(d)
        os.chmod(d, 0o777)  # the user's, but anyone can put a socket in it
        sock = os.path.join(d, "sbxd.sock")
        planted = Planted(sock)
        env = _env(c, XDG_RUNTIME_DIR=rt)
        _refused(c, env, sock, ["writable by everyone", "0777"])
        eq(planted.report(), (0, 0), "connections and bytes the planted socket got")
    finally:
        shutil.rmtree(rt, ignore_errors=True)


@test()
def client_refuses_planted_tmp_fallback(c):
    """Without a usable XDG_RUNTIME_DIR the per-user socket is /tmp/exec-sandbox-<uid>/sbxd.sock,
    in the shared /tmp: the place another user would plant a directory first."""
    d = f"/tmp/exec-sandbox-{os.getuid()}"
    env = _env(c, XDG_RUNTIME_DIR="/nonexistent/runtime")
    st = c.sbx("status", "--json", env=env, timeout=60)
    eq(json.loads(st.out)["socket"], d + "/sbxd.sock", "the fallback path")
    if os.path.lexists(d):
        # Someone's real per-user daemon may live there: check it is trusted, plant nothing.
        ok(os.lstat(d).st_uid == os.getuid(), f"{d} exists and is ours")
        print(f"    [{d} exists: planted case done in XDG_RUNTIME_DIR only]")
        return
    try:
        os.mkdir(d, 0o700)
        os.chown(d, NOBODY, NOBODY)
        planted = Planted(os.path.join(d, "sbxd.sock"))
        _refused(c, env, d + "/sbxd.sock", [f"belongs to uid {NOBODY}"])
        eq(planted.report(), (0, 0), "connections and bytes the planted socket got")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test()
def client_own_and_named_daemons_still_work(c):
    # The user's own daemon, autostarted into a fresh per-user directory.
    rt = _runtime_dir()
    try:
        env = _env(c, XDG_RUNTIME_DIR=rt, EXEC_SANDBOX_IDLE_EXIT_SECONDS="3")
        r = c.sbx("run", "-q", "-e", "K=v", "import os; print(os.environ['K'])", env=env,
                  timeout=180)
        eq((r.returncode, r.out), (0, "v\n"), "autostarted own daemon: " + r.err)
        d = os.path.join(rt, "exec-sandbox")
        eq(os.stat(d).st_mode & 0o777, 0o700, "per-user directory mode")
        j = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        eq(j["uid"], os.getuid(), "own daemon's uid in status")
        wait_for(lambda: not os.path.exists(f"/proc/{j['pid']}"), 30, "the own daemon to exit")
    finally:
        shutil.rmtree(rt, ignore_errors=True)

    # A daemon run by another uid, named explicitly: the user's choice, served.
    d = tempfile.mkdtemp(prefix="sbx-named-", dir="/tmp")
    os.makedirs(os.path.join(d, "cache"))
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", d], check=True)
    sock = os.path.join(d, "s.sock")
    denv = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_CACHE_DIR=os.path.join(d, "cache"),
                 HOME=d)
    log = os.path.join(c.tmp, "named.log")
    p = subprocess.Popen(_setpriv() + [c.sbxd_bin, "--socket", sock, "--accel", "tcg"],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=denv, cwd="/")
    try:
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 15, "sbxd as 65534")
        ok(p.poll() is None, "sbxd as 65534 runs: " + open(log).read()[-1000:])
        for env, args in [(_env(c), ["--socket", sock]), (_env(c, EXEC_SANDBOX_SOCKET=sock), [])]:
            r = c.sbx("status", *args, env=env, check_rc=0)
            ok(f"uid {NOBODY}" in r.out, "status text shows the daemon's uid: " + r.out)
            j = json.loads(c.sbx("status", "--json", *args, env=env, check_rc=0).out)
            eq(j["uid"], NOBODY, "status --json uid")
            eq(j["pid"], p.pid, "the daemon we started")
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)
