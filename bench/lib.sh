# Shared by the benchmark scripts (source it). Starts `airlock serve` and gets a session token
# through the `process` backend, whose agent writes its SESSION_TOKEN to a file, as a sandbox
# would hold it.

# airlock_start AIRLOCK HOME API SBX CONFIG LOG: starts the server, waits for /healthz, sets
# SERVER_PID and KEY (the operator key). Exits with the server's log on failure.
airlock_start() {
  local bin="$1" home="$2" api="$3" sbx="$4" config="$5" log="$6"
  "$bin" serve --home "$home" --listen "$api" --sandbox-listen "$sbx" --config "$config" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -fs "http://$api/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "http://$api/healthz" >/dev/null || { cat "$log"; exit 1; }
  KEY="$(tr -d '\n' < "$home/operator.key")"
}

# airlock_session API TOKFILE: creates a session whose agent writes its token to TOKFILE and
# then sleeps; prints the session's id once the token is there.
airlock_session() {
  local api="$1" tokfile="$2" body resp
  body="$(python3 -c 'import json,sys; print(json.dumps({"task":"bench","command":["sh","-c","printf %s \"$SESSION_TOKEN\" > "+sys.argv[1]+"; exec sleep 3600"]}))' "$tokfile")"
  resp="$(curl -fs -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$body" "http://$api/v1/sessions")"
  for _ in $(seq 100); do [[ -s "$tokfile" ]] && break; sleep 0.1; done
  [[ -s "$tokfile" ]] || { echo "the agent never wrote its token" >&2; exit 1; }
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$resp"
}

# presign NAME METHOD [SIZE]: prints a presigned URL for a file of the session whose token is
# $TOKEN, asked of the sandbox listener $SBX (an upload declares its SIZE).
presign() {
  local body
  if [[ $# -eq 3 ]]; then body="{\"name\":\"$1\",\"method\":\"$2\",\"size\":$3}"; else body="{\"name\":\"$1\",\"method\":\"$2\"}"; fi
  curl -fs -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" \
    "http://$SBX/sandbox/v1/files/presign" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])'
}
# The server's peak and current resident memory in KiB ($SERVER_PID), and the time now.
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
now() { date +%s.%N; }

# nginx_conf FILE WORK WORKER_CONNECTIONS MAIN_EXTRA HTTP_BODY: writes an nginx.conf for a
# foreground nginx whose pid, logs and temp files stay under WORK/nginx (created); MAIN_EXTRA
# goes to the main context, HTTP_BODY (upstreams, servers) into http { }.
nginx_conf() {
  local file="$1" work="$2" conns="$3" main_extra="$4" http_body="$5"
  mkdir -p "$work/nginx"
  cat >"$file" <<NGX
worker_processes 1;
$main_extra
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections $conns; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
$http_body
}
NGX
}
