"""The e2e harness: the test registry, the daemon under test (Ctx) and small assertions.

Shared by run.py and the suite_*.py modules it loads; see run.py for how tests are run.
A suite module does `from harness import *` and registers its tests with @test().
"""
import json
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = []


def test(fast=False, any_arch=False):
    """Registers a test. fast: in the quick subset (--fast). any_arch: in the subset that runs
    against guests of another architecture than the host's (--guest-arch, make test-arm64)."""
    def deco(fn):
        fn.any_arch = any_arch
        TESTS.append((fn, fast))
        return fn
    return deco


def guest_arch():
    """The architecture of the guests under test: EXEC_SANDBOX_GUEST_ARCH (run.py --guest-arch
    sets it), else the host's."""
    return os.environ.get("EXEC_SANDBOX_GUEST_ARCH") or os.uname().machine


class Ctx:
    def __init__(self, args):
        self.sbx_bin = os.path.abspath(args.sbx)
        self.sbxd_bin = os.path.abspath(args.sbxd)
        self.tmp = tempfile.mkdtemp(prefix="sbx-e2e-")
        self.sock = os.path.join(self.tmp, "sbxd.sock")
        self.log = os.path.join(self.tmp, "sbxd.log")
        self.daemon = None

    def env(self, **extra):
        e = dict(os.environ)
        e["EXEC_SANDBOX_SOCKET"] = self.sock
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        # Daemons boot every VM cold unless a test asks for memory snapshots (their section has
        # daemons of its own); EXEC_SANDBOX_SNAPSHOTS=1 in the caller's environment runs the
        # whole suite with them.
        e.setdefault("EXEC_SANDBOX_SNAPSHOTS", "0")
        e.update(extra)
        return e

    def start_daemon(self, *flags, sock=None, log=None, env=None):
        sock = sock or self.sock
        log = log or self.log
        p = subprocess.Popen([self.sbxd_bin, "--socket", sock, *flags], stdin=subprocess.DEVNULL,
                             stdout=open(log, "a"), stderr=subprocess.STDOUT,
                             env=env or self.env())
        deadline = time.time() + 15
        while time.time() < deadline:
            if p.poll() is not None:
                raise AssertionError("sbxd exited at start: " + open(log).read()[-2000:])
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                return p
            except OSError:
                time.sleep(0.05)
        p.kill()
        raise AssertionError("sbxd did not start listening")

    def sbx(self, *args, input=None, env=None, timeout=240, check_rc=None):
        r = subprocess.run([self.sbx_bin, *args], input=input, capture_output=True,
                           env=env or self.env(), timeout=timeout, cwd=self.tmp)
        r.out = r.stdout.decode("utf-8", "replace")
        r.err = r.stderr.decode("utf-8", "replace")
        if check_rc is not None and r.returncode != check_rc:
            raise AssertionError(f"sbx {' '.join(a[:60] for a in args)}: exit {r.returncode}, "
                                 f"expected {check_rc}\nstdout: {r.out[-1500:]}\n"
                                 f"stderr: {r.err[-1500:]}")
        return r

    def run_json(self, *args, **kw):
        r = self.sbx("run", "--json", "-q", *args, **kw)
        try:
            return json.loads(r.stdout), r
        except ValueError:
            raise AssertionError(f"not JSON (exit {r.returncode}): {r.out[:500]} {r.err[:1500]}")


def read_all(s, chunk=65536):
    """Everything a socket sends until it closes."""
    data = b""
    while True:
        k = s.recv(chunk)
        if not k:
            return data
        data += k


class Skip(Exception):
    """A test that cannot run on this host says why; it is counted as skipped, never passed."""


def eq(a, b, what=""):
    if a != b:
        raise AssertionError(f"{what}: {a!r} != {b!r}")


def ok(cond, what):
    if not cond:
        raise AssertionError(what)


def descendants(pid):
    """All processes below pid (via /proc), as (pid, comm)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = open(f"/proc/{d}/stat").read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            comm = st[st.index("(") + 1:st.rindex(")")]
            kids.setdefault(ppid, []).append((int(d), comm))
        except (OSError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k[0])
    return out


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def project_processes():
    """Every process on the host that belongs to this project's VMs, wherever it was reparented."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        exe = os.path.basename(cmd[0].decode(errors="replace"))
        try:
            cg = open(f"/proc/{d}/cgroup").read()
        except OSError:
            cg = ""
        if exe == "sbx-vmworker" or "/exec-sandbox/vm-" in cg or (
                exe.startswith("qemu-system") and any(b"/assets/" in a for a in cmd)):
            found.append((int(d), exe))
    return found


def project_cgroups():
    """VM cgroups left behind (v1 hierarchies or v2)."""
    left = []
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory",
                 "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"]:
        d = os.path.join(base, "exec-sandbox")
        if os.path.isdir(d):
            left += [os.path.join(d, x) for x in os.listdir(d) if x.startswith("vm-")]
    return left
