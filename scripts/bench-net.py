#!/usr/bin/env python3
"""Network benchmark: our path (`sbx run --network`: the worker's network process and the VM's
sbx-netbroker) beside its floor, a bare QEMU with `-netdev user` (no sbxd, no worker, no jail, no
policy), measured in the same run. It prints a table; it is a measurement, not a test.

- TCP connect latency p50/p95 from inside the guest to a server this script runs on the host
  (127.0.0.1; our path reaches it as bench.test through the daemon's dns_hosts_file, the floor
  as 10.0.2.2, user-net's alias for the host's loopback): create_connection + a 1-byte
  request and its 1-byte answer + close, after a warm-up; the name is resolved once before;
- 10 MiB download and upload throughput (upload: until the server's 1-byte ack);
- RSS of our network side per VM (the worker's network process + the VM's sbx-netbroker),
  sampled every 10 ms while the transfers run (the max; also before them, and Pss and private
  pages, since most of RSS is shared libraries);
- `sbx run --json` start (timing.boot_ms, timing.total_ms) of print(1) with a NIC beside
  without, booted cold (a daemon with snapshots off) and restored (snapshots on).
The same guest code runs on both paths; only the address differs. Under TCG the guest kernel
may give up on the TSC and time with jiffies (4 ms steps); the guest reports its clocksource, and
a measurement without the TSC throughout is made once more (and flagged).

usage: scripts/bench-net.py [--connects N] [--warmup N] [--pace-ms MS] [--mib N] [--runs N]
                            [--skip net,floor,cold,restore] [--sbx P] [--sbxd P]
Env: EXEC_SANDBOX_CACHE_DIR (images), QEMU (default qemu-system-x86_64).
"""
import argparse
import importlib.util
import json
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "scripts")
sys.path.insert(0, HERE)
from bench import children  # noqa: E402  scripts/bench.py

_spec = importlib.util.spec_from_file_location("floor_restore",
                                               os.path.join(HERE, "floor-restore.py"))
fr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fr)

HOSTNAME = "bench.test"
CHUNK = 1 << 16

# The guest's measuring code (python3 in the guest); HOST, PORT, N, WARM, SIZE, PACE are
# prepended. Connects start at most one per PACE seconds: the network process refuses new guest
# connections beyond a burst of 64 and then 256 a second (a SYN-flood bound), which back-to-back
# connects (~500/s here) would run into.
GUEST = r'''
import json, socket, time
def req(addr, cmd):
    s = socket.create_connection(addr, timeout=30)
    s.sendall(cmd)
    return s
def recv_n(s, n):
    got = 0
    while got < n:
        d = s.recv(min(1 << 16, n - got))
        if not d:
            raise EOFError("short read: %d of %d" % (got, n))
        got += len(d)
CS = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
def clocksource():
    return open(CS).read().strip()
# Under TCG the kernel refines the TSC about a second after boot (tsc-early, then tsc); should it
# mark the TSC unstable instead, time falls back to jiffies (4 ms steps): reported, not hidden.
for _ in range(100):
    if clocksource() != "tsc-early":
        break
    time.sleep(0.05)
clock_start = clocksource()
t = time.perf_counter()
addr = socket.getaddrinfo(HOST, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4]
resolve_ms = (time.perf_counter() - t) * 1000
lat = []
for i in range(WARM + N):
    t = time.perf_counter()
    s = req(addr, b"c")
    recv_n(s, 1)
    s.close()
    if i >= WARM:
        lat.append((time.perf_counter() - t) * 1000)
    time.sleep(max(0, t + PACE - time.perf_counter()))  # not timed
t = time.perf_counter()
s = req(addr, b"d")
recv_n(s, SIZE)
down = time.perf_counter() - t
s.close()
buf = b"u" * (1 << 16)
t = time.perf_counter()
s = req(addr, b"u")
left = SIZE
while left > 0:
    left -= s.send(buf[:min(len(buf), left)])
recv_n(s, 1)
up = time.perf_counter() - t
s.close()
print(json.dumps({"resolve_ms": resolve_ms, "lat": lat, "down_s": down, "up_s": up,
                  "clock": clocksource(), "clock_start": clock_start}))
'''


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(size):
    active = {b"d": 0, b"u": 0}  # transfers running, by direction
    lock = threading.Lock()

    class H(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(60)
            cmd = s.recv(1)
            if cmd == b"c":
                s.sendall(b"k")
            elif cmd in (b"d", b"u"):
                with lock:
                    active[cmd] += 1
                try:
                    if cmd == b"d":
                        buf, left = b"d" * CHUNK, size
                        while left > 0:
                            left -= s.send(buf[:min(CHUNK, left)])
                    else:
                        left = size
                        while left > 0:
                            d = s.recv(min(CHUNK, left))
                            if not d:
                                return
                            left -= len(d)
                        s.sendall(b"k")
                finally:
                    with lock:
                        active[cmd] -= 1

    srv = Server(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, active


def guest_code(host, port, a):
    return (f"HOST={host!r}\nPORT={port}\nN={a.connects}\nWARM={a.warmup}\n"
            f"SIZE={a.mib << 20}\nPACE={a.pace_ms / 1000}\n" + GUEST)


def descendants(pid):
    out, todo = [], [(pid, None)]
    while todo:
        p, _ = todo.pop()
        for c, comm in children(p):
            out.append((c, comm, p))
            todo.append((c, comm))
    return out


def kb(path, key, pid):
    try:
        for line in open(f"/proc/{pid}/{path}"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid):
    return kb("status", "VmRSS", pid)


def pss_uss_kb(pid):
    """(Pss, Private_Clean + Private_Dirty) of a process, KiB."""
    out = {}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            k, _, v = line.partition(":")
            if k in ("Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out.get("Pss", 0), out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)


def comm_of(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None


def net_side(daemon_pid):
    """(network process pids, broker pids) below a daemon. The network process is a child of a
    worker whose cmdline is also sbx-vmworker's; so is QEMU between its fork and its exec, but
    the worker starts the network process first: the lowest such pid per worker. The brokers:
    sbx-netbroker processes (the VM's broker and any children of it)."""
    ds = descendants(daemon_pid)
    comm = {p: c for p, c, _ in ds}
    netp, brokers = {}, []
    for p, c, parent in ds:
        if c == "sbx-netbroker":
            brokers.append(p)
        elif c == "sbx-vmworker" and comm.get(parent) == "sbx-vmworker":
            try:
                argv0 = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0]
            except OSError:
                continue
            if os.path.basename(argv0) == b"sbx-vmworker":
                netp[parent] = min(p, netp.get(parent, p))
    return sorted(netp.values()), brokers


class Sampler:
    """Samples the network side's RSS every 10 ms; each sample is tagged with the transfers the
    server has running ("d", "u", or "" between them). The pids are looked up once (a scan of
    /proc is slow) and again should one go away."""

    def __init__(self, daemon_pid, active):
        self.pid, self.active, self.stop = daemon_pid, active, threading.Event()
        # (net RSS, broker RSS KiB, net procs, brokers, net+broker Pss KiB, direction,
        #  net+broker private KiB)
        self.samples = []
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        netp, brokers = [], []
        while not self.stop.wait(0.01):
            if not netp or not brokers or not all(os.path.exists(f"/proc/{p}")
                                                  for p in netp + brokers):
                netp, brokers = net_side(self.pid)
                if not netp:
                    continue
            if not all(comm_of(p) == "sbx-vmworker" for p in netp) or \
                    not all(comm_of(p) == "sbx-netbroker" for p in brokers):
                netp = []  # one exec'd or went away: look again
                continue
            phase = "".join(k.decode() for k, v in self.active.items() if v > 0)
            pu = [pss_uss_kb(p) for p in netp + brokers] if phase else [(0, 0)]
            self.samples.append((sum(rss_kb(p) for p in netp),
                                 sum(rss_kb(p) for p in brokers), len(netp), len(brokers),
                                 sum(x[0] for x in pu), phase, sum(x[1] for x in pu)))

    def finish(self):
        self.stop.set()
        self.t.join(5)
        return self.samples


def start_daemon(a, tmp, name, snapshots, hosts):
    d = os.path.join(tmp, name)
    os.makedirs(d, mode=0o700)
    sock = os.path.join(d, "s.sock")
    snaps = os.path.join(d, "snapshots")
    os.makedirs(snaps, mode=0o700)
    env = dict(os.environ, EXEC_SANDBOX_SOCKET=sock, EXEC_SANDBOX_SNAPSHOTS=snapshots,
               EXEC_SANDBOX_SNAPSHOT_CACHE_DIR=snaps, EXEC_SANDBOX_DNS_HOSTS_FILE=hosts,
               EXEC_SANDBOX_EGRESS_ALLOW_PRIVATE="1")
    log = os.path.join(d, "log")
    p = subprocess.Popen([a.sbxd, "--socket", sock, "--warm-pool-size", "0",
                          "--idle-exit-seconds", "0"], stdin=subprocess.DEVNULL,
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit("sbxd did not start: " + open(log).read()[-2000:])
        time.sleep(0.05)
    return p, env, snaps


def sbx_run(a, env, code, nic, timeout=120):
    argv = [a.sbx, "run", "--json", "-q", "-t", str(timeout), "-l", "python"]
    if nic:
        argv.append("--network")
    r = subprocess.run(argv + [code], env=env, capture_output=True, text=True,
                       timeout=timeout + 60)
    try:
        j = json.loads(r.stdout)
    except ValueError:
        sys.exit(f"sbx run: no JSON ({r.returncode}): {r.stdout[-800:]} {r.stderr[-800:]}")
    if r.returncode != 0 or j.get("exit_code", 0) != 0:
        brief = {k: v for k, v in j.items() if k != "code"}
        sys.exit(f"sbx run failed ({r.returncode}): {json.dumps(brief)[-2500:]} "
                 f"{r.stderr[-800:]}")
    return j


def ours_net(a, env, daemon_pid, port, active):
    samp = Sampler(daemon_pid, active)
    try:
        j = sbx_run(a, env, guest_code(HOSTNAME, port, a), True)
    finally:
        samples = samp.finish()
    return json.loads(j["stdout"]), samples


def exec_code(mid, code, timeout_ms):
    body = (fr.field(1, 2, b"python") + fr.field(2, 2, code.encode()) +
            fr.field(3, 0, timeout_ms) + fr.field(5, 0, 1 << 20) + fr.field(6, 0, 100 << 10))
    return fr.host_msg(mid, 3, body)


def hello_nic(mid):
    """Hello with NetConfig (field 4): fixed32 addresses in network byte order."""
    def fixed32(num, ip):
        return fr.varint(num << 3 | 5) + socket.inet_aton(ip)
    net = (fixed32(1, "10.0.2.15") + fr.field(2, 0, 24) + fixed32(3, "10.0.2.2") +
           fixed32(4, "10.0.2.3"))
    body = (fr.field(1, 0, fr.PROTOCOL_VERSION) + fr.field(2, 2, os.urandom(32)) +
            fr.field(3, 0, time.time_ns()) + fr.field(4, 2, net))
    return fr.host_msg(mid, 2, body)


def floor_net(a, port):
    """A bare QEMU booted cold with `-netdev user`, the same code exec'd through the agent."""
    cache = os.environ.get("EXEC_SANDBOX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exec-sandbox")
    images = os.path.join(cache, "images")
    qemu = os.environ.get("QEMU", "qemu-system-x86_64")
    run = tempfile.mkdtemp(prefix="sbx-floor-net-")
    # mapped_ram=True: anonymous guest RAM, no memory-backend-file, as vmworker's cold VMs get
    argv = fr.qemu_argv(qemu, images, "python", 256, None, run, False, mapped_ram=True)
    argv += ["-netdev", "user,id=net0",
             "-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"{run}/qemu.log", "w"))
    try:
        deadline = time.monotonic() + 120
        con = fr.connect(f"{run}/console.sock", deadline, p)
        ag = fr.connect(f"{run}/agent.sock", deadline, p)
        ag.sendall(hello_nic(1))
        kind, m = fr.wait_reply(ag, 1, deadline)
        if kind != "ready":
            raise RuntimeError("floor Hello: %r" % m)
        code = guest_code("10.0.2.2", port, a)
        ag.sendall(exec_code(2, code, 120000))
        out = fr.wait_done(ag, 2, time.monotonic() + 150)
        con.close()
        ag.close()
        try:
            return json.loads(out)
        except ValueError:
            raise RuntimeError("floor guest printed %r; QEMU log: %s" %
                               (out[-800:], open(f"{run}/qemu.log").read()[-800:]))
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(run, ignore_errors=True)


def settled(label, measure):
    """measure(), once more should the guest's clock have fallen back from the TSC to jiffies."""
    for attempt in (1, 2):
        r = measure()
        g = r[0]
        print(f"# {label}: guest clocksource {g['clock_start']} at the start, {g['clock']} at "
              "the end", flush=True)
        if g["clock_start"] == g["clock"] == "tsc":
            return r
        print(f"# {label}: WARNING: not the TSC throughout (jiffies: 4 ms steps)" +
              ("; measuring again" if attempt == 1 else "; kept"), flush=True)
    return r


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def starts(a, env, label, expect):
    """Alternating runs of print(1) with and without a NIC: {nic: (boot_ms, total_ms) lists}."""
    out = {True: ([], []), False: ([], [])}
    for _ in range(a.runs):
        for nic in (True, False):
            j = sbx_run(a, env, "print(1)", nic, 60)
            if j.get("start_mode") != expect:
                sys.exit(f"{label}: a run with nic={nic} started {j.get('start_mode')}")
            out[nic][0].append(j["timing"]["boot_ms"])
            out[nic][1].append(j["timing"]["total_ms"])
    return out


def wait_restore(a, env, nic, timeout=300):
    deadline = time.monotonic() + timeout
    while sbx_run(a, env, "print(1)", nic, 60).get("start_mode") != "restore":
        if time.monotonic() > deadline:
            sys.exit(f"no restore (nic={nic}) after {timeout} s")
        time.sleep(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--mib", type=int, default=10)
    ap.add_argument("--pace-ms", type=float, default=5, help="connects start this far apart")
    ap.add_argument("--runs", type=int, default=10, help="start-time runs per cell")
    ap.add_argument("--skip", default="", help="comma-separated: net,floor,cold,restore")
    ap.add_argument("--sbx", default=os.path.join(ROOT, "build/sbx"))
    ap.add_argument("--sbxd", default=os.path.join(ROOT, "build/sbxd"))
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    tmp = tempfile.mkdtemp(prefix="sbx-bench-net-")
    os.chmod(tmp, 0o700)
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write(f"127.0.0.1 {HOSTNAME}\n")
    srv, active = make_server(a.mib << 20)
    port = srv.server_address[1]
    daemons = []
    rows = []
    mib = a.mib

    def row(metric, ours, floor, ratio, target):
        rows.append((metric, ours, floor, ratio, target))

    try:
        qv = subprocess.run([os.environ.get("QEMU", "qemu-system-x86_64"), "--version"],
                            capture_output=True, text=True).stdout.split("\n")[0]
        print(f"# {qv}; {os.cpu_count()} cores; {a.connects} connects after {a.warmup}, "
              f"{a.pace_ms:g} ms apart; "
              f"{mib} MiB transfers; {a.runs} start runs per cell", flush=True)
        cold, cenv, _ = start_daemon(a, tmp, "cold", "0", hosts)
        daemons.append(cold)
        if "net" not in skip:
            sbx_run(a, cenv, "print(1)", True, 60)  # settles the accelerator and page cache
            o, samples = settled("ours", lambda: ours_net(a, cenv, cold.pid, port, active))
            print(f"# ours: resolve {o['resolve_ms']:.1f} ms", flush=True)
            f = None
            if "floor" not in skip:
                try:
                    f = settled("floor", lambda: (floor_net(a, port), None))[0]
                    print(f"# floor: resolve (an IP, no lookup) {f['resolve_ms']:.1f} ms",
                          flush=True)
                except Exception as e:  # noqa: BLE001  reported, the rest still runs
                    print(f"# floor failed: {e}", flush=True)
            for q, name in ((0.5, "p50"), (0.95, "p95")):
                ov = pct(o["lat"], q)
                fv = pct(f["lat"], q) if f else None
                row(f"connect {name}, ms", f"{ov:.2f}", f"{fv:.2f}" if f else "-",
                    f"{ov / fv:.2f}x" if f else "-",
                    f"<= {fv + 1:.2f} ({'ok' if ov <= fv + 1 else 'MISSED'})" if f
                    else "<= floor + 1")
            for key, name, tgt in (("down_s", "download", 0.7), ("up_s", "upload", None)):
                ov = mib * 1.048576 / o[key]
                fv = mib * 1.048576 / f[key] if f else None
                t = "-"
                if tgt:
                    t = (f">= {tgt * fv:.1f} ({'ok' if ov >= tgt * fv else 'MISSED'})" if f
                         else f">= {tgt}x floor")
                row(f"{name} {mib} MiB, MB/s", f"{ov:.1f}", f"{fv:.1f}" if f else "-",
                    f"{ov / fv:.2f}x" if f else "-", t)
            first = next((i for i, x in enumerate(samples) if x[5]), len(samples))
            idle = samples[:first]
            if idle:
                print(f"# network side before the transfers (VM start, connects): RSS max "
                      f"{max(x[0] + x[1] for x in idle) / 1024:.2f} MiB (network process "
                      f"{max(x[0] for x in idle) / 1024:.2f})", flush=True)
            samples = [x for x in samples if x[5]]
            if samples:
                tot = max(s[0] + s[1] for s in samples) / 1024
                print(f"# network side: {max(s[2] for s in samples)} network process(es), "
                      f"{max(s[3] for s in samples)} broker(s) seen per sample", flush=True)
                for ph, name in (("d", "download"), ("u", "upload")):
                    xs = [x for x in samples if x[5] == ph]
                    if xs:
                        print(f"# network side during the {name}: {len(xs)} samples, RSS max "
                              f"{max(x[0] + x[1] for x in xs) / 1024:.2f} MiB (network process "
                              f"{max(x[0] for x in xs) / 1024:.2f}), Pss max "
                              f"{max(x[4] for x in xs) / 1024:.2f} MiB", flush=True)
                row("net process RSS max, MiB", f"{max(s[0] for s in samples) / 1024:.2f}",
                    "-", "-", "(part of the 5)")
                row("netbroker RSS max, MiB", f"{max(s[1] for s in samples) / 1024:.2f}",
                    "-", "-", "(part of the 5)")
                row("network side RSS/VM, MiB", f"{tot:.2f}", "-", "-",
                    f"<= 5 ({'ok' if tot <= 5 else 'MISSED'})")
                row("network side Pss/VM, MiB", f"{max(s[4] for s in samples) / 1024:.2f}",
                    "-", "-", "(shared pages split)")
                row("network side private/VM, MiB", f"{max(s[6] for s in samples) / 1024:.2f}",
                    "-", "-", "(pages of its own)")
            else:
                row("network side RSS/VM, MiB", "no samples", "-", "-", "<= 5")

        def start_rows(label, res):
            for i, what in ((0, "boot_ms"), (1, "total_ms")):
                w, wo = statistics.median(res[True][i]), statistics.median(res[False][i])
                r = w / wo if wo else float("inf")
                row(f"{label} {what} median (NIC | none)", f"{w:.0f}", f"{wo:.0f}", f"{r:.2f}x",
                    f"<= 1.10x ({'ok' if r <= 1.1 else 'MISSED'})")

        if "cold" not in skip:
            start_rows("cold", starts(a, cenv, "cold", "cold"))
        cold.terminate()
        cold.wait()
        daemons.remove(cold)
        if "restore" not in skip:
            warm, wenv, _ = start_daemon(a, tmp, "restore", "1", hosts)
            daemons.append(warm)
            wait_restore(a, wenv, False)
            wait_restore(a, wenv, True)
            start_rows("restore", starts(a, wenv, "restore", "restore"))
    finally:
        for p in daemons:
            p.terminate()
            p.wait()
        srv.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print("# start rows: 'ours' is with a NIC, 'floor' the same start without one")
    w = [max(len(r[i]) for r in rows + [("metric", "ours", "floor", "ratio", "target")])
         for i in range(5)]
    for r in [("metric", "ours", "floor", "ratio", "target")] + rows:
        print(" | ".join(str(x).ljust(w[i]) for i, x in enumerate(r)).rstrip())


if __name__ == "__main__":
    main()
