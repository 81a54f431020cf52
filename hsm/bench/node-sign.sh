#!/usr/bin/env bash
# P-256 signatures through one HSM node from a pipelining client, against `openssl speed`.
#
# Builds release binaries, makes a 1-node cluster in a temporary directory, activates it,
# creates a crypto user and a P-256 key, runs `openssl speed ecdsap256`, then the load
# (tests/examples/hsm_sign_load.rs: 64 concurrent callers through the client SDK, node CPU
# read from /proc), then `openssl speed` again. Everything is bounded in time and the node
# is stopped by its PID. Usage: hsm/bench/node-sign.sh [SECONDS] [CONCURRENCY] [PIN]
# PIN=pin runs the node on CPU 0 and the client on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-8}
concurrency=${2:-64}
pin=${3:-}
cargo build --release -q -p sealgate
cargo build --release -q -p sealgate-tests --example hsm_sign_load
sg=target/release/sealgate
load=target/release/examples/hsm_sign_load
dir=$(mktemp -d)
node_pid=
cleanup() {
    if [ -n "$node_pid" ]; then kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
node_cpu="" ; client_cpu=""
if [ "$pin" = pin ]; then node_cpu="taskset -c 0"; client_cpu="taskset -c 1"; fi

# Pick a free port for the node.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$sg" cluster init --dir "$dir/c" --nodes 1 --base-port "$port" >/dev/null
SEALGATE_LOG=warn $node_cpu "$sg" node --config "$dir/c/node-1.toml" >"$dir/node.out" 2>"$dir/node.err" &
node_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/node.out" 2>/dev/null && break; sleep 0.1; done
export SEALGATE_CLUSTER="$dir/c/client.toml"
SEALGATE_NEW_PASSWORD=bench-officer-pw timeout 60 "$sg" cluster activate --password-file "$dir/c/preco-password" >/dev/null
SEALGATE_USER=admin SEALGATE_PASSWORD=bench-officer-pw SEALGATE_NEW_PASSWORD=bench-user-pw \
    timeout 60 "$sg" user create --name bench --role cu >/dev/null
export SEALGATE_USER=bench SEALGATE_PASSWORD=bench-user-pw
handle=$(timeout 60 "$sg" --output json key generate ec --curve secp256r1 --label bench |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["private"])')

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "openssl speed before: $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1)"
timeout $((seconds + 60)) $client_cpu "$load" --cluster "$SEALGATE_CLUSTER" --handle "$handle" \
    --concurrency "$concurrency" --seconds "$seconds" --node-pid "$node_pid"
echo "openssl speed after:  $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1)"
