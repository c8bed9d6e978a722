"""A local PyPI for the package tests: a PEP 503 "simple" index over HTTPS on a loopback address,
serving hand-made pure-Python wheels (built here with zipfile: no setuptools, no wheel package).

The packages (names on data/pypi-top-10k.txt, versions no real release has):
  six 99.0.1    wheel; module six.py with SBX_FAKE = "six 99.0.1"
  attrs 99.0.1  wheel; package attrs/ importing six; Requires-Dist: six==99.0.1 (so asking for
                attrs alone must pull six: the installer resolves)
  idna 99.0.1   sdist only: --only-binary=:all: finds no matching distribution

    idx = PkgIndex(tmpdir, ip="127.0.0.6")   # port 443 by default
    idx.start()
    idx.url          # "https://pypi.test/simple": what the daemon is given (pypi_index_url)
    idx.ip_url       # "https://127.0.0.6/simple": the same index by address (the host's pip)
    idx.hosts_line   # "127.0.0.6 pypi.test": for the daemon's dns_hosts_file
    idx.ca_file      # PEM of the throw-away CA that signed the server's certificate
    idx.requests     # a copy of the request paths so far, in order
    idx.count("/simple/attrs/")  # how many requests had a path starting so (all without one)
    idx.stop()

`python3 pkgindex.py [--ip IP] [--port PORT] [--dir DIR]` serves it until Ctrl-C;
`python3 pkgindex.py --selftest [--guest-root DIR]` checks it with the host's pip (download,
resolution, the no-wheel and missing-version failures, install --target and import) and, given
the python image unpacked in DIR (`unsquashfs -d DIR python.sqfs`, as root), with the guest's
own pip and Python under chroot."""
import base64
import hashlib
import html
import http.server
import io
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile

HOSTNAME = "pypi.test"
VERSION = "99.0.1"
ZIP_TIME = (2020, 1, 1, 0, 0, 0)

# name -> (version, {path in the wheel: text}, [Requires-Dist]); None files: sdist only.
PACKAGES = {
    "six": (VERSION, {"six.py": f'SBX_FAKE = "six {VERSION}"\n'}, []),
    "attrs": (VERSION, {"attrs/__init__.py":
                        f'import six\nSBX_FAKE = "attrs {VERSION} on " + six.SBX_FAKE\n'},
              [f"six=={VERSION}"]),
    "idna": (VERSION, None, []),
}

# The reference README's package example, as fakes with the versions it pins (pandas needs numpy).
REFERENCE_PACKAGES = {
    "numpy": ("1.26.0", {"numpy/__init__.py": '__version__ = "1.26.0"\n'}, []),
    "pandas": ("2.2.0", {"pandas/__init__.py": 'import numpy\n__version__ = "2.2.0"\n'},
               ["numpy==1.26.0"]),
}


def _b64_sha256(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(outdir, name, version, files, requires=()):
    """NAME-VERSION-py3-none-any.whl in outdir with files ({path: text}), METADATA, WHEEL and a
    RECORD of sha256 hashes (pip checks them). Deterministic: the same bytes every time."""
    dist = f"{name}-{version}.dist-info"
    meta = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Summary: exec-sandbox test package (not the real {name})\n" +
            "".join(f"Requires-Dist: {r}\n" for r in requires))
    wheel = ("Wheel-Version: 1.0\nGenerator: exec-sandbox pkgindex\nRoot-Is-Purelib: true\n"
             "Tag: py3-none-any\n")
    entries = [(p, t.encode()) for p, t in sorted(files.items())]
    entries += [(f"{dist}/METADATA", meta.encode()), (f"{dist}/WHEEL", wheel.encode())]
    record = "".join(f"{p},sha256={_b64_sha256(d)},{len(d)}\n" for p, d in entries)
    record += f"{dist}/RECORD,,\n"
    entries.append((f"{dist}/RECORD", record.encode()))
    path = os.path.join(outdir, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in entries:
            info = zipfile.ZipInfo(p, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, d)
    return path


def build_sdist(outdir, name, version):
    """NAME-VERSION.tar.gz: a plausible setuptools sdist (never built by the tests: only the
    absence of a wheel matters)."""
    top = f"{name}-{version}"
    members = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        "setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, "
                    f"packages=[{name!r}])\n",
        f"{name}/__init__.py": f'SBX_FAKE = "{name} {version} (sdist)"\n',
    }
    path = os.path.join(outdir, f"{top}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        for p, text in sorted(members.items()):
            d = text.encode()
            ti = tarfile.TarInfo(f"{top}/{p}")
            ti.size, ti.mtime, ti.mode = len(d), 1577836800, 0o644
            t.addfile(ti, io.BytesIO(d))
    return path


def make_certs(d, ip, hostname=HOSTNAME):
    """A throw-away CA (ca.pem, ca.key) and a server certificate it signs for hostname and ip
    (server.pem, server.key), with the extensions strict verifiers (Python 3.13's
    VERIFY_X509_STRICT) want. Returns (ca_pem, server_pem, server_key)."""
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    crt, key, csr = (os.path.join(d, x) for x in ("server.pem", "server.key", "server.csr"))
    ext = os.path.join(d, "server.ext")

    def ossl(*a):
        r = subprocess.run(["openssl", *a], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"openssl {a[0]}: {r.stderr.strip()[-800:]}")

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-sha256",
         "-subj", "/CN=exec-sandbox test package index CA", "-keyout", ca_key, "-out", ca,
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash")
    ossl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hostname}",
         "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write(f"basicConstraints=critical,CA:FALSE\n"
                f"keyUsage=critical,digitalSignature,keyEncipherment\n"
                f"extendedKeyUsage=serverAuth\n"
                f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
                f"subjectAltName=DNS:{hostname},IP:{ip}\n")
    ossl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "3", "-sha256", "-extfile", ext, "-out", crt)
    return ca, crt, key


class _Server(http.server.ThreadingHTTPServer):
    """TLS per connection, in the connection's own thread (a client that never finishes its
    handshake holds up nobody else)."""
    daemon_threads = True
    tls = None

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.close()
            except OSError:
                pass


def npm_unreachable():
    """Why the npm registry cannot be reached from this host (None when it can): the JavaScript
    package tests and benchmark install from the real registry."""
    try:
        r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                            "https://registry.npmjs.org/is-number"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"curl: {e}"
    if r.returncode != 0 or r.stdout.strip() != "200":
        return f"curl exit {r.returncode}, HTTP {r.stdout.strip()}: {r.stderr.strip()[:200]}"
    return None


class PkgIndex:
    def __init__(self, tmpdir, ip="127.0.0.6", port=443, hostname=HOSTNAME, packages=None):
        self.ip, self.port, self.hostname = ip, port, hostname
        self.dir = os.path.join(tmpdir, f"pkgindex-{ip}-{port}")
        self.files_dir = os.path.join(self.dir, "files")
        os.makedirs(self.files_dir, exist_ok=True)
        hp = hostname if port == 443 else f"{hostname}:{port}"
        ipp = ip if port == 443 else f"{ip}:{port}"
        self.url = f"https://{hp}/simple"
        self.ip_url = f"https://{ipp}/simple"
        self.hosts_line = f"{ip} {hostname}"
        self._lock = threading.Lock()
        self._requests = []
        self.httpd = None
        # name -> [(filename, sha256 hex)]
        self.index = {}
        for name, (version, files, requires) in (packages or PACKAGES).items():
            if files is None:
                p = build_sdist(self.files_dir, name, version)
            else:
                p = build_wheel(self.files_dir, name, version, files, requires)
            with open(p, "rb") as f:
                self.index.setdefault(name, []).append(
                    (os.path.basename(p), hashlib.sha256(f.read()).hexdigest()))
        self.ca_file, self.cert_file, self.key_file = make_certs(self.dir, ip, hostname)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def count(self, prefix=""):
        with self._lock:
            return sum(1 for p in self._requests if p.startswith(prefix))

    def _page(self, path):
        """(status, content type, body) for a GET of path."""
        path = path.split("?", 1)[0].split("#", 1)[0]
        if path in ("/simple", "/simple/"):
            links = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in sorted(self.index))
            return 200, "text/html", (
                f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" "
                f"content=\"1.0\"><title>Simple index</title></head><body>\n{links}"
                f"</body></html>\n").encode()
        if path.startswith("/simple/"):
            name = path[len("/simple/"):].strip("/")
            if name not in self.index:
                return 404, "text/plain", b"not found\n"
            links = "".join(f'<a href="/files/{html.escape(f)}#sha256={h}">{html.escape(f)}</a>'
                            f"<br>\n" for f, h in self.index[name])
            return 200, "text/html", (
                f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" "
                f"content=\"1.0\"><title>Links for {name}</title></head><body>\n"
                f"<h1>Links for {name}</h1>\n{links}</body></html>\n").encode()
        if path.startswith("/files/"):
            f = path[len("/files/"):]
            if "/" not in f and any(f == x for files in self.index.values() for x, _ in files):
                with open(os.path.join(self.files_dir, f), "rb") as fh:
                    data = fh.read()
                ctype = "application/gzip" if f.endswith(".tar.gz") else "application/zip"
                return 200, ctype, data
        return 404, "text/plain", b"not found\n"

    def start(self):
        idx = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self, head=False):
                with idx._lock:
                    idx._requests.append(self.path)
                status, ctype, body = idx._page(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET(head=True)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        s = _Server((self.ip, self.port), H)
        s.tls = ctx
        self.httpd = s
        threading.Thread(target=s.serve_forever, daemon=True, name="pkgindex").start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _guest_check(idx, root):
    """The guest's own pip and Python (root: the python image unpacked, e.g. `unsquashfs -d
    ROOT python.sqfs`), run under chroot against the index by name, as a guest would: ROOT's
    etc/hosts gets the hosts line for the while (an address in the URL does not do: trixie's
    pip, through truststore, fails on it with "check_hostname requires server_hostname")."""
    tmp = os.path.join(root, "tmp")
    ca = os.path.join(tmp, "sbx-pkgindex-ca.pem")
    target = "/tmp/sbx-pkgindex-target"
    hosts = os.path.join(root, "etc", "hosts")
    saved = open(hosts, "rb").read() if os.path.exists(hosts) else None
    with open(hosts, "ab") as f:
        f.write(b"\n" + idx.hosts_line.encode() + b"\n")
    shutil.copyfile(idx.ca_file, ca)
    out = []

    def guest(*a, env=()):
        return subprocess.run(["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/bin:/bin",
                               "HOME=/root", *env, *a], capture_output=True, text=True,
                              timeout=180)

    def pip(spec, dest):
        return guest("/usr/bin/python3", "-m", "pip", "install", "--disable-pip-version-check",
                     "--no-input", "--root-user-action=ignore", "--only-binary=:all:",
                     "--no-cache-dir", "--index-url", idx.url, "--cert",
                     "/tmp/sbx-pkgindex-ca.pem", "--target", dest, spec)

    try:
        r = guest("/usr/bin/python3", "-m", "pip", "--version")
        assert r.returncode == 0, "no pip in the guest root: " + r.stdout + r.stderr
        out.append("guest: " + r.stdout.strip())
        r = pip(f"attrs=={VERSION}", target)
        assert r.returncode == 0, "guest pip install: " + r.stdout + r.stderr
        r = guest("/usr/bin/python3", "-c", "import attrs; print(attrs.SBX_FAKE)",
                  env=[f"PYTHONPATH={target}"])
        assert r.stdout == f"attrs {VERSION} on six {VERSION}\n", r.stdout + r.stderr
        out.append("guest pip install --target + import: " + r.stdout.strip())
        for spec in (f"idna=={VERSION}", "six==98.0.0"):
            r = pip(spec, target + "-2")
            assert r.returncode != 0 and "No matching distribution found" in r.stderr, \
                r.stdout + r.stderr
            out.append(f"guest pip install {spec} -> exit {r.returncode}: " +
                       " | ".join(r.stderr.strip().splitlines()[-2:]))
    finally:
        if saved is None:
            os.unlink(hosts)
        else:
            with open(hosts, "wb") as f:
                f.write(saved)
        os.unlink(ca)
        for t in (target, target + "-2"):
            shutil.rmtree(os.path.join(root, t.lstrip("/")), ignore_errors=True)
    return out


def selftest(ip="127.0.0.6", port=443, python=sys.executable, guest_root=None):
    """The index checked with the host's pip (no daemon, no VM): attrs==99.0.1 downloads attrs
    and six; idna==99.0.1 (sdist only) and six==98.0.0 fail with pip's no-matching-distribution
    message; the wheels install with --target and import. Raises AssertionError; returns a
    summary of what pip said."""
    tmp = tempfile.mkdtemp(prefix="sbx-pkgindex-")
    report = []
    try:
        with PkgIndex(tmp, ip=ip, port=port) as idx:
            # Strict X.509 checks as Python 3.13's default context makes them.
            import urllib.request
            ctx = ssl.create_default_context(cafile=idx.ca_file)
            if hasattr(ssl, "VERIFY_X509_STRICT"):
                ctx.verify_flags |= ssl.VERIFY_X509_STRICT
            with urllib.request.urlopen(idx.ip_url + "/", context=ctx, timeout=20) as r:
                root = r.read().decode()
            for n in PACKAGES:
                assert f'href="/simple/{n}/"' in root, root
            report.append("root listing: " + ", ".join(sorted(PACKAGES)) +
                          " (strict X.509 verification passed)")

            # Nothing of the host's pip setup (PIP_FIND_LINKS, PIP_CERT, a pip.conf) and no
            # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE: requests lets those override --cert.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and
                   k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1")

            def pip(*a):
                return subprocess.run(
                    [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *a,
                     "--only-binary=:all:", "--no-cache-dir", "--index-url", idx.ip_url,
                     "--cert", idx.ca_file], capture_output=True, text=True, timeout=120,
                    env=env)

            dl = os.path.join(tmp, "dl")
            r = pip("download", "-d", dl, f"attrs=={VERSION}")
            assert r.returncode == 0, "pip download attrs: " + r.stdout + r.stderr
            got = sorted(os.listdir(dl))
            assert got == [f"attrs-{VERSION}-py3-none-any.whl",
                           f"six-{VERSION}-py3-none-any.whl"], got
            report.append("pip download attrs==99.0.1 -> " + " ".join(got))
            for spec, want in ((f"idna=={VERSION}", "No matching distribution found for idna"),
                               ("six==98.0.0", "No matching distribution found for six")):
                r = pip("download", "-d", os.path.join(tmp, "dl2"), spec)
                last = (r.stdout + r.stderr).strip().splitlines()[-2:]
                assert r.returncode != 0 and want in r.stdout + r.stderr, r.stdout + r.stderr
                report.append(f"pip download {spec} -> exit {r.returncode}: " + " | ".join(last))
            target = os.path.join(tmp, "target")
            r = pip("install", "--no-compile", "--target", target, f"attrs=={VERSION}")
            assert r.returncode == 0, "pip install --target: " + r.stdout + r.stderr
            r = subprocess.run([python, "-c",
                                "import attrs; print(attrs.SBX_FAKE, attrs.__file__)"],
                               capture_output=True, text=True, timeout=30,
                               env={**os.environ, "PYTHONPATH": target}, cwd=tmp)
            assert r.returncode == 0 and r.stdout.startswith(
                f"attrs {VERSION} on six {VERSION} {target}/"), r.stdout + r.stderr
            report.append("pip install --target + import: " + r.stdout.strip())
            r = pip("install", "--no-compile", "--target", target, "--upgrade",
                    "--no-index", "--find-links", dl, f"six=={VERSION}")
            assert r.returncode == 0, "install from the downloaded wheels: " + r.stderr
            report.append("pip install --no-index --find-links (downloaded wheels): ok")
            assert idx.count("/simple/attrs/") >= 1 and idx.count("/simple/six/") >= 1, \
                idx.requests
            assert idx.count("/simple/idna/") >= 1, idx.requests
            assert idx.count("/files/") >= 2, idx.requests
            report.append(f"{len(idx.requests)} requests: " + " ".join(sorted(set(idx.requests))))
            if guest_root:
                report += _guest_check(idx, guest_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(report)


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ip", default="127.0.0.6")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--dir", help="where the files and certificates go (default: a temporary "
                                  "directory, removed at exit)")
    ap.add_argument("--selftest", action="store_true", help="check it with the host's pip")
    ap.add_argument("--guest-root", help="with --selftest: also with the pip of this root "
                                         "(the python image unpacked), under chroot")
    a = ap.parse_args()
    if a.selftest:
        print(selftest(a.ip, a.port, guest_root=a.guest_root))
        print("pkgindex selftest: ok")
        return
    tmp = a.dir or tempfile.mkdtemp(prefix="sbx-pkgindex-")
    idx = PkgIndex(tmp, ip=a.ip, port=a.port).start()
    print(f"serving {idx.url} ({idx.ip_url})\nhosts line: {idx.hosts_line}\n"
          f"CA: {idx.ca_file}\n"
          f"EXEC_SANDBOX_PYPI_INDEX_URL={idx.url} EXEC_SANDBOX_PACKAGE_INDEX_CA_FILE={idx.ca_file}",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        idx.stop()
        if not a.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
