#!/usr/bin/env python3
"""A real S3-compatible server for the remote layer cache tests, behind a verifying front.

s3rver (npm, installed by scripts/setup-s3rver.sh) stores objects and their user metadata, but it
does not check SigV4 signatures (any well-formed signature of a known access key id passes) and it
knows one key only, S3RVER/S3RVER. So the daemon talks to a front (VerifyingFront) that checks
each request's SigV4 signature as S3 would (canonical request rebuilt from what was sent; the
signing key derived with Debian's python3-botocore), checks a hex x-amz-content-sha256 against
the body, answers 403 with an S3-style XML error on a mismatch, and otherwise re-signs the
request with s3rver's key and forwards it, streaming the answer back. The front also injects
faults for the tests (failed answers, a PUT cut mid-body, a stopped listener, delays) and counts
PUTs in flight.

    srv = S3Server(tmpdir)                 # s3rver + front on 127.0.0.1, bucket "sbx-cache"
    srv.endpoint                           # http://127.0.0.1:PORT (the front; give it to sbxd)
    srv.front.fail_next(2, status=503)
    srv.objects(); srv.get_object(key); srv.put_object(key, data, {"sha256": ...})
    srv.stop()

Manual use: `python3 tests/e2e/s3front.py selftest` or `... serve` (prints the endpoint).
Every wait is bounded; nothing listens or connects outside 127.0.0.1.
"""
import collections
import datetime
import hashlib
import hmac
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape as xml_escape

try:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError as e:  # pragma: no cover
    raise ImportError("s3front needs botocore: apt-get install python3-botocore "
                      "(scripts/setup-host.sh installs it); run the tests with /usr/bin/python3"
                      ) from e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_CMD = "scripts/setup-s3rver.sh"
S3RVER_KEY = "S3RVER"      # s3rver 3.x knows this access key id only (lib/models/account.js)
S3RVER_SECRET = "S3RVER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "expect"}
CHUNK = 1 << 20
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def cache_dir():
    """The same directory scripts/setup-s3rver.sh and scripts/build-assets.sh use."""
    return os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "exec-sandbox")


def s3rver_bin():
    path = os.path.join(cache_dir(), "npm", "s3rver", "node_modules", ".bin", "s3rver")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"s3rver is not installed at {path}: run {SETUP_CMD} "
                                f"(from {ROOT})")
    return path


def amz_now(offset_s=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y%m%dT%H%M%SZ")


# ---- SigV4 ---------------------------------------------------------------------------------

def canonical_uri(raw_path):
    """S3's canonical URI: the path decoded once, then URI-encoded once ('/' kept)."""
    return urllib.parse.quote(urllib.parse.unquote(raw_path), safe="/~") or "/"


def canonical_query(raw_query):
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((urllib.parse.quote(urllib.parse.unquote_plus(k), safe="-_.~"),
                      urllib.parse.quote(urllib.parse.unquote_plus(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def header_values(headers, name):
    """All values of a header: from an email.message.Message, a dict or a list of pairs."""
    if hasattr(headers, "get_all"):
        return headers.get_all(name) or []
    if isinstance(headers, dict):
        return [v for k, v in headers.items() if k.lower() == name]
    return [v for k, v in headers if k.lower() == name]


def canonical_request(method, raw_path, raw_query, headers, signed_names, payload_hash):
    lines = []
    for name in signed_names:
        vals = header_values(headers, name)
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in vals))
    return "\n".join([method.upper(), canonical_uri(raw_path), canonical_query(raw_query),
                      "\n".join(lines) + "\n", ";".join(signed_names), payload_hash])


def signature_for(secret, amzdate, region, service, string_to_sign):
    """The SigV4 signature, key derivation and HMAC done by botocore's SigV4Auth."""
    signer = SigV4Auth(Credentials("unused", secret), service, region)
    req = AWSRequest(method="GET", url="http://127.0.0.1/")
    req.context["timestamp"] = amzdate
    return signer.signature(string_to_sign, req)


def string_to_sign(amzdate, scope, creq):
    return "\n".join([ALGORITHM, amzdate, scope,
                      hashlib.sha256(creq.encode("utf-8")).hexdigest()])


def authorization(method, raw_path, raw_query, headers, signed_names, payload_hash,
                  access_key, secret, amzdate, region="us-east-1", service="s3"):
    """An Authorization header value for a request (signed_names lowercase, sorted)."""
    scope = f"{amzdate[:8]}/{region}/{service}/aws4_request"
    creq = canonical_request(method, raw_path, raw_query, headers, signed_names, payload_hash)
    sig = signature_for(secret, amzdate, region, service, string_to_sign(amzdate, scope, creq))
    return (f"{ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={';'.join(signed_names)}, Signature={sig}")


class AuthError(Exception):
    def __init__(self, code, message, status=403):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def parse_authorization(value):
    if not value.startswith(ALGORITHM + " "):
        raise AuthError("AuthorizationHeaderMalformed", "unsupported authorization type")
    parts = {}
    for comp in value[len(ALGORITHM) + 1:].split(","):
        k, sep, v = comp.strip().partition("=")
        if not sep or k in parts:
            raise AuthError("AuthorizationHeaderMalformed", f"bad component {comp.strip()!r}")
        parts[k] = v
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise AuthError("AuthorizationHeaderMalformed",
                        "needs Credential, SignedHeaders and Signature")
    cred = parts["Credential"].split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        raise AuthError("AuthorizationHeaderMalformed", "bad Credential scope")
    signed = parts["SignedHeaders"].split(";")
    if signed != sorted(signed) or any(s != s.lower() or not s for s in signed):
        raise AuthError("AuthorizationHeaderMalformed", "SignedHeaders not lowercase and sorted")
    return {"access_key": cred[0], "date": cred[1], "region": cred[2], "service": cred[3],
            "signed": signed, "signature": parts["Signature"]}


def parse_amzdate(s):
    return datetime.datetime.strptime(s, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def verify_sigv4(method, raw_path, raw_query, headers, keys, region="us-east-1", service="s3",
                 max_skew_s=900, require_signed_amz=True, now=None):
    """Checks a request's SigV4 Authorization header as S3 does. Returns the parsed header;
    raises AuthError. keys: {access key id: secret}. The payload is not read here: the
    x-amz-content-sha256 value is the payload hash (the caller checks it against the body)."""
    vals = header_values(headers, "authorization")
    if len(vals) != 1:
        raise AuthError("AccessDenied", "missing Authorization header" if not vals
                        else "more than one Authorization header")
    auth = parse_authorization(vals[0])
    if auth["access_key"] not in keys:
        raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                        "exist in our records.")
    if auth["region"] != region or auth["service"] != service:
        raise AuthError("AuthorizationHeaderMalformed",
                        f"scope {auth['region']}/{auth['service']}, expected {region}/{service}")
    payload = header_values(headers, "x-amz-content-sha256")
    if len(payload) != 1:
        raise AuthError("AccessDenied", "missing x-amz-content-sha256 header")
    payload = payload[0].strip()
    if payload != UNSIGNED_PAYLOAD and not HEX64.match(payload):
        raise AuthError("InvalidArgument", f"unsupported x-amz-content-sha256 {payload!r}")
    amzdate = header_values(headers, "x-amz-date")
    if len(amzdate) != 1:
        raise AuthError("AccessDenied", "missing x-amz-date header")
    amzdate = amzdate[0].strip()
    try:
        t = parse_amzdate(amzdate)
    except ValueError:
        raise AuthError("AccessDenied", f"bad x-amz-date {amzdate!r}")
    if auth["date"] != amzdate[:8]:
        raise AuthError("SignatureDoesNotMatch", "Credential date is not x-amz-date's")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if abs((now - t).total_seconds()) > max_skew_s:
        raise AuthError("RequestTimeTooSkewed", "The difference between the request time and "
                        "the current time is too large.")
    signed = auth["signed"]
    for must in ("host", "x-amz-content-sha256", "x-amz-date"):
        if must not in signed:
            raise AuthError("AccessDenied", f"{must} is not among the signed headers")
    for name in signed:
        if not header_values(headers, name):
            raise AuthError("AccessDenied", f"signed header {name} is not in the request")
    if require_signed_amz:
        names = {k.lower() for k in (headers.keys() if hasattr(headers, "keys")
                                     else [k for k, _ in headers])}
        unsigned = sorted(n for n in names if n.startswith("x-amz-") and n not in signed)
        if unsigned:
            raise AuthError("AccessDenied", "There were headers present in the request which "
                            "were not signed: " + ", ".join(unsigned))
    scope = f"{auth['date']}/{region}/{service}/aws4_request"
    creq = canonical_request(method, raw_path, raw_query, headers, signed, payload)
    sts = string_to_sign(amzdate, scope, creq)
    want = signature_for(keys[auth["access_key"]], amzdate, region, service, sts)
    if not hmac.compare_digest(want, auth["signature"]):
        raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not "
                        "match the signature you provided. Check your key and signing method.")
    auth["payload_hash"] = payload
    auth["amzdate"] = amzdate
    return auth


def s3_error_xml(code, message, request_id):
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{xml_escape(code)}</Code>'
            f"<Message>{xml_escape(message)}</Message><RequestId>{request_id}</RequestId>"
            "</Error>").encode()


# ---- the front -----------------------------------------------------------------------------

LogEntry = collections.namedtuple("LogEntry", "method path status verdict signed_headers")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120          # per socket operation: a silent client does not hold a thread forever
    server_version = "sbx-s3front"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.server.front._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.front._track(self.connection, False)

    def handle_expect_100(self):
        # Deferred: 100 Continue is sent only once the request is to be read (_want_body), so
        # a rejected upload is answered before its body is sent.
        self._expect = True
        return True

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_DELETE = do_POST = do_GET

    # -- helpers
    def _continue(self):
        if getattr(self, "_expect", False):
            self._expect = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def _length(self):
        cl = self.headers.get("Content-Length")
        if cl is None:
            return None
        try:
            n = int(cl)
        except ValueError:
            return -1
        return n if n >= 0 else -1

    def _answer(self, status, code, message, verdict, close=False, auth=None):
        front = self.server.front
        body = s3_error_xml(code, message, f"sbxfront-{front._next_id()}")
        # A body not read yet: close rather than read it (a 100 Continue not sent means the
        # client sends none; otherwise read what is small, close on the rest).
        if not self._body_done:
            n = self._length()
            if getattr(self, "_expect", False) or n is None or n < 0 or n > 8 * CHUNK:
                close = True
            else:
                try:
                    self._discard(n)
                except OSError:
                    close = True
        # Logged before answering: once a client has its answer, the log has the request.
        front._record(self.command, self.path, status, verdict, auth)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.send_header("x-amz-request-id", "sbxfront")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _discard(self, n):
        while n > 0:
            b = self.rfile.read(min(n, CHUNK))
            if not b:
                raise OSError("client closed mid-body")
            n -= len(b)
        self._body_done = True

    def _handle(self):
        front = self.server.front
        self._body_done = False
        is_put = self.command == "PUT"
        front._enter(is_put)
        try:
            self._handle_inner(front, is_put)
        except (OSError, http.client.HTTPException) as e:
            self.close_connection = True
            front._record(self.command, self.path, 0, f"error: {e}", None)
        finally:
            front._leave(is_put)

    def _handle_inner(self, front, is_put):
        if self._length() in (None, 0) and not self.headers.get("Transfer-Encoding"):
            self._body_done = True
        status = front._take_fail()
        if status is not None:
            if front.delay_s:
                time.sleep(front.delay_s)
            self._answer(status, "InternalError" if status >= 500 else "InjectedFailure",
                         "failure injected by the test front", "injected")
            return
        cut = front._take_cut() if is_put else None
        if cut is not None:
            self._continue()
            left = cut
            while left > 0:
                b = self.rfile.read(min(left, CHUNK))
                if not b:
                    break
                left -= len(b)
            front._record(self.command, self.path, 0, f"cut after {cut - left} bytes", None)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        raw_path, _, raw_query = self.path.partition("?")
        try:
            auth = verify_sigv4(self.command, raw_path, raw_query, self.headers, front.keys,
                                front.region, front.service, front.max_skew_s,
                                front.require_signed_amz)
        except AuthError as e:
            self._answer(e.status, e.code, e.message, f"denied: {e.code}: {e.message}")
            return
        if self.headers.get("Transfer-Encoding"):
            self._answer(411 if self.command in ("PUT", "POST") else 400,
                         "MissingContentLength", "You must provide the Content-Length HTTP "
                         "header (chunked bodies are not accepted)", "no content-length",
                         close=True, auth=auth)
            return
        n = self._length()
        if n == -1:
            self._answer(400, "InvalidArgument", "bad Content-Length", "bad content-length",
                         close=True, auth=auth)
            return
        spool = tempfile.TemporaryFile(dir=front.spool_dir)
        try:
            digest = hashlib.sha256()
            if n:
                self._continue()
                left = n
                while left > 0:
                    b = self.rfile.read(min(left, CHUNK))
                    if not b:
                        raise OSError(f"client closed after {n - left} of {n} body bytes")
                    digest.update(b)
                    spool.write(b)
                    left -= len(b)
            self._body_done = True
            ph = auth["payload_hash"]
            if ph != UNSIGNED_PAYLOAD and digest.hexdigest() != ph.lower():
                self._answer(400, "XAmzContentSHA256Mismatch", "The provided "
                             "'x-amz-content-sha256' header does not match what was computed.",
                             "payload hash mismatch", auth=auth)
                return
            if front.delay_s:
                time.sleep(front.delay_s)
            spool.seek(0)
            self._forward(front, auth, spool, n or 0, raw_path, raw_query)
        finally:
            spool.close()

    def _forward(self, front, auth, spool, n, raw_path, raw_query):
        host = f"{front.backend_host}:{front.backend_port}"
        hdrs = []
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in ("authorization", "host", "x-amz-date",
                                          "content-length"):
                continue
            hdrs.append((lk, v))
        hdrs += [("host", host), ("x-amz-date", amz_now())]
        if n or self.command in ("PUT", "POST"):
            hdrs.append(("content-length", str(n)))
        present = {k for k, _ in hdrs}
        signed = sorted({s for s in auth["signed"] if s in present} | {"host", "x-amz-date"})
        hdrs.append(("authorization", authorization(
            self.command, raw_path, raw_query, hdrs, signed, auth["payload_hash"], S3RVER_KEY,
            S3RVER_SECRET, dict(hdrs)["x-amz-date"], front.region, front.service)))
        conn = http.client.HTTPConnection(front.backend_host, front.backend_port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in hdrs:
                conn.putheader(k, v)
            conn.endheaders()
            while True:
                b = spool.read(CHUNK)
                if not b:
                    break
                conn.send(b)
            resp = conn.getresponse()
            self.send_response_only(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            chunked = False
            for k, v in resp.getheaders():
                if k.lower() in HOP_BY_HOP:
                    continue
                self.send_header(k, v)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or \
                100 <= resp.status < 200
            if not no_body and length is None:
                chunked = True
                self.send_header("Transfer-Encoding", "chunked")
            if resp.will_close and not no_body and length is None and not chunked:
                self.send_header("Connection", "close")
                self.close_connection = True
            front._record(self.command, self.path, resp.status, "forwarded", auth)
            self.end_headers()
            if not no_body:
                while True:
                    b = resp.read(CHUNK)
                    if not b:
                        break
                    if chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                    else:
                        self.wfile.write(b)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            conn.close()


class VerifyingFront:
    """A SigV4-verifying HTTP front for s3rver on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, backend_port, keys, spool_dir, port=0, backend_host="127.0.0.1",
                 region="us-east-1", service="s3", max_skew_s=900, require_signed_amz=True):
        self.backend_host, self.backend_port = backend_host, backend_port
        self.keys = dict(keys)
        self.spool_dir = spool_dir
        self.region, self.service = region, service
        self.max_skew_s = max_skew_s
        self.require_signed_amz = require_signed_amz
        self.delay_s = 0.0
        self.port = port
        self._lock = threading.Lock()
        self._fail = collections.deque()
        self._cut = collections.deque()
        self._conns = set()
        self._ids = 0
        self.log = []
        self.counters = collections.Counter()
        self.puts_in_flight = 0
        self.max_concurrent_puts = 0
        self._srv = None
        self._thread = None
        self.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    # -- life
    def start(self):
        """Listens (again) on the same port."""
        if self._srv:
            return
        srv = _Server(("127.0.0.1", self.port), _Handler)
        srv.front = self
        self.port = srv.server_address[1]
        self._srv = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"s3front-{self.port}", daemon=True)
        self._thread.start()

    def stop(self):
        """Stops listening (connection refused) and drops the connections it has open."""
        srv, self._srv = self._srv, None
        if not srv:
            return
        srv.shutdown()
        srv.server_close()
        self._thread.join(timeout=10)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def listening(self):
        return self._srv is not None

    # -- fault injection
    def fail_next(self, n, status=500):
        """Answers the next n requests with `status`, without forwarding them."""
        with self._lock:
            self._fail.extend([status] * n)

    def cut_next_put(self, after_bytes):
        """Reads after_bytes of the next PUT's body, then closes its connection."""
        with self._lock:
            self._cut.append(after_bytes)

    def clear_faults(self):
        with self._lock:
            self._fail.clear()
            self._cut.clear()
        self.delay_s = 0.0

    def _take_fail(self):
        with self._lock:
            return self._fail.popleft() if self._fail else None

    def _take_cut(self):
        with self._lock:
            return self._cut.popleft() if self._cut else None

    # -- accounting
    def _track(self, conn, add):
        with self._lock:
            if add:
                self.counters["connections"] += 1
            (self._conns.add if add else self._conns.discard)(conn)

    def _next_id(self):
        with self._lock:
            self._ids += 1
            return self._ids

    def _enter(self, is_put):
        with self._lock:
            self.counters["requests"] += 1
            if is_put:
                self.puts_in_flight += 1
                self.max_concurrent_puts = max(self.max_concurrent_puts, self.puts_in_flight)

    def _leave(self, is_put):
        with self._lock:
            if is_put:
                self.puts_in_flight -= 1

    def _record(self, method, path, status, verdict, auth):
        e = LogEntry(method, path, status, verdict, tuple(auth["signed"]) if auth else ())
        with self._lock:
            self.log.append(e)
            self.counters[verdict.split(":")[0]] += 1
            self.counters[f"{method} {status}"] += 1

    def entries(self, method=None, verdict=None):
        """A copy of the log, optionally only one method and verdicts starting with `verdict`."""
        with self._lock:
            log = list(self.log)
        return [e for e in log if (method is None or e.method == method) and
                (verdict is None or e.verdict.startswith(verdict))]

    def reset_stats(self):
        with self._lock:
            self.log.clear()
            self.counters.clear()
            self.max_concurrent_puts = self.puts_in_flight


# ---- s3rver + front --------------------------------------------------------------------------

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class S3Server:
    """s3rver on 127.0.0.1 with `bucket`, behind a VerifyingFront that accepts access_key/
    secret_key. .endpoint: the front's URL; .backend: s3rver's."""

    def __init__(self, tmpdir, access_key="AKIATEST", secret_key="sbx-test-secret-key",
                 bucket="sbx-cache", port=0, region="us-east-1", start_timeout_s=30):
        self.tmpdir = tmpdir
        self.access_key, self.secret_key = access_key, secret_key
        self.bucket, self.region = bucket, region
        binary = s3rver_bin()
        self.data_dir = os.path.join(tmpdir, "s3rver-data")
        self.spool_dir = os.path.join(tmpdir, "s3front-spool")
        self.log_path = os.path.join(tmpdir, "s3rver.log")
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.spool_dir, exist_ok=True)
        self.proc = None
        self.front = None
        deadline = time.monotonic() + start_timeout_s
        for attempt in range(3):    # the free port may be taken between probe and bind
            self.backend_port = _free_port()
            self.log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [binary, "-d", self.data_dir, "-a", "127.0.0.1", "-p", str(self.backend_port),
                 "--no-vhost-buckets", "--configure-bucket", bucket],
                stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
            if self._wait_ready(deadline):
                break
            self._kill()
        else:
            raise RuntimeError(f"s3rver did not start; see {self.log_path}: "
                               + open(self.log_path, errors="replace").read()[-2000:])
        try:
            self.front = VerifyingFront(self.backend_port, {access_key: secret_key},
                                        self.spool_dir, port=port, region=region)
        except Exception:
            self._kill()
            raise

    def _wait_ready(self, deadline):
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.backend_port), timeout=1):
                    pass
                # The bucket is configured before listening; make sure it is there.
                st, _, _ = self._direct("HEAD", f"/{self.bucket}")
                if st == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def endpoint(self):
        return self.front.endpoint

    @property
    def backend(self):
        return f"http://127.0.0.1:{self.backend_port}"

    def url(self, key):
        return f"{self.endpoint}/{self.bucket}/{key}"

    # -- direct access to s3rver, signed by botocore
    def _direct(self, method, path, body=b"", headers=None, timeout=60):
        url = self.backend + path
        req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        S3SigV4Auth(Credentials(S3RVER_KEY, S3RVER_SECRET), "s3", self.region).add_auth(req)
        conn = http.client.HTTPConnection("127.0.0.1", self.backend_port, timeout=timeout)
        try:
            conn.request(method, path, body=body or None, headers=dict(req.headers.items()))
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def objects(self, prefix=""):
        """The keys in the bucket (all pages), sorted."""
        keys, token = [], None
        for _ in range(10000):
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            st, _, data = self._direct(
                "GET", f"/{self.bucket}?" + urllib.parse.urlencode(sorted(q.items()),
                                                                   quote_via=urllib.parse.quote))
            if st != 200:
                raise RuntimeError(f"list: {st} {data[:300]!r}")
            text = data.decode()
            keys += [xml_unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", text)]
            m = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", text)
            if "<IsTruncated>true</IsTruncated>" not in text or not m:
                break
            token = xml_unescape(m.group(1))
        return sorted(keys)

    def head_object(self, key):
        """The object's headers (lowercase names), or None if there is none."""
        st, h, data = self._direct("HEAD", self._path(key))
        if st == 404:
            return None
        if st != 200:
            raise RuntimeError(f"HEAD {key}: {st}")
        return h

    def get_object(self, key):
        """(bytes, metadata dict without the x-amz-meta- prefix); KeyError if there is none."""
        st, h, data = self._direct("GET", self._path(key), timeout=300)
        if st == 404:
            raise KeyError(key)
        if st != 200:
            raise RuntimeError(f"GET {key}: {st} {data[:300]!r}")
        return data, {k[len("x-amz-meta-"):]: v for k, v in h.items()
                      if k.startswith("x-amz-meta-")}

    def put_object(self, key, data, metadata=None):
        """Stores an object directly in s3rver (no front), e.g. a corrupt or unsigned layer."""
        hdrs = {f"x-amz-meta-{k}": str(v) for k, v in (metadata or {}).items()}
        st, h, body = self._direct("PUT", self._path(key), body=data, headers=hdrs, timeout=300)
        if st != 200:
            raise RuntimeError(f"PUT {key}: {st} {body[:300]!r}")
        return h.get("etag")

    def delete_object(self, key):
        st, _, body = self._direct("DELETE", self._path(key))
        if st not in (200, 204):
            raise RuntimeError(f"DELETE {key}: {st} {body[:300]!r}")

    def _path(self, key):
        return f"/{self.bucket}/" + urllib.parse.quote(key, safe="/~")

    # -- life
    def _kill(self):
        p, self.proc = self.proc, None
        if p and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if getattr(self, "log_file", None):
            self.log_file.close()
            self.log_file = None

    def stop(self):
        """Stops the front and s3rver (its process group killed and reaped)."""
        if self.front:
            self.front.stop()
        self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def xml_unescape(s):
    return (s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))


# ---- self-test -------------------------------------------------------------------------------

def _curl(args, timeout=60, out="-"):
    """Runs curl; returns (exit code, http status or 0, headers+body text, command line)."""
    cmd = ["curl", "-sS", "--max-time", "30", "-D", "-", "-o", out, "-w", "\n%{http_code}",
           *args]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    out = p.stdout.decode(errors="replace")
    body, _, code = out.rpartition("\n")
    return p.returncode, int(code) if code.isdigit() else 0, body + p.stderr.decode(
        errors="replace"), cmd


def selftest(verbose=True):
    results = []
    tmp = tempfile.mkdtemp(prefix="sbx-s3front-")
    sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3"]

    def check(name, ok, detail=""):
        results.append((name, bool(ok), detail))
        if verbose:
            print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f"  [{detail}]" if detail else ""),
                  flush=True)
        return ok

    srv = None
    try:
        t0 = time.monotonic()
        srv = S3Server(tmp)
        front = srv.front
        user = ["--user", f"{srv.access_key}:{srv.secret_key}"]
        print(f"s3rver {srv.backend}, front {srv.endpoint} (started in "
              f"{time.monotonic() - t0:.2f} s)")
        data = os.urandom(300_000)
        path = os.path.join(tmp, "obj")
        with open(path, "wb") as f:
            f.write(data)
        h = hashlib.sha256(data).hexdigest()
        key = "l2/" + "ab" * 32 + ".zst"
        meta = ["-H", f"x-amz-meta-sha256: {h}", "-H", f"x-amz-meta-size: {len(data)}",
                "-H", "x-amz-meta-signature: deadbeef"]

        # 1. PUT with our own x-amz-content-sha256, metadata headers, path-style URL.
        rc, st, out, cmd = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {h}", *meta,
                                  "-T", path, srv.url(key)])
        put_cmd = cmd
        e = front.entries("PUT")
        check("curl PUT, hex x-amz-content-sha256 + x-amz-meta-*", rc == 0 and st == 200,
              f"rc={rc} http={st} signed={';'.join(e[-1].signed_headers) if e else '?'}")
        etag = re.search(r"(?im)^etag: *(.*?)\r?$", out)
        check("PUT answer has an ETag (md5 of the body)", etag and etag.group(1).strip('"') ==
              hashlib.md5(data).hexdigest(), etag.group(1) if etag else "none")
        got, md = srv.get_object(key)
        check("object stored with metadata (direct GET)", got == data and md == {
            "sha256": h, "size": str(len(data)), "signature": "deadbeef"}, str(md))
        # 2. HEAD (curl -I): metadata in the answer.
        rc, st, out, cmd = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                  "-I", srv.url(key)])
        check("curl HEAD returns x-amz-meta-*", rc == 0 and st == 200 and
              f"x-amz-meta-sha256: {h}" in out.lower() and "content-length: 300000" in
              out.lower(), f"http={st}")
        # 3. GET back.
        outp = os.path.join(tmp, "got")
        rc, st, _, cmd = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url(key)], out=outp)
        ok = rc == 0 and st == 200 and open(outp, "rb").read() == data
        check("curl GET returns the body", ok, f"http={st}")
        # 3b. Without our x-amz-content-sha256 header: does curl 7.88 add one for s3?
        rc, st, out, cmd = _curl([*sigv4, *user, srv.url(key)])
        e = front.entries("GET")[-1]
        check("curl GET without x-amz-content-sha256 header is refused (curl adds none)",
              st == 403 and "x-amz-content-sha256" in e.verdict, e.verdict)
        # 4. Wrong secret, unknown key, no auth.
        rc, st, out, _ = _curl([*sigv4, "--user", f"{srv.access_key}:wrong-secret",
                                "-H", f"x-amz-content-sha256: {h}", *meta, "-T", path,
                                srv.url("l2/wrong.zst")])
        check("wrong secret -> 403 SignatureDoesNotMatch", st == 403 and
              "SignatureDoesNotMatch" in out, f"http={st}")
        rc, st, out, _ = _curl([*sigv4, "--user", "AKIAOTHER:x", "-H",
                                f"x-amz-content-sha256: {EMPTY_SHA256}", srv.url(key)])
        check("unknown access key -> 403 InvalidAccessKeyId", st == 403 and
              "InvalidAccessKeyId" in out, f"http={st}")
        rc, st, out, _ = _curl([srv.url(key)])
        check("no Authorization -> 403", st == 403 and "AccessDenied" in out, f"http={st}")
        check("refused objects not stored", "l2/wrong.zst" not in srv.objects())
        # 5. UNSIGNED-PAYLOAD.
        rc, st, out, cmd = _curl([*sigv4, *user, "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                                  *meta, "-T", path, srv.url("l2/unsigned.zst")])
        check("UNSIGNED-PAYLOAD PUT accepted", rc == 0 and st == 200, f"http={st}")
        # 6. A payload hash that is not the body's.
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                *meta, "-T", path, srv.url("l2/badhash.zst")])
        check("x-amz-content-sha256 not the body's -> 400 XAmzContentSHA256Mismatch",
              st == 400 and "XAmzContentSHA256Mismatch" in out, f"http={st}")
        # 7. Large object, streamed both ways (curl sends Expect: 100-continue).
        big = os.path.join(tmp, "big")
        with open(big, "wb") as f:
            for _ in range(48):
                f.write(os.urandom(CHUNK))
        bh = hashlib.sha256(open(big, "rb").read()).hexdigest()
        t1 = time.monotonic()
        rc, st, _, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {bh}", "-T", big,
                              srv.url("l2/big.zst")], timeout=120)
        t2 = time.monotonic()
        rc2, st2, _, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url("l2/big.zst")], timeout=120, out=outp)
        t3 = time.monotonic()
        ok = st == 200 and st2 == 200 and \
            hashlib.sha256(open(outp, "rb").read()).hexdigest() == bh
        check("48 MiB PUT + GET through the front", ok,
              f"put {t2 - t1:.2f} s, get {t3 - t2:.2f} s")
        # 7b. A missing key, and three requests on one connection (403 in the middle).
        c0 = front.counters["connections"]
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url("l2/missing.zst")])
        check("GET of a missing key -> 404 NoSuchKey (s3rver's answer)", st == 404 and
              "NoSuchKey" in out, f"http={st}")
        c0 = front.counters["connections"]
        p = subprocess.run(["curl", "-sS", "--max-time", "30", *sigv4, *user, "-H",
                            f"x-amz-content-sha256: {EMPTY_SHA256}", "-o", "/dev/null", "-o",
                            "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ", srv.url(key),
                            srv.url("l2/missing.zst"), srv.url(key)], capture_output=True,
                           timeout=60)
        check("keep-alive: 3 GETs (200, 404, 200) on one connection",
              p.stdout.split() == [b"200", b"404", b"200"] and
              front.counters["connections"] - c0 == 1,
              f"{p.stdout.decode().strip()}, {front.counters['connections'] - c0} connection(s)")
        # 8. Fault injection.
        front.fail_next(1, 500)
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url(key)])
        rc2, st2, _, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url(key)])
        check("fail_next(1, 500): one 500, then 200", st == 500 and st2 == 200,
              f"{st} then {st2}")
        front.fail_next(1, 503)
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {bh}", "-T", big,
                                srv.url("l2/big2.zst")], timeout=120)
        check("fail_next(1, 503) on a large PUT (Expect: 100-continue) -> 503, not stored",
              st == 503 and "l2/big2.zst" not in srv.objects(), f"rc={rc} http={st}")
        front.cut_next_put(65536)
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {bh}", "-T", big,
                                srv.url("l2/cut.zst")], timeout=120)
        check("cut_next_put(65536) -> curl error, nothing stored",
              rc != 0 and "l2/cut.zst" not in srv.objects(),
              f"curl rc={rc}: {out.strip().splitlines()[-1] if out.strip() else ''}")
        front.stop()
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url(key)])
        check("front.stop() -> connection refused (curl 7)", rc == 7, f"rc={rc}")
        front.start()
        rc, st, out, _ = _curl([*sigv4, *user, "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                                srv.url(key)])
        check("front.start() on the same port -> 200 again", st == 200, f"port {front.port}")
        # 9. Concurrency counter.
        front.delay_s = 0.5
        ps = [subprocess.Popen(["curl", "-sS", "--max-time", "30", "-o", "/dev/null", *sigv4,
                                *user, "-H", f"x-amz-content-sha256: {h}", "-T", path,
                                srv.url(f"l2/conc{i}.zst")]) for i in range(3)]
        rcs = [p.wait(timeout=60) for p in ps]
        front.delay_s = 0.0
        check("delay_s + 3 parallel PUTs -> max_concurrent_puts == 3",
              rcs == [0, 0, 0] and front.max_concurrent_puts == 3 and front.puts_in_flight == 0,
              f"max={front.max_concurrent_puts}")
        # 10. botocore-signed requests, and the verifier's canonicalisation against botocore's.
        creds = Credentials(srv.access_key, srv.secret_key)
        fails = []
        for method, k, body, hdrs in [
                ("PUT", "l2/boto.zst", b"hello", {"x-amz-meta-sha256": "00" * 32,
                                                  "x-amz-meta-size": "5"}),
                ("HEAD", "l2/boto.zst", b"", {}), ("GET", "l2/boto.zst", b"", {}),
                ("GET", "", b"", {}), ("DELETE", "l2/boto.zst", b"", {})]:
            p = f"/{srv.bucket}/{k}" if k else f"/{srv.bucket}?list-type=2&prefix=l2%2F"
            req = AWSRequest(method=method, url=srv.endpoint + p, data=body, headers=hdrs)
            S3SigV4Auth(creds, "s3", srv.region).add_auth(req)
            # Same request, signed by this module: the same Authorization value.
            rh = [(n.lower(), v) for n, v in req.headers.items()] + [
                ("host", f"127.0.0.1:{front.port}")]
            signed = sorted({n for n, _ in rh if n not in ("authorization", "user-agent",
                                                           "expect")})
            mine = authorization(method, p.partition("?")[0], p.partition("?")[2], rh, signed,
                                 req.headers["X-Amz-Content-SHA256"], srv.access_key,
                                 srv.secret_key, req.headers["X-Amz-Date"])
            if mine != req.headers["Authorization"]:
                fails.append(f"{method} {p}: signer differs")
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
            conn.request(method, p, body=body or None, headers=dict(req.headers.items()))
            r = conn.getresponse()
            r.read()
            conn.close()
            if r.status not in (200, 204):
                fails.append(f"{method} {p}: {r.status} {front.entries()[-1].verdict}")
        check("botocore-signed PUT/HEAD/GET/list/DELETE verify; same Authorization as ours",
              not fails, "; ".join(fails))
        # Tampering after signing.
        req = AWSRequest(method="GET", url=srv.url(key))
        S3SigV4Auth(creds, "s3", srv.region).add_auth(req)
        hd = dict(req.headers.items())
        tampered = []
        for what, path2, extra in [("path", f"/{srv.bucket}/l2/other.zst", {}),
                                   ("unsigned x-amz-meta", None, {"x-amz-meta-extra": "1"})]:
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
            conn.request("GET", path2 or f"/{srv.bucket}/{key}", headers={**hd, **extra})
            r = conn.getresponse()
            r.read()
            conn.close()
            tampered.append((what, r.status, front.entries()[-1].verdict))
        check("tampered path / unsigned x-amz-meta-* header -> 403",
              [(s, v.split(":")[1].strip()) for _, s, v in tampered] ==
              [(403, "SignatureDoesNotMatch"), (403, "AccessDenied")], "; ".join(f"{w}: {v}" for w, _, v in
                                                             tampered))
        # Skew: signed 20 minutes ago.
        old = amz_now(-1200)
        rh = [("host", f"127.0.0.1:{front.port}"), ("x-amz-content-sha256", EMPTY_SHA256),
              ("x-amz-date", old)]
        a = authorization("GET", f"/{srv.bucket}/{key}", "", rh, [n for n, _ in rh],
                          EMPTY_SHA256, srv.access_key, srv.secret_key, old)
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
        conn.request("GET", f"/{srv.bucket}/{key}", headers={**dict(rh), "authorization": a})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        check("x-amz-date 20 min off -> 403 RequestTimeTooSkewed",
              r.status == 403 and b"RequestTimeTooSkewed" in body, f"http={r.status}")
        # Helpers.
        srv.put_object("l2/planted.zst", b"corrupt", {"sha256": "11" * 32, "size": "7"})
        got, md = srv.get_object("l2/planted.zst")
        srv.delete_object("l2/unsigned.zst")
        objs = srv.objects()
        check("helpers: put_object/get_object/delete_object/objects",
              got == b"corrupt" and md["size"] == "7" and "l2/unsigned.zst" not in objs and
              key in objs and srv.objects("l2/planted") == ["l2/planted.zst"], str(objs))
        if verbose:
            print("front counters:", dict(front.counters))
            print("PUT command that worked:", " ".join(
                a if re.match(r"^[\w@%+=:,./-]+$", a) else repr(a) for a in put_cmd))
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        check("selftest ran to the end", False, repr(e))
    finally:
        if srv:
            srv.stop()
            check("s3rver reaped", srv.proc is None)
        shutil.rmtree(tmp, ignore_errors=True)
    bad = [r for r in results if not r[1]]
    print(f"s3front selftest: {len(results) - len(bad)}/{len(results)} passed")
    return not bad


def main(argv):
    cmd = argv[1] if len(argv) > 1 else "selftest"
    if cmd == "selftest":
        return 0 if selftest() else 1
    if cmd == "serve":
        tmp = tempfile.mkdtemp(prefix="sbx-s3front-")
        srv = S3Server(tmp)
        print(f"endpoint {srv.endpoint} bucket {srv.bucket} key {srv.access_key} secret "
              f"{srv.secret_key} (s3rver {srv.backend}, data {srv.data_dir}); Ctrl-C stops",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            srv.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    print(f"usage: {argv[0]} [selftest|serve]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
