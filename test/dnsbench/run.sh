#!/usr/bin/env bash
# .mesh DNS load test: Ursa's embedded resolver against CoreDNS's `hosts`
# plugin, serving the same 1,000 names with the same IPs, measured with
# dnsperf in the same run, alternating servers round by round (issue 4).
#
# Needs: go, curl, jq, dig, dnsperf (apt-get install -y dnsperf) and a CoreDNS
# binary, built outside this module:
#   (cd /tmp && GOBIN=/tmp/coredns-bin go install github.com/coredns/coredns@v1.15.0)
#
# Usage: test/dnsbench/run.sh            (from anywhere inside the repository)
# Knobs (environment):
#   COREDNS=/tmp/coredns-bin/coredns  CoreDNS binary
#   SERVICES=1000  ROUNDS=3  DURATION=20 (s)  CLIENTS=10  dnsperf -c
#   OUTSTANDING=100   dnsperf -q (its default)
#   P99=1             run dnsperf with -v and compute p50/p99/p99.9 from its
#                     per-query latencies (dnsperf 2.10 has no histogram
#                     option); P99=0 runs it plain
#   OUT=DIR           keep the work files (config, logs, dnsperf output) there;
#                     default a temporary directory, removed on exit
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

COREDNS=${COREDNS:-/tmp/coredns-bin/coredns}
SERVICES=${SERVICES:-1000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-100}
P99=${P99:-1}
API_PORT=${API_PORT:-16681}
URSA_DNS_PORT=${URSA_DNS_PORT:-15653}
COREDNS_PORT=${COREDNS_PORT:-15654}
ADDR=127.0.0.1
API=http://$ADDR:$API_PORT

TAG=dnsbench
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need go curl jq dig dnsperf
[[ -x $COREDNS ]] || die "no CoreDNS at $COREDNS (see the header of $0)"

wait_port() { # wait_port PORT PROTO(udp|tcp) PID
	local i
	for i in $(seq 100); do
		kill -0 "$3" 2>/dev/null || die "process $3 exited; see $OUT/*.log"
		if [[ $2 == tcp ]]; then
			curl -s -o /dev/null "http://$ADDR:$1/" && return 0
		else
			dig @"$ADDR" -p "$1" +time=1 +tries=1 +short mesh. SOA >/dev/null 2>&1 && return 0
		fi
		sleep 0.1
	done
	die "nothing answers on $ADDR:$1/$2"
}

# --- Ursa zone CP with $SERVICES services ------------------------------------
log "building ursa-cp and ursactl"
(cd "$ROOT" && go build -o bin/ursa-cp ./cmd/ursa-cp && go build -o bin/ursactl ./cmd/ursactl)

log "starting the zone CP (API $ADDR:$API_PORT, DNS $ADDR:$URSA_DNS_PORT)"
"$ROOT/bin/ursa-cp" zone --zone bench --api-addr "$ADDR:$API_PORT" --api-tls-addr "$ADDR:$((API_PORT + 1))" \
	--dns-addr "$ADDR:$URSA_DNS_PORT" --dns-ttl 30s --log-level warn \
	>"$OUT/ursa-cp.log" 2>&1 &
URSA_PID=$!
PIDS+=("$URSA_PID")
wait_port "$API_PORT" tcp "$URSA_PID"

make_services

# --- CoreDNS with the same names and IPs --------------------------------------
{
	printf 'mesh:%d {\n\tbind %s\n\thosts {\n' "$COREDNS_PORT" "$ADDR"
	while IFS=$'\t' read -r name ip; do
		printf '\t\t%s %s.mesh\n' "$ip" "$name"
	done <"$OUT/vips.tsv"
	# No `fallthrough`: a name the plugin does not have is answered by it.
	printf '\t\tttl 30\n\t\tno_reverse\n\t}\n}\n'
} >"$OUT/Corefile"
log "starting CoreDNS $("$COREDNS" -version | head -1) on $ADDR:$COREDNS_PORT"
(cd "$OUT" && exec "$COREDNS" -conf "$OUT/Corefile") >"$OUT/coredns.log" 2>&1 &
COREDNS_PID=$!
PIDS+=("$COREDNS_PID")
wait_port "$COREDNS_PORT" udp "$COREDNS_PID"

# --- Both must give the same answers -------------------------------------------
# The query file: every name once, A queries; every third name in upper case
# and every fifth capitalized, to exercise case-insensitive matching.
awk -F'\t' '{
	n = $1 ".mesh"
	if (NR % 3 == 0) n = toupper(n)
	else if (NR % 5 == 0) n = toupper(substr(n, 1, 1)) substr(n, 2, length(n) - 6) ".Mesh"
	print n " A"
}' "$OUT/vips.tsv" >"$OUT/queries.txt"

answers "$URSA_DNS_PORT" >"$OUT/answers-ursa.tsv"
answers "$COREDNS_PORT" >"$OUT/answers-coredns.tsv"
cmp -s "$OUT/vips.tsv" "$OUT/answers-ursa.tsv" || die "Ursa's answers differ from the VIP table ($OUT/answers-ursa.tsv)"
cmp -s "$OUT/vips.tsv" "$OUT/answers-coredns.tsv" || die "CoreDNS's answers differ from the VIP table"
log "both servers answer all $(wc -l <"$OUT/vips.tsv") names with the same IPs"
# Both answer with one A record, TTL 30, authoritative: check one.
for port in "$URSA_DNS_PORT" "$COREDNS_PORT"; do
	dig @"$ADDR" -p "$port" +noall +answer +comments SVC-3.MESH A | grep -E 'flags|IN' | sed "s/^/[dnsbench]   $port: /" >&2
done

# --- dnsperf, alternating ------------------------------------------------------
# pct FILE: p50 p99 p99.9 (seconds) from dnsperf -v per-query latencies
pct() {
	awk '$1 == ">" { print $NF }' "$1" | sort -g | awk '
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "- - -"; exit }
			split("0.50 0.99 0.999", q, " ")
			for (i = 1; i <= 3; i++) { k = int(NR * q[i] + 0.999999); if (k < 1) k = 1; printf "%s%s", v[k], (i < 3 ? " " : "\n") }
		}'
}

VFLAG=()
[[ $P99 == 1 ]] && VFLAG=(-v)
RESULTS=$OUT/results.tsv
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'round\tserver\tqps\tavg\tmax\tp50\tp99\tp999\tlost\n' >"$RESULTS"
for r in $(seq "$ROUNDS"); do
	for server in ursa coredns; do
		port=$URSA_DNS_PORT
		[[ $server == coredns ]] && port=$COREDNS_PORT
		f=$OUT/dnsperf-$r-$server.txt
		log "round $r/$ROUNDS: $server, ${DURATION}s"
		dnsperf -s "$ADDR" -p "$port" -d "$OUT/queries.txt" -c "$CLIENTS" -q "$OUTSTANDING" \
			-l "$DURATION" "${VFLAG[@]}" >"$f" 2>&1
		if [[ $P99 == 1 ]]; then read -r p50 p99 p999 < <(pct "$f"); else p50=- p99=- p999=-; fi
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$server" "$(stat "$f" qps)" "$(stat "$f" avg)" \
			"$(stat "$f" max)" "$p50" "$p99" "$p999" "$(stat "$f" lost)" >>"$RESULTS"
		if [[ $P99 == 1 ]]; then # keep the statistics, drop the 2M per-query lines
			grep -v '^> ' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
		fi
		sleep 1
	done
done

# --- Summary -------------------------------------------------------------------
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p'), $ROUNDS rounds x ${DURATION}s per server, -c $CLIENTS -q $OUTSTANDING, no -Q$([[ $P99 == 1 ]] && echo ', -v (per-query latencies)')"
echo "$SERVICES names; $(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo
awk -F'\t' -v p99="$P99" '
	function ms(s) { return s == "-" ? "-" : sprintf("%.3f", s * 1000) }
	function median(a, n,   i, j, t, b) {
		for (i = 1; i <= n; i++) b[i] = a[i]
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
		return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
	}
	NR == 1 { next }
	{
		printf "| %s | %-7s | %9.0f | %7s | %7s | %7s | %7s | %7s | %s |\n", $1, $2, $3, ms($4), ms($5), ms($6), ms($7), ms($8), $9
		k = ++n[$2]; qps[$2, k] = $3; avg[$2, k] = $4; mx[$2, k] = $5; p50[$2, k] = $6; p9[$2, k] = $7; p999[$2, k] = $8
	}
	BEGIN {
		print "| round | server | QPS | avg ms | max ms | p50 ms | p99 ms | p99.9 ms | lost |"
		print "| ----- | ------ | --- | ------ | ------ | ------ | ------ | -------- | ---- |"
	}
	END {
		print ""
		print "| median | QPS | avg ms | max ms | p50 ms | p99 ms | p99.9 ms |"
		print "| ------ | --- | ------ | ------ | ------ | ------ | -------- |"
		split("ursa coredns", s, " ")
		for (i = 1; i <= 2; i++) {
			m = s[i]; c = n[m]
			for (k = 1; k <= c; k++) { a1[k] = qps[m, k]; a2[k] = avg[m, k]; a3[k] = mx[m, k]; a4[k] = p50[m, k]; a5[k] = p9[m, k]; a6[k] = p999[m, k] }
			Q[m] = median(a1, c); A[m] = median(a2, c); X[m] = median(a3, c)
			if (p99 == 1) { P5[m] = median(a4, c); P[m] = median(a5, c); P9[m] = median(a6, c) } else { P5[m] = P[m] = P9[m] = "-" }
			printf "| %-7s | %9.0f | %7s | %7s | %7s | %7s | %7s |\n", m, Q[m], ms(A[m]), ms(X[m]), ms(P5[m]), ms(P[m]), ms(P9[m])
		}
		print ""
		printf "ursa/coredns: QPS %.2fx, average latency %.2fx", Q["ursa"] / Q["coredns"], A["ursa"] / A["coredns"]
		if (p99 == 1) printf ", p50 %.2fx, p99 %.2fx", P5["ursa"] / P5["coredns"], P["ursa"] / P["coredns"]
		printf " (latency: lower is better)\n"
	}' "$RESULTS"
if [[ $KEEP == 1 ]]; then echo; echo "work files: $OUT"; fi
