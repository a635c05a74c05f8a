#!/usr/bin/env bash
# bench/all.sh: every benchmark, one after the other (they would disturb each other if run
# together): the in-process ratios of bench/run.sh, then the whole-daemon benches, each of which
# appends its rows to bench/results/<name>.tsv and prints a markdown row for docs/benchmarks.md.
#   bench/all.sh              everything (about 30 minutes on 2 cores)
#   bench/all.sh --quick      smaller sizes: ingest at 1000 and 10000, 100 secrets through the
#                             vault limiter at 50 writes per 10 s, a 20 s idle window (a check that the scripts work)
# Build first (scripts/build.sh); BUILD_DIR as for run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
echo "## bench/run.sh"
"$here/run.sh"
if [ "$quick" -eq 1 ]; then
  echo "## bench/ingest.sh (quick)";   "$here/ingest.sh" keyvault,redelivered,absorbed 1000,10000
  echo "## bench/keyvault.sh (quick)"; "$here/keyvault.sh" 100 50
  echo "## bench/idle.sh (quick)";     "$here/idle.sh" 100 20
else
  echo "## bench/ingest.sh";   "$here/ingest.sh"
  echo "## bench/keyvault.sh"; "$here/keyvault.sh"
  echo "## bench/idle.sh";     "$here/idle.sh"
fi
if [ -x "$here/fleet.sh" ]; then
  echo "## bench/fleet.sh"
  "$here/fleet.sh"
fi
