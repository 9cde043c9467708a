#!/usr/bin/env bash
# Builds the built-in `browser` image: the base image (busybox and the reference agent) plus
# this host's Debian `chromium` with every shared library it loads, its fonts and fontconfig.
# The agent offers its browser tools where it finds /usr/lib/chromium/chromium. Local files
# only, so building needs no registry and no network.
#
#   images/browser-image.sh OUT.tar AGENT
#
# AGENT is the stripped airlock-agent. Needs Debian's chromium (scripts/install-deps.sh).
set -euo pipefail
out=$1
agent=$2
here=$(cd "$(dirname "$0")" && pwd)
chromium_dir=/usr/lib/chromium
[ -x "$chromium_dir/chromium" ] || {
  echo "browser-image: $chromium_dir/chromium is missing; install Debian's chromium (scripts/install-deps.sh)" >&2
  exit 1
}

args=(--out "$out" --name browser:latest --busybox --workdir /home/sandbox
  --add "$agent:/usr/bin/airlock-agent:0755" --entrypoint '["/usr/bin/airlock-agent"]')
declare -A seen=()
# shellcheck source=images/host-files.sh
. "$here/host-files.sh"

# Chromium's own directory, without what a headless browser never loads: the Vulkan
# validation layer (23 MB, a developer's tool) and the UI's 2x resources. One locale.
while IFS= read -r -d '' f; do
  case "$(basename "$f")" in
    libVkLayer_khronos_validation.so* | chrome_200_percent.pak) continue ;;
  esac
  add "$f"
done < <(find "$chromium_dir" -maxdepth 1 -type f -print0)
add "$chromium_dir/locales/en-US.pak"

# Every library the binary and its own shared objects load, and NSS's modules, which it loads
# by name at run time (the certificate store for https).
declare -A libs=()
for obj in "$chromium_dir/chromium" "$chromium_dir"/*.so "$chromium_dir"/*.so.*; do
  [ -f "$obj" ] || continue
  while read -r lib; do libs[$lib]=1; done < <(libs_of "$obj")
done
for dir in /usr/lib/x86_64-linux-gnu/nss; do
  [ -d "$dir" ] || continue
  for so in "$dir"/*.so; do
    libs[$so]=1
    while read -r lib; do libs[$lib]=1; done < <(libs_of "$so")
  done
done
for so in /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/x86_64-linux-gnu/libfreeblpriv3.so \
  /usr/lib/x86_64-linux-gnu/libnssckbi.so /usr/lib/x86_64-linux-gnu/libnssdbm3.so; do
  [ -e "$so" ] && libs[$so]=1
done
for lib in "${!libs[@]}"; do add "$lib"; done

# Text needs fonts and fontconfig's configuration; https needs the system's trust store.
for dir in /etc/fonts /usr/share/fontconfig /usr/share/fonts/truetype/dejavu \
  /usr/share/fonts/truetype/liberation; do
  [ -d "$dir" ] && args+=(--add-dir "$dir:$dir")
done
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
  args+=(--add "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt")
exec "$here/make-image.sh" "${args[@]}"
