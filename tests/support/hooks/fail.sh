#!/bin/sh
# fail.sh: fails as a broken reload would, after more stderr than rotor keeps for the reason.
echo "FIRST-LINE: this is cut from the reason" >&2
i=0
while [ $i -lt 60 ]; do
  echo "progress line $i: ...................................................." >&2
  i=$((i + 1))
done
echo "error: nginx reload failed" >&2
exit 3
