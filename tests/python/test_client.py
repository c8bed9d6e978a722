"""The client's own guarantees against the real daemon: concurrency, cancellation, a daemon that
dies, sessions closed twice, big files, shared daemons and their settings."""
import asyncio
import hashlib
import os
import signal
import time

import pytest

from conftest import needs_vm
from exec_sandbox import (CommunicationError, Scheduler, SchedulerConfig, SessionClosedError,
                          TransientError, VmConfigError)

pytestmark = [needs_vm, pytest.mark.vm]


async def _until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = await pred()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        await asyncio.sleep(0.05)


async def test_twenty_concurrent_runs():
    async with Scheduler() as scheduler:
        results = await asyncio.gather(*[
            scheduler.run(f"print({i} * {i})") for i in range(20)])
        st = await scheduler.status()
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(20)]
    assert all(r.exit_code == 0 for r in results)
    assert st.runs_total >= 20


async def test_slow_callback_slows_only_its_own_run():
    async with Scheduler() as scheduler:
        async def slow(chunk):
            await asyncio.sleep(3)

        t0 = time.monotonic()
        slow_run = asyncio.create_task(scheduler.run("print('x', flush=True)", on_stdout=slow))
        fast = await scheduler.run("print('fast')")
        fast_done = time.monotonic() - t0
        r = await slow_run
        slow_done = time.monotonic() - t0
    assert fast.stdout == "fast\n" and r.stdout == "x\n"
    assert slow_done >= 3 and fast_done < slow_done - 1, (fast_done, slow_done)


async def test_cancelling_a_run_stops_its_vm():
    async with Scheduler() as scheduler:
        started = asyncio.Event()
        task = asyncio.create_task(scheduler.run(
            "import time\nprint('started', flush=True)\ntime.sleep(120)",
            on_stdout=lambda c: started.set(), timeout_seconds=150))
        await asyncio.wait_for(started.wait(), 60)
        st = await scheduler.status()
        assert st.running_vms - sum(1 for x in st.snapshots if x.state == "building") >= 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def idle():
            # A snapshot template being built in the background also counts as a running VM.
            st = await scheduler.status()
            building = sum(1 for x in st.snapshots if x.state == "building")
            return st.running_vms - building == 0 and st.queued == 0
        await _until(idle, 20, "the cancelled run's VM to go")
        # The Scheduler carries on.
        assert (await scheduler.run("print(2)")).stdout == "2\n"


async def test_daemon_killed_mid_run_is_transient_and_next_scheduler_works():
    async with Scheduler() as scheduler:
        started = asyncio.Event()
        task = asyncio.create_task(scheduler.run(
            "import time\nprint('started', flush=True)\ntime.sleep(60)",
            on_stdout=lambda c: started.set()))
        await asyncio.wait_for(started.wait(), 60)
        os.kill(scheduler._daemon.proc.pid, signal.SIGKILL)
        with pytest.raises(TransientError) as ei:
            await asyncio.wait_for(task, 30)
        assert isinstance(ei.value, CommunicationError), ei.value
    async with Scheduler() as scheduler:
        assert (await scheduler.run("print('again')")).stdout == "again\n"


async def test_typescript_runs_and_sessions():
    async with Scheduler() as scheduler:
        r = await scheduler.run("const n: number = 6 * 7; console.log(n)", language="typescript")
        assert (r.stdout, r.exit_code) == ("42\n", 0)
        # Bun strips types without checking them; a syntax error is an error.
        r = await scheduler.run("const n: number = 'x'; console.log(n)", language="typescript")
        assert (r.stdout, r.exit_code) == ("x\n", 0)
        r = await scheduler.run("let z: = 3", language="typescript")
        assert r.exit_code == 1 and "Unexpected" in r.stderr
        async with await scheduler.session(language="typescript") as s:
            await s.exec("let x: number = 1")
            await s.write_file("in.txt", b"ts")
            r = await s.exec("import { readFileSync } from 'node:fs';\n"
                             "console.log(x + 1, readFileSync('in.txt', 'utf8'))")
            assert r.stdout == "2 ts\n" and s.language == "typescript"


async def test_closing_a_session_twice_is_harmless():
    async with Scheduler() as scheduler:
        session = await scheduler.session(language="raw")
        assert (await session.exec("echo hi")).stdout == "hi\n"
        await session.close()
        await session.close()
        with pytest.raises(SessionClosedError):
            await session.exec("echo again")
        async with await scheduler.session(language="python") as s2:
            await s2.close()
        assert (await scheduler.status()).sessions == 0


async def test_fifty_megabyte_round_trip():
    data = os.urandom(50 << 20)
    want = hashlib.sha256(data).hexdigest()
    async with Scheduler() as scheduler:
        async with await scheduler.session(language="python", memory_mb=512) as session:
            await session.write_file("big.bin", data)
            r = await session.exec("import hashlib\nprint(hashlib.sha256(open('big.bin', 'rb')"
                                   ".read()).hexdigest())")
            assert r.stdout.strip() == want
            back = await session.read_file("big.bin")
    assert len(back) == len(data) and hashlib.sha256(back).hexdigest() == want


async def test_shared_daemon_by_socket_and_settings_that_differ(shared_daemon, monkeypatch):
    d = shared_daemon("--max-concurrent-vms", "4")
    with pytest.raises(VmConfigError, match="max_concurrent_vms"):
        async with Scheduler(SchedulerConfig(socket=d.socket, max_concurrent_vms=20)):
            pass
    async with Scheduler(SchedulerConfig(socket=d.socket, max_concurrent_vms=4)) as scheduler:
        assert (await scheduler.run("console.log(6*7)", language="javascript")).stdout == "42\n"
    monkeypatch.setenv("EXEC_SANDBOX_SOCKET", d.socket)
    async with Scheduler() as scheduler:
        assert scheduler._daemon is None and scheduler.socket == d.socket
        # default_memory_mb is sent with each request, so it holds on a shared daemon too.
        async with Scheduler(SchedulerConfig(default_memory_mb=384)) as s384:
            r = await s384.run("head -1 /proc/meminfo", language="raw")
            assert 300_000 < int(r.stdout.split()[1]) <= 384 * 1024, r.stdout
    assert d.proc.poll() is None  # a shared daemon is not the Scheduler's to stop
