#!/usr/bin/env bash
# Zone ingress benchmark (issue 6): pkg/proxy's SNI passthrough (what
# `ursa-dp ingress` runs) against nginx's stream `ssl_preread` on the same
# machine in the same run — throughput and new-connection rate, alternating
# proxies round by round — and the per-connection latency a sidecar pair
# (mTLS origination + termination, both pkg/proxy) adds in front of a
# backend.
#
# Every part is its own process on 127.0.0.1, started from one build of
# ./test/ingressbench: a TLS + plain TCP backend, the ursa ingress (pkg/proxy
# from a static Config), nginx, the two sidecars, and the load generator.
#
# Needs: go, and nginx with the stream module:
#   apt-get install -y nginx-light libnginx-mod-stream
#
# Usage: test/ingressbench/run.sh         (from anywhere inside the repository)
# Knobs (environment):
#   ROUNDS=3          rounds; the order of the proxies alternates
#   CONNS=4           throughput: parallel connections
#   BYTES=268435456   throughput: bytes per connection (256 MiB)
#   WORKERS=32        new-connection rate: parallel workers
#   DURATION=10s      new-connection rate: length of each measurement
#   SAMPLES=2000      latency: samples per path (one connection at a time)
#   DIRECT=1          also load the backend directly, as a reference (0: don't)
#   URSA_PPROF=ADDR   serve net/http/pprof from the ursa ingress on ADDR
#   OUT=DIR           keep the work files (configs, logs, results) there;
#                     default a temporary directory, removed on exit
#   PORT_BASE=17400   ports PORT_BASE+0 … +6 on 127.0.0.1 are used
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-4}
BYTES=${BYTES:-268435456}
WORKERS=${WORKERS:-32}
DURATION=${DURATION:-10s}
SAMPLES=${SAMPLES:-2000}
DIRECT=${DIRECT:-1}
URSA_PPROF=${URSA_PPROF:-}
PORT_BASE=${PORT_BASE:-17400}
NGINX_MODULE=${NGINX_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
ADDR=127.0.0.1
SNI=backend.bench

BACKEND_TLS=$((PORT_BASE + 0))
BACKEND_PLAIN=$((PORT_BASE + 1))
URSA_PORT=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 3))
OUTBOUND_PORT=$((PORT_BASE + 4))
INBOUND_PORT=$((PORT_BASE + 5))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	KEEP=1
else
	OUT=$(mktemp -d /tmp/ingressbench.XXXXXX)
	KEEP=0
fi

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $KEEP == 0 ]]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[ingressbench] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v go >/dev/null || die "go not found"
command -v nginx >/dev/null || die "nginx not found (apt-get install -y nginx-light libnginx-mod-stream)"
[[ -f $NGINX_MODULE ]] || die "no $NGINX_MODULE (apt-get install -y libnginx-mod-stream)"

wait_port() { # wait_port PORT PID
	local i
	for i in $(seq 100); do
		kill -0 "$2" 2>/dev/null || die "process $2 exited; see $OUT/*.log"
		if (exec 3<>"/dev/tcp/$ADDR/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	die "nothing listens on $ADDR:$1"
}

start() { # start NAME CMD...: run in the background, log to $OUT/NAME.log
	local name=$1
	shift
	"$@" >"$OUT/$name.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "building ./test/ingressbench"
(cd "$ROOT" && go build -o "$OUT/ingressbench" ./test/ingressbench)
BIN=$OUT/ingressbench
mkdir -p "$OUT/certs"
"$BIN" mkcerts -dir "$OUT/certs"

start backend "$BIN" backend -tls "$ADDR:$BACKEND_TLS" -plain "$ADDR:$BACKEND_PLAIN" -name "$SNI"
BACKEND_PID=$LAST_PID
wait_port "$BACKEND_TLS" "$BACKEND_PID"
wait_port "$BACKEND_PLAIN" "$BACKEND_PID"

ursa_args=(ingress -listen "$ADDR:$URSA_PORT" -sni "$SNI" -backend "$ADDR:$BACKEND_TLS")
if [[ -n $URSA_PPROF ]]; then ursa_args+=(-pprof "$URSA_PPROF"); fi
start ursa "$BIN" "${ursa_args[@]}"
URSA_PID=$LAST_PID
wait_port "$URSA_PORT" "$URSA_PID"

# nginx: stock stream proxy settings (proxy_buffer_size 16k, tcp_nodelay on,
# no access log), one worker per core, in the foreground under this script.
cat >"$OUT/nginx.conf" <<EOF
load_module $NGINX_MODULE;
daemon off;
master_process on;
worker_processes auto;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;

events {
    worker_connections 8192;
}

stream {
    upstream backend {
        server $ADDR:$BACKEND_TLS;
    }
    map \$ssl_preread_server_name \$up {
        $SNI backend;
        default 127.0.0.1:1;  # nothing listens there: an unknown SNI is closed, as in ursa
    }
    server {
        listen $ADDR:$NGINX_PORT;
        ssl_preread on;
        proxy_pass \$up;
    }
}
EOF
nginx -t -q -e "$OUT/nginx-error.log" -p "$OUT/" -c "$OUT/nginx.conf" || die "nginx -t failed; see $OUT/nginx-error.log"
start nginx nginx -e "$OUT/nginx-error.log" -p "$OUT/" -c "$OUT/nginx.conf"
NGINX_PID=$LAST_PID
wait_port "$NGINX_PORT" "$NGINX_PID"

start sidecar-inbound "$BIN" sidecar -role inbound -listen "$ADDR:$INBOUND_PORT" -upstream "$ADDR:$BACKEND_PLAIN" -certs "$OUT/certs"
wait_port "$INBOUND_PORT" "$LAST_PID"
start sidecar-outbound "$BIN" sidecar -role outbound -listen "$ADDR:$OUTBOUND_PORT" -upstream "$ADDR:$INBOUND_PORT" -certs "$OUT/certs"
wait_port "$OUTBOUND_PORT" "$LAST_PID"

log "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(pgrep -c -P "$NGINX_PID") workers; ursa ingress pid $URSA_PID"
log "load: $ROUNDS rounds; throughput $CONNS × $BYTES B; new connections $WORKERS workers × $DURATION"
targets="ursa=$ADDR:$URSA_PORT,nginx=$ADDR:$NGINX_PORT"
if [[ $DIRECT == 1 ]]; then targets+=",direct=$ADDR:$BACKEND_TLS"; fi
"$BIN" load -targets "$targets" \
	-pids "ursa=$URSA_PID,nginx=$NGINX_PID" -sni "$SNI" -rounds "$ROUNDS" \
	-conns "$CONNS" -bytes "$BYTES" -workers "$WORKERS" -duration "$DURATION" \
	-json "$OUT/load.json" >"$OUT/load.md"

log "latency: sidecar pair, $SAMPLES samples per path"
"$BIN" latency -n "$SAMPLES" -paths "direct=$ADDR:$BACKEND_PLAIN,sidecars=$ADDR:$OUTBOUND_PORT" \
	-title "Plain TCP connect + first byte: direct to the backend, and through outbound sidecar → mTLS → inbound sidecar → backend" \
	>"$OUT/latency-sidecars.md"

log "latency: one ingress hop, $SAMPLES samples per path"
"$BIN" latency -n "$SAMPLES" -tls -sni "$SNI" \
	-paths "direct=$ADDR:$BACKEND_TLS,ursa=$ADDR:$URSA_PORT,nginx=$ADDR:$NGINX_PORT" \
	-title "TLS connect + handshake + first byte: direct to the backend, and through each ingress" \
	>"$OUT/latency-ingress.md"

for f in "$OUT"/*.log; do
	if [[ -s $f ]] && grep -qiE 'panic|\[(emerg|alert|crit|error)\]' "$f"; then
		log "errors in $f:"
		grep -iE 'panic|\[(emerg|alert|crit|error)\]' "$f" | head -5 >&2
	fi
done

cat <<EOF

## Summary

Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), $(go version | cut -d' ' -f3), $(nginx -v 2>&1 | sed 's/.*: //')
Load average (1, 5, 15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end.
The load generator, the backend and the proxies share these cores: read the ratios.

### Ingress: ursa (pkg/proxy) against nginx ssl_preread ($ROUNDS rounds, $CONNS × $((BYTES >> 20)) MiB, $WORKERS workers × $DURATION)

$(cat "$OUT/load.md")

### Latency

$(cat "$OUT/latency-sidecars.md")

$(cat "$OUT/latency-ingress.md")
EOF
if [[ $KEEP == 1 ]]; then log "work files in $OUT"; fi
