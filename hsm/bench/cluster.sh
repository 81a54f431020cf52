#!/usr/bin/env bash
# The cluster benchmark (issue 4): write latency, signing over 1–3 nodes, a node joining.
#
# Builds release binaries, makes a replicated 3-node cluster in a temporary directory (three
# free consecutive ports), starts the nodes, activates the cluster, creates a crypto user, runs
# `openssl speed ecdsap256`, then tests/examples/hsm_cluster_bench.rs (KEYS P-256 key pairs made
# one by one and timed; 64 callers signing on node 1, then 1–2, then 1–3, for SECONDS each with
# the nodes' CPU read from /proc; a fourth node added with `cluster add-node`, started and timed
# to a caught-up voter, then removed; KEYS more key pairs by 8 concurrent callers), then
# `openssl speed` again. Everything is bounded in time and every node is stopped by its PID.
# Usage: hsm/bench/cluster.sh [KEYS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=${1:-1000}
seconds=${2:-8}
cargo build --release -q -p sealgate
cargo build --release -q -p sealgate-tests --example hsm_cluster_bench
sg=target/release/sealgate
bench=target/release/examples/hsm_cluster_bench
dir=$(mktemp -d)
pids=()
stop() { # stop PID: SIGTERM, then wait (bounded) for it to go
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    # Node 4 is the example's child; its PID file exists while it may run.
    if [ -s "$dir/node-4.pid" ]; then stop "$(cat "$dir/node-4.pid")"; fi
    for pid in "${pids[@]}"; do stop "$pid"; wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

# Three free consecutive ports for nodes 1–3 (cluster init gives node N base-port + N - 1).
base=$(python3 -c '
import random, socket
for _ in range(200):
    p = random.randrange(20000, 60000)
    try:
        ss = [socket.socket() for _ in range(3)]
        for i, s in enumerate(ss): s.bind(("127.0.0.1", p + i))
        print(p); break
    except OSError: pass
    finally:
        for s in ss: s.close()
')
"$sg" cluster init --dir "$dir/c" --nodes 3 --base-port "$base" >/dev/null
for i in 1 2 3; do
    SEALGATE_LOG=warn "$sg" node --config "$dir/c/node-$i.toml" >"$dir/node-$i.out" 2>"$dir/node-$i.err" &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 100); do grep -q "listening on" "$dir/node-$i.out" 2>/dev/null && break; sleep 0.1; done
    grep -q "listening on" "$dir/node-$i.out" || { echo "node $i did not start:"; cat "$dir/node-$i.err"; exit 1; }
done
export SEALGATE_CLUSTER="$dir/c/client.toml"
SEALGATE_NEW_PASSWORD=bench-officer-pw timeout 60 "$sg" cluster activate --password-file "$dir/c/preco-password" >/dev/null
SEALGATE_USER=admin SEALGATE_PASSWORD=bench-officer-pw SEALGATE_NEW_PASSWORD=bench-user-pw \
    timeout 60 "$sg" user create --name bench --role cu >/dev/null

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "openssl speed before: $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1)"
SEALGATE_USER=bench SEALGATE_PASSWORD=bench-user-pw SEALGATE_CO_PASSWORD=bench-officer-pw \
    timeout $((3 * (seconds + 2) + keys / 5 + 600)) "$bench" --cluster "$SEALGATE_CLUSTER" --sealgate "$sg" \
    --keys "$keys" --seconds "$seconds" --node-pid "${pids[0]}" --node-pid "${pids[1]}" \
    --node-pid "${pids[2]}" --pid-file "$dir/node-4.pid"
echo "openssl speed after:  $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1)"
