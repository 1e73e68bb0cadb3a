#!/usr/bin/env bash
# HTTP sidecar pairs (issue 15): requests/s and the latency a pair of
# sidecars adds, for the built-in proxy against nginx and HAProxy, on the
# same machine in the same run, rounds interleaved.
#
# Four paths from the load generator to one backend (HTTP/1.1 keep-alive,
# 128-byte body), all on 127.0.0.1:
#   direct   the backend itself: the baseline of "added" latency
#   nginx    nginx (proxy_pass, keepalive upstream) → TLS with client
#            certificates → nginx (ssl_verify_client on, keepalive upstream)
#            → backend
#   haproxy  the same with two HAProxys (mode http, ssl verify required both
#            ways)
#   ursa     ursa-dp (client-1's outbound) → mTLS → ursa-dp (billing-1's
#            inbound) → backend: two real ursa-dp processes configured by a
#            real zone CP (memory store) for the service billing, tagged
#            ursa.io/protocol: http, in a mesh with mTLS on and a
#            TrafficPermission client → billing, as a user runs them.
# Every pair uses identities from one mesh CA (pkg/mtls, ECDSA P-256; the
# zone CP issues ursa's own). The load generator holds N keep-alive
# connections, one request in flight on each (closed loop), for each of
# the concurrency levels, and records every request's latency in an HDR
# histogram; the proxies' CPU comes from /proc. Not part of `make test`.
#
# Needs: go, curl; nginx-light and haproxy (installed with apt-get when
# missing; neither starts by itself).
# Usage: test/httpbench/run.sh        (from anywhere inside the repository)
# Knobs (environment):
#   ROUNDS=3            rounds; the paths' order rotates round by round
#   CONNS=1,32,128      concurrency levels (keep-alive connections)
#   DURATION=10s        measured time of each run
#   WARMUP=2s           load before each measured window, not counted
#   PATHS=direct,nginx,haproxy,ursa   which paths to load (direct first);
#                       also ursa-tcp: client-1 → mTLS → billing-tcp-1 →
#                       backend, the same pair for a TCP service (tcp_proxy,
#                       L4), a third ursa-dp
#   PPROF=1             build ursa-dp with net/http/pprof on 127.0.0.1:
#                       PORT_BASE+16 (client-1), +17 (billing-1), +21
#                       (billing-tcp-1)
#   LOG_LEVEL=warn      of the zone CP and the sidecars
#   DP_ENV="K=V …"      extra environment of the ursa-dp sidecars only (an
#                       experiment: DP_ENV="GOGC=off GODEBUG=gctrace=1")
#   OUT=DIR             keep the work files (configs, logs, results, the
#                       sidecars' metrics) there; default a temporary
#                       directory, removed on exit
#   PORT_BASE=17600     ports PORT_BASE+0 … +21 on 127.0.0.1 are used
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
# Figures and what they say: test/BENCHMARKS.md.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-1,32,128}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PATHS=${PATHS:-direct,nginx,haproxy,ursa}
PPROF=${PPROF:-0}
DP_ENV=${DP_ENV:-}
LOG_LEVEL=${LOG_LEVEL:-warn}
PORT_BASE=${PORT_BASE:-17600}
ADDR=127.0.0.1
TAG=httpbench

BACKEND=$((PORT_BASE + 0))
NGINX_OUT=$((PORT_BASE + 1))
NGINX_IN=$((PORT_BASE + 2))
HAPROXY_OUT=$((PORT_BASE + 3))
HAPROXY_IN=$((PORT_BASE + 4))
URSA_OUT=$((PORT_BASE + 5))
URSA_IN=$((PORT_BASE + 6))
CLIENT_IN=$((PORT_BASE + 7))
CLIENT_APP=$((PORT_BASE + 8))
CP_API=$((PORT_BASE + 10))
CP_API_TLS=$((PORT_BASE + 11))
CP_XDS=$((PORT_BASE + 12))
CP_DNS=$((PORT_BASE + 13))
ADMIN_IN=$((PORT_BASE + 14))
ADMIN_OUT=$((PORT_BASE + 15))
PPROF_OUT=$((PORT_BASE + 16))
PPROF_IN=$((PORT_BASE + 17))
URSA_TCP_OUT=$((PORT_BASE + 18))
URSA_TCP_IN=$((PORT_BASE + 19))
ADMIN_TCP_IN=$((PORT_BASE + 20))
PPROF_TCP_IN=$((PORT_BASE + 21))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	KEEP=1
else
	OUT=$(mktemp -d "/tmp/$TAG.XXXXXX")
	KEEP=0
fi

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for _ in $(seq 50); do
		kill -0 "${PIDS[@]}" 2>/dev/null || break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [[ $KEEP == 0 ]]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { log "$*"; exit 1; }
want() { [[ ,$PATHS, == *,$1,* ]]; }

[[ ${PATHS%%,*} == direct ]] || die "PATHS must start with direct (the baseline)"
for tool in go curl; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
missing=()
want nginx && ! command -v nginx >/dev/null && missing+=(nginx-light)
want haproxy && ! command -v haproxy >/dev/null && missing+=(haproxy)
if [[ ${#missing[@]} -gt 0 ]]; then
	log "installing ${missing[*]}"
	[[ $(id -u) == 0 ]] || die "needs root to apt-get install ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$OUT/apt.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed; see $OUT/apt.log"
fi

wait_port() { # wait_port PORT PID
	local i
	for i in $(seq 100); do
		kill -0 "$2" 2>/dev/null || die "process $2 exited; see $OUT/*.log"
		if (exec 3<>"/dev/tcp/$ADDR/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	die "nothing listens on $ADDR:$1"
}

# needs_client_cert NAME PORT: the inbound side of a pair must refuse a
# client without a mesh certificate (proof that the pair runs mutual TLS).
needs_client_cert() {
	local code
	code=$(curl -sk -o /dev/null -w '%{http_code}' "https://$ADDR:$2/" || true)
	[[ $code != 200 ]] || die "$1 answered 200 to a client without a certificate"
}

start() { # start NAME CMD...: run in the background, log to $OUT/NAME.log
	local name=$1
	shift
	"$@" >"$OUT/$name.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$OUT/bin" "$OUT/certs"
BIN=$OUT/bin
log "building httpbench, ursa-cp, ursactl and ursa-dp"
(
	cd "$ROOT"
	go build -o "$BIN/httpbench" ./test/httpbench
	if want ursa || want ursa-tcp; then
		go build -o "$BIN/ursa-cp" ./cmd/ursa-cp
		go build -o "$BIN/ursactl" ./cmd/ursactl
		overlay=()
		if [[ $PPROF == 1 ]]; then
			printf '{"Replace": {"%s": "%s"}}\n' "$ROOT/cmd/ursa-dp/zz_httpbench_pprof.go" \
				"$ROOT/test/httpbench/dp_pprof.go.in" >"$OUT/overlay.json"
			overlay=(-overlay "$OUT/overlay.json")
		fi
		go build "${overlay[@]}" -o "$BIN/ursa-dp" ./cmd/ursa-dp
	fi
)
"$BIN/httpbench" mkcerts -dir "$OUT/certs"
CERTS=$OUT/certs

start backend "$BIN/httpbench" backend -listen "$ADDR:$BACKEND"
wait_port "$BACKEND" "$LAST_PID"
TARGETS="direct=$ADDR:$BACKEND"
PIDLIST=""

if want nginx; then
	# Two nginx, each stock but for: no access log, temp files in its own
	# folder, and keep-alive connections never retired by request count
	# (the default 1,000 would add a TLS handshake per 1,000 requests
	# between the sidecars, which ursa never makes).
	nginx_conf() { # nginx_conf NAME SERVER-BLOCK UPSTREAM-BLOCK
		mkdir -p "$OUT/$1/tmp"
		cat >"$OUT/$1/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes auto;
pid $OUT/$1/nginx.pid;
error_log $OUT/$1/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path $OUT/$1/tmp/body;
    proxy_temp_path $OUT/$1/tmp/proxy;
    fastcgi_temp_path $OUT/$1/tmp/fastcgi;
    uwsgi_temp_path $OUT/$1/tmp/uwsgi;
    scgi_temp_path $OUT/$1/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
$3
$2
}
CONF
		nginx -t -q -p "$OUT/$1/" -c "$OUT/$1/nginx.conf" -e "$OUT/$1/error.log" ||
			die "nginx -t failed for $1; see $OUT/$1/error.log"
	}
	nginx_conf nginx-in "    server {
        listen $ADDR:$NGINX_IN ssl;
        ssl_certificate $CERTS/billing.pem;
        ssl_certificate_key $CERTS/billing-key.pem;
        ssl_client_certificate $CERTS/ca.pem;
        ssl_verify_client on;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" "    upstream app {
        server $ADDR:$BACKEND;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }"
	nginx_conf nginx-out "    server {
        listen $ADDR:$NGINX_OUT;
        location / {
            proxy_pass https://billing;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_ssl_certificate $CERTS/client.pem;
            proxy_ssl_certificate_key $CERTS/client-key.pem;
            proxy_ssl_trusted_certificate $CERTS/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name billing;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }
    }" "    upstream billing {
        server $ADDR:$NGINX_IN;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }"
	start nginx-in nginx -p "$OUT/nginx-in/" -c "$OUT/nginx-in/nginx.conf" -e "$OUT/nginx-in/error.log"
	NGINX_IN_PID=$LAST_PID
	wait_port "$NGINX_IN" "$NGINX_IN_PID"
	start nginx-out nginx -p "$OUT/nginx-out/" -c "$OUT/nginx-out/nginx.conf" -e "$OUT/nginx-out/error.log"
	NGINX_OUT_PID=$LAST_PID
	wait_port "$NGINX_OUT" "$NGINX_OUT_PID"
	needs_client_cert nginx-in "$NGINX_IN"
	TARGETS+=",nginx=$ADDR:$NGINX_OUT"
	PIDLIST+=",nginx=$NGINX_OUT_PID+$NGINX_IN_PID"
fi

if want haproxy; then
	# Two HAProxys in the foreground (-db), threads as many as CPUs (the
	# default), keep-alive on both sides (the default), stock reuse of
	# server connections (http-reuse safe).
	haproxy_conf() { # haproxy_conf NAME BODY
		mkdir -p "$OUT/$1"
		cat >"$OUT/$1/haproxy.cfg" <<CONF
global
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
$2
CONF
		haproxy -q -c -f "$OUT/$1/haproxy.cfg" >"$OUT/$1/check.log" 2>&1 ||
			die "haproxy -c failed for $1; see $OUT/$1/check.log"
	}
	haproxy_conf haproxy-in "frontend inbound
    bind $ADDR:$HAPROXY_IN ssl crt $CERTS/billing-full.pem ca-file $CERTS/ca.pem verify required
    default_backend app
backend app
    server app $ADDR:$BACKEND"
	haproxy_conf haproxy-out "frontend outbound
    bind $ADDR:$HAPROXY_OUT
    default_backend billing
backend billing
    server billing $ADDR:$HAPROXY_IN ssl crt $CERTS/client-full.pem ca-file $CERTS/ca.pem verify required sni str(billing) verifyhost billing"
	start haproxy-in haproxy -db -f "$OUT/haproxy-in/haproxy.cfg"
	HAPROXY_IN_PID=$LAST_PID
	wait_port "$HAPROXY_IN" "$HAPROXY_IN_PID"
	start haproxy-out haproxy -db -f "$OUT/haproxy-out/haproxy.cfg"
	HAPROXY_OUT_PID=$LAST_PID
	wait_port "$HAPROXY_OUT" "$HAPROXY_OUT_PID"
	needs_client_cert haproxy-in "$HAPROXY_IN"
	TARGETS+=",haproxy=$ADDR:$HAPROXY_OUT"
	PIDLIST+=",haproxy=$HAPROXY_OUT_PID+$HAPROXY_IN_PID"
fi

if want ursa || want ursa-tcp; then
	log "starting the zone CP"
	start ursa-cp "$BIN/ursa-cp" zone --zone bench --api-addr "$ADDR:$CP_API" --api-tls-addr "$ADDR:$CP_API_TLS" \
		--xds-addr "$ADDR:$CP_XDS" --dns-addr "$ADDR:$CP_DNS" --xds-allow-loopback-dataplanes --log-level "$LOG_LEVEL"
	CP_PID=$LAST_PID
	API=http://$ADDR:$CP_API
	for _ in $(seq 100); do
		curl -sf -o /dev/null "$API/readyz" && break
		kill -0 "$CP_PID" 2>/dev/null || die "the zone CP exited; see $OUT/ursa-cp.log"
		sleep 0.1
	done
	curl -sf -o /dev/null "$API/readyz" || die "the zone CP is not ready; see $OUT/ursa-cp.log"
	"$BIN/ursactl" --api-server "$API" apply -f - >"$OUT/apply.log" <<YAML
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: client-to-billing
spec:
  sources: [{match: {ursa.io/service: client}}]
  destinations: [{match: {ursa.io/service: billing}}, {match: {ursa.io/service: billing-tcp}}]
YAML
	curl -sf "$API/xds/ca.pem" >"$OUT/xds-ca.pem"
	for svc in billing billing-tcp client; do
		"$BIN/ursactl" --api-server "$API" generate dataplane-token --mesh default --service "$svc" >"$OUT/$svc.token"
	done
	# billing is the HTTP service; billing-tcp the same backend as a TCP
	# service (no protocol tag), for the ursa-tcp path.
	cat >"$OUT/billing-1.yaml" <<YAML
type: Dataplane
mesh: default
name: billing-1
networking:
  address: $ADDR
  inbound:
  - {port: $URSA_IN, servicePort: $BACKEND, tags: {ursa.io/service: billing, ursa.io/protocol: http}}
YAML
	cat >"$OUT/billing-tcp-1.yaml" <<YAML
type: Dataplane
mesh: default
name: billing-tcp-1
networking:
  address: $ADDR
  inbound:
  - {port: $URSA_TCP_IN, servicePort: $BACKEND, tags: {ursa.io/service: billing-tcp}}
YAML
	cat >"$OUT/client-1.yaml" <<YAML
type: Dataplane
mesh: default
name: client-1
networking:
  address: $ADDR
  inbound:
  - {port: $CLIENT_IN, servicePort: $CLIENT_APP, tags: {ursa.io/service: client}}
  outbound:
  - {address: $ADDR, port: $URSA_OUT, tags: {ursa.io/service: billing}}
  - {address: $ADDR, port: $URSA_TCP_OUT, tags: {ursa.io/service: billing-tcp}}
YAML
	sidecar() { # sidecar NAME SERVICE ADMIN PPROF
		local pprof=""
		[[ $PPROF == 1 ]] && pprof=$ADDR:$4
		# shellcheck disable=SC2086 # DP_ENV is a list of K=V words
		start "$1" env "URSA_BENCH_PPROF=$pprof" $DP_ENV "$BIN/ursa-dp" run --cp-address "grpcs://$ADDR:$CP_XDS" --ca-cert-file "$OUT/xds-ca.pem" \
			--token-file "$OUT/$2.token" --dataplane-file "$OUT/$1.yaml" --admin-addr "$ADDR:$3" \
			--dns-addr= --log-level "$LOG_LEVEL"
		SIDECARS+=($LAST_PID)
	}
	answers() { # answers PORT: wait until a request through the sidecars gets a 200
		local i
		for i in $(seq 300); do
			kill -0 "${SIDECARS[@]}" 2>/dev/null || die "a sidecar exited; see $OUT/*.log"
			curl -sf -o /dev/null "http://$ADDR:$1/" && return 0
			sleep 0.1
		done
		die "no answer through the ursa sidecars on :$1 after 30 s; see $OUT/*.log"
	}
	SIDECARS=()
	log "starting the sidecars: client-1 (outbound :$URSA_OUT to billing, :$URSA_TCP_OUT to billing-tcp)"
	sidecar client-1 client "$ADMIN_OUT" "$PPROF_OUT"
	URSA_OUT_PID=$LAST_PID
	if want ursa; then
		log "billing-1 (inbound :$URSA_IN, HTTP)"
		sidecar billing-1 billing "$ADMIN_IN" "$PPROF_IN"
		URSA_IN_PID=$LAST_PID
		answers "$URSA_OUT"
		needs_client_cert billing-1 "$URSA_IN"
		TARGETS+=",ursa=$ADDR:$URSA_OUT"
		PIDLIST+=",ursa=$URSA_OUT_PID+$URSA_IN_PID"
	fi
	if want ursa-tcp; then
		log "billing-tcp-1 (inbound :$URSA_TCP_IN, TCP)"
		sidecar billing-tcp-1 billing-tcp "$ADMIN_TCP_IN" "$PPROF_TCP_IN"
		URSA_TCP_IN_PID=$LAST_PID
		answers "$URSA_TCP_OUT"
		needs_client_cert billing-tcp-1 "$URSA_TCP_IN"
		TARGETS+=",ursa-tcp=$ADDR:$URSA_TCP_OUT"
		PIDLIST+=",ursa-tcp=$URSA_OUT_PID+$URSA_TCP_IN_PID"
	fi
fi

log "load: $ROUNDS rounds × levels $CONNS × paths $PATHS; $WARMUP warm-up + $DURATION each"
"$BIN/httpbench" load -targets "$TARGETS" -pids "${PIDLIST#,}" -conns "$CONNS" -rounds "$ROUNDS" \
	-duration "$DURATION" -warmup "$WARMUP" -json "$OUT/load.json" >"$OUT/load.md"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

mode=""
if want ursa || want ursa-tcp; then
	curl -sf "http://$ADDR:$ADMIN_OUT/metrics" >"$OUT/metrics-client-1.txt" || true
	curl -sf "http://$ADDR:$ADMIN_IN/metrics" >"$OUT/metrics-billing-1.txt" || true
	curl -sf "http://$ADDR:$ADMIN_TCP_IN/metrics" >"$OUT/metrics-billing-tcp-1.txt" || true
	# Which engine carried ursa's requests: the CP sends an HTTP connection
	# manager for an HTTP service once both sides implement it, tcp_proxy
	# before; only the HTTP engine counts requests.
	if want ursa; then
		n_out=$(grep -cE '^ursa_dp_http_requests_total\{.*direction="outbound".*service="billing"' "$OUT/metrics-client-1.txt" || true)
		n_in=$(grep -cE '^ursa_dp_http_requests_total\{.*direction="inbound".*service="billing"' "$OUT/metrics-billing-1.txt" || true)
		if [[ $n_out -gt 0 && $n_in -gt 0 ]]; then
			mode="ursa: HTTP on both sidecars (their ursa_dp_http_requests_total counted billing's requests)"
		elif [[ $n_out -gt 0 || $n_in -gt 0 ]]; then
			mode="ursa: **HTTP on one sidecar only** (outbound: $n_out series, inbound: $n_in)"
		else
			mode="ursa: **TCP (tcp_proxy)**: this build's zone CP or ursa-dp does not carry billing at L7 yet"
		fi
	fi
fi

for f in "$OUT"/*.log "$OUT"/*/error.log; do
	if [[ -s $f ]] && grep -qiE 'panic|\[(emerg|alert|crit)\]|"level":"error"' "$f"; then
		log "errors in $f:"
		grep -iE 'panic|\[(emerg|alert|crit)\]|"level":"error"' "$f" | head -5 >&2
	fi
done

cat <<SUMMARY

## httpbench

Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), $(go version | cut -d' ' -f3)$(want nginx && printf ', nginx %s' "$(nginx -v 2>&1 | sed 's/.*\///')")$(want haproxy && printf ', HAProxy %s' "$(haproxy -v | head -1 | awk '{print $3}')"), commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . || echo '+changes')
Load average (1, 5, 15 min): $LOAD_START at the start, $LOAD_END at the end.
The load generator, the backend and every proxy share these cores: read the ratios.
$(want nginx && echo "nginx: $(pgrep -c -P "$NGINX_OUT_PID") + $(pgrep -c -P "$NGINX_IN_PID") workers.")
$mode

$(cat "$OUT/load.md")
SUMMARY
if [[ $KEEP == 1 ]]; then log "work files in $OUT"; fi
