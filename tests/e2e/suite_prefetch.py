"""Asset bundles and `sbx prefetch`: `sbx bundle` packs the harness daemon's images into one
tar.zst with its SHA256SUMS; `sbx prefetch` fetches such a bundle (from a loopback HTTP server or
a local directory), checks it (outer sha256 while streaming, each file's sha256 against the inner
SHA256SUMS) and installs it into $EXEC_SANDBOX_CACHE_DIR (artefacts/ plus images/ symlinks),
all or nothing. Faults come from FaultServer below: 404s, truncated bodies, a flipped byte, a
server that dies (RST) mid-transfer; a bundle whose outer sha is right but one file in it is
wrong is made by hand from the real one. Offline mode: EXEC_SANDBOX_OFFLINE=1 makes prefetch
refuse at once, and makes sbxd refuse to start without its assets (naming `sbx prefetch`).

Every test has its own EXEC_SANDBOX_CACHE_DIR under c.tmp: the real cache is never written. No
VM boots here. The bundle (~300 MB) is made once per run and shared (see _bundle)."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import threading
import time

from harness import *  # noqa: F401,F403

TIMEOUT = 120          # every sbx / sbxd call here is bounded by this
VERSION = "test1"      # the version the shared bundle is made with
ARCH = os.uname().machine
IMAGE_NAMES = ["vmlinux", "initramfs.cpio", "python.sqfs", "javascript.sqfs", "raw.sqfs"]
_CACHE = {}            # module-level: the shared bundle, the good prefetch's cache dir


# ----------------------------------------------------------------------------------------------
# A loopback HTTP server with fault injection


class FaultServer:
    """Serves the files of `root` at http://127.0.0.1:PORT<prefix>/<name> (HTTP/1.1, one request
    per connection, GET and HEAD). Faults, by file name:
      missing(name)            404 for it;
      truncate(name, nbytes)   the full Content-Length, then a clean close (FIN) after nbytes;
      corrupt(name)            the whole file, same length, one byte flipped near the end;
      die_after(name, nbytes)  after nbytes the listening socket is closed and the connection
                               reset (RST): the server is gone; later connects are refused.
    `log` is a list of (method, path, status, bytes sent), in order of completion."""

    def __init__(self, root, prefix="/releases/assets"):
        self.root = root
        self.prefix = prefix.rstrip("/")
        self.faults = {}
        self.log = []
        self.lock = threading.Lock()
        self.dead = False
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}{self.prefix}"
        self.t = threading.Thread(target=self._accept_loop, daemon=True)
        self.t.start()

    def url(self, name):
        return f"{self.base}/{name}"

    def missing(self, name):
        self.faults[name] = ("missing",)

    def truncate(self, name, nbytes):
        self.faults[name] = ("truncate", nbytes)

    def corrupt(self, name):
        self.faults[name] = ("corrupt",)

    def die_after(self, name, nbytes):
        self.faults[name] = ("die", nbytes)

    def clear(self, name=None):
        if name is None:
            self.faults.clear()
        else:
            self.faults.pop(name, None)

    def requests(self, name=None, method="GET"):
        with self.lock:
            return [e for e in self.log if e[0] == method and
                    (name is None or e[1].rsplit("/", 1)[-1] == name)]

    def stop(self):
        self._close_listener()
        self.t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    def _close_listener(self):
        with self.lock:
            if self.dead:
                return
            self.dead = True
        try:
            self.ls.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        except OSError:
            pass
        self.ls.close()

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _note(self, method, path, status, sent):
        with self.lock:
            self.log.append((method, path, status, sent))

    def _serve(self, conn):
        method, path, status, sent = "?", "?", 0, 0
        try:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                k = conn.recv(4096)
                if not k:
                    return
                head += k
                if len(head) > 65536:
                    return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            name = None
            if path.startswith(self.prefix + "/"):
                name = path[len(self.prefix) + 1:]
            file = os.path.join(self.root, name) if name and "/" not in name and \
                name not in (".", "..") else None
            fault = self.faults.get(name, ()) if name else ()
            if method not in ("GET", "HEAD"):
                status = 405
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                return
            if not file or not os.path.isfile(file) or fault[:1] == ("missing",):
                status = 404
                body = b"not found\n"
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) +
                             (body if method == "GET" else b""))
                return
            size = os.path.getsize(file)
            status = 200
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
            if method == "HEAD":
                return
            limit = size
            if fault[:1] in (("truncate",), ("die",)):
                limit = min(size, fault[1])
            flip = max(0, size - 64) if fault[:1] == ("corrupt",) and size else -1
            with open(file, "rb") as f:
                while sent < limit:
                    chunk = f.read(min(1 << 16, limit - sent))
                    if not chunk:
                        break
                    if sent <= flip < sent + len(chunk):
                        b = bytearray(chunk)
                        b[flip - sent] ^= 0xFF
                        chunk = bytes(b)
                    conn.sendall(chunk)
                    sent += len(chunk)
            if fault[:1] == ("die",):
                self._close_listener()
                # SO_LINGER 0: close() sends RST, the peer sees the connection reset.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                conn = None
            elif fault[:1] == ("truncate",):
                conn.shutdown(socket.SHUT_WR)   # clean FIN, short of Content-Length
        except OSError:
            pass
        finally:
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
            self._note(method, path, status, sent)


# ----------------------------------------------------------------------------------------------
# Bundles: the real one (made once by `sbx bundle`), reading its inner manifest, tampering


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            k = f.read(1 << 20)
            if not k:
                return h.hexdigest()
            h.update(k)


def _bundle_name(version=VERSION, arch=ARCH):
    return f"exec-sandbox-assets-{version}-{arch}.tar.zst"


def _parse_sums(text):
    """sha256sum lines -> {file name: hex} (the binary-mode `*` marker allowed)."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        ok(m, f"not a sha256sum line: {line!r}")
        out[m.group(2)] = m.group(1)
    return out


def _write_sums(dir, name, path=None):
    with open(os.path.join(dir, "SHA256SUMS"), "w") as f:
        f.write(f"{_sha256(path or os.path.join(dir, name))}  {name}\n")


def _read_inner(path):
    """The first members of a bundle: (member names in order up to images.list,
    {name: sha} from SHA256SUMS, {image: file} from images.list). Stops reading there."""
    dec = subprocess.Popen(["zstd", "-dcq", path], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    order, sums, images = [], None, None
    try:
        with tarfile.open(fileobj=dec.stdout, mode="r|") as t:
            for m in t:
                order.append(m.name)
                if m.name in ("SHA256SUMS", "images.list"):
                    data = t.extractfile(m).read().decode()
                    if m.name == "SHA256SUMS":
                        sums = _parse_sums(data)
                    else:
                        images = dict(l.split() for l in data.splitlines() if l.strip())
                if sums is not None and images is not None or len(order) >= 2:
                    break
    finally:
        dec.kill()
        dec.wait(TIMEOUT)
    return order, sums, images


class _Flip:
    """A file object that reads through `f` with the byte at offset `at` inverted."""

    def __init__(self, f, at):
        self.f, self.at, self.pos = f, at, 0

    def read(self, n=-1):
        b = self.f.read(n)
        if self.pos <= self.at < self.pos + len(b):
            b = bytearray(b)
            b[self.at - self.pos] ^= 0xFF
            b = bytes(b)
        self.pos += len(b)
        return b


def _tamper_inner(src, dst, victim=None):
    """Copies bundle src to dst (streamed: zstd -dc | tar | tar | zstd -c) with one byte of one
    asset flipped, the inner SHA256SUMS and images.list copied unchanged, so the inner manifest
    no longer matches that file. victim: the member to damage (default: the last asset in the
    archive, so every other file is unpacked before the bad one is met). Returns the victim."""
    if victim is None:
        names = subprocess.run(f"zstd -dcq '{src}' | tar -t", shell=True, capture_output=True,
                               text=True, timeout=TIMEOUT, check=True).stdout.split()
        victim = [n for n in names if n not in ("SHA256SUMS", "images.list")][-1]
    dec = subprocess.Popen(["zstd", "-dcq", src], stdout=subprocess.PIPE)
    with open(dst, "wb") as out:
        enc = subprocess.Popen(["zstd", "-q", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
        found = False
        try:
            tin = tarfile.open(fileobj=dec.stdout, mode="r|")
            tout = tarfile.open(fileobj=enc.stdin, mode="w|", format=tarfile.USTAR_FORMAT)
            for m in tin:
                if not m.isfile():
                    tout.addfile(m)
                    continue
                f = tin.extractfile(m)
                if m.name == victim:
                    ok(m.size > 0, f"{victim} is empty: nothing to flip")
                    f = _Flip(f, m.size // 2)
                    found = True
                tout.addfile(m, f)
            tout.close()
            tin.close()
        finally:
            enc.stdin.close()
            eq(enc.wait(TIMEOUT), 0, "zstd -c")
            eq(dec.wait(TIMEOUT), 0, "zstd -dc")
    ok(found, f"{victim} not in {src}")
    return victim


def _harness_images(c):
    r = c.sbx("status", "--json", timeout=TIMEOUT, check_rc=0)
    d = json.loads(r.out)["images_dir"]
    for n in IMAGE_NAMES:
        ok(os.path.exists(os.path.join(d, n)), f"the harness daemon's {d}/{n} is missing")
    return d


def _bundle(c):
    """The shared bundle, made once per run by `sbx bundle` from the harness daemon's images:
    dict(dir, name, path, sha, sums {file: sha}, images {image: file}, order, src)."""
    if "bundle" in _CACHE:
        return _CACHE["bundle"]
    if not shutil.which("zstd"):
        raise AssertionError("no zstd CLI (scripts/setup-host.sh installs it)")
    src = _harness_images(c)
    out = os.path.join(c.tmp, "prefetch-bundle")
    env = _env(c, os.path.join(c.tmp, "prefetch-bundle-cache"))
    r = c.sbx("bundle", "--images-dir", src, "--out", out, "--version", VERSION, "--arch", ARCH,
              env=env, timeout=2 * TIMEOUT)
    eq(r.returncode, 0, f"sbx bundle: {r.out[-1500:]} {r.err[-1500:]}")
    name = _bundle_name()
    path = os.path.join(out, name)
    ok(os.path.isfile(path), f"sbx bundle wrote no {name}: {sorted(os.listdir(out))}")
    outer = _parse_sums(open(os.path.join(out, "SHA256SUMS")).read())
    eq(list(outer), [name], "the outer SHA256SUMS names the bundle, only it")
    sha = _sha256(path)
    eq(outer[name], sha, "the outer SHA256SUMS is the bundle's sha256")
    order, sums, images = _read_inner(path)
    ok(sums and images, f"no SHA256SUMS / images.list in the bundle: {order}")
    _CACHE["bundle"] = dict(dir=out, name=name, path=path, sha=sha, sums=sums, images=images,
                            order=order, src=src)
    return _CACHE["bundle"]


def _variant_dir(c, name, b, bundle_name=None, link=True):
    """A directory holding the shared bundle (hard-linked, or copied) under bundle_name with a
    SHA256SUMS for it."""
    d = os.path.join(c.tmp, name)
    os.makedirs(d, exist_ok=True)
    bn = bundle_name or b["name"]
    dst = os.path.join(d, bn)
    if link:
        try:
            os.link(b["path"], dst)
        except OSError:
            shutil.copyfile(b["path"], dst)
    with open(os.path.join(d, "SHA256SUMS"), "w") as f:
        f.write(f"{b['sha']}  {bn}\n")
    return d


# ----------------------------------------------------------------------------------------------
# Running prefetch and checking the cache it leaves


def _env(c, cache, **extra):
    """The environment for one test's sbx/sbxd: its own cache dir, nothing from the caller that
    could move the images dir or turn offline mode on, no proxy for loopback."""
    e = c.env(EXEC_SANDBOX_CACHE_DIR=cache, **extra)
    for k in ("EXEC_SANDBOX_IMAGES_DIR", "EXEC_SANDBOX_CONFIG", "EXEC_SANDBOX_OFFLINE"):
        if k not in extra:
            e.pop(k, None)
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        e.pop(k, None)
    e["no_proxy"] = e["NO_PROXY"] = "127.0.0.1,localhost"
    return e


def _prefetch(c, env, *args):
    r = c.sbx("prefetch", *args, env=env, timeout=TIMEOUT)
    ok("ERROR: AddressSanitizer" not in r.err and "runtime error:" not in r.err,
       "sanitizer report: " + r.err[-3000:])
    return r


def _last_line(r):
    lines = [l for l in (r.err + "\n" + r.out).splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _snapshot(cache):
    """What a failed prefetch must not change: the images dir, entry by entry (symlink targets,
    or file sizes and mtimes), and the set of names under artefacts/."""
    img, art = os.path.join(cache, "images"), os.path.join(cache, "artefacts")
    images = None
    if os.path.isdir(img):
        images = {}
        for n in sorted(os.listdir(img)):
            p = os.path.join(img, n)
            if os.path.islink(p):
                images[n] = ("link", os.readlink(p))
            else:
                st = os.lstat(p)
                images[n] = ("other", st.st_mode, st.st_size, st.st_mtime_ns)
    arts = set(os.listdir(art)) if os.path.isdir(art) else set()
    return images, arts


def _staging_left(cache):
    left = []
    for d, dirs, files in os.walk(cache):
        left += [os.path.join(d, n) for n in dirs + files if n.startswith(".prefetch-")]
    return left


def _seed(cache):
    """An images dir with something in it already (an older python.sqfs and a stray file), as a
    failed prefetch must leave it."""
    img, art = os.path.join(cache, "images"), os.path.join(cache, "artefacts")
    os.makedirs(img)
    os.makedirs(art)
    old = os.path.join(art, "python-0000000000000000.sqfs")
    with open(old, "wb") as f:
        f.write(b"an older image\n")
    os.symlink(old, os.path.join(img, "python.sqfs"))
    with open(os.path.join(img, "README"), "w") as f:
        f.write("left alone\n")
    return _snapshot(cache)


def _nothing_installed(cache, before, sums, what):
    images, arts = _snapshot(cache)
    eq(images, before[0], f"{what}: the images dir changed")
    for n in sorted(arts - before[1]):
        p = os.path.join(cache, "artefacts", n)
        ok(n in sums and os.path.isfile(p) and _sha256(p) == sums[n],
           f"{what}: artefacts/{n} left behind (not a complete, verified asset)")
    eq(_staging_left(cache), [], f"{what}: staging left")


def _expect_failure(c, tag, args, wants, sums, env_extra=None, server=None):
    """A prefetch into a fresh, seeded cache that must fail: exit 125, `sbx: prefetch: ` and one
    of `wants` on stderr, the cache as it was. Returns the result."""
    cache = os.path.join(c.tmp, "pf-" + tag)
    before = _seed(cache)
    env = _env(c, cache, **(env_extra or {}))
    r = _prefetch(c, env, *args)
    eq(r.returncode, 125, f"{tag}: exit status; stdout {r.out[-800:]!r} stderr {r.err[-1500:]!r}")
    ok("sbx: prefetch: " in r.err, f"{tag}: stderr {r.err[-1500:]!r}")
    low = r.err.lower()
    ok(any(w.lower() in low for w in wants), f"{tag}: stderr {r.err[-1500:]!r} has none of {wants}")
    _nothing_installed(cache, before, sums or {}, tag)
    shutil.rmtree(cache, ignore_errors=True)
    return r


def _check_installed(cache, b, what):
    img, art = os.path.join(cache, "images"), os.path.join(cache, "artefacts")
    for image, file in b["images"].items():
        p = os.path.join(img, image)
        ok(os.path.islink(p), f"{what}: images/{image} is not a symlink")
        eq(os.path.realpath(p), os.path.realpath(os.path.join(art, file)),
           f"{what}: images/{image} points at")
        ok(os.path.isfile(os.path.join(art, file)), f"{what}: artefacts/{file} missing")
        eq(_sha256(os.path.join(art, file)), b["sums"][file], f"{what}: sha256 of {file}")
    eq(_staging_left(cache), [], f"{what}: staging left")


def _check_installed_line(r, cache, n, what):
    line = _last_line(r)
    m = re.fullmatch(r"sbx: prefetch: (\d+) assets installed in (.+)", line.strip())
    ok(m, f"{what}: last line {line!r}")
    eq(int(m.group(1)), n, f"{what}: assets installed")
    where = os.path.realpath(m.group(2).rstrip("/"))
    ok(where in {os.path.realpath(os.path.join(cache, x)) for x in ("", "images", "artefacts")},
       f"{what}: installed in {m.group(2)!r}, not under {cache}")


# ----------------------------------------------------------------------------------------------
# Tests


@test()
def bundle_layout(c):
    """`sbx bundle`: the outer SHA256SUMS is right; inside, SHA256SUMS first, then images.list,
    naming the same content-hashed files the daemon's images dir points at, with their sha256."""
    b = _bundle(c)
    eq(b["order"][:2], ["SHA256SUMS", "images.list"], "first members of the bundle")
    eq(sorted(b["images"]), sorted(IMAGE_NAMES), "images.list's images")
    eq(sorted(b["sums"]), sorted(b["images"].values()), "SHA256SUMS lists the images' files")
    for image, file in b["images"].items():
        real = os.path.realpath(os.path.join(b["src"], image))
        eq(file, os.path.basename(real), f"images.list's file for {image}")
        eq(b["sums"][file], _sha256(real), f"inner sha256 of {file}")
    names = subprocess.run(f"zstd -dcq '{b['path']}' | tar -t", shell=True, capture_output=True,
                           text=True, timeout=TIMEOUT).stdout.split()
    eq(sorted(names), sorted(["SHA256SUMS", "images.list"] + list(b["sums"])),
       "members of the bundle")


@test()
def prefetch_http_installs_and_is_idempotent(c):
    b = _bundle(c)
    cache = os.path.join(c.tmp, "pf-good")
    env = _env(c, cache)
    with FaultServer(b["dir"]) as srv:
        r = _prefetch(c, env, "--from", srv.base, "--version", VERSION)
        eq(r.returncode, 0, f"prefetch: {r.out[-1500:]} {r.err[-1500:]}")
        n = len(b["sums"])
        _check_installed_line(r, cache, n, "first prefetch")
        lines = [l for l in (r.out + r.err).splitlines() if l.strip()]
        eq(len(lines), 1, "not a terminal: no progress, only the last line: " + repr(lines))
        ok("\r" not in r.out + r.err, "no progress redraws off a terminal")
        _check_installed(cache, b, "first prefetch")
        got = srv.requests(b["name"])
        ok(got and got[-1][2] == 200 and got[-1][3] == os.path.getsize(b["path"]),
           f"the bundle was downloaded whole: {srv.log}")
        ok(srv.requests("SHA256SUMS"), f"SHA256SUMS fetched: {srv.log}")
        before = _snapshot(cache)
        inodes = {n: os.stat(os.path.join(cache, "artefacts", n)).st_ino for n in b["sums"]}
        r = _prefetch(c, env, "--from", srv.base, "--version", VERSION)
        eq(r.returncode, 0, f"second prefetch: {r.out[-1500:]} {r.err[-1500:]}")
        eq(_last_line(r).strip(), f"sbx: prefetch: all {n} assets already present",
           "second prefetch")
        eq(_snapshot(cache), before, "the second prefetch changed the cache")
        eq({n: os.stat(os.path.join(cache, "artefacts", n)).st_ino for n in b["sums"]}, inodes,
           "the second prefetch rewrote artefacts")
        _check_installed(cache, b, "second prefetch")
        print(f"    [bundle downloads: {len(srv.requests(b['name']))}]")
    _CACHE["good_cache"] = cache


@test()
def prefetch_local_dir(c):
    """--from PATH, with the default version (sbx's own) and arch (uname -m): the bundle renamed
    to that version. Replaces an older image's symlink. -q is silent. A missing file: `not found`;
    a wrong outer sha: `sha256 mismatch`."""
    b = _bundle(c)
    m = re.match(r"sbx (\S+)", c.sbx("--version", timeout=TIMEOUT, check_rc=0).out)
    ok(m, "sbx --version")
    d = _variant_dir(c, "pf-local-src", b, _bundle_name(m.group(1), ARCH))
    cache = os.path.join(c.tmp, "pf-local")
    _seed(cache)
    env = _env(c, cache)
    r = _prefetch(c, env, "--from", d)
    eq(r.returncode, 0, f"prefetch --from {d}: {r.out[-1500:]} {r.err[-1500:]}")
    _check_installed_line(r, cache, len(b["sums"]), "local prefetch")
    _check_installed(cache, b, "local prefetch")
    eq(open(os.path.join(cache, "images", "README")).read(), "left alone\n", "other files kept")
    r = _prefetch(c, env, "--from", d, "-q")
    eq((r.returncode, r.out, r.err), (0, "", ""), "-q, all present: silent")
    shutil.rmtree(cache)
    cache = os.path.join(c.tmp, "pf-local-q")
    r = _prefetch(c, _env(c, cache), "--from", d, "-q", "--version", m.group(1), "--arch", ARCH)
    eq((r.returncode, r.out, r.err), (0, "", ""), "-q: silent on success")
    _check_installed(cache, b, "prefetch -q")
    shutil.rmtree(cache)
    # failures from a directory
    empty = os.path.join(c.tmp, "pf-local-empty")
    os.makedirs(empty)
    _expect_failure(c, "local-missing", ["--from", empty, "--version", VERSION], ["not found"],
                    b["sums"])
    only_sums = os.path.join(c.tmp, "pf-local-nobundle")
    os.makedirs(only_sums)
    with open(os.path.join(only_sums, "SHA256SUMS"), "w") as f:
        f.write(f"{b['sha']}  {b['name']}\n")
    r = _expect_failure(c, "local-nobundle", ["--from", only_sums, "--version", VERSION],
                        ["not found"], b["sums"])
    ok(b["name"] in r.err, "the missing file is named: " + r.err)
    wrong = _variant_dir(c, "pf-local-wrongsum", b)
    with open(os.path.join(wrong, "SHA256SUMS"), "w") as f:
        f.write(f"{'0' * 64}  {b['name']}\n")
    _expect_failure(c, "local-wrongsum", ["--from", wrong, "--version", VERSION],
                    ["sha256 mismatch"], b["sums"])


@test()
def prefetch_other_arch_side_by_side(c):
    """--arch aarch64 (or its alias arm64) fetches that architecture's bundle name and installs
    its images under images/aarch64, beside the host's, which it leaves alone; an architecture
    without guests is refused before anything is fetched."""
    b = _bundle(c)
    other = "aarch64" if ARCH != "aarch64" else "x86_64"
    d = _variant_dir(c, "pf-arch-src", b, _bundle_name(VERSION, other))
    cache = os.path.join(c.tmp, "pf-arch")
    before = _seed(cache)
    for alias in ("arm64" if other == "aarch64" else "amd64", other):
        r = _prefetch(c, _env(c, cache), "--from", d, "--version", VERSION, "--arch", alias, "-q")
        eq((r.returncode, r.err), (0, ""), f"prefetch --arch {alias}: {r.out[-800:]}")
    sub = os.path.join(cache, "images", other) if other != "x86_64" else os.path.join(cache,
                                                                                        "images")
    for image, file in b["images"].items():
        eq(os.path.realpath(os.path.join(sub, image)),
           os.path.realpath(os.path.join(cache, "artefacts", file)), f"{other}'s {image}")
    if other != "x86_64":
        images, _ = _snapshot(cache)
        images.pop(other)
        eq(images, before[0], "the host architecture's images are untouched")
    r = _prefetch(c, _env(c, cache), "--from", d, "--version", VERSION, "--arch", "riscv64")
    eq(r.returncode, 2, f"unknown architecture: usage error: {r.err[-500:]}")
    ok("riscv64" in r.err and "aarch64" in r.err, "says which architectures exist: " + r.err)


@test()
def prefetch_corrupt_bundle(c):
    """One byte of the bundle flipped in transit (same length): the outer sha256 catches it."""
    b = _bundle(c)
    with FaultServer(b["dir"]) as srv:
        srv.corrupt(b["name"])
        r = _expect_failure(c, "corrupt", ["--from", srv.base, "--version", VERSION],
                            ["sha256 mismatch"], b["sums"])
        ok(b["name"] in r.err, "the bundle is named: " + r.err)
        got = srv.requests(b["name"])
        ok(got and got[-1][2] == 200, f"the corrupt bundle was served: {srv.log}")


@test()
def prefetch_bad_file_inside(c):
    """A bundle whose outer sha256 is right but one file in it does not match the inner
    SHA256SUMS: refused, naming the file; nothing installed, though the other files were
    unpacked before it (the damaged one is the last in the archive)."""
    b = _bundle(c)
    d = os.path.join(c.tmp, "pf-badinner-src")
    os.makedirs(d)
    victim = _tamper_inner(b["path"], os.path.join(d, b["name"]))
    _write_sums(d, b["name"])
    order, sums, images = _read_inner(os.path.join(d, b["name"]))
    eq((sums, images), (b["sums"], b["images"]), "the tampered bundle keeps the inner manifest")
    with FaultServer(d) as srv:
        r = _expect_failure(c, "badinner", ["--from", srv.base, "--version", VERSION],
                            ["sha256 mismatch"], b["sums"])
        ok(victim in r.err, f"the damaged file {victim} is named: {r.err}")


@test()
def prefetch_truncated_download(c):
    b = _bundle(c)
    size = os.path.getsize(b["path"])
    with FaultServer(b["dir"]) as srv:
        srv.truncate(b["name"], size // 2)
        _expect_failure(c, "truncated", ["--from", srv.base, "--version", VERSION],
                        ["truncated", "partial", "bytes remaining"], b["sums"])
        got = srv.requests(b["name"])
        ok(got and got[-1][3] == size // 2, f"the bundle was cut at half: {srv.log}")


def _fake_source(c, dirname, content):
    """A directory serving a "bundle" of the given bytes (not a real one) and its SHA256SUMS."""
    d = os.path.join(c.tmp, dirname)
    os.makedirs(d)
    name = _bundle_name()
    with open(os.path.join(d, name), "wb") as f:
        f.write(content)
    _write_sums(d, name)
    return d, name


@test(fast=True)
def prefetch_http_404(c):
    """A 404 for the bundle or for SHA256SUMS: `HTTP 404` and the URL. Needs no real bundle."""
    d, name = _fake_source(c, "pf-404-src", b"not a bundle\n")
    with FaultServer(d) as srv:
        srv.missing(name)
        r = _expect_failure(c, "404-bundle", ["--from", srv.base, "--version", VERSION],
                            ["HTTP 404"], {})
        ok(srv.url(name) in r.err, f"the URL {srv.url(name)} is named: {r.err}")
        srv.clear()
        srv.missing("SHA256SUMS")
        seen = len(srv.requests(name))
        r = _expect_failure(c, "404-sums", ["--from", srv.base, "--version", VERSION],
                            ["HTTP 404"], {})
        ok(srv.url("SHA256SUMS") in r.err, f"the URL {srv.url('SHA256SUMS')} is named: {r.err}")
        eq(srv.requests(name)[seen:], [], "no bundle download without its SHA256SUMS")


@test(fast=True)
def prefetch_connection_refused(c):
    with FaultServer(c.tmp) as srv:
        base = srv.base
    _expect_failure(c, "refused", ["--from", base, "--version", VERSION], ["connect"], {})


@test()
def prefetch_server_dies_mid_transfer(c):
    """The server goes away a third of the way into the bundle (connection reset, listener
    closed): a connection error, nothing installed; a retry is refused the same way."""
    b = _bundle(c)
    size = os.path.getsize(b["path"])
    with FaultServer(b["dir"]) as srv:
        srv.die_after(b["name"], size // 3)
        _expect_failure(c, "died", ["--from", srv.base, "--version", VERSION],
                        ["connect", "reset"], b["sums"])
        ok(srv.dead, "the server died")
        _expect_failure(c, "died-retry", ["--from", srv.base, "--version", VERSION],
                        ["connect"], b["sums"])


@test(fast=True)
def prefetch_offline_refuses(c):
    """EXEC_SANDBOX_OFFLINE=1: prefetch refuses at once, before any request, from a URL or from
    the default source."""
    d, name = _fake_source(c, "pf-offline-src", b"x")
    with FaultServer(d) as srv:
        for tag, args in [("offline-url", ["--from", srv.base, "--version", VERSION]),
                          ("offline-default", [])]:
            t0 = time.time()
            _expect_failure(c, tag, args, ["offline"], {},
                            env_extra={"EXEC_SANDBOX_OFFLINE": "1"})
            ok(time.time() - t0 < 10, f"{tag}: refused at once ({time.time() - t0:.1f}s)")
        eq(srv.log, [], "offline: no request reached the server")


def _sbxd_must_exit(c, tag, cache):
    sock = os.path.join(c.tmp, tag + ".sock")
    env = _env(c, cache, EXEC_SANDBOX_OFFLINE="1", EXEC_SANDBOX_SOCKET=sock)
    t0 = time.time()
    try:
        p = subprocess.run([c.sbxd_bin, "--socket", sock, "--idle-exit-seconds", "0"],
                           stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{tag}: sbxd offline without its assets did not exit in 30 s")
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    ok(p.returncode != 0, f"{tag}: sbxd exited {p.returncode}: {out[-1500:]}")
    ok(time.time() - t0 < 15, f"{tag}: took {time.time() - t0:.1f}s")
    ok("sbx prefetch" in out, f"{tag}: `sbx prefetch` named: {out[-1500:]}")
    ok("ERROR: AddressSanitizer" not in out, out[-3000:])
    return out


@test(fast=True)
def sbxd_offline_without_assets_exits(c):
    """sbxd, offline, with an empty images dir, or one lacking python.sqfs: exits at start, naming
    what is missing and `sbx prefetch`."""
    src = _harness_images(c)
    cache = os.path.join(c.tmp, "pf-sbxd-empty")
    os.makedirs(os.path.join(cache, "images"))
    out = _sbxd_must_exit(c, "sbxd-empty", cache)
    ok("vmlinux" in out, "names vmlinux: " + out[-1500:])
    cache = os.path.join(c.tmp, "pf-sbxd-partial")
    img = os.path.join(cache, "images")
    os.makedirs(img)
    for n in IMAGE_NAMES:
        if n != "python.sqfs":
            os.symlink(os.path.realpath(os.path.join(src, n)), os.path.join(img, n))
    out = _sbxd_must_exit(c, "sbxd-partial", cache)
    ok("python.sqfs" in out, "names python.sqfs: " + out[-1500:])


@test()
def sbxd_offline_with_prefetched_assets_starts(c):
    """sbxd, offline, on the images dir a prefetch made: starts and serves status."""
    cache = _CACHE.get("good_cache")
    if not cache or not os.path.isdir(os.path.join(cache, "images")):
        b = _bundle(c)
        cache = os.path.join(c.tmp, "pf-sbxd-present")
        r = _prefetch(c, _env(c, cache), "--from", b["dir"], "--version", VERSION, "-q")
        eq(r.returncode, 0, f"prefetch: {r.err[-1500:]}")
    sock = os.path.join(c.tmp, "pf-sbxd-present.sock")
    log = os.path.join(c.tmp, "pf-sbxd-present.log")
    env = _env(c, cache, EXEC_SANDBOX_OFFLINE="1", EXEC_SANDBOX_SOCKET=sock)
    p = c.start_daemon("--idle-exit-seconds", "0", sock=sock, log=log, env=env)
    try:
        st = json.loads(c.sbx("status", "--json", env=env, timeout=TIMEOUT, check_rc=0).out)
        eq(os.path.realpath(st["images_dir"]), os.path.realpath(os.path.join(cache, "images")),
           "the daemon's images dir")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    ok(p.returncode in (0, -signal.SIGTERM), f"sbxd exit {p.returncode}")
    text = open(log).read()
    ok("ERROR: AddressSanitizer" not in text and "runtime error:" not in text, text[-3000:])


@test()
def sbxd_prefetches_missing_assets_at_start(c):
    """asset_base_url and an empty cache: sbxd prefetches the bundle before it serves, and runs
    code on what it fetched."""
    b = _bundle(c)
    cache = os.path.join(c.tmp, "pf-sbxd-fetch")
    os.makedirs(cache, mode=0o700)
    images = json.loads(c.sbx("status", "--json", check_rc=0).out)["images_dir"]
    verdict = os.path.join(os.path.dirname(images), "accel-verdict")
    if os.path.isfile(verdict):  # no accelerator probe
        shutil.copyfile(verdict, os.path.join(cache, "accel-verdict"))
        os.chmod(os.path.join(cache, "accel-verdict"), 0o600)
    sock = os.path.join(c.tmp, "pf-sbxd-fetch.sock")
    log = os.path.join(c.tmp, "pf-sbxd-fetch.log")
    env = _env(c, cache, EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_ASSET_BASE_URL=b["dir"],
               EXEC_SANDBOX_ASSET_VERSION=VERSION)
    p = c.start_daemon("--idle-exit-seconds", "0", sock=sock, log=log, env=env)
    try:
        text = open(log).read()
        ok("guest assets prefetched from" in text, f"prefetched at start: {text[-1500:]}")
        for name in ("vmlinux", "initramfs.cpio", "python.sqfs", "javascript.sqfs", "raw.sqfs"):
            ok(os.path.islink(os.path.join(cache, "images", name)), f"images/{name}")
        r = c.sbx("run", "-q", "print(6 * 7)", env=env, timeout=TIMEOUT)
        eq((r.returncode, r.out), (0, "42\n"), "a run on the fetched assets: " + r.err[-800:])
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
