#!/usr/bin/env bash
# Install everything the tests need (Debian and pip packages), start the real components
# that are not running (PostgreSQL, Redis), lint, and run the whole test suite. coturn and Orthanc
# are only installed: the tests start their own on loopback.
# Arguments go to pytest. With PROBELINK_REQUIRE_ALL=1 a missing component fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

# dicom3tools: dciodvfy validates every DICOM object; tesseract-ocr proves burned-in text is gone
# (its CLI, in the tests) and tesseract-ocr-eng is the model the server's own text check reads with;
# dcmtk: findscu and storescu act as a scanner against the DICOM node;
# orthanc + orthanc-dicomweb: the PACS that key images are pushed to (tests start their own);
# chromium: the headless browser the web client's end-to-end tests drive through Playwright
# (/usr/bin/chromium, no browser download); fonts-dejavu-core: legible text in its screenshots;
# iproute2, nftables: the network namespace of a bedside whose UDP is blocked (tests/netns.py);
# nginx: the TLS proxy of docs/nginx/probelink.conf, run by tests/test_deployment.py.
DEBIAN_PACKAGES=(postgresql postgresql-client redis-server coturn dicom3tools dcmtk tesseract-ocr
  tesseract-ocr-eng
  orthanc orthanc-dicomweb chromium fonts-dejavu-core iproute2 nftables nginx
  zbar-tools)  # zbarimg: the join links' QR codes decoded back in the page tests
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

# Installing coturn, Orthanc or nginx enables its system service: coturn's Debian default is an
# unauthenticated relay on every address, Orthanc's a PACS on ports 8042 and 4242, nginx's a
# web server on port 80. The tests start their own on loopback, so when this script installs
# one it stops and disables the service (one installed before is left as it was).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
disable_service() {
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now "$1.service" >/dev/null 2>&1 || true
  elif command -v service >/dev/null; then
    as_root service "$1" stop >/dev/null 2>&1 || true
  fi
}

new_services=()
for service in coturn orthanc nginx; do installed "$service" || new_services+=("$service"); done
apt_install "${DEBIAN_PACKAGES[@]}"
for service in "${new_services[@]}"; do disable_service "$service"; done
start_postgres
trust_local_postgres
start_redis
ensure_venv "[test]"

echo "probelink: lint (ruff, mypy)" >&2
.venv/bin/ruff check server tests load_tests
.venv/bin/ruff format --check server tests load_tests
.venv/bin/mypy

exec .venv/bin/python -m pytest "$@"
