#!/usr/bin/env bash
# Installs the Debian 12 packages Airlock needs to build, test and run.
# Idempotent: when everything is present it prints nothing and touches nothing.
# Usage: scripts/install-deps.sh [--with-bench] [--with-fuzz]
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl python3 ccache
  libboost-dev libssl-dev libsqlite3-dev sqlite3
  nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libtomlplusplus-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-format
  libarchive-dev libseccomp-dev libcap-dev crun runc busybox-static
  # The PostgreSQL store (libpq); its tests start a private server with initdb and pg_ctl
  # (tests/support/postgres_server.h), so Debian's own cluster is neither needed nor used.
  # haproxy: for the replica chaos test (several control planes behind one address; issue 12).
  libpq-dev postgresql haproxy
  # The S3 blob store's tests run s3rver, an S3 emulator from the npm registry
  # (tests/files/s3rver.sh), and make its TLS certificate with openssl.
  nodejs npm openssl
  # The microvm backend: QEMU, mkfs.erofs for the images' disks, lz4 to unpack Debian's guest
  # kernel (scripts/guest-kernel.sh, run below).
  qemu-system-x86 erofs-utils lz4
  # The built-in browser image (images/browser-image.sh) and the agent's browser tools' tests:
  # Debian's Chromium and the fonts pages are drawn with.
  # zlib: the browser test reads the screenshot's PNG whole.
  chromium fonts-liberation fonts-dejavu-core zlib1g-dev
)
for arg in "$@"; do
  case "$arg" in
    # time: the benchmarks report the load generator's own CPU per request.
    # tinyproxy: bench/egress.py's baseline for the egress gateway.
    --with-bench) packages+=(wrk nginx time tinyproxy) ;;
    # scripts/fuzz.sh: libFuzzer and the sanitizer runtimes come with clang (g++ has none).
    --with-fuzz) packages+=(clang-16 libclang-rt-16-dev) ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  # A NodeSource nodejs bundles npm and conflicts with Debian's npm package.
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then
    continue
  fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# The microvm guest kernel comes from Debian's packages too, unpacked outside the tree.
guest_kernel() { "$(dirname "$0")/guest-kernel.sh"; }
[ ${#missing[@]} -eq 0 ] && { guest_kernel; exit 0; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
guest_kernel
