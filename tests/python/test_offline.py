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
    # The remote cache's settings go to a private daemon as flags.
    flags = es.SchedulerConfig(s3_bucket="my-snapshots", max_concurrent_s3_uploads=2).sbxd_flags()
    assert flags[flags.index("--s3-bucket") + 1] == "my-snapshots"
    assert flags[flags.index("--max-concurrent-s3-uploads") + 1] == "2"
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


async def test_package_lists_of_the_wrong_shape_are_refused_before_anything_is_sent():
    s = es.Scheduler(es.SchedulerConfig(socket="/nonexistent/sbxd.sock"))
    for bad, why in [("pandas==2.2.0", "a list of specs"), ([b"pandas"], "must be a str"),
                     ([f"p{i}==1" for i in range(51)], "51 packages; the limit is 50")]:
        with pytest.raises(es.VmConfigError, match=why):
            await s.run("print(1)", packages=bad)
        with pytest.raises(es.VmConfigError, match=why):
            await s.session(packages=bad)


def test_network_requests_are_built_from_every_port_form():
    from exec_sandbox._scheduler import _network
    assert _network(False, None, None) is None
    assert _network(False, [], []) is None
    n = _network(True, ["example.com", "pypi.org"], [
        8080, es.PortMapping(internal=9000, external=3000),
        es.PortMapping(internal=5353, protocol="udp"), "53:5353/udp", "8000/tcp", "7000:7001"])
    assert n.allow_network and list(n.allowed_domains) == ["example.com", "pypi.org"]
    assert [(e.internal, e.external, e.protocol) for e in n.expose] == [
        (8080, 0, "tcp"), (9000, 3000, "tcp"), (5353, 0, "udp"), (53, 5353, "udp"),
        (8000, 0, "tcp"), (7000, 7001, "tcp")]
    ports_only = _network(False, None, [8080])
    assert not ports_only.allow_network and len(ports_only.expose) == 1
    assert _network(True, None, None).allow_network


async def test_bad_network_requests_are_refused_before_anything_is_sent():
    s = es.Scheduler(es.SchedulerConfig(socket="/nonexistent/sbxd.sock"))
    bad = [
        (dict(allowed_domains=["httpbin.org"]), "need allow_network"),
        (dict(allow_network=True, allowed_domains="httpbin.org"), "lists"),
        (dict(allow_network=True, allowed_domains=[f"d{i}.example.com" for i in range(101)]),
         "101 allowed domains"),
        (dict(allow_network=True, allowed_domains=[b"x.com"]), "str"),
        (dict(expose_ports=8080), "lists"),
        (dict(expose_ports=[0]), "out of range"),
        (dict(expose_ports=[70000]), "out of range"),
        (dict(expose_ports=[True]), "not a port"),
        (dict(expose_ports=[8080.0]), "not a port"),
        (dict(expose_ports=["8080:80"]), "host port 80"),
        (dict(expose_ports=["8080:"]), "is not INTERNAL"),
        (dict(expose_ports=[":9000"]), "is not INTERNAL"),
        (dict(expose_ports=["8080/sctp"]), "is not INTERNAL"),
        (dict(expose_ports=[es.PortMapping(internal=8080, external=80)]), "host port 80"),
        (dict(expose_ports=[es.PortMapping(internal=8080, protocol="sctp")]), "sctp"),
        (dict(expose_ports=list(range(1000, 1011))), "11 exposed ports"),
    ]
    for kw, match in bad:
        with pytest.raises(es.VmConfigError, match=match):
            await s.run("print(1)", **kw)
        with pytest.raises(es.VmConfigError, match=match):
            await s.session(**kw)


# ---- against a fake daemon (fake_sbxd.py): the client's logic, without VMs ----

from fake_sbxd import FakeSbxd  # noqa: E402


async def test_fake_runs_stream_and_share_a_few_connections():
    async with FakeSbxd(max_concurrent_vms=4) as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket, max_concurrent_vms=4)) as s:
            seen = []
            r = await s.run("out a\nerr b\nexit 3", on_stdout=seen.append, on_stderr=seen.append)
            assert (r.stdout, r.stderr, r.exit_code, seen) == ("a\n", "b\n", 3, ["a\n", "b\n"])
            rs = await asyncio.gather(*[s.run(f"sleep 0.05\nout {i}") for i in range(20)])
            assert [x.stdout for x in rs] == [f"{i}\n" for i in range(20)]
    assert d.connections <= 5  # at most max_concurrent_vms runs at once, and the status check


async def test_fake_cancel_closes_only_that_runs_connection():
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            t = asyncio.create_task(s.run("out x\nsleep 30"))
            other = asyncio.create_task(s.run("sleep 0.3\nout y"))
            await asyncio.sleep(0.1)
            assert d.running == 2
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert (await other).stdout == "y\n"
            for _ in range(50):
                if d.cancelled:
                    break
                await asyncio.sleep(0.01)
            assert d.cancelled == 1 and d.running == 0


async def test_fake_timeout_raises_with_the_output_so_far():
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            with pytest.raises(es.VmTimeoutError) as ei:
                await s.run("out partial\ntimeout")
            assert ei.value.result.stdout == "partial\n" and ei.value.result.timed_out


async def test_fake_session_files_and_double_close(tmp_path):
    data = os.urandom(700_000)
    (tmp_path / "local.bin").write_bytes(data)
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            async with await s.session(language="raw") as ses:
                await ses.write_file("a.bin", data)
                await ses.write_file("b.bin", tmp_path / "local.bin")
                await ses.write_file("empty", b"")
                assert await ses.read_file("a.bin") == data
                assert await ses.read_file("empty") == b""
                assert [(f.name, f.size) for f in await ses.list_files("")] == [
                    ("a.bin", 700_000), ("b.bin", 700_000), ("empty", 0)]
                with pytest.raises(es.GuestAgentError):
                    await ses.read_file("missing")
                await ses.exec("out 1")
                assert (await ses.exec("out 2")).stdout == "2\n" and ses.exec_count == 2
                await ses.close()
                await ses.close()
                with pytest.raises(es.SessionClosedError):
                    await ses.exec("out 3")
            assert not d.sessions


async def test_fake_languages_are_the_references_and_typescript():
    import typing
    assert typing.get_args(es.Language) == ("python", "javascript", "typescript", "raw")
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            with pytest.raises(es.VmConfigError, match="python, javascript, typescript or raw"):
                await s.run("console.log(1)", language="ts")
            with pytest.raises(es.VmConfigError, match="unknown language `TypeScript`"):
                await s.session(language="TypeScript")
            async with await s.session(language="typescript") as ses:
                assert ses.language == "typescript"


async def test_fake_run_with_ports_hands_them_over_before_the_output():
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            events = []

            async def on_ports(ports):  # a coroutine function works as well as a plain one
                events.append(("ports", ports))
            r = await s.run("out hi\nblocked evil.example 443 not in the allowlist\n"
                            "blocked 10.0.0.1 80 private address",
                            allow_network=True, allowed_domains=["example.com"],
                            expose_ports=[8080, es.PortMapping(internal=9000, external=3000),
                                          "53:5353/udp"],
                            on_ports=on_ports, on_stdout=lambda t: events.append(("out", t)))
            want = [es.ExposedPort(8080, 40000), es.ExposedPort(9000, 3000),
                    es.ExposedPort(53, 5353, protocol="udp")]
            assert events == [("ports", want), ("out", "hi\n")]
            assert r.exposed_ports == want
            assert r.exposed_ports[1].url == "http://127.0.0.1:3000"
            assert r.network == es.NetworkReport(
                mode="allowlist", allowed_domains=["example.com"], blocked_total=2, blocked=[
                    es.BlockedConnection("evil.example", 443, "not in the allowlist"),
                    es.BlockedConnection("10.0.0.1", 80, "private address")])
            sent = d.requests[-1].run.network
            assert sent.allow_network and list(sent.allowed_domains) == ["example.com"]
            assert [(e.internal, e.external, e.protocol) for e in sent.expose] == [
                (8080, 0, "tcp"), (9000, 3000, "tcp"), (53, 5353, "udp")]

            # Ports alone: mode "ports"; without a callback the early reply is simply skipped.
            r = await s.run("out x", expose_ports=[8000])
            assert r.stdout == "x\n" and r.network.mode == "ports" and not r.network.blocked
            assert r.exposed_ports == [es.ExposedPort(8000, 40000)]
            # Nothing asked: no NetworkRequest on the wire, no report.
            r = await s.run("out y")
            assert not d.requests[-1].run.HasField("network")
            assert r.network is None and r.exposed_ports == []


async def test_fake_packages_are_sent_and_refusals_typed():
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            with pytest.raises(es.PackageNotAllowedError, match="unknown-pkg.*--no-validation") \
                    as ei:
                await s.run("out x", packages=["numpy==1.26.0", "unknown-pkg==1.0"])
            assert not ei.value.transient
            rq = d.requests[-1].run
            assert list(rq.packages) == ["numpy==1.26.0", "unknown-pkg==1.0"]
            assert not rq.skip_package_validation
            with pytest.raises(es.VmConfigError, match="not available") as ei:
                await s.run("out x", language="javascript", packages=("lodash@4.17.21",))
            assert not isinstance(ei.value, es.PackageNotAllowedError)
            assert list(d.requests[-1].run.packages) == ["lodash@4.17.21"]
            with pytest.raises(es.PackageNotAllowedError):
                await s.session(packages=["unknown-pkg"])
            assert list(d.requests[-1].session_open.packages) == ["unknown-pkg"]
            # No packages: nothing sent, the run goes on.
            r = await s.run("out ok", packages=[])
            assert r.stdout == "ok\n" and not d.requests[-1].run.packages
        # The config's enable_package_validation = false skips the lists (the syntax stays).
        cfg = es.SchedulerConfig(socket=d.socket, enable_package_validation=False)
        async with es.Scheduler(cfg) as s:
            with pytest.raises(es.VmConfigError, match="not available"):
                await s.run("out x", packages=["unknown-pkg==1.0"])
            assert d.requests[-1].run.skip_package_validation
            with pytest.raises(es.VmConfigError, match="not available"):
                await s.session(packages=["unknown-pkg==1.0"])
            assert d.requests[-1].session_open.skip_package_validation


async def test_fake_session_with_ports():
    async with FakeSbxd() as d:
        async with es.Scheduler(es.SchedulerConfig(socket=d.socket)) as s:
            seen = []
            async with await s.session(expose_ports=["8000:8001"], on_ports=seen.append) as ses:
                assert ses.exposed_ports == [es.ExposedPort(8000, 8001)]
                assert seen == [ses.exposed_ports] and ses.network_mode == "ports"
                assert (await ses.exec("out 1")).stdout == "1\n"
            opens = [r for r in d.requests if r.WhichOneof("body") == "session_open"]
            sent = opens[-1].session_open.network
            assert [(e.internal, e.external) for e in sent.expose] == [(8000, 8001)]
            async with await s.session() as ses:
                assert ses.exposed_ports == [] and ses.network_mode == "none"
