"""Packages installed for real (issue 13): -p/--package builds a package layer once (an install
VM runs pip or bun), caches it under CACHE/layers/ and attaches it read-only to every VM that asks
for the same set. Python against a local PyPI (pkgindex.py: hand-made wheels over HTTPS on
127.0.0.6:443, named pypi.test by the daemon's hosts file, trusted through
package_index_ca_file); JavaScript and TypeScript against the real npm registry (skipped when it
cannot be reached). Each test's daemon has a cache directory of its own (the images are the
harness daemon's); the cases that only need the attrs layer share one daemon and the index, in the
order they are written here (the first builds, the others find it cached; the last closes it).
What is asserted: results, --json's package_layer / package_layer_built, the layers on disk, the
index's request log and sbxd's log lines (`package layer NAME: installing N packages`, `... ready`,
`... is not usable (WHY)`, `... evicted`)."""
import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import time

from harness import *  # noqa: F401,F403
from pkgindex import VERSION, PkgIndex, npm_unreachable
from suite_sessions import _session, _sx

INDEX_IP = "127.0.0.6"
ATTRS, SIX, IDNA = f"attrs=={VERSION}", f"six=={VERSION}", f"idna=={VERSION}"
ATTRS_CODE = "import attrs; print(attrs.SBX_FAKE)"
ATTRS_OUT = f"attrs {VERSION} on six {VERSION}\n"
SIX_CODE = "import six; print(six.SBX_FAKE)"
SIX_OUT = f"six {VERSION}\n"
NO_SUCH = "sbx-no-such-pkg-xyz"
# Every wait on a VM is bounded: an install boots a VM (TCG on most hosts) and runs pip.
INSTALL_TIMEOUT_S = 180
SBX_TIMEOUT_S = 360
# Settings a caller's environment may carry that would point a test daemon elsewhere.
PKG_ENV = ("EXEC_SANDBOX_PYPI_INDEX_URL", "EXEC_SANDBOX_NPM_REGISTRY_URL",
           "EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE", "EXEC_SANDBOX_DNS_HOSTS_FILE",
           "EXEC_SANDBOX_SNAPSHOT_CACHE_MAX_BYTES", "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR",
           "EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE")

_images = None
_index = None
_shared = None


def images_dir(c):
    """The harness daemon's images directory: a test daemon's own cache has none."""
    global _images
    if _images is None:
        _images = json.loads(c.sbx("status", "--json", check_rc=0).out)["images_dir"]
        ok(os.path.isdir(_images), "images_dir of the harness daemon: " + _images)
    return _images


def index(c):
    """The local PyPI, one for the whole run (a thread of this process)."""
    global _index
    if _index is None:
        try:
            _index = PkgIndex(c.tmp, ip=INDEX_IP).start()
        except PermissionError as e:
            raise AssertionError(f"cannot listen on {INDEX_IP}:443 (the tests run as root): {e}")
        atexit.register(_index.stop)
    return _index


class PkgDaemon:
    """A daemon of the test's own: its own cache directory (so its own layers/), the harness's
    images, and, given an index, the hosts file, egress_allow_private and the index's URL and CA.
    Another PkgDaemon of the same name takes up the same cache (a restart)."""

    def __init__(self, c, name, idx=None, **extra):
        self.c, self.name = c, name
        self.dir = os.path.join(c.tmp, "pkg-" + name)
        self.cache = os.path.join(self.dir, "cache")
        self.layers = os.path.join(self.cache, "layers")
        os.makedirs(self.cache, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        os.chmod(self.cache, 0o700)
        images = images_dir(c)
        verdict = os.path.join(os.path.dirname(images), "accel-verdict")
        mine = os.path.join(self.cache, "accel-verdict")
        if os.path.isfile(verdict) and not os.path.exists(mine):
            shutil.copyfile(verdict, mine)  # keyed by qemu/kernel/host: re-probed if stale
            os.chmod(mine, 0o600)
        self.sock = os.path.join(self.dir, "sbxd.sock")
        self.log = os.path.join(self.dir, "sbxd.log")
        env = {"EXEC_SANDBOX_SOCKET": self.sock, "EXEC_SANDBOX_CACHE_DIR": self.cache,
               "EXEC_SANDBOX_IMAGES_DIR": images,
               "EXEC_SANDBOX_SNAPSHOT_CACHE_DIR": os.path.join(self.cache, "snapshots"),
               "EXEC_SANDBOX_PACKAGE_INSTALL_TIMEOUT": str(INSTALL_TIMEOUT_S)}
        if idx is not None:
            hosts = os.path.join(self.dir, "hosts")
            with open(hosts, "w") as f:
                f.write(idx.hosts_line + "\n")
            env.update(EXEC_SANDBOX_DNS_HOSTS_FILE=hosts, EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE="1",
                       EXEC_SANDBOX_PYPI_INDEX_URL=idx.url,
                       EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE=idx.ca_file)
        env.update(extra)
        self.env = c.env(**env)
        for k in PKG_ENV:
            if k not in env:
                self.env.pop(k, None)
        self.p = c.start_daemon(sock=self.sock, log=self.log, env=self.env)

    def sbx(self, *args, timeout=SBX_TIMEOUT_S, **kw):
        return self.c.sbx(*args, env=self.env, timeout=timeout, **kw)

    def run_json(self, *args, timeout=SBX_TIMEOUT_S):
        r = self.sbx("run", "--json", "-q", *args, timeout=timeout)
        try:
            return json.loads(r.stdout), r
        except ValueError:
            raise AssertionError(f"not JSON (exit {r.returncode}): {r.out[:500]} {r.err[-1500:]}")

    def run_ok(self, *args, out=None):
        """A run that must succeed (and print out, if given); its JSON result."""
        j, r = self.run_json(*args)
        ok(r.returncode == 0 and j.get("exit_code") == 0,
           f"run {args[:-1]}: exit {r.returncode}: {json.dumps(j)[:2500]} {r.err[-1000:]}")
        if out is not None:
            eq(j.get("stdout"), out, f"stdout of {args[:-1]}")
        ok(isinstance(j.get("package_layer"), str) and isinstance(
            j.get("package_layer_built"), bool), f"package_layer fields: {json.dumps(j)[:1500]}")
        return j

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def installing(self, name=None):
        """`package layer NAME: installing N packages` lines, as [(name, N)], of name if given."""
        got = [(m.group(1), int(m.group(2))) for m in re.finditer(
            r"package layer (\S+): installing (\d+) packages?", self.log_text())]
        return [g for g in got if name is None or g[0] == name]

    def has_line(self, name, what):
        return f"package layer {name} {what}" in self.log_text()

    def layer_dirs(self):
        """Every directory under CACHE/layers (staging ones too: none may outlive a request)."""
        if not os.path.isdir(self.layers):
            return []
        return sorted(x for x in os.listdir(self.layers)
                      if os.path.isdir(os.path.join(self.layers, x)))

    def meta(self, name):
        out = {}
        with open(os.path.join(self.layers, name, "meta")) as f:
            for ln in f:
                if "=" in ln:
                    k, v = ln.split("=", 1)
                    out[k.strip()] = v.strip()
        return out

    def sqfs(self, name):
        return os.path.join(self.layers, name, "layer.sqfs")

    def close(self):
        if self.p is None:
            return
        p, self.p = self.p, None
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise AssertionError(f"sbxd ({self.name}) did not stop on SIGTERM")
        log = self.log_text()
        ok("ERROR: AddressSanitizer" not in log and "runtime error:" not in log and
           "LeakSanitizer" not in log, f"sanitizer report in {self.log}: {log[-3000:]}")
        ok(p.returncode in (0, -15), f"sbxd ({self.name}) exited with {p.returncode}")


def shared(c):
    """The attrs cases' daemon and index (built by the first of them, closed by the last)."""
    global _shared
    if _shared is None:
        idx = index(c)
        _shared = PkgDaemon(c, "shared", idx)
        atexit.register(_shared.close)
    return _shared, index(c)


def close_shared():
    global _shared
    if _shared is not None:
        d, _shared = _shared, None
        d.close()


def attrs_layer(c):
    """The shared daemon with the attrs layer built (by whichever case needs it first)."""
    d, idx = shared(c)
    j = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
    return d, idx, j


def layer_name_ok(name, lang="python"):
    ok(re.fullmatch(lang + r"-[0-9a-f]{8,64}", name or ""), f"layer name {name!r}")


def install_error(j, r, what):
    """A --json install failure: non-zero exit, error of the package-install kind."""
    ok(r.returncode != 0, f"{what}: must fail: {json.dumps(j)[:1500]}")
    ok("error" in j, f"{what}: an error, not a result: {json.dumps(j)[:1500]}")
    e = j["error"]
    ok(e.get("type") in ("PackageInstallError", "package_install"),
       f"{what}: error kind: {json.dumps(e)[:1500]}")
    ok("PackageNotAllowed" not in json.dumps(e), f"{what}: not the allowlist error: {e}")
    return e["message"]


# --- the shared daemon: one index, the attrs layer built once ---------------------------------

@test()
def package_python_install_and_cache(c):
    d, idx = shared(c)
    before = idx.count()
    j = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
    layer_name_ok(j["package_layer"])
    eq(j["package_layer_built"], True, "first run builds the layer")
    eq(j["start_mode"], "cold", "start_mode")
    name = j["package_layer"]
    ok(idx.count("/simple/attrs/") >= 1 and idx.count("/simple/six/") >= 1,
       f"pip resolved attrs' dependency six through the index: {idx.requests}")
    ok(idx.count(f"/files/attrs-{VERSION}-") >= 1 and idx.count(f"/files/six-{VERSION}-") >= 1,
       f"both wheels downloaded: {idx.requests}")
    eq(d.installing(name), [(name, 1)], "one install, of the one package asked for")
    ok(d.has_line(name, "ready"), "`ready` logged")
    eq(d.layer_dirs(), [name], "the layer on disk")
    m = d.meta(name)
    eq(int(m["size"]), os.path.getsize(d.sqfs(name)), "meta size is layer.sqfs's")
    with open(d.sqfs(name), "rb") as f:
        eq(m["sha256"], hashlib.sha256(f.read()).hexdigest(), "meta sha256 is layer.sqfs's")
    seen = idx.count()
    ok(seen > before, "the index was asked")
    # The same request again: the cached layer, no install, nothing asked of the index.
    j2 = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
    eq((j2["package_layer"], j2["package_layer_built"]), (name, False), "second run: cached")
    eq(idx.count(), seen, f"no new index requests: {idx.requests[seen:]}")
    eq(len(d.installing()), 1, "still one install")
    # sbx status lists it, with the cache's size and bound.
    st = json.loads(d.sbx("status", "--json", check_rc=0).out)["package_layers"]
    mine = [x for x in st["layers"] if x["name"] == name]
    eq(len(mine), 1, f"the layer in sbx status: {st}")
    eq((mine[0]["state"], mine[0]["packages"], mine[0]["language"], mine[0]["size_bytes"]),
       ("ready", ATTRS, "python", int(m["size"])), "its status entry")
    ok(int(m["size"]) <= st["bytes"] <= st["max_bytes"], f"cache bytes: {st}")
    # Without packages: no layer, and attrs is not importable.
    j3 = d.run_ok("try:\n import attrs; print('found', getattr(attrs, 'SBX_FAKE', 'real'))\n"
                  "except ImportError:\n print('none')\n", out="none\n")
    eq((j3["package_layer"], j3["package_layer_built"]), ("", False), "a run without packages")


@test()
def package_set_order_independent(c):
    d, idx, _ = attrs_layer(c)
    # A first install shows progress on stderr unless -q (and the result on stdout as usual).
    r = d.sbx("run", "-p", SIX, "-p", ATTRS, ATTRS_CODE)
    eq((r.returncode, r.out), (0, ATTRS_OUT), "six then attrs: " + r.err[-1500:])
    ok("installing" in r.err, "progress on stderr for a first install: " + repr(r.err[-1500:]))
    j = d.run_ok("-p", ATTRS, "-p", SIX, ATTRS_CODE, out=ATTRS_OUT)
    eq(j["package_layer_built"], False, "attrs then six: the same set, cached")
    name = j["package_layer"]
    layer_name_ok(name)
    eq(len(d.installing(name)), 1, f"one install of the set: {d.installing()}")
    j = d.run_ok("-p", SIX, "-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
    eq((j["package_layer"], j["package_layer_built"]), (name, False), "six then attrs again")
    # A cached run prints no progress.
    r = d.sbx("run", "-p", ATTRS, "-p", SIX, ATTRS_CODE)
    eq(r.returncode, 0, r.err)
    ok("installing" not in r.err, "no progress when cached: " + repr(r.err))


@test()
def package_unknown_name_refused_before_any_vm(c):
    d, idx = shared(c)
    installs, seen = len(d.installing()), idx.count()
    r = d.sbx("run", "-p", NO_SUCH + "==1.0", "print(1)")
    eq((r.returncode, r.out), (2, ""), "refused: " + r.err)
    ok("PackageNotAllowedError" in r.err and NO_SUCH in r.err and "--no-validation" in r.err,
       "names the package and the way around: " + r.err)
    eq(len(d.installing()), installs, "no install VM for a refused name")
    eq(idx.count(), seen, "the index was not asked")
    # --no-validation: past the list, to the installer, which finds nothing (the index 404s).
    before = d.layer_dirs()
    j, r = d.run_json("--no-validation", "-p", NO_SUCH + "==1.0", "print(1)")
    msg = install_error(j, r, "--no-validation, no such package")
    ok(NO_SUCH in msg and ("No matching distribution" in msg or
                           "Could not find a version" in msg), "pip's own words: " + msg)
    ok(idx.count(f"/simple/{NO_SUCH}/") >= 1, f"pip asked the index: {idx.requests[seen:]}")
    eq(len(d.installing()), installs + 1, "one install VM")
    eq(d.layer_dirs(), before, "nothing cached")
    # Text form: the installer's message on stderr, not the allowlist's.
    r = d.sbx("run", "-q", "--no-validation", "-p", NO_SUCH + "==1.0", "print(1)")
    ok(r.returncode != 0 and "No matching distribution" in r.err and
       "PackageNotAllowedError" not in r.err, f"exit {r.returncode}: {r.err[-1500:]}")


@test()
def package_missing_version(c):
    d, idx = shared(c)
    before, seen = d.layer_dirs(), idx.count()
    j, r = d.run_json("-p", "six==98.0.0", SIX_CODE)
    msg = install_error(j, r, "six==98.0.0")
    ok("Could not find a version" in msg or "No matching distribution" in msg,
       "pip's message: " + msg)
    ok("six==98.0.0" in msg, "names the requirement: " + msg)
    ok(idx.count("/simple/six/") > 0 and idx.count() > seen,
       f"the index was asked: {idx.requests[seen:]}")
    eq(d.layer_dirs(), before, "no layer directory left behind")
    # The daemon is fine after it.
    d.run_ok("print(7)", out="7\n")


@test()
def package_no_wheel(c):
    d, idx = shared(c)
    before, seen = d.layer_dirs(), idx.count()
    j, r = d.run_json("-p", IDNA, "import idna")
    msg = install_error(j, r, "idna sdist only")
    ok("No matching distribution" in msg and "idna" in msg, "pip's message: " + msg)
    ok(idx.count("/simple/idna/") >= 1, f"the index was asked: {idx.requests[seen:]}")
    eq(idx.count("/files/idna"), 0, "the sdist was never downloaded (wheels only)")
    eq(d.layer_dirs(), before, "nothing cached")


READ_ONLY_PROBE = r"""
import attrs, errno, os, six
d = os.path.dirname(attrs.__file__)
print("dir", d)
for what, f in (("create", lambda: open(os.path.join(d, "x.py"), "w")),
                ("remove", lambda: os.remove(six.__file__)),
                ("append", lambda: open(six.__file__, "a")),
                ("mkdir", lambda: os.mkdir(os.path.join(os.path.dirname(six.__file__), "new")))):
    try:
        f()
        print(what, "ok")
    except OSError as e:
        print(what, type(e).__name__, errno.errorcode.get(e.errno, e.errno))
"""


@test()
def package_dir_read_only(c):
    d, idx, _ = attrs_layer(c)
    j = d.run_ok("-p", ATTRS, READ_ONLY_PROBE)
    out = j["stdout"]
    ok(out.startswith("dir /"), out)
    for what in ("create", "remove", "append", "mkdir"):
        ln = [x for x in out.splitlines() if x.startswith(what + " ")]
        eq(len(ln), 1, f"{what} probed: {out}")
        ok(ln[0].split()[-1] in ("EROFS", "EACCES", "EPERM"),
           f"{what} refused by the file system: {ln[0]}")
    # Unhandled, it is an ordinary Python exception.
    j, r = d.run_json("-p", ATTRS, "import attrs, os\n"
                      "open(os.path.join(os.path.dirname(attrs.__file__), 'x.py'), 'w')\n")
    ok(j.get("exit_code") == 1 and ("Read-only file system" in j.get("stderr", "") or
                                    "Permission denied" in j.get("stderr", "")),
       f"a Python exception: {json.dumps(j)[:1500]}")
    ok("Error" in j["stderr"], j["stderr"])
    # The next VM has the layer as it was.
    j = d.run_ok("-p", ATTRS, "import attrs, os, six\n"
                 "print(attrs.SBX_FAKE, os.path.exists(os.path.join(os.path.dirname("
                 "attrs.__file__), 'x.py')), os.path.exists(six.__file__))",
                 out=f"attrs {VERSION} on six {VERSION} False True\n")
    eq(j["package_layer_built"], False, "still the cached layer")


@test()
def package_unpinned_never_cached(c):
    d, idx = shared(c)
    before = set(d.layer_dirs())
    names = []
    for _ in range(2):
        r = d.sbx("run", "--json", "-p", "six", SIX_CODE)
        j = json.loads(r.stdout)
        eq((j.get("stdout"), j.get("exit_code")), (SIX_OUT, 0), "unpinned six: " + r.err[-1500:])
        ok("not pinned" in r.err, "the CLI warns: " + r.err[-500:])
        ok(j["package_layer"].startswith("python-tmp-") and j["package_layer_built"],
           f"a layer of its own, installed for the run: {j['package_layer']}")
        names.append(j["package_layer"])
        # Removed once its run is done (the VM is gone when the result is out, give or take).
        wait_for(lambda: set(d.layer_dirs()) == before, 10, "the unpinned layer removed")
    ok(names[0] != names[1], f"never shared: {names}")
    eq(len(d.installing(names[0])) + len(d.installing(names[1])), 2, "installed each time")


@test()
def package_session(c):
    try:
        d, idx, first = attrs_layer(c)
        sid = _session(c, "-p", ATTRS, env=d.env)
        try:
            j, _ = _sx(c, sid, "import attrs", rc=0, env=d.env)
            eq(j["exit_code"], 0, "import in a session")
            j, _ = _sx(c, sid, "print(attrs.SBX_FAKE)", rc=0, env=d.env)
            eq(j["stdout"], ATTRS_OUT, "state and package across execs")
        finally:
            d.sbx("session", "close", sid)
        # The session used the cached layer: no install of its own.
        eq(len(d.installing(first["package_layer"])), 1, "one install of the attrs layer")
        # An unknown package in `session new` is refused like a run's.
        r = d.sbx("session", "new", "-p", NO_SUCH + "==1.0")
        ok(r.returncode == 2 and "PackageNotAllowedError" in r.err and r.out == "", r.err)
    finally:
        close_shared()  # the last of the shared daemon's cases


# --- daemons of their own ---------------------------------------------------------------------

@test()
def package_truncated_layer_rebuilt(c):
    idx = index(c)
    d = PkgDaemon(c, "trunc", idx)
    try:
        j = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        name = j["package_layer"]
        eq(j["package_layer_built"], True, "built")
        size = int(d.meta(name)["size"])
        os.truncate(d.sqfs(name), size // 2)
        # The same daemon finds it broken when it next needs it.
        j = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        eq((j["package_layer"], j["package_layer_built"]), (name, True), "rebuilt")
        ok(d.has_line(name, "is not usable ("), "`is not usable` logged: " + d.log_text()[-2000:])
        eq(len(d.installing(name)), 2, "a second install")
        eq(os.path.getsize(d.sqfs(name)), int(d.meta(name)["size"]), "the new layer is whole")
    finally:
        d.close()
    # A daemon started over a cache with a broken layer.
    size = int(d.meta(name)["size"])
    os.truncate(d.sqfs(name), size // 2)
    d = PkgDaemon(c, "trunc", idx)
    try:
        j = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        eq((j["package_layer"], j["package_layer_built"]), (name, True), "rebuilt after restart")
        eq(len(d.installing(name)), 3, "a third install")
        eq(d.log_text().count(f"package layer {name} is not usable ("), 2, "found broken again")
        m = d.meta(name)
        eq(os.path.getsize(d.sqfs(name)), int(m["size"]), "whole again")
        with open(d.sqfs(name), "rb") as f:
            eq(hashlib.sha256(f.read()).hexdigest(), m["sha256"], "sha256 of the new layer")
        j = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        eq(j["package_layer_built"], False, "and cached from then on")
    finally:
        d.close()


@test()
def package_client_leaves_during_install(c):
    """A client that goes away while its packages install: the daemon lives on; a pinned set is
    still built and cached for the next request, an unpinned one is stopped and leaves nothing."""
    idx = index(c)
    d = PkgDaemon(c, "leave", idx)
    try:
        for spec, kept in ((SIX, True), ("attrs", False)):
            n = len(d.installing())
            p = subprocess.Popen([c.sbx_bin, "run", "--json", "-q", "-p", spec, "print(1)"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=d.env,
                                 cwd=c.tmp)
            try:
                wait_for(lambda: len(d.installing()) > n, 30, f"the install of {spec} began")
            finally:
                p.kill()
                p.wait()
            name = d.installing()[-1][0]
            if kept:
                wait_for(lambda: d.has_line(name, "ready"), INSTALL_TIMEOUT_S,
                         f"{name} built for nobody in particular")
                j = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
                eq((j["package_layer"], j["package_layer_built"]), (name, False),
                   "the next request finds it cached")
            else:
                # Its install VM is stopped and its staging directory removed.
                wait_for(lambda: not d.layer_dirs() or d.layer_dirs() == [d.installing()[0][0]],
                         30, "nothing of the unpinned set left")
                time.sleep(2)
                ok(not d.has_line(name, "ready"), "the unpinned install was stopped, not finished")
        eq(d.p.poll(), None, "the daemon lives on")
    finally:
        d.close()


@test()
def package_concurrent_identical_requests(c):
    idx = index(c)
    d = PkgDaemon(c, "concurrent", idx)
    try:
        ps = [subprocess.Popen([c.sbx_bin, "run", "--json", "-q", "-p", ATTRS, ATTRS_CODE],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env,
                               cwd=c.tmp) for _ in range(2)]
        res = []
        try:
            for p in ps:
                out, err = p.communicate(timeout=SBX_TIMEOUT_S)
                try:
                    res.append((p.returncode, json.loads(out), err.decode(errors="replace")))
                except ValueError:
                    raise AssertionError(f"not JSON (exit {p.returncode}): {out[:500]!r} "
                                         f"{err[-1500:]!r}")
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for rc, j, err in res:
            ok(rc == 0 and j.get("stdout") == ATTRS_OUT,
               f"both succeed: exit {rc}: {json.dumps(j)[:1500]} {err[-800:]}")
        names = {j["package_layer"] for _, j, _ in res}
        eq(len(names), 1, f"the same layer: {names}")
        name = names.pop()
        eq(sorted(j["package_layer_built"] for _, j, _ in res), [False, True],
           "exactly one built it (the other waited for it)")
        eq(len(d.installing()), 1, f"one install VM: {d.installing()}")
        eq(d.layer_dirs(), [name], "one layer on disk")
    finally:
        d.close()


@test()
def package_cache_bound_evicts(c):
    idx = index(c)
    # The bound is measured: attrs's layer (attrs and six) is built without one first; then a
    # daemon over the same cache holds at most that layer's size plus one byte, so the smaller
    # six-only layer cannot sit beside it.
    d = PkgDaemon(c, "evict", idx)
    try:
        a = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)["package_layer"]
        size_a = int(d.meta(a)["size"])
    finally:
        d.close()
    ok(size_a > 0, "a layer's size")
    d = PkgDaemon(c, "evict", idx, EXEC_SANDBOX_SNAPSHOT_CACHE_MAX_BYTES=str(size_a + 1))
    try:
        j = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
        eq((j["package_layer"], j["package_layer_built"]), (a, False),
           "kept across the restart: it fits the bound")
        b = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)["package_layer"]
        ok(b != a, "two layers")
        ok(d.has_line(a, "evicted"), f"the least recently used is evicted: {d.log_text()[-2000:]}")
        ok(not d.has_line(b, "evicted"), "not the one just built")
        eq(d.layer_dirs(), [b], "only the new layer on disk")
        # Asked for again, the evicted one is built again (and pushes the other out).
        n = len(d.installing(a))
        j = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
        eq((j["package_layer"], j["package_layer_built"]), (a, True), "rebuilt")
        eq(len(d.installing(a)), n + 1, "installed again")
        ok(d.has_line(b, "evicted"), "and the six layer evicted in its turn")
        eq(d.layer_dirs(), [a], "only the rebuilt layer on disk")
    finally:
        d.close()


@test()
def package_layer_under_snapshots(c):
    idx = index(c)
    d = PkgDaemon(c, "snap", idx, EXEC_SANDBOX_SNAPSHOTS="1")
    try:
        first = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
        eq((first["package_layer_built"], first["start_mode"]), (True, "cold"), "first run")
        deadline, modes = time.time() + 120, []
        while True:
            j = d.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
            eq((j["package_layer"], j["package_layer_built"]), (first["package_layer"], False),
               "the cached layer")
            modes.append(j["start_mode"])
            if j["start_mode"] == "restore":
                break
            ok(time.time() < deadline, f"no run with packages restored within 120 s: {modes}")
            time.sleep(1)
        # A run without packages never gets the package template's VM.
        j = d.run_ok("try:\n import attrs; print('found', getattr(attrs, 'SBX_FAKE', 'real'))\n"
                     "except ImportError:\n print('none')\n")
        ok("SBX_FAKE" not in j["stdout"] and VERSION not in j["stdout"],
           "no layer without packages: " + j["stdout"])
        eq(j["package_layer"], "", "no package_layer")
        eq(len(d.installing()), 1, "one install in all")
    finally:
        d.close()


@test()
def package_javascript_and_typescript_from_npm(c):
    why = npm_unreachable()
    if why:
        raise Skip("registry.npmjs.org unreachable: " + why)
    d = PkgDaemon(c, "npm")  # the real registry: no index settings, no egress_allow_private
    ok("EXEC_SANDBOX_PYPI_INDEX_URL" not in d.env and
       "EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE" not in d.env, "defaults")
    code = 'console.log(require("is-number")(5), require("is-number")("x"))'
    try:
        t0 = time.time()
        j = d.run_ok("-l", "javascript", "-p", "is-number@7.0.0", code, out="true false\n")
        t_first = time.time() - t0
        layer_name_ok(j["package_layer"], "javascript")
        eq(j["package_layer_built"], True, "first run installs")
        name = j["package_layer"]
        t0 = time.time()
        j = d.run_ok("-l", "javascript", "-p", "is-number@7.0.0", code, out="true false\n")
        t_second = time.time() - t0
        eq((j["package_layer"], j["package_layer_built"]), (name, False), "second run: cached")
        ok(t_second < t_first, f"cached run ({t_second:.1f}s) faster than the install "
                               f"({t_first:.1f}s)")
        # TypeScript shares JavaScript's layers.
        j = d.run_ok("-l", "typescript", "-p", "is-number@7.0.0",
                     'import isNumber from "is-number"; const n: number = 3; '
                     'console.log(isNumber(n))', out="true\n")
        eq((j["package_layer"], j["package_layer_built"]), (name, False),
           "typescript: the javascript layer")
        eq(len(d.installing()), 1, "one install in all")
        eq(d.layer_dirs(), [name], "one layer on disk")
    finally:
        d.close()
