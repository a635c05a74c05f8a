#!/usr/bin/env bash
# Sets up, builds and runs every test: the normal build, then the same suite under
# AddressSanitizer and UndefinedBehaviorSanitizer. Exits non-zero if anything fails.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
"$top/scripts/check-style.sh"
"$top/scripts/build.sh"
(cd "$top/build" && ctest --output-on-failure -j4)
"$top/scripts/build.sh" --sanitize
(cd "$top/build-asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j4)
