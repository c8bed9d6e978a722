"""Isolation: each test tries to get through one layer (jail, seccomp, socket auth, network, resources, guest privileges)."""
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


def _status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _long_run(c, env=None, seconds=30):
    proc = subprocess.Popen([c.sbx_bin, "run", "-q", "-t", str(seconds + 10),
                             f"import time\nprint('started', flush=True)\ntime.sleep({seconds})"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or c.env())
    ok(proc.stdout.readline() == b"started\n", "long run started")
    return proc


@test(fast=True)
def jail_of_a_running_vm(c):
    proc = _long_run(c)
    try:
        procs = descendants(c.daemon.pid)
        worker = [p for p, comm in procs if comm == "sbx-vmworker"]
        qemu = [p for p, comm in procs if comm.startswith("qemu-system")]
        ok(worker and qemu, f"worker and QEMU under sbxd: {procs}")
        me = c.daemon.pid
        for pid, what in [(worker[0], "worker"), (qemu[0], "QEMU")]:
            st = _status(pid)
            eq(st["CapEff"], "0000000000000000", what + " CapEff")
            eq(st["CapPrm"], "0000000000000000", what + " CapPrm")
            eq(st["CapBnd"], "0000000000000000", what + " CapBnd")
            eq(st["NoNewPrivs"], "1", what + " NoNewPrivs")
            eq(st["Seccomp"], "2", what + " Seccomp (filter mode)")
            ok(st["Uid"].split()[0] != "0" and st["Uid"].split()[1] != "0", what + " uid " + st["Uid"])
            for ns in ["mnt", "pid", "net", "ipc", "uts"]:
                ok(os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/{me}/ns/{ns}"),
                   f"{what} shares the {ns} namespace with sbxd")
        cmd = open(f"/proc/{qemu[0]}/cmdline", "rb").read().split(b"\0")
        ok(b"-sandbox" in cmd and any(a.startswith(b"on,obsolete=deny,elevateprivileges=deny,"
                                                   b"spawn=deny,resourcecontrol=deny") for a in cmd),
           "QEMU -sandbox options")
        # The jail's root: only what QEMU needs.
        top = sorted(os.listdir(f"/proc/{worker[0]}/root"))
        ok(set(top) <= {"assets", "dev", "etc", "proc", "tmp", "usr", "vm", "bin", "sbin", "lib",
                        "lib32", "lib64", "libx32"}, f"jail root holds {top}")
        eq(sorted(os.listdir(f"/proc/{worker[0]}/root/assets")),
           ["initramfs.cpio", "qemu-system-x86_64", "rootfs.sqfs", "vmlinux"], "assets")
        ok(not os.path.exists(f"/proc/{worker[0]}/root/home") and
           not os.path.exists(f"/proc/{worker[0]}/root/root"), "no host homes in the jail")
        # The cgroup and its limits.
        cg = open(f"/proc/{qemu[0]}/cgroup").read()
        ok("/exec-sandbox/vm-" in cg, "QEMU in a VM cgroup: " + cg)
        paths = {}
        for line in cg.splitlines():
            _, ctrls, path = line.split(":", 2)
            for ctl in (ctrls or "unified").split(","):
                paths[ctl] = path
        if "memory" in paths:  # v1
            base = "/sys/fs/cgroup"
            lim = int(open(f"{base}/memory{paths['memory']}/memory.limit_in_bytes").read())
            pids = open(f"{base}/pids{paths['pids']}/pids.max").read().strip()
            quota = int(open(f"{base}/cpu{paths['cpu']}/cpu.cfs_quota_us").read())
        else:  # v2
            d = "/sys/fs/cgroup" + paths["unified"]
            if not os.path.exists(d + "/memory.max"):
                d = "/sys/fs/cgroup/unified" + paths["unified"]
            lim = int(open(d + "/memory.max").read())
            pids = open(d + "/pids.max").read().strip()
            quota = int(open(d + "/cpu.max").read().split()[0])
        eq(lim, (256 + 384) << 20, "memory limit: guest RAM + overhead")
        eq(pids, "256", "pids limit")
        eq(quota, 150000, "cpu quota (1.5 CPU)")
    finally:
        proc.kill()
        proc.wait()


@test()
def seccomp_violation_kills_worker(c):
    sock = os.path.join(c.tmp, "hooks.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--test-hooks", "true", sock=sock, log=os.path.join(c.tmp, "hooks.log"),
                       env=env)
    try:
        r = c.sbx("run", "-q", "__sbx_test_hook__:seccomp", env=env)
        eq(r.returncode, 125, "sandbox error: " + r.err)
        ok("CommunicationError" in r.err and "signal 31" in r.err, "killed by SIGSYS: " + r.err)
        eq(c.sbx("run", "-q", "print('next')", env=env, check_rc=0).out, "next\n", "next run")
        log = open(os.path.join(c.tmp, "hooks.log")).read()
        ok("test hook" in log, "the worker reached the forbidden syscall")
    finally:
        p.terminate()
        p.wait(10)
    # Without test_hooks the same code is only code.
    r = c.sbx("run", "-q", "__sbx_test_hook__:seccomp")
    eq(r.returncode, 1, "ordinary python error without test hooks: " + r.err)


@test()
def control_socket_refuses_other_uids(c):
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    d = tempfile.mkdtemp(prefix="sbx-uid-", dir="/tmp")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "s.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", c.sbx_bin, "status"]
    try:
        for allowed in [None, "65534"]:
            flags = ["--allowed-uids", allowed] if allowed else []
            p = c.start_daemon(*flags, sock=sock, log=os.path.join(c.tmp, "uid.log"), env=env)
            os.chmod(sock, 0o666)  # the socket file is not what keeps them out
            try:
                r = subprocess.run(nobody, capture_output=True, env=env, timeout=30, cwd="/")
                err = r.stderr.decode()
                if allowed:
                    eq(r.returncode, 0, "listed uid is served: " + err)
                else:
                    ok(r.returncode != 0 and "65534" in err and "may not use" in err,
                       f"refused with a clear error (exit {r.returncode}): {err}")
                    # and the daemon keeps serving its own user
                    eq(c.sbx("status", env=env).returncode, 0, "still serving")
            finally:
                p.terminate()
                p.wait(10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test()
def guest_cannot_reach_host_loopback(c):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    code = (f"for h in 127.0.0.1 10.0.2.2 192.168.0.1; do curl -s -m 2 http://$h:{port}/ "
            "&& echo REACHED $h; done; echo done")
    r = c.sbx("run", "-q", "-l", "raw", code)
    ok("REACHED" not in r.out and "done" in r.out, r.out + r.err)
    try:
        conn, _ = srv.accept()
        conn.close()
        raise AssertionError("the host server got a connection from the guest")
    except socket.timeout:
        pass
    finally:
        srv.close()


@test()
def fork_bomb_is_contained(c):
    t0 = time.time()
    r = c.sbx("run", "-q", "-l", "raw", "-t", "5", "b() { b | b & }; b; sleep 30")
    ok(r.returncode in (124, 125) or r.returncode != 0, f"fork bomb exit {r.returncode}")
    ok(time.time() - t0 < 40, "the host stopped it in time")
    eq(c.sbx("run", "-q", "print('after bomb')", check_rc=0).out, "after bomb\n", "next run")


@test()
def fill_disk_and_tmp(c):
    code = ("dd if=/dev/zero of=/tmp/fill bs=1M 2>&1 | grep -m1 -o 'No space left'; rm /tmp/fill; "
            "dd if=/dev/zero of=$HOME/fill bs=1M 2>&1 | grep -m1 -o 'No space left'; "
            "rm $HOME/fill; touch /usr/x 2>&1; echo alive")
    r = c.sbx("run", "-q", "-l", "raw", "-t", "60", code)
    eq(r.out.count("No space left"), 2, "/tmp and the home fill up with ENOSPC: " + r.out)
    ok("Read-only file system" in r.out, "root is read-only: " + r.out)
    ok(r.out.rstrip().endswith("alive"), "guest still works: " + r.out)


@test(fast=True)
def guest_privileged_operations_refused(c):
    code = r"""
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name, r, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
sc("io_uring_setup", 425, 1, 0)
sc("bpf", 321, 0, 0, 0)
sc("init_module", 175, 0, 0, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("userfaultfd", 323, 0)
sc("ptrace_attach_1", 101, 16, 1, 0, 0)
try:
    os.kill(1, signal.SIGKILL); print("kill1 ok")
except OSError as e:
    print("kill1", errno.errorcode[e.errno])
for dev in ["/dev/vda", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/vport0p1", "/dev/vport1p1"]:
    print("dev", dev, os.path.exists(dev))
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:3])
print("uid", os.getuid(), os.geteuid())
st = dict(l.split(":", 1) for l in open("/proc/self/status"))
print("nnp", st["NoNewPrivs"].strip(), "capeff", st["CapEff"].strip())
r = os.system("mount -t tmpfs x /mnt 2>/dev/null")
print("mount", r != 0)
"""
    r = c.sbx("run", "-q", code)
    out = r.out
    for name in ["io_uring_setup", "bpf", "init_module", "kexec_load", "userfaultfd"]:
        ok(f"{name} -1 ENOSYS" in out, f"{name} must be ENOSYS (not in the kernel): {out}")
    ok("ptrace_attach_1 -1 EPERM" in out or "ptrace_attach_1 -1 ESRCH" in out, "ptrace PID 1: " + out)
    ok("kill1 EPERM" in out or "kill1 ESRCH" in out, "kill PID 1: " + out)
    ok("True" not in "".join(l for l in out.splitlines() if l.startswith("dev ")), "devices: " + out)
    ok("pids [1]" not in out and not any(l.startswith("pids [1,") for l in out.splitlines()),
       "PID 1 hidden from the code: " + out)
    ok("uid 1000 1000" in out, "uid: " + out)
    ok("nnp 1 capeff 0000000000000000" in out, "no_new_privs and no caps: " + out)
    ok("mount True" in out, "mount refused: " + out)


@test()
def apparmor_profile_confines_worker(c):
    flag = "/sys/module/apparmor/parameters/enabled"
    if not os.path.exists(flag) or open(flag).read().strip() != "Y":
        raise Skip("AppArmor is not enabled on this host (layer 6 is absent here)")
    r = subprocess.run([os.path.join(ROOT, "scripts/install-apparmor.sh")], capture_output=True)
    eq(r.returncode, 0, "profile loads: " + r.stderr.decode())
    proc = _long_run(c)
    try:
        worker = [p for p, comm in descendants(c.daemon.pid) if comm == "sbx-vmworker"]
        label = open(f"/proc/{worker[0]}/attr/current").read()
        ok("sbx-vmworker" in label, "worker confined: " + label)
    finally:
        proc.kill()
        proc.wait()


@test()
def fresh_vm_per_run_and_no_host_files(c):
    marker = os.path.join(c.tmp, "host-marker-file")
    open(marker, "w").write("secret")
    c.sbx("run", "-q", "-l", "raw", "echo leak > /tmp/state; echo leak > ~/state", check_rc=0)
    r = c.sbx("run", "-q", "-l", "raw",
              f"ls /tmp/state ~/state 2>/dev/null; cat {marker} 2>/dev/null; ls /sys/class/net; "
              "id -u; cat /proc/self/status | grep NoNewPrivs")
    ok("state" not in r.out, "state leaked between runs: " + r.out)
    ok("secret" not in r.out, "host file visible: " + r.out)
    eq(r.out.split()[0], "lo", "only loopback (no network device)")
    ok("1000" in r.out.split(), "runs as uid 1000: " + r.out)
    ok("NoNewPrivs:\t1" in r.out, "no_new_privs: " + r.out)


@test()
def root_is_read_only(c):
    r = c.sbx("run", "-q", "-l", "raw", "touch /usr/x 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok")
    ok("rc=1" in r.out and "tmp-ok" in r.out, r.out)
