#!/usr/bin/env bash
# The main job (README, first command): builds airlock, starts the control plane on its
# embedded defaults (SQLite and a fresh home directory), runs one session with `airlock run`
# while its events stream to the terminal, then drains the server.
#
# The agent is examples/agents/demo_agent.sh (busybox sh + wget), run in a real sandbox: the
# `oci` backend (crun) with the built-in `base` image. It runs as root here (cgroup limits;
# the agent itself runs as an unprivileged user inside).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir=${AIRLOCK_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
echo "demo: building airlock (the first build takes a few minutes)" >&2
cmake --build "$build_dir" -j "$(nproc)" --target airlock airlock-init base_image >/dev/null
airlock="$PWD/$build_dir/bin/airlock"

home=$(mktemp -d /tmp/airlock-demo.XXXXXX)
cat >"$home/airlock.toml" <<TOML
[server]
operator_listen = "127.0.0.1:${AIRLOCK_DEMO_PORT:-7400}"
sandbox_listen = "127.0.0.1:$(( ${AIRLOCK_DEMO_PORT:-7400} + 1 ))"
[sandbox]
default_backend = "oci"            # crun, namespaces, seccomp, cgroup limits
default_image = "base"             # busybox, built by the build (build/images/base.tar)
[log]
format = "text"
TOML
url="http://127.0.0.1:${AIRLOCK_DEMO_PORT:-7400}"
"$airlock" serve --home "$home" --config "$home/airlock.toml" 2>"$home/server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "demo: control plane up at $url (home $home; server log in $home/server.log)" >&2

"$airlock" run --url "$url" --home "$home" "Count the words of this task and report three steps." \
  -- /bin/sh -c "$(cat examples/agents/demo_agent.sh)"
status=$?
echo >&2
"$airlock" ls --url "$url" --home "$home"
exit $status
