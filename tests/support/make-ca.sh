#!/usr/bin/env bash
# make-ca.sh: a throwaway CA and a server certificate for the tests' HTTPS emulators.
# Usage: make-ca.sh DIR [HOSTNAME...]  ->  DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key
# The server certificate always names 127.0.0.1, ::1 and localhost, plus every HOSTNAME given
# (a name such as vault.test.example lets a test pin it to 127.0.0.1 with curl's --resolve).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: make-ca.sh DIR [HOSTNAME...]" >&2; exit 2; }
dir=$1
shift
mkdir -p "$dir"

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
  san="$san,DNS:$name"
done

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=rotor test CA" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null

openssl req -newkey rsa:2048 -nodes -subj "/CN=${1:-localhost}" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null

cat >"$dir/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT

openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 2 -sha256 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null

rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 600 "$dir/ca.key" "$dir/server.key"
