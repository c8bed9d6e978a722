"""A private sbxd for one Scheduler: found, started on a socket in a fresh 0700 directory, waited
for, and stopped (with everything it started) when the Scheduler closes."""
from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

from ._config import SchedulerConfig
from ._errors import SandboxDependencyError, SandboxError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1


def find_sbxd(config: SchedulerConfig) -> str:
    """config.sbxd, else $EXEC_SANDBOX_SBXD, else sbxd in $PATH, else beside `sbx` in $PATH, else
    the build/sbxd of the checkout this package sits in."""
    for cand in (config.sbxd, os.environ.get("EXEC_SANDBOX_SBXD")):
        if cand:
            if not os.access(cand, os.X_OK):
                raise SandboxDependencyError(f"sbxd `{cand}` is not an executable file")
            return cand
    found = shutil.which("sbxd")
    if found:
        return found
    sbx = shutil.which("sbx")
    if sbx:
        beside = os.path.join(os.path.dirname(os.path.realpath(sbx)), "sbxd")
        if os.access(beside, os.X_OK):
            return beside
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.normpath(os.path.join(here, "..", "..", "..", "build", "sbxd"))
    if os.access(checkout, os.X_OK):
        return checkout
    raise SandboxDependencyError(
        "sbxd not found: pass SchedulerConfig(sbxd=PATH) or set EXEC_SANDBOX_SBXD, put sbxd in "
        "$PATH, or name a running daemon with SchedulerConfig(socket=...)/EXEC_SANDBOX_SOCKET")


def _die_with_parent() -> None:
    # The daemon must not outlive a client that crashed without closing its Scheduler.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class PrivateDaemon:
    def __init__(self, config: SchedulerConfig) -> None:
        self.binary = find_sbxd(config)
        self.dir = tempfile.mkdtemp(prefix="exec-sandbox-")  # 0700, ours
        self.socket = os.path.join(self.dir, "sbxd.sock")
        self.log = os.path.join(self.dir, "sbxd.log")
        self.argv = [self.binary, "--socket", self.socket, "--idle-exit-seconds", "0",
                     *config.sbxd_flags(), *config.sbxd_args]
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            try:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_die_with_parent)
            except OSError as e:
                self.cleanup()
                raise SandboxDependencyError(f"start `{self.binary}`: {e}") from None
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise SandboxError(f"sbxd exited at start (status {rc}): {self.log_tail()}")
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.socket)
                    return
                except OSError:
                    pass
                finally:
                    s.close()
                if time.monotonic() > deadline:
                    raise SandboxError(f"sbxd did not listen on `{self.socket}` within "
                                       f"{START_TIMEOUT:.0f} s: {self.log_tail()}")
                await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            try:
                while p.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            except BaseException:  # cancelled while stopping: do not leave the daemon behind
                p.kill()
                p.wait()
                self.cleanup()
                raise
            if p.poll() is None:
                p.kill()
                p.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
