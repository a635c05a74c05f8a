#!/usr/bin/env bash
# bench/keyvault.sh: N secrets (default 300) rotated at once through the Key Vault emulator, which
# enforces Key Vault's documented 300 secret writes per 10 s per vault (429 beyond). Reports the
# sustained write rate against the limit (goal >= 0.95) and the throttled answers (goal 0).
#   bench/keyvault.sh [SECRETS [LIMIT]]    KEYVAULT_TIMEOUT (default 900 s) bounds the wait
# Rows: bench/results/keyvault.tsv. Needs node (tests/emulators/keyvault/server.mjs).
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
command -v node >/dev/null || { echo "bench: node is missing (scripts/setup.sh)" >&2; exit 2; }
export KEYVAULT_TIMEOUT=${KEYVAULT_TIMEOUT:-900}
bench_run $((KEYVAULT_TIMEOUT + 300)) keyvault.py "${1:-300}" "${2:-300}"
