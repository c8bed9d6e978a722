"""The worker's jail and QEMU's own filter (issue 9, items 6-8): each test tries to get through.

Some tests start sbxd with --qemu pointed at tests/e2e/fake_qemu.c, built here: the worker then
starts it exactly where it starts QEMU (jailed, as the VM's uid, under the filter the worker
loads for QEMU), and its report comes back in the run's error message.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from harness import ROOT, Skip, descendants, eq, ok, test, wait_for

# Every call the worker's QEMU filter must kill (SIGSYS is 31), as fake_qemu.c names them.
KILLED = ["inet", "inet6", "netlink", "pair", "ptrace", "vmread", "vmwrite", "pidfdgetfd", "bpf",
          "uffd", "uringenter", "perf", "keyctl", "addkey", "reqkey", "kexec",
          "kexecfile", "mount", "umount", "unshare", "setns", "clonens"]


def _fake_qemu(c, dest_dir):
    exe = os.path.join(dest_dir, "fake-qemu")
    subprocess.run(["cc", "-O1", "-static", "-o", exe,
                    os.path.join(ROOT, "tests/e2e/fake_qemu.c")], check=True)
    os.chmod(exe, 0o755)
    return exe


def _fake_report(err):
    m = re.search(r"FAKEQEMU( [^\s]+)+", err)
    ok(m, "the fake QEMU's report is in the error: " + err)
    return dict(t.split("=", 1) for t in m.group(0).split()[1:])


def _check_fake_report(rep, what):
    ok(int(rep["filters"]) >= 1, f"{what}: QEMU's child runs under a filter: {rep}")
    ok(rep["mem"] != "ok", f"{what}: QEMU cannot open the worker's memory: {rep}")
    eq(rep["unix"], "ok", f"{what}: AF_UNIX sockets still work ({rep})")
    for name in KILLED:
        eq(rep.get(name), "sig31", f"{what}: {name} kills QEMU with SIGSYS ({rep})")
    eq(rep["clone3"], "ENOSYS", f"{what}: clone3 answers ENOSYS ({rep})")
    # QEMU probes io_uring at start: setup says there is none; using a ring would kill.
    eq(rep["uring"], "ENOSYS", f"{what}: io_uring_setup answers ENOSYS ({rep})")
    kb, why = rep["vmdir"].split("k/")
    ok(int(kb) <= 4096 and why == "ENOSPC", f"{what}: /vm is size-limited: {rep['vmdir']}")
    files, why = rep["vmfiles"].split("/")
    ok(int(files) <= 32 and why == "ENOSPC", f"{what}: /vm is inode-limited: {rep['vmfiles']}")


@test()
def qemu_filter_kills_forbidden_syscalls(c):
    """What a guest that took over QEMU would try next is killed by the filter the worker loads
    in QEMU's child before execve, and the one writable directory is bounded."""
    d = tempfile.mkdtemp(prefix="sbx-fakeqemu-", dir=c.tmp)
    exe = _fake_qemu(c, d)
    sock = os.path.join(d, "s.sock")
    log = os.path.join(d, "sbxd.log")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--qemu", exe, "--accel", "tcg", sock=sock, log=log, env=env)
    try:
        r = c.sbx("run", "-q", "print(1)", env=env)
        eq(r.returncode, 125, "the fake QEMU never boots: " + r.err)
        _check_fake_report(_fake_report(r.err), "root daemon")
        eq(c.sbx("run", "-q", "print(1)", env=env).returncode, 125, "the daemon still answers")
    finally:
        p.terminate()
        p.wait(10)


@test()
def qemu_filter_in_user_namespace(c):
    """The same under an unprivileged sbxd (worker and QEMU share a uid in a user namespace, so
    only the worker's being non-dumpable and the filter stand between them)."""
    setpriv = shutil.which("setpriv")
    ok(setpriv, "setpriv (util-linux) is needed")
    if os.getuid() != 0:
        raise Skip("needs root to switch to another user for the test")
    d = tempfile.mkdtemp(prefix="sbx-fakeqemu-u-", dir="/tmp")
    try:
        images = os.path.join(d, "cache", "images")
        os.makedirs(images)
        src = os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                           os.path.expanduser("~/.cache/exec-sandbox"), "images")
        for f in ["vmlinux", "initramfs.cpio", "raw.sqfs"]:
            shutil.copy(os.path.join(src, f), images)
        exe = _fake_qemu(c, d)
        subprocess.run(["chown", "-R", "65534:65534", d], check=True)
        sock = os.path.join(d, "s.sock")
        env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_CACHE_DIR=os.path.join(d, "cache"),
                    HOME=d)
        drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        log = os.path.join(d, "log")
        p = subprocess.Popen(drop + [c.sbxd_bin, "--socket", sock, "--qemu", exe, "--accel",
                                     "tcg"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             env=env, cwd="/")
        try:
            wait_for(lambda: os.path.exists(sock), 15, "unprivileged sbxd")
            r = subprocess.run(drop + [c.sbx_bin, "run", "-q", "-l", "raw", "echo hi"],
                               capture_output=True, env=env, cwd="/", timeout=120)
            err = r.stderr.decode()
            eq(r.returncode, 125, "the fake QEMU never boots: " + err)
            _check_fake_report(_fake_report(err), "user namespace")
        finally:
            p.terminate()
            p.wait(10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _long_run(c, env=None, seconds=30):
    proc = subprocess.Popen([c.sbx_bin, "run", "-q", "-t", str(seconds + 10),
                             f"import time\nprint('started', flush=True)\ntime.sleep({seconds})"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or c.env())
    ok(proc.stdout.readline() == b"started\n", "long run started")
    return proc


def _status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@test(any_arch=True)
def real_qemu_under_two_filters(c):
    """A real QEMU boots under both filters (ours, then its -sandbox); the worker is not
    dumpable; QEMU's /vm is a small tmpfs of its own."""
    proc = _long_run(c)
    try:
        procs = descendants(c.daemon.pid)
        worker = [p for p, comm in procs if comm == "sbx-vmworker"]
        qemu = [p for p, comm in procs if comm.startswith("qemu-system")]
        ok(worker and qemu, f"worker and QEMU under sbxd: {procs}")
        st = _status(qemu[0])
        ok(int(st["Seccomp_filters"]) >= 2,
           "QEMU has its -sandbox filter and ours: Seccomp_filters " + st["Seccomp_filters"])
        # A non-dumpable process's /proc entries belong to root, whatever its uid.
        ws = _status(worker[0])
        ok(ws["Uid"].split()[0] != "0", "worker uid " + ws["Uid"])
        eq(os.stat(f"/proc/{worker[0]}/status").st_uid, 0, "worker is not dumpable (/proc owner)")
        ok(os.stat(f"/proc/{qemu[0]}/status").st_uid != 0, "QEMU itself stays dumpable (own uid)")
        vfs = os.statvfs(f"/proc/{worker[0]}/root/vm")
        eq(vfs.f_blocks * vfs.f_frsize, 4096 * 1024, "/vm size")
        eq(vfs.f_files, 32, "/vm inodes")
        ok(set(os.listdir(f"/proc/{worker[0]}/root/vm")) <= {"agent.sock", "console.sock",
                                                            "qemu.log"}, "/vm holds")
    finally:
        proc.kill()
        proc.wait()


def _hooks_daemon(c, name):
    d = tempfile.mkdtemp(prefix=f"sbx-{name}-", dir=c.tmp)
    sock, log = os.path.join(d, "s.sock"), os.path.join(d, "sbxd.log")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--test-hooks", "true", sock=sock, log=log, env=env)
    return p, env, log


@test()
def worker_openat_rule_refuses_writes(c):
    """The worker's filter lets it open files to read them, and kills it for any open that
    could write, create or truncate (O_RDONLY is 0: the access mode alone proves nothing)."""
    p, env, log = _hooks_daemon(c, "openat")
    try:
        for how in ["creat", "trunc", "write", "append"]:
            r = c.sbx("run", "-q", "__sbx_test_hook__:openat-" + how, env=env)
            eq(r.returncode, 125, f"openat-{how}: sandbox error: " + r.err)
            ok("signal 31" in r.err, f"openat-{how}: the worker died by SIGSYS: " + r.err)
        r = c.sbx("run", "-q", "__sbx_test_hook__:openat-read", env=env)
        eq(r.returncode, 1, "a read-only open is allowed; the code then runs as Python: " + r.err)
        text = open(log).read()
        ok(re.search(r"test hook: openat returned \d+ \(open\)", text),
           "the read-only open succeeded: " + text[-1500:])
        eq(len(re.findall(r"test hook: openat returned", text)), 1,
           "only the read-only open returned; the others never came back: " + text[-1500:])
    finally:
        p.terminate()
        p.wait(10)


def _fds(pid):
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


@test(any_arch=True)
def worker_gets_a_log_pipe_not_sbxd_fds(c):
    """The worker's stdout and stderr are a pipe of its own that sbxd relays; it holds nothing
    that sbxd has open (its log file above all)."""
    proc = _long_run(c)
    try:
        worker = [p for p, comm in descendants(c.daemon.pid) if comm == "sbx-vmworker"]
        ok(worker, "a worker")
        w, d = _fds(worker[0]), _fds(c.daemon.pid)
        ok(w.get(0, "").endswith("/null"), f"stdin: {w}")
        ok(w.get(1, "").startswith("pipe:") and w.get(1) == w.get(2), f"stdout/stderr: {w}")
        # sbxd holds the pipe's read end: the one thing they share.
        shared = {t for t in w.values() if t in d.values() and t not in ("/dev/null", w[1])}
        ok(not shared, f"the worker holds sbxd's {shared}")
        ok(c.log not in w.values(), "the worker cannot write sbxd's log file directly")
    finally:
        proc.kill()
        proc.wait()


@test()
def worker_log_flood_is_bounded(c):
    """A worker that writes megabytes to stderr (a test hook) neither blocks nor grows sbxd: one
    line is cut at 1 KiB, the worker's log at 256 KiB, and the rest is read and dropped."""
    p, env, log = _hooks_daemon(c, "flood")
    try:
        rss0 = int(_status(p.pid)["VmRSS"].split()[0])
        size0 = os.path.getsize(log)
        t0 = time.time()
        r = c.sbx("run", "-q", "__sbx_test_hook__:log-flood", env=env, timeout=120)
        eq(r.returncode, 1, "the run goes on after the flood (the hook is then Python): " + r.err)
        grew = os.path.getsize(log) - size0
        text = open(log).read()
        ok("[line cut]" in text, "the 1 MiB line was cut")
        ok("the rest of it is dropped" in text, "the byte budget was reached and said")
        ok(grew < 400 * 1024, f"sbxd's log grew {grew} bytes for 9 MiB of worker output")
        rss1 = int(_status(p.pid)["VmRSS"].split()[0])
        ok(rss1 - rss0 < 10 * 1024, f"sbxd RSS {rss0} -> {rss1} kB")
        eq(c.sbx("run", "-q", "print('next')", env=env, check_rc=0).out, "next\n", "next run")
        ok(time.time() - t0 < 100, "no worker blocked on its stderr")
    finally:
        p.terminate()
        p.wait(10)


def _mountinfo(pid):
    out = []
    for line in open(f"/proc/{pid}/mountinfo"):
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype, src, sopts = right.split()[:3]
        out.append((f[4].replace("\\040", " "), f[5].split(","), fstype, sopts.split(",")))
    return out


@test(any_arch=True)
def jail_mounts_read_only_recursively_and_proc_subset(c):
    """Something mounted under the host's /usr stays read-only in the jail (recursive), and the
    jail's /proc holds only processes (subset=pid)."""
    if os.getuid() != 0:
        raise Skip("needs root to mount under /usr")
    plant = f"/usr/local/sbx-e2e-submount-{os.getpid()}"
    os.makedirs(plant, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "sbx-e2e-plant", plant], check=True)
    try:
        proc = _long_run(c)
        try:
            worker = [p for p, comm in descendants(c.daemon.pid) if comm == "sbx-vmworker"]
            ok(worker, "a worker")
            mi = _mountinfo(worker[0])
            under_usr = [m for m in mi if m[0] == "/usr" or m[0].startswith("/usr/")]
            ok(any(m[0] == plant for m in under_usr), f"the planted mount is in the jail: {mi}")
            for mp, opts, _, _ in under_usr:
                ok("ro" in opts, f"{mp} is writable in the jail: {opts}")
            for mp, opts, _, _ in mi:
                if mp.startswith("/assets"):
                    ok("ro" in opts, f"{mp} is writable in the jail: {opts}")
            procs = [m for m in mi if m[2] == "proc"]
            eq(len(procs), 1, f"one /proc: {procs}")
            ok("subset=pid" in procs[0][3], f"/proc subset=pid: {procs[0]}")
            top = os.listdir(f"/proc/{worker[0]}/root/proc")
            ok("sys" not in top and "kcore" not in top and "sysrq-trigger" not in top,
               f"no system-wide files in the jail's /proc: {sorted(top)[:20]}")
            ok("self" in top, "its own processes are there")
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["umount", "-l", plant])
        os.rmdir(plant)


@test()
def guest_that_stops_reading_is_timed_out(c):
    """A guest that stops reading its channel (here: its QEMU frozen with SIGSTOP) while the host
    writes to it (a 16 MiB upload into a session) becomes a timeout error and a killed VM, not a
    worker blocked in write() forever holding its slot."""
    sid = c.sbx("session", "new", check_rc=0).out.strip()
    qemu = []
    try:
        r = c.sbx("session", "exec", "-q", sid, "x = 1")
        eq(r.returncode, 0, "session works: " + r.err)
        qemu = [p for p, comm in descendants(c.daemon.pid) if comm.startswith("qemu-system")]
        eq(len(qemu), 1, f"one QEMU for the session: {qemu}")
        os.kill(qemu[0], signal.SIGSTOP)
        big = os.path.join(c.tmp, "stopped-reader.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(16 << 20))  # random: zstd cannot shrink it below the socket buffers
        t0 = time.time()
        r = c.sbx("session", "upload", sid, big, "big.bin", timeout=120)
        took = time.time() - t0
        ok(r.returncode != 0, "the upload into a frozen guest fails")
        ok("VmTimeout" in r.err and "stopped reading" in r.err, "a timeout error that says why: "
           + r.err)
        ok(took < 60, f"the host gave up after {took:.1f} s")
        wait_for(lambda: not os.path.exists(f"/proc/{qemu[0]}") or
                 open(f"/proc/{qemu[0]}/stat").read().split(")")[1].split()[0] == "Z",
                 15, "the frozen QEMU to be killed")
        r = c.sbx("session", "exec", sid, "print(x)")
        eq(r.returncode, 125, "the session's VM is gone: " + r.err)
        eq(c.sbx("run", "-q", "print('ok')", check_rc=0).out, "ok\n", "daemon still serves")
    finally:
        for p in qemu:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        c.sbx("session", "close", sid)
