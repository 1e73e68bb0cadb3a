#!/usr/bin/env bash
# The Kubernetes test rig's binaries: kube-apiserver, etcd, kubectl,
# kube-controller-manager (Deployments make Pods, namespaces get their default
# ServiceAccount), helm and controller-gen, built from the Go module proxy (no other network) into a
# version-keyed folder outside the clone, and reused by every later run.
#
#   test/k8srig/tools.sh          build what is missing, then print the folder
#   test/k8srig/tools.sh --dir    print the folder only (nothing is built)
#   test/k8srig/tools.sh regen    rewrite the wrapper modules after a version
#                                 bump below (needs the module proxy)
#
# The folder is ${XDG_CACHE_HOME:-$HOME/.cache}/ursa-k8s-tools/<key>, the key
# naming every version below, the Go version and the platform. It appears
# whole or not at all: the binaries are built into <key>.tmp, which is
# renamed when all are there. A build cut short (a CI timeout) resumes from
# the binaries <key>.tmp already holds. Concurrent runs wait on a lock.
#
# Cost, measured on 2 busy cores (see test/k8srig/README.md): cached, well
# under a second; cold, about 20 minutes (kube-apiserver alone is 11), of
# which the module downloads are under a minute. The go build cache grows by
# about 5 GB; the folder itself is about 330 MB.
#
# Each tool is built from a committed wrapper module under test/k8srig/
# (kube, etcd, helm, cgen): their go.sum files pin every dependency, so a
# build is reproducible and never edits them (-mod=readonly).
set -euo pipefail

K8S=v1.37.2   # kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes; staging v0.37.2)
ETCD=v3.7.3   # etcd server (Kubernetes 1.37 is tested against 3.7)
HELM=v4.3.2   # helm, for `helm lint` and `helm template` of the chart
CGEN=v0.23.0  # controller-gen (sigs.k8s.io/controller-tools), CRDs from the Go types

here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

key="k8s-$K8S.etcd-$ETCD.helm-$HELM.cgen-$CGEN.$(go env GOVERSION).$(go env GOOS)-$(go env GOARCH)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/ursa-k8s-tools"
dir="$root/$key"
tools=(kube-apiserver kube-controller-manager etcd kubectl helm controller-gen)

log() { echo "k8s-tools: $*" >&2; }

regen() {
	export GOFLAGS=-mod=mod
	local stg=v0.${K8S#v1.} mod
	mod=$(go mod download -json "k8s.io/kubernetes@$K8S" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
	# k8s.io/kubernetes replaces each staging module with ./staging/...; keep
	# the ones it requires (k8s.io/sample-* are not served) at v0.<minor>.<patch>.
	{
		echo "// Wrapper module: builds kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes"
		echo "// (its module zip has no staging/, so each staging module it requires is"
		echo "// replaced by its published release). Regenerate with ../tools.sh regen."
		printf 'module ursa-k8srig/kube\n\ngo 1.26.0\n\n'
		printf 'tool (\n\tk8s.io/kubernetes/cmd/kube-apiserver\n\tk8s.io/kubernetes/cmd/kube-controller-manager\n\tk8s.io/kubernetes/cmd/kubectl\n)\n\n'
		printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$K8S"
		awk -v v="$stg" '
			/^require[[:space:]]*\(/ {inreq=1; next}
			inreq && /^\)/ {inreq=0}
			inreq && $1 ~ /^k8s\.io\// {req[$1]=1}
			$2=="=>" && $3 ~ /^\.\/staging\// && ($1 in req) {printf "\t%s => %s %s\n", $1, $1, v}
		' "$mod"
		echo ")"
	} >"$here/kube/go.mod"
	rm -f "$here/kube/go.sum"
	(cd "$here/kube" && go mod tidy)
	wrap etcd "builds etcd (its server module replaces its siblings with\n// ../ paths, so \`go install\` refuses it; a tool line here does not)." \
		"go.etcd.io/etcd/server/v3@$ETCD"
	wrap helm "pins helm (for \`helm lint\` and \`helm template\` of the chart)." \
		"helm.sh/helm/v4/cmd/helm@$HELM"
	wrap cgen "pins controller-gen (CRDs generated from the Go types)." \
		"sigs.k8s.io/controller-tools/cmd/controller-gen@$CGEN"
	log "wrappers regenerated; commit test/k8srig/*/go.{mod,sum}"
}

# wrap NAME COMMENT TOOL@VERSION: a wrapper module whose only tool is TOOL.
wrap() {
	printf "// Wrapper module: $2\nmodule ursa-k8srig/$1\n\ngo 1.26.0\n" >"$here/$1/go.mod"
	rm -f "$here/$1/go.sum"
	(cd "$here/$1" && go get -tool "$3" && go mod tidy)
}

# build NAME WRAPPER PACKAGE [LDFLAGS]: one binary into $tmp, atomically.
build() {
	local name=$1 wrapper=$2 pkg=$3 ldflags="-s -w ${4:-}" start=$SECONDS
	if [ -x "$tmp/$name" ]; then
		log "$name: already built in $tmp (resuming)"
		return
	fi
	log "$name: building $pkg (the first build on a machine takes minutes)"
	(cd "$here/$wrapper" && go build -p "$(nproc)" -trimpath -ldflags="$ldflags" -o "$tmp/$name.part" "$pkg")
	mv "$tmp/$name.part" "$tmp/$name"
	log "$name: built in $((SECONDS - start)) s"
}

# main is a function so that bash has read all of it before it runs: the
# file may change under a 20-minute build (a checkout), and bash reads a
# script as it goes.
main() {
	case "${1:-}" in
	--dir)
		echo "$dir"
		exit 0
		;;
	regen)
		regen
		exit 0
		;;
	"") ;;
	*)
		echo "usage: $0 [--dir | regen]" >&2
		exit 2
		;;
	esac

	have_all() {
		local t
		for t in "${tools[@]}"; do [ -x "$dir/$t" ] || return 1; done
	}

	if ! have_all; then
		mkdir -p "$root"
		exec 9>"$root/.lock"
		flock -n 9 || { log "waiting for another build (lock $root/.lock)"; flock 9; }
		if ! have_all; then
			start=$SECONDS
			tmp="$dir.tmp"
			mkdir -p "$tmp"
			rm -f "$tmp"/*.part
			# A complete folder of the same key that lacks a tool added since:
			# its binaries are the same versions, so only the new one is built.
			[ -d "$dir" ] && cp -n "$dir"/* "$tmp"/ 2>/dev/null || true
			# Without these -X flags the apiserver reports v0.0.0-master+$Format:%H$.
			minor=${K8S#v1.}
			minor=${minor%%.*}
			kv=""
			for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
				kv="$kv -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
			done
			build etcd etcd go.etcd.io/etcd/server/v3
			build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$kv"
			build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$kv"
			build kubectl kube k8s.io/kubernetes/cmd/kubectl "$kv"
			build helm helm helm.sh/helm/v4/cmd/helm "-X helm.sh/helm/v4/internal/version.version=$HELM"
			build controller-gen cgen sigs.k8s.io/controller-tools/cmd/controller-gen
			rm -rf "$dir"
			mv "$tmp" "$dir"
			log "all built in $((SECONDS - start)) s into $dir"
		fi
	fi
	echo "$dir"
}

main "$@"
exit
