#!/usr/bin/env bash
# Sets up, builds and runs every test: the normal build's and the same suite under
# AddressSanitizer and UndefinedBehaviorSanitizer (named asan/...). Exits non-zero if anything
# fails. Both builds' tests run in one ctest run, so the long end-to-end tests of one overlap the
# other's: most of them wait on timers and I/O, not on the two cores.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
"$top/scripts/check-style.sh"
"$top/scripts/build-matrix.sh" # Release with gcc and clang, warnings as errors
"$top/scripts/build.sh"
"$top/scripts/build.sh" --sanitize
mkdir -p "$top/build-tests"
printf 'subdirs("%s" "%s")\n' "$top/build" "$top/build-asan" >"$top/build-tests/CTestTestfile.cmake"
cd "$top/build-tests"
ctest --output-on-failure -j"${ROTOR_TEST_JOBS:-8}" "$@"
