#!/usr/bin/env bash
# Latency of the transparent proxy's outbound path (issue 13): an app's new
# connection to a service's VIP, redirected by iptables to the sidecar's
# original-destination listener (ursa:outbound), against the same connection
# to an explicit outbound listener (Dataplane networking.outbound) of the
# same sidecar, to the same service — in the same run, sample by sample.
#
# Three hosts, each a network namespace made here (10.77.0.1-3/24 on a
# bridge in a fourth): the zone CP; the server (tpbench echo, the service
# "echo", and its ursa-dp sidecar); the client, whose ursa-dp runs
# --transparent-proxy and has an explicit outbound 127.0.0.1:15100 to echo.
# tpbench latency runs on the client, one connection at a time, on the paths
#   explicit     127.0.0.1:15100          the bound outbound listener (baseline)
#   transparent  echo's VIP:80            iptables REDIRECT → ursa:outbound → the same cluster
#   direct       the server's echo:7070   with the proxy's socket mark: no sidecar at all (context)
#   passthrough  the server's echo:7070   redirected → ursa:outbound's default chain (context)
# The mesh has mTLS on (MTLS=0: off), so explicit and transparent both
# originate mTLS to the server's sidecar, which terminates it and checks RBAC.
#
# Needs: root (namespaces, iptables), go, ip, iptables-restore, curl, jq.
# Usage: sudo test/tpbench/run.sh         (from anywhere inside the repository)
#        make bench-tproxy
# Knobs (environment): SAMPLES=5000 (per path) WARMUP=200 MTLS=1
#   SERVICES=0 further services (Dataplanes registered, never started), so
#     that ursa:outbound holds 2 filter chains more per service
#   VIP_CIDR=240.0.0.0/4 the zone's --vip-cidr, routed to eth0 on the client
#   CLIENT_SYSCTL="k=v ..." sysctls set in the client's namespace first
#   LATENCY_FLAGS="..." more tpbench latency flags (-slow 3ms logs slow connects)
#   LOG_LEVEL=warn of the CP and the sidecars
#   OUT=DIR keeps the work files (logs, configs, results, the client's TCP
#     and conntrack counters after the run).
# No address outside loopback and these namespaces carries traffic; every
# process and namespace made here is removed on every exit. Figures and what
# they say: test/BENCHMARKS.md.
set -euo pipefail

SAMPLES=${SAMPLES:-5000}
WARMUP=${WARMUP:-200}
MTLS=${MTLS:-1}
SERVICES=${SERVICES:-0}
LOG_LEVEL=${LOG_LEVEL:-warn}
VIP_CIDR=${VIP_CIDR:-240.0.0.0/4}
TAG=tpbench
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, iptables)"
for tool in go ip iptables-restore curl jq; do
	command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	KEEP=1
else
	OUT=$(mktemp -d "/tmp/$TAG.XXXXXX")
	KEEP=0
fi

PREFIX=tpb$$
NETNS=()
PIDS=()
cleanup() {
	local pid ns
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
	for ns in "${NETNS[@]}"; do
		ip netns delete "$ns" 2>/dev/null || log "could not delete namespace $ns"
	done
	if [[ $KEEP == 0 ]]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The hosts: name, address.
declare -A ADDR=([cp]=10.77.0.1 [srv]=10.77.0.2 [cli]=10.77.0.3)
on() { local host=$1; shift; ip netns exec "$PREFIX-$host" "$@"; }
# spawn HOST LOG CMD…: CMD in the background on HOST, its output in LOG.
# ip netns exec execs CMD, so the PID kept is CMD's own.
spawn() {
	local host=$1 out=$2
	shift 2
	ip netns exec "$PREFIX-$host" "$@" >"$out" 2>&1 &
	PIDS+=($!)
}

log "building ursa-cp, ursactl, ursa-dp and tpbench"
mkdir -p "$OUT/bin"
(cd "$ROOT" && for c in ursa-cp ursactl ursa-dp; do go build -o "$OUT/bin/$c" "./cmd/$c"; done &&
	go build -o "$OUT/bin/tpbench" ./test/tpbench)
BIN=$OUT/bin

log "making the hosts (namespaces $PREFIX-*)"
addns() {
	ip netns add "$1"
	NETNS+=("$1")
	ip -n "$1" link set lo up
}
addns "$PREFIX-br"
ip -n "$PREFIX-br" link add br0 type bridge
ip -n "$PREFIX-br" link set br0 up
i=0
for host in cp srv cli; do
	ns=$PREFIX-$host
	addns "$ns"
	ip -n "$PREFIX-br" link add "p$i" type veth peer name eth0 netns "$ns"
	ip -n "$PREFIX-br" link set "p$i" master br0
	ip -n "$PREFIX-br" link set "p$i" up
	ip -n "$ns" addr add "${ADDR[$host]}/24" dev eth0
	ip -n "$ns" link set eth0 up
	i=$((i + 1))
done
# The VIPs (240.0.0.0/4, the zone's default) need a route for connect() to
# get as far as the nat table's OUTPUT chain, which redirects them.
ip -n "$PREFIX-cli" route add "$VIP_CIDR" dev eth0
for kv in ${CLIENT_SYSCTL:-}; do
	on cli sysctl -qw "$kv"
done

log "starting the zone CP on ${ADDR[cp]}"
spawn cp "$OUT/ursa-cp.log" "$BIN/ursa-cp" zone --zone bench --api-addr 127.0.0.1:5681 --api-tls-addr "${ADDR[cp]}:5682" \
	--xds-addr "${ADDR[cp]}:5678" --xds-tls-san "${ADDR[cp]}" --vip-cidr "$VIP_CIDR" --dns-addr 127.0.0.1:5653 --log-level "$LOG_LEVEL"
API=http://127.0.0.1:5681
for _ in $(seq 100); do
	on cp curl -sf -o /dev/null "$API/readyz" && break
	sleep 0.1
done
on cp curl -sf -o /dev/null "$API/readyz" || die "the zone CP is not ready; see $OUT/ursa-cp.log"

mtls=false
[[ $MTLS == 1 ]] && mtls=true
on cp "$BIN/ursactl" --api-server "$API" apply -f - >"$OUT/apply.log" <<EOF
type: Mesh
name: default
mtls: {enabled: $mtls}
---
type: TrafficPermission
mesh: default
name: client-to-echo
spec:
  sources: [{match: {ursa.io/service: client}}]
  destinations: [{match: {ursa.io/service: echo}}]
EOF
if [[ $SERVICES -gt 0 ]]; then
	log "registering $SERVICES further services"
	for i in $(seq "$SERVICES"); do
		printf -- '---\ntype: Dataplane\nmesh: default\nname: svc-%d\nnetworking:\n  address: %s\n  inbound:\n  - {port: %d, tags: {ursa.io/service: svc-%d}}\n' \
			"$i" "${ADDR[srv]}" $((20000 + i)) "$i"
	done | on cp "$BIN/ursactl" --api-server "$API" apply -f - >>"$OUT/apply.log"
	for _ in $(seq 300); do
		n=$(on cp curl -sf "$API/meshes/default/virtual-ips" | jq '[.items[].entries[] | select(.releasedAt == null)] | length' || echo 0)
		[[ $n -ge $SERVICES ]] && break
		sleep 0.1
	done
	[[ $n -ge $SERVICES ]] || die "only $n of $SERVICES VIPs after 30 s"
fi
on cp curl -sf "$API/xds/ca.pem" >"$OUT/xds-ca.pem"
for svc in echo client; do
	on cp "$BIN/ursactl" --api-server "$API" generate dataplane-token --mesh default --service "$svc" >"$OUT/$svc.token"
done
cat >"$OUT/echo-1.yaml" <<EOF
type: Dataplane
mesh: default
name: echo-1
networking:
  address: ${ADDR[srv]}
  inbound:
  - {port: 10011, servicePort: 7070, tags: {ursa.io/service: echo}}
EOF
cat >"$OUT/client-1.yaml" <<EOF
type: Dataplane
mesh: default
name: client-1
networking:
  address: ${ADDR[cli]}
  inbound:
  - {port: 10012, servicePort: 7071, tags: {ursa.io/service: client}}
  outbound:
  - {address: 127.0.0.1, port: 15100, tags: {ursa.io/service: echo}}
EOF
sidecar() { # sidecar HOST NAME SERVICE [FLAG…]
	local host=$1 name=$2 svc=$3
	shift 3
	spawn "$host" "$OUT/$name.log" "$BIN/ursa-dp" run --cp-address "grpcs://${ADDR[cp]}:5678" --ca-cert-file "$OUT/xds-ca.pem" \
		--token-file "$OUT/$svc.token" --dataplane-file "$OUT/$name.yaml" --admin-addr 127.0.0.1:9901 \
		--dns-addr= --log-level "$LOG_LEVEL" "$@"
}

log "starting the server: echo on ${ADDR[srv]}:7070 and its sidecar (inbound :10011)"
spawn srv "$OUT/echo.log" "$BIN/tpbench" echo -listen 0.0.0.0:7070
sidecar srv echo-1 echo
log "starting the client's sidecar: --transparent-proxy, explicit outbound 127.0.0.1:15100"
sidecar cli client-1 client --transparent-proxy

vip=
for _ in $(seq 300); do
	vip=$(on cp curl -sf "$API/meshes/default/virtual-ips" |
		jq -r '.items[].entries | to_entries[] | select(.key == "echo" and .value.releasedAt == null) | .value.ip' || true)
	[[ -n $vip ]] && break
	sleep 0.1
done
[[ -n $vip ]] || die "no VIP for echo after 30 s; see $OUT/ursa-cp.log"

PATHS="explicit=127.0.0.1:15100,transparent=$vip:80,direct=${ADDR[srv]}:7070,passthrough=${ADDR[srv]}:7070"
latency() { on cli "$BIN/tpbench" latency -paths "$PATHS" -unredirected direct ${LATENCY_FLAGS:-} "$@"; }
log "waiting until every path answers (echo's VIP is $vip)"
for _ in $(seq 300); do
	latency -n 1 -warmup 0 -max-errors 0 >/dev/null 2>&1 && break
	sleep 0.1
done
latency -n 1 -warmup 0 -max-errors 0 >/dev/null || die "a path does not answer; see $OUT/*.log"

log "measuring: $SAMPLES connections per path (after $WARMUP), one at a time, paths interleaved"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
counters() { # the client's TCP and conntrack counters and its sidecar's metrics, to $OUT
	on cli nstat -asz >"$OUT/nstat-client.txt" 2>&1 || true
	on cli cat /proc/net/stat/nf_conntrack >"$OUT/conntrack-stat-client.txt" 2>&1 || true
	on cli curl -sf http://127.0.0.1:9901/metrics >"$OUT/metrics-client.txt" || true
	on srv curl -sf http://127.0.0.1:9901/metrics >"$OUT/metrics-server.txt" || true
}
latency -n "$SAMPLES" -warmup "$WARMUP" >"$OUT/results.md" || { counters; die "the measurement failed; see $OUT"; }
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
counters
# Which listener took the connections: proof that transparent (and
# passthrough) went through ursa:outbound and explicit through its own.
grep '^ursa_dp_connections_total' "$OUT/metrics-client.txt" >"$OUT/connections.txt" || true

echo
echo "tpbench, $SAMPLES connections per path, mTLS $mtls, $SERVICES further services; $(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo
cat "$OUT/results.md"
echo
echo "the client sidecar's connections by listener:"
sed 's/^/    /' "$OUT/connections.txt"
if [[ $KEEP == 1 ]]; then echo; echo "work files: $OUT"; fi
