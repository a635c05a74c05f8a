#!/usr/bin/env bash
# bench/idle.sh: rotor idle with N secrets (default 100) configured and the broker in another
# process, measured over a window (default 60 s): VmRSS (goal <= 8 MiB) and wake-ups per second
# of the loop thread (goal <= 1) and of the whole process, against an idle `kcat -G` consumer in
# the same window; then strace of the loop thread says what wakes it.
#   bench/idle.sh [SECRETS [SECONDS]]     IDLE_SETTLE (default 15 s) before the window
# Rows: bench/results/idle.tsv.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
window=${2:-60}
bench_run $((window + 240)) idle.py "${1:-100}" "$window"
