"""Files: upload and download in sessions and around one-shot runs."""
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
from suite_sessions import _session, _sx


def _sha(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()


@test(any_arch=True)
def session_files_round_trip(c):
    sid = _session(c)
    d = os.path.join(c.tmp, "files")
    os.makedirs(d, exist_ok=True)
    try:
        for name, data in [("empty.bin", b""), ("one.bin", b"x"),
                           ("big.bin", os.urandom(50 * 1024 * 1024))]:
            local = os.path.join(d, name)
            open(local, "wb").write(data)
            c.sbx("session", "upload", sid, local, "in/" + name, check_rc=0)
            back = os.path.join(d, "back-" + name)
            c.sbx("session", "download", sid, "in/" + name, back, check_rc=0)
            eq(_sha(open(back, "rb").read()), _sha(data), f"{name} round trip")
        j, _ = _sx(c, sid, "import os, hashlib\n"
                             "p='in/big.bin'; st=os.stat(p)\n"
                             "print(st.st_uid, st.st_size, hashlib.sha256(open(p,'rb').read()).hexdigest())\n"
                             "open('made.txt','w').write('from code')", rc=0)
        uid, size, sha = j["stdout"].split()
        eq((uid, int(size)), ("1000", 50 * 1024 * 1024), "uploaded file owned by the sandbox user")
        c.sbx("session", "download", sid, "made.txt", os.path.join(d, "made.txt"), check_rc=0)
        eq(open(os.path.join(d, "made.txt")).read(), "from code", "file made by code")
        ls = json.loads(c.sbx("session", "files", "--json", sid, check_rc=0).out)
        entries = ls if isinstance(ls, list) else ls.get("entries", [])
        names = {e["name"]: e for e in entries}
        ok(names.get("in", {}).get("is_dir") and names.get("made.txt", {}).get("size") == 9,
           f"listing: {entries}")
        big = os.path.join(d, "too-big.bin")
        with open(big, "wb") as f:
            f.truncate(51 * 1024 * 1024)
        r = c.sbx("session", "upload", sid, big, "too-big.bin")
        ok(r.returncode != 0 and "50" in r.err, "51 MB refused: " + r.err)
        _sx(c, sid, "import os; os.symlink('/etc/passwd', 'link'); os.symlink('/', 'rootlink')", rc=0)
        for bad in ["../../etc/passwd", "/etc/passwd", "link", "rootlink/etc/passwd"]:
            r = c.sbx("session", "download", sid, bad, os.path.join(d, "escaped"))
            ok(r.returncode != 0 and not os.path.exists(os.path.join(d, "escaped")),
               f"{bad} must be refused: {r.returncode} {r.err}")
        r = c.sbx("session", "upload", sid, os.path.join(d, "one.bin"), "rootlink/tmp/evil")
        ok(r.returncode != 0, "upload through a symlink refused: " + r.err)
    finally:
        c.sbx("session", "close", sid)


@test()
def run_with_upload_and_download(c):
    d = os.path.join(c.tmp, "updown")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "local.csv"), "w").write("name,score\nalice,95\n")
    r = c.sbx("run", "-q", "--upload", os.path.join(d, "local.csv") + ":input.csv",
              "--download", "output.csv:" + os.path.join(d, "result.csv"),
              "-c", "open('output.csv','w').write(open('input.csv').read().upper())", check_rc=0)
    eq(open(os.path.join(d, "result.csv")).read(), "NAME,SCORE\nALICE,95\n", "downloaded result")
    r = subprocess.run([c.sbx_bin, "run", "-q", "--download", "out.txt", "-c",
                        "open('out.txt','w').write('data')"], capture_output=True, env=c.env(),
                       cwd=d, timeout=120)
    eq(r.returncode, 0, r.stderr.decode())
    eq(open(os.path.join(d, "out.txt")).read(), "data", "download without a local path")
