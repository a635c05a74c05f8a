#!/usr/bin/env bash
# Installs everything rotor needs to build, run locally and test, from Debian 12's packages.
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang-format
  librdkafka-dev libuv1-dev libjansson-dev libpq-dev libcurl4-openssl-dev libyaml-dev
  libmicrohttpd-dev libcmocka-dev
  postgresql kcat
  python3 python3-pytest python3-jsonschema python3-psycopg2 python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's postgresql package starts a cluster of its own; rotor's tests and local run start their
# own servers in private directories and never use it.
