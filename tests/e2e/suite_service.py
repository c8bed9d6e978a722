"""Running sbxd as a system service (issue 15, part): the systemd units in contrib/systemd parse,
and socket activation works for real through systemd's own `systemd-socket-activate` (it listens,
then starts sbxd with the socket as fd 3 and LISTEN_PID/LISTEN_FDS, as systemd does): sbxd
serves on it, reports it, and leaves it in place for the next start; a bad activation is refused
with a clear message."""
import json
import os
import shutil
import signal
import socket
import subprocess

from harness import *  # noqa: F401,F403

UNITS = os.path.join(ROOT, "contrib", "systemd")


@test(fast=True)
def systemd_units_parse(c):
    if not shutil.which("systemd-analyze"):
        raise Skip("no systemd-analyze on this host")
    r = subprocess.run(["systemd-analyze", "verify", os.path.join(UNITS, "sbxd.socket"),
                        os.path.join(UNITS, "sbxd.service")], capture_output=True, text=True,
                       timeout=60)
    # The one complaint allowed: the binary is not installed at /usr/local/bin on a build host.
    other = [ln for ln in (r.stdout + r.stderr).splitlines()
             if ln.strip() and "/usr/local/bin/sbxd is not executable" not in ln]
    eq(other, [], "systemd-analyze verify")
    unit = open(os.path.join(UNITS, "sbxd.service")).read()
    for opt in ("Delegate=yes", "NoNewPrivileges=yes", "ProtectHome=yes", "Requires=sbxd.socket"):
        ok(opt in unit, f"{opt} in sbxd.service")


@test(fast=True)
def socket_activation(c):
    if not shutil.which("systemd-socket-activate"):
        raise Skip("no systemd-socket-activate on this host")
    path = os.path.join(c.tmp, "activated.sock")
    log = open(os.path.join(c.tmp, "activated.log"), "w")
    env = c.env(EXEC_SANDBOX_SOCKET="")
    env.pop("EXEC_SANDBOX_SOCKET")
    p = subprocess.Popen(["systemd-socket-activate", "-l", path, c.sbxd_bin,
                          "--idle-exit-seconds", "0"], stdout=log, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(path), 10, "the activator's socket")
        # The first connection starts sbxd, which takes the socket as fd 3.
        r = c.sbx("--socket", path, "status", "--json", env=env, timeout=60)
        eq(r.returncode, 0, "status through the activated socket: " + r.err)
        st = json.loads(r.out)
        eq(st["socket"], path, "sbxd reports the socket it was given")
        sbxd_pid = st["pid"]
        # The activator execs the service in its place, as systemd starts it.
        eq(open(f"/proc/{sbxd_pid}/comm").read().strip(), "sbxd", "sbxd serves it")
        with open(os.path.join(c.tmp, "activated.log")) as f:
            ok("control socket from socket activation" in f.read(), "logged")
        # Stopped, sbxd leaves the socket to its owner (systemd starts the next one on it).
        eq(sbxd_pid, p.pid, "in the activator's place")
        os.kill(sbxd_pid, signal.SIGTERM)
        eq(p.wait(30), 0, "sbxd stopped cleanly")
        ok(os.path.exists(path), "the activated socket is not removed by sbxd")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
        log.close()
    # Activation with two sockets: refused, clearly.
    s1 = socket.socket(socket.AF_UNIX)
    s1.bind(os.path.join(c.tmp, "a1.sock"))
    s1.listen()
    r = subprocess.run(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" --idle-exit-seconds 0',
                        c.sbxd_bin], pass_fds=(s1.fileno(),), capture_output=True, text=True,
                       env=env, timeout=30)
    s1.close()
    ok(r.returncode != 0 and "passed 2 sockets" in r.stdout + r.stderr,
       f"two sockets refused: {r.returncode} {r.stdout[-500:]} {r.stderr[-500:]}")
