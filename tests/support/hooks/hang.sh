#!/bin/sh
# hang.sh PIDFILE: never finishes by itself, and leaves a background child that would outlive it
# unless its whole process group is killed. Writes "SHELL_PID CHILD_PID" to PIDFILE.
sleep 60 &
echo "$$ $!" >"$1.tmp" && mv "$1.tmp" "$1"
echo "waiting forever"
sleep 60
