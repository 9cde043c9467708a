#!/usr/bin/env bash
# Files through presigned URLs (see BENCHMARKS.md): upload and download of one large file
# through the local blob store, side by side with `cp` of the same file on the same disk, and
# the control plane's peak memory during it.
# Usage: bench/files_throughput.sh        SIZE_MB=1024 (default) RUNS=3 (default)
# Requires: built airlock (build/bin/airlock), curl, python3. Run as any user.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
AIRLOCK="${AIRLOCK:-$ROOT/build/bin/airlock}"
SIZE_MB="${SIZE_MB:-1024}"
RUNS="${RUNS:-3}"
API=127.0.0.1:17610
SBX=127.0.0.1:17611

# Everything on one disk: the source file, the copy, and the control plane's home.
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/airlock-files-bench.XXXXXX")"
AHOME="$WORK/home"
SERVER_PID=""
cleanup() {
  set +e
  [[ -n "$SERVER_PID" ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[[ -x "$AIRLOCK" ]] || { echo "no airlock binary at $AIRLOCK (build first)" >&2; exit 1; }
cat > "$WORK/airlock.toml" <<TOML
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[files]
max_file_mb = $((SIZE_MB + 16))
session_quota_mb = $(((SIZE_MB + 16) * 2))
[log]
level = "warn"
TOML
airlock_start "$AIRLOCK" "$AHOME" "$API" "$SBX" "$WORK/airlock.toml" "$WORK/airlock.log"
TOKFILE="$WORK/token"
airlock_session "$API" "$TOKFILE" >/dev/null
TOKEN="$(cat "$TOKFILE")"

rate() { python3 -c "import sys; print(f'{$SIZE_MB/float(sys.argv[1]):8.1f}')" "$1"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print $2/1048576 " GiB"}' /proc/meminfo), disk of $WORK: $(df -h --output=source,fstype "$WORK" | tail -1)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "making a ${SIZE_MB} MiB file of random bytes..."
head -c "$((SIZE_MB << 20))" /dev/urandom > "$WORK/src.bin"
SIZE=$(stat -c %s "$WORK/src.bin")
sync
RSS0=$(rss_kib)

printf '\n%-44s %10s %10s\n' "path (${SIZE_MB} MiB, run)" "seconds" "MiB/s"
for run in $(seq "$RUNS"); do
  # Baseline: cp, then fsync of the copy (the upload is fsynced before it becomes visible).
  rm -f "$WORK/copy.bin"
  t0=$(now); cp "$WORK/src.bin" "$WORK/copy.bin"; sync -f "$WORK/copy.bin"; t1=$(now)
  cp_s=$(python3 -c "print($t1-$t0)")
  printf '%-44s %10.2f %10s\n' "cp + fsync                            #$run" "$cp_s" "$(rate "$cp_s")"

  url="$(presign "big-$run.bin" PUT "$SIZE")"
  t0=$(now)
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -T "$WORK/src.bin" "$url")
  t1=$(now)
  [[ "$code" == 201 ]] || { echo "upload failed: HTTP $code" >&2; cat "$WORK/airlock.log"; exit 1; }
  up_s=$(python3 -c "print($t1-$t0)")
  printf '%-44s %10.2f %10s   ratio to cp %.2fx\n' "airlock: presigned PUT (curl -T)      #$run" "$up_s" "$(rate "$up_s")" \
    "$(python3 -c "print($up_s/$cp_s)")"

  url="$(presign "big-$run.bin" GET)"
  rm -f "$WORK/down.bin"
  t0=$(now)
  code=$(curl -s -o "$WORK/down.bin" -w '%{http_code}' "$url")
  sync -f "$WORK/down.bin"
  t1=$(now)
  [[ "$code" == 200 ]] || { echo "download failed: HTTP $code" >&2; exit 1; }
  cmp -s "$WORK/src.bin" "$WORK/down.bin" || { echo "downloaded bytes differ" >&2; exit 1; }
  down_s=$(python3 -c "print($t1-$t0)")
  printf '%-44s %10.2f %10s   ratio to cp %.2fx\n' "airlock: presigned GET (curl -o) + fsync #$run" "$down_s" \
    "$(rate "$down_s")" "$(python3 -c "print($down_s/$cp_s)")"
  rm -f "$AHOME/files/"*/"big-$run.bin" "$WORK/down.bin"
done
echo
echo "control plane RSS before the transfers: $((RSS0 / 1024)) MiB; peak RSS of the process (VmHWM): $(( $(hwm_kib) / 1024 )) MiB"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
