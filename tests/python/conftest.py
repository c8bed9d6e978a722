"""The Python client's tests: against the real sbxd and real VMs (tests that need them), with the
package imported from clients/python (no install needed).

Every test gets daemons of its own: a Scheduler without a socket starts a private sbxd, found
through EXEC_SANDBOX_SBXD (default: the ASan build, build/asan/sbxd). All of them share one
temporary cache directory for the session (the accelerator verdict and memory snapshots), and
read the guest images from the user's cache, which they never write.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, CLIENT)
if not os.path.exists(os.path.join(CLIENT, "exec_sandbox", "_proto", "control_pb2.py")):
    subprocess.run([sys.executable, os.path.join(CLIENT, "genproto.py")], check=True)


def _images_dir():
    cache = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
    return os.path.join(cache, "images")


SBXD = os.path.abspath(os.environ.get("EXEC_SANDBOX_SBXD") or
                       os.path.join(ROOT, "build", "asan", "sbxd"))
IMAGES = os.environ.get("EXEC_SANDBOX_IMAGES_DIR") or _images_dir()
CACHE = tempfile.mkdtemp(prefix="sbx-pytest-cache-")
os.environ["EXEC_SANDBOX_SBXD"] = SBXD
os.environ["EXEC_SANDBOX_IMAGES_DIR"] = IMAGES
os.environ["EXEC_SANDBOX_CACHE_DIR"] = CACHE
os.environ.pop("EXEC_SANDBOX_SOCKET", None)
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")

HAVE_DAEMON = os.access(SBXD, os.X_OK) and os.path.exists(os.path.join(IMAGES, "vmlinux"))

needs_vm = pytest.mark.skipif(not HAVE_DAEMON, reason=f"no {SBXD} or no guest images in {IMAGES}")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots real VMs")


class SharedDaemon:
    """An sbxd started by the test on a socket of its own, as a service would be."""

    def __init__(self, *flags):
        self.dir = tempfile.mkdtemp(prefix="sbx-pytest-")
        self.socket = os.path.join(self.dir, "sbxd.sock")
        self.log = os.path.join(self.dir, "sbxd.log")
        self.proc = subprocess.Popen([SBXD, "--socket", self.socket, "--idle-exit-seconds", "0",
                                      *flags], stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            assert self.proc.poll() is None, open(self.log).read()[-2000:]
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(self.socket)
                break
            except OSError:
                assert time.time() < deadline, "sbxd did not listen"
                time.sleep(0.02)
            finally:
                s.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def shared_daemon():
    started = []

    def start(*flags):
        d = SharedDaemon(*flags)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()
