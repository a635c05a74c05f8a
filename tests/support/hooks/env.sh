#!/bin/sh
# env.sh PID OUT: records the environment rotor gave the command (PID is that command's shell, whose
# /proc environ is what rotor passed, before the shell added PWD) and writes to both streams.
tr '\0' '\n' <"/proc/$1/environ" >"$2"
echo "hello from $ROTOR_ACTION $ROTOR_SLOT"
echo "stdin is $(readlink "/proc/$1/fd/0")"
echo "warning on stderr" >&2
# 999 ASCII characters and a 2-byte character across the 1000-byte cut
printf '%0999d\303\251 and more\n' 0
printf '%02000d\n' 0
printf 'last line without newline'
