#!/usr/bin/env bash
# Builds the test image of clients that agents really use: this host's curl and Python 3 (with
# its standard library), each with the shared libraries it loads, over busybox. The egress tests
# run them inside sandboxes unchanged.
#
#   tests/security/tools-image.sh OUT.tar NAME
set -euo pipefail
out=$1
name=$2
here=$(cd "$(dirname "$0")" && pwd)
python=$(readlink -f /usr/bin/python3)
pylib=/usr/lib/$(basename "$python")

args=(--out "$out" --name "$name" --busybox --workdir /home/sandbox)
declare -A seen=()
# shellcheck source=images/host-files.sh
. "$here/../../images/host-files.sh"
for bin in /usr/bin/curl "$python"; do
  add "$bin"
  while read -r lib; do
    add "$lib"
  done < <(libs_of "$bin")
done
# Python's own extension modules load further libraries (ssl, zlib, ffi...).
while read -r lib; do
  add "$lib"
done < <(find "$pylib/lib-dynload" -name '*.so' -exec ldd {} \; 2>/dev/null |
  awk '/=> \//{print $3}' | sort -u)
args+=(--add "$python:/usr/bin/python3")
args+=(--add-dir "$pylib:$pylib")
exec "$here/../../images/make-image.sh" "${args[@]}"
