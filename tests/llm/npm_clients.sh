#!/usr/bin/env bash
# The official LLM client libraries for Node.js, for the tests that run agents written against
# them, unchanged, inside real sandboxes (issue 14; tests/e2e/agent_e2e_test.cc). Installed from
# the npm registry into a cache outside the repository, never into the work tree, pinned.
#
# Usage:
#   npm_clients.sh install
#       Installs them once into the cache (idempotent, safe to run concurrently).
#   npm_clients.sh image OUT.tar NAME:TAG AGENTS_DIR
#       Installs if needed, then builds an OCI image (images/make-image.sh): busybox, this
#       host's node with the libraries it links, the clients in /opt/agent/node_modules, and
#       the *.mjs of AGENTS_DIR in /opt/agent (a session runs one: `node /opt/agent/X.mjs`).
# Exit status 77: it cannot be set up here (no node or npm, the registry is unreachable); the
# reason is on stderr.
set -euo pipefail

readonly packages=("openai@7.55.0" "@anthropic-ai/sdk@1.10.0" "@openai/agents@0.20.0" "zod@4.6.7")
cache="${AIRLOCK_NPM_CLIENTS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/airlock/npm-clients}"
readonly cache
here="$(cd "$(dirname "$0")" && pwd)"
readonly here

skip() {
  echo "npm_clients: $*" >&2
  exit 77
}

# The marker names the packages: a changed pin installs again. It is written once npm has
# finished, so that a concurrent reader never sees half an install.
install() {
  local marker
  marker="$cache/.installed-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
  [ -f "$marker" ] && return 0
  command -v node >/dev/null || skip "node is not installed (scripts/install-deps.sh)"
  command -v npm >/dev/null || skip "npm is not installed (scripts/install-deps.sh)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  [ -f "$marker" ] && return 0
  echo "npm_clients: installing ${packages[*]} into $cache" >&2
  if ! (cd "$cache" && npm install --no-audit --no-fund --no-save --silent \
    --prefix "$cache" "${packages[@]}" >"$cache/npm.log" 2>&1); then
    tail -5 "$cache/npm.log" >&2
    skip "npm install failed (is the registry reachable?)"
  fi
  touch "$marker"
}

image() {
  local out="$1" name="$2" agents="$3"
  install
  local node
  node="$(readlink -f "$(command -v node)")"
  local args=(--out "$out" --name "$name" --busybox
    --add "$node:/usr/bin/node:0755"
    --add-dir "$cache/node_modules:/opt/agent/node_modules"
    --entrypoint '["/usr/bin/node"]' --workdir /home/sandbox)
  local agent
  for agent in "$agents"/*.mjs; do
    args+=(--add "$agent:/opt/agent/$(basename "$agent"):0644")
  done
  # The shared libraries node links, where the dynamic loader looks for them.
  local lib
  while read -r lib; do
    args+=(--add "$(readlink -f "$lib"):$lib:0755")
  done < <(ldd "$node" | grep -o '/[^ ]*' | sort -u)
  MAKE_IMAGE_GZIP_LEVEL=1 "$here/../../images/make-image.sh" "${args[@]}"
}

case "${1:-}" in
  install) install ;;
  image)
    [ $# -eq 4 ] || { echo "usage: $0 image OUT.tar NAME:TAG AGENTS_DIR" >&2; exit 2; }
    image "$2" "$3" "$4"
    ;;
  *) echo "usage: $0 install | image OUT.tar NAME:TAG AGENTS_DIR" >&2; exit 2 ;;
esac
