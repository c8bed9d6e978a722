"""What the client does without a daemon: configuration, errors, framing against fake servers."""
import asyncio
import os
import struct
import tempfile

import pytest

import exec_sandbox as es
from exec_sandbox import _errors, _wire
from exec_sandbox._proto import control_pb2 as pb


def test_exception_hierarchy():
    transient = [es.VmTimeoutError, es.VmCapacityError, es.CommunicationError, es.SnapshotError]
    permanent = [es.VmConfigError, es.SessionClosedError, es.GuestAgentError,
                 es.PackageNotAllowedError, es.SandboxDependencyError, es.AssetError,
                 es.NotSupportedError]
    for cls in transient:
        assert issubclass(cls, es.TransientError) and issubclass(cls, es.SandboxError)
    for cls in permanent:
        assert issubclass(cls, es.PermanentError) and issubclass(cls, es.SandboxError)
    assert issubclass(es.NotSupportedError, es.VmConfigError)


def test_daemon_error_kinds_map_to_reference_names():
    names = {1: "VmConfigError", 2: "VmTimeoutError", 3: "VmCapacityError",
             4: "CommunicationError", 5: "GuestAgentError", 6: "PackageNotAllowedError",
             7: "SnapshotError", 8: "SessionClosedError", 10: "AssetError"}
    for kind, name in names.items():
        e = _errors.from_daemon(kind, kind in (2, 3, 4, 7), "why")
        assert type(e).__name__ == name and e.kind == kind and str(e) == "why"
    assert isinstance(_errors.from_daemon(11, True, "oom"), es.TransientError)
    unknown = _errors.from_daemon(99, False, "new kind")
    assert isinstance(unknown, es.PermanentError) and not unknown.transient


def test_config_defaults_ranges_and_flags(monkeypatch):
    monkeypatch.delenv("EXEC_SANDBOX_IMAGES_DIR", raising=False)
    c = es.SchedulerConfig()
    assert (c.max_concurrent_vms, c.warm_pool_size, c.default_memory_mb,
            c.default_timeout_seconds, c.session_idle_timeout_seconds) == (10, 0, 256, 30, 300)
    assert c.snapshot_cache_dir == "/tmp/exec-sandbox-cache" and c.s3_region == "us-east-1"
    assert c.max_concurrent_s3_uploads == 4 and c.enable_package_validation
    assert c.auto_download_assets and c.s3_bucket is None and c.socket is None
    for bad in [dict(max_concurrent_vms=0), dict(max_concurrent_vms=101),
                dict(default_memory_mb=64), dict(default_timeout_seconds=301),
                dict(session_idle_timeout_seconds=5), dict(max_concurrent_s3_uploads=17)]:
        with pytest.raises(es.VmConfigError):
            es.SchedulerConfig(**bad)
    with pytest.raises(es.NotSupportedError, match="S3"):
        es.SchedulerConfig(s3_bucket="my-snapshots")
    monkeypatch.setenv("EXEC_SANDBOX_MAX_CONCURRENT_VMS", "7")
    monkeypatch.setenv("EXEC_SANDBOX_ENABLE_PACKAGE_VALIDATION", "false")
    c = es.SchedulerConfig(warm_pool_size=2)
    assert c.max_concurrent_vms == 7 and not c.enable_package_validation
    assert c.explicit() == {"max_concurrent_vms": 7, "warm_pool_size": 2,
                            "enable_package_validation": False}
    flags = c.sbxd_flags()
    assert flags[flags.index("--max-concurrent-vms") + 1] == "7"
    assert flags[flags.index("--enable-package-validation") + 1] == "false"
    assert "--images-dir" not in flags


async def _fake_server(handler):
    d = tempfile.mkdtemp(prefix="sbx-pytest-fake-")
    path = os.path.join(d, "s.sock")
    server = await asyncio.start_unix_server(handler, path)
    return server, path


async def test_oversized_frame_is_refused_before_its_body():
    async def handler(reader, writer):
        await reader.readexactly(4)  # the Hello's length; enough to know it came
        writer.write(struct.pack(">I", (4 << 20) + 1))  # a length past the cap, and no body
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()
    server, path = await _fake_server(handler)
    async with server:
        with pytest.raises(es.ProtocolError, match="frame of"):
            await asyncio.wait_for(_wire.Connection.open(path), 3)


async def test_silent_daemon_hits_the_hello_deadline(monkeypatch):
    monkeypatch.setattr(_wire, "HELLO_TIMEOUT", 0.3)

    async def handler(reader, writer):
        await reader.read()  # until the client hangs up
        writer.close()
    server, path = await _fake_server(handler)
    async with server:
        with pytest.raises(es.CommunicationError, match="Hello"):
            await _wire.Connection.open(path)


async def test_protocol_version_mismatch_is_clear():
    async def handler(reader, writer):
        n = struct.unpack(">I", await reader.readexactly(4))[0]
        req = pb.Request.FromString(await reader.readexactly(n))
        body = pb.Reply(id=req.id, hello=pb.HelloOk(protocol_version=2,
                                                     server="sbxd/9")).SerializeToString()
        writer.write(struct.pack(">I", len(body)) + body)
        await writer.drain()
    server, path = await _fake_server(handler)
    async with server:
        with pytest.raises(es.ProtocolError, match="protocol 2"):
            await _wire.Connection.open(path)


async def test_no_daemon_on_socket_is_transient():
    with pytest.raises(es.CommunicationError) as ei:
        async with es.Scheduler(es.SchedulerConfig(socket="/nonexistent/sbxd.sock")):
            pass
    assert ei.value.transient


async def test_unsupported_features_are_refused_before_anything_is_sent():
    s = es.Scheduler(es.SchedulerConfig(socket="/nonexistent/sbxd.sock"))
    for kw in [dict(packages=["pandas==2.2.0"]), dict(allow_network=True),
               dict(allowed_domains=["httpbin.org"]), dict(expose_ports=[8080]),
               dict(expose_ports=[es.PortMapping(internal=8080, external=3000)])]:
        with pytest.raises(es.NotSupportedError, match="not available"):
            await s.run("print(1)", **kw)
        with pytest.raises(es.NotSupportedError):
            await s.session(**kw)
