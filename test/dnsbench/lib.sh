# Shared by the DNS load tests (run.sh, dp.sh): sourced, not run. Before
# sourcing, set TAG (the log prefix), ADDR and API; OUT may name a folder to
# keep the work files in.
#   work folder OUT (kept when given, else removed on exit), PIDS (killed on
#   exit), log/die, need TOOL…, vip_table, make_services (needs SERVICES and
#   ROOT/bin/ursactl), answers PORT, stat FILE FIELD.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
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
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $KEEP == 0 ]]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { log "$*"; exit 1; }

need() { # need TOOL…: die naming the first one missing
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool not found"
	done
}

# name<TAB>ip of every live VIP, sorted by name
vip_table() {
	curl -sf "$API/meshes/default/virtual-ips" |
		jq -r '.items[].entries | to_entries[] | select(.value.releasedAt == null) | "\(.key)\t\(.value.ip)"' |
		sort
}

# make_services: $SERVICES services (Dataplanes svc-1…, with one ursactl apply
# to $API), then wait for their VIPs and write the table to $OUT/vips.tsv
make_services() {
	local i n
	log "creating $SERVICES services with one ursactl apply"
	{
		printf 'type: Mesh\nname: default\n'
		for i in $(seq "$SERVICES"); do
			printf -- '---\ntype: Dataplane\nmesh: default\nname: svc-%d\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: %d\n    tags: {ursa.io/service: svc-%d}\n' \
				"$i" $((20000 + i)) "$i"
		done
	} >"$OUT/services.yaml"
	"$ROOT/bin/ursactl" --api-server "$API" apply -f - <"$OUT/services.yaml" >"$OUT/apply.log"

	log "waiting for $SERVICES VIPs"
	for i in $(seq 300); do
		n=$(vip_table | wc -l)
		[[ $n -ge $SERVICES ]] && break
		sleep 0.1
	done
	[[ $n -ge $SERVICES ]] || die "only $n of $SERVICES VIPs after 30 s"
	vip_table >"$OUT/vips.tsv"
}

answers() { # answers PORT: name<TAB>ip for every query of $OUT/queries.txt, sorted
	dig @"$ADDR" -p "$1" +noall +answer +time=2 +tries=2 -f "$OUT/queries.txt" 2>/dev/null |
		awk '{ n = tolower($1); sub(/\.mesh\.$/, "", n); print n "\t" $5 }' | sort
}

# stat FILE FIELD: a figure from dnsperf's statistics
stat() {
	case $2 in
	qps) sed -n 's/^ *Queries per second: *//p' "$1" ;;
	avg) sed -n 's/^ *Average Latency (s): *\([0-9.]*\) .*/\1/p' "$1" ;;
	max) sed -n 's/^ *Average Latency (s):.*max \([0-9.]*\)).*/\1/p' "$1" ;;
	lost) sed -n 's/^ *Queries lost: *\([0-9]*\).*/\1/p' "$1" ;;
	completed) sed -n 's/^ *Queries completed: *\([0-9]*\).*/\1/p' "$1" ;;
	esac
}
