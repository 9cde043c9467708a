#!/bin/sh
# A tiny agent written with nothing but busybox sh and wget, to show the raw sandbox API end
# to end: it takes its task from the inbox, reports a few steps as events, reads its history
# and finishes, without an LLM. It knows exactly three things: SESSION_ID, SESSION_TOKEN and
# CONTROL_PLANE_URL (and, being a shell script, hands them to every command it runs: a real
# agent must not; see docs/agents.md). The reference agent is src/agent (airlock-agent).
# Run it: airlock run "hello" -- /bin/sh -c "$(cat examples/agents/demo_agent.sh)"
set -eu
get() { wget -q -O - --header "Authorization: Bearer $SESSION_TOKEN" "$CONTROL_PLANE_URL$1"; }
post() {
  wget -q -O - --header "Authorization: Bearer $SESSION_TOKEN" --header "Content-Type: application/json" \
    --post-data "$2" "$CONTROL_PLANE_URL$1"
}
event() { post /sandbox/v1/events "{\"type\":\"$1\",\"data\":$2}" >/dev/null; }

task=$(get "/sandbox/v1/inbox?wait=30")
event agent.started "{\"session\":\"$SESSION_ID\",\"uid\":$(id -u)}"
words=$(printf '%s' "$task" | wc -w)
event agent.step "{\"step\":1,\"note\":\"read the task ($words words)\"}"
event agent.step "{\"step\":2,\"note\":\"environment has $(env | wc -l) variables; network: $(ls /sys/class/net | tr '\n' ' ')\"}"
history=$(get /sandbox/v1/history)
event agent.step "{\"step\":3,\"note\":\"history holds $(printf '%s' "$history" | grep -o '"role"' | wc -l) message(s)\"}"
post /sandbox/v1/finish '{"status":"succeeded","result":"demo agent: task received, three steps reported"}' >/dev/null
