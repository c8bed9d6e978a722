"""The Python examples of the reference README, as written there, against the real daemon.

Every example runs as written. The network example runs against a loopback server the daemon's
hosts file names, the package example against a local index serving stand-ins for its packages
(only loopback traffic in tests); the production configuration names an S3 bucket the daemon
has no credentials for, so its remote cache stays off.
"""
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, needs_vm

sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from pkgindex import REFERENCE_PACKAGES, PkgIndex  # noqa: E402
from exec_sandbox import (PackageInstallError, PackageNotAllowedError,
                          PermanentError, PortMapping, SandboxError, Scheduler, SchedulerConfig,
                          VmConfigError, VmTimeoutError)

pytestmark = [needs_vm, pytest.mark.vm]


async def test_basic_execution(capsys):
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="print('Hello, World!')",
            language="python",  # or "javascript", "raw"
        )
        print(result.stdout)     # Hello, World!
        print(result.exit_code)  # 0
    assert result.stdout == "Hello, World!\n" and result.exit_code == 0
    assert capsys.readouterr().out == "Hello, World!\n\n0\n"
    assert result.timing.total_ms > 0 and result.accelerator in ("kvm", "tcg")
    assert result.external_cpu_time_ms is not None and result.external_memory_peak_mb > 0


async def test_sessions_all_languages():
    async with Scheduler() as scheduler:
        async with await scheduler.session(language="python") as session:
            await session.exec("import math")
            await session.exec("x = math.pi * 2")
            result = await session.exec("print(f'{x:.4f}')")
            assert result.stdout == "6.2832\n"
            assert session.exec_count == 3

        # JavaScript: variables and functions persist
        async with await scheduler.session(language="javascript") as session:
            await session.exec("const greet = (name) => `Hello, ${name}!`")
            result = await session.exec("console.log(greet('World'))")
            assert result.stdout == "Hello, World!\n"

        # Shell: env vars, cwd and functions persist
        async with await scheduler.session(language="raw") as session:
            await session.exec("cd /tmp && export MY_VAR=hello")
            result = await session.exec("echo $MY_VAR from $(pwd)")
            assert result.stdout == "hello from /tmp\n"


async def test_file_io(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("local_model.pkl").write_bytes(b"\x80\x04pickled model\x00" * 100)
    async with Scheduler() as scheduler:
        async with await scheduler.session(language="python") as session:
            # Write a file into the sandbox
            await session.write_file("input.csv", b"name,score\nAlice,95\nBob,87")

            # Write from a local file
            await session.write_file("model.pkl", Path("./local_model.pkl"))

            # Execute code that reads input and writes output
            await session.exec("data = open('input.csv').read().upper()")
            await session.exec("open('output.csv', 'w').write(data)")

            # Read a file back from the sandbox
            content = await session.read_file("output.csv")

            # List files in a directory
            files = await session.list_files("")  # sandbox root
            for f in files:
                print(f"{f.name} {'dir' if f.is_dir else f'{f.size}B'}")
            assert await session.read_file("model.pkl") == Path("local_model.pkl").read_bytes()
    assert content == b"NAME,SCORE\nALICE,95\nBOB,87"
    sizes = {f.name: (f.is_dir, f.size) for f in files}
    assert sizes["input.csv"] == (False, 26) and sizes["output.csv"] == (False, 26)
    assert sizes["model.pkl"] == (False, 1600)


async def test_packages(monkeypatch, tmp_path):
    # The example as written, against a local index (no PyPI here) serving stand-ins for the
    # two packages at the pinned versions; the daemon reaches it through its hosts file.
    idx = PkgIndex(str(tmp_path), ip="127.0.0.7", packages=REFERENCE_PACKAGES).start()
    (tmp_path / "hosts").write_text(idx.hosts_line + "\n")
    monkeypatch.setenv("EXEC_SANDBOX_DNS_HOSTS_FILE", str(tmp_path / "hosts"))
    monkeypatch.setenv("EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("EXEC_SANDBOX_PYPI_INDEX_URL", idx.url)
    monkeypatch.setenv("EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE", idx.ca_file)
    monkeypatch.setenv("EXEC_SANDBOX_CACHE_DIR", str(tmp_path / "cache"))
    try:
        async with Scheduler() as scheduler:
            result = await scheduler.run(
                code="import pandas; print(pandas.__version__)",
                language="python",
                packages=["pandas==2.2.0", "numpy==1.26.0"],
            )
            assert result.stdout == "2.2.0\n" and result.exit_code == 0, result
            assert result.package_layer.startswith("python-") and result.package_layer_built
            # The same set in another order: the same layer, from the cache.
            again = await scheduler.run(code="import numpy; print(numpy.__version__)",
                                        packages=["numpy==1.26.0", "pandas==2.2.0"])
            assert again.stdout == "1.26.0\n"
            assert (again.package_layer, again.package_layer_built) == (result.package_layer,
                                                                        False)
            # A version the index does not have: the installer's own words, permanent.
            with pytest.raises(PackageInstallError, match="No matching distribution") as ei:
                await scheduler.run(code="import pandas", packages=["pandas==9.9.9"])
            assert isinstance(ei.value, PermanentError) and not ei.value.transient
            with pytest.raises(PackageNotAllowedError, match="surely-not-a-real-package-zz.*"
                               "--no-validation") as ei:
                await scheduler.run(code="import x",
                                    packages=["surely-not-a-real-package-zz==1.0"])
            assert isinstance(ei.value, PermanentError)
    finally:
        idx.stop()


async def test_streaming_output():
    seen = []
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="for i in range(5): print(i)",
            language="python",
            on_stdout=lambda chunk: seen.append(("out", chunk)),
            on_stderr=lambda chunk: seen.append(("err", chunk)),
        )
        assert "".join(c for k, c in seen if k == "out") == result.stdout == "0\n1\n2\n3\n4\n"

        # Chunks come as the code prints, not with the result.
        stamps = []
        t0 = time.monotonic()
        result = await scheduler.run(
            code="import sys, time\nprint('a', flush=True)\nprint('e', file=sys.stderr, "
                 "flush=True)\ntime.sleep(1.5)\nprint('b')",
            on_stdout=lambda c: stamps.append((c, time.monotonic() - t0)),
            on_stderr=lambda c: stamps.append((c, time.monotonic() - t0)))
        done = time.monotonic() - t0
    assert result.stdout == "a\nb\n" and result.stderr == "e\n"
    first = stamps[0]
    assert first[0] == "a\n" and done - first[1] > 1.0, stamps


def _https_server(tmp_path, ip, body):
    """An HTTPS server on ip:443 (self-signed) answering every GET with body."""
    import http.server
    import ssl
    import subprocess
    import threading
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=httpbin.org", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((ip, 443), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


async def test_network_and_port_forwarding(monkeypatch, tmp_path):
    # The reference's example, with "httpbin.org" served on loopback (the daemon's hosts file
    # names it; only loopback traffic here) by a self-signed server: hence the unverified context.
    srv = _https_server(tmp_path, "127.0.0.6", b'{"origin": "10.0.2.15"}')
    (tmp_path / "hosts").write_text("127.0.0.6 httpbin.org\n")
    monkeypatch.setenv("EXEC_SANDBOX_DNS_HOSTS_FILE", str(tmp_path / "hosts"))
    monkeypatch.setenv("EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE", "1")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    try:
        async with Scheduler() as scheduler:
            result = await scheduler.run(
                code="import ssl, urllib.request; print(urllib.request.urlopen("
                     "'https://httpbin.org/ip', context=ssl._create_unverified_context()).read())",
                language="python",
                allow_network=True,
                allowed_domains=["httpbin.org"],
            )
            assert '"origin"' in result.stdout, (result.stdout, result.stderr)
            assert result.network.mode == "allowlist"
            assert result.network.allowed_domains == ["httpbin.org"]
            result = await scheduler.run(
                code="print('server ready')",
                expose_ports=[PortMapping(internal=8080, external=free)],
                allow_network=False,
            )
            assert result.stdout == "server ready\n"
            assert [(p.internal, p.external, p.host) for p in result.exposed_ports] == \
                [(8080, free, "127.0.0.1")]
            result = await scheduler.run(code="print('server ready')", expose_ports=[8080])
            assert result.exposed_ports[0].internal == 8080
            assert result.exposed_ports[0].external >= 1024
            assert result.network.mode == "ports"
            # What the daemon finds wrong it says so, as the same kind.
            with pytest.raises(VmConfigError, match="IP address"):
                await scheduler.run(code="print(1)", allow_network=True,
                                    allowed_domains=["1.2.3.4"])
            with pytest.raises(VmConfigError, match="exposed twice"):
                await scheduler.run(code="print(1)", expose_ports=[8080, "8080/tcp"])
    finally:
        srv.shutdown()
        srv.server_close()


async def test_production_configuration(monkeypatch):
    # No credentials here (and no AWS to reach): the daemon starts with its remote cache off,
    # says so in its log, and serves runs as ever (suite_remote.py tests the cache for real).
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    config = SchedulerConfig(
        max_concurrent_vms=20,       # Limit parallel executions
        warm_pool_size=1,            # Pre-started VMs per language (0 disables)
        default_memory_mb=512,       # Per-VM memory
        default_timeout_seconds=60,  # Execution timeout
        s3_bucket="my-snapshots",    # Remote cache for package snapshots
        s3_region="us-east-1",
    )
    async with Scheduler(config) as scheduler:
        st = await scheduler.status()
        assert st.max_concurrent_vms == 20 and st.warm_pool_size == 1
        result = await scheduler.run("print(open('/proc/meminfo').readline())")
        assert result.exit_code == 0
        total_kb = int(result.stdout.split()[1])
        assert 400_000 < total_kb <= 512 * 1024, result.stdout


async def test_error_handling(capsys):
    async with Scheduler() as scheduler:
        try:
            result = await scheduler.run(code="while True: pass", language="python",
                                         timeout_seconds=5)
        except VmTimeoutError:
            print("Execution timed out")
        except PackageNotAllowedError as e:
            print(f"Package not in allowlist: {e}")
        except SandboxError as e:
            print(f"Sandbox error: {e}")
        assert capsys.readouterr().out == "Execution timed out\n"

        try:
            result = await scheduler.run(code="puts 1", language="ruby")
        except VmTimeoutError:
            print("Execution timed out")
        except SandboxError as e:
            print(f"Sandbox error: {e}")
        out = capsys.readouterr().out
        assert out.startswith("Sandbox error: unknown language `ruby`"), out
        with pytest.raises(VmConfigError):  # a limit, checked by the daemon
            await scheduler.run(code="print(1)", memory_mb=4096)
        with pytest.raises(VmTimeoutError) as ei:
            await scheduler.run(code="print('so far', flush=True)\nwhile True: pass",
                                timeout_seconds=2)
        assert ei.value.result is not None and ei.value.result.stdout == "so far\n"
        assert ei.value.result.timed_out


async def test_pitfall_state_does_not_persist_across_runs():
    async with Scheduler() as scheduler:
        # run() creates a fresh VM each time - state doesn't persist across calls
        result1 = await scheduler.run("x = 42", language="python")
        result2 = await scheduler.run("print(x)", language="python")  # NameError!
        assert result1.exit_code == 0
        assert result2.exit_code != 0 and "NameError" in result2.stderr
        # Fix: use sessions for multi-step stateful execution
        async with await scheduler.session(language="python") as session:
            await session.exec("x = 42")
            result = await session.exec("print(x)")  # Works! x persists
            assert result.stdout == "42\n"
