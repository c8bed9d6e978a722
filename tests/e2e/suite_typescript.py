"""TypeScript: Bun in the JavaScript image runs it, in runs (inline, .ts files), sessions, with
files, from memory snapshots of its own, and from the Python client.

Bun strips types without checking them: a type error runs (exit 0, as the types say nothing at
run time), while a syntax error (TypeScript's or JavaScript's) is Bun's build error, exit 1 with
the message on stderr."""
import asyncio
import os
import subprocess
import sys

from harness import *  # noqa: F401,F403
from suite_sessions import _session, _sx
from suite_snapshots import _snap_daemon, _snap_of, _snap_stop, _srun, _until_restore

TYPED = ("interface Point { x: number; y: number }\n"
         "enum Axis { X, Y }\n"
         "function norm1<T extends Point>(p: T): number { return Math.abs(p.x) + Math.abs(p.y) }\n"
         "const p: Point = { x: 3, y: -4 };\n"
         "const n: number = norm1(p) * 6;\n"
         "console.log(n, Axis[Axis.Y], (p as Point).x satisfies number)\n")


@test(fast=True, any_arch=True)
def typescript_typed_run(c):
    j, _ = c.run_json("-l", "typescript", TYPED)
    eq((j["stdout"], j["stderr"], j["exit_code"]), ("42 Y 3\n", "", 0), "typed one-shot run")
    # The same code is not JavaScript: -l javascript must not strip types.
    j, _ = c.run_json("-l", "javascript", "const n: number = 2; console.log(n)")
    ok(j["exit_code"] == 1 and j["stdout"] == "", f"javascript rejects a type annotation: {j}")


@test()
def typescript_file_by_extension(c):
    d = os.path.join(c.tmp, "ts")
    os.makedirs(d, exist_ok=True)
    for name in ("main.ts", "mod.mts"):
        open(os.path.join(d, name), "w").write(TYPED)
        r = c.sbx("run", "-q", os.path.join(d, name), check_rc=0)
        eq(r.out, "42 Y 3\n", f"{name} picked typescript by its extension")
    # -l beats the extension: the same file as JavaScript is a syntax error.
    r = c.sbx("run", "-q", "-l", "javascript", os.path.join(d, "main.ts"))
    ok(r.returncode == 1 and "error" in r.err,
       f"-l javascript on a .ts file: {r.returncode} {r.err}")


@test()
def typescript_session_keeps_state(c):
    sid = _session(c, "-l", "typescript")
    try:
        j, _ = _sx(c, sid, "let x: number = 1", rc=0)
        j, _ = _sx(c, sid, "console.log(x + 1)", rc=0)
        eq(j["stdout"], "2\n", "a let with a type kept across execs")
        _sx(c, sid, "interface User { name: string; age?: number }\n"
                    "const users: User[] = [{ name: 'ada' }];\n"
                    "function greet(u: User): string { return `hi ${u.name}` }\n"
                    "import { readFileSync } from 'node:fs'", rc=0)
        j, _ = _sx(c, sid, "const n: number = 2; users.push({ name: 'bob', age: n });\n"
                           "console.log(users.map(greet).join(','), typeof readFileSync)", rc=0)
        eq(j["stdout"], "hi ada,hi bob function\n", "functions, arrays and imports kept")
        # The TypeScript REPL has cgroups of its own, and what an exec leaves running is killed.
        j, _ = _sx(c, sid, "const cg: string = readFileSync('/proc/self/cgroup', 'utf8').trim();\n"
                           "const kid = Bun.spawn(['setsid', 'sleep', '300']);\n"
                           "console.log(cg, kid.pid)", rc=0)
        cg, pid = j["stdout"].split()
        ok(cg in ("0::/typescript.0", "0::/typescript.1"), f"the REPL's cgroup: {cg}")
        j, _ = _sx(c, sid, "import { existsSync } from 'node:fs';\n"
                           f"console.log(existsSync('/proc/{pid}'))", rc=0)
        eq(j["stdout"], "false\n", "a process left by an exec is killed after it")
        j, _ = _sx(c, sid, "const n: number = 3; console.log(n * x)", rc=0)
        eq(j["stdout"], "3\n", "a const declared again in a later exec")
        j, _ = _sx(c, sid, "await new Promise<void>((r) => setTimeout(r, 10));\n"
                           "console.log('awaited')", rc=0)
        eq(j["stdout"], "awaited\n", "top-level await")
        # A syntax error is Bun's build error: exit 1, the state stays.
        j, _ = _sx(c, sid, "let z: = 3")
        ok(j["exit_code"] == 1 and "Unexpected" in j["stderr"], f"syntax error: {j}")
        eq(j["interpreter_reset"], False, "a syntax error keeps the interpreter")
        # A type error is not checked: the code runs as written.
        j, _ = _sx(c, sid, "const s: number = 'not a number' as any; console.log(typeof s)", rc=0)
        eq(j["stdout"], "string\n", "types are stripped, not checked")
        j, _ = _sx(c, sid, "const bad: number = 'x'; console.log(bad)", rc=0)
        eq(j["stdout"], "x\n", "a type error runs (Bun does not type-check)")
        j, _ = _sx(c, sid, "throw new Error('boom')")
        ok(j["exit_code"] == 1 and "boom" in j["stderr"], f"thrown error: {j}")
        j, _ = _sx(c, sid, "console.log(x, users.length)", rc=0)
        eq((j["stdout"], j["interpreter_reset"]), ("1 2\n", False), "state kept after errors")
        j, _ = _sx(c, sid, "process.exit(4)", rc=4)
        eq(j["interpreter_reset"], True, "process.exit ends the REPL")
        j, _ = _sx(c, sid, "const t: string = typeof x; console.log(t)", rc=0)
        eq(j["stdout"], "undefined\n", "a fresh TypeScript REPL after the exit")
    finally:
        c.sbx("session", "close", sid)


@test()
def typescript_session_files(c):
    sid = _session(c, "-l", "typescript")
    d = os.path.join(c.tmp, "ts-files")
    os.makedirs(d, exist_ok=True)
    try:
        local = os.path.join(d, "in.csv")
        open(local, "w").write("name,score\nada,95\nbob,87\n")
        c.sbx("session", "upload", sid, local, "data/in.csv", check_rc=0)
        _sx(c, sid, "import { readFileSync, writeFileSync } from 'node:fs';\n"
                    "type Row = { name: string; score: number };\n"
                    "const rows: Row[] = readFileSync('data/in.csv', 'utf8').trim().split('\\n')\n"
                    "  .slice(1).map((l: string): Row => { const [name, s] = l.split(',');\n"
                    "    return { name, score: Number(s) } });", rc=0)
        j, _ = _sx(c, sid, "const total: number = rows.reduce((a, r) => a + r.score, 0);\n"
                           "writeFileSync('out.json', JSON.stringify({ total, n: rows.length }));\n"
                           "console.log(total)", rc=0)
        eq(j["stdout"], "182\n", "read the uploaded file")
        back = os.path.join(d, "out.json")
        c.sbx("session", "download", sid, "out.json", back, check_rc=0)
        eq(open(back).read(), '{"total":182,"n":2}', "file written by TypeScript, read back")
    finally:
        c.sbx("session", "close", sid)


@test(fast=True)
def typescript_errors(c):
    j, _ = c.run_json("-l", "typescript", "let z: = 3")
    ok(j["exit_code"] == 1 and "Unexpected =" in j["stderr"] and j["stdout"] == "",
       f"a syntax error: exit 1, Bun's message on stderr: {j}")
    # Bun strips types without checking them: a type error is not an error at run time.
    j, _ = c.run_json("-l", "typescript", "const n: number = 'x'; console.log(n)")
    eq((j["stdout"], j["exit_code"]), ("x\n", 0), "a type error runs (Bun does not type-check)")
    j, _ = c.run_json("-l", "typescript",
                      "function f(a: number): never { throw new Error(`bad ${a}`) }\nf(7)")
    ok(j["exit_code"] == 1 and "bad 7" in j["stderr"], f"a thrown error: {j}")


@test()
def typescript_snapshot_is_its_own(c):
    """A typescript VM restored from a snapshot has the TypeScript REPL warmed; the javascript
    snapshot is another one, whose REPL does not strip types."""
    p, env, log, sdir = _snap_daemon(c, "ts")
    try:
        j = _srun(c, env, "typescript", "const n: number = 1; console.log(n)")
        eq((j["start_mode"], j["stdout"]), ("cold", "1\n"), "first typescript run, cold")
        j = _until_restore(c, env, "typescript", "const n: number = 2; console.log(n)")
        eq((j["stdout"], j["exit_code"]), ("2\n", 0), "typed code in a restored typescript VM")
        ts = _snap_of(sdir, "typescript")
        meta = open(os.path.join(ts, "meta")).read()
        ok("language = typescript" in meta, "meta names typescript: " + meta)
        eq([x for x in os.listdir(sdir) if x.startswith("javascript-")], [],
           "no javascript snapshot made for typescript runs")
        _srun(c, env, "javascript", "console.log(1)")
        j = _until_restore(c, env, "javascript", "const n: number = 3; console.log(n)")
        ok(j["exit_code"] == 1 and j["stdout"] == "",
           f"a restored javascript VM does not read types: {j}")
        ok(_snap_of(sdir, "javascript") != ts, "two snapshots")
        draws = []
        for _ in range(2):
            j = _srun(c, env, "typescript", "const r: number = Math.random(); console.log(r)")
            eq(j["start_mode"], "restore", "typescript still restores its own")
            draws.append(j["stdout"])
        ok(draws[0] != draws[1], f"Math.random differs between restored typescript VMs: {draws}")
        sid = _session(c, "-l", "typescript", env=env)
        try:
            _sx(c, sid, "let k: number = 20", rc=0, env=env)
            j, _ = _sx(c, sid, "console.log(k + 22)", rc=0, env=env)
            eq(j["stdout"], "42\n", "a restored typescript session keeps state")
        finally:
            c.sbx("session", "close", sid, env=env)
    finally:
        _snap_stop(p, sdir)


@test()
def typescript_python_client(c):
    client = os.path.join(ROOT, "clients", "python")
    if not os.path.exists(os.path.join(client, "exec_sandbox", "_proto", "control_pb2.py")):
        subprocess.run([sys.executable, os.path.join(client, "genproto.py")], check=True)
    sys.path.insert(0, client)
    try:
        from exec_sandbox import Scheduler, SchedulerConfig
    except ImportError as e:
        raise AssertionError(f"the Python client does not import ({e}): make python")

    async def main():
        async with Scheduler(SchedulerConfig(socket=c.sock)) as scheduler:
            r = await scheduler.run("const n: number = 6 * 7; console.log(n)",
                                    language="typescript")
            eq((r.stdout, r.exit_code), ("42\n", 0), "Scheduler.run, typescript")
            async with await scheduler.session(language="typescript") as s:
                await s.exec("let greeting: string = 'hello'")
                await s.write_file("note.txt", b"from the client")
                r = await s.exec("import { readFileSync } from 'node:fs';\n"
                                 "console.log(greeting, readFileSync('note.txt', 'utf8'))")
                eq(r.stdout, "hello from the client\n", "a typescript session from the client")
                eq(s.language, "typescript", "session language")

    asyncio.run(main())
