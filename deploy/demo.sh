#!/usr/bin/env bash
# make demo: a live two-zone mesh on this machine, in-memory, on loopback.
# A global CP, two zone CPs with an ingress each, billing in both zones and a
# web sidecar in zone-1 through which you call billing.mesh. Ctrl-C stops
# everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "make demo needs curl (apt-get install -y curl)" >&2; exit 1; }
BIN=bin
DIR=$(mktemp -d /tmp/ursa-demo.XXXX)
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping the demo..."
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs were in $DIR"
}
trap cleanup INT TERM EXIT

bg() { # bg NAME CMD...: run in the background, logging to $DIR/NAME.log
  local name=$1; shift
  "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_http() { # wait_http URL
  for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "timed out waiting for $1 (logs in $DIR)" >&2; exit 1
}
ctl() { "$BIN/ursactl" "$@"; }

bg global "$BIN/ursa-cp" global --api-addr 127.0.0.1:5681 --kds-addr 127.0.0.1:5685
wait_http http://127.0.0.1:5681/readyz
curl -sf http://127.0.0.1:5681/kds/ca.pem >"$DIR/kds-ca.pem"
export URSA_API_SERVER=http://127.0.0.1:5681

for z in 1 2; do
  ctl generate zone-token --zone "zone-$z" >"$DIR/zone-$z.token"
  bg "zone-$z" "$BIN/ursa-cp" zone --zone "zone-$z" --api-addr "127.0.0.1:${z}5681" --xds-addr "127.0.0.1:${z}5678" \
    --dns-addr "127.0.0.1:${z}5653" --vip-cidr "127.24$((z - 1)).0.0/16" \
    --global-kds-address grpcs://127.0.0.1:5685 --global-kds-ca-file "$DIR/kds-ca.pem" --zone-token-file "$DIR/zone-$z.token"
  wait_http "http://127.0.0.1:${z}5681/readyz"
done

ctl apply -f - >/dev/null <<'YAML'
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: everyone
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: '*'}}]
YAML
for z in 1 2; do
  until curl -sf -o /dev/null "http://127.0.0.1:${z}5681/meshes/default"; do sleep 0.05; done
done

dataplane() { # dataplane ZONE NAME SERVICE INBOUND_PORT APP_PORT ADMIN_PORT
  cat >"$DIR/$2.yaml" <<YAML
type: Dataplane
mesh: default
name: $2
networking:
  address: 127.0.0.1
  inbound:
  - {port: $4, servicePort: $5, tags: {ursa.io/service: $3}}
YAML
  bg "$2" "$BIN/ursa-dp" run --cp-address "grpc://127.0.0.1:${1}5678" --dataplane-file "$DIR/$2.yaml" --admin-addr "127.0.0.1:$6"
}
ingress() { # ingress ZONE
  cat >"$DIR/ingress-$1.yaml" <<YAML
type: ZoneIngress
name: ingress
zone: zone-$1
networking: {address: 127.0.0.1, port: ${1}0001, advertisedAddress: 127.0.0.1, advertisedPort: ${1}0001}
YAML
  bg "ingress-$1" "$BIN/ursa-dp" ingress --cp-address "grpc://127.0.0.1:${1}5678" --zone-ingress-file "$DIR/ingress-$1.yaml" --admin-addr "127.0.0.1:${1}9900"
}

for z in 1 2; do
  bg "billing-app-$z" "$BIN/ursa-demo" --addr "127.0.0.1:${z}8080" --message "billing in zone-$z"
  dataplane "$z" "billing-$z" billing "${z}0011" "${z}8080" "${z}9911"
  ingress "$z"
done
dataplane 1 web-1 web 10012 18000 19912
wait_http http://127.0.0.1:19912/ready

VIP=""
for _ in $(seq 1 200); do
  VIP=$(curl -sf http://127.0.0.1:15681/meshes/default/virtual-ips/vips | sed -n 's/.*"billing":{"ip":"\([0-9.]*\)".*/\1/p')
  [ -n "$VIP" ] && curl -sf -o /dev/null "http://$VIP/" && break
  sleep 0.05
done

cat <<EOF2

  Ursa demo is running: a global CP, zone-1 and zone-2 with an ingress each,
  billing in both zones, and web's sidecar in zone-1. Logs: $DIR

  Try, in another terminal:

    export URSA_API_SERVER=http://127.0.0.1:5681
    bin/ursactl inspect zones
    bin/ursactl --api-server http://127.0.0.1:15681 inspect dataplanes

    dig @127.0.0.1 -p 15653 billing.mesh +short     # billing's VIP in zone-1: $VIP
    curl http://$VIP/                                # via web's sidecar: billing in zone-1 (local first)

    # Send all of billing's traffic to zone-2, through its ingress, over mTLS:
    printf 'type: TrafficRoute\nmesh: default\nname: billing\nspec:\n  destination: {ursa.io/service: billing}\n  split:\n  - {weight: 100, tags: {ursa.io/zone: zone-2}}\n' | bin/ursactl apply -f -
    for i in 1 2 3; do curl -s http://$VIP/; done     # billing in zone-2

    # Drain zone-2 for 30s: the route's share fails over to zone-1 meanwhile,
    # reported live from the proxies' own load reports:
    bin/ursactl zone drill zone-2 --for 30s &
    while sleep 0.2; do curl -s http://$VIP/; done   # Ctrl-C to stop
    bin/ursactl inspect services billing

    # Delete the route to go back to local first:
    bin/ursactl delete traffic-route billing -m default

  Ctrl-C stops everything.
EOF2
wait
