#!/usr/bin/env bash
# Checks that every C++ file of the tree is formatted as .clang-format says (one style).
# Usage: scripts/check-format.sh [--fix]   --fix rewrites the files instead of reporting them
set -euo pipefail
cd "$(dirname "$0")/.."
# Tracked files and new ones not yet added (but not ignored ones): a file is checked before
# its first commit, not after.
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h' | sort -u)
if [ "${1:-}" = --fix ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! out=$(clang-format --dry-run --Werror "${files[@]}" 2>&1); then
  echo "$out" | grep -E '^[^ ].*: (error|warning):' | cut -d: -f1 | sort -u | sed 's/^/needs clang-format: /' >&2
  echo "check-format: run scripts/check-format.sh --fix (clang-format $(clang-format --version | grep -o '[0-9.]*' | head -1))" >&2
  exit 1
fi
