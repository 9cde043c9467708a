#!/usr/bin/env bash
# Files through the control plane with the s3 store (see BENCHMARKS.md): the operator's upload
# (PUT /v1/sessions/{id}/files/{name}: spooled to disk, hashed, one PutObject) and a sandbox's
# work-file download (GET /sandbox/v1/work/files/{name}: one GetObject into the spool, then
# served), side by side in one run with the same bytes moved straight to and from the same S3
# emulator through presigned URLs (the baseline: what the store itself takes), and the control
# plane's peak memory during it.
# Usage: bench/files_s3.sh        SIZE_MB=256 (default) RUNS=3 (default)
# Requires: built airlock (build/bin/airlock), curl, python3, node and npm (s3rver is installed
# from the npm registry into a cache, as the tests do: tests/files/s3rver.sh). Any user.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
AIRLOCK="${AIRLOCK:-$ROOT/build/bin/airlock}"
SIZE_MB="${SIZE_MB:-256}"
RUNS="${RUNS:-3}"
API=127.0.0.1:17620
SBX=127.0.0.1:17621
BUCKET=airlock-bench

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/airlock-files-s3-bench.XXXXXX")"
AHOME="$WORK/home"
SERVER_PID=""
S3_PID=""
cleanup() {
  set +e
  [[ -n "$SERVER_PID" ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [[ -n "$S3_PID" ]] && kill -TERM "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[[ -x "$AIRLOCK" ]] || { echo "no airlock binary at $AIRLOCK (build first)" >&2; exit 1; }
mkdir -p "$WORK/s3data"
"$ROOT/tests/files/s3rver.sh" run "$WORK/s3data" "$BUCKET" >"$WORK/s3rver.log" 2>&1 &
S3_PID=$!
S3=""
for _ in $(seq 600); do
  S3="$(sed -n 's/.*S3rver listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$WORK/s3rver.log" | head -1)"
  [[ -n "$S3" ]] && break
  kill -0 "$S3_PID" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$S3" ]] || { echo "s3rver did not start:" >&2; cat "$WORK/s3rver.log" >&2; exit 1; }

cat > "$WORK/airlock.toml" <<TOML
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[files]
store = "s3"
max_file_mb = $((SIZE_MB + 16))
session_quota_mb = $(((SIZE_MB + 16) * (2 * RUNS + 1)))
[files.s3]
endpoint = "http://$S3"
bucket = "$BUCKET"
[log]
level = "warn"
TOML
# s3rver's fixed account.
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
airlock_start "$AIRLOCK" "$AHOME" "$API" "$SBX" "$WORK/airlock.toml" "$WORK/airlock.log"
TOKFILE="$WORK/token"
SESSION="$(airlock_session "$API" "$TOKFILE")"
TOKEN="$(cat "$TOKFILE")"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
secs() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }
rate() { python3 -c "import sys; print(f'{$SIZE_MB/float(sys.argv[1]):.1f}')" "$1"; }
row() {  # LABEL SECONDS [BASELINE_SECONDS]
  local ratio=""
  [[ $# -eq 3 ]] && ratio="$(python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}x')" "$2" "$3")"
  printf '| %-52s | %8.2f | %8s | %8s |\n' "$1" "$2" "$(rate "$2")" "$ratio"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print $2/1048576 " GiB"}' /proc/meminfo), disk of $WORK: $(df -h --output=source,fstype "$WORK" | tail -1)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "making a ${SIZE_MB} MiB file of random bytes..."
head -c "$((SIZE_MB << 20))" /dev/urandom > "$WORK/src.bin"
SIZE=$(stat -c %s "$WORK/src.bin")
sync
RSS0=$(rss_kib)
TICKS=$(getconf CLK_TCK)

printf '\n| %-52s | %8s | %8s | %8s |\n' "path (${SIZE_MB} MiB)" "seconds" "MiB/s" "x direct"
printf '|%s|%s|%s|%s|\n' "------------------------------------------------------" "----------" "----------" "----------"
CPU_UP=0
CPU_DOWN=0
for run in $(seq "$RUNS"); do
  # Baseline: the bytes straight into S3 through a presigned PUT, as a sandbox with a route to
  # the store would send them.
  url="$(presign "direct-$run.bin" PUT "$SIZE")"
  t0=$(now)
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "Content-Length: $SIZE" -T "$WORK/src.bin" "$url")
  t1=$(now)
  [[ "$code" == 200 ]] || { echo "direct upload failed: HTTP $code" >&2; exit 1; }
  direct_up=$(secs "$t0" "$t1")
  row "S3 direct: presigned PUT (curl -T)         #$run" "$direct_up"

  c0=$(cpu_ticks)
  t0=$(now)
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "Authorization: Bearer $KEY" \
    -T "$WORK/src.bin" "http://$API/v1/sessions/$SESSION/files/op-$run.bin")
  t1=$(now)
  c1=$(cpu_ticks)
  [[ "$code" == 201 ]] || { echo "operator upload failed: HTTP $code" >&2; cat "$WORK/airlock.log" >&2; exit 1; }
  op_up=$(secs "$t0" "$t1")
  CPU_UP=$((CPU_UP + c1 - c0))
  row "airlock: operator PUT (spool, PutObject)   #$run" "$op_up" "$direct_up"

  url="$(presign "op-$run.bin" GET)"
  t0=$(now)
  code=$(curl -s -o "$WORK/down.bin" -w '%{http_code}' "$url")
  t1=$(now)
  [[ "$code" == 200 ]] || { echo "direct download failed: HTTP $code" >&2; exit 1; }
  cmp -s "$WORK/src.bin" "$WORK/down.bin" || { echo "the stored bytes differ" >&2; exit 1; }
  direct_down=$(secs "$t0" "$t1")
  row "S3 direct: presigned GET (curl -o)         #$run" "$direct_down"

  rm -f "$WORK/down.bin"
  c0=$(cpu_ticks)
  t0=$(now)
  code=$(curl -s -o "$WORK/down.bin" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    "http://$SBX/sandbox/v1/work/files/op-$run.bin")
  t1=$(now)
  c1=$(cpu_ticks)
  [[ "$code" == 200 ]] || { echo "work-file download failed: HTTP $code" >&2; head -c 400 "$WORK/down.bin" >&2; exit 1; }
  cmp -s "$WORK/src.bin" "$WORK/down.bin" || { echo "the work file's bytes differ" >&2; exit 1; }
  work_down=$(secs "$t0" "$t1")
  CPU_DOWN=$((CPU_DOWN + c1 - c0))
  row "airlock: sandbox's work file (GetObject, serve) #$run" "$work_down" "$direct_down"
  rm -f "$WORK/down.bin"
done
echo
python3 - "$CPU_UP" "$CPU_DOWN" "$TICKS" "$RUNS" "$SIZE_MB" <<'PY'
import sys
up, down, hz, runs, mb = (float(x) for x in sys.argv[1:])
print(f"control plane CPU per MiB: operator upload {1e3 * up / hz / runs / mb:.2f} ms, "
      f"work-file download {1e3 * down / hz / runs / mb:.2f} ms")
PY
echo "spool after the runs: $(find "$AHOME/files/spool" -type f | wc -l) files"
echo "control plane RSS before the transfers: $((RSS0 / 1024)) MiB; peak RSS of the process (VmHWM): $(( $(hwm_kib) / 1024 )) MiB"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
