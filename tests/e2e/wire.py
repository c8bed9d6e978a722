"""The control protocol spoken by hand, for tests that must misbehave where sbx never would.

control_pb2 and files_pb2 are generated from proto/ with protoc (python3-protobuf's runtime) into
a temporary directory the first time they are needed.
"""
import importlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

from harness import ROOT

_pb = None


def files():
    """The generated files_pb2 module (EnvVar and the file-transfer messages)."""
    pb()
    return importlib.import_module("files_pb2")


def pb():
    """The generated control_pb2 module."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="sbx-pb-")
        subprocess.run(["protoc", "--proto_path", os.path.join(ROOT, "proto"), "--python_out", out,
                        "files.proto", "control.proto"], check=True)
        sys.path.insert(0, out)
        try:
            import google.protobuf  # noqa: F401
        except ImportError:
            # Another interpreter than Debian's (pyenv, a venv): use Debian's python3-protobuf.
            sys.path.append("/usr/lib/python3/dist-packages")
        _pb = importlib.import_module("control_pb2")
    return _pb


def frame(msg):
    b = msg.SerializeToString()
    return struct.pack(">I", len(b)) + b


def request(id, **body):
    """A Request envelope: request(1, hello=pb().Hello(protocol_version=1))."""
    return pb().Request(id=id, **body)


def hello_frame(id=1, version=1):
    return frame(request(id, hello=pb().Hello(protocol_version=version, client="e2e")))


def closed_by_peer(s, timeout):
    """Whether the daemon closes socket s within timeout seconds (what it sends is skipped)."""
    s.settimeout(timeout)
    deadline = time.time() + timeout
    try:
        while s.recv(65536):
            if time.time() > deadline:
                return False
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


class Conn:
    """One control connection; recv() returns decoded Replies."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)  # blocking: waits while the listen backlog is full
        self.s.settimeout(timeout)
        self.buf = b""

    def send(self, id, **body):
        self.s.sendall(frame(request(id, **body)))

    def hello(self):
        self.s.sendall(hello_frame())
        r = self.recv()
        assert r.WhichOneof("body") == "hello", f"Hello answered with {r}"
        return self

    def recv(self):
        """The next reply, or None at EOF."""
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    r = pb().Reply()
                    r.ParseFromString(self.buf[4:4 + n])
                    self.buf = self.buf[4 + n:]
                    return r
            b = self.s.recv(65536)
            if not b:
                return None
            self.buf += b

    def until(self, id, kinds=("result", "error")):
        """Replies for id until one whose body is one of kinds; returns that one."""
        while True:
            r = self.recv()
            if r is None:
                raise AssertionError(f"connection closed while waiting for request {id}")
            if r.id == id and r.WhichOneof("body") in kinds:
                return r

    def closed_by_peer(self, timeout):
        return closed_by_peer(self.s, timeout)

    def close(self):
        self.s.close()
