"""No shared /tmp for the daemon's state (issue 9, item 3).

Without $HOME (a system service) root's sbxd keeps its cache in /var/cache/exec-sandbox and any
other user's refuses to start until EXEC_SANDBOX_CACHE_DIR is set; a cache directory that another
uid owns or others can write is refused at start; the accelerator verdict file is never written
or read through a link planted at its path.
"""
import json
import os
import shutil
import subprocess
import tempfile

from harness import Skip, eq, ok, test, wait_for

SYSTEM_CACHE = "/var/cache/exec-sandbox"
NOBODY = 65534


def _images():
    return os.path.join(os.environ.get("EXEC_SANDBOX_CACHE_DIR") or
                        os.path.expanduser("~/.cache/exec-sandbox"), "images")


def _no_home_env(c, sock, **extra):
    env = c.env(EXEC_SANDBOX_SOCKET=sock, **extra)
    for k in ("HOME", "XDG_CACHE_HOME", "EXEC_SANDBOX_CACHE_DIR", "EXEC_SANDBOX_IMAGES_DIR",
              "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR"):
        env.pop(k, None)
    return env


def _start_fails(c, args, env, uid=None):
    """sbxd with these flags must exit at start: (exit status, output)."""
    pre = []
    if uid is not None:
        pre = [shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    r = subprocess.run(pre + [c.sbxd_bin, *args], capture_output=True, env=env, timeout=60,
                       cwd="/")
    out = r.stdout.decode() + r.stderr.decode()
    ok(r.returncode != 0, f"sbxd must refuse to start (exit {r.returncode}): {out[-1500:]}")
    return r.returncode, out


@test()
def daemon_without_home_keeps_state_out_of_tmp(c):
    if os.getuid() != 0:
        raise Skip("needs root: the test runs the daemon as root and as uid 65534")
    sock = os.path.join(c.tmp, "nohome.sock")
    log = os.path.join(c.tmp, "nohome.log")
    existed = os.path.exists(SYSTEM_CACHE)
    before = set(os.listdir("/tmp"))
    env = _no_home_env(c, sock, EXEC_SANDBOX_SNAPSHOTS="1")
    p = c.start_daemon("--accel", "tcg", sock=sock, log=log, env=env)
    try:
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        eq(st["images_dir"], SYSTEM_CACHE + "/images", "images under the system cache")
        eq(st["snapshot_dir"], SYSTEM_CACHE + "/snapshots", "snapshots under the system cache")
        s = os.stat(SYSTEM_CACHE)
        eq((s.st_uid, s.st_mode & 0o022), (0, 0), "system cache: root's, not writable by others")
    finally:
        p.terminate()
        p.wait(10)
        if not existed:
            shutil.rmtree(SYSTEM_CACHE, ignore_errors=True)
    new = [d for d in set(os.listdir("/tmp")) - before
           if not d.startswith(("sbxd-", "sbx-"))]  # the run dir is sbxd-<pid>-*, removed by now
    ok(not [d for d in new if "exec-sandbox" in d or d == ".cache"],
       f"nothing of the daemon's state in /tmp: {new}")

    # Anyone else without $HOME must say where: the daemon refuses and names the setting.
    d = tempfile.mkdtemp(prefix="sbx-nohome-", dir="/tmp")
    os.chown(d, NOBODY, NOBODY)
    try:
        env = _no_home_env(c, os.path.join(d, "s.sock"))
        _, out = _start_fails(c, ["--socket", os.path.join(d, "s.sock")], env, uid=NOBODY)
        ok("EXEC_SANDBOX_CACHE_DIR" in out and "HOME" in out, "names the setting: " + out)
        ok(not os.path.exists(os.path.join(d, "s.sock")), "never listened")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test()
def daemon_refuses_cache_dir_others_can_change(c):
    base = tempfile.mkdtemp(prefix="sbx-cachedir-", dir=c.tmp)
    sock = os.path.join(base, "s.sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    cases = []
    open_dir = os.path.join(base, "world")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    cases.append((open_dir, ["writable by everyone (mode 0777)"]))
    group_dir = os.path.join(base, "group")
    os.mkdir(group_dir)
    os.chmod(group_dir, 0o770)
    cases.append((group_dir, ["writable by its group"]))
    shared = os.path.join(base, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)  # not sticky: anyone can swap what is inside
    cases.append((os.path.join(shared, "cache"), ["without the sticky bit"]))
    if os.getuid() == 0:
        theirs = os.path.join(base, "theirs")
        os.mkdir(theirs, 0o700)
        os.chown(theirs, NOBODY, NOBODY)
        cases.append((theirs, [f"belongs to uid {NOBODY}"]))
    for path, words in cases:
        rc, out = _start_fails(c, ["--socket", sock, "--cache-dir", path, "--accel", "tcg"], env)
        for w in words + [path, "EXEC_SANDBOX_CACHE_DIR"]:
            ok(w in out, f"cache dir {path}: error names {w!r}: {out}")
        ok(not os.path.exists(sock), "never listened")
    # A snapshot directory others can write is not used (the daemon runs, snapshots off).
    good = os.path.join(base, "good")
    snaps = os.path.join(base, "snaps")
    os.mkdir(snaps)
    os.chmod(snaps, 0o777)
    log = os.path.join(base, "log")
    p = c.start_daemon("--cache-dir", good, "--snapshot-cache-dir", snaps, "--snapshots", "true",
                       "--accel", "tcg", sock=sock, log=log, env=env)
    try:
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        eq(st["snapshots_enabled"], False, "snapshots off in a directory others can write")
        ok("writable by everyone" in open(log).read(), "and the log says why")
        eq(os.stat(good).st_mode & 0o777, 0o700, "a cache directory it creates is 0700")
    finally:
        p.terminate()
        p.wait(10)


@test()
def accel_verdict_link_not_followed(c):
    cache = tempfile.mkdtemp(prefix="sbx-verdict-", dir=c.tmp)
    target = os.path.join(c.tmp, "verdict-target")
    with open(target, "w") as f:
        f.write("precious\n")
    os.chmod(target, 0o644)
    verdict = os.path.join(cache, "accel-verdict")
    os.symlink(target, verdict)
    sock = os.path.join(cache, "s.sock")
    log = os.path.join(c.tmp, "verdict.log")
    # The test hook makes `auto` probe KVM on any host (without /dev/kvm the probe fails for
    # real), so the verdict is written here whatever the machine.
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_TEST_ASSUME_KVM="1")
    flags = ["--accel", "auto", "--test-hooks", "true", "--cache-dir", cache,
             "--images-dir", _images()]
    p = c.start_daemon(*flags, sock=sock, log=log, env=env)
    try:
        wait_for(lambda: "not followed" in open(log).read(), 10,
                 "the daemon to say it did not read through the link")
        j, r = c.run_json("print(1)", env=env, timeout=300)
        eq(j.get("stdout"), "1\n", "runs after the probe: " + r.err)
        wait_for(lambda: not os.path.islink(verdict), 30, "the verdict to be written")
        ok("probing KVM with a test boot" in open(log).read(), "the verdict came from a probe")
        print("    [" + [x for x in open(log).read().split("\n") if "accelerator: " in x][-1][-160:]
              + "]")
    finally:
        p.terminate()
        p.wait(10)
    eq(open(target).read(), "precious\n", "the link's target is unchanged")
    s = os.lstat(verdict)
    ok(not os.path.islink(verdict) and (s.st_mode & 0o022) == 0 and s.st_uid == os.getuid(),
       "a regular file of ours, written in place of the link")
    ok(open(verdict).read().startswith("qemu="), "holds the verdict")
    eq([f for f in os.listdir(cache) if f.startswith(".")], [], "no temporary file left")
    # A second daemon reads it back (through the directory's fd, no link).
    p = c.start_daemon(*flags, sock=sock, log=log, env=env)
    try:
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        ok("cached" in st["accel_reason"], "second daemon uses the cache: " + st["accel_reason"])
    finally:
        p.terminate()
        p.wait(10)
