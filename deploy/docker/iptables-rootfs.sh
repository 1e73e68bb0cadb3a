#!/bin/sh
# iptables-rootfs.sh DIR: copies into DIR what iptables-save and
# iptables-restore (and the ip6tables pair) need on a Debian system with the
# iptables package, apart from glibc itself: the nft backend's binary with its
# four names, the shared libraries it and its extension modules load, and
# the modules. deploy/docker/Dockerfile adds DIR to a distroless image that
# has glibc (distroless/base), for the pods' init container that installs the
# transparent proxy (ursa-dp install-transparent-proxy). Paths are resolved
# (/usr/lib/..., never the /lib symlink of a merged /usr) so that copying DIR
# onto the image's root adds files and replaces no directory.
set -eu
dir=${1:?usage: iptables-rootfs.sh DIR}
bin=$(readlink -f /usr/sbin/iptables-restore)          # /usr/sbin/xtables-nft-multi
case $bin in */xtables-nft-multi) ;; *) echo "iptables-rootfs.sh: $bin is not the nft backend" >&2; exit 1 ;; esac
mods=$(dirname "$(readlink -f "$(ls /usr/lib/*/xtables/libxt_REDIRECT.so | head -n1)")")

copy() { mkdir -p "$dir$(dirname "$1")" && cp -L "$1" "$dir$1"; }

copy "$bin"
# glibc's own libraries (libc, libm, the loader) are the image's.
ldd "$bin" "$mods"/*.so | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
	real=$(readlink -f "$lib")
	case $(basename "$real") in
	libc.so.* | libm.so.* | ld-linux* | libc-* | libm-*) continue ;;
	esac
	copy "$real"
	# The soname the binaries ask for, beside the file it names.
	[ "$(basename "$lib")" = "$(basename "$real")" ] || ln -sf "$(basename "$real")" "$dir$(dirname "$real")/$(basename "$lib")"
done
mkdir -p "$dir$mods"
cp -L "$mods"/*.so "$dir$mods/"
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf "$(basename "$bin")" "$dir/usr/sbin/$name"
done
