"""Guest-side parity with the reference's hardening (issue 9, item 9).

- Code that starts with a UTF-8 byte-order mark runs in every language, one-shot and in a
  session (the agent strips one leading mark before any interpreter sees the code).
- Environment variable names on the blocklist are refused in any letter case (exit 2).
- The kernel command line is not readable by the code: /proc/cmdline is an empty read-only
  file it cannot unmount, and the kernel log (which holds the line too) is closed to it.
- Python's int<->str digit limit is lifted for the code and every python3 it starts, in
  cold-booted and in memory-snapshot restored VMs.

All names start with guest_parity_, so `-k guest_parity` runs this module alone.
"""
import json
import os
import re
import time

from harness import descendants, eq, ok, test

BOM = "\ufeff"


def _session_new(c, lang, env=None):
    r = c.sbx("session", "new", "-l", lang, env=env, check_rc=0)
    sid = r.out.strip()
    ok(len(sid) >= 16 and "\n" not in sid, "session id alone on stdout: " + repr(r.out))
    return sid


def _session_exec(c, sid, code, env=None):
    r = c.sbx("session", "exec", "--json", "-q", sid, code, env=env)
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"session exec: not JSON (exit {r.returncode}): {r.out} {r.err}")


# --- (a) a leading byte-order mark ----------------------------------------------------------------

# The first line of each is what the mark would break: bash reads it as part of the first word
# ("\ufeffecho: command not found", exit 127).
BOM_CASES = [
    ("python", "print('first', 6*7)\nprint('second')", "first 42\nsecond\n"),
    ("javascript", "console.log('first', 6*7)\nconsole.log('second')", "first 42\nsecond\n"),
    ("typescript", "const n: number = 6*7; console.log('first', n)\nconsole.log('second')",
     "first 42\nsecond\n"),
    ("raw", "echo first $((6*7))\necho second", "first 42\nsecond\n"),
]


@test()
def guest_parity_bom_one_shot_every_language(c):
    for lang, code, want in BOM_CASES:
        j, r = c.run_json("-l", lang, BOM + code)
        eq((j["exit_code"], j["stdout"]), (0, want), f"{lang} with a BOM (stderr {j['stderr']!r})")
        eq(j["stderr"], "", f"{lang} with a BOM: nothing on stderr")
    # From a file, as an editor saves it; the mark is the file's first three bytes.
    path = os.path.join(c.tmp, "bom.sh")
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbfecho from-file\nexit 3\n")
    r = c.sbx("run", "-q", path)
    eq((r.returncode, r.out), (3, "from-file\n"), f"shell file with a BOM: {r.err}")
    # Only the leading mark is the sandbox's business: one further in stays the code's.
    j, _ = c.run_json("-l", "python", BOM + "s = '" + BOM + "'\nprint(len(s), hex(ord(s)))")
    eq((j["exit_code"], j["stdout"]), (0, "1 0xfeff\n"), f"a mark inside the code: {j['stderr']}")


@test()
def guest_parity_bom_in_sessions(c):
    second = {
        "python": ("x = 41", "print(x + 1)"),
        "javascript": ("let x = 41", "console.log(x + 1)"),
        "typescript": ("let x: number = 41", "console.log(x + 1)"),
        "raw": ("x=41", "echo $((x + 1))"),
    }
    for lang, code, want in BOM_CASES:
        sid = _session_new(c, lang)
        try:
            j = _session_exec(c, sid, BOM + code)
            eq((j["exit_code"], j["stdout"]), (0, want),
               f"{lang} session, first exec with a BOM ({j['stderr']!r})")
            set_x, use_x = second[lang]
            j = _session_exec(c, sid, BOM + set_x)
            eq(j["exit_code"], 0, f"{lang} session: {set_x!r} with a BOM ({j['stderr']!r})")
            j = _session_exec(c, sid, BOM + use_x)
            eq((j["exit_code"], j["stdout"], j["interpreter_reset"]), (0, "42\n", False),
               f"{lang} session keeps state across BOM execs ({j['stderr']!r})")
        finally:
            c.sbx("session", "close", sid)


# --- (b) the environment blocklist in any letter case ---------------------------------------------

@test(fast=True)
def guest_parity_env_blocklist_any_case(c):
    names = ["ld_preload", "Ld_Preload", "LD_PRELOAD", "ld_library_path", "path", "Path",
             "pythonpath", "PythonHome", "node_options", "bash_env", "bun_options"]
    for name in names:
        r = c.sbx("run", "-q", "-e", f"{name}=/tmp/x", "print(1)")
        eq(r.returncode, 2, f"exit for -e {name}: {r.err}")
        ok(f"`{name}`" in r.err and "not allowed" in r.err,
           f"the message names {name} and says it is refused: {r.err!r}")
        eq(r.out, "", f"nothing ran for -e {name}")
    # A session's variables (given when it opens): the same check, before any VM starts.
    r = c.sbx("session", "new", "-e", "Ld_Preload=/tmp/x")
    eq((r.returncode, r.out), (2, ""), f"session new -e Ld_Preload: {r.err}")
    ok("`Ld_Preload`" in r.err and "not allowed" in r.err, "session new message: " + r.err)


# --- (c) the kernel command line ------------------------------------------------------------------

def _kernel_tokens(c):
    """The name=value parameters the worker really gives the kernel: the -append of a session
    VM's QEMU, read from /proc (whatever the guest architecture), plus virtio_mmio.device=, which
    QEMU's microvm adds for its devices."""
    sid = _session_new(c, "raw")
    try:
        qemus = [pid for pid, comm in descendants(c.daemon.pid) if comm.startswith("qemu-system")]
        eq(len(qemus), 1, "one QEMU (the session's) under the harness daemon")
        argv = open(f"/proc/{qemus[0]}/cmdline", "rb").read().decode().split("\0")
    finally:
        c.sbx("session", "close", sid)
    ok("-append" in argv, f"QEMU's -append: {argv}")
    tokens = [t for t in argv[argv.index("-append") + 1].split() if "=" in t]
    ok(any(t.startswith("console=") for t in tokens) and len(tokens) >= 4,
       f"kernel parameters found: {tokens}")
    return tokens + ["virtio_mmio.device="]


# Everything the code (uid 1000, no capabilities) can try, with ctypes for the syscalls so that
# nothing depends on which tools the image holds. Each line is "what result".
CMDLINE_PROBE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def err():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def show(what, data):
    print(what, repr(data))
show("cmdline", open("/proc/cmdline", "rb").read())
print("cmdline-stat", oct(os.stat("/proc/cmdline").st_mode), os.stat("/proc/cmdline").st_uid)
try:
    show("bootconfig", open("/proc/bootconfig", "rb").read())
except OSError as e:
    print("bootconfig", errno.errorcode[e.errno])
for d, _, files in os.walk("/sys/firmware"):
    for f in files:
        try:
            show("sysfw " + os.path.join(d, f), open(os.path.join(d, f), "rb").read(65536))
        except OSError:
            pass
buf = ctypes.create_string_buffer(1 << 20)
n = libc.klogctl(3, buf, len(buf))  # SYSLOG_ACTION_READ_ALL
print("klogctl", n, err() if n < 0 else "")
if n > 0:
    show("klog", buf.raw[:n])
try:
    show("kmsg", open("/dev/kmsg", "rb").read(4096))
except OSError as e:
    print("kmsg", errno.errorcode[e.errno])
try:
    open("/proc/cmdline", "wb").write(b"x")
    print("write ok")
except OSError as e:
    print("write", errno.errorcode[e.errno])
print("umount", libc.umount2(b"/proc/cmdline", 2), err())  # MNT_DETACH
# In a user namespace of its own the code is root over a copy of the mounts: the cover must stay
# locked there, and a fresh proc (which would show the line) must be refused.
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x10000000, 0x20000000
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    out = []
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) < 0:
        out.append("userns-unshare -1 " + err())
    else:
        out.append("userns-umount %d %s" % (libc.umount2(b"/proc/cmdline", 2), err()))
        kid = os.fork()  # the first child is PID 1 of the new pid namespace
        if kid == 0:
            rc = libc.mount(b"proc", b"/tmp", b"proc", 0, None)
            msg = "userns-mountproc %d %s" % (rc, err())
            if rc == 0:
                msg += " " + repr(open("/tmp/cmdline", "rb").read())
            os.write(w, (msg + "\n").encode())
            os._exit(0)
        os.waitpid(kid, 0)
        out.append("userns-cmdline " + repr(open("/proc/cmdline", "rb").read()))
    os.write(w, ("\n".join(out) + "\n").encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print(os.read(r, 65536).decode().strip())
show("cmdline-after", open("/proc/cmdline", "rb").read())
print("shell", repr(os.popen("cat /proc/cmdline 2>&1; echo rc=$?").read()))
"""


def _check_cmdline_probe(out, tokens, where):
    lines = dict(l.split(" ", 1) for l in out.splitlines() if " " in l)
    for t in tokens:
        ok(t not in out, f"{where}: the code read the kernel parameter {t!r}:\n{out}")
    eq(lines.get("cmdline"), "b''", f"{where}: /proc/cmdline is empty for the code")
    eq(lines.get("cmdline-after"), "b''", f"{where}: /proc/cmdline after the attempts")
    eq(lines.get("shell"), "'rc=0\\n'", f"{where}: cat /proc/cmdline prints nothing")
    ok(lines.get("cmdline-stat", "").startswith("0o100444 0"),
       f"{where}: covered by root's read-only empty file: {lines.get('cmdline-stat')}")
    ok(lines.get("klogctl", "").startswith("-1 EPERM"), f"{where}: kernel log refused: {out}")
    ok(lines.get("kmsg", "").startswith(("ENOENT", "EACCES", "EPERM")),
       f"{where}: /dev/kmsg: {lines.get('kmsg')}")
    ok(lines.get("write", "").startswith(("EROFS", "EACCES")), f"{where}: write: {out}")
    ok(lines.get("umount", "").startswith("-1 EPERM"), f"{where}: umount refused: {out}")
    ok("userns-umount 0" not in out and "userns-mountproc 0" not in out,
       f"{where}: a user namespace got past the cover: {out}")
    ok("userns-unshare" in out or ("userns-umount -1" in out and "userns-mountproc -1" in out),
       f"{where}: user namespace attempts were made: {out}")


@test(any_arch=True)
def guest_parity_kernel_cmdline_hidden(c):
    tokens = _kernel_tokens(c)
    j, _ = c.run_json("-l", "python", CMDLINE_PROBE)
    eq(j["exit_code"], 0, f"probe ran ({j['stderr'][-1500:]})")
    _check_cmdline_probe(j["stdout"], tokens, "one-shot")
    # A session's REPL was started by the same agent after the same boot: same view.
    sid = _session_new(c, "raw")
    try:
        j = _session_exec(c, sid, "cat /proc/cmdline; echo rc=$?; umount /proc/cmdline 2>&1; "
                          "cat /proc/cmdline")
        eq(j["stdout"].split("\n")[0], "rc=0", f"raw session: cat /proc/cmdline: {j}")
        for t in tokens:
            ok(t not in j["stdout"] + j["stderr"], f"raw session read {t!r}: {j}")
    finally:
        c.sbx("session", "close", sid)


# --- (d) Python's int<->str digit limit -----------------------------------------------------------

DIGITS_PROBE = r"""
import os, subprocess, sys
print("main", len(str(10**4999)), sys.get_int_max_str_digits())
print("int", int("7" * 5000) % 10)
r = subprocess.run([sys.executable, "-c", "print(len(str(10**4999)))"], capture_output=True,
                   text=True)
print("subprocess", r.stdout.strip() or r.stderr.strip()[-200:])
sys.stdout.flush()
os.system("python3 -c 'print(\"system\", len(str(10**4999)))'")
"""
DIGITS_WANT = "main 5000 0\nint 7\nsubprocess 5000\nsystem 5000\n"


@test()
def guest_parity_python_int_digits(c):
    j, _ = c.run_json("-l", "python", DIGITS_PROBE)
    eq((j["exit_code"], j["stdout"]), (0, DIGITS_WANT), f"one-shot ({j['stderr'][-800:]})")
    r = c.sbx("run", "-q", "print(len(str(10**4999)))")
    eq((r.returncode, r.out), (0, "5000\n"), "the issue's own case: " + r.err)
    sid = _session_new(c, "python")
    try:
        j = _session_exec(c, sid, DIGITS_PROBE)
        eq((j["exit_code"], j["stdout"]), (0, DIGITS_WANT), f"session ({j['stderr'][-800:]})")
    finally:
        c.sbx("session", "close", sid)


# --- restored VMs: the template booted and started its REPL before any of this ran -------------------

@test(any_arch=True)
def guest_parity_restored_vm(c):
    d = os.path.join(c.tmp, "snap-parity")
    os.makedirs(d, exist_ok=True)
    sock, log, sdir = (os.path.join(d, x) for x in ("s.sock", "log", "snapshots"))
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_SNAPSHOTS="1",
                EXEC_SANDBOX_SNAPSHOT_CACHE_DIR=sdir)
    tokens = _kernel_tokens(c)
    p = c.start_daemon(sock=sock, log=log, env=env)
    try:
        # The BOM goes to the restored REPL too; the probes are the cold runs' own.
        code = BOM + DIGITS_PROBE + CMDLINE_PROBE
        deadline, modes = time.time() + 300, []
        while True:
            j, _ = c.run_json("-l", "python", code, env=env)
            modes.append(j["start_mode"])
            if j["start_mode"] == "restore":
                break
            ok(time.time() < deadline, f"no python run restored within 300 s: {modes}")
            time.sleep(0.5)
        eq(j["exit_code"], 0, f"restored probe ran ({j['stderr'][-1500:]})")
        ok(j["stdout"].startswith(DIGITS_WANT), f"digit limit in a restored VM: {j['stdout']}")
        _check_cmdline_probe(j["stdout"][len(DIGITS_WANT):], tokens, "restored")
        j, _ = c.run_json("-l", "python", BOM + "print('restored', 6*7)", env=env)
        eq((j["start_mode"], j["exit_code"], j["stdout"]), ("restore", 0, "restored 42\n"),
           f"BOM in a restored VM ({j['stderr']!r})")
    finally:
        p.terminate()
        p.wait(30)
