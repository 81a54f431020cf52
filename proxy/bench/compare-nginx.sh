#!/usr/bin/env bash
# The proxy against nginx (issue 5): server CPU per request, throughput and latency of
# sealgate and nginx in front of the same upstream, with certificates of the same key type.
#
# Builds the release binary, then in a temporary directory, all on 127.0.0.1 with free ports:
#   - a replicated 3-node HSM cluster (three `sealgate node` processes started here), activated,
#     a crypto user `bench`, an ECDSA P-256 and an RSA-2048 key in the HSM, and a self-signed
#     certificate for each, signed by the HSM (`sealgate cert self-sign`);
#   - the upstream: an nginx (1 worker) answering every request with a static 100-byte body;
#   - `sealgate serve` in remote mode (the nodes above), one listener per certificate;
#   - nginx as a reverse proxy with one worker per core (`nproc`; sealgate's runtime has one
#     worker per core too: 2 each on the 2-core benchmark machine), one server per certificate, with its own file keys of the same type and
#     size made by openssl (sealgate's keys never leave the HSM), TLSv1.2 TLSv1.3, default
#     session tickets, `proxy_pass` to an upstream block with `keepalive 32`.
# Then, for every scenario, a warm-up of each proxy and ROUNDS rounds of sealgate, nginx,
# sealgate, nginx … with h2load (nghttp2-client), the same number of requests for both:
#   ecdsa-hs       full TLS 1.3 handshakes, P-256: --h1 -H 'Connection: close' -c 64 -t 2
#   rsa-hs         the same, RSA-2048
#   h1-keepalive   HTTP/1.1 keep-alive: --h1 -c 16 -m 1 -t 2
#   h2-keepalive   HTTP/2: -c 4 -m 16 -t 2
# and finally a variant comparison ("driver"): ecdsa-hs against the same serve and a second
# serve, the variant, alternately. By default the variant is the other handshake driver
# (SEALGATE_HANDSHAKE_DRIVER=offload).
# SEALGATE_BENCH_VARIANT="NAME [ENV=VALUE…]": the variant's name and environment.
# SEALGATE_BENCH_VARIANT_BIN=FILE: run the variant from another sealgate binary (an older build).
# SEALGATE_BENCH_SCENARIOS="…": the scenarios to run, of ecdsa-hs rsa-hs h1-keepalive
#   h2-keepalive variant (default: all).
#
# Full handshakes: h2load 1.52 keeps a connection's SSL object after a clean close and so
# resumes the session on its next connection (TLS 1.3 ticket, no signature). Every h2load here
# runs with a 10-line LD_PRELOAD shim (compiled below with gcc) whose SSL_shutdown reports an
# unfinished shutdown, so h2load frees the SSL object and the next connection is a full
# handshake. Checked before measuring (nginx's $ssl_session_reused, with and without the shim)
# and in every sealgate run (the nodes' signature counters, Health.signs: one per full
# handshake, none for a resumed one).
#
# Server CPU = utime + stime from /proc/PID/stat before and after each run, of the serve process
# and the three nodes (they make the signatures) for sealgate, of the master and both workers
# for nginx; the upstream's and h2load's CPU are not counted.
# `openssl speed ecdsap256` and `rsa2048` run before and after as the machine-state reference.
#
# Usage: proxy/bench/compare-nginx.sh [SECONDS_OR_REQUESTS] [ROUNDS]
#   below 1000: about that many seconds per run: the requests per run (h2load -n, the same for
#   both proxies) are the seconds times the mean rate of the two warm-ups; from 1000 on: that
#   many requests per run in every scenario (CPU times come in 10 ms ticks: give every run a
#   few seconds). Defaults: 8 seconds, 3 rounds.
#   Prints markdown tables (proxy/bench/compare_nginx.py report).
# SEALGATE_BENCH_PERF=DIR: afterwards, one more ecdsa-hs and one h1-keepalive run of sealgate
#   under `perf record -g` (serve and the nodes); summaries written to DIR.
# SEALGATE_BENCH_KEEP=DIR: copy the raw results (JSON lines) to DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
amount=${1:-8}
rounds=${2:-3}
perf_dir=${SEALGATE_BENCH_PERF:-}
keep_dir=${SEALGATE_BENCH_KEEP:-}
read -r -a variant <<<"${SEALGATE_BENCH_VARIANT:-offload SEALGATE_HANDSHAKE_DRIVER=offload}"
variant_name=${variant[0]}
variant_bin=${SEALGATE_BENCH_VARIANT_BIN:-}
scenarios=" ${SEALGATE_BENCH_SCENARIOS:-ecdsa-hs rsa-hs h1-keepalive h2-keepalive variant} "
helper="python3 proxy/bench/compare_nginx.py"
for tool in nginx h2load openssl python3 gcc curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light nghttp2-client openssl python3 gcc curl)" >&2; exit 1; }
done
run_limit=$(( amount < 1000 ? 20 * amount + 120 : 900 ))

cargo build --release -q -p sealgate
sg=$PWD/target/release/sealgate
dir=$(mktemp -d)
pids=()  # every process started here, stopped by PID in reverse order
stop() { # stop PID: SIGTERM, then wait (bounded) for it to go
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; wait "${pids[i]}" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
wait_for() { # FILE PATTERN WHAT: wait up to 30 s for PATTERN in FILE
    for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "$3 did not start:" >&2; cat "${1%.*}.err" "$1" >&2 2>/dev/null || true; exit 1
}
child_of() { # PID of `timeout`: echo the PID of the process it runs (the one to measure)
    local c
    for _ in $(seq 50); do
        c=$(cat "/proc/$1/task/$1/children" 2>/dev/null | xargs)
        [ -n "$c" ] && { echo "${c%% *}"; return 0; }
        sleep 0.1
    done
    echo "no child of $1" >&2; exit 1
}
wait_port() { # PORT WHAT
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1
    done
    echo "$2 is not listening on $1:" >&2; cat "$dir"/*.err >&2 2>/dev/null || true; exit 1
}

# Ports: 3 nodes, upstream, sealgate EC/RSA, nginx EC/RSA/check, the sealgate variant (EC).
base=$($helper free-ports 10)
node_port=$base; up_port=$((base + 3)); sg_ec=$((base + 4)); sg_rsa=$((base + 5))
ng_ec=$((base + 6)); ng_rsa=$((base + 7)); ng_check=$((base + 8)); sg_bip=$((base + 9))

# --- h2load without session resumption (see above) ------------------------------------------
cat >"$dir/no-resume.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
/* Send close_notify as usual, but report the shutdown unfinished: h2load then frees the SSL
   object instead of keeping it (and its session) for the client's next connection. */
int SSL_shutdown(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_shutdown");
    real(s);
    return 0;
}
EOF
gcc -shared -fPIC -O2 -o "$dir/no-resume.so" "$dir/no-resume.c" -ldl

# --- the HSM cluster, its user, keys and certificates ----------------------------------------
"$sg" cluster init --dir "$dir/c" --nodes 3 --base-port "$node_port" >/dev/null
node_pids=()
for i in 1 2 3; do
    SEALGATE_LOG=warn timeout 7200 "$sg" node --config "$dir/c/node-$i.toml" >"$dir/node-$i.out" 2>"$dir/node-$i.err" &
    pids+=($!); node_pids+=("$(child_of $!)")
done
for i in 1 2 3; do wait_for "$dir/node-$i.out" "listening on" "node $i"; done
export SEALGATE_CLUSTER="$dir/c/client.toml"
SEALGATE_NEW_PASSWORD=bench-officer-pw timeout 60 "$sg" cluster activate --password-file "$dir/c/preco-password" >/dev/null
SEALGATE_USER=admin SEALGATE_PASSWORD=bench-officer-pw SEALGATE_NEW_PASSWORD=bench-user-pw \
    timeout 60 "$sg" user create --name bench --role cu >/dev/null
(
    export SEALGATE_USER=bench SEALGATE_PASSWORD=bench-user-pw
    timeout 60 "$sg" key generate ec --curve secp256r1 --label web-ec >/dev/null
    timeout 60 "$sg" key generate rsa --bits 2048 --label web-rsa >/dev/null
    timeout 60 "$sg" cert self-sign --label web-ec --name localhost --name 127.0.0.1 --out "$dir/ec.pem" >/dev/null
    timeout 60 "$sg" cert self-sign --label web-rsa --name localhost --name 127.0.0.1 --out "$dir/rsa.pem" >/dev/null
)
(umask 077; printf 'bench-user-pw\n' >"$dir/bench-password")
# nginx's own keys: the same type and size, made by openssl (the HSM's keys never leave it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/ng-ec.key" -out "$dir/ng-ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/ng-rsa.key" -out "$dir/ng-rsa.pem" 2>/dev/null

# --- the upstream: nginx, one worker, a static 100-byte answer -------------------------------
body=$(printf 'x%.0s' $(seq 99))
temp_paths() { # nginx's temporary files in the run's directory, not /var/lib/nginx
    for t in client_body proxy fastcgi uwsgi scgi; do echo "    ${t}_temp_path $1/$t;"; done
}
mkdir -p "$dir/up" "$dir/ng"
cat >"$dir/up/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $dir/up/nginx.pid;
error_log $dir/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(temp_paths "$dir/up")
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$up_port backlog=4096;
        location / { default_type text/plain; return 200 "$body\n"; }
    }
}
EOF
timeout 7200 nginx -p "$dir/up" -c "$dir/up/nginx.conf" -g 'daemon off;' >"$dir/up.out" 2>"$dir/up.err" &
pids+=($!)
wait_port "$up_port" "the upstream nginx"

# --- nginx, the reverse proxy ----------------------------------------------------------------
ng_server() { # PORT CERT KEY [ACCESS_LOG]
    cat <<EOF
    server {
        listen 127.0.0.1:$1 ssl http2 backlog=4096;
        ssl_certificate $2;
        ssl_certificate_key $3;
        access_log ${4:-off};
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}
cat >"$dir/ng/nginx.conf" <<EOF
user root;
worker_processes $(nproc);
pid $dir/ng/nginx.pid;
error_log $dir/ng/error.log warn;
events { worker_connections 8192; }
http {
$(temp_paths "$dir/ng")
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.2 TLSv1.3;
    log_format reuse "\$ssl_protocol \$ssl_session_reused";
    upstream up { server 127.0.0.1:$up_port; keepalive 32; }
$(ng_server "$ng_ec" "$dir/ng-ec.pem" "$dir/ng-ec.key")
$(ng_server "$ng_rsa" "$dir/ng-rsa.pem" "$dir/ng-rsa.key")
$(ng_server "$ng_check" "$dir/ng-ec.pem" "$dir/ng-ec.key" "$dir/ng/check.log reuse")
}
EOF
timeout 7200 nginx -p "$dir/ng" -c "$dir/ng/nginx.conf" -g 'daemon off;' >"$dir/ng.out" 2>"$dir/ng.err" &
pids+=($!)
ng_master=$(child_of $!)
wait_port "$ng_ec" "nginx"
for _ in $(seq 50); do
    ng_workers=$(cat "/proc/$ng_master/task/$ng_master/children" 2>/dev/null | xargs)
    [ "$(echo "$ng_workers" | wc -w)" -ge "$(nproc)" ] && break; sleep 0.1
done
ng_pids=$(echo "$ng_master $ng_workers" | tr ' ' ',')

# --- sealgate serve (remote mode: the nodes above) -------------------------------------------
sg_config() { # EC_PORT [RSA_PORT]
    echo "[[proxy.listeners]]"
    echo "bind = \"127.0.0.1:$1\""
    echo "[[proxy.listeners.certificates]]"
    echo "chain = \"ec.pem\""
    echo "key = { label = \"web-ec\" }"
    if [ -n "${2:-}" ]; then
        echo "[[proxy.listeners]]"
        echo "bind = \"127.0.0.1:$2\""
        echo "[[proxy.listeners.certificates]]"
        echo "chain = \"rsa.pem\""
        echo "key = { label = \"web-rsa\" }"
    fi
    cat <<EOF
[[proxy.routes]]
path_prefix = "/"
pool = "up"

[[proxy.pools]]
name = "up"
servers = ["127.0.0.1:$up_port"]

[hsm]
mode = "remote"
client_config = "c/client.toml"
user = "bench"
password_file = "bench-password"

[logging]
level = "warn"
EOF
}
sg_config "$sg_ec" "$sg_rsa" >"$dir/sealgate.toml"
sg_config "$sg_bip" >"$dir/sealgate-bip.toml"
start_serve() { # BINARY CONFIG NAME [ENV=VALUE…]: sets started to the serve process's PID
    local bin=$1 config=$2 name=$3; shift 3
    env SEALGATE_LOG=warn "$@" timeout 7200 "$bin" serve --config "$config" >"$dir/$name.out" 2>"$dir/$name.err" &
    pids+=($!)
    started=$(child_of $!)
}
start_serve "$sg" "$dir/sealgate.toml" serve
serve_pid=$started
wait_for "$dir/serve.out" "listening on" "sealgate serve"
# The variant serve is started now too: its port stays bound (the load below takes ephemeral
# ports by the thousand). Idle until its comparison; its CPU is counted only there.
start_serve "${variant_bin:-$sg}" "$dir/sealgate-bip.toml" serve-bip "${variant[@]:1}"
bip_pid=$started
wait_for "$dir/serve-bip.out" "listening on" "sealgate serve ($variant_name)"
node_csv=$(IFS=,; echo "${node_pids[*]}")
sg_pids="$serve_pid,$node_csv"

# --- checks before measuring -----------------------------------------------------------------
for p in "$sg_ec" "$sg_rsa" "$ng_ec" "$ng_rsa"; do
    out=$(timeout 20 curl -sS -k --http1.1 "https://127.0.0.1:$p/") || { echo "no answer through port $p" >&2; exit 1; }
    [ "$out" = "$body" ] || { echo "unexpected answer through port $p: $out" >&2; exit 1; }
done
# Resumption: 500 connections to nginx's check server (same key, access log with
# $ssl_session_reused) with plain h2load, then 500 with the shim.
timeout 60 h2load --h1 -H 'Connection: close' -n 500 -c 8 "https://127.0.0.1:$ng_check/" >/dev/null
sleep 0.5
plain_reused=$(grep -c ' r$' "$dir/ng/check.log" || true)
: >"$dir/ng/check.log"
timeout 60 env LD_PRELOAD="$dir/no-resume.so" h2load --h1 -H 'Connection: close' -n 500 -c 8 "https://127.0.0.1:$ng_check/" >/dev/null
sleep 0.5
fresh_reused=$(grep -c ' r$' "$dir/ng/check.log" || true)
fresh_new=$(grep -c ' \.$' "$dir/ng/check.log" || true)
if [ "$fresh_reused" != 0 ] || [ "$fresh_new" != 500 ]; then
    echo "h2load still resumes sessions with the shim ($fresh_new new, $fresh_reused resumed of 500)" >&2; exit 1
fi

results=$dir/results.jsonl
speed() { # one line per algorithm: sign/s as openssl speed prints it
    echo "ecdsap256 $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1 | xargs)"
    echo "rsa2048   $(timeout 60 openssl speed -seconds 4 rsa2048 2>/dev/null | tail -1 | xargs)"
}
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo ?) (working tree: $(git status --porcelain 2>/dev/null | wc -l) changed files)"
echo "h2load: $(h2load --version | head -1); nginx: $(nginx -v 2>&1 | cut -d/ -f2) with $(nginx -V 2>&1 | grep -o 'built with OpenSSL [^ ]*' | cut -d' ' -f3- )"
echo "resumption (nginx \$ssl_session_reused, 500 connections): plain h2load $plain_reused resumed; with the shim $fresh_reused resumed, $fresh_new new"
echo "openssl speed before:"; speed | sed 's/^/  /'

run() { # SERVER SCENARIO ROUND REQUESTS PORT [h2load options…]
    local server=$1 scenario=$2 round=$3 n=$4 port=$5; shift 5
    local measured=()
    case $server in
        nginx) measured=(--pids "$ng_pids") ;;
        "$variant_name") measured=(--pids "$bip_pid,$node_csv" --threads-pid "$bip_pid" --client-toml "$SEALGATE_CLUSTER") ;;
        *) measured=(--pids "$sg_pids" --threads-pid "$serve_pid" --client-toml "$SEALGATE_CLUSTER") ;;
    esac
    $helper measure --out "$results" --server "$server" --scenario "$scenario" --round "$round" \
        --log-file "$dir/h2load.log" --timeout "$run_limit" "${measured[@]}" -- \
        timeout "$run_limit" env LD_PRELOAD="$dir/no-resume.so" \
        h2load -n "$n" -t 2 --log-file "$dir/h2load.log" "$@" "https://127.0.0.1:$port/"
}
warm_up() { # REQUESTS PORT [h2load options…]: echo the rate (requests/s)
    local n=$1 port=$2; shift 2
    timeout 300 env LD_PRELOAD="$dir/no-resume.so" h2load -n "$n" -t 2 "$@" "https://127.0.0.1:$port/" |
        sed -n 's/^finished in .*s, \([0-9.]*\) req\/s.*/\1/p'
}
per_run() { # RATE_A RATE_B: requests per run
    if [ -z "$1" ] || [ -z "$2" ]; then
        echo "a warm-up failed (no rate from h2load): sealgate '$1', nginx '$2'" >&2; return 1
    fi
    if [ "$amount" -lt 1000 ]; then
        python3 -c "print(max(1000, round(($1 + $2) / 2 * $amount / 1000) * 1000))"
    else
        echo "$amount"
    fi
}
scenario() { # NAME WARM_UP_REQUESTS SEALGATE_PORT NGINX_PORT [h2load options…]
    local name=$1 w=$2 sp=$3 np=$4; shift 4
    local rs rn n
    [[ $scenarios == *" $name "* ]] || return 0
    rs=$(warm_up "$w" "$sp" "$@"); rn=$(warm_up "$w" "$np" "$@")
    n=$(per_run "$rs" "$rn") || exit 1
    echo "$name: warm-up of $w requests: sealgate $rs req/s, nginx $rn req/s; $n requests per run"
    for r in $(seq "$rounds"); do
        run sealgate "$name" "$r" "$n" "$sp" "$@"
        run nginx "$name" "$r" "$n" "$np" "$@"
    done
}
hs=(--h1 -H 'Connection: close' -c 64)
scenario ecdsa-hs 3000 "$sg_ec" "$ng_ec" "${hs[@]}"
scenario rsa-hs 3000 "$sg_rsa" "$ng_rsa" "${hs[@]}"
scenario h1-keepalive 40000 "$sg_ec" "$ng_ec" --h1 -c 16 -m 1
scenario h2-keepalive 60000 "$sg_ec" "$ng_ec" -c 4 -m 16

# --- the variant: the same serve against the variant serve, ECDSA handshakes ---------------
if [[ $scenarios == *" variant "* ]]; then
    rs=$(warm_up 3000 "$sg_ec" "${hs[@]}"); rb=$(warm_up 3000 "$sg_bip" "${hs[@]}")
    n=$(per_run "$rs" "$rb") || exit 1
    echo "driver: warm-up of 3000 handshakes: default $rs req/s, $variant_name $rb req/s; $n requests per run"
    for r in $(seq "$rounds"); do
        run "default" driver "$r" "$n" "$sg_ec" "${hs[@]}"
        run "$variant_name" driver "$r" "$n" "$sg_bip" "${hs[@]}"
    done
fi

echo "openssl speed after:"; speed | sed 's/^/  /'

# --- optional profile ------------------------------------------------------------------------
if [ -n "$perf_dir" ]; then
    mkdir -p "$perf_dir"
    profile() { # NAME REQUESTS PORT [h2load options…]
        local name=$1 n=$2 port=$3; shift 3
        timeout 120 perf record -q -g -o "$dir/perf-$name.data" -p "$sg_pids" -- sleep 8 2>/dev/null &
        local perf_pid=$!
        sleep 0.5
        timeout 60 env LD_PRELOAD="$dir/no-resume.so" h2load -n "$n" -t 2 "$@" "https://127.0.0.1:$port/" |
            grep -E '^(finished in|requests:)' >"$perf_dir/$name-h2load.txt" || true
        wait "$perf_pid" 2>/dev/null || true
        $helper perf-summary "$dir/perf-$name.data" "$serve_pid" "$node_csv" >"$perf_dir/$name.md" 2>&1 || true
    }
    profile ecdsa-hs 10000 "$sg_ec" "${hs[@]}"
    profile h1-keepalive 150000 "$sg_ec" --h1 -c 16 -m 1
    echo "perf summaries in $perf_dir"
fi

[ -n "$keep_dir" ] && { mkdir -p "$keep_dir"; cp "$results" "$keep_dir/"; }
echo
$helper report "$results"
for f in "$dir"/serve.err "$dir"/serve-bip.err "$dir"/ng/error.log; do
    if [ -s "$f" ]; then echo; echo "warnings in $(basename "$f"):"; tail -5 "$f"; fi
done
