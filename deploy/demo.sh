#!/usr/bin/env bash
# make demo: a live two-zone mesh on this machine, in-memory, on loopback.
# A global CP, two zone CPs with an ingress each, billing in both zones and a
# web sidecar in zone-1 through which you call billing.mesh. It starts
# nothing unless every port it needs is free, gives up on any wait after
# URSA_DEMO_TIMEOUT seconds saying what it waited for, and stops everything it
# started on Ctrl-C, SIGTERM, SIGHUP, a failed step, or the exit of any of its
# processes. (Ctrl-C reaches it as the terminal's foreground process group;
# make itself does not pass on a SIGINT sent to make alone, only SIGTERM.)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "make demo needs curl (apt-get install -y curl)" >&2; exit 1; }
BIN=bin
# How long any one wait may take before the demo gives up and says what it
# waited for. On a busy machine, raise it: URSA_DEMO_TIMEOUT=120 make demo.
TIMEOUT=${URSA_DEMO_TIMEOUT:-60}

# Every port the demo binds, with what binds it: "PROTO PORT ADDRESSES WHAT".
# ADDRESSES is "lo" (127.0.0.1) or "vip" (the VIP ranges below), and a
# listener on the wildcard address counts as taking the port too.
PORTS=(
  "tcp 5681 lo the global CP's REST API"
  "tcp 5682 lo the global CP's REST API over HTTPS"
  "tcp 5685 lo the global CP's KDS server"
)
for z in 1 2; do
  PORTS+=(
    "tcp ${z}5681 lo zone-$z's REST API"
    "tcp ${z}5682 lo zone-$z's REST API over HTTPS"
    "tcp ${z}5678 lo zone-$z's xDS server"
    "tcp ${z}5653 lo zone-$z's DNS server"
    "udp ${z}5653 lo zone-$z's DNS server"
    "tcp ${z}0001 lo zone-$z's ingress"
    "tcp ${z}9900 lo zone-$z's ingress admin (/ready, /metrics)"
    "tcp ${z}8080 lo the billing app in zone-$z"
    "tcp ${z}8080 vip billing.mesh's VIP listener at the service port, zone-$z"
    "tcp ${z}0011 lo billing-$z's sidecar inbound"
    "tcp ${z}9911 lo billing-$z's sidecar admin (/ready, /metrics)"
  )
done
PORTS+=(
  "tcp 10012 lo web-1's sidecar inbound"
  "tcp 19912 lo web-1's sidecar admin (/ready, /metrics)"
  "tcp 80 vip the sidecars' VIP listeners (127.240.0.0/16, 127.241.0.0/16)"
)

# check_ports stops the demo, before it starts anything, when a port it needs
# is taken, naming the port, who has it (when ss can tell) and what needed it.
check_ports() {
  command -v ss >/dev/null || { echo "demo: cannot check ports without ss (apt-get install -y iproute2)" >&2; exit 1; }
  local listening busy=0 e proto port where what line addr pat
  listening=$( { ss -Hltnp 2>/dev/null | sed 's/^/tcp /'; ss -Hlunp 2>/dev/null | sed 's/^/udp /'; } )
  for e in "${PORTS[@]}"; do
    read -r proto port where what <<<"$e"
    pat='^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\])$'
    [ "$where" = vip ] && pat='^(127\.24[01]\.[0-9]+\.[0-9]+)$'
    while read -r line; do
      [ -n "$line" ] || continue
      # ss columns, after our protocol prefix: proto state recv-q send-q local peer [process]
      addr=$(awk '{print $5}' <<<"$line")
      [ "${addr##*:}" = "$port" ] || continue
      addr=${addr%:*}; addr=${addr%\%*}
      if [[ $addr =~ $pat || $addr =~ ^(0\.0\.0\.0|\*|\[::\])$ ]]; then
        echo "demo: port $port/$proto is already in use at $addr$(sed -n 's/.*users:((\("[^"]*"\),pid=\([0-9]*\).*/ by \1 (pid \2)/p' <<<"$line"); it is needed for $what" >&2
        busy=1
      fi
    done < <(grep "^$proto " <<<"$listening" || true)
  done
  if [ "$busy" = 1 ]; then
    echo "demo: nothing was started; stop what holds those ports (ss -ltnup shows them) and run make demo again" >&2
    exit 1
  fi
}
check_ports

DIR=$(mktemp -d /tmp/ursa-demo.XXXX)
NAMES=()
PIDS=()
# stop ends every process the demo started: SIGTERM, then SIGKILL for any
# still running after 10 s. Signals are ignored meanwhile so that a second
# Ctrl-C cannot leave processes behind.
stop() {
  local status=$1
  trap '' INT TERM HUP
  trap - EXIT
  # jobs -p also has a process started just before the signal came, whose
  # pid bg had not recorded yet.
  local all=("${PIDS[@]}") p left i
  for p in $(jobs -p); do all+=("$p"); done
  if [ ${#all[@]} -gt 0 ]; then
    echo; echo "stopping the demo..."
    for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 1 100); do
      left=()
      for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
      [ ${#left[@]} -eq 0 ] && break
      sleep 0.1
    done
    for p in "${left[@]}"; do
      echo "demo: pid $p did not stop on SIGTERM within 10s; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
  fi
  echo "logs were in $DIR"
  exit "$status"
}
trap 'stop 130' INT
trap 'stop 143' TERM
trap 'stop 129' HUP
trap 'stop $?' EXIT

bg() { # bg NAME CMD...: run in the background, logging to $DIR/NAME.log
  local name=$1; shift
  "$@" >"$DIR/$name.log" 2>&1 &
  NAMES+=("$name")
  PIDS+=($!)
}
# check_alive stops the demo when a process it started has exited.
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "demo: ${NAMES[$i]} (pid ${PIDS[$i]}) exited; the end of $DIR/${NAMES[$i]}.log:" >&2
      tail -n 20 "$DIR/${NAMES[$i]}.log" >&2 || true
      exit 1
    fi
  done
}
wait_for() { # wait_for WHAT CMD...: run CMD every 0.1 s until it succeeds, for at most $TIMEOUT s
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    check_alive
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: gave up after ${TIMEOUT}s waiting for $what (logs in $DIR; URSA_DEMO_TIMEOUT sets the limit)" >&2
      exit 1
    fi
    sleep 0.1
  done
}
http_ok() { curl -sf -o /dev/null --max-time 2 "$1"; }
ctl() { timeout --foreground "$TIMEOUT" "$BIN/ursactl" "$@"; } # bounded, like every wait

bg global "$BIN/ursa-cp" global --api-addr 127.0.0.1:5681 --api-tls-addr 127.0.0.1:5682 --kds-addr 127.0.0.1:5685
wait_for "the global CP to be ready (GET http://127.0.0.1:5681/readyz)" http_ok http://127.0.0.1:5681/readyz
curl -sf --max-time 10 http://127.0.0.1:5681/kds/ca.pem >"$DIR/kds-ca.pem"
export URSA_API_SERVER=http://127.0.0.1:5681

for z in 1 2; do
  ctl generate zone-token --zone "zone-$z" >"$DIR/zone-$z.token"
  bg "zone-$z" "$BIN/ursa-cp" zone --zone "zone-$z" --api-addr "127.0.0.1:${z}5681" --api-tls-addr "127.0.0.1:${z}5682" --xds-addr "127.0.0.1:${z}5678" \
    --dns-addr "127.0.0.1:${z}5653" --vip-cidr "127.24$((z - 1)).0.0/16" \
    --global-kds-address grpcs://127.0.0.1:5685 --global-kds-ca-file "$DIR/kds-ca.pem" --zone-token-file "$DIR/zone-$z.token" \
    --xds-allow-loopback-dataplanes  # every "host" of the demo is this one, so its proxies register 127.0.0.1
  wait_for "zone-$z's CP to be ready (GET http://127.0.0.1:${z}5681/readyz)" http_ok "http://127.0.0.1:${z}5681/readyz"
  # The CA the zone's xDS certificate chains to: its proxies verify the CP with it.
  curl -sf --max-time 10 "http://127.0.0.1:${z}5681/xds/ca.pem" >"$DIR/xds-ca-$z.pem"
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
  wait_for "mesh default to reach zone-$z over KDS (GET http://127.0.0.1:${z}5681/meshes/default)" http_ok "http://127.0.0.1:${z}5681/meshes/default"
done

dataplane() { # dataplane ZONE NAME SERVICE INBOUND_PORT APP_PORT ADMIN_PORT
  cat >"$DIR/$2.yaml" <<YAML
type: Dataplane
mesh: default
name: $2
networking:
  address: 127.0.0.1
  inbound:
  - {port: $4, servicePort: $5, tags: {ursa.io/service: $3, ursa.io/protocol: http}}
YAML
  # Its zone CP admits it only with a dataplane token for its service.
  ctl --api-server "http://127.0.0.1:${1}5681" generate dataplane-token --mesh default --service "$3" >"$DIR/$2.token"
  bg "$2" "$BIN/ursa-dp" run --cp-address "grpcs://127.0.0.1:${1}5678" --ca-cert-file "$DIR/xds-ca-$1.pem" \
    --dataplane-file "$DIR/$2.yaml" --token-file "$DIR/$2.token" --admin-addr "127.0.0.1:$6" \
    --dns-addr "" # the demo's sidecars share one host: one DNS port among them
}
ingress() { # ingress ZONE
  cat >"$DIR/ingress-$1.yaml" <<YAML
type: ZoneIngress
name: ingress
zone: zone-$1
networking: {address: 127.0.0.1, port: ${1}0001, advertisedAddress: 127.0.0.1, advertisedPort: ${1}0001}
YAML
  # An ingress needs an ingress token of its zone.
  ctl --api-server "http://127.0.0.1:${1}5681" generate ingress-token --zone "zone-$1" >"$DIR/ingress-$1.token"
  bg "ingress-$1" "$BIN/ursa-dp" ingress --cp-address "grpcs://127.0.0.1:${1}5678" --ca-cert-file "$DIR/xds-ca-$1.pem" \
    --zone-ingress-file "$DIR/ingress-$1.yaml" --token-file "$DIR/ingress-$1.token" --admin-addr "127.0.0.1:${1}9900"
}

for z in 1 2; do
  bg "billing-app-$z" "$BIN/ursa-demo" --addr "127.0.0.1:${z}8080" --message "billing in zone-$z"
  dataplane "$z" "billing-$z" billing "${z}0011" "${z}8080" "${z}9911"
  ingress "$z"
done
dataplane 1 web-1 web 10012 18000 19912
for z in 1 2; do
  wait_for "billing-$z's sidecar to be ready (GET http://127.0.0.1:${z}9911/ready)" http_ok "http://127.0.0.1:${z}9911/ready"
  wait_for "zone-$z's ingress to be ready (GET http://127.0.0.1:${z}9900/ready)" http_ok "http://127.0.0.1:${z}9900/ready"
done
wait_for "web-1's sidecar to be ready (GET http://127.0.0.1:19912/ready)" http_ok http://127.0.0.1:19912/ready

VIP=""
billing_answers() { # sets VIP; succeeds once billing answers on it through web's sidecar
  VIP=$(curl -sf --max-time 2 http://127.0.0.1:15681/meshes/default/virtual-ips/vips | sed -n 's/.*"billing":{"ip":"\([0-9.]*\)".*/\1/p')
  [ -n "$VIP" ] && http_ok "http://$VIP/"
}
wait_for "billing.mesh to answer on its VIP through web's sidecar (zone-1's /meshes/default/virtual-ips/vips, then GET http://VIP/)" billing_answers

cat <<EOF2

  Ursa demo is running: a global CP, zone-1 and zone-2 with an ingress each,
  billing in both zones, and web's sidecar in zone-1. Logs: $DIR

  Try, in another terminal:

    export URSA_API_SERVER=http://127.0.0.1:5681
    bin/ursactl inspect zones
    bin/ursactl --api-server http://127.0.0.1:15681 inspect dataplanes
    curl -s http://127.0.0.1:15681/metrics | grep -E '^ursa_(xds_proxies|leader|kds_global_connected)'   # zone-1's CP

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

    # billing speaks HTTP (ursa.io/protocol: http), so routes can match requests:
    # x-zone: 2 goes to zone-2, the rest to zone-1; 503s are retried elsewhere:
    printf 'type: TrafficRoute\nmesh: default\nname: billing\nspec:\n  destination: {ursa.io/service: billing}\n  http:\n  - match: {headers: {x-zone: {exact: "2"}}}\n    split: [{weight: 100, tags: {ursa.io/zone: zone-2}}]\n  split:\n  - {weight: 100, tags: {ursa.io/zone: zone-1}}\n---\ntype: Retry\nmesh: default\nname: billing\nspec:\n  sources: [{match: {ursa.io/service: "*"}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n  http: {numRetries: 3, retryOn: [5xx, connect-failure]}\n' | bin/ursactl apply -f -
    curl -s -H 'x-zone: 2' http://$VIP/; curl -s http://$VIP/   # zone-2, then zone-1
    curl -s http://127.0.0.1:19912/metrics | grep '^ursa_dp_http_requests_total'   # per route, zone and code

    # Delete the route (and the retry) to go back to local first:
    bin/ursactl delete traffic-route billing -m default; bin/ursactl delete retry billing -m default

  Ctrl-C stops everything.
EOF2
# Run until Ctrl-C (or SIGTERM), or until one of the processes exits.
while true; do
  wait -n || true
  check_alive
done
