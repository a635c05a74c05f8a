#!/usr/bin/env bash
# Builds rotor into build/ (and, with --sanitize, the ASan/UBSan build into build-asan/).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=build; flags=(-DROTOR_WERROR=ON)
if [ "${1:-}" = "--sanitize" ]; then dir=build-asan; flags+=(-DROTOR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug); fi
cmake -S "$top" -B "$top/$dir" "${flags[@]}" >/dev/null
cmake --build "$top/$dir" -j"$(nproc)"
