#!/usr/bin/env bash
# bench/run.sh: builds the benchmarks and prints their ratios against in-process baselines.
#   bench/run.sh               wall-clock ratios (bench_journal runs beside a private PostgreSQL)
#   bench/run.sh --callgrind   also instruction-count ratios under valgrind (repeatable figures)
# BUILD_DIR (default build/) is configured and the bench_* targets built.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
callgrind=0
for arg in "$@"; do
  case $arg in
    --callgrind) callgrind=1 ;;
    *) echo "usage: $0 [--callgrind]" >&2; exit 2 ;;
  esac
done
export ROTOR_SOURCE_DIR=$root

targets=(bench_event bench_password bench_loop_lag bench_journal)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target "${targets[@]}" >/dev/null

results=$(mktemp)
trap 'rm -f "$results" "$results".*' EXIT

# RESULT lines: bench, subject, baseline, subject ns/op, baseline ns/op, ratio.
{
  "$build/bench_event" | grep '^RESULT'
  "$build/bench_password" | grep '^RESULT'
  "$build/bench_loop_lag" | tee "$results.info" | grep '^RESULT'
  # With one pool thread the hashes cannot take both cores away from the loop thread.
  UV_THREADPOOL_SIZE=1 "$build/bench_loop_lag" | grep '^RESULT' | sed 's/threadpool/threadpool (1 thread)/g'
  "$root/tests/support/with-postgres" "$build/bench_journal" | grep '^RESULT'
} >"$results"

# loop_lag rows are worst timer lateness in ns, not a cost per operation.
printf '%-9s %-46s %-46s %12s %12s %8s\n' bench subject baseline 'subject ns' 'baseline ns' ratio
awk -F'\t' '{ printf "%-9s %-46s %-46s %12s %12s %7sx\n", $2, $3, $4, $5, $6, $7 }' "$results"
grep '^INFO' "$results.info" | cut -f2- || true

[ "$callgrind" -eq 1 ] || exit 0

# Instructions executed (callgrind Ir) by each side, less the set-up every run shares.
ir() {
  local out
  out=$(mktemp "$results.cg.XXXX")
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>&1
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}
echo
# Callgrind counts user-space instructions only: time spent in system calls (getrandom) is not seen.
printf '%-9s %16s %16s %8s   (callgrind instructions per operation)\n' bench subject baseline ratio
for b in bench_event bench_password; do
  set -- "$b" 2000
  none=$(ir "$build/$1" --iterations "$2" --only none)
  base=$(ir "$build/$1" --iterations "$2" --only baseline)
  subj=$(ir "$build/$1" --iterations "$2" --only subject)
  awk -v b="$1" -v n="$none" -v x="$base" -v s="$subj" -v it="$2" 'BEGIN {
    printf "%-9s %16.0f %16.0f %7.2fx\n", substr(b, 7), (s - n) / it, (x - n) / it, (s - n) / (x - n) }'
done
