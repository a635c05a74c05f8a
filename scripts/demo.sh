#!/usr/bin/env bash
# demo.sh: rotor's main job, zero downtime under load: a private PostgreSQL, two instances of
# rotor-sample-app (blue, green) behind a real nginx, rotor on its embedded broker with the file
# store and the exec deploy driver (scripts/demo/hook.sh), a steady load through nginx, two
# rotations blue -> green -> blue, then a summary. Everything it starts is stopped on exit, also
# on Ctrl-C.
#
#   scripts/demo.sh [--no-setup] [--keep] [--rate N] [--soak DUR] [--drain DUR] [--settle S]
#                   [--rotations N] [--keepalive]
#
#   --no-setup        skip scripts/setup.sh (packages) and scripts/build.sh (build/)
#   --keep            keep the work dir (logs, config, store, load.json) for a post-mortem; the
#                     servers are stopped all the same
#   --rate N          requests per second through nginx for the whole run (default 50)
#   --soak DUR        approval soak: production probes pass this long before retire (default 5s)
#   --drain DUR       retire's drain time before the old app stops (default 2s)
#   --settle S        seconds of load before the first and after the last rotation (default 3)
#   --rotations N     rotations in a row, blue -> green -> blue ... (default 2; the soak runs 100)
#   --keepalive       the load keeps its connections open as browsers do, and retries once a
#                     request whose reused connection the server closed (RFC 9112 9.3.1); the
#                     summary counts those retries
#   ROTOR_DEMO_DIR    work dir (default: var/demo in the source tree); must be absent or empty
#   ROTOR_BIN         the rotor binary (default: build/rotor in the source tree)
#   ROTOR_SAMPLE_APP  the sample app (default: rotor-sample-app next to ROTOR_BIN)
#
# No password is ever printed or put on a command line: they are generated into files, the apps
# read their slot's file, and the one child that needs one (psql) gets it in its own environment.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
setup=1
keep=0
rate=50
soak=5s
drain=2s
settle=3
rotations=2
keepalive=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --no-setup) setup=0 ;;
    --keep) keep=1 ;;
    --keepalive) keepalive=1 ;;
    --rate | --soak | --drain | --settle | --rotations)
      [ $# -ge 2 ] || { echo "demo: $1 needs a value" >&2; exit 1; }
      declare "${1#--}=$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown argument: $1 (try --help)" >&2; exit 1 ;;
  esac
  shift
done
if ! [[ "$rate" =~ ^[0-9]+$ ]] || [ "$rate" -lt 1 ] || [ "$rate" -gt 1000 ]; then
  echo "demo: --rate must be 1..1000" >&2
  exit 1
fi
[[ "$settle" =~ ^[0-9]+$ ]] || { echo "demo: --settle must be whole seconds" >&2; exit 1; }
if ! [[ "$rotations" =~ ^[0-9]+$ ]] || [ "$rotations" -lt 2 ] || [ "$rotations" -gt 10000 ]; then
  echo "demo: --rotations must be 2..10000" >&2
  exit 1
fi
[[ "$soak$drain" =~ ^[0-9]+(ms|s|m)[0-9]+(ms|s|m)$ ]] || { echo "demo: --soak and --drain are durations (500ms, 2s, 1m)" >&2; exit 1; }

rotor=${ROTOR_BIN:-$top/build/rotor}
app=${ROTOR_SAMPLE_APP:-$(dirname "$rotor")/rotor-sample-app}
hook=$top/scripts/demo/hook.sh
work=${ROTOR_DEMO_DIR:-$top/var/demo}
secret=app-db

# ---- output helpers ---------------------------------------------------------------------------

if [ -t 1 ]; then bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' off=$'\e[0m'; else bold="" green="" red="" off=""; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
ok() { printf '    %sok%s  %s\n' "$green" "$off" "$*"; }
die() {
  printf '%sdemo: %s%s\n' "$red" "$*" "$off" >&2
  exit 1
}

# Waits until "$@" succeeds, polling every 0.2 s, at most $1 seconds; $2 says what for.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

# ---- clean-up ---------------------------------------------------------------------------------

rotor_pid=""
request_pid=""
tail_pid=""
load_pid=""
nginx_pid=""
envfile=""
work_made=0
pgbin=""

# initdb and postgres refuse to run as root. An array, not a function: a trap that fires while a
# function runs inherits the function's redirections, and would print its messages into them.
as_pg=()
[ "$(id -u)" -ne 0 ] || as_pg=(runuser -u postgres --)

# Pids of the processes whose command line names the work dir, but for PostgreSQL's (pg_ctl stops
# it) and this script's own.
leftovers() {
  local dir pid cmd
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    if [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ]; then continue; fi
    cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in *"$work/pg/"*) continue ;; *"$work/"*) echo "$pid" ;; esac
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in $load_pid $request_pid $tail_pid; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  if [ -n "$rotor_pid" ] && kill -0 "$rotor_pid" 2>/dev/null; then
    kill -TERM "$rotor_pid"
    for _ in $(seq 1 150); do kill -0 "$rotor_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$rotor_pid" 2>/dev/null && { echo "demo: rotor did not stop in 15s; killing it" >&2; kill -KILL "$rotor_pid"; }
    wait "$rotor_pid" 2>/dev/null
  fi
  if [ -n "$nginx_pid" ] && kill -0 "$nginx_pid" 2>/dev/null; then
    kill -TERM "$nginx_pid"
    for _ in $(seq 1 100); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$nginx_pid" 2>/dev/null && kill -KILL "$nginx_pid"
    wait "$nginx_pid" 2>/dev/null
  fi
  if [ -n "$envfile" ] && [ -f "$envfile" ]; then
    for slot in blue green; do "$hook" "$envfile" stop-app "$slot" >/dev/null 2>&1; done
  fi
  # Anything still running from the work dir (an app a hook started just as rotor was stopped).
  if [ "$work_made" -eq 1 ]; then
    for pid in $(leftovers); do kill -KILL "$pid" 2>/dev/null; done
  fi
  # Also after an interrupted start: a server may be up without pg_ctl having said so.
  if [ "$work_made" -eq 1 ] && [ -f "$work/pg/data/postmaster.pid" ]; then
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m fast -w -t 20 stop >/dev/null 2>&1 ||
      "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate -w -t 20 stop >/dev/null 2>&1
  fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ] && [ "$work_made" -eq 1 ] && [ -f "$work/rotor.log" ]; then
    echo "--- last lines of rotor's log ($work/rotor.log) ---" >&2
    tail -n 30 "$work/rotor.log" >&2
  fi
  if [ "$work_made" -eq 1 ]; then
    if [ "$keep" -eq 1 ]; then
      echo "demo: kept the work dir $work" >&2
    else
      rm -rf "$work"
    fi
  fi
  case "$rc" in
    0) ;;
    130 | 143) printf '%sdemo: interrupted; everything it started is stopped%s\n' "$red" "$off" >&2 ;;
    *) printf '%sdemo: FAILED (exit %d)%s\n' "$red" "$rc" "$off" >&2 ;;
  esac
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- set-up and build -------------------------------------------------------------------------

if [ "$setup" -eq 1 ]; then
  step "Installing packages (scripts/setup.sh)"
  "$top/scripts/setup.sh"
  step "Building rotor (scripts/build.sh)"
  "$top/scripts/build.sh" >/dev/null
  ok "built $top/build/rotor and $top/build/rotor-sample-app"
fi
[ -x "$rotor" ] || die "no rotor binary at $rotor (run scripts/build.sh, or set ROTOR_BIN)"
[ -x "$app" ] || die "no rotor-sample-app at $app (run scripts/build.sh, or set ROTOR_SAMPLE_APP)"
# Debian's python3 (setup.sh installs it), not whatever python3 comes first on PATH
python=/usr/bin/python3
for tool in psql kcat "$python" timeout nginx curl; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs it)"
done
pgbin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
[ -x "$pgbin/initdb" ] || die "PostgreSQL server binaries not found (scripts/setup.sh installs them)"

# ---- work dir ---------------------------------------------------------------------------------

if [ -e "$work" ] && [ -n "$(ls -A "$work" 2>/dev/null)" ]; then
  die "$work exists and is not empty (a --keep run?): remove it or set ROTOR_DEMO_DIR"
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
work_made=1
chmod 755 "$work"
mkdir -p "$work/pg" "$work/private"
chmod 700 "$work/private"
store=$work/secrets
mkdir -m 700 "$store"
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$work/pg"
  runuser -u postgres -- test -x "$work/pg" ||
    die "the postgres user cannot reach $work (a parent directory is not searchable): set ROTOR_DEMO_DIR"
fi
echo "work dir: $work"
echo "store dir: $store"

# ---- PostgreSQL -------------------------------------------------------------------------------

step "Starting a private PostgreSQL in $work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U postgres -A trust --no-sync >"$work/pg/initdb.log" 2>&1 ||
  { cat "$work/pg/initdb.log" >&2; die "initdb failed"; }
# The superuser is the admin identity (trusted locally); every application role must use SCRAM.
cat >"$work/pg/data/pg_hba.conf" <<'HBA'
local all postgres trust
host  all postgres 127.0.0.1/32 trust
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
HBA
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A free port may be taken between choosing and binding it: try a few.
for try in 1 2 3; do
  port=$(free_port)
  if "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -t 60 \
    -o "-p $port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c password_encryption=scram-sha-256" \
    start >/dev/null 2>&1; then
    break
  fi
  # pg_ctl may time out with a server that is still coming up: make sure none is left behind.
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  [ "$try" -lt 3 ] || { tail -n 20 "$work/pg/server.log" >&2; die "PostgreSQL did not start"; }
done
ok "PostgreSQL $(basename "$(dirname "$pgbin")") on 127.0.0.1:$port, socket in $work/pg"

admin_dsn="host=$work/pg port=$port user=postgres dbname=postgres"
export ROTOR_JOURNAL_DSN="$admin_dsn" APP_DB_ADMIN_DSN="$admin_dsn" PGCONNECT_TIMEOUT=5
sql() { psql "$admin_dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }

# The active slot's first password: from the kernel's CSPRNG straight into the store file.
(umask 077 && head -c 48 /dev/urandom | base64 -w0 | tr -d '+/=' | cut -c1-32 | tr -d '\n' >"$store/pg-blue")
[ "$(wc -c <"$store/pg-blue")" -eq 32 ] || die "could not generate the first password"

step "Creating the role pair and a sample table"
# psql reads the password from the file itself (\set with backquotes): it is on no command line.
sql <<SQL
\\set pw \`cat '$store/pg-blue'\`
CREATE ROLE app_rw NOLOGIN;
CREATE ROLE app_blue LOGIN PASSWORD :'pw' IN ROLE app_rw;
CREATE ROLE app_green NOLOGIN IN ROLE app_rw;
CREATE SCHEMA app;
CREATE TABLE app.users (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO app.users (name) VALUES ('ada'), ('grace'), ('linus');
GRANT USAGE ON SCHEMA app TO app_rw;
GRANT SELECT ON app.users TO app_rw;
SQL
ok "roles app_blue (LOGIN, active) and app_green (NOLOGIN, standby) in group app_rw; table app.users"
ok "seeded $store/pg-blue with a random 32-character password"

# ---- the application and its ingress ---------------------------------------------------------

step "Starting the blue app and nginx in front of it"
mkdir -p "$work/apps" "$work/nginx/tmp"
nginx_prod=$(free_port)
nginx_stage=$(free_port)
blue_port=$(free_port)
green_port=$(free_port)
envfile=$work/demo.env
# What hook.sh needs, written once: no password, only where things are.
cat >"$envfile" <<ENV
APP=$(printf '%q' "$app")
DB_DSN=$(printf '%q' "host=127.0.0.1 port=$port dbname=postgres")
STORE=$(printf '%q' "$store")
APPS_DIR=$(printf '%q' "$work/apps")
NGINX_DIR=$(printf '%q' "$work/nginx")
BLUE_PORT=$blue_port
GREEN_PORT=$green_port
PROD_PORT=$nginx_prod
STAGE_PORT=$nginx_stage
ENV
user_line=""
[ "$(id -u)" -ne 0 ] || user_line="user root;"
sed -e "s|@DIR@|$work/nginx|g" -e "s|@USER_LINE@|$user_line|" -e "s|@PROD_PORT@|$nginx_prod|" \
  -e "s|@STAGE_PORT@|$nginx_stage|" "$top/scripts/demo/nginx.conf.in" >"$work/nginx/nginx.conf"
"$hook" "$envfile" start-app blue >/dev/null || die "the blue app did not start (see $work/apps/blue.log)"
ok "rotor-sample-app blue on 127.0.0.1:$blue_port as app_blue (password file $store/pg-blue)"
"$hook" "$envfile" point blue
nginx_args=(-p "$work/nginx/" -c nginx.conf -e "$work/nginx/error.log")
nginx "${nginx_args[@]}" -t -q || die "nginx rejects $work/nginx/nginx.conf"
setsid nginx "${nginx_args[@]}" >"$work/nginx/stdout.log" 2>&1 &
nginx_pid=$!
production_slot() {
  curl -s -m 2 -D - -o /dev/null "http://127.0.0.1:$nginx_prod/users" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "x-slot" { print $2 }'
}
serves_blue() {
  kill -0 "$nginx_pid" 2>/dev/null || die "nginx exited early (see $work/nginx/error.log)"
  [ "$(production_slot)" = blue ]
}
wait_for 20 "nginx to serve the blue app" serves_blue
ok "nginx $nginx_pid: production 127.0.0.1:$nginx_prod -> blue, stage 127.0.0.1:$nginx_stage -> green (not running)"

# ---- rotor ------------------------------------------------------------------------------------

# The exec driver runs each command with sh -c: a quoted command, then quoted again for YAML.
hook_cmd=$(printf '%q %q' "$hook" "$envfile")
hook_yaml="'${hook_cmd//\'/\'\'}'"
cfg=$work/rotor.yaml
bootstrap=$work/rotor.bootstrap
cat >"$cfg" <<YAML
# rotor.yaml written by scripts/demo.sh: the embedded broker, the file store, and blue/green
# behind nginx through the exec deploy driver (scripts/demo/hook.sh).
kafka:
  brokers: embedded
  bootstrap_file: $bootstrap
  group: rotor
  topics: { commands: rotor.commands, events: rotor.events, deadletter: rotor.deadletter }
journal: { dsn_env: ROTOR_JOURNAL_DSN }
http: { listen: "127.0.0.1:0" }
log: { level: info }
daemon: { shutdown_timeout: 10s }
stages: { timeout: 60s, max_attempts: 3, backoff: { initial: 200ms, max: 2s } }
secrets:
  - name: $secret
    active: blue
    database:
      dsn_env: APP_DB_ADMIN_DSN
      roles: { blue: app_blue, green: app_green }
      probe: select count(*) from app.users
      # Longer than any request the old slot may still be serving through nginx's old workers.
      drain: $drain
    store:
      kind: file
      dir: $store
      names: { blue: pg-blue, green: pg-green, current: pg-current }
    password: { length: 32, classes: [upper, lower, digit] }
    validity: 90d
    deploy:
      kind: exec
      exec:
        workdir: $work
        deploy: $hook_yaml # starts the standby's app, waits for /readyz, stage port to it
        swap: $hook_yaml # production to the new slot, graceful reload
        retire: $hook_yaml # stops the old slot's app, after the drain
        rollback: $hook_yaml # production back to the old slot
        timeout: 45s
    probes:
      verify: # the standby app, through nginx's stage port
        - { url: "http://127.0.0.1:$nginx_stage/readyz", successes: 2, interval: 250ms, timeout: 2s }
      production: # production through nginx, after swap and through the soak
        - { url: "http://127.0.0.1:$nginx_prod/users", successes: 2, interval: 250ms, timeout: 2s }
    approval: { mode: auto, soak: $soak }
YAML

step "Starting rotor run (log: $work/rotor.log)"
# In a session of its own, so that a Ctrl-C reaches only this script, whose trap then stops rotor
# gracefully. (setsid execs in place here: a background job is no process group leader.)
setsid "$rotor" run -c "$cfg" >"$work/rotor.log" 2>&1 &
rotor_pid=$!
rotor_up() {
  kill -0 "$rotor_pid" 2>/dev/null || die "rotor run exited early"
  grep -q '"kafka.assigned"' "$work/rotor.log"
}
wait_for 60 "rotor to join its consumer group" rotor_up
http_port=$(grep -o '"http.listening".*' "$work/rotor.log" | grep -o '"port": *"\{0,1\}[0-9]*' | grep -o '[0-9]*$' || true)
if [ -n "$http_port" ] && command -v curl >/dev/null; then
  wait_for 30 "rotor's /readyz" curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$http_port/readyz"
  ok "rotor is ready (pid $rotor_pid, /readyz on 127.0.0.1:$http_port, broker $(cat "$bootstrap"))"
else
  ok "rotor is ready (pid $rotor_pid, broker $(cat "$bootstrap"))"
fi

# ---- the rotations ----------------------------------------------------------------------------

# Tries to log in over TCP with SCRAM as role $1 with the password in file $2; prints psql's
# answer (a result or the error line). PGPASSWORD lives in psql's environment only.
try_login() {
  PGPASSWORD=$(<"$2") psql -X -At -h 127.0.0.1 -p "$port" -U "$1" -d postgres \
    -c "select current_user || ' reads ' || count(*) || ' rows of app.users' from app.users" 2>&1
}

active_slot() { sql -At -c "SELECT active_slot FROM rotor.secrets WHERE name = '$secret'"; }

# The load's counters so far, from the summary it rewrites every second.
load_json=$work/load.json
load_line() { "$python" - "$load_json" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
if sys.argv[2] == "counts":
    print(f"{s['sent']} sent, {s['ok']} ok, {s['failed']} failed in {s['elapsed']:.0f} s")
elif sys.argv[2] == "reuse":
    by = ", ".join(f"{k}: {v}" for k, v in s.get("retried_by", {}).items())
    print(f"{s['connections']} connections, {s['retries']} retried on a closed kept-alive one"
          + (f" ({by})" if by else ""))
elif sys.argv[2] == "progress":
    print(f"{s['sent']} sent, {s['failed']} failed")
elif sys.argv[2] == "failed":
    print(s["failed"])
elif sys.argv[2] == "sent":
    print(s["sent"])
elif sys.argv[2] == "runs":
    print(" -> ".join(f"{slot} ({n})" for slot, n, _, _ in s["runs"]) or "none")
elif sys.argv[2] == "errors":
    print(", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none")
PY
}

load_args=(--url "http://127.0.0.1:$nginx_prod/users" --rate "$rate" --summary "$load_json")
# Bounded, so that a load orphaned by a killed demo stops by itself: 900 s, or 2 min a rotation.
load_args+=(--max-seconds "$((rotations * 120 > 900 ? rotations * 120 : 900))")
load_kind="a new connection per request"
if [ "$keepalive" -eq 1 ]; then
  load_args+=(--keepalive)
  load_kind="kept-alive connections"
fi
step "Starting the load: $rate requests/s through nginx (127.0.0.1:$nginx_prod/users), $load_kind, for the whole run"
setsid "$python" "$top/scripts/demo/load.py" "${load_args[@]}" >"$work/load.log" 2>&1 &
load_pid=$!
load_up() {
  kill -0 "$load_pid" 2>/dev/null || { cat "$work/load.log" >&2; die "the load generator exited early"; }
  [ -f "$load_json" ]
}
wait_for 10 "the load to start" load_up
sleep "$settle"
ok "load running (pid $load_pid): $(load_line progress)"

rotation_ids=()
retired_lines=()
retired_refused=()
for n in $(seq 1 "$rotations"); do
  if [ $((n % 2)) -eq 1 ]; then from=blue to=green; else from=green to=blue; fi
  # Keep the outgoing role's password to show afterwards that it no longer gets in.
  (umask 077 && cp "$store/pg-$from" "$work/private/retired-$n")
  step "Rotation $n: $from -> $to   (rotor request $secret --reason \"demo $n\" --wait)"
  out=$work/request-$n.out
  # In the background and awaited, so that a TERM or INT reaches our trap at once; tail shows
  # the live progress on screen.
  "$rotor" -c "$cfg" request "$secret" --reason "demo $n" --wait --timeout 120s >"$out" 2>&1 &
  request_pid=$!
  tail -n +1 -f --pid="$request_pid" "$out" &
  tail_pid=$!
  rc=0
  wait "$request_pid" || rc=$?
  request_pid=""
  wait "$tail_pid" || true
  tail_pid=""
  [ "$rc" -eq 0 ] || die "rotation $n did not complete: rotor request exited $rc (see above)"
  rid=$(grep -Eo '^rotation [0-9a-f-]{36}' "$out" | head -n 1 | cut -d' ' -f2 || true)
  [ -n "$rid" ] || die "could not find the rotation id in rotor's output"
  rotation_ids+=("$rid")
  [ "$(active_slot)" = "$to" ] || die "after rotation $n the active slot is $(active_slot), not $to"
  line=$(try_login "app_$to" "$store/pg-$to") || die "app_$to cannot log in with the store's password: $line"
  ok "app_$to logs in with the password in the store: $line"
  if line=$(try_login "app_$from" "$work/private/retired-$n"); then
    die "the retired role app_$from still logs in: $line"
  fi
  line=$(printf '%s\n' "$line" | grep -m1 -E 'FATAL|error' || printf '%s' "$line")
  retired_lines+=("$line")
  if printf '%s' "$line" | grep -q 'not permitted to log in'; then retired_refused+=(yes); else retired_refused+=(no); fi
  ok "app_$from (retired) is refused: $line"
  [ "$(production_slot)" = "$to" ] || die "nginx does not send production to $to after rotation $n"
  ok "nginx sends production to $to; load so far: $(load_line progress)"
done

sleep "$settle"
kill -TERM "$load_pid"
wait "$load_pid" || die "the load generator failed (see $work/load.log)"
load_pid=""

# ---- summary ----------------------------------------------------------------------------------

# The relay publishes the outbox shortly after each commit: wait for it before counting.
unsent() { [ "$(sql -At -c 'SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL')" = 0 ]; }
wait_for 30 "the outbox to be published" unsent
outbox=$(sql -At -c 'SELECT count(*) FROM rotor.outbox WHERE topic = '\''rotor.events'\''')
brokers=$(cat "$bootstrap")
count_topic() {
  timeout 30 kcat -b "$brokers" -C -t "$1" -o beginning -e -q -f 'x\n' 2>/dev/null | wc -l
}
events=$(count_topic rotor.events) || die "kcat could not read rotor.events from $brokers"
deadletters=$(count_topic rotor.deadletter) || die "kcat could not read rotor.deadletter from $brokers"

step "Summary"
r1=${rotation_ids[0]} r2=${rotation_ids[1]}
printf '\nstage durations in ms (rotor.history):\n'
# approve records no duration of its own when it approves by itself: its wait is the time since
# the entry before it (swap completed).
sql -P footer=off -v r1="$r1" -v r2="$r2" <<'SQL'
WITH h AS (
  SELECT rotation_id, id, stage, outcome,
         coalesce(duration_ms, round(1000 * extract(epoch FROM at - lag(at) OVER w))::bigint) AS ms
    FROM rotor.history
   WHERE rotation_id IN (:'r1', :'r2')
  WINDOW w AS (PARTITION BY rotation_id ORDER BY id))
SELECT stage AS "stage",
       max(ms) FILTER (WHERE rotation_id = :'r1') AS "rotation 1 (blue->green)",
       max(ms) FILTER (WHERE rotation_id = :'r2') AS "rotation 2 (green->blue)"
  FROM h
 WHERE outcome IN ('completed', 'approved') AND stage IS NOT NULL
 GROUP BY stage
 ORDER BY min(id);
SQL
printf 'rotations (rotor.rotations):\n'
sql -P footer=off -v r1="$r1" -v r2="$r2" <<'SQL'
SELECT CASE WHEN id = :'r1' THEN 1 ELSE 2 END AS "#", id AS "rotation", from_slot || ' -> ' || to_slot AS "slots",
       status, round(extract(epoch FROM finished_at - created_at)::numeric, 1) || ' s' AS "total"
  FROM rotor.rotations WHERE id IN (:'r1', :'r2') ORDER BY created_at;
SQL
final=$(active_slot)
final_login=$(try_login "app_$final" "$store/pg-$final") || die "app_$final cannot log in: $final_login"
printf '%-28s %s\n' "final active slot / role:" "$final / app_$final"
printf '%-28s %s\n' "store password logs in:" "$final_login"
printf '%-28s %s\n' "nginx production serves:" "$(production_slot) (127.0.0.1:$nginx_prod)"
printf '%-28s %s\n' "requests through nginx:" "$(load_line counts)"
printf '%-28s %s\n' "failed requests by cause:" "$(load_line errors)"
printf '%-28s %s\n' "client connections:" "$(load_line reuse)"
printf '%-28s %s\n' "slots that answered:" "$(load_line runs)"
printf '%-28s %s\n' "retired app_blue (after 1):" "${retired_lines[0]}"
printf '%-28s %s\n' "retired app_green (after 2):" "${retired_lines[1]}"
printf '%-28s %s\n' "events on rotor.events:" "$events (journal outbox: $outbox)"
printf '%-28s %s\n' "dead letters:" "$deadletters"

ids=$(printf "'%s'," "${rotation_ids[@]}")
completed=$(sql -At -c "SELECT count(*) FROM rotor.rotations WHERE id IN (${ids%,}) AND status = 'completed'")
all=$(sql -At -c "SELECT count(*) FROM rotor.rotations")
printf '%-28s %s\n' "rotations completed:" "$completed of $rotations (journal: $all rotations)"
if [ "$completed" != "$rotations" ] || [ "$all" != "$rotations" ]; then
  die "only $completed of $rotations rotations completed"
fi
expected=blue
[ $((rotations % 2)) -eq 0 ] || expected=green
[ "$final" = "$expected" ] || die "the active slot is $final, expected $expected"
case " ${retired_refused[*]} " in *" no "*) die "a retired role was not refused for lack of LOGIN" ;; esac
if [ "$events" -eq 0 ] || [ "$events" != "$outbox" ]; then
  die "rotor.events holds $events events, the journal's outbox $outbox"
fi
[ "$deadletters" = 0 ] || die "$deadletters dead letters"
failed=$(load_line failed)
[ "$failed" = 0 ] || die "$failed of $(load_line sent) requests through nginx failed"
if [ "$rotations" -eq 2 ]; then
  printf '\n%sdemo: two rotations completed, blue -> green -> blue, %s requests through nginx, 0 failed%s\n' \
    "$green" "$(load_line sent)" "$off"
else
  printf '\n%sdemo: %s rotations completed, ending on %s, %s requests through nginx, 0 failed%s\n' \
    "$green" "$rotations" "$final" "$(load_line sent)" "$off"
fi
