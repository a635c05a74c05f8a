#!/bin/sh
# barrier.sh DIR N: succeeds only if N copies run at once (each waits up to 20 s for the others).
touch "$1/$ROTOR_ROTATION_ID"
i=0
while [ $i -lt 400 ]; do
  [ "$(ls "$1" | wc -l)" -ge "$2" ] && exit 0
  sleep 0.05
  i=$((i + 1))
done
echo "only $(ls "$1" | wc -l) of $2 ran at once" >&2
exit 1
