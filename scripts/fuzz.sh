#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang into build-fuzz/ and runs each
# for N executions (default 10^7), then prints per target: executions, exec/s, time, corpus size
# and findings (crash-, leak-, timeout-, oom- artifacts in build-fuzz/findings/<target>/).
#
#   scripts/fuzz.sh [executions] [target...]      e.g. scripts/fuzz.sh 1000000 fuzz_kv_event
#
# Environment: FUZZ_WORKERS (parallel fuzzing processes per target, default: the core count),
# FUZZ_MAX_TIME (seconds a target may run at most, -max_total_time; default none: the figures
# say what ran), FUZZ_MERGE=1 (afterwards, add to tests/fuzz/corpus/<target>/ the inputs that
# reach new edges, with -merge=1 -use_counters=0; the grown working corpus stays in
# build-fuzz/corpus/). Run it niced on a shared machine: nice -n 19 scripts/fuzz.sh. A finding
# is fixed with its input kept in tests/fuzz/corpus/<target>/, which ctest replays in every
# build (cmake/fuzz.cmake).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10000000}
shift || true
workers=${FUZZ_WORKERS:-$(nproc)}
out=$top/build-fuzz

command -v clang >/dev/null || { echo "fuzz.sh: clang is needed (libFuzzer)" >&2; exit 2; }
cmake -S "$top" -B "$out" -DCMAKE_C_COMPILER=clang -DROTOR_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$top"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
cmake --build "$out" -j"$(nproc)" --target "${targets[@]}"

# Each worker runs its share of the executions; the figures are summed from their logs.
per=$(( (runs + workers - 1) / workers ))
printf '%-26s %12s %8s %7s %7s %s\n' target executions exec/s time corpus findings
total_findings=0
for t in "${targets[@]}"; do
  seeds=$top/tests/fuzz/corpus/$t
  work=$out/corpus/$t
  finds=$out/findings/$t
  logs=$out/logs/$t
  mkdir -p "$work" "$finds" "$logs"
  rm -f "$logs"/*.log
  touch "$logs/.start" # findings of earlier runs stay in $finds: count only this run's
  start=$(date +%s)
  pids=()
  for w in $(seq 1 "$workers"); do
    # -seed differs per worker, so they do not repeat each other's mutations.
    "$out/$t" -runs="$per" -max_total_time="${FUZZ_MAX_TIME:-0}" -seed="$((start + w))" \
      -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$finds/" -print_final_stats=1 "$work" "$seeds" >"$logs/$w.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  secs=$(( $(date +%s) - start ))
  [ "$secs" -gt 0 ] || secs=1
  execs=$(grep -h '^stat::number_of_executed_units:' "$logs"/*.log | awk '{s += $2} END {print s + 0}')
  corpus=$(find "$work" "$seeds" -type f | wc -l)
  nfind=$(find "$finds" -type f -newer "$logs/.start" | wc -l)
  total_findings=$((total_findings + nfind))
  note=""
  [ "$status" -eq 0 ] || note=" (a worker stopped: see $logs/)"
  printf '%-26s %12s %8s %6ss %7s %s%s\n' "$t" "$execs" "$((execs / secs))" "$secs" "$corpus" \
    "$nfind" "$note"
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    # New edges only (not hit counts), so the committed corpus stays small.
    "$out/$t" -merge=1 -use_counters=0 "$seeds" "$work" >"$logs/merge.log" 2>&1
    echo "  merged: $(find "$seeds" -type f | wc -l) inputs in tests/fuzz/corpus/$t"
  fi
done
[ "$total_findings" -eq 0 ] || { echo "findings: $out/findings/" >&2; exit 1; }
