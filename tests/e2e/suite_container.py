"""The container sidecar (issue 15, part 5), for real with Debian's podman: the image is built
from the repository's Containerfile on a Debian 12 base imported from a debootstrap (no registry
here), with the guest assets prefetched at build time from a bundle served on loopback; the host's
`sbx` runs code through the socket on the shared directory; the Pod manifest runs under
`podman kube play` and its application container gets a result through the shared emptyDir; the
Kubernetes manifests are valid objects of the API's schemas.

podman on these hosts needs runc and explicit ulimits (contrib/container/containers.conf, given by
CONTAINERS_CONF) and --privileged (README.md, "Container sidecar and Kubernetes")."""
import json
import os
import shutil
import subprocess
import time

from harness import *  # noqa: F401,F403
from suite_prefetch import VERSION, FaultServer, _bundle

CONF = os.path.join(ROOT, "contrib", "container", "containers.conf")
MANIFESTS = os.path.join(ROOT, "contrib", "kubernetes")
IMAGE = "localhost/exec-sandbox:e2e"
BASE = "localhost/sbx-base:bookworm"
NAME = "sbx-e2e-container"
BUILD_TIMEOUT = 1800   # a fresh machine downloads the build and QEMU packages
_CACHE = {}


def _podman(*args, timeout=120, check=True):
    if not shutil.which("podman"):
        raise AssertionError("podman is not installed (scripts/setup-host.sh installs it)")
    env = dict(os.environ, CONTAINERS_CONF=CONF)
    r = subprocess.run(["podman", *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)[:200]}: exit {r.returncode}\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def _image(c):
    """The image, built once per run: base from scripts/container-base.sh, assets from the
    shared bundle (suite_prefetch) served over HTTP on loopback."""
    if "image" in _CACHE:
        return _CACHE["image"]
    r = subprocess.run([os.path.join(ROOT, "scripts", "container-base.sh"), BASE],
                       capture_output=True, text=True, timeout=900)
    eq(r.returncode, 0, f"container-base.sh: {r.stderr[-2000:]}")
    b = _bundle(c)
    t0 = time.time()
    with FaultServer(b["dir"]) as srv:
        # --network host: the build's prefetch reaches the loopback server (and apt the archive).
        _podman("build", "--network", "host", "-f", os.path.join(ROOT, "Containerfile"),
                "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", f"ASSETS_FROM={srv.base}", "--build-arg", f"ASSET_VERSION={VERSION}",
                "-t", IMAGE, ROOT, timeout=BUILD_TIMEOUT)
        fetched = [p for (m, p, st, n) in srv.requests() if st == 200 and p.endswith(b["name"])]
    ok(fetched, f"the build fetched no bundle from the server: {srv.log}")
    print(f"    (image built in {time.time() - t0:.0f} s)")
    _CACHE["image"] = IMAGE
    return IMAGE


def _validate(paths):
    r = subprocess.run([os.path.join(ROOT, "scripts", "setup-npm-tool.sh"), "k8s-validate"],
                       capture_output=True, text=True, timeout=900)
    eq(r.returncode, 0, f"setup-npm-tool.sh k8s-validate: {r.stderr[-1500:]}")
    v = subprocess.run(["node", os.path.join(ROOT, "tests", "e2e", "k8svalidate.mjs"),
                        r.stdout.strip(), *paths], capture_output=True, text=True, timeout=120)
    return v.returncode, [json.loads(ln) for ln in v.stdout.splitlines() if ln.strip()], v.stderr


def _load(name):
    import yaml  # python3-yaml: only here, where the manifests' content is checked
    with open(os.path.join(MANIFESTS, name)) as f:
        return yaml.safe_load(f)


@test(fast=True)
def container_manifests_are_kubernetes_objects(c):
    files = [os.path.join(MANIFESTS, n) for n in ("daemonset.yaml", "sidecar-pod.yaml")]
    rc, objs, err = _validate(files)
    eq(rc, 0, f"validator: {objs} {err[-1500:]}")
    eq(sorted((o["kind"], o["ok"]) for o in objs), [("DaemonSet", True), ("Pod", True)],
       "one valid DaemonSet and one valid Pod")
    # The validator can fail: a container port that is not a number, a Pod without containers.
    bad = os.path.join(c.tmp, "bad.yaml")
    with open(bad, "w") as f:
        f.write(open(files[0]).read().replace("containerPort: 9464", 'containerPort: "metrics"'))
        f.write("\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n")
    rc, objs, _ = _validate([bad])
    eq(rc, 1, "invalid manifests refused")
    eq([o["ok"] for o in objs], [False, False], f"both invalid objects named: {objs}")
    ok("containerPort" in objs[0]["error"] and "containers" in objs[1]["error"],
       f"the errors say what is wrong: {objs}")
    # What the deployment relies on, which a schema does not check.
    ds = _load("daemonset.yaml")["spec"]["template"]["spec"]
    ctr = ds["containers"][0]
    eq(ctr["securityContext"], {"privileged": True}, "the daemon is privileged")
    env = {e["name"]: e["value"] for e in ctr["env"]}
    eq(env["EXEC_SANDBOX_SOCKET"], "/run/exec-sandbox/sbxd.sock", "socket path")
    eq(ds["volumes"][0]["hostPath"], {"path": "/run/exec-sandbox", "type": "DirectoryOrCreate"},
       "socket on the node")
    pod = _load("sidecar-pod.yaml")["spec"]
    mounts = {ct["name"]: ct["volumeMounts"][0] for ct in pod["containers"]}
    eq(sorted(mounts), ["app", "sandbox"], "two containers")
    eq(mounts["app"], mounts["sandbox"], "both mount the socket volume at the same place")
    eq(pod["volumes"], [{"name": mounts["app"]["name"], "emptyDir": {}}], "an emptyDir")
    priv = {ct["name"]: ct.get("securityContext", {}).get("privileged", False)
            for ct in pod["containers"]}
    eq(priv, {"app": False, "sandbox": True}, "only the sandbox is privileged")


@test()
def container_image_serves_host(c):
    image = _image(c)
    sockdir = os.path.join(c.tmp, "container-sock")
    os.makedirs(sockdir)
    sock = os.path.join(sockdir, "sbxd.sock")
    _podman("rm", "-f", NAME, check=False)
    _podman("run", "-d", "--name", NAME, "--privileged", "-v", f"{sockdir}:/run/exec-sandbox",
            image)
    try:
        wait_for(lambda: os.path.exists(sock), 60, "the container's socket")
        env = c.env(EXEC_SANDBOX_SOCKET=sock)
        r = c.sbx("run", "print(1)", env=env, check_rc=0)
        eq(r.out, "1\n", "stdout of print(1) through the shared socket")
        res, r = c.run_json("-l", "javascript", "console.log(6 * 7)", env=env)
        eq((res["stdout"], res["exit_code"]), ("42\n", 0), f"javascript: {r.err[-800:]}")
        ok(res["accelerator"] in ("kvm", "tcg"), f"accelerator reported: {res}")
        st = json.loads(c.sbx("status", "--json", env=env, check_rc=0).out)
        # The daemon is the container's (PID 1 there), with the assets the build prefetched,
        # and its VMs have cgroups (limits from the host) inside the container's.
        eq((st["pid"], st["images_dir"]), (1, "/opt/exec-sandbox/images"), "the container's sbxd")
        ok(st["cgroup_mode"] in ("v1", "v2"), f"cgroups: {st['cgroup_mode']}")
        # Stopped, it ends cleanly (SIGTERM to PID 1 is handled) and removes its socket.
        t0 = time.time()
        _podman("stop", "-t", "30", NAME, timeout=60)
        ok(time.time() - t0 < 20, f"stopped in {time.time() - t0:.1f} s, not killed after 30")
        code = _podman("inspect", NAME, "--format", "{{.State.ExitCode}}").stdout.strip()
        eq(code, "0", "sbxd's exit status in the container: " +
           _podman("logs", NAME, check=False).stderr[-1500:])
        ok(not os.path.exists(sock), "socket removed at exit")
    finally:
        _podman("rm", "-f", NAME, check=False)


@test()
def container_unprivileged_refused_at_start(c):
    """Without --privileged no VM could start: sbxd says so at start and exits, rather than
    serving a socket on which every run fails."""
    image = _image(c)
    sockdir = os.path.join(c.tmp, "unpriv-sock")
    os.makedirs(sockdir)
    r = _podman("run", "--rm", "-v", f"{sockdir}:/run/exec-sandbox", image, timeout=120,
                check=False)
    eq(r.returncode, 1, f"sbxd's exit status: {r.stderr[-1500:]}")
    ok("no VM can start here" in r.stderr and "--privileged" in r.stderr,
       "the reason and the fix: " + r.stderr[-1500:])
    eq(os.listdir(sockdir), [], "no socket left behind")


@test()
def container_sidecar_pod_kube_play(c):
    image = _image(c)
    src = open(os.path.join(MANIFESTS, "sidecar-pod.yaml")).read()
    image_line = "image: registry.example.com/exec-sandbox:0.1.0"
    ok(src.count(image_line) == 2, "both containers name the image")
    pod_yaml = os.path.join(c.tmp, "sidecar-pod.yaml")
    with open(pod_yaml, "w") as f:
        f.write(src.replace(image_line, f"image: {image}"))
    _podman("kube", "down", pod_yaml, check=False)
    _podman("kube", "play", pod_yaml, timeout=300)
    try:
        def app_done():
            r = _podman("logs", "exec-sandbox-sidecar-app", check=False)
            return "app: run done" in r.stdout + r.stderr and r
        deadline = time.time() + 300
        r = None
        while time.time() < deadline and not r:
            r = app_done()
            st = _podman("inspect", "exec-sandbox-sidecar-sandbox", "--format",
                         "{{.State.Status}}", check=False).stdout.strip()
            ok(st == "running", "the sandbox container is " + st + ": " +
               _podman("logs", "exec-sandbox-sidecar-sandbox", check=False).stderr[-1500:])
            time.sleep(1)
        ok(r, "the app container got no result: " +
           _podman("logs", "exec-sandbox-sidecar-app", check=False).stderr[-1500:] +
           _podman("logs", "exec-sandbox-sidecar-sandbox", check=False).stderr[-1500:])
        ok("sidecar says 42\n" in r.stdout, f"the sandboxed print's output: {r.stdout[-500:]}")
    finally:
        _podman("kube", "down", pod_yaml, check=False, timeout=120)
    eq(_podman("pod", "exists", "exec-sandbox-sidecar", check=False).returncode, 1,
       "the pod is gone after kube down")
