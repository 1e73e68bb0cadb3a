# Shared by the DNS load tests (run.sh, dp.sh): sourced, not run. Before
# sourcing, set TAG (the log prefix), ADDR and API; OUT may name a folder to
# keep the work files in.
#   work folder OUT (kept when given, else removed on exit), PIDS (killed on
#   exit), log/die, need TOOL…, vip_table, answers PORT, stat FILE FIELD.

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
