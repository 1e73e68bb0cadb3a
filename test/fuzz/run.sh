#!/usr/bin/env bash
# Runs every fuzz target in the repository, each for FUZZTIME (default 30s):
# every `func FuzzX(f *testing.F)` in a _test.go file, found afresh on each
# run, so a new target is fuzzed without being listed anywhere. `make fuzz`
# calls it. Stops at the first target that fails; the failing input is in
# that package's testdata/fuzz/FuzzX/, where `go test` replays it from then
# on.
# Usage: test/fuzz/run.sh [REGEXP]   (only the targets whose "dir name"
#        matches, e.g. '^pkg/proxy ' or 'FuzzH1')
# Knobs: FUZZTIME=30s, GO=go.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
FUZZTIME=${FUZZTIME:-30s}
GO=${GO:-go}
match=${1:-.}

# "dir name" for each target, in a stable order.
targets=$(git ls-files '*_test.go' | xargs grep -H -E '^func Fuzz[A-Za-z0-9_]+\(' |
	sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)\(.*#\1 \2#; s#^[^/ ]+_test\.go:func (Fuzz[A-Za-z0-9_]+)\(.*#. \1#' |
	sort -u | awk -v m="$match" '($1 " " $2) ~ m')
[[ -n $targets ]] || { echo "no fuzz target matches $match" >&2; exit 1; }
n=$(wc -l <<<"$targets")
echo "fuzzing $n targets for $FUZZTIME each"
while read -r dir name; do
	echo "== ./$dir $name"
	"$GO" test "./$dir" -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME"
done <<<"$targets"
