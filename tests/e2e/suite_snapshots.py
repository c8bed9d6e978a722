"""Memory snapshots: first run cold then restored, every language, broken files, pool VMs, off by config."""
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
from suite_files import _sha
from suite_pool import _status_json
from suite_sessions import _session, _sx


def _snap_daemon(c, name, **extra):
    """A private sbxd with memory snapshots on, in a snapshot directory of its own."""
    d = os.path.join(c.tmp, "snap-" + name)
    os.makedirs(d, exist_ok=True)
    sock, log, sdir = (os.path.join(d, x) for x in ("s.sock", "log", "snapshots"))
    env = c.env(**{"EXEC_SANDBOX_SOCKET": sock, "EXEC_SANDBOX_SNAPSHOTS": "1",
                   "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR": sdir, **extra})
    return c.start_daemon(sock=sock, log=log, env=env), env, log, sdir


def _snap_stop(p, sdir):
    """Stop a snapshot daemon; nothing of it may stay behind."""
    pid = p.pid
    p.terminate()
    p.wait(30)
    eq(descendants(pid), [], "processes left by the daemon")
    if os.path.isdir(sdir):
        eq([x for x in os.listdir(sdir) if x.startswith(".")], [], "staging directories left")
    eq([d for d in os.listdir("/tmp") if d.startswith(f"sbxd-{pid}-")], [], "run directory left")


def _srun(c, env, lang, code, *flags):
    return c.run_json("-l", lang, *flags, code, env=env)[0]


def _until_restore(c, env, lang, code, *flags, timeout=120):
    """Run until a run reports start_mode "restore": the template is built in the background
    while runs boot cold."""
    deadline, modes = time.time() + timeout, []
    while time.time() < deadline:
        j = _srun(c, env, lang, code, *flags)
        modes.append(j["start_mode"])
        if j["start_mode"] == "restore":
            return j
        time.sleep(0.3)
    raise AssertionError(f"no {lang} run restored within {timeout} s: {modes}")


def _snap_of(sdir, lang):
    # x86_64 snapshots are named as they always were; another architecture's carry its name.
    arch = "" if guest_arch() == "x86_64" else "-" + guest_arch()
    names = [x for x in os.listdir(sdir) if x.startswith(f"{lang}{arch}-256m-")]
    eq(len(names), 1, f"one {lang} snapshot in {os.listdir(sdir)}")
    return os.path.join(sdir, names[0])


def _sha_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


@test(any_arch=True)
def snapshot_first_run_cold_then_restore(c):
    p, env, log, sdir = _snap_daemon(c, "basic")
    try:
        j = _srun(c, env, "python", "print(1)")
        eq((j["start_mode"], j["stdout"], j["exit_code"]), ("cold", "1\n", 0), "first run")
        j = _until_restore(c, env, "python", "print(2)")
        eq((j["stdout"], j["exit_code"]), ("2\n", 0), "a restored run")
        ok(0 < j["timing"]["boot_ms"] < 5000, f"boot_ms is the restore time: {j['timing']}")
        snap = _snap_of(sdir, "python")
        meta = open(os.path.join(snap, "meta")).read()
        ok("key = " in meta and "state_sha256 = " in meta, "meta: " + meta)
        mem = os.path.join(snap, "mem")
        eq(os.path.getsize(mem), 256 << 20, "RAM file size")
        before = _sha_file(mem)
        seen = []
        for _ in range(2):
            j = _srun(c, env, "python", "import os, random, time\n"
                      "print(os.urandom(16).hex(), random.random(), time.time())")
            host = time.time()
            eq(j["start_mode"], "restore", "start mode")
            u, r, t = j["stdout"].split()
            ok(abs(float(t) - host) < 2, f"guest clock {t}, host {host}")
            seen.append((u, r))
        ok(seen[0][0] != seen[1][0], f"os.urandom differs between restored VMs: {seen}")
        ok(seen[0][1] != seen[1][1], f"random.random differs between restored VMs: {seen}")
        eq(_sha_file(mem), before, "the RAM file stays byte-identical")
        # The benchmark's restore floor starts QEMU with a copy of qemu.c's arguments: a device
        # that differs would make every bare restore fail, as the snapshot's state would not load.
        r = subprocess.run([os.path.join(ROOT, "scripts/floor-restore.py"), "--runs", "1", snap],
                           capture_output=True, text=True, timeout=60, env=env)
        ok(r.returncode == 0 and "restore floor" in r.stdout,
           f"scripts/floor-restore.py restores sbxd's snapshot: {r.stdout} {r.stderr[-800:]}")
    finally:
        _snap_stop(p, sdir)


@test()
def snapshot_restored_languages(c):
    p, env, log, sdir = _snap_daemon(c, "langs")
    try:
        for lang, code in [("python", "print(1)"), ("javascript", "console.log(1)"),
                           ("raw", "echo 1")]:
            _srun(c, env, lang, code)  # queues the language's template
        cases = [
            ("python", "import sys; print('py', 6*7); print('err', file=sys.stderr); sys.exit(3)",
             3, "py 42\n", "err\n"),
            ("python", "raise ValueError('boom')", 1, "", "ValueError: boom"),
            ("javascript", "console.log('js', 6*7); console.error('err'); process.exit(5)",
             5, "js 42\n", "err\n"),
            ("javascript", "throw new Error('bad js')", 1, "", "bad js"),
            ("raw", "echo sh $((6*7)); echo err >&2; exit 7", 7, "sh 42\n", "err\n"),
        ]
        for lang, code, rc, out, err in cases:
            j = _until_restore(c, env, lang, code)
            eq((j["exit_code"], j["stdout"]), (rc, out), f"{lang}: {code!r} ({j['stderr'][-300:]})")
            ok(err in j["stderr"], f"{lang} stderr: {j['stderr']!r}")
            eq(j["interpreter_reset"] if "interpreter_reset" in j else False, False,
               "no interpreter_reset on a one-shot run")
        j = _srun(c, env, "python", "import os; print(os.environ['GREETING'])", "-e", "GREETING=hi")
        eq((j["start_mode"], j["stdout"]), ("restore", "hi\n"), "env in a restored VM")
        r = c.sbx("run", "-q", "-t", "2", "while True: pass", env=env)
        eq(r.returncode, 124, "timeout in a restored VM: " + r.err)
        js = [_srun(c, env, "javascript", "console.log(Math.random())")["stdout"] for _ in range(2)]
        ok(js[0] != js[1], f"Math.random differs between restored VMs: {js}")
        sh = [_srun(c, env, "raw", "echo $RANDOM-$RANDOM")["stdout"] for _ in range(2)]
        ok(sh[0] != sh[1], f"$RANDOM differs between restored VMs: {sh}")
        sid = _session(c, env=env)
        try:
            j, _ = _sx(c, sid, "x = 41", rc=0, env=env)
            eq(j["start_mode"], "restore", "a session starts from the snapshot")
            eq(_sx(c, sid, "print(x + 1)", rc=0, env=env)[0]["stdout"], "42\n", "session state")
        finally:
            c.sbx("session", "close", sid, env=env)
    finally:
        _snap_stop(p, sdir)


@test()
def snapshot_broken_files_fall_back_to_cold(c):
    p, env, log, sdir = _snap_daemon(c, "broken")

    def rewrite(path, data):
        os.chmod(path, 0o644)
        open(path, "wb").write(data)
        os.chmod(path, 0o444)

    try:
        _srun(c, env, "raw", "echo 1")
        _until_restore(c, env, "raw", "echo 1")
        # A truncated state file: sbxd sees that it does not match its meta.
        snap = _snap_of(sdir, "raw")
        rewrite(os.path.join(snap, "state"), open(os.path.join(snap, "state"), "rb").read()[:100])
        j = _srun(c, env, "raw", "echo still; exit 4")
        eq((j["stdout"], j["exit_code"], j["start_mode"]), ("still\n", 4, "cold"), "truncated state")
        ok("is not usable" in open(log).read(), "warning logged")
        _until_restore(c, env, "raw", "echo 1")
        # A state file QEMU cannot load, its checksum in meta made to agree: the worker gives the
        # restore up and boots cold in the same slot; sbxd removes the snapshot.
        snap = _snap_of(sdir, "raw")
        st = os.path.join(snap, "state")
        data = bytearray(open(st, "rb").read())
        data[0:4] = b"XXXX"
        rewrite(st, bytes(data))
        meta = os.path.join(snap, "meta")
        text = "".join(f"state_sha256 = {_sha(bytes(data))}\n" if l.startswith("state_sha256 =")
                       else l for l in open(meta).readlines())
        rewrite(meta, text.encode())
        t0 = time.time()
        j = _srun(c, env, "raw", "echo again; exit 5")
        eq((j["stdout"], j["exit_code"], j["start_mode"]), ("again\n", 5, "cold"), "corrupt state")
        ok(time.time() - t0 < 30, "no hang")
        text = open(log).read()
        ok("restore failed" in text and "warning" in text, "warning logged: " + text[-1500:])
        ok(not os.path.exists(snap), "the broken snapshot is removed")
        _until_restore(c, env, "raw", "echo 1")
        # A truncated RAM file.
        mem = os.path.join(_snap_of(sdir, "raw"), "mem")
        os.chmod(mem, 0o644)
        os.truncate(mem, 4096)
        j = _srun(c, env, "raw", "echo ram")
        eq((j["stdout"], j["start_mode"]), ("ram\n", "cold"), "truncated RAM file")
    finally:
        _snap_stop(p, sdir)


@test()
def warm_pool_moves_to_snapshots(c):
    """With snapshots on, the pool's first VMs boot cold while the templates are built; once a
    language's snapshot is ready they make way for VMs restored from it (less host memory)."""
    p, env, log, sdir = _snap_daemon(c, "pool", EXEC_SANDBOX_WARM_POOL_SIZE="1")

    def restored_pool():
        try:
            qemus = [q for q, comm in descendants(p.pid) if comm.startswith("qemu")]
            cmds = [open(f"/proc/{q}/cmdline").read() for q in qemus]
        except OSError:
            return False
        return (len(qemus) == 2 and all("-incoming" in x for x in cmds) and
                _status_json(c, env)["pool_ready"] == 2)
    try:
        wait_for(restored_pool, 120, "two pool VMs restored from snapshots, nothing else")
        ok("replacing a cold-booted" in open(log).read(), "the cold pool VMs were replaced")
        st = _status_json(c, env)
        eq((st["snapshots_enabled"], st["snapshot_dir"]), (True, sdir), "status: snapshots on")
        ready = sorted((x["language"], x["memory_mb"], x["state"]) for x in st["snapshots"])
        eq(ready, [("javascript", 256, "ready"), ("python", 256, "ready")], "status lists them")
        ok(all(x["disk_mb"] > 10 and x["name"] in os.listdir(sdir) for x in st["snapshots"]),
           f"each with its RAM file on disk: {st['snapshots']}")
        text = c.sbx("status", env=env, check_rc=0).out
        ok(f"snapshots    on, in {sdir}" in text and text.count(" MiB of RAM file on disk") == 2, text)
        j, _ = c.run_json("print(1)", env=env)
        eq((j["stdout"], j["start_mode"], j["warm_pool_hit"]), ("1\n", "warm", True), "a hit")
    finally:
        _snap_stop(p, sdir)


@test()
def snapshots_off_by_config(c):
    p, env, log, sdir = _snap_daemon(c, "off", EXEC_SANDBOX_SNAPSHOTS="false")
    try:
        for _ in range(2):
            eq(_srun(c, env, "raw", "echo 1")["start_mode"], "cold", "snapshots off")
        ok(not os.path.exists(sdir), "no snapshot directory made")
        ok("memory snapshots: off" in open(log).read(), "the log says so")
        st = _status_json(c, env)
        eq((st["snapshots_enabled"], st["snapshots"]), (False, []), "sbx status says so")
    finally:
        _snap_stop(p, sdir)
