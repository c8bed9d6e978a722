"""Package requests that are refused before any VM boots: sbx's early errors for -p/--package and
--no-validation (usage errors, PackageNotAllowedError, the unpinned warning), sbxd's own
validation of the packages of a RunRequest and a SessionOpen on the raw protocol (a client need
not be sbx), and its enable_package_validation = false. Valid packages go on to the install: a
daemon whose package indexes are not https:// URLs refuses them there with PackageInstallError,
which proves they passed every check before it. None of these tests boots a VM (suite_packages.py
installs for real)."""
import os

import wire
from harness import *  # noqa: F401,F403

OFF_LIST = "surely-not-a-real-package-zz"
NO_INDEX = "package index `http://127.0.0.1:9/simple` is not an https:// URL"
NO_REGISTRY = "package index `http://127.0.0.1:9/npm/` is not an https:// URL"


def _no_index_daemon(c, name, *flags):
    """A daemon whose package indexes cannot be used (not https): every valid package request
    reaches the install step and is refused there, at once, without a VM."""
    sock = os.path.join(c.tmp, name + ".sock")
    env = c.env(EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_PYPI_INDEX_URL="http://127.0.0.1:9/simple",
                EXEC_SANDBOX_NPM_REGISTRY_URL="http://127.0.0.1:9/npm/")
    p = c.start_daemon(*flags, sock=sock, log=os.path.join(c.tmp, name + ".log"), env=env)
    return p, sock, env


def _stop(c, p, name):
    p.terminate()
    p.wait(10)
    log = open(os.path.join(c.tmp, name + ".log")).read()
    ok("ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-2000:])
    ok("starting (" not in log, "no VM started: " + log[-2000:])


@test(fast=True)
def package_usage_errors(c):
    # A socket nobody listens on and no daemon to start: were sbx to reach for a daemon these
    # would end 125, not 2.
    nowhere = ["--socket", os.path.join(c.tmp, "nobody.sock")]
    env = c.env(EXEC_SANDBOX_SBXD="/nonexistent/sbxd")
    js = os.path.join(c.tmp, "pkg.js")
    with open(js, "w") as f:
        f.write("console.log(1)\n")
    cases = [
        (["run", "-p", "pandas>=2.0", "print(1)"], "sbx: --package: ", "only exact pins"),
        (["run", "-p", "pandas==2.*", "print(1)"], "sbx: --package: ", "exact versions only"),
        (["run", "-p", "requests[socks]==2.31.0", "print(1)"], "sbx: --package: ", "extras"),
        (["run", "-p", "pandas==1;id", "print(1)"], "sbx: --package: ", "`;`"),
        (["run", "-p", "", "print(1)"], "sbx: --package: ", "empty"),
        (["run", "-p", "lodash@4.17.21", "print(1)"], "sbx: --package: ", "URLs"),
        (["run", "-p", "numpy==1.26.0", js], "sbx: --package: ", "`=`"),
        (["run", "-l", "javascript", "-p", "lodash@^4.0.0", "x"], "sbx: --package: ",
         "letter or digit"),
        (["run", "-l", "raw", "-p", "numpy", "echo"], "sbx: --package: ",
         "python or javascript, not `raw`"),
        (["run", "-p", "Typing_Extensions==4.0", "-p", "typing-extensions==4.1", "print(1)"],
         "sbx: --package: ", "name the same package (`typing-extensions`)"),
        (["run", "-p", OFF_LIST + "==1.0", "print(1)"], "sbx: PackageNotAllowedError: ",
         f"package `{OFF_LIST}` is not among the top 10,000 PyPI packages"),
        (["run", "-l", "javascript", "-p", "left-pad-zz-nope@1.0.0", "x"],
         "sbx: PackageNotAllowedError: ", "npm packages"),
        (["run", "-p", "lodash", "print(1)"], "sbx: PackageNotAllowedError: ", "`lodash`"),
        (["session", "new", "-p", "numpy>=1"], "sbx: --package: ", "only exact pins"),
        (["session", "new", "-p", OFF_LIST], "sbx: PackageNotAllowedError: ", OFF_LIST),
        (["session", "exec", "-p", "numpy", "ID", "print(1)"], "sbx: ",
         "unknown option `-p`"),
        (["run", "--no-validation=yes", "print(1)"], "sbx: ", "takes no value"),
        (["run", "print(1)", "-p"], "sbx: ", "needs a value"),
    ]
    for argv, prefix, want in cases:
        r = c.sbx(*nowhere, *argv, env=env)
        eq(r.returncode, 2, f"exit status of {argv}: {r.err}")
        ok(r.err.startswith(prefix), f"{argv}: stderr {r.err!r} does not start {prefix!r}")
        ok(want in r.err, f"{argv}: stderr {r.err!r} lacks {want!r}")
        eq(r.out, "", f"{argv}: nothing on stdout")
    r = c.sbx(*nowhere, "run", "-p", OFF_LIST, "print(1)", env=env)
    ok("--no-validation" in r.err, "the way around the list is named: " + r.err)
    many = sum([["-p", f"p{i}==1"] for i in range(51)], [])
    r = c.sbx(*nowhere, "run", *many, "print(1)", env=env)
    eq(r.returncode, 2, "51 packages")
    ok("more than 50 packages" in r.err, r.err)
    # --no-validation skips the list, not the syntax; a well-formed spec off the list then
    # goes on to the daemon (none here: 125).
    r = c.sbx(*nowhere, "run", "--no-validation", "-p", "pandas>=2", "print(1)", env=env)
    eq(r.returncode, 2, "syntax still checked: " + r.err)
    r = c.sbx(*nowhere, "run", "-q", "--no-validation", "-p", OFF_LIST + "==1.0", "print(1)",
              env=env)
    eq(r.returncode, 125, "past the checks, no daemon: " + r.err)
    # Each source's language decides: a JavaScript file with an npm spec passes the checks.
    r = c.sbx(*nowhere, "run", "-q", "-p", "lodash@4.17.21", js, env=env)
    eq(r.returncode, 125, "npm spec for a .js source: " + r.err)


def _refusal(conn, id, session=False, language="python", **fields):
    pb = wire.pb()
    if session:
        conn.send(id, session_open=pb.SessionOpen(language=language, **fields))
    else:
        conn.send(id, run=pb.RunRequest(language=language, code=b"print(1)", **fields))
    r = conn.until(id, kinds=("result", "error", "session", "ports"))
    eq(r.WhichOneof("body"), "error", f"reply to {fields}")
    eq(r.error.transient, False, f"permanent: {r.error.message}")
    return r.error


@test(fast=True)
def package_daemon_validation(c):
    pb = wire.pb()
    bad = [
        ("python", ["pandas>=2.0"], "only exact pins"),
        ("python", ["numpy==1.26.0", "pandas==2.2.0;rm -rf /"], "`;`"),
        ("python", ["numpy==" + "1" * 65], "65 bytes"),
        ("python", ["a" * 215], "215 bytes"),
        ("python", ["x" * 5000], "over 300 bytes"),
        ("python", ["ok\x01bad"], "ok?bad"),
        ("python", [""], "empty"),
        ("python", [f"p{i}==1" for i in range(51)], "51 packages; the limit is 50"),
        ("python", ["Zope.Interface==6.0", "zope_interface==6.1"], "name the same package"),
        ("javascript", ["lodash@4.17.21", "lodash"], "name the same package"),
        ("javascript", ["x@npm:evil@1.0.0"], "`:`"),
        ("javascript", ["@types"], "@scope/name"),
        ("raw", ["numpy"], "python or javascript, not `raw`"),
        # Syntax before the list: a bad spec and an off-list name is a syntax error.
        ("python", [OFF_LIST, "numpy>=1"], "only exact pins"),
    ]
    conn = wire.Conn(c.sock).hello()
    try:
        id = 10
        for session in (False, True):
            what = "session" if session else "run"
            for lang, specs, want in bad:
                for skip in (False, True):
                    id += 1
                    e = _refusal(conn, id, session, lang, packages=specs,
                                 skip_package_validation=skip)
                    eq(e.kind, pb.ERROR_VM_CONFIG, f"{what} {specs[:2]}: {e.message}")
                    ok(want in e.message, f"{what} {specs[:2]}: {e.message!r} lacks {want!r}")
                    ok(len(e.message) < 600, f"message bounded: {len(e.message)}")
            # Off the list: PackageNotAllowedError, naming the package and the way around.
            for lang, spec, index in [("python", OFF_LIST + "==1.0", "PyPI"),
                                      ("javascript", "left-pad-zz-nope@1.0.0", "npm"),
                                      ("javascript", "numpy", "npm")]:
                id += 1
                e = _refusal(conn, id, session, lang, packages=["attrs", spec]
                             if lang == "python" else [spec])
                eq(e.kind, pb.ERROR_PACKAGE_NOT_ALLOWED, f"{what} {spec}: {e.message}")
                name = spec.split("==")[0].split("@")[0]
                ok(f"`{name}`" in e.message and index in e.message and
                   "--no-validation" in e.message, f"{what} {spec}: {e.message!r}")
        # The rest of a request is checked first: a bad timeout is reported, not the packages.
        id += 1
        conn.send(id, run=pb.RunRequest(language="python", code=b"print(1)",
                                        timeout_seconds=9999, packages=["numpy"]))
        e = conn.until(id, kinds=("result", "error")).error
        ok(e.kind == pb.ERROR_VM_CONFIG and "timeout" in e.message, e.message)
        # The connection is still good for other requests.
        conn.send(1000, status=pb.StatusRequest())
        eq(conn.until(1000, kinds=("status", "error")).WhichOneof("body"), "status",
           "status after")
    finally:
        conn.close()
    # Valid packages, on the list or with the list skipped, pass every check and reach the
    # install, which this daemon refuses (its indexes are not https).
    p, sock, _ = _no_index_daemon(c, "noindex-wire")
    conn = wire.Conn(sock).hello()
    try:
        id = 0
        for session in (False, True):
            for lang, specs, skip in [("python", ["numpy==1.26.0", "Pandas==2.2.0"], False),
                                      ("python", ["requests"], False),
                                      ("python", [OFF_LIST + "==1.0"], True),
                                      ("javascript", ["@types/node@20.0.0", "lodash"], False),
                                      ("javascript", ["JSONStream@1.3.5"], False),
                                      ("typescript", ["JSONStream@1.3.5"], False),
                                      ("javascript", ["left-pad-zz-nope"], True)]:
                id += 1
                e = _refusal(conn, id, session, lang, packages=specs,
                             skip_package_validation=skip)
                want = NO_INDEX if lang == "python" else NO_REGISTRY
                eq((e.kind, e.message), (pb.ERROR_PACKAGE_INSTALL, want),
                   f"session {session} {specs} (skip {skip})")
    finally:
        conn.close()
        _stop(c, p, "noindex-wire")


@test(fast=True)
def package_cli_reaches_the_install(c):
    p, sock, env = _no_index_daemon(c, "noindex-cli")
    try:
        _cli_reaches_the_install(c, env)
    finally:
        _stop(c, p, "noindex-cli")


def _cli_reaches_the_install(c, env):
    refused = f"sbx: PackageInstallError: {NO_INDEX}\n"
    r = c.sbx("run", "-p", "numpy==1.26.0", "-p", "pandas==2.2.0", "print(1)", env=env)
    eq(r.returncode, 125, "refused at the install: " + r.err)
    eq(r.err, refused, "message")
    eq(r.out, "", "nothing ran")
    # Unpinned: a warning first, unless -q.
    r = c.sbx("run", "-p", "numpy", "-p", "attrs==23.1.0", "print(1)", env=env)
    eq(r.returncode, 125, "refused")
    eq(r.err.splitlines()[0], "sbx: warning: package `numpy` is not pinned (numpy==VERSION): it "
       "is installed afresh for every run, never cached", "warning")
    eq(len(r.err.splitlines()), 2, "one warning, for the unpinned one: " + r.err)
    r = c.sbx("run", "-q", "-p", "numpy", "print(1)", env=env)
    eq(r.err, refused, "-q: no warning")
    r = c.sbx("run", "-l", "javascript", "-p", "lodash", "console.log(1)", env=env)
    ok("package `lodash` is not pinned (lodash@VERSION)" in r.err, r.err)
    ok(r.err.endswith(f"sbx: PackageInstallError: {NO_REGISTRY}\n"), r.err)
    # --no-validation lets an off-list name reach the daemon, which checks it the same way.
    r = c.sbx("run", "-q", "--no-validation", "-p", OFF_LIST + "==1.0", "print(1)", env=env)
    eq((r.returncode, r.err), (125, refused), "--no-validation")
    # --json: the error as JSON, exit 125, typed.
    r = c.sbx("run", "--json", "-q", "-p", "numpy==1.26.0", "print(1)", env=env)
    eq(r.returncode, 125, "--json refused")
    ok('"PackageInstallError"' in r.out and "https://" in r.out, "JSON error: " + r.out)
    # Sessions, and a run with --upload (which goes through a session).
    r = c.sbx("session", "new", "-p", "numpy==1.26.0", env=env)
    eq((r.returncode, r.out), (125, ""), "session new refused: " + r.err)
    ok(NO_INDEX in r.err, r.err)
    up = os.path.join(c.tmp, "pkg-up.txt")
    with open(up, "w") as f:
        f.write("x")
    r = c.sbx("run", "-q", "-p", "numpy==1.26.0", "--upload", up + ":up.txt", "print(1)",
              env=env)
    eq(r.returncode, 125, "run through a session refused: " + r.err)
    ok(NO_INDEX in r.err, r.err)
    # Several sources: each refused.
    r = c.sbx("run", "-q", "-p", "numpy==1.26.0", "-c", "print(1)", "-c", "print(2)", env=env)
    eq(r.returncode, 1, "several sources: " + r.err)
    eq(r.out.count("PackageInstallError"), 2, "both refused: " + r.out)


@test(fast=True)
def package_validation_off_in_the_daemon(c):
    pb = wire.pb()
    p, sock, env = _no_index_daemon(c, "novalidation", "--enable-package-validation", "false")
    try:
        conn = wire.Conn(sock).hello()
        try:
            for session in (False, True):
                e = _refusal(conn, 1 + session * 10, session, packages=[OFF_LIST + "==1.0"])
                eq((e.kind, e.message), (pb.ERROR_PACKAGE_INSTALL, NO_INDEX),
                   "list skipped by the daemon: on to the install")
                e = _refusal(conn, 2 + session * 10, session, packages=["pandas>=1"])
                ok(e.kind == pb.ERROR_VM_CONFIG and "only exact pins" in e.message,
                   "syntax still checked: " + e.message)
        finally:
            conn.close()
        # sbx checks the lists itself (it cannot know the daemon's setting): --no-validation.
        r = c.sbx("--socket", sock, "run", "-q", "-p", OFF_LIST, "print(1)", env=env)
        ok(r.returncode == 2 and "PackageNotAllowedError" in r.err, r.err)
        r = c.sbx("--socket", sock, "run", "-q", "--no-validation", "-p", OFF_LIST, "print(1)",
                  env=env)
        ok(r.returncode == 125 and NO_INDEX in r.err, r.err)
    finally:
        _stop(c, p, "novalidation")
