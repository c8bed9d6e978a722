"""A stand-in for sbxd that speaks the control protocol with no VMs behind it, so the client's
own logic (framing, pooling, cancellation, transfers) is tested in milliseconds.

`run`/`session_exec` code is a tiny script: lines `out TEXT`, `err TEXT`, `sleep SECONDS`,
`exit N`, `timeout`, `blocked WHAT PORT REASON` (a refusal for the network report). Files live
in a dict per session. A request that exposes ports gets them "bound" (the asked-for host port,
else 40000 + its index), announced in a PortsReady reply first, as sbxd does. A request with
packages is refused as this sbxd refuses it: PackageNotAllowedError (kind 6) for a spec holding
"unknown" unless skip_package_validation, else VmConfigError "not available".
"""
import asyncio
import hashlib
import os
import struct
import tempfile

from exec_sandbox import _zstd
from exec_sandbox._proto import control_pb2 as pb
from exec_sandbox._proto import files_pb2 as fpb


def _mode(net):
    if net.allow_network:
        return "allowlist" if net.allowed_domains else "open"
    return "ports" if net.expose else "none"


def _package_refusal(rq):
    """The error sbxd gives a run or session open with packages, or None without any."""
    if not rq.packages:
        return None
    off = [p for p in rq.packages if "unknown" in p]
    if off and not rq.skip_package_validation:
        return pb.Error(kind=6, message=f"package `{off[0]}` is not among the top 10,000 PyPI "
                        "packages that are allowed; check its name, or skip the list with "
                        "--no-validation")
    return pb.Error(kind=1, message="packages are not available in this daemon yet")


def _bind(net):
    return [pb.ExposedPort(internal=e.internal, external=e.external or 40000 + i, host="127.0.0.1",
                           protocol=e.protocol or "tcp",
                           url=f"http://127.0.0.1:{e.external or 40000 + i}"
                           if e.protocol != "udp" else "")
            for i, e in enumerate(net.expose)]


class FakeSbxd:
    def __init__(self, max_concurrent_vms=10):
        self.max_concurrent_vms = max_concurrent_vms
        self.tasks = set()
        self.dir = tempfile.mkdtemp(prefix="sbx-pytest-fake-")
        self.socket = os.path.join(self.dir, "sbxd.sock")
        self.connections = 0
        self.running = 0
        self.cancelled = 0
        self.sessions = {}
        self.server = None
        self.requests = []  # every Request received, for tests to look at

    async def __aenter__(self):
        self.server = await asyncio.start_unix_server(self._conn, self.socket)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _conn(self, reader, writer):
        self.connections += 1
        self.tasks.add(asyncio.current_task())

        async def send(**kw):
            b = pb.Reply(**kw).SerializeToString()
            writer.write(struct.pack(">I", len(b)) + b)
            await writer.drain()

        uploads = {}
        try:
            while True:
                n = struct.unpack(">I", await reader.readexactly(4))[0]
                rq = pb.Request.FromString(await reader.readexactly(n))
                self.requests.append(rq)
                body = rq.WhichOneof("body")
                if body == "hello":
                    await send(id=rq.id, hello=pb.HelloOk(protocol_version=1, server="fake/0"))
                elif body == "status":
                    await send(id=rq.id, status=pb.StatusReply(
                        version="fake", max_concurrent_vms=self.max_concurrent_vms,
                        images_dir=os.environ.get("EXEC_SANDBOX_IMAGES_DIR", ""), running_vms=self.running,
                        sessions=len(self.sessions)))
                elif body in ("run", "session_open") and _package_refusal(getattr(rq, body)):
                    await send(id=rq.id, error=_package_refusal(getattr(rq, body)))
                elif body == "run":
                    net = rq.run.network if rq.run.HasField("network") else None
                    ports = _bind(net) if net else []
                    if ports:
                        await send(id=rq.id, ports=pb.PortsReady(ports=ports))
                    await self._exec(reader, send, rq.id, rq.run.code.decode(), rq.run.stream, 0,
                                     net, ports)
                elif body == "session_open":
                    sid = os.urandom(16).hex()
                    self.sessions[sid] = {"files": {}, "count": 0}
                    net = rq.session_open.network
                    ports = _bind(net)
                    if ports:
                        await send(id=rq.id, ports=pb.PortsReady(ports=ports))
                    await send(id=rq.id, session=pb.SessionInfo(
                        session_id=sid, language=rq.session_open.language or "python",
                        exposed_ports=ports, network_mode=_mode(net)))
                elif body == "session_exec":
                    s = self.sessions.get(rq.session_exec.session_id)
                    if s is None:
                        await send(id=rq.id, error=pb.Error(kind=8, message="session closed"))
                        continue
                    s["count"] += 1
                    await self._exec(reader, send, rq.id, rq.session_exec.code.decode(),
                                     rq.session_exec.stream, s["count"])
                elif body == "session_close":
                    s = self.sessions.pop(rq.session_close.session_id, None)
                    if s is None:
                        await send(id=rq.id, error=pb.Error(kind=8, message="no such session"))
                    else:
                        await send(id=rq.id, session_closed=pb.SessionClosed(
                            session_id=rq.session_close.session_id, exec_count=s["count"]))
                elif body == "file_write":
                    uploads[rq.id] = (rq.file_write, [])
                elif body == "file_chunk":
                    fw, parts = uploads[rq.id]
                    parts.append(_zstd.decompress(rq.file_chunk.zdata, 256 << 10))
                    if rq.file_chunk.last:
                        del uploads[rq.id]
                        data = b"".join(parts)
                        sha = hashlib.sha256(data).digest()
                        if len(data) != fw.size or sha != fw.sha256:
                            await send(id=rq.id, error=pb.Error(kind=5, message="bad sha"))
                            continue
                        self.sessions[fw.session_id]["files"][fw.path] = data
                        await send(id=rq.id, file_done=fpb.FileDone(size=len(data), sha256=sha))
                elif body == "file_read":
                    files = self.sessions[rq.file_read.session_id]["files"]
                    if rq.file_read.path not in files:
                        await send(id=rq.id, error=pb.Error(kind=5, message="no such file"))
                        continue
                    data = files[rq.file_read.path]
                    off = 0
                    while True:
                        piece = data[off:off + (256 << 10)]
                        off += len(piece)
                        await send(id=rq.id, file_chunk=fpb.FileChunk(
                            zdata=_zstd.compress(piece), last=off >= len(data)))
                        if off >= len(data):
                            break
                    await send(id=rq.id, file_done=fpb.FileDone(
                        size=len(data), sha256=hashlib.sha256(data).digest()))
                elif body == "file_list":
                    files = self.sessions[rq.file_list.session_id]["files"]
                    await send(id=rq.id, file_listing=fpb.FileListing(entries=[
                        fpb.FileEntry(name=k, size=len(v)) for k, v in sorted(files.items())]))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(asyncio.current_task())

    async def _exec(self, reader, send, rid, code, stream, count, net=None, ports=()):
        out, err, rc, timed_out = b"", b"", 0, False
        blocked = []
        self.running += 1
        try:
            for line in code.splitlines():
                op, _, arg = line.partition(" ")
                if op in ("out", "err"):
                    data = (arg + "\n").encode()
                    if op == "out":
                        out += data
                    else:
                        err += data
                    if stream:
                        await send(id=rid, chunk=pb.OutputChunk(stream=1 if op == "out" else 2,
                                                                data=data))
                elif op == "sleep":
                    # Like sbxd, notice a client that hangs up while its code runs.
                    try:
                        if await asyncio.wait_for(reader.read(1), float(arg)) == b"":
                            self.cancelled += 1
                            raise ConnectionError("client gone")
                    except asyncio.TimeoutError:
                        pass
                elif op == "exit":
                    rc = int(arg)
                elif op == "timeout":
                    timed_out, rc = True, 137
                elif op == "blocked":
                    what, port, reason = arg.split(" ", 2)
                    blocked.append(pb.Blocked(what=what, port=int(port), reason=reason))
        finally:
            self.running -= 1
        report = None
        if net is not None:
            report = pb.NetworkReport(mode=_mode(net), allowed_domains=net.allowed_domains,
                                      blocked=blocked[:32], blocked_total=len(blocked))
        await send(id=rid, result=pb.ExecResult(stdout=out, stderr=err, exit_code=rc,
                                                timed_out=timed_out, exec_count=count,
                                                accelerator="none", start_mode="cold",
                                                exposed_ports=ports, network=report))
