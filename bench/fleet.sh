#!/usr/bin/env bash
# bench/fleet.sh: throughput of a fleet of rotations, rotor against bare libpq doing the same
# database work, beside one private PostgreSQL (fsync off). See bench/fleet.py.
#   bench/fleet.sh [N ...]            one run per N (default 100); prints a table row per N
#   bench/fleet.sh --plot N ...       also draws docs/img/fleet.png from the rows (gnuplot)
#   bench/fleet.sh --perf N           perf record -g of rotor during the run (kept directory)
#   FLEET_ROWS=rows bench/fleet.sh --plot   draws the rows already in that file
# BUILD_DIR (default build/) is configured RelWithDebInfo and rotor + bench_fleet_baseline built.
# FLEET_LABEL names the rows (e.g. "before", "after"); FLEET_ROWS appends them to a file;
# FLEET_ROTOR runs another rotor binary (e.g. one built from main) against this baseline.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
plot=0 perf=()
ns=()
for arg in "$@"; do
  case $arg in
    --plot) plot=1 ;;
    --perf) perf=(--perf) ;;
    [0-9]*) ns+=("$arg") ;;
    *) echo "usage: $0 [--plot] [--perf] [N ...]" >&2; exit 2 ;;
  esac
done
# --plot alone with FLEET_ROWS: draw the rows already in that file, run nothing.
if [ ${#ns[@]} -eq 0 ] && [ "$plot" -eq 1 ] && [ -n "${FLEET_ROWS:-}" ]; then
  ns=()
else
  [ ${#ns[@]} -gt 0 ] || ns=(100)
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j2 --target rotor bench_fleet_baseline >/dev/null
fi

rows=${FLEET_ROWS:-$(mktemp)}
# One server per N: every run starts from an empty journal and fresh statistics.
for n in "${ns[@]}"; do
  ROTOR_PG_OPTS="-c max_connections=$((n * 2 + 50)) ${FLEET_PG_OPTS:-}" \
    "$root/tests/support/with-postgres" /usr/bin/python3 "$root/bench/fleet.py" --n "$n" \
    --rotor "${FLEET_ROTOR:-$build/rotor}" --baseline "$build/bench_fleet_baseline" \
    --label "${FLEET_LABEL:-}" "${perf[@]}" | tee /dev/stderr | grep '^ROW' >>"$rows" || exit 1
done 2>&1

echo
echo "| run | N | baseline rotations/s | rotor rotations/s | ratio | rotor CPU (cores) | journal commits / rotation | admin commits / rotation |"
echo "|---|---|---|---|---|---|---|---|"
sed 's/^ROW //' "$rows"

[ "$plot" -eq 1 ] || exit 0
command -v gnuplot >/dev/null || apt-get install -y gnuplot-nox >/dev/null
mkdir -p "$root/docs/img"
# columns of a row: | label | N | baseline | rotor | ...
data=$(mktemp)
awk -F'|' '{ gsub(/ /, "", $2); print $2, $3, $4, $5 }' "$rows" | sort -k1,1 -k2n >"$data"
gnuplot <<GP
set terminal pngcairo size 800,480 noenhanced
set output "$root/docs/img/fleet.png"
set title "Fleet of N rotations: rotations/s (2 cores, PostgreSQL fsync off)"
set xlabel "N (rotations requested at once)"
set ylabel "rotations/s"
set logscale x
set yrange [0:*]
set xtics (100, 300, 1000)
set xrange [80:1250]
set key below
set grid
plot for [l in system("awk '{print \$1}' $data | sort -u")] \
       "< awk '\$1==\"".l."\"' $data" using 2:3 with linespoints dashtype 2 title "bare libpq, ".l." run", \
     for [l in system("awk '{print \$1}' $data | sort -u")] \
       "< awk '\$1==\"".l."\"' $data" using 2:4 with linespoints title "rotor ".l
GP
echo "plot: docs/img/fleet.png"
