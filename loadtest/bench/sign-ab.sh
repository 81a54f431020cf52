#!/usr/bin/env bash
# A/B of an HSM node's CPU per ECDSA P-256 signature between two sealgate binaries (say the
# last release and a change): a one-node cluster of each (cluster init, activate, a crypto user,
# a P-256 key), then `sealgate-loadtest hsm-sign -c 16` against each, alternately, ROUNDS
# rounds of SECONDS (after 1 s of warm-up), with the node's CPU per signature measured from
# /proc (--server-pid). Both use the same (B's) sealgate-loadtest.
#
# Usage: loadtest/bench/sign-ab.sh A_SEALGATE B_SEALGATE [SECONDS] [ROUNDS]   (6 s, 3 rounds)
# Env: SIGN_AB_PORTS="PORT_A PORT_B" (default "23100 23200"): the nodes' ports on 127.0.0.1;
#   SIGN_AB_CALLERS=N (default 16): concurrent callers (hsm-sign -c).
# Prints one line per run and the medians; stops the nodes it started (by PID).
set -euo pipefail
a_bin=$(realpath "$1")
b_bin=$(realpath "$2")
secs=${3:-6}
rounds=${4:-3}
read -r port_a port_b <<<"${SIGN_AB_PORTS:-23100 23200}"
callers=${SIGN_AB_CALLERS:-16}
loadtest=$(dirname "$b_bin")/sealgate-loadtest
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

setup() { # name binary port
    local dir=$work/$1 bin=$2
    "$bin" cluster init --dir "$dir" --nodes 1 --base-port "$3" >/dev/null
    (cd "$dir"; setsid "$bin" node --config node-1.toml >node.out 2>node.err </dev/null &
        echo $! >"$dir/node.pid")
    pids+=("$(cat "$dir/node.pid")")
    for _ in $(seq 50); do grep -q listening "$dir/node.out" && break; sleep 0.1; done
    export SEALGATE_CLUSTER=$dir/client.toml
    SEALGATE_USER=admin SEALGATE_PASSWORD="$(cat "$dir/preco-password")" \
        SEALGATE_NEW_PASSWORD=officer-pass-1 timeout 60 "$bin" cluster activate >/dev/null
    SEALGATE_USER=admin SEALGATE_PASSWORD=officer-pass-1 SEALGATE_NEW_PASSWORD=bench-pass-12 \
        timeout 60 "$bin" user create --name bench --role cu >/dev/null
    SEALGATE_USER=bench SEALGATE_PASSWORD=bench-pass-12 \
        timeout 60 "$bin" key generate ec --label sig >/dev/null
}
setup a "$a_bin" "$port_a"
setup b "$b_bin" "$port_b"
for round in $(seq "$rounds"); do
    for v in a b; do
        SEALGATE_USER=bench SEALGATE_PASSWORD=bench-pass-12 timeout $((secs + 60)) \
            "$loadtest" hsm-sign --cluster "$work/$v/client.toml" --label sig -c "$callers" \
            -d "$secs" --warmup 1 --server-pid "$(cat "$work/$v/node.pid")" \
            --json "$work/$v-$round.json" >/dev/null
    done
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for v in "ab":
    cpu, rps = [], []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{work}/{v}-{r}.json"))
        cpu.append(j["server_cpu_us_per_request"]); rps.append(j["throughput_rps"])
        print(f"{v} round {r}: node CPU {cpu[-1]:.1f} µs/signature, {rps[-1]:.0f} signatures/s")
    med[v] = (statistics.median(cpu), statistics.median(rps))
print(f"median node CPU per signature: A {med['a'][0]:.1f} µs, B {med['b'][0]:.1f} µs, "
      f"B/A {med['b'][0] / med['a'][0]:.3f}; throughput B/A {med['b'][1] / med['a'][1]:.3f}")
PY
