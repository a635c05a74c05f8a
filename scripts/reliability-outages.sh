#!/usr/bin/env bash
# reliability-outages.sh: the outage rows of issue 8's reliability matrix, whole (CI runs a
# sample of each): a 30 s broker outage mid-rotation, a PostgreSQL restart and a 30 s partition
# (refused and blackholed) mid-rotation, and the soak: 100 rotations under the demo's kept-alive
# load through nginx. Prints the figures that docs/reliability.md records.
#
#   scripts/reliability-outages.sh [--rotations N] [--outage SECONDS] [--only broker|postgres|soak]
#
#   ROTOR_BIN   the rotor binary (default: build/rotor); scripts/build.sh builds it
#
# About 25 min on a 2-core machine: the soak takes most of it. Runs under nice -n 19.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
rotations=100
outage=30
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rotations) rotations=$2; shift ;;
    --outage) outage=$2; shift ;;
    --only) only=$2; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "reliability-outages: unknown argument: $1 (try --help)" >&2; exit 1 ;;
  esac
  shift
done
export ROTOR_BIN=${ROTOR_BIN:-$top/build/rotor}
ROTOR_BUILD_DIR=$(dirname "$ROTOR_BIN")
export ROTOR_BUILD_DIR ROTOR_SOURCE_DIR=$top
export ROTOR_OUTAGE_SECONDS=$outage ROTOR_SOAK_ROTATIONS=$rotations
[ -x "$ROTOR_BIN" ] || { echo "reliability-outages: no rotor at $ROTOR_BIN (scripts/build.sh)" >&2; exit 1; }

log=$(mktemp -t rotor-outages.XXXXXX)
trap 'rm -f "$log"' EXIT
fail=0
run() {
  local name=$1 file=$2 start=$SECONDS rc=0
  [ -z "$only" ] || [ "$only" = "$name" ] || return 0
  echo "==> $name ($file), $(date -u +%FT%TZ)"
  (cd "$top/tests/e2e" && nice -n 19 /usr/bin/python3 -m pytest -q -s -p no:cacheprovider "$file") \
    >"$log" 2>&1 || rc=$?
  grep -E '^\.?(OUTAGE|PARTITION|SOAK) ' "$log" | sed 's/^\.//' || true
  tail -n 1 "$log"
  if [ "$rc" -ne 0 ]; then
    fail=1
    echo "--- $name failed (exit $rc); its output: ---"
    tail -n 80 "$log"
  fi
  echo "    $name: $((SECONDS - start)) s"
}
run broker test_broker_outage.py
run postgres test_postgres_outage.py
run soak test_soak.py
exit "$fail"
