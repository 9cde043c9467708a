#!/usr/bin/env bash
# HTTP load benchmark for the Airlock control plane (see BENCHMARKS.md).
# Requires: built airlock (build/bin/airlock), wrk, curl, python3, nginx (baseline).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
AIRLOCK="${AIRLOCK:-$ROOT/build/bin/airlock}"
API=127.0.0.1:17500
SBX=127.0.0.1:17501
NGX=127.0.0.1:17502
DUR="${DUR:-10s}"
NCONN="${NCONN:-10000}"

WORK="$(mktemp -d)"
AHOME="$(mktemp -d)"
SERVER_PID=""; NGINX_PID=""; SID=""; KEY=""

cleanup() {
  set +e
  if [[ -n "$SID" && -n "$KEY" ]]; then
    curl -s -o /dev/null -X DELETE -H "Authorization: Bearer $KEY" "http://$API/v1/sessions/$SID"
  fi
  [[ -n "$SERVER_PID" ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [[ -n "$NGINX_PID" ]] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  rm -rf "$WORK" "$AHOME"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk missing (scripts/install-deps.sh --with-bench)" >&2; exit 1; }
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  apt-get install -y -qq nginx >/dev/null
fi
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"

# ---------------------------------------------------------------- airlock
cat > "$WORK/airlock.toml" <<'TOML'
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[log]
level = "warn"
TOML
airlock_start "$AIRLOCK" "$AHOME" "$API" "$SBX" "$WORK/airlock.toml" "$WORK/airlock.log"

TOKFILE="$WORK/token"
SID="$(airlock_session "$API" "$TOKFILE")"
TOKEN="$(cat "$TOKFILE")"

# ---------------------------------------------------------------- nginx baseline
nginx_conf "$WORK/nginx.conf" "$WORK" 1024 "" "
  server {
    listen $NGX;
    location / { default_type application/json; return 200 '{\"status\":\"ok\"}'; }
  }"
"$NGINX_BIN" -c "$WORK/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
for _ in $(seq 50); do curl -fs "http://$NGX/" >/dev/null 2>&1 && break; sleep 0.1; done

# ---------------------------------------------------------------- wrk
cat > "$WORK/events.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"type":"bench","data":{"i":1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

run_wrk() { # name, wrk args...
  local name=$1; shift
  echo "== $name" >&2
  wrk -t2 -c64 -d"$DUR" --latency "$@" > "$WORK/$name.out"
  cat "$WORK/$name.out" >&2
}
run_wrk nginx "http://$NGX/"
run_wrk healthz "http://$API/healthz"
run_wrk events -s "$WORK/events.lua" "http://$SBX/sandbox/v1/events"

python3 - "$WORK" <<'PY'
import re, sys
work = sys.argv[1]
def parse(name):
    t = open(f"{work}/{name}.out").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    errs = re.search(r"Socket errors:.*", t)
    return rps, lat.get("50", "?"), lat.get("99", "?"), (non2xx.group(1) if non2xx else "0"), (errs.group(0) if errs else "")
rows = {n: parse(n) for n in ("nginx", "healthz", "events")}
base = rows["nginx"][0]
labels = {"nginx": "nginx static (baseline)", "healthz": "airlock GET /healthz",
          "events": "airlock POST /sandbox/v1/events"}
print()
print(f"| {'target':<32} | {'requests/s':>11} | {'p50':>9} | {'p99':>9} | {'vs nginx':>8} |")
print(f"|{'-'*34}|{'-'*13}|{'-'*11}|{'-'*11}|{'-'*10}|")
for n, (rps, p50, p99, bad, errs) in rows.items():
    print(f"| {labels[n]:<32} | {rps:>11.0f} | {p50:>9} | {p99:>9} | {rps/base:>7.2f}x |")
for n, (rps, p50, p99, bad, errs) in rows.items():
    if bad != "0" or errs:
        print(f"note: {n}: non-2xx={bad} {errs}")
PY

# ---------------------------------------------------------------- idle long-polls
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" "http://$SBX/sandbox/v1/inbox" || true  # drain the task
echo
python3 - "$SERVER_PID" "$TOKEN" "$NCONN" "$SBX" "http://$API/metrics" <<'PY'
import os, resource, socket, sys, time, urllib.request
pid, token, n, sbx, metrics = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = sbx.rsplit(":", 1); port = int(port)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < n + 100:
    sys.exit(f"RLIMIT_NOFILE hard limit {hard} too low for {n} connections")

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def cpu_ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
def waiting():
    with urllib.request.urlopen(metrics, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("airlock_inbox_waiting"):
                return int(float(line.split()[-1]))
    return 0

req = (f"GET /sandbox/v1/inbox?wait=60 HTTP/1.1\r\nHost: {sbx}\r\n"
       f"Authorization: Bearer {token}\r\n\r\n").encode()
before = rss_kib()
socks = []
t0 = time.monotonic()
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(req)
    socks.append(s)
deadline = time.monotonic() + 40
w = 0
while time.monotonic() < deadline:
    w = waiting()
    if w >= n: break
    time.sleep(0.2)
parked_s = time.monotonic() - t0
if w < n:
    print(f"WARNING: only {w}/{n} long-polls parked after {parked_s:.1f}s")
after = rss_kib()
hz = os.sysconf("SC_CLK_TCK")
c0 = cpu_ticks(); time.sleep(5); c1 = cpu_ticks()
still = waiting()
print(f"idle long-polls parked:     {w} (opened in {parked_s:.1f}s; {still} still parked after the CPU window)")
print(f"server RSS before:          {before} KiB")
print(f"server RSS with {n}:    {after} KiB")
print(f"per-connection delta:       {(after-before)/n:.2f} KiB")
print(f"server CPU over 5 s parked: {(c1-c0)/hz:.2f} s (utime+stime)")
for s in socks: s.close()
PY
