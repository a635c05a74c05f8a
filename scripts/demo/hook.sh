#!/usr/bin/env bash
# hook.sh: the demo's blue/green actions on one machine (two rotor-sample-app instances behind
# nginx), run by rotor's exec deploy driver and by scripts/demo.sh itself.
#
#   hook.sh ENV_FILE [ACTION [SLOT]]     ACTION and SLOT default to ROTOR_ACTION and ROTOR_SLOT
#
#   deploy SLOT     (re)start SLOT's app, wait for its /readyz, point nginx's stage port at it
#   swap SLOT       production to SLOT, stage to the other slot, reload nginx, wait until
#                   production answers from SLOT
#   retire SLOT     stop SLOT's app (rotor runs this for the old slot after the drain time)
#   rollback SLOT   production back to SLOT (the old slot), stage to the other one
#   start-app SLOT, stop-app SLOT, point SLOT (production and stage, no reload): for demo.sh
#
# ENV_FILE (written by demo.sh, no secret in it) names the app binary, the database DSN without
# user or password, the store dir, the four ports and the nginx prefix. rotor runs this with an
# environment of PATH, HOME, LANG and ROTOR_* only, never a password: the app reads its own
# slot's password file.
set -euo pipefail

[ $# -ge 1 ] || {
  echo "usage: hook.sh ENV_FILE [ACTION [SLOT]]" >&2
  exit 2
}
# shellcheck source=/dev/null
. "$1"
action=${2:-${ROTOR_ACTION:-}}
slot=${3:-${ROTOR_SLOT:-}}
case "$slot" in
  blue) other=green ;;
  green) other=blue ;;
  *)
    echo "hook: slot must be blue or green, not '$slot'" >&2
    exit 2
    ;;
esac

port_of() { if [ "$1" = blue ]; then echo "$BLUE_PORT"; else echo "$GREEN_PORT"; fi; }
pidfile() { echo "$APPS_DIR/$1.pid"; }

# True while pid $1 runs; a zombie has exited (an orphaned app's parent may never reap it).
running() {
  [ -n "$1" ] && [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
exited() { ! running "$1"; }

# True when GET $1 answers with X-Slot $2.
answers_from() {
  [ "$(curl -s -m 2 -D - -o /dev/null "$1" 2>/dev/null | tr -d '\r' |
    awk -F': ' 'tolower($1) == "x-slot" { print $2 }')" = "$2" ]
}

# Polls every 0.1 s until "$@" succeeds $1 times in a row, at most $2 seconds.
until_n() {
  local need=$1 timeout=$2 n=0
  shift 2
  local deadline=$((SECONDS + timeout))
  while [ "$n" -lt "$need" ]; do
    if "$@"; then n=$((n + 1)); else n=0; fi
    [ "$SECONDS" -le "$deadline" ] || return 1
    [ "$n" -ge "$need" ] || sleep 0.1
  done
}

stop_app() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 0
  pid=$(<"$f")
  if running "$pid"; then
    # The app stops accepting at once and finishes what it serves: graceful by itself.
    kill -TERM "$pid" 2>/dev/null || true
    until_n 1 15 exited "$pid" || {
      echo "hook: $1's app (pid $pid) did not stop in 15s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    }
  fi
  rm -f "$f"
  echo "hook: stopped $1's app (pid $pid)"
}

ready() { curl -fs -m 2 -o /dev/null "http://127.0.0.1:$(port_of "$slot")/readyz"; }

start_app() {
  stop_app "$slot"
  local port
  port=$(port_of "$slot")
  # A session of its own, so that the exec driver's kill of this hook's process group (on a
  # timeout) never reaches an app that outlives the hook; output to its own log, not to rotor's.
  setsid "$APP" --listen "127.0.0.1:$port" --slot "$slot" --role "app_$slot" \
    --password-file "$STORE/pg-$slot" --db "$DB_DSN" --drain-timeout-ms 5000 \
    </dev/null >>"$APPS_DIR/$slot.log" 2>&1 &
  echo $! >"$(pidfile "$slot")"
  # Ready means it logged in as its role with the password it read: only then may traffic come.
  until_n 1 20 ready || {
    echo "hook: $slot's app did not become ready on 127.0.0.1:$port in 20s:" >&2
    tail -n 5 "$APPS_DIR/$slot.log" >&2
    exit 1
  }
  echo "hook: $slot's app is ready on 127.0.0.1:$port (pid $(<"$(pidfile "$slot")"))"
}

# Rewrites an upstream file atomically: nginx must never read half of one.
upstream() {
  printf 'server 127.0.0.1:%s;\n' "$(port_of "$2")" >"$NGINX_DIR/$1.conf.tmp"
  mv -f "$NGINX_DIR/$1.conf.tmp" "$NGINX_DIR/$1.conf"
}

nginx_reload() {
  local args=(-p "$NGINX_DIR/" -c nginx.conf -e "$NGINX_DIR/error.log")
  nginx "${args[@]}" -t -q
  # Graceful: new workers take new connections, old ones finish their requests and exit.
  nginx "${args[@]}" -s reload
}

# Waits until the port answers from slot $2, 3 times in a row (the reload has taken effect).
confirm() {
  until_n 3 10 answers_from "http://127.0.0.1:$1/healthz" "$2" || {
    echo "hook: 127.0.0.1:$1 still does not answer from $2 10s after the reload" >&2
    exit 1
  }
}

case "$action" in
  deploy)
    start_app
    upstream stage "$slot"
    nginx_reload
    confirm "$STAGE_PORT" "$slot"
    echo "hook: stage (127.0.0.1:$STAGE_PORT) -> $slot"
    ;;
  swap | rollback)
    upstream production "$slot"
    upstream stage "$other"
    nginx_reload
    confirm "$PROD_PORT" "$slot"
    echo "hook: production (127.0.0.1:$PROD_PORT) -> $slot, stage -> $other"
    ;;
  retire | stop-app) stop_app "$slot" ;;
  start-app) start_app ;;
  point)
    upstream production "$slot"
    upstream stage "$other"
    ;;
  *)
    echo "hook: unknown action '$action'" >&2
    exit 2
    ;;
esac
