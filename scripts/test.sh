#!/usr/bin/env bash
# Install everything the tests need (Debian and pip packages), start the real components
# that are not running (PostgreSQL, Redis), lint, and run the whole test suite. coturn is only
# installed: the tests start their own turnserver on loopback.
# Arguments go to pytest. With PROBELINK_REQUIRE_ALL=1 a missing component fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

DEBIAN_PACKAGES=(postgresql postgresql-client redis-server coturn)
PG_URL="${PROBELINK_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"

start_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
  echo "probelink: starting PostgreSQL" >&2
  local version
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
}

# The tests connect as postgres over TCP without a password (trust), as on the dev machines.
trust_local_postgres() {
  if psql "$PG_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
  [ -n "${PROBELINK_TEST_POSTGRES_URL:-}" ] && return 0  # someone else's server: leave it alone
  local version hba
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  echo "probelink: allowing postgres@127.0.0.1 without password for tests ($hba)" >&2
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  echo "probelink: starting Redis" >&2
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
}

# Installing coturn enables its system service, which with Debian's default configuration is
# an unauthenticated relay on every address: when this script installs it, it stops and
# disables that service (a coturn installed before is left as it was).
coturn_was_installed() { dpkg-query -W -f='${Status}' coturn 2>/dev/null | grep -q "install ok installed"; }
disable_new_coturn_service() {
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now coturn.service >/dev/null 2>&1 || true
  fi
}

had_coturn=0; coturn_was_installed && had_coturn=1
apt_install "${DEBIAN_PACKAGES[@]}"
[ "$had_coturn" = 1 ] || disable_new_coturn_service
start_postgres
trust_local_postgres
start_redis
ensure_venv "[test]"

echo "probelink: lint (ruff, mypy)" >&2
.venv/bin/ruff check server tests load_tests
.venv/bin/ruff format --check server tests load_tests
.venv/bin/mypy

exec .venv/bin/python -m pytest "$@"
