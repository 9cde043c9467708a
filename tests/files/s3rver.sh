#!/usr/bin/env bash
# s3rver, an S3 emulator on Node.js, for the S3 blob store's integration tests
# (src/files/s3_store_test.cc).
#
# It is the @20minutes/s3rver fork of s3rver, pinned: the `s3rver` package itself (3.7.1, the
# last release) accepts any AWS V4 signature ("Signature version 4 calculation is
# unimplemented"), so tests against it would prove nothing about signing; the fork checks V4
# signatures in headers and in presigned URLs. It is installed from the npm registry into a
# cache outside the repository, never into the work tree.
#
# Usage:
#   s3rver.sh install
#       Installs it once into the cache (idempotent, safe to run concurrently).
#   s3rver.sh run DATA_DIR BUCKET [--service-endpoint NAME] [--tls CERT_DIR]
#                 [--allow-mismatched-signatures]
#       Installs if needed, then runs it in the foreground (exec: the pid is the server's) on
#       127.0.0.1 and a free port, with BUCKET created, and prints
#       "S3rver listening on 127.0.0.1:PORT". --service-endpoint NAME serves virtual-hosted
#       requests to BUCKET.s3.NAME. --tls serves HTTPS with a self-signed certificate made in
#       CERT_DIR (cert.pem, key.pem) for 127.0.0.1, s3.localhost and *.s3.localhost.
#       --allow-mismatched-signatures turns the signature check off (still refusing unknown
#       keys and expired URLs): the fork signs virtual-hosted requests as /BUCKET/KEY where AWS
#       signs /KEY, so it refuses every correct virtual-hosted V4 signature.
#       Credentials: access key S3RVER, secret S3RVER.
# Exit status 77: it cannot be set up here (no node or npm, the registry is unreachable); the
# reason is on stderr.
set -euo pipefail

readonly package="@20minutes/s3rver"
readonly version="5.0.0"
cache="${AIRLOCK_S3RVER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/airlock/s3rver}"
readonly cache
readonly cli="$cache/node_modules/$package/lib/cli.js"

skip() {
  echo "s3rver: $*" >&2
  exit 77
}

# The marker is written once npm has finished: a concurrent reader never sees half an install.
readonly marker="$cache/.installed-$version"
installed() { [ -f "$marker" ] && [ -f "$cli" ]; }

install() {
  command -v node >/dev/null || skip "node is not installed (scripts/install-deps.sh installs nodejs)"
  installed && return 0
  command -v npm >/dev/null || skip "npm is not installed (scripts/install-deps.sh installs it)"
  mkdir -p "$cache"
  # Test processes start in parallel: one installs, the others wait for it.
  exec 9>"$cache/.lock"
  flock 9
  if ! installed; then
    if ! timeout 120 npm install --prefix "$cache" "$package@$version" --no-audit --no-fund \
      --fetch-retries=1 --fetch-timeout=30000 >"$cache/npm.log" 2>&1; then
      skip "npm install $package@$version failed (is the npm registry reachable?); see $cache/npm.log"
    fi
    node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
      "$cache/node_modules/$package/package.json" "$version" ||
      skip "npm installed $package but not version $version; see $cache/npm.log"
    touch "$marker"
  fi
  exec 9>&-
}

make_cert() {
  local dir=$1
  [ -f "$dir/cert.pem" ] && return 0
  command -v openssl >/dev/null || skip "openssl is not installed"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=airlock s3rver test" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:s3.localhost,DNS:*.s3.localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1 ||
    skip "openssl cannot make a test certificate"
}

run() {
  [ $# -ge 2 ] || { echo "usage: s3rver.sh run DATA_DIR BUCKET [--service-endpoint NAME] [--tls CERT_DIR] [--allow-mismatched-signatures]" >&2; exit 2; }
  local data=$1 bucket=$2
  shift 2
  local args=(-d "$data" -a 127.0.0.1 -p 0 --silent)
  while [ $# -gt 0 ]; do
    case "$1" in
      --service-endpoint) args+=(--service-endpoint "$2"); shift 2 ;;
      --tls) make_cert "$2"; args+=(--key "$2/key.pem" --cert "$2/cert.pem"); shift 2 ;;
      --allow-mismatched-signatures) args+=("$1"); shift ;;
      *) echo "s3rver.sh: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  args+=(--configure-bucket "$bucket")
  install
  # The package declares a bin it does not ship: start its CLI module directly. Its listing
  # continuation tokens are DES-encrypted, which OpenSSL 3 only offers in its legacy provider.
  exec node --openssl-legacy-provider -e '
    require(process.argv[1]).parseAsync(["node", "s3rver", ...process.argv.slice(2)]).catch((e) => {
      console.error(String(e));
      process.exit(1);
    });' "$cli" "${args[@]}"
}

case "${1:-}" in
  install) install ;;
  run) shift; run "$@" ;;
  *) echo "usage: s3rver.sh install | run DATA_DIR BUCKET [...]" >&2; exit 2 ;;
esac
