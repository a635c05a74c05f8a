# shellcheck shell=bash
# bench/lib.sh: sourced by bench/{ingest,keyvault,idle}.sh. Checks the tools, makes a temporary
# directory, and on any exit kills what the Python driver started (it records every child's pid
# in $BENCH_PIDFILE) in case the driver itself died before its own clean-up.
set -euo pipefail

bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ROTOR_SOURCE_DIR=$bench_root
export ROTOR_BIN=${ROTOR_BIN:-$bench_root/build/rotor}
export PYTHONDONTWRITEBYTECODE=1
bench_python=${PYTHON:-/usr/bin/python3}

if [ ! -x "$ROTOR_BIN" ]; then
  echo "bench: $ROTOR_BIN is missing: run scripts/build.sh (or set ROTOR_BIN)" >&2
  exit 2
fi
for tool in kcat "$bench_python"; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/setup.sh)" >&2; exit 2; }
done

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/rotor-bench-sh.XXXXXX")
export BENCH_PIDFILE=$BENCH_TMP/pids
: >"$BENCH_PIDFILE"

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ -s "$BENCH_PIDFILE" ]; then
    # Only after a failure: a clean run has stopped its children itself.
    while read -r pid; do
      if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$BENCH_PIDFILE"
  fi
  rm -rf "$BENCH_TMP"
  exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bench_run BOUND_SECONDS SCRIPT ARGS...: the Python driver under a hard time bound.
bench_run() {
  local bound=$1
  shift
  timeout --signal=TERM --kill-after=30 "$bound" \
    "$bench_python" "$bench_root/bench/$1" "${@:2}"
}

echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) CPUs, $(git -C "$bench_root" rev-parse --short HEAD), load:$(uptime | sed 's/.*load average://')"
