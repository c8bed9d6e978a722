"""aarch64 guests under cross-architecture TCG (issue 16), at the worker level.

These tests start sbx-vmworker (the one beside the sbxd under test) the way sbxd does: a
socketpair on fd 3, Hello, then a VmConfig with guest_arch "aarch64" and the assets of
$CACHE/images/aarch64 (make assets ARCH=aarch64, after scripts/setup-host.sh --arch aarch64).
No jail: what is under test is the machine, the guest kernel, the images and the agent of arm64,
through the worker's real QEMU command line, QEMU seccomp filter, agent channel and snapshot
code, whatever the daemon's own guest_arch (run.py --guest-arch aarch64 covers the daemon's
path). Without those assets every test here is skipped, saying so.
"""
import importlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from harness import ROOT, Skip, eq, ok, test

CACHE = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
IMAGES = os.path.join(CACHE, "images", "aarch64")
QEMU = shutil.which("qemu-system-aarch64")
HELLO = {
    "python": ("import platform; print('hi from', platform.machine())", "hi from aarch64"),
    "javascript": ("console.log('hi from', process.arch)", "hi from arm64"),
    "raw": ("echo hi from $(uname -m)", "hi from aarch64"),
}
_pb = None


def pb():
    """worker_pb2, generated from proto/ into a temporary directory on first use."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="sbx-pb-arm64-")
        subprocess.run(["protoc", "--proto_path", os.path.join(ROOT, "proto"), "--python_out",
                        out, "files.proto", "control.proto", "worker.proto"], check=True)
        sys.path.insert(0, out)
        try:
            import google.protobuf  # noqa: F401
        except ImportError:
            sys.path.append("/usr/lib/python3/dist-packages")
        _pb = importlib.import_module("worker_pb2")
    return _pb


def need_assets():
    if not QEMU:
        raise Skip("no qemu-system-aarch64 (scripts/setup-host.sh --arch aarch64)")
    missing = [n for n in ("vmlinux", "initramfs.cpio", "raw.sqfs", "python.sqfs",
                           "javascript.sqfs") if not os.path.exists(os.path.join(IMAGES, n))]
    if missing:
        raise Skip(f"no aarch64 assets in {IMAGES} ({', '.join(missing)}): "
                   "make assets ARCH=aarch64")


class Worker:
    """One sbx-vmworker and its VM, driven over the socketpair as sbxd drives it."""

    def __init__(self, c, lang, **cfg):
        need_assets()
        w = pb()
        self.w, self.lang = w, lang
        self.run_dir = tempfile.mkdtemp(prefix="sbx-e2e-arm64-")
        self.sock, theirs = socket.socketpair()
        self.log = open(os.path.join(self.run_dir, "worker.log"), "wb")
        self.p = subprocess.Popen(
            [os.path.join(os.path.dirname(c.sbxd_bin), "sbx-vmworker"), "--fd",
             str(theirs.fileno())], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, env=c.env())
        theirs.close()
        self.sock.settimeout(120)
        h = w.ToWorker(id=1)
        h.hello.protocol_version = 1
        self.send(h)
        eq(self.recv().WhichOneof("body"), "hello", "worker handshake")
        st = w.ToWorker(id=2)
        v = st.start
        v.qemu, v.guest_arch, v.accel = QEMU, cfg.pop("guest_arch", "aarch64"), "tcg"
        v.kernel, v.initrd = os.path.join(IMAGES, "vmlinux"), os.path.join(IMAGES, "initramfs.cpio")
        v.rootfs = os.path.join(IMAGES, f"{lang}.sqfs")
        v.memory_mb, v.boot_timeout_ms, v.restore_timeout_ms = 256, 60000, 30000
        v.run_dir = self.run_dir
        v.language = lang
        for k, val in cfg.items():
            setattr(v, k, val)
        self.send(st)
        self.first = self.recv()

    def send(self, m):
        b = m.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(b)) + b)

    def recv(self):
        def exactly(n):
            b = b""
            while len(b) < n:
                k = self.sock.recv(n - len(b))
                if not k:
                    raise AssertionError("the worker closed its socket: " + self.log_tail())
                b += k
            return b
        m = self.w.FromWorker()
        m.ParseFromString(exactly(struct.unpack(">I", exactly(4))[0]))
        return m

    def log_tail(self):
        self.log.flush()
        return open(self.log.name, "rb").read()[-1500:].decode("utf-8", "replace")

    def booted(self):
        eq(self.first.WhichOneof("body"), "booted", "first message: " + str(self.first)[:300])
        return self.first.booted

    def exec(self, code, timeout_ms=30000, keep_state=False):
        e = self.w.ToWorker(id=3)
        e.exec.language, e.exec.code = self.lang, code.encode()
        e.exec.timeout_ms, e.exec.keep_state = timeout_ms, keep_state
        self.send(e)
        while True:
            m = self.recv()
            if m.WhichOneof("body") == "result":
                return m.result
            ok(m.WhichOneof("body") != "error", "exec: " + str(m)[:500])

    def close(self):
        self.sock.close()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.p.returncode


@test()
def arm64_hello_every_language(c):
    for lang, (code, want) in HELLO.items():
        w = Worker(c, lang)
        try:
            b = w.booted()
            eq(b.start_mode, "cold", f"{lang}: start mode")
            r = w.exec(code)
            eq((r.exit_code, r.stdout.decode().strip()), (0, want), f"{lang} in an aarch64 guest")
            eq(r.accelerator, "tcg", "accelerator")
        finally:
            eq(w.close(), 0, f"{lang}: worker exit status")


@test()
def arm64_session_keeps_state_and_times_out(c):
    w = Worker(c, "python", session=True)
    try:
        w.booted()
        eq(w.exec("x = 41", keep_state=True).exit_code, 0, "first exec")
        r = w.exec("print(x + 1)", keep_state=True)
        eq(r.stdout.decode().strip(), "42", "state kept between execs")
        t0 = time.time()
        r = w.exec("while True: pass", timeout_ms=2000, keep_state=True)
        ok(r.timed_out, f"a busy loop times out (exit {r.exit_code})")
        ok(time.time() - t0 < 20, "timeout enforced promptly")
        r = w.exec("print('after')", keep_state=True)
        eq(r.stdout.decode().strip(), "after", "the session serves after a timeout")
    finally:
        w.close()


@test()
def arm64_snapshot_template_and_restore(c):
    snap = tempfile.mkdtemp(prefix="sbx-e2e-arm64-snap-")
    try:
        t = Worker(c, "python", start_mode="template", snapshot_dir=snap)
        try:
            eq(t.first.WhichOneof("body"), "snapshot_saved", "template: " + str(t.first)[:300])
        finally:
            eq(t.close(), 0, "template worker exit status")
        eq(sorted(os.listdir(snap)), ["mem", "state"], "snapshot files")
        for i in range(2):
            w = Worker(c, "python", start_mode="restore", snapshot_dir=snap)
            try:
                b = w.booted()
                eq((b.start_mode, b.restore_error), ("restore", ""), f"restore {i}")
                r = w.exec(HELLO["python"][0])
                eq(r.stdout.decode().strip(), HELLO["python"][1], f"restore {i}: exec")
            finally:
                w.close()
    finally:
        shutil.rmtree(snap, ignore_errors=True)


@test()
def arm64_unknown_guest_arch_refused(c):
    w = Worker(c, "raw", guest_arch="riscv64")
    try:
        eq(w.first.WhichOneof("body"), "error", "an unknown architecture")
        ok("guest architecture `riscv64`" in w.first.error.message, w.first.error.message)
    finally:
        w.close()
