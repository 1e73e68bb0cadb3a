#!/usr/bin/env bash
# .mesh DNS in the data plane against the zone CP's DNS: the same 1,000 names
# answered by the zone CP's resolver and by an ursa-dp sidecar's DNS listener
# (the table the zone CP sent it), measured with dnsperf in the same run,
# alternating servers round by round (issue 13). Besides dnsperf's QPS and
# latency, each round reports the CPU time (user and system, from
# /proc/PID/stat) the server used per query answered: on a shared machine it
# moves far less than QPS does.
#
# Needs: go, curl, jq, dig, dnsperf (apt-get install -y dnsperf).
# Usage: test/dnsbench/dp.sh            (from anywhere inside the repository)
# Knobs (environment): SERVICES=1000 ROUNDS=3 DURATION=20 (s) CLIENTS=10
#   OUTSTANDING=100 (dnsperf -q), OUT=DIR keeps the work files.
# Only 127.0.0.1 (and the VIPs, in 127.240.0.0/16) is used. Every process
# started here is stopped on exit.
set -euo pipefail

SERVICES=${SERVICES:-1000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-100}
API_PORT=${API_PORT:-16691}
ZONE_DNS_PORT=${ZONE_DNS_PORT:-15663}
DP_DNS_PORT=${DP_DNS_PORT:-15664}
ADDR=127.0.0.1
API=http://$ADDR:$API_PORT

TAG=dpdnsbench
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need go curl jq dig dnsperf

log "building ursa-cp, ursactl and ursa-dp"
(cd "$ROOT" && go build -o bin/ursa-cp ./cmd/ursa-cp && go build -o bin/ursactl ./cmd/ursactl && go build -o bin/ursa-dp ./cmd/ursa-dp)

log "starting the zone CP (API $ADDR:$API_PORT, DNS $ADDR:$ZONE_DNS_PORT)"
"$ROOT/bin/ursa-cp" zone --zone bench --api-addr "$ADDR:$API_PORT" --api-tls-addr "$ADDR:$((API_PORT + 1))" \
	--xds-addr "$ADDR:$((API_PORT + 2))" --xds-allow-loopback-dataplanes --vip-cidr 127.240.0.0/16 \
	--dns-addr "$ADDR:$ZONE_DNS_PORT" --dns-ttl 30s --log-level warn >"$OUT/ursa-cp.log" 2>&1 &
PIDS+=($!)
ZONE_PID=$!
for i in $(seq 100); do
	curl -sf -o /dev/null "$API/readyz" && break
	sleep 0.1
done
curl -sf -o /dev/null "$API/readyz" || die "the zone CP is not ready; see $OUT/ursa-cp.log"

make_services

log "starting svc-1's sidecar, DNS on $ADDR:$DP_DNS_PORT"
curl -sf "$API/xds/ca.pem" >"$OUT/xds-ca.pem"
"$ROOT/bin/ursactl" --api-server "$API" generate dataplane-token --mesh default --service svc-1 >"$OUT/svc-1.token"
: >"$OUT/resolv.conf" # no resolvers: only .mesh names are asked
"$ROOT/bin/ursa-dp" run --cp-address "grpcs://$ADDR:$((API_PORT + 2))" --ca-cert-file "$OUT/xds-ca.pem" \
	--dataplane-name svc-1 --mesh default --token-file "$OUT/svc-1.token" --admin-addr "$ADDR:$((API_PORT + 3))" \
	--dns-addr "$ADDR:$DP_DNS_PORT" --resolv-conf "$OUT/resolv.conf" --log-level warn >"$OUT/ursa-dp.log" 2>&1 &
PIDS+=($!)
DP_PID=$!

awk -F'\t' '{ print $1 ".mesh A" }' "$OUT/vips.tsv" >"$OUT/queries.txt"
for i in $(seq 300); do
	answers "$DP_DNS_PORT" >"$OUT/answers-dp.tsv" || true # not listening yet
	cmp -s "$OUT/vips.tsv" "$OUT/answers-dp.tsv" && break
	sleep 0.1
done
cmp -s "$OUT/vips.tsv" "$OUT/answers-dp.tsv" || die "the sidecar's answers differ from the VIP table ($OUT/answers-dp.tsv, $OUT/ursa-dp.log)"
answers "$ZONE_DNS_PORT" >"$OUT/answers-zone.tsv"
cmp -s "$OUT/vips.tsv" "$OUT/answers-zone.tsv" || die "the zone's answers differ from the VIP table"
log "both answer all $(wc -l <"$OUT/vips.tsv") names with the same IPs"

# cpu_us PID: the CPU time (user and system) the process has used, in µs
cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1e6 / hz }' "/proc/$1/stat"; }

RESULTS=$OUT/results.tsv
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$RESULTS"
for r in $(seq "$ROUNDS"); do
	for server in zone dp; do
		port=$ZONE_DNS_PORT pid=$ZONE_PID
		[[ $server == dp ]] && port=$DP_DNS_PORT pid=$DP_PID
		f=$OUT/dnsperf-$r-$server.txt
		log "round $r/$ROUNDS: $server, ${DURATION}s"
		cpu=$(cpu_us "$pid")
		dnsperf -s "$ADDR" -p "$port" -d "$OUT/queries.txt" -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" >"$f" 2>&1
		cpu=$(($(cpu_us "$pid") - cpu))
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$server" "$(stat "$f" qps)" "$(stat "$f" avg)" "$(stat "$f" lost)" \
			"$(awk -v c="$cpu" -v n="$(stat "$f" completed)" 'BEGIN { printf "%.2f", n ? c / n : 0 }')" >>"$RESULTS"
		sleep 1
	done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p'), $ROUNDS rounds x ${DURATION}s per server, -c $CLIENTS -q $OUTSTANDING"
echo "$SERVICES names; $(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo
awk -F'\t' '
	function median(a, n,   i, j, t, b) {
		for (i = 1; i <= n; i++) b[i] = a[i]
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
		return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
	}
	BEGIN {
		print "| round | server | QPS | avg ms | lost | server CPU µs/query |"
		print "| ----- | ------ | --- | ------ | ---- | ------------------- |"
	}
	{
		printf "| %s | %-4s | %9.0f | %7.3f | %s | %5.2f |\n", $1, $2, $3, $4 * 1000, $5, $6
		k = ++n[$2]; qps[$2, k] = $3; avg[$2, k] = $4; cpu[$2, k] = $6
	}
	END {
		split("zone dp", s, " ")
		for (i = 1; i <= 2; i++) {
			m = s[i]
			for (k = 1; k <= n[m]; k++) { a1[k] = qps[m, k]; a2[k] = avg[m, k]; a3[k] = cpu[m, k] }
			Q[m] = median(a1, n[m]); A[m] = median(a2, n[m]); C[m] = median(a3, n[m])
		}
		printf "\nmedian QPS: zone %.0f, sidecar %.0f; sidecar/zone: QPS %.2fx, average latency %.2fx (lower is better)\n", Q["zone"], Q["dp"], Q["dp"] / Q["zone"], A["dp"] / A["zone"]
		printf "median server CPU per query: zone %.2f µs, sidecar %.2f µs; sidecar/zone %.2fx (lower is better)\n", C["zone"], C["dp"], C["dp"] / C["zone"]
	}' "$RESULTS"
if [[ $KEEP == 1 ]]; then echo; echo "work files: $OUT"; fi
