#!/usr/bin/env bash
# The main job (README, first command): builds airlock, starts the control plane on its
# embedded defaults (SQLite and a fresh home directory), runs one session with `airlock run`
# while its events stream to the terminal, then drains the server.
#
# The agent is the reference agent (airlock-agent, the entrypoint of the built-in `base`
# image), run in a real sandbox: the `oci` backend (crun). It thinks through the control
# plane's LLM proxy: with OPENAI_API_KEY or ANTHROPIC_API_KEY in this environment it uses that
# provider's model, otherwise the built-in scripted demo model, which walks the agent through
# every tool. The script runs as root (cgroup limits); the agent runs unprivileged inside.
# Knobs: AIRLOCK_DEMO_TASK (the task), AIRLOCK_DEMO_TIMEOUT_S (the session's wall-clock
# budget, default 600), AIRLOCK_DEMO_PORT (default 7400), AIRLOCK_BUILD_DIR (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir=${AIRLOCK_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
echo "demo: building airlock (the first build takes a few minutes)" >&2
cmake --build "$build_dir" -j "$(nproc)" --target airlock airlock-init airlock-agent base_image >/dev/null
case "$build_dir" in /*) ;; *) build_dir="$PWD/$build_dir" ;; esac
airlock="$build_dir/bin/airlock"

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
trap 'echo "demo: stopping the control plane" >&2; kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$url/healthz" >/dev/null 2>&1 || { echo "demo: the control plane did not start:" >&2; cat "$home/server.log" >&2; exit 1; }
echo "demo: control plane up at $url (home $home; server log in $home/server.log)" >&2
if [ -n "${OPENAI_API_KEY:-}" ]; then
  echo "demo: model: OpenAI (OPENAI_API_KEY is set)" >&2
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
  echo "demo: model: Anthropic (ANTHROPIC_API_KEY is set)" >&2
else
  echo "demo: model: the built-in scripted demo (no OPENAI_API_KEY or ANTHROPIC_API_KEY: no LLM is called)" >&2
fi

status=0
"$airlock" run --url "$url" --home "$home" --download "$home/artifacts" --show \
  --limit "timeout_s=${AIRLOCK_DEMO_TIMEOUT_S:-600}" \
  "${AIRLOCK_DEMO_TASK:-Find out what this sandbox looks like from the inside (user, kernel, capabilities, network, environment), write it up in report.md, upload the report, and finish.}" ||
  status=$?
echo >&2
"$airlock" ls --url "$url" --home "$home"
exit $status
