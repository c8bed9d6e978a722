"""Running code: each language, output and exit codes, sources, JSON results, streaming, the libsbx example."""
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


@test(fast=True, any_arch=True)
def python_hello(c):
    r = c.sbx("run", "-q", 'print("Hello from sandbox")', check_rc=0)
    eq(r.out, "Hello from sandbox\n", "stdout")


@test(fast=True, any_arch=True)
def javascript_hello(c):
    r = c.sbx("run", "-q", "-l", "javascript", 'console.log("hi from js", 6*7)', check_rc=0)
    eq(r.out, "hi from js 42\n", "stdout")


@test(fast=True, any_arch=True)
def raw_shell_and_tools(c):
    code = ('echo "$BASH_VERSION" | cut -d. -f1; for t in git curl jq tar gzip unzip file; do '
            'command -v $t >/dev/null || echo missing $t; done; echo \'{"a":5}\' | jq .a')
    r = c.sbx("run", "-q", "-l", "raw", code, check_rc=0)
    lines = r.out.split()
    ok(lines[0].isdigit() and int(lines[0]) >= 5, "bash version: " + r.out)
    ok("missing" not in r.out, "tools missing: " + r.out)
    eq(lines[-1], "5", "jq output")


@test(fast=True, any_arch=True)
def guest_architecture_reported(c):
    """The guest really is of the architecture under test (the host's, or --guest-arch's), and
    results, sessions and status say which, beside the accelerator."""
    want = guest_arch()
    res, r = c.run_json("-l", "raw", "uname -m")
    eq((res["stdout"], res["exit_code"]), (want + "\n", 0), f"uname -m in the guest: {r.err}")
    eq(res["guest_arch"], want, "the result's guest_arch")
    ok(res["accelerator"] in ("kvm", "tcg"), f"accelerator: {res['accelerator']}")
    if want != os.uname().machine:
        eq(res["accelerator"], "tcg", "another architecture's guests run under TCG")
    res, r = c.run_json("import platform; print(platform.machine())")
    eq(res["stdout"], want + "\n", f"python's platform.machine(): {r.err}")
    st = json.loads(c.sbx("status", "--json", check_rc=0).out)
    eq((st["guest_arch"], st["host_arch"]), (want, os.uname().machine), "status")


@test()
def exit_codes_and_signals(c):
    c.sbx("run", "-q", "import sys; sys.exit(3)", check_rc=3)
    c.sbx("run", "-q", "-l", "raw", "exit 7", check_rc=7)
    c.sbx("run", "-q", "-l", "javascript", "process.exit(5)", check_rc=5)
    j, _ = c.run_json("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    eq(j["exit_code"], 137, "exit code for SIGKILL")
    c.sbx("run", "-q", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", check_rc=139)


@test(fast=True)
def stderr_kept_apart(c):
    r = c.sbx("run", "-q", "import sys; print('out'); print('err', file=sys.stderr)", check_rc=0)
    eq(r.out, "out\n", "stdout")
    ok("err\n" in r.err and "out" not in r.err, "stderr: " + r.err)
    j, _ = c.run_json("import sys; sys.stderr.write('E'); sys.stdout.write('O')")
    eq((j["stdout"], j["stderr"]), ("O", "E"), "json streams")


@test()
def unicode_round_trip(c):
    s = "héllo wörld ✓ 日本語 🚀"
    r = c.sbx("run", "-q", f"print({s!r})", check_rc=0)
    eq(r.out, s + "\n", "python unicode")
    r = c.sbx("run", "-q", "-l", "raw", f"echo '{s}'", check_rc=0)
    eq(r.out, s + "\n", "shell unicode")


@test(fast=True)
def stdin_source(c):
    r = c.sbx("run", "-q", "-", input=b"print(6*7)\n", check_rc=0)
    eq(r.out, "42\n", "stdin")


@test()
def file_sources_detect_language(c):
    d = c.tmp
    open(f"{d}/a.py", "w").write("print('py', 1+1)\n")
    open(f"{d}/b.js", "w").write("console.log('js', 1+1)\n")
    open(f"{d}/c.sh", "w").write("echo sh $((1+1))\n")
    eq(c.sbx("run", "-q", f"{d}/a.py", check_rc=0).out, "py 2\n", "py file")
    eq(c.sbx("run", "-q", f"{d}/b.js", check_rc=0).out, "js 2\n", "js file")
    eq(c.sbx("run", "-q", f"{d}/c.sh", check_rc=0).out, "sh 2\n", "sh file")


@test()
def concurrency_j2_four_files(c):
    d = c.tmp
    names = []
    for i in range(4):
        n = f"{d}/m{i}.py"
        open(n, "w").write(f"print('source-{i}')\nimport sys; sys.exit({i})\n")
        names.append(n)
    r = c.sbx("run", "-q", "-j", "2", *names)
    eq(r.returncode, 1, "some sources failed -> 1")
    for i in range(4):
        ok(f"source-{i}" in r.out, f"output of source {i}: {r.out}")
    pos = [r.out.index(f"source-{i}") for i in range(4)]
    eq(pos, sorted(pos), "outputs in source order")
    j, _ = c.run_json("-j", "2", *names)
    eq([x["exit_code"] for x in j], [0, 1, 2, 3], "per-source exit codes")
    eq([x["stdout"] for x in j], [f"source-{i}\n" for i in range(4)], "outputs kept apart")


@test(fast=True)
def usage_errors_exit_2(c):
    cases = [
        (["-l", "cobol", "print(1)"], "language"),
        (["-t", "0", "print(1)"], "timeout"),
        (["-t", "301", "print(1)"], "timeout"),
        (["-m", "99999", "print(1)"], "memory"),
        ([""], "empty"),
        (["/nonexistent/script.py"], "not found"),
        (["-p", "requests>=2", "print(1)"], "only exact pins"),
    ]
    for args, word in cases:
        r = c.sbx("run", "-q", *args)
        eq(r.returncode, 2, f"exit for {args}: {r.err}")
        ok(word in r.err.lower(), f"message for {args} should mention {word!r}: {r.err}")
    r = c.sbx("run", "-q", "-c", "")
    eq(r.returncode, 2, "empty -c")
    r = c.sbx("frobnicate")
    eq(r.returncode, 2, "unknown command")


@test(fast=True)
def json_result_fields(c):
    j, _ = c.run_json("print('x')")
    for k in ["stdout", "stderr", "exit_code", "timed_out", "stdout_truncated",
              "stderr_truncated", "execution_time_ms", "external_cpu_time_ms",
              "external_memory_peak_mb", "timing", "accelerator", "warm_pool_hit",
              "start_mode", "package_layer", "package_layer_built"]:
        ok(k in j, "missing field " + k)
    for k in ["setup_ms", "boot_ms", "execute_ms", "total_ms"]:
        ok(isinstance(j["timing"][k], int), "timing." + k)
    ok(j["timing"]["boot_ms"] > 0, "boot_ms > 0")
    ok(j["timing"]["total_ms"] >= j["timing"]["boot_ms"] + j["timing"]["execute_ms"], "total")
    ok(j["external_cpu_time_ms"] > 0, "external cpu measured")
    eq((j["package_layer"], j["package_layer_built"]), ("", False), "no packages, no layer")
    ok(j["external_memory_peak_mb"] > 10, "external memory measured")
    ok(j["accelerator"] in ("kvm", "tcg"), "accelerator")
    eq(j["start_mode"], "cold", "start_mode")
    eq(j["warm_pool_hit"], False, "warm_pool_hit")
    eq((j["exposed_ports"], j["network"]), ([], None), "no network interface asked, none reported")


@test(fast=True)
def output_streams_while_code_runs(c):
    code = ("import sys, time\nprint('first', flush=True)\ntime.sleep(5)\nprint('second')")
    p = subprocess.Popen([c.sbx_bin, "run", "-q", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=c.env())
    first = p.stdout.readline()
    t_first = time.time()
    rest, _ = p.communicate(timeout=60)
    t_end = time.time()
    eq(first, b"first\n", "first line")
    eq(rest, b"second\n", "second line")
    ok(t_end - t_first >= 3, f"first line came {t_end - t_first:.1f}s before the end")


@test()
def libsbx_example_program(c):
    ex = os.path.join(os.path.dirname(c.sbx_bin), "example")
    if not os.path.exists(ex):
        ex = os.path.join(ROOT, "build", "example")
    r = subprocess.run([ex], capture_output=True, env=c.env(), timeout=120)
    eq(r.returncode, 0, r.stderr.decode())
    ok(b"2" in r.stdout, "example printed the result: " + r.stdout.decode())
