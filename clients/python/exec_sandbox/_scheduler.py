"""Scheduler and Session: the reference's API over sbxd's control protocol."""
from __future__ import annotations

import asyncio
import codecs
import hashlib
import inspect
import os
import re
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, Union

from ._config import SchedulerConfig
from ._daemon import PrivateDaemon
from ._errors import (CommunicationError, ProtocolError, SandboxError,
                      SessionClosedError, VmConfigError, VmTimeoutError, from_daemon)
from ._models import (LANGUAGES, BlockedConnection, ExecutionResult, ExposedPort, FileInfo,
                      NetworkReport, PortMapping, TimingBreakdown)
from ._proto import files_pb2 as fpb
from ._wire import Connection, Pool, deadline_error, pb
from . import _zstd

OutputCallback = Callable[[str], Union[None, Awaitable[None]]]
# Called once with the exposed ports as soon as the daemon has bound them, before the code runs.
PortsCallback = Callable[[list[ExposedPort]], Union[None, Awaitable[None]]]
PortSpec = Union[PortMapping, int, str]

FILE_MAX = 50 << 20
FILE_CHUNK = 256 << 10
# How long sbxd may take beyond a run's own timeout before we stop waiting: its queue wait, a
# boot, its grace period, and slack for a loaded machine. sbxd answers within this either way.
QUEUE_WAIT = 120.0
BOOT_AND_GRACE = 30.0 + 15.0 + 30.0
# A first install of a package set: the daemon's package_install_timeout (300 s by default), the
# install VM's boot and reading the tree out.
INSTALL_WAIT = 300.0 + 60.0
CONTROL_TIMEOUT = 30.0
FILE_TIMEOUT = 600.0


PACKAGES_MAX = 50


def _packages(packages: Optional[Sequence[str]]) -> list[str]:
    """The specs to send (python "name==version", javascript "name@version"; the name alone is
    unpinned). Only their shape is checked here: sbxd checks the syntax and the top-10k lists
    (PackageNotAllowedError) for every client alike."""
    if packages is None:
        return []
    if isinstance(packages, (str, bytes)):
        raise VmConfigError("packages: give a list of specs, not one string")
    out = list(packages)
    if not all(isinstance(p, str) for p in out):
        raise VmConfigError("packages: every spec must be a str")
    if len(out) > PACKAGES_MAX:
        raise VmConfigError(f"{len(out)} packages; the limit is {PACKAGES_MAX}")
    return out


EXPOSE_MAX = 10
DOMAINS_MAX = 100
_EXPOSE_SPEC = re.compile(r"([0-9]+)(?::([0-9]+))?(?:/(tcp|udp))?")


def _port(p: PortSpec) -> pb.PortExpose:
    """One expose_ports entry: 8080, PortMapping(8080, 3000) or "8080:3000/udp". The ranges are
    checked here for an early error; sbxd checks everything again (duplicates among them)."""
    if isinstance(p, PortMapping):
        internal, external, proto = p.internal, p.external or 0, p.protocol
    elif isinstance(p, int) and not isinstance(p, bool):
        internal, external, proto = p, 0, "tcp"
    elif isinstance(p, str):
        m = _EXPOSE_SPEC.fullmatch(p)
        if not m:
            raise VmConfigError(f"expose_ports: `{p}` is not INTERNAL[:EXTERNAL][/tcp|/udp]")
        internal, external, proto = int(m[1]), int(m[2] or 0), m[3] or "tcp"
    else:
        raise VmConfigError(f"expose_ports: {p!r} is not a port, a PortMapping or a spec string")
    if not isinstance(internal, int) or not 1 <= internal <= 65535:
        raise VmConfigError(f"expose_ports: port {internal!r} is out of range (1-65535)")
    if not isinstance(external, int) or (external and not 1024 <= external <= 65535):
        raise VmConfigError(f"expose_ports: host port {external!r} is out of range (1024-65535, "
                            "or None to let the OS choose)")
    if proto not in ("tcp", "udp"):
        raise VmConfigError(f"expose_ports: protocol {proto!r} is not tcp or udp")
    return pb.PortExpose(internal=internal, external=external, protocol=proto)


def _network(allow_network: bool, allowed_domains: Optional[Sequence[str]],
             expose_ports: Optional[Sequence[PortSpec]]) -> Optional[pb.NetworkRequest]:
    """The request's NetworkRequest, or None for no network interface at all."""
    if isinstance(allowed_domains, str) or isinstance(expose_ports, (str, int, PortMapping)):
        raise VmConfigError("allowed_domains and expose_ports take lists")
    domains = list(allowed_domains or [])
    if domains and not allow_network:
        raise VmConfigError("allowed_domains need allow_network=True: a domain allowlist narrows "
                            "network access, it does not grant it")
    if len(domains) > DOMAINS_MAX:
        raise VmConfigError(f"{len(domains)} allowed domains; the limit is {DOMAINS_MAX}")
    if not all(isinstance(d, str) for d in domains):
        raise VmConfigError("allowed_domains: every entry must be a str")
    ports = [_port(p) for p in (expose_ports or [])]
    if len(ports) > EXPOSE_MAX:
        raise VmConfigError(f"{len(ports)} exposed ports; the limit is {EXPOSE_MAX}")
    if not (allow_network or ports):
        return None
    return pb.NetworkRequest(allow_network=bool(allow_network), allowed_domains=domains,
                             expose=ports)


def _exposed(ports: Sequence[pb.ExposedPort]) -> list[ExposedPort]:
    return [ExposedPort(internal=p.internal, external=p.external, host=p.host or "127.0.0.1",
                        protocol=p.protocol or "tcp") for p in ports]


def _report(r: pb.ExecResult) -> Optional[NetworkReport]:
    if not r.HasField("network"):
        return None
    n = r.network
    return NetworkReport(mode=n.mode, allowed_domains=list(n.allowed_domains),
                         blocked=[BlockedConnection(what=b.what, port=b.port, reason=b.reason)
                                  for b in n.blocked],
                         blocked_total=max(n.blocked_total, len(n.blocked)))


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise VmConfigError(
            f"unknown language `{language}` (python, javascript, typescript or raw)")
    return language


def _env(env_vars: Optional[Mapping[str, str]]) -> list[fpb.EnvVar]:
    out = []
    for k, v in (env_vars or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise VmConfigError(f"env_vars: {k!r}={v!r}: names and values must be str")
        out.append(fpb.EnvVar(key=k, value=v))
    return out


def _code(code: str) -> bytes:
    if not isinstance(code, str):
        raise VmConfigError("code must be a str")
    return code.encode("utf-8")


def _result(r: pb.ExecResult) -> ExecutionResult:
    t = r.timing
    return ExecutionResult(
        stdout=r.stdout.decode("utf-8", "replace"), stderr=r.stderr.decode("utf-8", "replace"),
        exit_code=r.exit_code, execution_time_ms=r.execution_time_ms,
        external_cpu_time_ms=r.external_cpu_time_ms,
        external_memory_peak_mb=r.external_memory_peak_mb,
        timing=TimingBreakdown(setup_ms=t.setup_ms, boot_ms=t.boot_ms, execute_ms=t.execute_ms,
                               total_ms=t.total_ms),
        warm_pool_hit=r.warm_pool_hit, exposed_ports=_exposed(r.exposed_ports),
        timed_out=r.timed_out, stdout_truncated=r.stdout_truncated,
        stderr_truncated=r.stderr_truncated, accelerator=r.accelerator, start_mode=r.start_mode,
        guest_arch=r.guest_arch,
        package_layer=r.package_layer, package_layer_built=r.package_layer_built,
        exec_count=r.exec_count, interpreter_reset=r.interpreter_reset, network=_report(r))


async def _call(cb: Optional[Callable[[Any], Any]], value: Any) -> None:
    """A callback (plain or a coroutine function) with text or ports; nothing for empty ones."""
    if cb is None or not value:
        return
    v = cb(value)
    if inspect.isawaitable(v):
        await v


async def _exec_replies(conn: Connection, rid: int, on_stdout: Optional[OutputCallback],
                        on_stderr: Optional[OutputCallback], what: str,
                        on_ports: Optional[PortsCallback] = None) -> ExecutionResult:
    """Chunks (to the callbacks, decoded as they come) until the result or an error; the
    exposed ports to on_ports as soon as they are bound. Each call has the connection to itself,
    so a slow callback holds back only this run: sbxd buffers its output meanwhile."""
    dec = {1: codecs.getincrementaldecoder("utf-8")("replace"),
           2: codecs.getincrementaldecoder("utf-8")("replace")}
    cbs = {1: on_stdout, 2: on_stderr}
    while True:
        r = await conn.recv()
        if r.id != rid:
            raise ProtocolError(f"{what}: reply for request {r.id}, expected {rid}")
        body = r.WhichOneof("body")
        if body == "chunk":
            s = r.chunk.stream
            if s in dec:
                await _call(cbs[s], dec[s].decode(r.chunk.data))
        elif body == "result":
            for s in (1, 2):
                await _call(cbs[s], dec[s].decode(b"", final=True))
            res = _result(r.result)
            if res.timed_out:
                raise VmTimeoutError(f"{what}: the code ran past its timeout and was stopped "
                                     "(the error's .result holds its output)", kind=0,
                                     result=res)
            return res
        elif body == "ports":
            await _call(on_ports, _exposed(r.ports.ports))
        elif body == "progress":
            pass  # a first package install: the result comes after it
        elif body == "error":
            raise from_daemon(r.error.kind, r.error.transient, r.error.message)
        else:
            raise ProtocolError(f"{what}: unexpected `{body}` reply")


class Scheduler:
    """Runs code in sandbox VMs through one sbxd; an async context manager.

    ``async with Scheduler(config) as s: result = await s.run("print(1)")``
    """

    def __init__(self, config: Optional[SchedulerConfig] = None) -> None:
        self.config = config or SchedulerConfig()
        self._daemon: Optional[PrivateDaemon] = None
        self._pool: Optional[Pool] = None
        self._sessions: set["Session"] = set()
        self.socket: Optional[str] = None
        self.server = ""

    async def __aenter__(self) -> "Scheduler":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        if self._pool is not None:
            return
        cfg = self.config
        sock = cfg.socket or os.environ.get("EXEC_SANDBOX_SOCKET") or None
        expect_pid = None
        if sock is None:
            self._daemon = PrivateDaemon(cfg)
            await self._daemon.start()
            sock = self._daemon.socket
            assert self._daemon.proc is not None
            expect_pid = self._daemon.proc.pid
        self.socket = sock
        self._pool = Pool(sock, cfg.max_concurrent_vms, expect_pid)
        try:
            st = await self.status()
            if self._daemon is None:
                self._check_shared(st)
        except BaseException:
            await self.close()
            raise

    def _check_shared(self, st: pb.StatusReply) -> None:
        """A setting asked for that the daemon on the socket does not have is an error: the
        Scheduler cannot change a daemon it did not start."""
        want = self.config.explicit()
        have: dict[str, Any] = {"max_concurrent_vms": st.max_concurrent_vms,
                                "warm_pool_size": st.warm_pool_size,
                                "images_dir": st.images_dir, "snapshot_cache_dir": st.snapshot_dir}
        diffs = []
        for k, v in want.items():
            if k not in have:
                continue  # sent with each request, or not visible in the status reply
            h = have[k]
            if isinstance(v, str) and isinstance(h, str):
                same = os.path.realpath(v) == os.path.realpath(h)
            else:
                same = v == h
            if not same:
                diffs.append(f"{k} = {v!r} here, {h!r} in the daemon")
        if diffs:
            raise VmConfigError(f"the daemon on `{self.socket}` runs with other settings than "
                                f"this SchedulerConfig: {'; '.join(diffs)} (restart it with them, "
                                "or leave socket unset to get a private daemon)")

    async def close(self) -> None:
        """Closes the sessions this Scheduler opened and stops its private daemon, if any.
        Safe to call more than once."""
        for s in list(self._sessions):
            try:
                await s.close()
            except SandboxError:
                pass
        if self._pool is not None:
            self._pool.close()
        if self._daemon is not None:
            await self._daemon.stop()
            self._daemon = None

    def _need_pool(self) -> Pool:
        if self._pool is None:
            raise SandboxError("the Scheduler is not started: use `async with Scheduler() as s`")
        return self._pool

    async def status(self) -> pb.StatusReply:
        """The daemon's StatusReply (proto/control.proto)."""
        pool = self._need_pool()
        async with pool.connection() as c:
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT):
                    rid = c.next_id()
                    await c.send(pb.Request(id=rid, status=pb.StatusRequest()))
                    r = await c.recv()
            except TimeoutError:
                raise deadline_error("status", CONTROL_TIMEOUT) from None
            if r.WhichOneof("body") == "error":
                raise from_daemon(r.error.kind, r.error.transient, r.error.message)
            if r.WhichOneof("body") != "status":
                raise ProtocolError(f"status: unexpected `{r.WhichOneof('body')}` reply")
            return r.status

    async def run(self, code: str, language: str = "python",
                  packages: Optional[Sequence[str]] = None,
                  timeout_seconds: Optional[int] = None, memory_mb: Optional[int] = None,
                  env_vars: Optional[Mapping[str, str]] = None, allow_network: bool = False,
                  allowed_domains: Optional[Sequence[str]] = None,
                  expose_ports: Optional[Sequence[PortSpec]] = None,
                  on_stdout: Optional[OutputCallback] = None,
                  on_stderr: Optional[OutputCallback] = None,
                  on_ports: Optional[PortsCallback] = None) -> ExecutionResult:
        """Runs code in a fresh VM that is destroyed afterwards.

        packages: specs to install first (python "pandas==2.2.0", javascript "lodash@4.17.21");
        a name off its language's top-10k list raises PackageNotAllowedError unless the
        config's enable_package_validation is false. This version of sbxd checks them and then
        refuses them (VmConfigError "not available").

        Without allow_network or expose_ports the VM has no network interface. expose_ports
        takes ports (8080), PortMapping objects and "8080:3000/udp" strings; on_ports (a plain
        or coroutine function) gets the bound ports before the code's output, so a caller can
        connect to a server while it runs; the result's ``exposed_ports`` has them too, and its
        ``network`` says what the network policy refused.

        Raises VmTimeoutError when the code runs past timeout_seconds (its output so far is in
        the error's ``result``). Cancelling the awaiting task stops the VM.
        """
        specs = _packages(packages)
        network = _network(allow_network, allowed_domains, expose_ports)
        pool = self._need_pool()
        timeout = timeout_seconds or self.config.default_timeout_seconds
        req = pb.RunRequest(language=_check_language(language), code=_code(code),
                            timeout_seconds=timeout,
                            memory_mb=memory_mb or self.config.default_memory_mb,
                            env=_env(env_vars), stream=bool(on_stdout or on_stderr),
                            network=network, packages=specs,
                            skip_package_validation=not self.config.enable_package_validation)
        limit = QUEUE_WAIT + timeout + BOOT_AND_GRACE + (INSTALL_WAIT if specs else 0.0)
        async with pool.connection(run_slot=True, slot_wait=QUEUE_WAIT) as c:
            try:
                async with asyncio.timeout(limit):
                    rid = c.next_id()
                    await c.send(pb.Request(id=rid, run=req))
                    return await _exec_replies(c, rid, on_stdout, on_stderr, "run", on_ports)
            except TimeoutError:
                raise deadline_error("run", limit) from None

    async def session(self, language: str = "python", packages: Optional[Sequence[str]] = None,
                      timeout_seconds: Optional[int] = None, memory_mb: Optional[int] = None,
                      env_vars: Optional[Mapping[str, str]] = None, allow_network: bool = False,
                      allowed_domains: Optional[Sequence[str]] = None,
                      expose_ports: Optional[Sequence[PortSpec]] = None,
                      idle_timeout_seconds: Optional[int] = None,
                      on_ports: Optional[PortsCallback] = None) -> "Session":
        """Opens a session: one VM whose interpreter state lasts across ``exec`` calls, held
        by the daemon until ``close()`` or its idle timeout. The network options are those of
        ``run``; the session's ``exposed_ports`` lists the bound ports."""
        specs = _packages(packages)
        network = _network(allow_network, allowed_domains, expose_ports)
        pool = self._need_pool()
        timeout = timeout_seconds or self.config.default_timeout_seconds
        req = pb.SessionOpen(
            language=_check_language(language),
            memory_mb=memory_mb or self.config.default_memory_mb, timeout_seconds=timeout,
            env=_env(env_vars),
            idle_timeout_seconds=idle_timeout_seconds or
            self.config.session_idle_timeout_seconds, network=network, packages=specs,
            skip_package_validation=not self.config.enable_package_validation)
        limit = QUEUE_WAIT + BOOT_AND_GRACE + (INSTALL_WAIT if specs else 0.0)
        async with pool.connection(run_slot=True, slot_wait=QUEUE_WAIT) as c:
            try:
                async with asyncio.timeout(limit):
                    rid = c.next_id()
                    await c.send(pb.Request(id=rid, session_open=req))
                    r = await c.recv()
                    while r.WhichOneof("body") in ("ports", "progress"):
                        if r.WhichOneof("body") == "ports":
                            await _call(on_ports, _exposed(r.ports.ports))
                        r = await c.recv()
            except TimeoutError:
                raise deadline_error("open session", limit) from None
        body = r.WhichOneof("body")
        if body == "error":
            raise from_daemon(r.error.kind, r.error.transient, r.error.message)
        if body != "session" or not r.session.session_id:
            raise ProtocolError(f"open session: unexpected `{body}` reply")
        s = Session(self, r.session, timeout)
        self._sessions.add(s)
        return s


class Session:
    """One sandbox VM kept across execs. Use it as ``async with await scheduler.session() as s``.

    Operations on one session run one at a time, in the order they were called.
    """

    def __init__(self, scheduler: Scheduler, info: pb.SessionInfo, timeout: int) -> None:
        self._scheduler = scheduler
        self.session_id: str = info.session_id
        self.language: str = info.language
        self.memory_mb: int = info.memory_mb
        self.idle_timeout_seconds: int = info.idle_timeout_seconds
        self.accelerator: str = info.accelerator
        self.guest_arch: str = info.guest_arch
        self.boot_ms: int = info.boot_ms
        self.exposed_ports: list[ExposedPort] = _exposed(info.exposed_ports)
        self.network_mode: str = info.network_mode or "none"
        self._timeout = timeout
        self._exec_count = int(info.exec_count)
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def exec_count(self) -> int:
        """Execs run in this session so far (as the daemon counts them)."""
        return self._exec_count

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"session {self.session_id} is closed")

    async def _op(self, what: str, limit: float, req: pb.Request,
                  body_fn: Callable[[Connection, int], Awaitable[Any]]) -> Any:
        self._check_open()
        pool = self._scheduler._need_pool()
        async with self._lock:
            self._check_open()
            async with pool.connection() as c:
                try:
                    async with asyncio.timeout(limit):
                        rid = c.next_id()
                        req.id = rid
                        await c.send(req)
                        return await body_fn(c, rid)
                except TimeoutError:
                    raise deadline_error(what, limit) from None

    async def exec(self, code: str, timeout_seconds: Optional[int] = None,
                   on_stdout: Optional[OutputCallback] = None,
                   on_stderr: Optional[OutputCallback] = None) -> ExecutionResult:
        """Runs code in the session's interpreter; state from earlier execs is there."""
        timeout = timeout_seconds or self._timeout
        req = pb.Request(session_exec=pb.SessionExec(
            session_id=self.session_id, code=_code(code), timeout_seconds=timeout_seconds or 0,
            stream=bool(on_stdout or on_stderr)))

        async def body(c: Connection, rid: int) -> ExecutionResult:
            try:
                res = await _exec_replies(c, rid, on_stdout, on_stderr, "exec")
            except VmTimeoutError as e:
                if e.result is not None:
                    self._exec_count = e.result.exec_count
                raise
            except SessionClosedError:
                self._closed = True
                raise
            self._exec_count = res.exec_count
            return res
        return await self._op("exec", timeout + BOOT_AND_GRACE, req, body)

    async def write_file(self, path: str, content: Union[bytes, bytearray, Path]) -> None:
        """Writes content (bytes, or the contents of a local file) to path in the sandbox home,
        replacing any file there. At most 50 MiB."""
        if isinstance(content, Path):
            try:
                data = await asyncio.to_thread(content.read_bytes)
            except OSError as e:
                raise VmConfigError(f"write_file: read `{content}`: {e.strerror}") from None
        elif isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
        else:
            raise VmConfigError("write_file: content must be bytes or a pathlib.Path")
        if len(data) > FILE_MAX:
            raise VmConfigError(f"write_file: {len(data)} bytes is over the 50 MiB limit")
        sha = hashlib.sha256(data).digest()
        req = pb.Request(file_write=pb.FileWrite(session_id=self.session_id, path=path,
                                                 size=len(data), sha256=sha))

        async def body(c: Connection, rid: int) -> None:
            off = 0
            while True:
                piece = data[off:off + FILE_CHUNK]
                off += len(piece)
                z = await asyncio.to_thread(_zstd.compress, piece) if len(piece) > 65536 \
                    else _zstd.compress(piece)
                last = off >= len(data)
                try:
                    await c.send(pb.Request(id=rid, file_chunk=fpb.FileChunk(zdata=z, last=last)))
                except CommunicationError:
                    break  # sbxd may have refused the upload and closed: its reason follows
                if last:
                    break
            r = await c.recv()
            b = r.WhichOneof("body")
            if b == "error":
                raise from_daemon(r.error.kind, r.error.transient, r.error.message)
            if b != "file_done":
                raise ProtocolError(f"write_file: unexpected `{b}` reply")
            if r.file_done.size != len(data) or r.file_done.sha256 != sha:
                raise CommunicationError(f"write_file `{path}`: the sandbox confirmed "
                                         f"{r.file_done.size} bytes with another sha256")
        await self._op("write_file", FILE_TIMEOUT, req, body)

    async def read_file(self, path: str) -> bytes:
        """The content of path in the sandbox home."""
        req = pb.Request(file_read=pb.FileRead(session_id=self.session_id, path=path))

        async def body(c: Connection, rid: int) -> bytes:
            parts: list[bytes] = []
            total = 0
            while True:
                r = await c.recv()
                b = r.WhichOneof("body")
                if b == "error":
                    raise from_daemon(r.error.kind, r.error.transient, r.error.message)
                if b == "file_chunk":
                    z = r.file_chunk.zdata
                    piece = await asyncio.to_thread(_zstd.decompress, z, FILE_CHUNK) \
                        if len(z) > 16384 else _zstd.decompress(z, FILE_CHUNK)
                    total += len(piece)
                    if total > FILE_MAX:
                        raise ProtocolError("read_file: more than 50 MiB from sbxd")
                    parts.append(piece)
                    continue
                if b != "file_done":
                    raise ProtocolError(f"read_file: unexpected `{b}` reply")
                data = b"".join(parts)
                if r.file_done.size != len(data) or \
                        r.file_done.sha256 != hashlib.sha256(data).digest():
                    raise CommunicationError(f"read_file `{path}`: size or sha256 does not "
                                             "match what the sandbox announced")
                return data
        data: bytes = await self._op("read_file", FILE_TIMEOUT, req, body)
        return data

    async def list_files(self, path: str = "") -> list[FileInfo]:
        """The entries of a directory in the sandbox home ("" is the home), sorted by name."""
        req = pb.Request(file_list=pb.FileList(session_id=self.session_id, path=path))

        async def body(c: Connection, rid: int) -> list[FileInfo]:
            r = await c.recv()
            b = r.WhichOneof("body")
            if b == "error":
                raise from_daemon(r.error.kind, r.error.transient, r.error.message)
            if b != "file_listing":
                raise ProtocolError(f"list_files: unexpected `{b}` reply")
            return [FileInfo(name=e.name, is_dir=e.is_dir, size=0 if e.is_dir else e.size)
                    for e in r.file_listing.entries]
        out: list[FileInfo] = await self._op("list_files", FILE_TIMEOUT, req, body)
        return out

    async def close(self) -> None:
        """Destroys the session's VM. A second call, or a call on a session the daemon already
        dropped, does nothing."""
        if self._closed:
            return
        self._closed = True
        self._scheduler._sessions.discard(self)
        pool = self._scheduler._pool
        if pool is None:
            return
        async with pool.connection() as c:
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT):
                    rid = c.next_id()
                    await c.send(pb.Request(id=rid, session_close=pb.SessionClose(
                        session_id=self.session_id)))
                    r = await c.recv()
            except TimeoutError:
                raise deadline_error("close session", CONTROL_TIMEOUT) from None
        b = r.WhichOneof("body")
        if b == "session_closed":
            self._exec_count = max(self._exec_count, int(r.session_closed.exec_count))
        elif b == "error" and r.error.kind == 8:
            return  # already gone on the daemon's side (idle timeout, VM died)
        elif b == "error":
            raise from_daemon(r.error.kind, r.error.transient, r.error.message)
        else:
            raise ProtocolError(f"close session: unexpected `{b}` reply")
