#!/usr/bin/env bash
# Installs everything rotor needs to build, run locally and test, from Debian 12's packages.
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang clang-format
  librdkafka-dev libuv1-dev libjansson-dev libpq-dev libcurl4-openssl-dev libyaml-dev libssl-dev
  libmicrohttpd-dev libcmocka-dev
  postgresql kcat openssl
  nginx curl # the main job's ingress (scripts/demo.sh) and its hooks' readiness checks
  python3 python3-pytest python3-jsonschema python3-psycopg2 python3-yaml
  prometheus # promtool and a real server scrape rotor's /metrics (tests/e2e/test_metrics_prometheus.py)
)
# kubectl for the Kubernetes emulator's checks; another package (Google Cloud SDK's kubectl) may
# already own /usr/bin/kubectl, and dpkg refuses to install both.
command -v kubectl >/dev/null || packages+=(kubernetes-client)

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

# The Key Vault emulator and its checks with the Azure SDK for JavaScript (tests/emulators/keyvault)
# need node >= 20 and npm; NodeSource's nodejs package provides both (Debian 12's nodejs is 18).
kvemu_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/emulators/keyvault"
if [ ! -d "$kvemu_dir/node_modules" ] && command -v npm >/dev/null; then
  npm ci --prefix "$kvemu_dir" --no-audit --no-fund
fi
