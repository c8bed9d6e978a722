#!/usr/bin/env python3
"""The restore floor: a bare QEMU (no sbxd, no worker, no jail) started with `-incoming defer`
from a memory snapshot, timed from QEMU start to the guest agent answering Hello with Ready, and
to the same print(1) the benchmark runs having come back (an exec in the snapshot's REPL).
Everything sbx adds on a restored run (daemon, worker, jail, cgroup, exec) is measured against
this. The QEMU arguments are the ones vmworker/qemu.c gives a restored VM.

usage:
  scripts/floor-restore.py [--runs N] SNAPSHOT_DIR
      restore N times from a snapshot sbxd made (a directory of the snapshot cache, holding
      mem, state and meta), print each time, then min/median
  scripts/floor-restore.py --make DIR [--lang python] [--memory 256] [--mapped-ram]
      boot a bare template VM from the images, warm the language's REPL, save mem+state+meta
      into DIR (the same layout sbxd writes), for trying QEMU options by hand; with
      --mapped-ram, guest RAM is anonymous and saved into the state file by QEMU's mapped-ram
      migration instead (the alternative the design weighed: restores then read RAM from the
      file into each VM's own memory; restore DIR the same way to compare)
Env: EXEC_SANDBOX_CACHE_DIR (images), ARCH (the guest's: x86_64 or aarch64, default
EXEC_SANDBOX_GUEST_ARCH, else the host's;
microvm or virt as the worker starts them, vmworker/machine.c), QEMU (default qemu-system-ARCH).
"""
import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

PROTOCOL_VERSION = 1
# Machine and kernel command line per guest architecture, as vmworker/machine.c gives them.
MACHINES = {
    "x86_64": ("microvm,acpi=off,x-option-roms=off,rtc=on",
               "console=ttyS0 panic=-1 reboot=t quiet loglevel=1 tsc=reliable no_timer_check "
               "i8042.noaux nolapic_timer random.trust_cpu=on"),
    "aarch64": ("virt,gic-version=3",
                "console=ttyAMA0 panic=-1 reboot=t quiet loglevel=1 random.trust_cpu=on"),
}
ARCH = os.environ.get("ARCH") or os.environ.get("EXEC_SANDBOX_GUEST_ARCH") or os.uname().machine
ARCH = {"arm64": "aarch64", "amd64": "x86_64"}.get(ARCH, ARCH)
MACHINE, CMDLINE = MACHINES[ARCH]


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wt, payload):
    tag = varint(num << 3 | wt)
    if wt == 0:
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload


def host_msg(mid, body_field, body):
    msg = field(1, 0, mid) + field(body_field, 2, body)
    return struct.pack(">I", len(msg)) + msg


def hello(mid):
    body = (field(1, 0, PROTOCOL_VERSION) + field(2, 2, os.urandom(32)) +
            field(3, 0, time.time_ns()))
    return host_msg(mid, 2, body)


CODE = {"python": "print(1)", "javascript": "console.log(1)", "raw": "echo 1"}


def exec_print(mid, lang):
    """Exec of the same print(1) the benchmark runs, in the snapshot's already-started REPL."""
    body = (field(1, 2, lang.encode()) + field(2, 2, CODE[lang].encode()) + field(3, 0, 10000) +
            field(5, 0, 1 << 20) + field(6, 0, 100 << 10) + field(7, 0, 1))
    return host_msg(mid, 3, body)


def wait_done(s, mid, deadline):
    """Read the guest's frames for request mid until its ExecDone; returns the stdout seen."""
    pending, out = b"", b""
    while True:
        while len(pending) >= 4 and len(pending) >= 4 + struct.unpack(">I", pending[:4])[0]:
            n = struct.unpack(">I", pending[:4])[0]
            m, pending = parse(pending[4:4 + n]), pending[4 + n:]
            if m.get(1, 0) != mid:
                continue
            if 3 in m:
                out += parse(m[3]).get(2, b"")
            if 4 in m:
                return out
            if 5 in m:
                raise RuntimeError("agent failure: %r" % parse(m[5]))
        s.settimeout(max(0.001, deadline - time.monotonic()))
        d = s.recv(65536)
        if not d:
            raise EOFError("agent channel closed")
        pending += d


def warm(mid, lang):
    return host_msg(mid, 8, field(1, 2, lang.encode()))


def parse(buf):
    """Top-level fields of one protobuf message: {num: value} (last wins)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wt)
        out[num] = v
    return out


def read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def wait_reply(s, mid, deadline):
    """The guest's reply to request mid: ('ready'|'failure', fields)."""
    pending = b""
    while True:
        if len(pending) >= 4 and len(pending) >= 4 + struct.unpack(">I", pending[:4])[0]:
            n = struct.unpack(">I", pending[:4])[0]
            m, pending = parse(pending[4:4 + n]), pending[4 + n:]
            if m.get(1, 0) == mid and 2 in m:
                return "ready", m
            if m.get(1, 0) == mid and 5 in m:
                return "failure", parse(m[5])
            continue
        s.settimeout(max(0.001, deadline - time.monotonic()))
        d = s.recv(65536)
        if not d:
            raise EOFError("agent channel closed")
        pending += d


def connect(path, deadline, proc):
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if proc.poll() is not None:
                raise RuntimeError("QEMU exited: %s" % proc.returncode)
            if time.monotonic() > deadline:
                raise TimeoutError("no " + path)
            time.sleep(0.001)


class Qmp:
    def __init__(self, path, deadline, proc):
        self.s = connect(path, deadline, proc)
        self.f = self.s.makefile("rwb")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]))


def qemu_argv(qemu, images, lang, mem_mb, mem_path, run, restore, mapped_ram=False):
    share = "share=off,readonly=on,rom=off" if restore else "share=on"
    ram = [] if mapped_ram else [
        "-object", f"memory-backend-file,id=mem,size={mem_mb}M,mem-path={mem_path},{share}"]
    argv = [qemu, "-M", MACHINE +
            ("" if mapped_ram else ",memory-backend=mem"),
            "-accel", "tcg,tb-size=256", "-cpu", "max", "-m", str(mem_mb), "-smp", "1", *ram,
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", os.path.realpath(f"{images}/vmlinux"),
            "-initrd", os.path.realpath(f"{images}/initramfs.cpio"), "-append", CMDLINE,
            "-drive", f"file={os.path.realpath(f'{images}/{lang}.sqfs')},if=none,id=root,"
                      "format=raw,readonly=on,cache=unsafe",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", f"socket,id=agent,path={run}/agent.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=sbx.agent",
            "-device", "virtio-rng-device",
            "-device", "virtio-balloon-device,id=balloon,deflate-on-oom=on,free-page-reporting=off",
            "-chardev", f"socket,id=con,path={run}/console.sock,server=on,wait=off",
            "-serial", "chardev:con",
            "-qmp", f"unix:{run}/qmp.sock,server=on,wait=off"]
    if restore:
        argv += ["-incoming", "defer"]
    return argv


def set_caps(q, mapped_ram):
    cap = "mapped-ram" if mapped_ram else "x-ignore-shared"
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": cap, "state": True}])


def wait_migration(q):
    while True:
        st = q.cmd("query-migrate").get("status")
        if st in ("completed", "failed"):
            return st
        time.sleep(0.002)


def make(a, images, qemu):
    os.makedirs(a.make, exist_ok=True)
    run = tempfile.mkdtemp(prefix="sbx-floor-")
    mem = os.path.join(a.make, "mem")
    t0 = time.monotonic()
    p = subprocess.Popen(qemu_argv(qemu, images, a.lang, a.memory, mem, run, False, a.mapped_ram),
                         stdout=subprocess.DEVNULL, stderr=open(f"{run}/qemu.log", "w"))
    try:
        deadline = time.monotonic() + 60
        q = Qmp(f"{run}/qmp.sock", deadline, p)
        con = connect(f"{run}/console.sock", deadline, p)
        ag = connect(f"{run}/agent.sock", deadline, p)
        ag.sendall(hello(1))
        kind, _ = wait_reply(ag, 1, deadline)
        t_ready = time.monotonic()
        ag.sendall(warm(2, a.lang))
        kind, m = wait_reply(ag, 2, deadline)
        if kind != "ready":
            sys.exit("warm failed: %r" % m)
        t_warm = time.monotonic()
        if a.mapped_ram:
            q.cmd("stop")  # a one-pass save of RAM; restored VMs are resumed by hand
        set_caps(q, a.mapped_ram)
        q.cmd("migrate", uri="file:" + os.path.join(a.make, "state"))
        st = wait_migration(q)
        t_done = time.monotonic()
        print(f"ready {1000 * (t_ready - t0):.0f} ms, warm {1000 * (t_warm - t_ready):.0f} ms, "
              f"save {1000 * (t_done - t_warm):.0f} ms: {st}")
        json.dump({"language": a.lang, "memory_mb": a.memory, "mapped_ram": a.mapped_ram},
                  open(f"{a.make}/meta", "w"))
        con.close()
    finally:
        p.kill()
        p.wait()


def restore_once(d, images, qemu, lang, mem_mb, mapped_ram=False):
    run = tempfile.mkdtemp(prefix="sbx-floor-")
    t0 = time.monotonic()
    p = subprocess.Popen(qemu_argv(qemu, images, lang, mem_mb, f"{d}/mem", run, True, mapped_ram),
                         stdout=subprocess.DEVNULL, stderr=open(f"{run}/qemu.log", "w"))
    try:
        deadline = time.monotonic() + 20
        q = Qmp(f"{run}/qmp.sock", deadline, p)
        set_caps(q, mapped_ram)
        q.cmd("migrate-incoming", uri=f"file:{d}/state")
        if mapped_ram:
            wait_migration(q)
            q.cmd("cont")
        con = connect(f"{run}/console.sock", deadline, p)
        ag = connect(f"{run}/agent.sock", deadline, p)
        ag.sendall(hello(7))
        kind, m = wait_reply(ag, 7, deadline)
        ms = 1000 * (time.monotonic() - t0)
        ag.sendall(exec_print(8, lang))
        out = wait_done(ag, 8, deadline)
        ms_print = 1000 * (time.monotonic() - t0)
        if out != b"1\n":
            raise RuntimeError("the restored VM printed %r" % out)
        pss = 0
        for line in open(f"/proc/{p.pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) // 1024
        con.close()
        ag.close()
        return ms, ms_print, pss
    finally:
        p.kill()
        p.wait()
        for f in os.listdir(run):
            os.unlink(os.path.join(run, f))
        os.rmdir(run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--make")
    ap.add_argument("--lang", default="python")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--mapped-ram", action="store_true")
    a = ap.parse_args()
    cache = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
    images = os.path.join(cache, "images", *([] if ARCH == "x86_64" else [ARCH]))
    qemu = os.environ.get("QEMU", f"qemu-system-{ARCH}")
    if a.make:
        make(a, images, qemu)
        return
    if not a.dir:
        ap.error("SNAPSHOT_DIR or --make DIR")
    meta = parse_meta(os.path.join(a.dir, "meta"))
    lang, mem_mb = meta["language"], int(meta["memory_mb"])
    mapped_ram = meta.get("mapped_ram") in (True, "true")
    ms, mp, pss = [], [], []
    for _ in range(a.runs):
        t, tp, p = restore_once(a.dir, images, qemu, lang, mem_mb, mapped_ram)
        ms.append(t)
        mp.append(tp)
        pss.append(p)
        print(f"restore to agent Ready: {t:.0f} ms, to the print: {tp:.0f} ms (QEMU Pss {p} MiB)",
              file=sys.stderr, flush=True)
    print(f"{lang} {mem_mb} MB{', mapped-ram' if mapped_ram else ''}: restore floor to Ready min {min(ms):.0f} ms, median "
          f"{statistics.median(ms):.0f} ms; to the print min {min(mp):.0f}, median "
          f"{statistics.median(mp):.0f} ms over {a.runs}; QEMU Pss median "
          f"{statistics.median(pss):.0f} MiB")


def parse_meta(path):
    """meta is JSON from --make, or sbxd's `key = value` lines."""
    text = open(path).read()
    try:
        return json.loads(text)
    except ValueError:
        return dict((k.strip(), v.strip()) for k, _, v in
                    (l.partition("=") for l in text.splitlines() if "=" in l))


if __name__ == "__main__":
    main()
