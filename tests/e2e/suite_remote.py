"""The remote package-layer cache (issue 14): layers built by one daemon are uploaded to an
S3-compatible store in the background, and a daemon that lacks one fetches it from there instead
of installing; nothing the store does can fail a run. A real s3rver 3.7 on loopback behind a front
that verifies every request's SigV4 (tests/e2e/s3front.py: a wrong secret really is refused) and
injects faults; packages from the local index of suite_packages.py."""
import json
import os
import subprocess

from harness import *  # noqa: F401,F403
from s3front import S3Server
from suite_packages import (ATTRS, ATTRS_CODE, ATTRS_OUT, SIX, SIX_CODE, SIX_OUT, PkgDaemon,
                            index)

KEY_ID, SECRET = "AKIATEST", "sbx-test-secret-key"
WRONG_SECRET = "sbx-wrong-secret-zz"
PREFIX = "exec-sandbox/"


class Fleet:
    """A store (s3rver behind the verifying front) and the daemons of one test, all sharing it;
    everything stops when the test ends."""

    def __init__(self, c, name):
        self.c = c
        self.daemons = []
        try:
            self.srv = S3Server(os.path.join(c.tmp, "s3-" + name), access_key=KEY_ID,
                                secret_key=SECRET)
        except FileNotFoundError as e:
            raise AssertionError(f"s3rver is not installed: {e} (scripts/setup-host.sh "
                                 "installs it)")

    def daemon(self, name, secret=SECRET, **extra):
        """A daemon of its own (its own, empty cache) using the store."""
        env = dict(EXEC_SANDBOX_S3_BUCKET=self.srv.bucket,
                   EXEC_SANDBOX_S3_ENDPOINT_URL=self.srv.endpoint, AWS_ACCESS_KEY_ID=KEY_ID,
                   AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN="",
                   AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_PROFILE="")
        env.update(extra)
        d = PkgDaemon(self.c, name, index(self.c), **env)
        self.daemons.append(d)
        return d

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            for d in self.daemons:
                d.close()
        finally:
            self.srv.stop()


def object_key(d, name):
    return f"{PREFIX}l2/{d.meta(name)['key']}.zst"


def uploaded(d, srv, name):
    wait_for(lambda: f"layer {d.meta(name)['key'][:16]} uploaded" in d.log_text(), 60,
             f"the upload of {name}")
    return object_key(d, name)


def remote_status(d):
    return json.loads(d.sbx("status", "--json", check_rc=0).out)["package_layers"]["remote"]


def no_secret_anywhere(d, *texts):
    for where, text in [("log", d.log_text()), ("status", d.sbx("status", "--json").out),
                        ("status text", d.sbx("status").out)] + list(texts):
        for s in (SECRET, WRONG_SECRET):
            ok(s not in text, f"a secret in the {where}")


@test()
def remote_upload_then_fetch(c):
    with Fleet(c, "basic") as f:
        srv, a = f.srv, f.daemon("remote-a")
        j = a.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        name = j["package_layer"]
        ok(j["package_layer_built"], "built on the first host")
        key = uploaded(a, srv, name)
        eq(srv.objects(), [key], "one object, under the prefix")
        data, meta = srv.get_object(key)
        m = a.meta(name)
        eq((meta.get("sha256"), meta.get("size")), (m["sha256"], m["size"]),
           "the object's metadata: the layer's sha256 and size")
        ok(data[:4] == b"\x28\xb5\x2f\xfd", "zstd-compressed")
        st = remote_status(a)
        ok(st["enabled"] and st["reachable"] and st["uploads_done"] == 1, f"status: {st}")
        # A second host with an empty cache: the layer comes from the store, no install VM.
        idx = index(c)
        seen = idx.count()
        b = f.daemon("remote-b")
        j2 = b.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        eq((j2["package_layer"], j2["package_layer_built"]), (name, False), "fetched, not built")
        eq(b.installing(), [], "no install VM on the second host")
        ok(b.has_line(name, "ready from the remote cache"), "logged as a remote hit")
        eq(idx.count(), seen, "the index was not asked")
        eq(b.meta(name)["sha256"], m["sha256"], "the same image")
        st = remote_status(b)
        eq((st["hits"], st["misses"], st["errors"]), (1, 0, 0), f"status: {st}")
        no_secret_anywhere(a)
        no_secret_anywhere(b)


@test()
def remote_wrong_secret_builds_locally(c):
    with Fleet(c, "secret") as f:
        srv, d = f.srv, f.daemon("remote-secret", secret=WRONG_SECRET)
        r = d.sbx("run", "--json", "-p", SIX, SIX_CODE)
        j = json.loads(r.stdout)
        eq((j.get("stdout"), j.get("package_layer_built")), (SIX_OUT, True),
           "the run succeeds, built here: " + r.err[-800:])
        log = d.log_text()
        ok("remote cache: download of layer" in log and "HTTP 403" in log,
           "the refused download logged with its reason")
        wait_for(lambda: "remote cache: upload of layer" in d.log_text(), 60, "the upload tried")
        eq(srv.objects(), [], "nothing stored with a wrong secret")
        ok(any("SignatureDoesNotMatch" in e.verdict for e in srv.front.entries()),
           "the front refused them")
        st = remote_status(d)
        ok(not st["reachable"] and "403" in st["last_error"] and st["errors"] == 1 and
           st["uploads_failed"] == 1, f"status: {st}")
        no_secret_anywhere(d, ("CLI output", r.out + r.err))


@test()
def remote_failed_uploads_leave_nothing(c):
    with Fleet(c, "faults") as f:
        srv, a = f.srv, f.daemon("remote-faults")
        # A store that answers 500 (to the download, then to the upload), then one that goes
        # away in the middle of an upload's body.
        srv.front.fail_next(2, status=500)
        j = a.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        wait_for(lambda: "upload of layer" in a.log_text() and "HTTP 500" in a.log_text(), 60,
                 "the 500 logged")
        srv.front.cut_next_put(1)
        a.run_ok("-p", ATTRS, ATTRS_CODE, out=ATTRS_OUT)
        wait_for(lambda: remote_status(a)["uploads_failed"] == 2, 60, "the cut upload failed")
        eq(srv.objects(), [], "no partial object")
        eq(remote_status(a)["errors"], 1, "the download that got a 500, counted")
        # A host that finds nothing there builds; its runs succeed.
        b = f.daemon("remote-faults-b")
        j2 = b.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        ok(j2["package_layer_built"] and j2["package_layer"] == j["package_layer"],
           "built locally after a miss")
        st = remote_status(b)
        eq((st["hits"], st["misses"]), (0, 1), f"a miss: {st}")


@test()
def remote_corrupt_or_unsigned_objects_refused(c):
    keyf = os.path.join(c.tmp, "signing.key")
    with open(keyf, "wb") as fh:
        fh.write(os.urandom(32))
    os.chmod(keyf, 0o600)
    signing = dict(EXEC_SANDBOX_CACHE_SIGNING_KEY_FILE=keyf)
    with Fleet(c, "trust") as f:
        srv = f.srv
        # A signing host builds and uploads a signed entry; another signing host uses it.
        a = f.daemon("remote-sign-a", **signing)
        j = a.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
        key = uploaded(a, srv, j["package_layer"])
        data, meta = srv.get_object(key)
        ok(len(meta.get("signature", "")) == 64, f"signed: {meta}")
        b = f.daemon("remote-sign-b", **signing)
        eq(b.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)["package_layer_built"], False, "signed hit")
        cases = [
            ("unsigned", data, {"sha256": meta["sha256"], "size": meta["size"]}, "not signed"),
            ("wrongly signed", data, dict(meta, signature="0" * 64), "signature is wrong"),
            ("corrupt", data[:-40] + os.urandom(40), meta, ""),
        ]
        for i, (what, body, md, why) in enumerate(cases):
            srv.put_object(key, body, md)
            d = f.daemon(f"remote-sign-{i}", **signing)
            jj = d.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)
            eq(jj["package_layer_built"], True, f"{what}: refused, so built here")
            log = d.log_text()
            ok("remote cache: download of layer" in log and why in log,
               f"{what}: the reason logged: {log[-1500:]}")
            eq(remote_status(d)["errors"], 1, f"{what}: counted")
        # Without a key, a host takes an unsigned entry (signing is the operator's choice)...
        srv.put_object(key, data, {"sha256": meta["sha256"], "size": meta["size"]})
        u = f.daemon("remote-nokey")
        eq(u.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)["package_layer_built"], False,
           "unsigned hit without a key")
        # ...but never a corrupt one.
        srv.put_object(key, data, dict(meta, sha256="1" * 64))
        v = f.daemon("remote-nokey-2")
        eq(v.run_ok("-p", SIX, SIX_CODE, out=SIX_OUT)["package_layer_built"], True,
           "a hash mismatch is built here")
        ok("sha256 is not the one its metadata says" in v.log_text(), "the mismatch logged")


@test()
def remote_upload_bound_holds(c):
    ps = []
    with Fleet(c, "bound") as f:
        srv, d = f.srv, f.daemon("remote-bound", EXEC_SANDBOX_MAX_CONCURRENT_S3_UPLOADS="1")
        srv.front.delay_s = 4  # every answer waits: uploads would overlap if they could
        try:
            # Three sets at once: three builds finishing close together, three uploads queued.
            for specs, code in (([SIX], SIX_CODE), ([ATTRS], ATTRS_CODE),
                                ([SIX, ATTRS], ATTRS_CODE)):
                argv = [c.sbx_bin, "run", "-q"] + sum((["-p", x] for x in specs), []) + [code]
                ps.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           env=d.env, cwd=c.tmp))
            for p in ps:
                out, err = p.communicate(timeout=360)
                ok(p.returncode == 0 and out.decode() in (SIX_OUT, ATTRS_OUT),
                   f"run: {p.returncode} {out[-300:]!r} {err[-800:]!r}")
            wait_for(lambda: remote_status(d)["uploads_done"] == 3, 120, "three uploads")
            eq(srv.front.max_concurrent_puts, 1,
               "never more than max_concurrent_s3_uploads at once")
            eq(len(srv.objects()), 3, "three objects")
            ok("queued" in d.sbx("status").out, "status shows the upload queue")
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.wait()
