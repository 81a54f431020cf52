#!/usr/bin/env bash
# sealgate against nginx, measured with sealgate-loadtest (issues 5 and 6): server CPU per
# request, throughput and latency of both as TLS-terminating reverse proxies in front of the
# same upstream, with the same certificates and the same keys.
#
# Installs nginx (nginx-light) and h2load (nghttp2-client) from the distribution when missing,
# builds the release binaries, then in a temporary directory, all on 127.0.0.1 with free ports:
#   - an ECDSA P-256 and an RSA-2048 key made by openssl (PKCS#8) and a self-signed
#     certificate for each (localhost, 127.0.0.1);
#   - a replicated 3-node HSM cluster (three `sealgate node` processes), activated, a crypto
#     user `bench`, and both keys imported into the HSM (`sealgate key import`, wrapped on the
#     way in): sealgate signs with the same keys inside its HSM that nginx reads from files;
#   - the upstream: an nginx (1 worker) answering every request with a static 100-byte body;
#   - `sealgate serve` in remote mode (the nodes above), one listener per certificate;
#   - nginx as a reverse proxy with one worker per core (`nproc`, as many as sealgate's
#     runtime workers), TLSv1.2 TLSv1.3 with sealgate's preference of TLS 1.3 suites (the
#     server's choice, AES-128-GCM first), default session tickets, http2, `proxy_pass` to an
#     upstream block with `keepalive 32`, no access log.
# Then every scenario with `sealgate-loadtest compare` (A = nginx, B = sealgate, alternately,
# ROUNDS rounds, SECONDS measured per run after a 2 s warm-up):
#   ecdsa-hs       handshake -c 64: one new TLS connection and full handshake per request, P-256
#   rsa-hs         the same, RSA-2048
#   ecdsa-resumed  handshake --resume -c 64: each request a new connection that resumes a TLS
#                  1.3 session (no signature, no certificate); not run by default. Full minus
#                  resumed is what the certificate and its signature cost each server.
#   h1-keepalive   keepalive -c 16 (HTTP/1.1)
#   h2-keepalive   keepalive --http2 -c 4 --streams 16
# Server CPU = utime + stime of the measured processes and their descendants (nginx: the master
# and its workers; sealgate: serve and the three nodes, which make the signatures), read by the
# tool from /proc before and after each measured window. The upstream's and the tool's CPU are
# not counted. Every sealgate handshake run is checked against the nodes' signature counters
# (Health.signs): exactly one HSM signature per full handshake.
#
# Then the load generators' own CPU per full handshake: h2load and sealgate-loadtest making the
# same number of full ECDSA handshakes against the nginx above, alternately. h2load resumes
# sessions after a clean close, so it runs with a 10-line LD_PRELOAD shim whose SSL_shutdown
# reports an unfinished shutdown (h2load then frees the SSL object and the next connection is a
# full handshake); checked first against a check server of nginx that logs $ssl_session_reused.
#
# Usage: loadtest/bench/compare-nginx.sh [SECONDS] [ROUNDS]     (defaults: 8 seconds, 3 rounds)
#   Prints the markdown tables (loadtest/bench/bench.py report).
# SEALGATE_BENCH_SCENARIOS="…": scenarios to run, of ecdsa-hs rsa-hs h1-keepalive h2-keepalive
#   ecdsa-resumed tools variant variant-keepalive (default: all but ecdsa-resumed and the
#   variants).
# SEALGATE_BENCH_VARIANT="NAME [ENV=VALUE…]" (with the scenario `variant` or
#   `variant-keepalive`): a second serve with that environment (and
#   SEALGATE_BENCH_VARIANT_BIN=FILE: from another sealgate binary), compared with the first on
#   ECDSA handshakes (`variant`) or HTTP/1.1 keep-alive requests (`variant-keepalive`, as
#   h1-keepalive); default: the other handshake driver (SEALGATE_HANDSHAKE_DRIVER=offload).
# SEALGATE_BENCH_PERF=DIR: afterwards, one ECDSA-handshake and one HTTP/1.1 keep-alive run of
#   sealgate under `perf record -g` (serve and the nodes); summaries written to DIR.
# SEALGATE_BENCH_SYSCALLS=DIR: afterwards, 100,000 HTTP/1.1 keep-alive requests (-c 16) to each
#   proxy under `perf stat` (nginx: master and workers; sealgate: serve, all its threads); the
#   system calls each made per request, by name, written to DIR/syscalls.md.
# SEALGATE_BENCH_CALLGRIND=DIR: afterwards, the instructions serve executes per HTTP/1.1
#   keep-alive request (user space only; a count, unlike CPU time, that the machine's noise does
#   not move): each binary of SEALGATE_BENCH_CALLGRIND_BINS="FILE…" (default: this build) serves
#   under valgrind's callgrind, instrumented for 20,000 requests (-c 16) after 2,000 that are not;
#   DIR/callgrind.md gets the instructions per request, DIR the callgrind files
#   (callgrind_annotate). Installs valgrind if missing.
# SEALGATE_BENCH_KEEP=DIR: copy the compare JSON files to DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
rounds=${2:-3}
perf_dir=${SEALGATE_BENCH_PERF:-}
keep_dir=${SEALGATE_BENCH_KEEP:-}
sys_dir=${SEALGATE_BENCH_SYSCALLS:-}
cg_dir=${SEALGATE_BENCH_CALLGRIND:-}
scenarios=" ${SEALGATE_BENCH_SCENARIOS:-ecdsa-hs rsa-hs h1-keepalive h2-keepalive tools} "
read -r -a variant <<<"${SEALGATE_BENCH_VARIANT:-offload SEALGATE_HANDSHAKE_DRIVER=offload}"
variant_bin=${SEALGATE_BENCH_VARIANT_BIN:-}
helper="python3 loadtest/bench/bench.py"

if ! command -v nginx >/dev/null || ! command -v h2load >/dev/null; then
    apt-get update && apt-get install -y nginx-light nghttp2-client
fi
for tool in nginx h2load openssl python3 gcc curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y openssl python3 gcc curl)" >&2; exit 1; }
done

cargo build --release -q -p sealgate -p sealgate-loadtest
sg=$PWD/target/release/sealgate
lt=$PWD/target/release/sealgate-loadtest
dir=$(mktemp -d)
out=$dir/results
mkdir -p "$out"
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
ng_ec=$((base + 6)); ng_rsa=$((base + 7)); ng_check=$((base + 8)); sg_var=$((base + 9))

# --- the keys and certificates (one pair of each type, for both proxies) ---------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ec.key" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rsa.key" 2>/dev/null
for k in ec rsa; do
    openssl req -x509 -key "$dir/$k.key" -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=digitalSignature" -addext "extendedKeyUsage=serverAuth" -out "$dir/$k.pem" 2>/dev/null
done

# --- the HSM cluster, its user, the keys imported ---------------------------------------------
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
    timeout 60 "$sg" key import --pem "$dir/ec.key" --label web-ec >/dev/null
    timeout 60 "$sg" key import --pem "$dir/rsa.key" --label web-rsa >/dev/null
)
(umask 077; printf 'bench-user-pw\n' >"$dir/bench-password")

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
ng_server() { # PORT KEY_TYPE [ACCESS_LOG]
    cat <<EOF
    server {
        listen 127.0.0.1:$1 ssl http2 backlog=4096;
        ssl_certificate $dir/$2.pem;
        ssl_certificate_key $dir/$2.key;
        access_log ${3:-off};
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
    # sealgate's order of TLS 1.3 suites, chosen by the server: AES-128-GCM first.
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    log_format reuse "\$ssl_protocol \$ssl_session_reused";
    upstream up { server 127.0.0.1:$up_port; keepalive 32; }
$(ng_server "$ng_ec" ec)
$(ng_server "$ng_rsa" rsa)
$(ng_server "$ng_check" ec "$dir/ng/check.log reuse")
}
EOF
timeout 7200 nginx -p "$dir/ng" -c "$dir/ng/nginx.conf" -g 'daemon off;' >"$dir/ng.out" 2>"$dir/ng.err" &
pids+=($!)
ng_master=$(child_of $!)
wait_port "$ng_ec" "nginx"

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
start_serve() { # BINARY CONFIG NAME [ENV=VALUE…]: sets started to the serve process's PID
    local bin=$1 config=$2 name=$3; shift 3
    env SEALGATE_LOG=warn "$@" timeout 7200 "$bin" serve --config "$config" >"$dir/$name.out" 2>"$dir/$name.err" &
    pids+=($!)
    started=$(child_of $!)
    wait_for "$dir/$name.out" "listening on" "sealgate serve ($name)"
}
start_serve "$sg" "$dir/sealgate.toml" serve
serve_pid=$started
if [[ $scenarios == *" variant"* ]]; then
    sg_config "$sg_var" >"$dir/sealgate-variant.toml"
    start_serve "${variant_bin:-$sg}" "$dir/sealgate-variant.toml" serve-variant "${variant[@]:1}"
    variant_pid=$started
fi

# --- checks before measuring -----------------------------------------------------------------
for p in "$sg_ec" "$sg_rsa" "$ng_ec" "$ng_rsa"; do
    got=$(timeout 20 curl -sS -k --http1.1 "https://127.0.0.1:$p/") ||
        { echo "no answer through port $p" >&2; exit 1; }
    [ "$got" = "$body" ] || { echo "unexpected answer through port $p: $got" >&2; exit 1; }
done

for p in "$sg_ec" "$ng_ec"; do # the suite each negotiates with a client that lists AES-256 first
    suite=$(timeout 20 openssl s_client -connect "127.0.0.1:$p" </dev/null 2>/dev/null | grep -o 'Cipher is [A-Z0-9_]*' | head -1)
    echo "port $p: $suite"
done
speed() { # one line per algorithm: sign/s as openssl speed prints it
    echo "ecdsap256 $(timeout 60 openssl speed -seconds 4 ecdsap256 2>/dev/null | tail -1 | xargs)"
    echo "rsa2048   $(timeout 60 openssl speed -seconds 4 rsa2048 2>/dev/null | tail -1 | xargs)"
}
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo ?) (working tree: $(git status --porcelain 2>/dev/null | wc -l) changed files)"
echo "nginx $(nginx -v 2>&1 | cut -d/ -f2) with $(nginx -V 2>&1 | grep -o 'built with OpenSSL [^ ]*' | cut -d' ' -f3-); $(h2load --version | head -1)"
echo "openssl speed before:"; speed | sed 's/^/  /'

# --- the scenarios ---------------------------------------------------------------------------
run_limit=$(( (secs + 2 + 5) * 2 * rounds + 120 ))
compare() { # NAME NGINX_PORT SEALGATE_PORT CA MODE [mode options…]
    local name=$1 np=$2 sp=$3 ca=$4; shift 4
    [[ $scenarios == *" $name "* ]] || return 0
    local before after
    before=$($helper signs "$SEALGATE_CLUSTER")
    timeout "$run_limit" "$lt" compare --rounds "$rounds" \
        --a "https://127.0.0.1:$np/" --a-name nginx --a-pid "$ng_master" \
        --b "https://127.0.0.1:$sp/" --b-name sealgate --b-pid "$serve_pid" \
        $(printf -- '--b-pid %s ' "${node_pids[@]}") \
        --max-error-rate 0 --json "$out/$name.json" \
        "$@" --cacert "$dir/$ca.pem" --warmup 2 --duration "$secs" >"$dir/$name.txt" ||
        { cat "$dir/$name.txt"; python3 -c "import json,sys; [print(s, r[s]['errors'], r[s]['first_error']) for r in json.load(open(sys.argv[1]))['rounds'] for s in 'ab']" "$out/$name.json"; exit 1; }
    after=$($helper signs "$SEALGATE_CLUSTER")
    echo "$name: done; HSM signatures during it: $((after - before))"
    python3 - "$out/$name.json" "$((after - before))" "$*" <<'EOF'
import json, sys
report, signs, args = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3].split()
if args[0] == "handshake" and "--resume" not in args:
    # Every sealgate connection (warm-ups included) made a full handshake and one signature.
    full = sum(r["b"]["tls_handshakes"] - r["b"]["tls_resumed"] for r in report["rounds"])
    resumed = sum(r["b"]["tls_resumed"] for r in report["rounds"])
    if resumed or signs < full:
        sys.exit(f"{resumed} resumed handshakes, {signs} signatures for {full} measured full handshakes")
EOF
}
hs=(handshake -c 64)
compare ecdsa-hs "$ng_ec" "$sg_ec" ec "${hs[@]}"
compare rsa-hs "$ng_rsa" "$sg_rsa" rsa "${hs[@]}"
compare ecdsa-resumed "$ng_ec" "$sg_ec" ec handshake --resume -c 64
compare h1-keepalive "$ng_ec" "$sg_ec" ec keepalive -c 16
compare h2-keepalive "$ng_ec" "$sg_ec" ec keepalive --http2 -c 4 --streams 16

variant_compare() { # NAME MODE [mode options…]: the default serve (A) against the variant (B)
    local name=$1; shift
    [[ $scenarios == *" $name "* ]] || return 0
    timeout "$run_limit" "$lt" compare --rounds "$rounds" \
        --a "https://127.0.0.1:$sg_ec/" --a-name default --a-pid "$serve_pid" \
        $(printf -- '--a-pid %s ' "${node_pids[@]}") \
        --b "https://127.0.0.1:$sg_var/" --b-name "${variant[0]}" --b-pid "$variant_pid" \
        $(printf -- '--b-pid %s ' "${node_pids[@]}") \
        --max-error-rate 0 --json "$out/$name.json" \
        "$@" --cacert "$dir/ec.pem" --warmup 2 --duration "$secs" >"$dir/$name.txt"
    echo "$name: done"
}
variant_compare variant "${hs[@]}"
variant_compare variant-keepalive keepalive -c 16

# --- the load generators' own CPU: h2load against sealgate-loadtest --------------------------
if [[ $scenarios == *" tools "* ]]; then
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
    timeout 60 env LD_PRELOAD="$dir/no-resume.so" h2load --h1 -H 'Connection: close' -n 500 -c 8 "https://127.0.0.1:$ng_check/" >/dev/null
    sleep 0.5
    reused=$(grep -c ' r$' "$dir/ng/check.log" || true); fresh=$(grep -c ' \.$' "$dir/ng/check.log" || true)
    if [ "$reused" != 0 ] || [ "$fresh" != 500 ]; then
        echo "h2load resumes sessions even with the shim ($fresh new, $reused resumed of 500)" >&2; exit 1
    fi
    n=$(python3 -c "import json; print(round(json.load(open('$out/ecdsa-hs.json'))['figures']['throughput_rps']['a']['median'] * $secs / 1000) * 1000 if __import__('os').path.exists('$out/ecdsa-hs.json') else 10000)")
    n=$(( n < 2000 ? 2000 : n ))
    for r in $(seq "$rounds"); do
        h=$($helper child-cpu -- timeout 300 env LD_PRELOAD="$dir/no-resume.so" \
            h2load --h1 -H 'Connection: close' -c 64 -t 2 -n "$n" "https://127.0.0.1:$ng_ec/" 2>/dev/null)
        timeout 300 "$lt" handshake "https://127.0.0.1:$ng_ec/" -c 64 -n "$n" --cacert "$dir/ec.pem" \
            --max-error-rate 0 --json "$dir/tool.json" >/dev/null
        python3 - "$r" "$n" "$h" "$dir/tool.json" >>"$out/tools.jsonl" <<'EOF'
import json, re, sys
r, n, h, tool = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), json.load(open(sys.argv[4]))
m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", h["stdout"])
if not m or int(m.group(2)) != n:
    sys.exit(f"h2load did not complete {n} requests: {h['stdout'][-400:]}")
if tool["requests"] != n or tool["tls_resumed"] != 0:
    sys.exit(f"sealgate-loadtest: {tool['requests']} requests, {tool['tls_resumed']} resumed")
print(json.dumps({"round": r, "handshakes": n,
                  "h2load_us": (h["user_s"] + h["sys_s"]) / n * 1e6,
                  "loadtest_us": tool["client_cpu_us_per_request"]}))
EOF
    done
    echo "tools: done ($n handshakes per run)"
fi
echo "openssl speed after:"; speed | sed 's/^/  /'

# --- optional profile ------------------------------------------------------------------------
if [ -n "$perf_dir" ]; then
    mkdir -p "$perf_dir"
    node_csv=$(IFS=,; echo "${node_pids[*]}")
    profile() { # NAME PORT MODE [options…]
        local name=$1 port=$2; shift 2
        timeout 120 perf record -q -g -o "$dir/perf-$name.data" -p "$serve_pid,$node_csv" -- sleep 8 2>/dev/null &
        local perf_pid=$!
        sleep 0.5
        timeout 60 "$lt" "$@" "https://127.0.0.1:$port/" --cacert "$dir/ec.pem" --duration 6 \
            >"$perf_dir/$name-load.txt" || true
        wait "$perf_pid" 2>/dev/null || true
        $helper perf-summary "$dir/perf-$name.data" "$serve_pid" "$node_csv" >"$perf_dir/$name.md" 2>&1 || true
    }
    profile ecdsa-hs "$sg_ec" "${hs[@]}"
    profile h1-keepalive "$sg_ec" keepalive -c 16
    echo "perf summaries in $perf_dir"
fi

# --- optional system-call counts ---------------------------------------------------------------
if [ -n "$sys_dir" ]; then
    mkdir -p "$sys_dir"
    calls=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
    for c in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait \
        epoll_ctl futex sched_yield getsockopt setsockopt accept4 connect close ioctl; do
        calls+=",syscalls:sys_enter_$c"
    done
    trace() { # NAME PIDS PORT: counts system calls while 100,000 requests run
        timeout 300 perf stat -x, -e "$calls" -p "$2" -o "$dir/trace-$1.txt" &
        local trace_pid=$!
        sleep 1
        $helper cpu-ticks "${2//,/ }" >"$dir/trace-$1.cpu"
        timeout 240 "$lt" keepalive -c 16 -n 100000 "https://127.0.0.1:$3/" --cacert "$dir/ec.pem" \
            --json "$dir/trace-$1.json" >/dev/null
        $helper cpu-ticks "${2//,/ }" >>"$dir/trace-$1.cpu"
        kill -INT "$trace_pid"; wait "$trace_pid" 2>/dev/null || true
    }
    # shellcheck disable=SC2046
    trace nginx "$(echo "$ng_master" $(cat "/proc/$ng_master/task/$ng_master/children") | tr ' ' ,)" "$ng_ec"
    trace sealgate "$serve_pid" "$sg_ec"
    $helper syscalls "$dir/trace-nginx.txt" "$dir/trace-nginx.json" "$dir/trace-sealgate.txt" \
        "$dir/trace-sealgate.json" >"$sys_dir/syscalls.md"
    echo "system calls per request in $sys_dir/syscalls.md"
fi

# --- optional instruction counts (callgrind) ---------------------------------------------------
if [ -n "$cg_dir" ]; then
    command -v valgrind >/dev/null || { apt-get update && apt-get install -y valgrind; }
    mkdir -p "$cg_dir"
    sg_config "$sg_var" >"$dir/callgrind.toml"
    echo "| serve binary | instructions per request (user space) |" >"$cg_dir/callgrind.md"
    echo "|---|---:|" >>"$cg_dir/callgrind.md"
    n=20000
    for bin in ${SEALGATE_BENCH_CALLGRIND_BINS:-$sg}; do
        name=$(basename "$bin")
        # valgrind itself is the process (no timeout or env in between): callgrind_control
        # switches its instrumentation on and off by this PID.
        SEALGATE_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$cg_dir/callgrind-$name.out" "$bin" serve --config "$dir/callgrind.toml" \
            >"$dir/callgrind-$name.log" 2>&1 &
        vg=$!
        pids+=("$vg")
        for _ in $(seq 1200); do grep -q "listening on" "$dir/callgrind-$name.log" && break; sleep 0.1; done
        grep -q "listening on" "$dir/callgrind-$name.log" || { cat "$dir/callgrind-$name.log" >&2; exit 1; }
        timeout 600 "$lt" keepalive -c 16 -n 2000 "https://127.0.0.1:$sg_var/" --cacert "$dir/ec.pem" >/dev/null
        callgrind_control -i on "$vg" >/dev/null
        timeout 600 "$lt" keepalive -c 16 -n "$n" "https://127.0.0.1:$sg_var/" --cacert "$dir/ec.pem" \
            --max-error-rate 0 >/dev/null
        callgrind_control -i off "$vg" >/dev/null
        stop "$vg"; wait "$vg" 2>/dev/null || true
        ir=$(sed -n 's/^totals: //p' "$cg_dir/callgrind-$name.out")
        echo "| $bin | $((ir / n)) |" >>"$cg_dir/callgrind.md"
    done
    echo "instructions per request in $cg_dir/callgrind.md"
fi

[ -n "$keep_dir" ] && { mkdir -p "$keep_dir"; cp "$out"/* "$keep_dir/"; }
echo
$helper report "$out"
for f in "$dir"/serve.err "$dir"/serve-variant.err "$dir"/ng/error.log; do
    if [ -s "$f" ]; then echo; echo "warnings in $(basename "$f"):"; tail -5 "$f"; fi
done
