#!/usr/bin/env bash
# The Debian packages `make test` needs, installed with apt-get when missing.
# Used by `make deps` and by .ci/run, so the list lives here only.
#   deploy/deps.sh          install what is missing (as root, or through sudo)
#   deploy/deps.sh --list   print the package names, one a line
set -euo pipefail

# Each entry: "PACKAGE CHECK", where CHECK is a shell test that succeeds when
# the package's binaries are already there (then nothing is installed).
PACKAGES=(
  # PostgreSQL server binaries: the store and end-to-end tests start a
  # throwaway server from initdb/postgres (on PATH or Debian's versioned dir).
  "postgresql command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1"
  "postgresql-client command -v psql >/dev/null"
  # dig: the end-to-end DNS test queries the real resolver with it.
  "dnsutils command -v dig >/dev/null"
  # ip: the end-to-end tests of several hosts make each host a network
  # namespace joined by veth pairs.
  "iproute2 command -v ip >/dev/null"
  # systemd-analyze: test/systemd_test.go verifies deploy/systemd's units with
  # it. The package does not make systemd the init system (systemd-sysv does),
  # so it installs on a machine or container booted without systemd.
  "systemd command -v systemd-analyze >/dev/null"
  # iptables (iptables-nft): ursa-dp's transparent proxy installs its
  # redirection with iptables-save/iptables-restore, and its tests run them
  # in throwaway namespaces.
  "iptables command -v iptables-restore >/dev/null"
  # curl: the VM-zone end-to-end test's client that knows nothing of the mesh.
  "curl command -v curl >/dev/null"
  "make command -v make >/dev/null"
  "git command -v git >/dev/null"
)

if [ "${1:-}" = --list ]; then
  for e in "${PACKAGES[@]}"; do echo "${e%% *}"; done
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "deps: run as root (or install sudo) to install packages" >&2; exit 1; }
  sudo=(sudo)
fi

need=()
for e in "${PACKAGES[@]}"; do
  bash -c "${e#* }" || need+=("${e%% *}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
else
  echo "deps: all present ($(for e in "${PACKAGES[@]}"; do printf '%s ' "${e%% *}"; done | sed 's/ $//'))"
fi

# PostgreSQL refuses to run as root; when the tests run as root, the harness
# runs it as this user, which the postgresql package normally creates.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "deps: adding the postgres system user"
  "${sudo[@]}" useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi
