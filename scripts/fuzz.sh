#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang++-16, ASan + UBSan, in build-fuzz) and runs each
# for a bounded time from its seed corpus, then replays every seed and regression input.
# Fails on any crash, leak, timeout or sanitizer report and prints the reproducer's path.
# Runs as many targets at once as there are cores (AIRLOCK_FUZZ_JOBS).
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]     (default 30 s, every target)
# Environment: AIRLOCK_FUZZ_BUILD (default <repo>/build-fuzz).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
shift || true
build=${AIRLOCK_FUZZ_BUILD:-$root/build-fuzz}

# Debian's clang 16 brings libFuzzer and the sanitizer runtimes (g++ has no libFuzzer).
if ! command -v clang++-16 >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-16-dev 2>/dev/null |
    grep -q "install ok installed"; then
  "$root/scripts/install-deps.sh" --with-fuzz
fi

launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if [ ! -f "$build/CMakeCache.txt" ]; then
  CXX=clang++-16 cmake -S "$root" -B "$build" -G Ninja -DAIRLOCK_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" "${launcher[@]}" >/dev/null
fi
start=$(date +%s)
# The build lock keeps parallel builds in one tree from starving a 2-core machine.
if command -v flock >/dev/null 2>&1; then
  flock /tmp/airlock-build.lock cmake --build "$build" -j"$(nproc)" --target fuzz_targets
else
  cmake --build "$build" -j"$(nproc)" --target fuzz_targets
fi
echo "fuzz: build took $(($(date +%s) - start)) s"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd "$root/fuzz" && ls *_fuzz.cc | sed 's/\.cc$//')
fi
# One target per core at a time: each libFuzzer run is single-threaded. Every target's output
# is kept in its own file and printed, in order, once all have finished.
parallel=${AIRLOCK_FUZZ_JOBS:-$(nproc)}
run_one() {
  local t=$1 t0
  t0=$(date +%s)
  if "$root/fuzz/run-target.sh" replay "$build/fuzz/$t" "$root/fuzz" >/dev/null 2>"$build/fuzz/$t.replay.log" &&
      "$root/fuzz/run-target.sh" fuzz "$build/fuzz/$t" "$root/fuzz" "$seconds"; then
    echo "fuzz: $t ok ($(($(date +%s) - t0)) s)"
  else
    [ -s "$build/fuzz/$t.replay.log" ] && tail -n 40 "$build/fuzz/$t.replay.log"
    echo "fuzz: $t FAILED"
    return 1
  fi
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  rm -f "$build/fuzz/$t.status"
  { if run_one "$t" >"$build/fuzz/$t.out" 2>&1; then echo 0; else echo 1; fi >"$build/fuzz/$t.status"; } &
done
wait
failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "$build/fuzz/$t.status" 2>/dev/null)" = 0 ]; then
    cat "$build/fuzz/$t.out"
  else
    cat "$build/fuzz/$t.out" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed (${seconds} s each)"
