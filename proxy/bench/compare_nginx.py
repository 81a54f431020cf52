#!/usr/bin/env python3
"""Helper of proxy/bench/compare-nginx.sh (standard library only).

  free-ports N              a port P with P .. P+N-1 free on 127.0.0.1
  signs CLIENT_TOML         signatures made by every node of the cluster so far (Health.signs,
                            asked over the nodes' mutual TLS with the cluster's client
                            certificate; no login needed)
  measure --out FILE ...    one h2load run: the servers' CPU (utime + stime of every PID in
  -- h2load ARGS              --pids, from /proc/PID/stat) before and after, the most threads
                            of --threads-pid seen during the run, the nodes' signatures before
                            and after (--client-toml), h2load's summary and the per-request
                            latencies of its --log-file; appends one JSON line to FILE
  report FILE               the markdown tables (ratios sealgate / nginx per round, then min,
                            median and max over the rounds)
  perf-summary DATA SERVE_PID NODE_PIDS
                            a `perf record -g` profile summed by process, by library or crate
                            (from the symbol's path) and by system call, with the top symbols

The load generator's CPU is never counted: only the PIDs given are.
"""

import json
import os
import re
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
import tomllib

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# ports


def free_ports(n):
    import random

    # Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and up by
    # default): the benchmark's own outgoing connections take ephemeral ports by the thousand.
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        pass
    for _ in range(500):
        p = random.randrange(10000, max(10001, low - n))
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    sys.exit("no free consecutive ports")


# ---------------------------------------------------------------------------------------------
# the nodes' signature counters: the wire protocol (hsm/proto) by hand. A frame is a 4-byte
# big-endian length and a postcard-encoded envelope; postcard writes integers as LEB128
# varints, enum variants as their index (varint), strings and sequences as a varint length and
# the items, Option as a 0/1 byte, bool as a byte.


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def varint(self):
        shift = 0
        n = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def string(self):
        n = self.varint()
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def read_frame(sock):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the node closed the connection")
            buf += chunk
        return buf

    (length,) = struct.unpack(">I", exact(4))
    return exact(length)


def send_frame(sock, payload):
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def node_signs(address, ctx):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            # RequestFrame { id, min_index, Request::Hello(Hello { min, max, client }) }
            send_frame(s, varint(1) + varint(0) + varint(0) + varint(1) + varint(1)
                       + varint(len(b"bench")) + b"bench")
            r = Reader(read_frame(s))
            r.varint(), r.varint()
            if r.varint() != 0:
                raise RuntimeError(f"{address}: hello refused")
            # RequestFrame { id, min_index, Request::Health }
            send_frame(s, varint(2) + varint(0) + varint(1))
            r = Reader(read_frame(s))
            r.varint(), r.varint()  # id, index
            if r.varint() != 0 or r.varint() != 1:  # Ok(Reply::Health(..))
                raise RuntimeError(f"{address}: no health answer")
            r.varint()  # node_id
            r.varint()  # applied_index
            r.varint(), r.varint(), r.varint()  # sessions, connections, queued
            r.byte()  # writable
            if r.byte():  # leader: Option<u32>
                r.varint()
            r.string()  # role
            r.varint()  # term
            for _ in range(r.varint()):  # members
                r.varint(), r.string(), r.byte()
            r.varint()  # membership_index
            return r.varint()  # signs


def signs(client_toml):
    with open(client_toml, "rb") as f:
        conf = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(client_toml))
    ctx = ssl.create_default_context(cafile=os.path.join(base, conf["ca"]))
    ctx.load_cert_chain(os.path.join(base, conf["cert"]), os.path.join(base, conf["key"]))
    return sum(node_signs(n["address"], ctx) for n in conf["nodes"])


# ---------------------------------------------------------------------------------------------
# CPU and threads


def cpu_ticks(pid):
    """(utime, stime) of the whole process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# one run


def parse_h2load(text):
    out = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        out["seconds"] = secs
        out["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
        out.update({k: int(v) for k, v in zip(keys, m.groups())})
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status_2xx"] = int(m.group(1))
        out["status_other"] = sum(int(x) for x in m.groups()[1:])

    def dur(v):
        v = v.strip()
        for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1000.0)):
            if v.endswith(unit):
                return float(v[: -len(unit)]) * f
        return float(v)

    for name, key in (("time for request", "req"), ("time for connect", "connect"),
                      ("time to 1st byte", "ttfb")):
        m = re.search(name + r":\s+(\S+)\s+(\S+)\s+(\S+)", text)
        if m:
            out[key + "_min_ms"], out[key + "_max_ms"], out[key + "_mean_ms"] = (
                dur(m.group(1)), dur(m.group(2)), dur(m.group(3)))
    for name, key in (("TLS Protocol", "tls"), ("Cipher", "cipher"),
                      ("Server Temp Key", "kx"), ("Application protocol", "alpn")):
        m = re.search(name + r": (.+)", text)
        if m:
            out[key] = m.group(1).strip()
    return out


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def measure(argv):
    opts = {"pids": "", "threads-pid": None, "client-toml": None, "out": None,
            "server": "", "scenario": "", "round": "0", "log-file": None, "timeout": "600"}
    i = 0
    while i < len(argv) and argv[i] != "--":
        key = argv[i].lstrip("-")
        if key not in opts:
            sys.exit(f"measure: unknown option {argv[i]}")
        opts[key] = argv[i + 1]
        i += 2
    cmd = argv[i + 1 :]
    pids = [int(p) for p in opts["pids"].split(",") if p]
    tpid = int(opts["threads-pid"]) if opts["threads-pid"] else None

    signs_before = signs(opts["client-toml"]) if opts["client-toml"] else None
    before = {p: cpu_ticks(p) for p in pids}
    wall0 = time.monotonic()
    # h2load's output goes to a file (a pipe could fill up and stall it); the command is
    # expected to bound itself (`timeout`), the deadline here is a second guard.
    out_path = opts["out"] + ".h2load-output"
    with open(out_path, "w") as out_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    max_threads = threads(tpid) if tpid else None
    deadline = wall0 + float(opts["timeout"]) + 30
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)  # the whole group: `timeout` and h2load
            proc.wait()
            break
        if tpid:
            max_threads = max(max_threads, threads(tpid))
        time.sleep(0.1)
    wall = time.monotonic() - wall0
    with open(out_path) as f:
        output = f.read()
    os.unlink(out_path)
    after = {p: cpu_ticks(p) for p in pids}
    threads_after = threads(tpid) if tpid else None
    signs_after = signs(opts["client-toml"]) if opts["client-toml"] else None

    result = parse_h2load(output)
    cpu = {p: ((after[p][0] - before[p][0]) / CLK_TCK, (after[p][1] - before[p][1]) / CLK_TCK)
           for p in pids}
    result.update({
        "server": opts["server"], "scenario": opts["scenario"], "round": int(opts["round"]),
        "h2load_rc": proc.returncode, "wall_s": wall,
        "cpu_s": {str(p): u + s for p, (u, s) in cpu.items()},
        "cpu_user_s": sum(u for u, _ in cpu.values()),
        "cpu_sys_s": sum(s for _, s in cpu.values()),
        "max_threads": max_threads, "threads_after": threads_after,
        "command": " ".join(cmd),
    })
    if signs_before is not None:
        result["signs"] = signs_after - signs_before
    ok = result.get("status_2xx", 0)
    total_cpu = sum(result["cpu_s"].values())
    result["cpu_total_s"] = total_cpu
    result["cpu_us_per_req"] = total_cpu / ok * 1e6 if ok else None
    # The first PID is the main process (serve; nginx's master), the others its helpers (the HSM
    # nodes; nginx's workers).
    first = result["cpu_s"][str(pids[0])] if pids else 0
    result["cpu_first_us_per_req"] = first / ok * 1e6 if ok else None
    result["cpu_rest_us_per_req"] = (total_cpu - first) / ok * 1e6 if ok else None
    result["server_cores"] = total_cpu / result["seconds"] if result.get("seconds") else None
    if opts["log-file"] and os.path.exists(opts["log-file"]):
        lat = []
        with open(opts["log-file"]) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1].startswith("2"):
                    lat.append(int(parts[2]) / 1000.0)  # µs -> ms
        lat.sort()
        result["p50_ms"] = percentile(lat, 0.50)
        result["p99_ms"] = percentile(lat, 0.99)
        os.unlink(opts["log-file"])
    if "rps" not in result or proc.returncode != 0:
        result["h2load_output"] = output[-3000:]
    with open(opts["out"], "a") as f:
        f.write(json.dumps(result) + "\n")
    # One line for the console.
    s = result
    extra = f", signs {s['signs']}" if "signs" in s else ""
    print(f"  {s['scenario']:<14} round {s['round']} {s['server']:<22} "
          f"{s.get('rps', 0):>9.0f} req/s  {s['cpu_us_per_req'] or 0:>7.1f} µs CPU/req  "
          f"{s['server_cores'] or 0:.2f} cores  2xx {s.get('status_2xx', 0)}  "
          f"failed {s.get('failed', '?')}{extra}"
          + (f"  threads ≤{s['max_threads']}" if s["max_threads"] else ""), flush=True)
    if "h2load_output" in result:
        print(result["h2load_output"], file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# report


def mmm(values, fmt):
    v = sorted(x for x in values if x is not None)
    if not v:
        return "—"
    return f"{fmt(v[0])} / **{fmt(statistics.median(v))}** / {fmt(v[-1])}"


SCENARIOS = [
    ("ecdsa-hs", "full TLS 1.3 handshakes, ECDSA P-256 (`--h1 -H 'Connection: close' -c 64`)",
     "≤ 0.6×"),
    ("rsa-hs", "full TLS 1.3 handshakes, RSA-2048 (same)", "—"),
    ("h1-keepalive", "HTTP/1.1 keep-alive (`--h1 -c 16 -m 1`)", "≤ 0.9×"),
    ("h2-keepalive", "HTTP/2 (`-c 4 -m 16`)", "≤ 0.9×"),
]


def report(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault((r["scenario"], r["server"]), {})[r["round"]] = r

    def f1(x):
        return f"{x:.1f}"

    def f0(x):
        return f"{x:,.0f}".replace(",", " ")

    def f2(x):
        return f"{x:.2f}"

    def ratios(a, b, key):
        out = []
        for rnd, ra in a.items():
            rb = b.get(rnd)
            if rb and ra.get(key) and rb.get(key):
                out.append(ra[key] / rb[key])
        return out

    print("### Server CPU per request and throughput (min / **median** / max over the rounds)\n")
    print("| scenario | sealgate CPU/req | nginx CPU/req | **CPU ratio** sealgate/nginx | goal "
          "| sealgate req/s | nginx req/s | throughput ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for sc, desc, goal in SCENARIOS:
        a, b = by.get((sc, "sealgate"), {}), by.get((sc, "nginx"), {})
        if not a or not b:
            continue
        print(f"| {desc} | {mmm([r['cpu_us_per_req'] for r in a.values()], f1)} µs "
              f"| {mmm([r['cpu_us_per_req'] for r in b.values()], f1)} µs "
              f"| {mmm(ratios(a, b, 'cpu_us_per_req'), f2)} | {goal} "
              f"| {mmm([r.get('rps') for r in a.values()], f0)} "
              f"| {mmm([r.get('rps') for r in b.values()], f0)} "
              f"| {mmm(ratios(a, b, 'rps'), f2)} |")

    print("\n### Latency (medians over the rounds of each run's p50 and p99 per request, from "
          "h2load's log; handshakes: h2load's mean time to first byte per connection: connect, "
          "TLS handshake and request)\n")
    print("| scenario | sealgate p50 / p99 | nginx p50 / p99 | p50 ratio | sealgate mean "
          "to 1st byte | nginx mean to 1st byte | server cores s / n |")
    print("|---|---|---|---|---|---|---|")
    for sc, desc, _ in SCENARIOS:
        a, b = by.get((sc, "sealgate"), {}), by.get((sc, "nginx"), {})
        if not a or not b:
            continue

        def pp(d):
            return (f"{statistics.median([r['p50_ms'] for r in d.values()]):.2f} / "
                    f"{statistics.median([r['p99_ms'] for r in d.values()]):.2f} ms")

        def ttfb(d):
            if not sc.endswith("-hs"):
                return "—"
            return f"{statistics.median([r['ttfb_mean_ms'] for r in d.values()]):.2f} ms"

        def cores(d):
            return f"{statistics.median([r['server_cores'] for r in d.values()]):.2f}"

        print(f"| {sc} | {pp(a)} | {pp(b)} | {mmm(ratios(a, b, 'p50_ms'), f2)} "
              f"| {ttfb(a)} | {ttfb(b)} | {cores(a)} / {cores(b)} |")

    print("\n### sealgate's CPU per request: the serve process and the HSM nodes "
          "(min / **median** / max)\n")
    print("| scenario | serve | 3 nodes | all | nginx (2 workers) | serve alone / nginx |")
    print("|---|---|---|---|---|---|")
    for sc, desc, _ in SCENARIOS:
        a, b = by.get((sc, "sealgate"), {}), by.get((sc, "nginx"), {})
        if not a or not b:
            continue
        serve_ratio = [ra["cpu_first_us_per_req"] / b[k]["cpu_us_per_req"]
                       for k, ra in a.items() if k in b and b[k].get("cpu_us_per_req")]
        print(f"| {sc} | {mmm([r['cpu_first_us_per_req'] for r in a.values()], f1)} µs "
              f"| {mmm([r['cpu_rest_us_per_req'] for r in a.values()], f1)} µs "
              f"| {mmm([r['cpu_us_per_req'] for r in a.values()], f1)} µs "
              f"| {mmm([r['cpu_us_per_req'] for r in b.values()], f1)} µs "
              f"| {mmm(serve_ratio, f2)} |")

    print("\n### Every run\n")
    print("| scenario | round | server | requests | req/s | 2xx | failed | server CPU/req "
          "(user + system) | cores | p50 / p99 | HSM signatures | serve threads (max) | TLS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = r.get("status_2xx") or 0
        split = (f" ({r['cpu_user_s'] / ok * 1e6:.0f} + {r['cpu_sys_s'] / ok * 1e6:.0f})"
                 if ok and "cpu_user_s" in r else "")
        print(f"| {r['scenario']} | {r['round']} | {r['server']} | {r.get('total', '?')} "
              f"| {f0(r.get('rps', 0))} "
              f"| {ok} | {r.get('failed', '?')} "
              f"| {f1(r['cpu_us_per_req'] or 0)} µs{split} | {f2(r['server_cores'] or 0)} "
              f"| {r.get('p50_ms') or 0:.2f} / {r.get('p99_ms') or 0:.2f} ms "
              f"| {r.get('signs', '—')} | {r.get('max_threads') or '—'} "
              f"| {r.get('tls', '?')} {r.get('cipher', '')} {r.get('alpn', '')} |")

    drv = {k[1]: v for k, v in by.items() if k[0] == "driver"}
    if drv:
        print("\n### The variant: ECDSA full handshakes, sealgate only "
              "(min / **median** / max)\n")
        print("| serve | handshakes/s | server CPU per handshake (serve + nodes) "
              "| serve alone | HSM signatures per handshake | serve threads: max during "
              "the run | after |")
        print("|---|---|---|---|---|---|---|")
        for name in sorted(drv):
            d = drv[name]
            serve_alone = [r["cpu_first_us_per_req"] for r in d.values()]
            print(f"| {name} | {mmm([r.get('rps') for r in d.values()], f0)} "
                  f"| {mmm([r['cpu_us_per_req'] for r in d.values()], f1)} µs "
                  f"| {mmm(serve_alone, f1)} µs "
                  f"| {mmm([r['signs'] / r['status_2xx'] for r in d.values() if r.get('status_2xx')], lambda x: f'{x:.3f}')} "
                  f"| {mmm([r['max_threads'] for r in d.values()], f0)} "
                  f"| {mmm([r['threads_after'] for r in d.values()], f0)} |")
        names = sorted(drv)
        if len(names) == 2:
            a, b = drv[names[0]], drv[names[1]]
            print(f"\nRatios {names[0]} / {names[1]} per round: handshakes/s "
                  f"{mmm(ratios(a, b, 'rps'), f2)}, CPU per handshake "
                  f"{mmm(ratios(a, b, 'cpu_us_per_req'), f2)}")


# ---------------------------------------------------------------------------------------------
# perf profile summary


def bucket(dso, sym):
    """The library or crate a sample belongs to."""
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libc.so") or dso.startswith("ld-linux"):
        if any(k in sym for k in ("malloc", "free", "realloc", "calloc", "unlink_chunk",
                                  "consolidate", "tcache")):
            return "libc: malloc/free"
        return "libc: other (memcpy, syscall wrappers, locks)"
    if dso.startswith("[vdso]"):
        return "vdso (clock_gettime)"
    if "::" not in sym:
        # A Rust symbol always has a path; the others in the binary are aws-lc's C and asm.
        return "aws-lc (C/asm: X25519, SHA-2, AES-GCM, ECDSA, RSA, …)"
    name = sym.lstrip("<&*")
    if name.startswith("dyn "):
        name = name[4:]
    crate = name.split("::", 1)[0].split("<", 1)[0]
    if crate in ("core", "alloc", "std"):
        return "Rust std/core/alloc"
    if crate in ("hyper", "hyper_util", "http", "httparse", "h2", "http_body_util"):
        return "hyper/h2/http"
    if crate in ("aws_lc_rs", "aws_lc_sys"):
        return "aws-lc-rs (Rust side)"
    return crate


def perf_summary(data, serve_pid, node_pids):
    def report(*args):
        return subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none",
                               "--percentage", "relative", *args],
                              capture_output=True, text=True).stdout

    line = re.compile(r"^\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?(\S+)\s+\[(.)\]\s+(.*?)\s*$")
    # Samples by thread name (serve: sealgate-serve, its runtime workers and its blocking
    # threads alike; nodes: sealgate-node, the I/O runtime, and sealgate-crypto, the pool).
    by_comm = {}
    for l in report("--no-children", "--sort", "pid").splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\d+):(\S+)", l)
        if m:
            by_comm.setdefault(m.group(3), []).append(float(m.group(1)))
    print("## Samples by thread name (all processes recorded)\n")
    for comm, pcts in sorted(by_comm.items(), key=lambda x: -sum(x[1])):
        pcts.sort(reverse=True)
        detail = ""
        if comm == "sealgate-serve" and len(pcts) > 2:
            detail = (f": the 2 busiest threads (the runtime's workers) {sum(pcts[:2]):.1f} %, "
                      f"the other {len(pcts) - 2} (blocking pool: handshake steps) "
                      f"{sum(pcts[2:]):.1f} %")
        print(f"- {sum(pcts):5.1f} %  {comm} ({len(pcts)} threads){detail}")
    for name, pids in (("serve", serve_pid), ("the HSM nodes", node_pids)):
        flat = report("--no-children", "--pid", pids, "--sort", "dso,sym")
        buckets, syms = {}, []
        for l in flat.splitlines():
            m = line.match(l)
            if not m:
                continue
            pct, dso, sym = float(m.group(1)), m.group(3), m.group(5)
            buckets[bucket(dso, sym)] = buckets.get(bucket(dso, sym), 0.0) + pct
            syms.append((pct, dso, sym))
        print(f"\n## {name}: by library or crate (self time, % of the process's samples)\n")
        for b, pct in sorted(buckets.items(), key=lambda x: -x[1])[:14]:
            print(f"- {pct:5.1f} %  {b}")
        print(f"\n## {name}: top symbols\n")
        for pct, dso, sym in syms[:25]:
            print(f"- {pct:5.2f} %  {dso}  {sym[:140]}")
        children = report("--children", "--pid", pids, "--sort", "sym")
        calls = []
        for l in children.splitlines():
            m = re.match(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[k\]\s+(\S+)", l)
            if m and re.match(r"(__x64_sys_\w+|futex_wait|do_writev|schedule|"
                              r"do_epoll_wait|asm_sysvec_\w+)$", m.group(3)):
                calls.append((float(m.group(1)), m.group(3)))
        print(f"\n## {name}: kernel time under these entry points (with children)\n")
        for pct, sym in calls[:14]:
            print(f"- {pct:5.1f} %  {sym}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "free-ports":
        print(free_ports(int(sys.argv[2])))
    elif cmd == "signs":
        print(signs(sys.argv[2]))
    elif cmd == "measure":
        measure(sys.argv[2:])
    elif cmd == "report":
        report(sys.argv[2])
    elif cmd == "perf-summary":
        perf_summary(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
