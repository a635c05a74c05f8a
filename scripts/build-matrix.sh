#!/usr/bin/env bash
# Builds the whole tree (daemon, tests, benchmarks) with warnings as errors for several compilers
# and build types, each in its own directory under build-matrix/, so that an optimiser's warning
# (gcc -O3's maybe-uninitialized, clang's string concatenation check) is caught before a user's
# `cmake -DCMAKE_BUILD_TYPE=Release` meets it.
#   scripts/build-matrix.sh          gcc and clang, Release (what CI runs)
#   scripts/build-matrix.sh --all    gcc and clang x Debug, Release, RelWithDebInfo, MinSizeRel
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
types=(Release)
[ "${1:-}" = "--all" ] && types=(Debug Release RelWithDebInfo MinSizeRel)
failed=0
for cc in gcc clang; do
  for t in "${types[@]}"; do
    dir="$top/build-matrix/$cc-$t"
    if cmake -S "$top" -B "$dir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE="$t" \
      -DROTOR_WERROR=ON >/dev/null && cmake --build "$dir" -j"$(nproc)" >"$dir.log" 2>&1; then
      echo "build-matrix: $cc $t ok"
    else
      echo "build-matrix: $cc $t FAILED (log: $dir.log)" >&2
      grep -E "error|warning:" "$dir.log" | head -20 >&2 || true
      failed=1
    fi
  done
done
exit $failed
