#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis run on 127.0.0.1, installing them from
# Debian's packages when they are missing. Idempotent: does nothing when both
# already answer. Prints the DATABASE_URL to use on its last line.
set -euo pipefail

PGHOST=127.0.0.1
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
# The password is only set (and only needed) on a server this script started
# with Debian's default authentication; a trust-auth server ignores it.
PGPASSWORD_DEFAULT=postgres

log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# curl is used by the scripts to wait for the service.
command -v curl >/dev/null 2>&1 || apt_install curl

# --- PostgreSQL ---------------------------------------------------------
if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  if ! (command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PGHOST" -p "$PGPORT"); then
    log "installing PostgreSQL from Debian's packages"
    apt_install postgresql postgresql-client
  fi
fi
if ! pg_isready -q -h "$PGHOST" -p "$PGPORT"; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do
    pg_isready -q -h "$PGHOST" -p "$PGPORT" && break
    sleep 0.2
  done
fi
pg_isready -q -h "$PGHOST" -p "$PGPORT" || { log "PostgreSQL does not answer on $PGHOST:$PGPORT"; exit 1; }

url_plain="postgres://postgres@$PGHOST:$PGPORT/postgres"
url_password="postgres://postgres:$PGPASSWORD_DEFAULT@$PGHOST:$PGPORT/postgres"
if psql "$url_plain" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  database_url=$url_plain
elif psql "$url_password" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  database_url=$url_password
else
  # Debian's default: peer auth on the socket, passwords on TCP. Give the
  # postgres role a password so tests can connect over TCP.
  log "setting a password for the postgres role (Debian's default auth)"
  as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD '$PGPASSWORD_DEFAULT'\"" >/dev/null
  database_url=$url_password
fi

# --- Redis --------------------------------------------------------------
if ! (command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1); then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis from Debian's packages"
    apt_install redis-server redis-tools
  fi
  if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    mkdir -p /tmp/translation-jobs-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
      --save "" --appendonly no --dir /tmp/translation-jobs-redis \
      --logfile /tmp/translation-jobs-redis/redis.log
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
fi
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null || { log "Redis does not answer on 127.0.0.1:$REDIS_PORT"; exit 1; }

log "PostgreSQL and Redis are up"
echo "$database_url"
