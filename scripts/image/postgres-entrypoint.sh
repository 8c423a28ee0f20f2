#!/bin/sh
# Entrypoint of the local PostgreSQL 15 image (scripts/image/local.Containerfile): what the
# postgres:15 image does with POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, enough for
# docker-compose.yml. On first start (an empty PGDATA): initdb with that superuser and
# password (scram-sha-256 over TCP, trust on the socket inside the container), then the
# database; then the server, as user postgres, listening on every interface.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
as_postgres=""
if [ "$(id -u)" -eq 0 ]; then
    as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "POSTGRES_PASSWORD is required" >&2; exit 1; }
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    [ -z "$as_postgres" ] || chown postgres "$pwfile"
    $as_postgres initdb --username="$user" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    $as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    if [ "$db" != postgres ]; then
        $as_postgres psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -q \
            -c "CREATE DATABASE \"$db\""
    fi
    $as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres: initialised $PGDATA (user $user, database $db)"
fi

if [ "${1:-postgres}" = postgres ]; then
    [ $# -eq 0 ] || shift
    exec $as_postgres postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
