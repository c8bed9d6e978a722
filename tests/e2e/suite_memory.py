"""Guest memory: the balloon giving idle memory back, exhaustion, compressed swap."""
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
from suite_sessions import _session, _sx


# Fills the guest's page cache (the image is read through virtio-blk), then goes idle.
_FILL_CACHE = """import os
n = 0
for root, dirs, files in os.walk('/usr/lib'):
    for f in files:
        try:
            n += len(open(os.path.join(root, f), 'rb').read())
        except OSError:
            pass
print(n >> 20 > 150)"""

# Waits (up to 10 s) for the guest to have most of its memory available again.
_MEM_BACK = """import time
t0 = time.time()
while True:
    kb = int([l for l in open('/proc/meminfo') if l.startswith('MemAvailable:')][0].split()[1])
    if kb > 180 * 1024 or time.time() - t0 > 10:
        break
    time.sleep(0.05)
print(kb > 180 * 1024)"""


def _qemu_pss_mb(daemon_pid):
    """Host PSS of the one QEMU below a daemon, in MiB."""
    qemus = [q for q, comm in descendants(daemon_pid) if comm.startswith("qemu")]
    eq(len(qemus), 1, "one QEMU below the daemon")
    for line in open(f"/proc/{qemus[0]}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no Pss in smaps_rollup")


@test(any_arch=True)
def idle_vm_gives_memory_back(c):
    """The balloon: an idle (cold-booted) session VM gives its free memory and page cache back to
    the host, and has it again for its next exec."""
    sock, log = os.path.join(c.tmp, "balloon.sock"), os.path.join(c.tmp, "balloon.log")
    # Cold boots even when the suite runs with snapshots: restored VMs have no balloon.
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_SNAPSHOTS="0")
    p = c.start_daemon("--balloon-idle-seconds", "2", sock=sock, log=log, env=env)
    try:
        sid = _session(c, env=env)
        j, _ = _sx(c, sid, _FILL_CACHE, "-t", "120", rc=0, env=env)
        eq(j["stdout"], "True\n", "the guest read its image into its page cache")
        busy = _qemu_pss_mb(p.pid)
        wait_for(lambda: "the idle VM gave back" in open(log).read(), 30, "the balloon to inflate")
        idle = _qemu_pss_mb(p.pid)
        ok(busy - idle >= 50, f"QEMU PSS {busy} MiB after the exec, {idle} MiB once idle")
        j, _ = _sx(c, sid, _MEM_BACK, rc=0, env=env)
        eq(j["stdout"], "True\n", "the next exec has the guest's memory back")
        j, _ = _sx(c, sid, "x = bytearray(160 << 20); print(len(x) >> 20)", rc=0, env=env)
        eq(j["stdout"], "160\n", "and can use it")
        ok("reclaim off" not in open(log).read(), "no QMP failure: " + open(log).read()[-800:])
        c.sbx("session", "close", sid, env=env)
    finally:
        p.terminate()
        p.wait(10)


@test()
def guest_memory_exhaustion(c):
    j, _ = c.run_json("-t", "60", "x = bytearray(2 * 1024**3)\nprint('allocated')")
    ok(j["exit_code"] != 0 and "allocated" not in j["stdout"], f"2 GiB in 256 MB: {j['exit_code']}")
    ok(j["external_memory_peak_mb"] <= 256 + 384, "host memory stayed within the cgroup")
    j, _ = c.run_json("-t", "60", "import os\nb=[]\nwhile True: b.append(os.urandom(16 * 1024**2))")
    ok(j["exit_code"] != 0, "growing allocation stopped in the guest")
    eq(c.sbx("run", "-q", "print('ok')", check_rc=0).out, "ok\n", "next run")


@test(any_arch=True)
def guest_has_compressed_swap(c):
    """zram: compressible memory beyond the guest's RAM size fits; /sys stays read-only."""
    j, _ = c.run_json("-t", "60", "-l", "raw", "cat /proc/swaps; touch /sys/x 2>&1")
    ok("/dev/zram0" in j["stdout"], "zram swap active: " + j["stdout"])
    ok("Read-only file system" in j["stdout"], "/sys read-only for the code: " + j["stdout"])
    j, _ = c.run_json("-t", "60", "b = []\nfor i in range(30):\n    b.append(bytearray(10 << 20))\n"
                      "    b[-1][::4096] = b'x' * len(b[-1][::4096])\nprint(len(b) * 10, 'MB')")
    eq((j["exit_code"], j["stdout"]), (0, "300 MB\n"), "300 MB of compressible data in 256 MB")
