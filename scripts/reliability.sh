#!/usr/bin/env bash
# The kill -9 part of the reliability matrix (issue 8), in full: every crash chain of
# tests/e2e/crashlab.py (test_crash_early, test_crash_late and every chain of
# test_crash_matrix.py) and the three-replica fleet of test_replicas.py with 50 secrets. CI runs
# a sample of the same tests (ROTOR_RELIABILITY unset); this runs all of it and prints a summary.
#
#   scripts/reliability.sh [build dir, default build]
#
# Uses the normal build (scripts/build.sh); a failure stops the run (pytest -x) and exits non-zero.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
[ -x "$build/rotor" ] || { echo "reliability: no $build/rotor (run scripts/build.sh)" >&2; exit 2; }
out=$(mktemp -d /tmp/rotor-reliability.XXXXXX)
trap 'rm -rf "$out"' EXIT
export ROTOR_BIN="$build/rotor" ROTOR_BUILD_DIR="$build" ROTOR_SOURCE_DIR="$top" ROTOR_RELIABILITY=1
cd "$top/tests/e2e"
start=$(date +%s)
status=0
for t in test_crash_early.py test_crash_late.py test_crash_matrix.py test_replicas.py; do
  t0=$(date +%s)
  if /usr/bin/python3 -m pytest -x -q -s -p no:cacheprovider "$t" >"$out/$t.log" 2>&1; then
    res=passed
  else
    res=FAILED; status=1
  fi
  printf '%-24s %-7s %4ss\n' "$t" "$res" "$(($(date +%s) - t0))"
  [ "$res" = passed ] || tail -40 "$out/$t.log"
done
/usr/bin/python3 - "$out" "$(($(date +%s) - start))" <<'PY'
import ast, glob, json, sys
chains, fleet = [], None
for path in sorted(glob.glob(sys.argv[1] + "/*.log")):
    for line in open(path, errors="replace"):
        if line.lstrip(".").startswith("crashmatrix {"):
            chains.append(ast.literal_eval(line.lstrip(".").split(" ", 1)[1].strip()))
        elif line.lstrip(".").startswith("replicas {"):
            fleet = json.loads(line.lstrip(".").split(" ", 1)[1])
sys.path.insert(0, ".")
from crashlab import MATRIX, matrix_points
points = matrix_points()
print(f"crash chains: {len(chains)} of {len(MATRIX)} run, "
      f"{sum(c['points'] for c in chains)} kills at {len(points)} distinct points")
for c in chains:
    print(f"  {c['chain']:<20} {c['points']} kills -> {c['status']:<11} "
          f"ALTER ROLE PASSWORD {c['password']}, NOLOGIN {c['nologin']}")
print("  points: " + " ".join(points))
if fleet:
    print("replicas: " + ", ".join(f"{k} {v}" for k, v in fleet.items()))
print(f"total: {sys.argv[2]} s")
PY
exit $status
