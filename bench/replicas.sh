#!/usr/bin/env bash
# Replicas benchmark (see BENCHMARKS.md, issue 12): POST /sandbox/v1/events on SQLite, and on
# PostgreSQL with one and with three replicas behind HAProxy; pgbench's simple-update rate on
# the same PostgreSQL and nginx's static rate as the baselines, in the same run; and how long a
# message posted through one replica takes to wake a long-poll held by another.
#
# Requires: build/bin/airlock, wrk, curl, python3, nginx, haproxy, PostgreSQL 15 (initdb,
# pg_ctl, pgbench): scripts/install-deps.sh --with-bench. Run as root or as a user that may run
# PostgreSQL (as root, the server runs as the postgres user).
# Also session creation (POST /v1/sessions) on each: the `process` backend with the command
# `true`, so a sandbox costs one fork and exec and its agent exits at once (the reconciler ends
# the session within a second); what is measured is the control plane's create path.
# Knobs: DUR (wrk duration, 10s), SESSIONS (sessions the load is spread over, 16), CREATE_DUR
# (wrk duration of the creation runs, 5s), CREATE_CONNS (their connections, 8), ONLY=sqlite
# (nginx and the SQLite replica only: no PostgreSQL, HAProxy or wake-up; to compare two builds
# quickly, e.g. `AIRLOCK=<other build>/bin/airlock ONLY=sqlite bench/replicas.sh`), EXTRA_TOML
# (more configuration for every replica, e.g. $'[server]\nworker_threads = 1').
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
AIRLOCK="${AIRLOCK:-$ROOT/build/bin/airlock}"
DUR="${DUR:-10s}"
SESSIONS="${SESSIONS:-16}"
CREATE_DUR="${CREATE_DUR:-5s}"
CREATE_CONNS="${CREATE_CONNS:-8}"
ONLY="${ONLY:-}"
[[ -z $ONLY || $ONLY == sqlite ]] || { echo "ONLY must be empty or sqlite, not $ONLY" >&2; exit 2; }
WORK="$(mktemp -d)"
# Other work on the machine skews every number: the load average goes into the report.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
chmod 755 "$WORK"
PIDS=()
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PG_PORT=17600
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [[ -d "$WORK/pg" ]] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" stop -m fast >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] ||
    { echo "$tool missing (scripts/install-deps.sh --with-bench)" >&2; exit 1; }
done

# ---------------------------------------------------------------- PostgreSQL
if [[ -z $ONLY ]]; then
mkdir -p "$WORK/pg"
[[ $(id -u) -eq 0 ]] && chown postgres "$WORK/pg"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql_() { as_pg psql -h "$WORK/pg" -p "$PG_PORT" -U postgres -qAt "$@"; }
psql_ -c "CREATE DATABASE airlock" -c "CREATE DATABASE pgbench"
as_pg pgbench -h "$WORK/pg" -p "$PG_PORT" -U postgres -i -s 10 -q pgbench >/dev/null 2>&1
echo "== pgbench simple-update (-N), 16 clients" >&2
as_pg pgbench -h "$WORK/pg" -p "$PG_PORT" -U postgres -N -c 16 -j 2 -T "${DUR%s}" pgbench \
  > "$WORK/pgbench.out" 2>&1
PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/airlock"
fi

# ---------------------------------------------------------------- control planes
config() { # STORE_TOML -> a config on stdout
  cat <<TOML
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[events]
rate_per_s = 1000000
burst = 1000000
max_per_session = 0
max_mb_per_session = 0
[log]
level = "warn"
${EXTRA_TOML:-}
$1
TOML
}
# start_replica NAME API SBX STORE_TOML: an airlock serve with its own home.
start_replica() {
  local name=$1 api=$2 sbx=$3
  mkdir -p "$WORK/$name"
  config "$4" > "$WORK/$name.toml"
  airlock_start "$AIRLOCK" "$WORK/$name" "$api" "$sbx" "$WORK/$name.toml" "$WORK/$name.log"
  PIDS+=("$SERVER_PID")
}
# sessions API DIR: SESSIONS sessions, their tokens in DIR/tok.N
sessions() {
  local api=$1 dir=$2
  mkdir -p "$dir"
  chmod 777 "$dir"
  for i in $(seq "$SESSIONS"); do airlock_session "$api" "$dir/tok.$i" > "$dir/id.$i"; done
}
# end_sessions API DIR: deletes the sessions `sessions` made, so their agents (`sleep 3600`
# under the process backend, which outlive a stopped server by design) go with them.
end_sessions() {
  local api=$1 dir=$2
  for i in $(seq "$SESSIONS"); do
    curl -fs -o /dev/null -X DELETE -H "Authorization: Bearer $KEY" \
      "http://$api/v1/sessions/$(cat "$dir/id.$i")" || true
  done
}
# A wrk script that spreads the events over the sessions' tokens. The requests are formatted
# once, as wrk does for the nginx run without a script: formatting each request in Lua cost
# wrk about 5 us more per request, on the same two cores as the server.
events_lua() { # DIR
  python3 - "$1" "$SESSIONS" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
toks = [open(f"{d}/tok.{i}").read().strip() for i in range(1, n + 1)]
print("local tokens = {" + ",".join(f'"{t}"' for t in toks) + "}")
print('''local requests = {}
for k, token in ipairs(tokens) do
  requests[k] = wrk.format("POST", nil, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token}, '{"type":"bench","data":{"i":1}}')
end
local i = 0
request = function()
  i = i + 1
  return requests[(i % #requests) + 1]
end''')
PY
}
# CPU ticks (1/100 s) the processes PIDS have used so far, summed over their threads.
ticks() {
  local t=0 p
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
pg_pids() { # the private PostgreSQL's processes
  local m
  [[ -r $WORK/pg/data/postmaster.pid ]] || return 0
  m="$(head -1 "$WORK/pg/data/postmaster.pid")"
  echo "$m" $(pgrep -P "$m")
}
# run_wrk NAME URL [wrk args]. On two cores the load generator and the server share the CPU,
# so the rate follows the CPU each request costs: NAME.cpu gets the ticks the server
# processes (the pids in $SERVER_CPU) and PostgreSQL took during the run, NAME.time wrk's own.
run_wrk() {
  local name=$1; shift
  echo "== $name" >&2
  local s0 p0
  s0="$(ticks $SERVER_CPU)"
  p0="$(ticks $(pg_pids))"
  /usr/bin/time -f "%U %S" -o "$WORK/$name.time" wrk -t2 -c64 -d"$DUR" --latency "$@" \
    > "$WORK/$name.out"
  echo "$(($(ticks $SERVER_CPU) - s0)) $(($(ticks $(pg_pids)) - p0))" > "$WORK/$name.cpu"
}
# A wrk script that creates sessions with the operator KEY.
create_lua() { # KEY
  cat <<LUA
wrk.method = "POST"
wrk.body = '{"task":"bench","command":["true"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $1"
LUA
}
run_create() { # NAME URL KEY
  echo "== $1" >&2
  create_lua "$3" > "$WORK/$1.lua"
  wrk -t2 -c"$CREATE_CONNS" -d"$CREATE_DUR" --latency -s "$WORK/$1.lua" "$2" > "$WORK/$1.out"
}

# nginx baseline
nginx_conf "$WORK/nginx.conf" "$WORK" 1024 "" "
  server { listen 127.0.0.1:17699; location / { default_type application/json; return 200 '{}'; } }"
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$WORK/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:17699/ >/dev/null 2>&1 && break; sleep 0.1; done
SERVER_CPU="$(pgrep -P "${PIDS[-1]}" | tr '\n' ' ')"  # nginx's worker
run_wrk nginx http://127.0.0.1:17699/

# SQLite, one replica
start_replica sqlite 127.0.0.1:17610 127.0.0.1:17611 ""
sessions 127.0.0.1:17610 "$WORK/tok-sqlite"
events_lua "$WORK/tok-sqlite" > "$WORK/sqlite.lua"
SERVER_CPU=$SERVER_PID
run_wrk sqlite_events -s "$WORK/sqlite.lua" http://127.0.0.1:17611/sandbox/v1/events
run_create sqlite_create http://127.0.0.1:17610/v1/sessions "$KEY"
end_sessions 127.0.0.1:17610 "$WORK/tok-sqlite"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

# PostgreSQL: replica 1 alone, then replicas 1-3 behind HAProxy
if [[ -z $ONLY ]]; then
PG_STORE="[store]
kind = \"postgres\"
url = \"$PG_URL\"
pool_size = 8"
start_replica pg1 127.0.0.1:17620 127.0.0.1:17621 "$PG_STORE"
KEY1=$KEY
sessions 127.0.0.1:17620 "$WORK/tok-pg"
events_lua "$WORK/tok-pg" > "$WORK/pg.lua"
SERVER_CPU=$SERVER_PID
run_wrk pg1_events -s "$WORK/pg.lua" http://127.0.0.1:17621/sandbox/v1/events
run_create pg1_create http://127.0.0.1:17620/v1/sessions "$KEY1"
start_replica pg2 127.0.0.1:17630 127.0.0.1:17631 "$PG_STORE"
start_replica pg3 127.0.0.1:17640 127.0.0.1:17641 "$PG_STORE"
cat > "$WORK/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend sandbox
  bind 127.0.0.1:17651
  default_backend replicas
backend replicas
  balance roundrobin
  server r1 127.0.0.1:17621
  server r2 127.0.0.1:17631
  server r3 127.0.0.1:17641
frontend operator
  bind 127.0.0.1:17650
  default_backend operators
backend operators
  balance roundrobin
  server r1 127.0.0.1:17620
  server r2 127.0.0.1:17630
  server r3 127.0.0.1:17640
CFG
haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
SERVER_CPU="${PIDS[-4]} ${PIDS[-3]} ${PIDS[-2]} ${PIDS[-1]}"  # the three replicas and HAProxy
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:17651/ && break; sleep 0.1; done
run_wrk pg3_events -s "$WORK/pg.lua" http://127.0.0.1:17651/sandbox/v1/events
# Replica 1's key works on every replica (keys live in the store).
run_create pg3_create http://127.0.0.1:17650/v1/sessions "$KEY1"

# Cross-replica wake-up: a long-poll parked on replica 2, the message posted through replica 1;
# the time from sending the POST to the poll's answer.
python3 - "$WORK/tok-pg/tok.1" "$(cat "$WORK/tok-pg/id.1")" "$KEY1" > "$WORK/wakeup.out" <<'PY'
import http.client, json, statistics, sys, threading, time
token, sid, key = open(sys.argv[1]).read().strip(), sys.argv[2], sys.argv[3]
def call(port, method, path, bearer, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers={"Authorization": "Bearer " + bearer,
                                                "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, data
def waiting(port):
    page = call(port, "GET", "/metrics", key)[1].decode()
    return any(l.startswith("airlock_inbox_waiting ") and float(l.split()[1]) >= 1
               for l in page.splitlines())
call(17631, "GET", "/sandbox/v1/inbox", token)  # the task
lat = []
for i in range(50):
    got = {}
    def poll():
        got["r"] = call(17631, "GET", "/sandbox/v1/inbox?wait=30", token)
        got["t"] = time.monotonic()
    th = threading.Thread(target=poll); th.start()
    while not waiting(17630):
        time.sleep(0.005)
    t0 = time.monotonic()
    st, _ = call(17620, "POST", f"/v1/sessions/{sid}/messages", key, json.dumps({"content": f"m{i}"}))
    th.join()
    assert st == 202 and got["r"][0] == 200, (st, got["r"])
    lat.append((got["t"] - t0) * 1000)
lat.sort()
print(f"{statistics.median(lat):.2f} {lat[int(len(lat) * 0.99) - 1]:.2f} {len(lat)}")
PY

KEY=$KEY1 end_sessions 127.0.0.1:17620 "$WORK/tok-pg"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK" "$SESSIONS" "$CREATE_CONNS" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import re, sys
work, n, cc, load_before, load_after = sys.argv[1:6]
import os
def ran(name):
    return os.path.exists(f"{work}/{name}.out")
def wrk(name):
    t = open(f"{work}/{name}.out").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    return rps, lat.get("50", "?"), lat.get("99", "?"), bad.group(1) if bad else "0"
pg = os.path.exists(f"{work}/pgbench.out")  # not with ONLY=sqlite
tps = float(re.search(r"tps = ([\d.]+)", open(f"{work}/pgbench.out").read()).group(1)) if pg else 0
names = {"nginx static (baseline)": "nginx", "events, SQLite, 1 replica": "sqlite_events",
         "events, PostgreSQL, 1 replica": "pg1_events",
         "events, PostgreSQL, 3 replicas + HAProxy": "pg3_events"}
rows = [(name, wrk(key)) for name, key in names.items() if ran(key)]
base = rows[0][1][0]
print(f"\nPOST /sandbox/v1/events spread over {n} sessions; wrk -t2 -c64\n")
print(f"| {'target':<42} | {'requests/s':>10} | {'p50':>8} | {'p99':>8} | {'vs nginx':>8} | {'vs pgbench':>10} |")
print(f"|{'-'*44}|{'-'*12}|{'-'*10}|{'-'*10}|{'-'*10}|{'-'*12}|")
for name, (rps, p50, p99, bad) in rows:
    vs_pg = f"{rps / tps:.2f}x" if "PostgreSQL" in name else ""
    print(f"| {name:<42} | {rps:>10.0f} | {p50:>8} | {p99:>8} | {rps / base:>7.2f}x | {vs_pg:>10} |")
if pg:
    print(f"| {'pgbench -N (simple-update), 16 clients':<42} | {tps:>10.0f} | {'':>8} | {'':>8} | {tps / base:>7.2f}x | {'1.00x':>10} |")
for name, (rps, p50, p99, bad) in rows:
    if bad != "0":
        print(f"note: {name}: {bad} non-2xx responses")
# CPU per request: the machine is shared by wrk and the server, so these explain the rates.
print(f"\nCPU per request (microseconds; server: the control plane(s), with HAProxy for three "
      f"replicas, or nginx's worker)\n")
print(f"| {'target':<42} | {'server':>8} | {'PostgreSQL':>10} | {'wrk':>8} |")
print(f"|{'-'*44}|{'-'*10}|{'-'*12}|{'-'*10}|")
for name, _ in rows:
    key = names[name]
    t = open(f"{work}/{key}.out").read()
    count = int(re.search(r"(\d+) requests in", t).group(1))
    server, pg = (int(x) for x in open(f"{work}/{key}.cpu").read().split())
    user, system = (float(x) for x in open(f"{work}/{key}.time").read().split()[-2:])
    pg_cell = f"{pg * 1e4 / count:.1f}" if "PostgreSQL" in name else ""
    print(f"| {name:<42} | {server * 1e4 / count:>8.1f} | {pg_cell:>10} | "
          f"{(user + system) * 1e6 / count:>8.1f} |")
creates = [(name, wrk(key)) for name, key in
           [("sessions, SQLite, 1 replica", "sqlite_create"),
            ("sessions, PostgreSQL, 1 replica", "pg1_create"),
            ("sessions, PostgreSQL, 3 replicas + HAProxy", "pg3_create")] if ran(key)]
print(f"\nPOST /v1/sessions (backend process, command [\"true\"]); wrk -t2 -c{cc}\n")
print(f"| {'target':<42} | {'requests/s':>10} | {'p50':>8} | {'p99':>8} | {'vs pgbench':>10} |")
print(f"|{'-'*44}|{'-'*12}|{'-'*10}|{'-'*10}|{'-'*12}|")
for name, (rps, p50, p99, bad) in creates:
    vs_pg = f"{rps / tps:.2f}x" if "PostgreSQL" in name else ""
    print(f"| {name:<42} | {rps:>10.0f} | {p50:>8} | {p99:>8} | {vs_pg:>10} |")
for name, (rps, p50, p99, bad) in creates:
    if bad != "0":
        print(f"note: {name}: {bad} non-2xx responses")
if ran("wakeup"):
    p50, p99, count = open(f"{work}/wakeup.out").read().split()
    print(f"\ncross-replica wake-up (message posted through replica 1, long-poll on replica 2), "
          f"{count} samples: p50 {p50} ms, p99 {p99} ms")
print(f"\nload average (1, 5, 15 min) before the run: {load_before}; after: {load_after}")
PY
