"""The warm pool: serving, refilling, replacing dead VMs, yielding slots to runs."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from harness import *  # noqa: F401,F403


def _pool_daemon(c, name, *flags):
    sock = os.path.join(c.tmp, name + ".sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--warm-pool-size", "1", *flags, sock=sock,
                       log=os.path.join(c.tmp, name + ".log"), env=env)
    return p, env


def _status_json(c, env):
    return json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)


@test(any_arch=True)
def warm_pool_serves_and_refills(c):
    p, env = _pool_daemon(c, "pool")
    try:
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "python and js pool VMs")
        st = _status_json(c, env)
        eq(st["pool_memory_mb"], 2 * 256, "pool memory accounted")
        j, _ = c.run_json("x = 42; print('warm')", env=env)
        eq((j["stdout"], j["warm_pool_hit"], j["start_mode"]), ("warm\n", True, "warm"), "a hit")
        ok(j["timing"]["boot_ms"] == 0 and j["timing"]["total_ms"] < 1000,
           f"a hit takes one exec: {j['timing']}")
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "the pool to refill")
        j, _ = c.run_json("print(x)", env=env)
        eq(j["warm_pool_hit"], True, "second hit")
        ok("NameError" in j["stderr"], "a pool VM is used once: no state from the previous run")
        j, _ = c.run_json("-l", "javascript", "console.log(6*7)", env=env)
        eq((j["stdout"], j["start_mode"]), ("42\n", "warm"), "javascript hit")
        # Bypassed, not misused: another memory size, another language.
        j, _ = c.run_json("-m", "512", "print(1)", env=env)
        eq((j["warm_pool_hit"], j["start_mode"]), (False, "cold"), "-m 512 boots its own VM")
        j, _ = c.run_json("-l", "raw", "echo 1", env=env)
        eq(j["warm_pool_hit"], False, "raw is not pooled")
        # Nor is typescript, and a javascript pool VM (whose REPL reads no types) is not taken.
        j, _ = c.run_json("-l", "typescript", "const n: number = 1; console.log(n)", env=env)
        eq((j["stdout"], j["warm_pool_hit"]), ("1\n", False), "typescript is not pooled")
        j, _ = c.run_json("import sys; sys.exit(3)", env=env)
        eq(j["exit_code"], 3, "exit codes through the pool")
    finally:
        p.terminate()
        p.wait(10)


@test()
def warm_pool_replaces_dead_vms_and_yields_slots(c):
    p, env = _pool_daemon(c, "pool2", "--max-concurrent-vms", "2")
    try:
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "pool ready")
        qemus = [x for x, comm in descendants(p.pid) if comm.startswith("qemu-system")]
        eq(len(qemus), 2, "two pool QEMUs")
        for q in qemus:
            os.kill(q, signal.SIGKILL)
        # A run that lands on a VM dying under it gets a VM of its own, never the error.
        j, r = c.run_json("print('right after')", env=env)
        eq(j.get("stdout"), "right after\n", "run right after the pool died: " + r.out +
           open(os.path.join(c.tmp, "pool2.log")).read()[-3000:])

        def replaced():
            now = [x for x, comm in descendants(p.pid) if comm.startswith("qemu-system")]
            return (not set(now) & set(qemus) and len(now) == 2 and
                    _status_json(c, env)["pool_ready"] == 2)
        wait_for(replaced, 60, "dead pool VMs replaced")
        j, _ = c.run_json("print('after')", env=env)
        eq((j["stdout"], j["warm_pool_hit"]), ("after\n", True), "a replaced VM serves")
        wait_for(lambda: _status_json(c, env)["pool_ready"] == 2, 60, "pool refilled")
        # Both slots hold idle pool VMs: a raw run must still get one, not a capacity error.
        j, r = c.run_json("-l", "raw", "echo yielded", env=env)
        eq(j.get("stdout"), "yielded\n", f"the pool yields a slot: {r.err}")
    finally:
        p.terminate()
        p.wait(10)
