"""The daemon: status, accelerator probe, crashes of workers and QEMUs, config, autostart, valgrind, the unprivileged path."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from harness import *  # noqa: F401,F403
from suite_isolation import _long_run, _status


@test(fast=True)
def status_reports_accelerator(c):
    r = c.sbx("status", "--json", check_rc=0)
    j = json.loads(r.out)
    ok(j.get("accelerator") in ("kvm", "tcg"), f"accelerator in status: {j}")
    ok(j.get("accel_reason"), "accel reason")


@test()
def accel_auto_probe_falls_back_and_caches(c):
    cache = os.path.join(c.tmp, "probe-cache")
    sock = os.path.join(c.tmp, "probe.sock")
    log = os.path.join(c.tmp, "probe.log")
    images = os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                          os.path.expanduser("~/.cache/exec-sandbox"), "images")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--accel", "auto", "--cache-dir", cache, "--images-dir", images,
                       sock=sock, log=log, env=env)
    try:
        t0 = time.time()
        j, _ = c.run_json("print(1)", env=env)
        took = time.time() - t0
        eq(j["stdout"], "1\n", "runs after the probe")
        kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        print(f"    [auto verdict: {st['accelerator']} ({st['accel_reason']}); "
              f"first run {took:.1f}s]")
        eq(j["accelerator"], st["accelerator"], "result names the accelerator in force")
        if kvm_usable:
            ok(os.path.exists(os.path.join(cache, "accel-verdict")), "verdict cached")
            ok("probe" in st["accel_reason"], st["accel_reason"])
        p.terminate()
        p.wait(10)
        p = c.start_daemon("--accel", "auto", "--cache-dir", cache, "--images-dir", images,
                           sock=sock, log=log, env=env)
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        if kvm_usable:
            ok("cached" in st["accel_reason"], "second daemon uses the cache: " + st["accel_reason"])
    finally:
        p.terminate()
        p.wait(10)


def _kill_mid_run(c, victim):
    """Start a long run, SIGKILL its worker or QEMU once the code is running."""
    proc = subprocess.Popen([c.sbx_bin, "run", "-q", "-t", "60",
                             "import time\nprint('started', flush=True)\ntime.sleep(50)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env())
    ok(proc.stdout.readline() == b"started\n", "run started")
    procs = descendants(c.daemon.pid)
    target = [p for p, comm in procs if comm.startswith(victim)]
    ok(target, f"no {victim} under sbxd: {procs}")
    os.kill(target[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


@test(fast=True)
def worker_sigkill_is_contained(c):
    rc, err = _kill_mid_run(c, "sbx-vmworker")
    eq(rc, 125, "sandbox error exit: " + err)
    ok("CommunicationError" in err and "retry" in err, "clear transient error: " + err)
    c.sbx("run", "-q", "print('still serving')", check_rc=0)


@test()
def qemu_sigkill_is_contained(c):
    rc, err = _kill_mid_run(c, "qemu-system")
    eq(rc, 125, "sandbox error exit: " + err)
    ok("CommunicationError" in err, "transient error: " + err)
    eq(c.sbx("run", "-q", "print(2)", check_rc=0).out, "2\n", "next run")


@test()
def host_kills_vm_when_guest_stops_answering(c):
    """A frozen guest (QEMU stopped) cannot hold a run past its timeout plus the host's grace."""
    proc = subprocess.Popen([c.sbx_bin, "run", "--json", "-q", "-t", "2",
                             "import time\nprint('started', flush=True)\ntime.sleep(50)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env())
    qemu = wait_for(lambda: [p for p, comm in descendants(c.daemon.pid)
                             if comm.startswith("qemu-system")], 30, "QEMU to start")
    wait_for(lambda: json.loads(c.sbx("status", "--json").out)["running_vms"] >= 1, 30, "run")
    time.sleep(1.5)  # let the guest boot and start the code
    t0 = time.time()
    os.kill(qemu[0], signal.SIGSTOP)
    out, err = proc.communicate(timeout=60)
    took = time.time() - t0
    j = json.loads(out)
    eq(j["timed_out"], True, "timed out: " + err.decode())
    eq(proc.returncode, 124, "exit status")
    ok(took < 15, f"host gave up after {took:.1f}s")
    ok(not os.path.exists(f"/proc/{qemu[0]}"), "frozen QEMU was killed")


@test()
def config_from_environment(c):
    sock = os.path.join(c.tmp, "envcfg.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_DEFAULT_TIMEOUT_SECONDS="2",
                EXEC_SANDBOX_DEFAULT_MEMORY_MB="384")
    p = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "envcfg.log"), env=env)
    try:
        j, _ = c.run_json("-l", "raw", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2; sleep 20",
                          env=env)
        eq(j["timed_out"], True, "default timeout 2 s from EXEC_SANDBOX_DEFAULT_TIMEOUT_SECONDS")
        ok(256 * 1024 < int(j["stdout"]) <= 384 * 1024, "memory from env: " + j["stdout"])
    finally:
        p.terminate()
        p.wait(10)


@test()
def bad_frames_close_only_that_connection(c):
    def conn():
        s = socket.socket(socket.AF_UNIX)
        s.connect(c.sock)
        s.settimeout(10)
        return s
    s = conn()
    s.sendall(struct.pack(">I", 0x7fffffff) + b"x")  # oversized
    eq(s.recv(100), b"", "oversized frame closes")
    s = conn()
    s.sendall(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")  # undecodable
    eq(s.recv(100), b"", "corrupt frame closes")
    s = conn()
    s.sendall(struct.pack(">I", 100) + b"abc")  # truncated
    s.close()
    c.sbx("run", "-q", "print('alive')", check_rc=0)


@test()
def killed_daemon_leaves_nothing_behind(c):
    """SIGKILL of sbxd mid-run: its workers and QEMUs die with it (parent-death signal, pid
    namespace), and the next daemon removes the run directory and cgroups it could not."""
    sock = os.path.join(c.tmp, "victim.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "victim.log"), env=env)
    proc = _long_run(c, env=env)
    mine = [x for x, _ in descendants(p.pid)]
    ok(mine, "a VM under the daemon")
    run_dirs = [d for d in os.listdir("/tmp") if d.startswith(f"sbxd-{p.pid}-")]
    eq(len(run_dirs), 1, "the daemon's run directory")
    p.kill()
    p.wait()
    proc.communicate(timeout=60)
    ok(proc.returncode != 0, "the client was told")
    wait_for(lambda: not any(os.path.exists(f"/proc/{x}") for x in mine), 15,
             "the dead daemon's workers and QEMUs to die")
    ok(os.path.exists("/tmp/" + run_dirs[0]), "its run directory is still there")
    p2 = c.start_daemon(sock=sock, log=os.path.join(c.tmp, "victim.log"), env=env)
    try:
        ok(not os.path.exists("/tmp/" + run_dirs[0]), "the next daemon removed it")
        ok(not [g for g in project_cgroups() if f"vm-{p.pid}-" in g], "and its cgroups")
    finally:
        p2.terminate()
        p2.wait(10)


@test()
def embedded_daemon_autostart(c):
    rt = tempfile.mkdtemp(prefix="sbx-rt-", dir=c.tmp)
    env = dict(c.env())
    env.pop("EXEC_SANDBOX_SOCKET", None)
    env["XDG_RUNTIME_DIR"] = rt
    env["EXEC_SANDBOX_IDLE_EXIT_SECONDS"] = "3"
    env["EXEC_SANDBOX_SBXD"] = c.sbxd_bin
    r = subprocess.run([c.sbx_bin, "run", "-q", "print('auto')"], capture_output=True, env=env,
                       timeout=120)
    eq(r.stdout, b"auto\n", "autostarted run: " + r.stderr.decode())
    sock = os.path.join(rt, "exec-sandbox", "sbxd.sock")
    ok(os.path.exists(sock), "per-user socket created")
    r = subprocess.run([c.sbx_bin, "status", "--json"], capture_output=True, env=env, timeout=30)
    pid = json.loads(r.stdout)["pid"]
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30, "the embedded daemon to exit when idle")


@test()
def valgrind_clean_daemon(c):
    """sbxd under valgrind: no errors, no leaks, through a run, a timeout, a run and a session
    with a NIC, metrics scrapes and audit lines, a bad frame and shutdown. (Workers install a
    seccomp filter that valgrind's own syscalls would trip; sbxd's packer child, forked from
    the daemon and dropping to a VM uid, fails under valgrind (not investigated further), so
    the package paths are checked by the ASan/LSan build instead: suite_packages.py.)"""
    if not shutil.which("valgrind"):
        raise AssertionError("valgrind not installed (scripts/setup-host.sh installs it)")
    sock = os.path.join(c.tmp, "vg.sock")
    log = os.path.join(c.tmp, "vg.log")
    from suite_network import free_port
    metrics = f"127.0.0.1:{free_port()}"
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_VMWORKER=os.path.join(ROOT, "build/sbx-vmworker"),
                EXEC_SANDBOX_METRICS_LISTEN=metrics,
                EXEC_SANDBOX_AUDIT_LOG=os.path.join(c.tmp, "vg-audit.jsonl"))
    p = subprocess.Popen(["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                          "--show-leak-kinds=definite,indirect,possible", "--errors-for-leak-kinds=definite,indirect,possible",
                          "--trace-children=no",
                          os.path.join(ROOT, "build/sbxd"), "--socket", sock],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: os.path.exists(sock), 60, "sbxd under valgrind")
        eq(c.sbx("run", "-q", "print('vg')", env=env, check_rc=0).out, "vg\n", "run under valgrind")
        eq(c.sbx("run", "-q", "-t", "1", "while True: pass", env=env).returncode, 124, "timeout")
        # A VM with a NIC (the broker, PortsReady) and a session exposing a port (kept ports).
        eq(c.sbx("run", "-q", "--expose", "8000", "print('net')", env=env, check_rc=0).out,
           "net\n", "a run with an exposed port")
        sid = c.sbx("session", "new", "-q", "--expose", "9000", env=env, check_rc=0).out.strip()
        c.sbx("session", "close", sid, env=env, check_rc=0)
        from suite_operations import scrape
        st, body, _ = scrape(metrics)
        ok(st == 200 and "sbx_requests_total" in body, "a metrics scrape")
        eq(len(open(os.path.join(c.tmp, "vg-audit.jsonl")).readlines()), 5, "audit lines")
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(struct.pack(">I", 3) + b"\xff\xff\xff")
        s.recv(10)
        s.close()
    finally:
        p.terminate()
        rc = p.wait(60)
    out = open(log).read()
    ok(rc == 0 and "==" not in out, f"valgrind exit {rc}:\n{out[-3000:]}")


@test()
def unprivileged_daemon_uses_user_namespace(c):
    """sbxd run by an ordinary user: the worker and QEMU run as that user inside a user
    namespace, still jailed; without a writable cgroup the daemon says so and carries on."""
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    if os.getuid() != 0:
        raise Skip("needs root to switch to another user for the test")
    d = tempfile.mkdtemp(prefix="sbx-unpriv-", dir="/tmp")
    images = os.path.join(d, "cache", "images")
    os.makedirs(images)
    src = os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                       os.path.expanduser("~/.cache/exec-sandbox"), "images")
    for f in ["vmlinux", "initramfs.cpio", "raw.sqfs"]:
        shutil.copy(os.path.join(src, f), images)
    subprocess.run(["chown", "-R", "65534:65534", d], check=True)
    sock = os.path.join(d, "s.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_CACHE_DIR=os.path.join(d, "cache"),
                HOME=d)
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    log = os.path.join(d, "log")
    p = subprocess.Popen(drop + [c.sbxd_bin, "--socket", sock], stdout=open(log, "w"),
                         stderr=subprocess.STDOUT, env=env, cwd="/")
    try:
        wait_for(lambda: os.path.exists(sock), 15, "unprivileged sbxd")
        run = subprocess.Popen(drop + [c.sbx_bin, "run", "-q", "-l", "raw", "-t", "30",
                                       "echo started; sleep 20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
        ok(run.stdout.readline() == b"started\n", "runs under an unprivileged daemon")
        procs = descendants(p.pid)
        worker = [x for x, comm in procs if comm == "sbx-vmworker"]
        qemu = [x for x, comm in procs if comm.startswith("qemu-system")]
        ok(worker and qemu, f"worker and QEMU: {procs}")
        for pid in worker + qemu:
            st = _status(pid)
            eq(st["Uid"].split()[0], "65534", "runs as the daemon's user (seen from the host)")
            eq(st["CapEff"], "0000000000000000", "no capabilities")
            ok(os.readlink(f"/proc/{pid}/ns/user") != os.readlink(f"/proc/{p.pid}/ns/user"),
               "in its own user namespace")
        run.kill()
        run.wait()
        ok("without a cgroup" in open(log).read(), "the missing cgroup layer is logged")
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)
