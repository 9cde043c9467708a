#!/bin/sh
# A tiny agent written with nothing but sh and curl, to show the sandbox API end to end:
# it takes its task from the inbox, reports a few steps as events, reads its history and
# finishes. The real reference agent (an LLM tool loop) replaces it when the LLM proxy lands.
# It knows exactly three things: SESSION_ID, SESSION_TOKEN and CONTROL_PLANE_URL.
set -eu
api() {  # api METHOD PATH [JSON]
  curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $SESSION_TOKEN" \
    -H "Content-Type: application/json" ${3:+--data "$3"} "$CONTROL_PLANE_URL$2"
}
event() { api POST /sandbox/v1/events "{\"type\":\"$1\",\"data\":$2}" >/dev/null; }

task=$(api GET "/sandbox/v1/inbox?wait=30")
event agent.started "{\"session\":\"$SESSION_ID\"}"
words=$(printf '%s' "$task" | wc -w)
event agent.step "{\"step\":1,\"note\":\"read the task ($words words)\"}"
event agent.step "{\"step\":2,\"note\":\"environment has $(env | wc -l) variables\"}"
history=$(api GET /sandbox/v1/history)
event agent.step "{\"step\":3,\"note\":\"history holds $(printf '%s' "$history" | grep -o '"role"' | wc -l) message(s)\"}"
api POST /sandbox/v1/finish '{"status":"succeeded","result":"demo agent: task received, three steps reported"}' >/dev/null
