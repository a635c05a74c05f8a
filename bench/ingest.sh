#!/usr/bin/env bash
# bench/ingest.sh: rotor's ingest rate against kcat's raw consume of the same topic, same run.
#   bench/ingest.sh                       every mode at 10000 and 100000 messages
#   bench/ingest.sh keyvault 1000,10000   one mode, given sizes
# Modes (see bench/ingest.py): keyvault (events about secrets rotor does not manage), absorbed
# (distinct rotation.requested for a secret waiting on manual approval), redelivered (the same
# request event id again). INGEST_TIMEOUT (default 600 s) bounds each run; a run that times out
# reports the rate of what it handled and says TIMED OUT. Rows: bench/results/ingest.tsv.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

modes=${1:-keyvault,redelivered,absorbed}
sizes=${2:-10000,100000}
timeout_s=${INGEST_TIMEOUT:-600}
export INGEST_TIMEOUT=$timeout_s
nsizes=$(tr ',' '\n' <<<"$sizes" | wc -l)
for mode in ${modes//,/ }; do
  # each size: the run's bound, plus set-up, the two kcat baselines and stopping
  bench_run $(( (timeout_s + 240) * nsizes )) ingest.py "$mode" "$sizes"
done
