#!/usr/bin/env bash
# Installs what pg-vault-proxy's tests and demo need on a fresh Debian machine: PostgreSQL 15
# (server binaries, psql, pgbench), openssl, and the npm dependencies; with --tests also Debian's
# docker-compose, which the tests use to validate docker-compose.yml, and Debian's Docker engine and
# debootstrap, with which test/integration/image.test.ts builds and runs the image offline. Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v psql >/dev/null || missing+=(postgresql-client-15)
command -v openssl >/dev/null || missing+=(openssl)
if [ "${1:-}" = "--tests" ]; then
  command -v docker-compose >/dev/null || missing+=(docker-compose) # test/integration/compose.test.ts
  # test/integration/image.test.ts (scripts/image-test.sh); only root can run the engine it starts.
  if [ "$(id -u)" -eq 0 ]; then
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
  # tap's runner is generated from the plugin list in package.json (tsx instead of ts-node); a fresh
  # install ships the default one, and CI does not rebuild it on its own.
  npx tap build
fi
