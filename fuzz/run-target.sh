#!/usr/bin/env bash
# Runs one fuzz target; used by scripts/fuzz.sh and by CTest in the fuzz build.
#   run-target.sh fuzz   <binary> <fuzz dir> <seconds>   fuzz from the seeds for <seconds>
#   run-target.sh replay <binary> <fuzz dir>             run every seed and regression once
# The seeds are fuzz/corpus/<target>/ and the crashes found so far fuzz/regressions/<target>/;
# neither is ever written: new inputs go to a temporary corpus, crashes to a temporary
# artifact directory whose reproducer path is printed (keep it under fuzz/regressions/).
set -euo pipefail
mode=$1 bin=$2 dir=$3
name=$(basename "$bin")
seeds=("$dir/corpus/$name")
[ -d "$dir/regressions/$name" ] && seeds+=("$dir/regressions/$name")
opts=(-rss_limit_mb=2048 -timeout=10)

case "$mode" in
  replay)
    mapfile -t inputs < <(find "${seeds[@]}" -type f | sort)
    if [ ${#inputs[@]} -eq 0 ]; then
      echo "$name: no seeds under $dir/corpus/$name" >&2
      exit 1
    fi
    # Given files, libFuzzer runs each once and fails on the first crash. The targets' scratch
    # files go to a temporary directory.
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/airlock-fuzz-$name-XXXXXX")
    status=0
    TMPDIR=$scratch "$bin" "${opts[@]}" "${inputs[@]}" || status=$?
    rm -rf "$scratch"
    exit $status
    ;;
  fuzz)
    seconds=$4
    work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-fuzz-$name-XXXXXX")
    mkdir -p "$work/corpus" "$work/artifacts" "$work/tmp"
    # The first directory receives new inputs: the temporary one, never the tree.
    if TMPDIR=$work/tmp "$bin" "${opts[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/" "$work/corpus" "${seeds[@]}" >"$work/log" 2>&1; then
      grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ *DONE)' "$work/log" |
        sed "s/^/$name: /" || true
      rm -rf "$work"
      exit 0
    fi
    tail -n 60 "$work/log" >&2
    echo "$name: FAILED; log $work/log" >&2
    for f in "$work"/artifacts/*; do
      [ -e "$f" ] && echo "$name: reproducer $f (keep it as fuzz/regressions/$name/<sha1>; replay: $bin $f)" >&2
    done
    exit 1
    ;;
  *)
    echo "usage: run-target.sh fuzz|replay <binary> <fuzz dir> [seconds]" >&2
    exit 2
    ;;
esac
