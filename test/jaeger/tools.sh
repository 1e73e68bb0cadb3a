#!/usr/bin/env bash
# The tracing test rig's collector: Jaeger's all-in-one `jaeger` binary (OTLP
# gRPC/HTTP and Zipkin receivers, in-memory storage, the query API
# /api/traces), built from the Go module proxy into a version-keyed folder
# outside the clone and reused by every later run.
#
#   test/jaeger/tools.sh          build it when missing, then print the folder
#   test/jaeger/tools.sh --dir    print the folder only (nothing is built)
#
# The folder is ${XDG_CACHE_HOME:-$HOME/.cache}/ursa-jaeger/<key>, the key
# naming the Jaeger and Go versions and the platform. It appears whole or not
# at all (built into <key>.tmp, then renamed). Concurrent runs wait on a lock.
# The e2e tests read the folder from URSA_JAEGER_DIR and skip their tracing
# part when it is unset and the binary is not in the cache.
#
# The wrapper module beside this script (go.mod, go.sum) pins every
# dependency, so the build is reproducible and never edits them
# (-mod=readonly). Cost on 2 busy cores: see test/BENCHMARKS.md (cold build)
# — cached, well under a second.
set -euo pipefail

JAEGER=v1.75.0 # the newest release the module proxy serves as approved here

here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

key="jaeger-$JAEGER.$(go env GOVERSION).$(go env GOOS)-$(go env GOARCH)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/ursa-jaeger"
dir="$root/$key"

log() { echo "jaeger-tools: $*" >&2; }

# main is a function so that bash has read all of it before it runs: the
# file may change under a long build (a checkout), and bash reads a script
# as it goes.
main() {
	case "${1:-}" in
	--dir)
		echo "$dir"
		exit 0
		;;
	"") ;;
	*)
		echo "usage: $0 [--dir]" >&2
		exit 2
		;;
	esac
	if [ ! -x "$dir/jaeger" ]; then
		mkdir -p "$root"
		exec 9>"$root/.lock"
		flock -n 9 || { log "waiting for another build (lock $root/.lock)"; flock 9; }
		if [ ! -x "$dir/jaeger" ]; then
			local start=$SECONDS tmp="$dir.tmp"
			mkdir -p "$tmp"
			log "building jaeger $JAEGER (the first build on a machine takes minutes)"
			(cd "$here" && go build -p "$(nproc)" -trimpath -ldflags="-s -w" -o "$tmp/jaeger.part" github.com/jaegertracing/jaeger/cmd/jaeger)
			mv "$tmp/jaeger.part" "$tmp/jaeger"
			rm -rf "$dir"
			mv "$tmp" "$dir"
			log "built in $((SECONDS - start)) s into $dir"
		fi
	fi
	echo "$dir"
}

main "$@"
exit
