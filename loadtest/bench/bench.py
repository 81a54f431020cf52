#!/usr/bin/env python3
"""Helper of loadtest/bench/compare-nginx.sh (standard library only).

  free-ports N              a port P with P .. P+N-1 free on 127.0.0.1
  signs CLIENT_TOML         signatures made by every node of the cluster so far (Health.signs,
                            asked over the nodes' mutual TLS with the cluster's client
                            certificate; no login needed)
  child-cpu -- CMD ARGS     runs CMD; one JSON line with its user and system CPU seconds and
                            wall time (for h2load's own CPU)
  report DIR                the markdown tables from the `sealgate-loadtest compare --json`
                            files in DIR (SCENARIO.json) and tools.jsonl
  perf-summary DATA SERVE_PID NODE_PIDS
                            a `perf record -g` profile summed by process, by library or crate
                            (from the symbol's path) and by system call, with the top symbols
  cpu-ticks "PID…"          user and system CPU ticks of these processes (all their threads) so far
  syscalls TRACE_A JSON_A TRACE_B JSON_B
                            a markdown table of the system calls, context switches and user and
                            system CPU per request of two servers, from `perf stat -x,` counts,
                            cpu-ticks before and after (TRACE.cpu) and the loadtest's JSON
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
# the load generators' own CPU


def child_cpu(argv):
    """Runs argv (after --) and prints one JSON line: its user and system CPU seconds (from
    the kernel's accounting of the waited-for child) and its wall time; stdout passes through
    to stderr."""
    argv = argv[argv.index("--") + 1:] if "--" in argv else argv
    before = os.times()
    t0 = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    after = os.times()
    sys.stderr.write(proc.stdout)
    print(json.dumps({
        "user_s": after.children_user - before.children_user,
        "sys_s": after.children_system - before.children_system,
        "wall_s": wall,
        "exit": proc.returncode,
        "stdout": proc.stdout,
    }))


# ---------------------------------------------------------------------------------------------
# report


GOALS = {"ecdsa-hs": "≤ 0.6×", "rsa-hs": "≤ 0.9×", "ecdsa-resumed": "—",
         "h1-keepalive": "≤ 0.9×", "h2-keepalive": "≤ 0.9×"}
NAMES = {"ecdsa-hs": "full handshakes, ECDSA P-256", "rsa-hs": "full handshakes, RSA-2048",
         "ecdsa-resumed": "resumed handshakes (TLS 1.3 tickets)",
         "h1-keepalive": "HTTP/1.1 keep-alive", "h2-keepalive": "HTTP/2",
         "variant": "ECDSA handshakes: default serve (A) / variant (B)",
         "variant-keepalive": "HTTP/1.1 keep-alive: default serve (A) / variant (B)"}
VARIANTS = {"variant": "handshake", "variant-keepalive": "request"}


def mmm(spread, fmt, bold=True):
    if not spread:
        return "—"
    mid = f"**{fmt(spread['median'])}**" if bold else fmt(spread["median"])
    return f"{fmt(spread['min'])} / {mid} / {fmt(spread['max'])}"


def f0(x):
    return f"{x:,.0f}".replace(",", " ")


def f1(x):
    return f"{x:.1f}"


def f2(x):
    return f"{x:.2f}"


def ms(x):
    return f"{x / 1000:.2f}"


def report(directory):
    """Markdown tables from the compare JSON files (SCENARIO.json, A = nginx, B = sealgate)
    and the load generators' CPU (tools.jsonl)."""
    scenarios = [n for n in NAMES if os.path.exists(os.path.join(directory, n + ".json"))]
    data = {n: json.load(open(os.path.join(directory, n + ".json"))) for n in scenarios}
    main = [n for n in scenarios if n not in VARIANTS]
    if main:
        print("### Server CPU per request, sealgate / nginx (min / **median** / max over "
              "the rounds; ratios per round)\n")
        print("| scenario | goal | server CPU per request: ratio | sealgate | nginx "
              "| throughput ratio | sealgate req/s | nginx req/s | p99 ratio | sealgate p99 "
              "| nginx p99 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in main:
            f = data[n]["figures"]
            cpu, rps, p99 = (f["server_cpu_us_per_request"], f["throughput_rps"],
                             f["latency_us.p99"])
            print(f"| {NAMES[n]} | {GOALS[n]} | {mmm(cpu['ratio'], f2)} "
                  f"| {mmm(cpu['b'], f1, False)} µs | {mmm(cpu['a'], f1, False)} µs "
                  f"| {mmm(rps['ratio'], f2)} | {f0(rps['b']['median'])} "
                  f"| {f0(rps['a']['median'])} | {mmm(p99['ratio'], f2)} "
                  f"| {ms(p99['b']['median'])} ms | {ms(p99['a']['median'])} ms |")
    for name, unit in VARIANTS.items():
        if name not in data:
            continue
        d = data[name]
        f = d["figures"]
        print(f"\n### {NAMES[name]}: B = {d['b']['name']}\n")
        print("| figure | default | variant | variant / default |")
        print("|---|---|---|---|")
        for key, label, fmt in (("server_cpu_us_per_request", f"server CPU per {unit}, µs", f1),
                                ("throughput_rps", f"{unit}s/s", f0),
                                ("latency_us.p99", "p99, µs", f0)):
            print(f"| {label} | {mmm(f[key]['a'], fmt, False)} | {mmm(f[key]['b'], fmt, False)} "
                  f"| {mmm(f[key]['ratio'], f2)} |")
    tools = os.path.join(directory, "tools.jsonl")
    if os.path.exists(tools):
        rows = [json.loads(l) for l in open(tools) if l.strip()]
        print("\n### The load generators' own CPU per full ECDSA handshake (same nginx, same "
              "handshakes)\n")
        print("| round | h2load (µs per handshake) | sealgate-loadtest (µs per handshake) "
              "| loadtest / h2load |")
        print("|---|---|---|---|")
        ratios = []
        for r in rows:
            ratios.append(r["loadtest_us"] / r["h2load_us"])
            print(f"| {r['round']} | {f1(r['h2load_us'])} | {f1(r['loadtest_us'])} "
                  f"| {f2(ratios[-1])} |")
        print(f"\nMedian ratio: **{f2(statistics.median(ratios))}**")
    print("\n### Every run\n")
    print("| scenario | round | server | requests ok | errors | req/s | server CPU/req "
          "| server cores | client CPU/req | p50 / p99 / max | TLS full / resumed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in scenarios:
        d = data[n]
        for i, r in enumerate(d["rounds"], 1):
            for side in ("a", "b"):
                s = r[side]
                lat = s["latency_us"]
                errors = s["errors"]["total"]
                tls = (f"{s.get('tls_handshakes')} / {s.get('tls_resumed')}"
                       if s.get("tls_handshakes") is not None else "—")
                print(f"| {n} | {i} | {d[side]['name']} | {s['requests']} | {errors} "
                      f"| {f0(s['throughput_rps'])} "
                      f"| {f1(s.get('server_cpu_us_per_request') or 0)} µs "
                      f"| {f2(s.get('server_cores') or 0)} "
                      f"| {f1(s['client_cpu_us_per_request'])} µs "
                      f"| {ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])} ms | {tls} |")


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


def cpu_ticks(pids):
    user = system = 0
    for pid in pids.split():
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    print(user, system)


def trace_calls(path):
    """System calls by name from `perf stat -x,` counts of syscall tracepoints."""
    calls = {}
    for l in open(path):
        f = l.strip().split(",")
        if len(f) > 2 and f[2] == "task-clock":
            continue
        if len(f) > 2 and f[0].isdigit():
            name = "all" if f[2] == "raw_syscalls:sys_enter" else f[2].removeprefix("syscalls:sys_enter_")
            calls[name] = calls.get(name, 0) + int(f[0])
    return calls


def syscalls(trace_a, json_a, trace_b, json_b):
    names = []
    per = []
    for trace, result in ((trace_a, json_a), (trace_b, json_b)):
        names.append(os.path.basename(trace).removeprefix("trace-").removesuffix(".txt"))
        requests = json.load(open(result))["requests"]
        counts = trace_calls(trace)
        before, after = (list(map(int, l.split())) for l in open(trace.removesuffix(".txt") + ".cpu"))
        counts["user CPU µs"] = (after[0] - before[0]) / CLK_TCK * 1e6
        counts["system CPU µs"] = (after[1] - before[1]) / CLK_TCK * 1e6
        per.append({k: v / requests for k, v in counts.items()})
    print(f"| per request | {names[0]} | {names[1]} |")
    print("|---|---:|---:|")
    keys = sorted(set(per[0]) | set(per[1]), key=lambda k: -(per[0].get(k, 0) + per[1].get(k, 0)))
    for k in ("user CPU µs", "system CPU µs", "context-switches", "cpu-migrations"):
        print(f"| {k} | {per[0].get(k, 0):.2f} | {per[1].get(k, 0):.2f} |")
    for k in (k for k in keys if k not in ("all", "context-switches", "cpu-migrations")
              and "CPU" not in k):
        a, b = per[0].get(k, 0), per[1].get(k, 0)
        if a >= 0.005 or b >= 0.005:
            print(f"| {k} | {a:.2f} | {b:.2f} |")
    print(f"| **all system calls** | **{per[0].get('all', 0):.2f}** | **{per[1].get('all', 0):.2f}** |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "free-ports":
        print(free_ports(int(sys.argv[2])))
    elif cmd == "signs":
        print(signs(sys.argv[2]))
    elif cmd == "child-cpu":
        child_cpu(sys.argv[2:])
    elif cmd == "report":
        report(sys.argv[2])
    elif cmd == "perf-summary":
        perf_summary(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "cpu-ticks":
        cpu_ticks(sys.argv[2])
    elif cmd == "syscalls":
        syscalls(*sys.argv[2:6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
