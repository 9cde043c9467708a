#!/usr/bin/env bash
# LLM proxy overhead benchmark (see BENCHMARKS.md, "LLM proxy overhead").
#
# In one run, against one fake OpenAI upstream (airlock-fake-llm), it times
#   direct:  agent -> fake upstream
#   nginx:   agent -> nginx proxy_pass (keep-alive upstream pool) -> fake upstream
#   airlock: agent -> POST /sandbox/v1/llm/chat -> fake upstream
#   openai:  agent -> POST /v1/chat/completions (the OpenAI face) -> fake upstream
# with N = 1, 64 and 512 concurrent callers (LEVELS), JSON and SSE (MODES), using
# airlock-llm-load: one keep-alive connection per caller, calls back to back, each timed until
# its response has been read to the end. It prints p50/p99 and the ratios to direct.
#
# Every airlock caller has its own session (the proxy serves one call per session at a time).
# Each session makes exactly CALLS calls with {"messages":[]} and is then left alone, so its
# history grows from 1 message (the task, taken from the inbox by the agent) to CALLS+1. The
# direct and nginx callers send the body the proxy sends upstream half way through a session:
# the task plus CALLS/2 stored assistant replies (built from what the store holds, see below).
# The OpenAI face's callers (sessions of their own) send that same conversation on every call,
# as a client that re-sends its history does: the first call stores it, and each later one finds
# it stored and the last reply after it, which it supersedes (a client that asks again), so
# each call compares the whole history, then stores one message and supersedes one.
#
# Run as root (it raises the fd limit and may apt-get install nginx). Knobs (environment):
#   BIN_DIR=DIR        built binaries (airlock, airlock-fake-llm, airlock-llm-load); default build/bin
#   LEVELS="1 64 512"  concurrent callers     MODES="json sse"
#   CALLS=100          calls per session; baselines make the same number of calls per caller
#   MIN_CALLS=1000     at least this many calls per measurement (more sessions per caller at N=1)
#   UPSTREAM_THREADS=1 threads of the fake upstream   CHUNKS=3 text pieces per streamed reply
#   CLIENT_THREADS=1   threads of the load generator  KEEP=1 keeps the work directory
#   RAW=1              with KEEP=1: every call's latency in WORK/raw.TARGET.MODE.N (caller, start, ms)
# Everything it starts is stopped on exit, also on errors and Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
BIN_DIR="${BIN_DIR:-$ROOT/build/bin}"
AIRLOCK="$BIN_DIR/airlock"
FAKE="$BIN_DIR/airlock-fake-llm"
LOAD="$BIN_DIR/airlock-llm-load"
API="${API:-127.0.0.1:17510}"
SBX="${SBX:-127.0.0.1:17511}"
NGX="${NGX:-127.0.0.1:17512}"
LEVELS="${LEVELS:-1 64 512}"
MODES="${MODES:-json sse}"
CALLS="${CALLS:-100}"
MIN_CALLS="${MIN_CALLS:-1000}"
UPSTREAM_THREADS="${UPSTREAM_THREADS:-1}"
CLIENT_THREADS="${CLIENT_THREADS:-1}"
CHUNKS="${CHUNKS:-3}"
WARMUP_CALLERS=64
WARMUP_CALLS=20
FAKE_KEY_VALUE="bench-upstream-key"

[[ $EUID -eq 0 ]] || { echo "run as root (fd limits, nginx install)" >&2; exit 1; }
for b in "$AIRLOCK" "$FAKE" "$LOAD"; do
  [[ -x "$b" ]] || { echo "missing $b (build it, or set BIN_DIR)" >&2; exit 1; }
done
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  apt-get install -y -qq nginx >/dev/null
fi
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d /tmp/llm-proxy-bench.XXXXXX)"
AHOME="$WORK/home"
mkdir -p "$AHOME" "$WORK/agents" "$WORK/nginx"
SERVER_PID=""; NGINX_PID=""; FAKE_PID=""; KEY=""

# Deletes every session (the server stops its process), then ends any agent still alive by
# the pid it wrote, then the three servers.
cleanup() {
  set +e
  trap - INT TERM
  if [[ -n "$KEY" && -s "$WORK/sessions.ids" && -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    python3 - "$API" "$KEY" "$WORK/sessions.ids" <<'PY'
import concurrent.futures as cf, http.client, sys
api, key, path = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = api.rsplit(":", 1)
ids = [l.strip() for l in open(path) if l.strip()]
def delete(chunk):
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    bad = 0
    for sid in chunk:
        try:
            c.request("DELETE", f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {key}"})
            r = c.getresponse(); r.read()
            bad += r.status != 200
        except Exception:
            bad += 1
            c = http.client.HTTPConnection(host, int(port), timeout=30)
    return bad
with cf.ThreadPoolExecutor(8) as ex:
    bad = sum(ex.map(delete, [ids[i::8] for i in range(8)]))
print(f"cleanup: deleted {len(ids) - bad} of {len(ids)} sessions through the API", file=sys.stderr)
PY
  fi
  # After Ctrl-C the server has had the SIGINT too, so its agents are left to this loop.
  local p pid ended=0
  for p in "$WORK"/agents/pid.*; do
    [[ -e "$p" ]] || continue
    pid="$(cat "$p")"
    if [[ -n "$pid" && "$( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null)" == "sleep 3600 "* ]]; then
      kill -TERM "$pid" 2>/dev/null && ended=$((ended + 1))
    fi
  done
  [[ $ended -eq 0 ]] || echo "cleanup: ended $ended agents by their pid" >&2
  [[ -n "$SERVER_PID" ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [[ -n "$NGINX_PID" ]] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  [[ -n "$FAKE_PID" ]] && kill -TERM "$FAKE_PID" 2>/dev/null && wait "$FAKE_PID" 2>/dev/null
  if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

facts() { # label
  echo "== $1: $(date -u +%FT%TZ) load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
echo "== machine: $(nproc) cpus, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)," \
  "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "== nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'); airlock: $AIRLOCK"
facts start
echo "== busiest processes now:"; ps -eo pcpu,comm --sort=-pcpu | sed -n 2,6p | sed 's/^/   /'

# ---------------------------------------------------------------- fake upstream
"$FAKE" --port 0 --threads "$UPSTREAM_THREADS" --chunks "$CHUNKS" --api-key "$FAKE_KEY_VALUE" \
  >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!
for _ in $(seq 50); do grep -q '^listening on' "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
UP="$(sed -n 's/^listening on //p' "$WORK/fake.out")"
[[ -n "$UP" ]] || { cat "$WORK/fake.err" >&2; exit 1; }
UP_URL="http://$UP/v1/chat/completions"

# ---------------------------------------------------------------- nginx
nginx_conf "$WORK/nginx.conf" "$WORK" 8192 "worker_rlimit_nofile 16384;" "
  keepalive_requests 1000000;
  upstream fake {
    server $UP;
    keepalive 64;               # idle connections kept, as airlock's upstream pool (64 per host)
    keepalive_requests 1000000;
  }
  server {
    listen $NGX backlog=4096;
    location = /nginx-ready { return 204; }
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
"$NGINX_BIN" -c "$WORK/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
NGINX_WORKER=""

# ---------------------------------------------------------------- airlock
cat > "$WORK/airlock.toml" <<TOML
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[log]
level = "warn"
[providers.fake]
kind = "openai"
base_url = "http://$UP/v1"
api_key_env = "FAKE_KEY"
[models.default]
provider = "fake"
model = "fake-model"
TOML
export FAKE_KEY="$FAKE_KEY_VALUE"  # the provider key, read by the control plane only
airlock_start "$AIRLOCK" "$AHOME" "$API" "$SBX" "$WORK/airlock.toml" "$WORK/airlock.log"
for _ in $(seq 50); do curl -fs "http://$NGX/nginx-ready" 2>/dev/null && break; sleep 0.1; done
curl -fs "http://$NGX/nginx-ready" || { cat "$WORK/nginx/error.log" >&2; exit 1; }
NGINX_WORKER="$(pgrep -P "$NGINX_PID" | head -1)"

# ---------------------------------------------------------------- sessions
# Slices of the token list, in order: 1 for verification, the warm-up callers, then for each
# mode and level N callers x S sessions (S > 1 only where N x CALLS < MIN_CALLS).
per_caller() { local c=$1; echo $(( (MIN_CALLS + c * CALLS - 1) / (c * CALLS) )); }
TOTAL=$((2 + WARMUP_CALLERS))  # the two verification sessions, the warm-up
# Twice per level: the native route's sessions, then the OpenAI face's.
for mode in $MODES; do for c in $LEVELS; do TOTAL=$((TOTAL + 2 * c * $(per_caller "$c"))); done; done
echo "== creating $TOTAL sessions (process backend; each agent takes its task from the inbox," \
  "writes its token and sleeps)"
T0=$(date +%s.%N)
python3 - "$API" "$KEY" "$WORK" "$TOTAL" <<'PY'
import concurrent.futures as cf, http.client, json, os, sys, threading, time
api, key, work, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = api.rsplit(":", 1)
agents = f"{work}/agents"
# $$ is the pid that `exec sleep` keeps; the token file appears only after the inbox is taken.
script = ('echo $$ > "$1/pid.$2"; '
          'curl -fsS -o /dev/null -H "Authorization: Bearer $SESSION_TOKEN" '
          '"$CONTROL_PLANE_URL/sandbox/v1/inbox" && '
          'printf %s "$SESSION_TOKEN" > "$1/tok.$2.tmp" && mv "$1/tok.$2.tmp" "$1/tok.$2"; '
          'exec sleep 3600')
ids_lock = threading.Lock()
ids_file = open(f"{work}/sessions.ids", "a")
def create(indices):
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    for i in indices:
        body = json.dumps({"task": "benchmark the LLM proxy",
                           "command": ["/bin/sh", "-c", script, "agent", agents, str(i)]})
        c.request("POST", "/v1/sessions", body=body,
                  headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse(); data = r.read()
        if r.status != 201:
            raise SystemExit(f"POST /v1/sessions -> {r.status} {data[:300]!r}")
        d = json.loads(data)
        sid = d.get("id") or d["session"]["id"]
        with ids_lock:
            ids_file.write(sid + "\n"); ids_file.flush()
        if i == 0:
            open(f"{work}/verify.sid", "w").write(sid)
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(create, [range(k, total, 8) for k in range(8)]))
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    have = sum(os.path.exists(f"{agents}/tok.{i}") for i in range(total))
    if have == total: break
    time.sleep(0.2)
else:
    raise SystemExit(f"only {have} of {total} agents wrote their token")
with open(f"{work}/tokens.all", "w") as out:
    for i in range(total):
        out.write(open(f"{agents}/tok.{i}").read().strip() + "\n")
PY
echo "   done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
TOKENS=()
mapfile -t TOKENS < "$WORK/tokens.all"
NEXT=0
take_tokens() { # count file: writes the next `count` tokens to `file`
  printf '%s\n' "${TOKENS[@]:$NEXT:$1}" > "$2"; NEXT=$((NEXT + $1))
}
server_fds() { ls "/proc/$SERVER_PID/fd" | wc -l; }
server_rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

sleep 2
T1=$(server_ticks); sleep 3; T2=$(server_ticks)
echo "== airlock idle with $TOTAL sessions: $(server_fds) fds, RSS $(server_rss) KiB," \
  "CPU $(awk -v t="$((T2 - T1))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz / 3}') s/s"

# ---------------------------------------------------------------- verification
# One call of each kind through each path, checked by hand; then the shape of the stored
# conversation, from which the baseline bodies are built.
take_tokens 1 "$WORK/tok.verify"
VTOK="$(cat "$WORK/tok.verify")"
VSID="$(cat "$WORK/verify.sid")"
verify() { # name url auth-header body expect
  local code
  code="$(curl -s -o "$WORK/verify.$1" -w '%{http_code}' -H "$3" -H 'Content-Type: application/json' \
    -d "$4" "$2")"
  if [[ "$code" != 200 ]] || ! grep -q -- "$5" "$WORK/verify.$1"; then
    echo "verification failed: $1 -> $code: $(head -c 400 "$WORK/verify.$1")" >&2; exit 1
  fi
  echo "   $1: 200, $(wc -c < "$WORK/verify.$1") bytes"
}
echo "== verification (one call each; every timed call below is checked the same way)"
verify airlock-json "http://$SBX/sandbox/v1/llm/chat" "Authorization: Bearer $VTOK" '{"messages":[]}' '"message"'
verify airlock-sse "http://$SBX/sandbox/v1/llm/chat" "Authorization: Bearer $VTOK" '{"messages":[],"stream":true}' 'data: \[DONE\]'
curl -fs -H "Authorization: Bearer $KEY" "http://$API/v1/sessions/$VSID/messages" > "$WORK/history.json"
python3 - "$WORK" "$CALLS" <<'PY'
import json, sys
work, calls = sys.argv[1], int(sys.argv[2])
h = json.load(open(f"{work}/history.json"))["messages"]
assert [m["role"] for m in h] == ["user", "assistant", "assistant"], h
task, reply = h[0], h[1]
# The proxy sends DumpJson of {"model","messages","stream"[, "stream_options"]} (nlohmann sorts
# keys, no spaces); the history is the task and one stored reply per call. Half way through a
# session it holds CALLS/2 replies; their numbers ("reply N") have 5 digits at that point.
hist = [task] + [dict(reply, content=f"reply {20000 + i}") for i in range(calls // 2)]
for mode, extra in (("json", {"stream": False}),
                    ("sse", {"stream": True, "stream_options": {"include_usage": True}})):
    body = dict({"model": "fake-model", "messages": hist}, **extra)
    with open(f"{work}/body.{mode}", "w") as f:
        f.write(json.dumps(body, sort_keys=True, separators=(",", ":")))
    # The OpenAI face's client names the alias; the upstream gets the same conversation.
    with open(f"{work}/face.{mode}", "w") as f:
        f.write(json.dumps(dict(body, model="default"), sort_keys=True, separators=(",", ":")))
print(f"   stored reply shape: {json.dumps(reply, sort_keys=True)}")
print(f"   baseline bodies: task + {calls // 2} replies = {len(open(f'{work}/body.json').read())} bytes (json),"
      f" {len(open(f'{work}/body.sse').read())} bytes (sse)")
PY
verify direct-json "$UP_URL" "Authorization: Bearer $FAKE_KEY_VALUE" "$(cat "$WORK/body.json")" '"choices"'
verify direct-sse "$UP_URL" "Authorization: Bearer $FAKE_KEY_VALUE" "$(cat "$WORK/body.sse")" 'data: \[DONE\]'
verify nginx-json "http://$NGX/v1/chat/completions" "Authorization: Bearer $FAKE_KEY_VALUE" "$(cat "$WORK/body.json")" '"choices"'
verify nginx-sse "http://$NGX/v1/chat/completions" "Authorization: Bearer $FAKE_KEY_VALUE" "$(cat "$WORK/body.sse")" 'data: \[DONE\]'
take_tokens 1 "$WORK/tok.verify-face"
verify openai-json "http://$SBX/v1/chat/completions" "Authorization: Bearer $(cat "$WORK/tok.verify-face")" "$(cat "$WORK/face.json")" '"choices"'
verify openai-sse "http://$SBX/v1/chat/completions" "Authorization: Bearer $(cat "$WORK/tok.verify-face")" "$(cat "$WORK/face.sse")" 'data: \[DONE\]'

# ---------------------------------------------------------------- runs
RESULTS="$WORK/results.txt"
: > "$RESULTS"
run() { # target mode callers calls-per-caller [tokens-file]
  local target=$1 mode=$2 c=$3 n=$4 toks=${5:-} args=()
  [[ $mode == sse ]] && args+=(--sse)
  [[ -n "${RAW:-}" ]] && args+=(--raw "$WORK/raw.$target.$mode.$c")
  case $target in
    airlock)
      args+=(--url "http://$SBX/sandbox/v1/llm/chat" --tokens "$toks" --calls-per-token "$CALLS")
      if [[ $mode == sse ]]; then
        args+=(--body '{"messages":[],"stream":true}')
      else
        args+=(--body '{"messages":[]}' --expect '"message"')
      fi ;;
    openai)
      args+=(--url "http://$SBX/v1/chat/completions" --tokens "$toks" --calls-per-token "$CALLS"
        --body-file "$WORK/face.$mode")
      [[ $mode == json ]] && args+=(--expect '"choices"') ;;
    direct|nginx)
      local url="$UP_URL"; [[ $target == nginx ]] && url="http://$NGX/v1/chat/completions"
      args+=(--url "$url" -H "Authorization: Bearer $FAKE_KEY_VALUE" --body-file "$WORK/body.$mode")
      [[ $mode == json ]] && args+=(--expect '"choices"') ;;
  esac
  # Around each run: the CPU time of the proxy's threads and their time spent runnable but
  # waiting for a CPU (schedstat), the same for the fake upstream, and the TCP connections
  # opened on the host (ActiveOpens), of which the callers' own are subtracted below.
  local pid="" p0 p1 f0 f1 o0 o1 line
  case $target in airlock|openai) pid=$SERVER_PID ;; nginx) pid=$NGINX_WORKER ;; esac
  p0="$(sched_ns "$pid")"; f0="$(sched_ns "$FAKE_PID")"; o0="$(active_opens)"
  line="$("$LOAD" -c "$c" -n "$n" --threads "$CLIENT_THREADS" --label "$target/$mode/$c" "${args[@]}" \
    2> >(sed 's/^/   /' >&2))"
  p1="$(sched_ns "$pid")"; f1="$(sched_ns "$FAKE_PID")"; o1="$(active_opens)"
  echo "$line proxy_cpu_ns=$((${p1% *} - ${p0% *})) proxy_wait_ns=$((${p1#* } - ${p0#* }))" \
    "upstream_cpu_ns=$((${f1% *} - ${f0% *})) tcp_opens=$((o1 - o0))"
}
sched_ns() { # pid -> "cpu_ns runqueue_wait_ns" summed over its threads
  if [[ -z "$1" ]]; then echo "0 0"; return; fi
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{c += $1; w += $2} END {printf "%.0f %.0f\n", c, w}'
}
active_opens() {
  awk '/^Tcp:/ { if (!k) { for (i = 1; i <= NF; i++) if ($i == "ActiveOpens") k = i } else print $k }' /proc/net/snmp
}

echo "== warm-up ($WARMUP_CALLERS callers x $WARMUP_CALLS calls each, not counted)"
take_tokens "$WARMUP_CALLERS" "$WORK/tok.warmup"
for t in direct nginx airlock; do
  run "$t" json "$WARMUP_CALLERS" "$WARMUP_CALLS" "$WORK/tok.warmup" >> "$WORK/warmup.txt"
done

# CPU that other programs on the host used during the timed runs: user + system time of all
# processes minus the benchmark's own (the three servers, and this script's reaped children:
# the load generator); and the time the hypervisor gave to other guests (steal).
host_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }
host_steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
own_ticks() {
  local t=0 p
  for p in "$SERVER_PID" "$NGINX_WORKER" "$FAKE_PID"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $((t + $(awk '{print $16 + $17}' "/proc/$$/stat")))
}
# Lost SYNs would show up as 1 s (and longer) latencies: count them too.
tcp_ext() { awk -v k="$1" '/^TcpExt:/ { if (!i) { for (j = 1; j <= NF; j++) if ($j == k) i = j } else print $i }' /proc/net/netstat; }
HOST0=$(host_busy_ticks); STEAL0=$(host_steal_ticks); OWN0=$(own_ticks); WALL0=$(date +%s.%N)
SYN0=$(tcp_ext TCPSynRetrans); LOV0=$(tcp_ext ListenOverflows)
FD0=$(server_fds)
for mode in $MODES; do
  for c in $LEVELS; do
    s=$(per_caller "$c")
    n=$((s * CALLS))
    facts "$mode, $c callers, $n calls each"
    take_tokens $((c * s)) "$WORK/tok.$mode.$c"
    take_tokens $((c * s)) "$WORK/tok.face.$mode.$c"
    for t in direct nginx airlock openai; do
      toks="$WORK/tok.$mode.$c"; [[ $t == openai ]] && toks="$WORK/tok.face.$mode.$c"
      run "$t" "$mode" "$c" "$n" "$toks" | tee -a "$RESULTS" >/dev/null
    done
    echo "   airlock after: $(server_fds) fds (before the runs: $FD0), RSS $(server_rss) KiB"
  done
done
facts end
HOST1=$(host_busy_ticks); STEAL1=$(host_steal_ticks); OWN1=$(own_ticks); WALL1=$(date +%s.%N)
echo "== TCP during the timed runs: $(($(tcp_ext TCPSynRetrans) - SYN0)) SYN retransmits," \
  "$(($(tcp_ext ListenOverflows) - LOV0)) listen queue overflows"
awk -v h=$((HOST1 - HOST0)) -v o=$((OWN1 - OWN0)) -v st=$((STEAL1 - STEAL0)) -v hz="$(getconf CLK_TCK)" \
  -v w0="$WALL0" -v w1="$WALL1" -v n="$(nproc)" 'BEGIN { w = w1 - w0; x = (h - o) / hz; if (x < 0) x = 0
    printf "== CPU over the timed runs (%.0f s on %d cpus): benchmark %.1f s, other programs %.1f s (%.0f%%),", w, n, o / hz, x, 100 * x / (w * n)
    printf " steal %.1f s\n", st / hz }'
sleep 1
echo "== airlock fds after the runs: $(server_fds) (before: $FD0)"
curl -fs "http://$API/metrics" | grep -E '^airlock_llm_calls_total' | sed 's/^/   /' || true
grep -v 'backend without isolation' "$WORK/airlock.log" | tail -5 | sed 's/^/   airlock log: /' || true
# Each proxied call should be exactly one upstream request (the proxy retries only failures).
kill -TERM "$FAKE_PID"; wait "$FAKE_PID" || true; FAKE_PID=""
python3 - "$WORK" <<'PY'
import re, sys
work = sys.argv[1]
sent = 8  # the verification calls
for path in (f"{work}/warmup.txt", f"{work}/results.txt"):
    for line in open(path):
        kv = dict(p.split("=", 1) for p in line.split())
        sent += int(kv["count"]) + int(kv["errors"])
m = re.search(r"stopped after (\d+) requests", open(f"{work}/fake.err").read())
print(f"== fake upstream answered {m.group(1) if m else '?'} requests; the callers made {sent} calls")
PY

# ---------------------------------------------------------------- table
python3 - "$RESULTS" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(p.split("=", 1) for p in line.split())
    target, mode, c = kv["label"].split("/")
    rows[(mode, int(c), target)] = kv
def f(kv, k): return float(kv[k])
print()
print("| mode | callers | direct p50 / p99 | nginx p50 / p99 | airlock p50 / p99 | nginx/direct p50, p99 "
      "| airlock/direct p50, p99 | airlock-direct p50, p99 | calls/s d / n / a | errors d / n / a |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (mode, c) in sorted({(m, c) for (m, c, _) in rows}, key=lambda x: (x[0] != "json", x[1])):
    d, n, a = (rows.get((mode, c, t)) for t in ("direct", "nginx", "airlock"))
    if not (d and n and a): continue
    ms = lambda kv: f"{f(kv,'p50_ms'):.2f} / {f(kv,'p99_ms'):.2f} ms"
    ratio = lambda kv: f"{f(kv,'p50_ms')/f(d,'p50_ms'):.2f}x, {f(kv,'p99_ms')/f(d,'p99_ms'):.2f}x"
    added = f"{f(a,'p50_ms')-f(d,'p50_ms'):+.2f}, {f(a,'p99_ms')-f(d,'p99_ms'):+.2f} ms"
    rps = " / ".join(f"{f(kv,'rps'):.0f}" for kv in (d, n, a))
    errs = " / ".join(f"{kv['errors']}" for kv in (d, n, a))
    print(f"| {mode} | {c} | {ms(d)} | {ms(n)} | {ms(a)} | {ratio(n)} | {ratio(a)} | {added} | {rps} | {errs} |")
print()
print("Time to the response head (status line and headers; for a stream, its first event) p50 / p99;")
print("CPU time per call of the proxy's threads and of the fake upstream; the proxy's time spent")
print("runnable but waiting for a CPU, per call; new TCP connections per 100 calls beyond the")
print("callers' own (a proxy's new upstream connections; other programs on the host add to it):")
print()
print("| mode | callers | head p50 / p99 direct | nginx | airlock | proxy CPU/call n / a "
      "| upstream CPU/call d / n / a | run-queue wait/call n / a | new conns/100 calls d / n / a |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
def per_call(kv, k):
    calls = int(kv["count"]) + int(kv["errors"])
    return f(kv, k) / 1e3 / calls if calls else 0.0
def conns(kv):
    calls = int(kv["count"]) + int(kv["errors"])
    extra = int(kv["tcp_opens"]) - int(kv["connections"]) - int(kv["reconnects"])
    return f"{100 * extra / calls:.1f}" if calls else "?"
for (mode, c) in sorted({(m, c) for (m, c, _) in rows}, key=lambda x: (x[0] != "json", x[1])):
    d, n, a = (rows.get((mode, c, t)) for t in ("direct", "nginx", "airlock"))
    if not (d and n and a): continue
    hd = lambda kv: f"{f(kv,'head_p50_ms'):.2f} / {f(kv,'head_p99_ms'):.2f} ms"
    us = lambda kv, k: f"{per_call(kv, k):.0f}"
    print(f"| {mode} | {c} | {hd(d)} | {hd(n)} | {hd(a)} | {us(n,'proxy_cpu_ns')} / {us(a,'proxy_cpu_ns')} us "
          f"| {us(d,'upstream_cpu_ns')} / {us(n,'upstream_cpu_ns')} / {us(a,'upstream_cpu_ns')} us "
          f"| {us(n,'proxy_wait_ns')} / {us(a,'proxy_wait_ns')} us | {conns(d)} / {conns(n)} / {conns(a)} |")
print()
print("The OpenAI face (whole conversation re-sent every call) against the native route and nginx:")
print()
print("| mode | callers | openai p50 / p99 | openai/direct p50, p99 | openai-airlock p50, p99 "
      "| openai-nginx p50, p99 | proxy CPU/call n / a / o | calls/s a / o | errors o |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (mode, c) in sorted({(m, c) for (m, c, _) in rows}, key=lambda x: (x[0] != "json", x[1])):
    d, n, a, o = (rows.get((mode, c, t)) for t in ("direct", "nginx", "airlock", "openai"))
    if not (d and n and a and o): continue
    diff = lambda x, y: f"{f(x,'p50_ms')-f(y,'p50_ms'):+.2f}, {f(x,'p99_ms')-f(y,'p99_ms'):+.2f} ms"
    us = lambda kv, k: f"{per_call(kv, k):.0f}"
    print(f"| {mode} | {c} | {f(o,'p50_ms'):.2f} / {f(o,'p99_ms'):.2f} ms "
          f"| {f(o,'p50_ms')/f(d,'p50_ms'):.2f}x, {f(o,'p99_ms')/f(d,'p99_ms'):.2f}x "
          f"| {diff(o, a)} | {diff(o, n)} "
          f"| {us(n,'proxy_cpu_ns')} / {us(a,'proxy_cpu_ns')} / {us(o,'proxy_cpu_ns')} us "
          f"| {f(a,'rps'):.0f} / {f(o,'rps'):.0f} | {o['errors']} |")
PY
