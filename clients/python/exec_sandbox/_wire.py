"""Connections to sbxd: framing, the Hello, deadlines, and a pool that hands each operation a
connection of its own.

One operation (a run, an exec, a transfer) holds one connection from its request to its last
reply. That makes cancelling it simple and exact: the connection is closed, and sbxd stops
whatever that connection had running, touching no other operation. A connection whose operation
ended cleanly goes back to the pool for the next one.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from ._errors import (CommunicationError, ProtocolError, SandboxPermissionError, VmCapacityError,
                      from_daemon)
from ._proto import control_pb2 as pb

PROTOCOL_VERSION = 1
CLIENT_NAME = "exec_sandbox-python/0.1.0"
# sbxd refuses requests over 3 MiB; its replies are at most 4 MiB (a result with 1 MiB of stdout
# and 100 KiB of stderr). A length past this is not a frame we can trust.
REPLY_MAX = 4 << 20
REQUEST_MAX = 3 << 20
CONNECT_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0


class Connection:
    """One control connection that has completed its Hello. Not shared between operations."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 path: str) -> None:
        self.reader = reader
        self.writer = writer
        self.path = path
        self._next_id = 1
        self.server = ""

    @classmethod
    async def open(cls, path: str, expect_pid: Optional[int] = None) -> "Connection":
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=REPLY_MAX + 4), CONNECT_TIMEOUT)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise CommunicationError(f"no sandbox daemon listens on `{path}`: {e.strerror}",
                                     kind=0, transient=True) from None
        except asyncio.TimeoutError:
            raise CommunicationError(f"connect to `{path}`: no answer in {CONNECT_TIMEOUT:.0f} s",
                                     transient=True) from None
        except OSError as e:
            raise CommunicationError(f"connect to `{path}`: {e}", transient=True) from None
        conn = cls(reader, writer, path)
        try:
            if expect_pid is not None:
                sock = writer.get_extra_info("socket")
                cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
                pid, _uid, _gid = struct.unpack("3i", cred)
                if pid != expect_pid:
                    raise SandboxPermissionError(
                        f"`{path}` is answered by pid {pid}, not by the daemon this Scheduler "
                        f"started (pid {expect_pid})")
            async with asyncio.timeout(HELLO_TIMEOUT):
                rid = conn.next_id()
                await conn.send(pb.Request(id=rid, hello=pb.Hello(
                    protocol_version=PROTOCOL_VERSION, client=CLIENT_NAME)))
                r = await conn.recv()
            kind = r.WhichOneof("body")
            if kind == "error":
                raise from_daemon(r.error.kind, r.error.transient, r.error.message)
            if kind != "hello" or r.id != rid:
                raise ProtocolError(f"sbxd on `{path}` answered Hello with `{kind}`")
            if r.hello.protocol_version != PROTOCOL_VERSION:
                raise ProtocolError(f"sbxd on `{path}` speaks protocol {r.hello.protocol_version}, "
                                    f"this client {PROTOCOL_VERSION}")
            conn.server = r.hello.server
        except TimeoutError:
            conn.close()
            raise CommunicationError(f"sbxd on `{path}` did not answer Hello in "
                                     f"{HELLO_TIMEOUT:.0f} s") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def next_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    async def send(self, req: pb.Request) -> None:
        body = req.SerializeToString()
        if len(body) > REQUEST_MAX:
            raise ProtocolError(f"request of {len(body)} bytes is over sbxd's {REQUEST_MAX}")
        try:
            self.writer.write(struct.pack(">I", len(body)) + body)
            await self.writer.drain()
        except (ConnectionError, BrokenPipeError) as e:
            raise CommunicationError(f"sbxd on `{self.path}` went away: {e}") from None

    async def recv(self) -> pb.Reply:
        """The next reply; the caller's deadline (asyncio.timeout) bounds the wait."""
        try:
            hdr = await self.reader.readexactly(4)
            (n,) = struct.unpack(">I", hdr)
            if n > REPLY_MAX:
                raise ProtocolError(f"sbxd on `{self.path}` sent a frame of {n} bytes "
                                    f"(at most {REPLY_MAX})")
            body = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise CommunicationError(f"sbxd on `{self.path}` closed the connection "
                                     "before answering (daemon stopped or crashed?)") from None
        except ConnectionError as e:
            raise CommunicationError(f"sbxd on `{self.path}` went away: {e}") from None
        r = pb.Reply()
        try:
            r.ParseFromString(body)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise ProtocolError(f"undecodable frame from sbxd on `{self.path}`: {e}") from None
        return r

    def close(self) -> None:
        # abort(), not close(): queued requests must not reach the daemon after we gave up.
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


class Pool:
    """Connections to one daemon. ``run_slots`` bounds the runs in flight (the Scheduler's
    max_concurrent_vms); other operations take a connection without waiting for a slot, so a
    session can still be closed while runs queue. At most run_slots idle connections are kept."""

    def __init__(self, path: str, run_slots: int, expect_pid: Optional[int] = None) -> None:
        self.path = path
        self.expect_pid = expect_pid
        self._idle: list[Connection] = []
        self._max_idle = run_slots
        self._slots = asyncio.Semaphore(run_slots)
        self._closed = False

    async def _take(self) -> Connection:
        if self._closed:
            raise CommunicationError("the Scheduler is closed")
        while self._idle:
            c = self._idle.pop()
            if c.usable:
                return c
            c.close()
        return await Connection.open(self.path, self.expect_pid)

    def _give_back(self, c: Connection) -> None:
        if not self._closed and c.usable and len(self._idle) < self._max_idle:
            self._idle.append(c)
        else:
            c.close()

    @asynccontextmanager
    async def connection(self, run_slot: bool = False,
                         slot_wait: float = 120.0) -> AsyncIterator[Connection]:
        """A connection for one operation. It returns to the pool only when the block ends
        without an exception: after an error or a cancellation its state is unknown, so it is
        closed (which also makes sbxd stop what it was doing for it)."""
        if run_slot:
            try:
                await asyncio.wait_for(self._slots.acquire(), slot_wait)
            except asyncio.TimeoutError:
                raise VmCapacityError(f"all {self._max_idle} run slots of this Scheduler stayed "
                                      f"busy for {slot_wait:.0f} s") from None
        try:
            c = await self._take()
            try:
                yield c
            except BaseException:
                c.close()
                raise
            self._give_back(c)
        finally:
            if run_slot:
                self._slots.release()

    def close(self) -> None:
        self._closed = True
        for c in self._idle:
            c.close()
        self._idle.clear()


def deadline_error(what: str, seconds: float) -> CommunicationError:
    return CommunicationError(f"{what}: no answer from sbxd in {seconds:.0f} s")


__all__ = ["Connection", "Pool", "pb", "deadline_error"]
