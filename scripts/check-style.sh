#!/usr/bin/env bash
# Style checked by tools, not review: clang-format on every C file, and no blocking call in the
# daemon's loop-thread code (consumer/, except the CLI files and the files that run on worker threads).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
fail=0
for f in $(git ls-files '*.c' '*.h' 2>/dev/null || find consumer tests -name '*.[ch]'); do
  [ -f "$f" ] || continue
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "style: $f is not clang-formatted (run clang-format -i $f)" >&2; fail=1
  fi
done
# Files whose functions run only on worker threads or in the CLI may block; everything else
# runs on the loop thread.
banned='\b(PQexec|PQexecParams|PQconnectdb|PQconnectdbParams|curl_easy_perform|rd_kafka_consumer_close|rd_kafka_flush|sleep|usleep|nanosleep|system|popen)\s*\('
for f in consumer/*.c; do
  case "$f" in consumer/cli_*|consumer/main.c|consumer/store_file.c|consumer/password.c) continue;; esac
  if grep -nHE "$banned" "$f" | grep -v 'loop-safe:' ; then
    echo "style: blocking call on the loop thread in $f" >&2; fail=1
  fi
done
exit $fail
