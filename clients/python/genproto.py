"""Writes exec_sandbox/_proto/{files,control}_pb2.py from ../../proto with protoc.

protoc writes `import files_pb2`, an absolute import that only works with the output directory on
sys.path; inside the package it must be relative, so that one line is rewritten.
Run it as `python3 genproto.py` (the Makefile's `python` target does) or through setup.py.
"""
import os
import re
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
OUT = os.path.join(HERE, "exec_sandbox", "_proto")
PROTOS = ["files.proto", "control.proto"]


def generate() -> None:
    sources = [os.path.join(PROTO_DIR, p) for p in PROTOS]
    if not all(os.path.exists(s) for s in sources):
        if os.path.exists(os.path.join(OUT, "control_pb2.py")):
            return  # an sdist or a copy without proto/: use what was generated
        raise SystemExit(f"genproto: {PROTO_DIR} not found and no generated modules in {OUT}")
    protoc = shutil.which("protoc")
    if not protoc:
        raise SystemExit("genproto: protoc not found (Debian: apt-get install protobuf-compiler)")
    os.makedirs(OUT, exist_ok=True)
    subprocess.run([protoc, f"--proto_path={PROTO_DIR}", f"--python_out={OUT}", *PROTOS],
                   check=True)
    path = os.path.join(OUT, "control_pb2.py")
    with open(path) as f:
        text = f.read()
    text, n = re.subn(r"^import files_pb2 as", "from . import files_pb2 as", text, flags=re.M)
    if n != 1:
        raise SystemExit("genproto: unexpected protoc output (no `import files_pb2` line)")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "__init__.py"), "w") as f:
        f.write('"""Generated from proto/ by genproto.py; not committed."""\n')


if __name__ == "__main__":
    generate()
    print(f"genproto: wrote {OUT}")
