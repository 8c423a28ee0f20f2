#!/usr/bin/env bash
# A second PostgreSQL cluster on this machine, the same as the main one but
# for shared_buffers sized for a large database: what a primary holding ten
# million jobs would run with. Debian's cluster tools (postgresql-common)
# create it; trust authentication on 127.0.0.1 as on the main one.
#
#   bench/sized_postgres.sh start [--port 5433] [--shared-buffers 8GB]
#   PGPORT=5433 bench/retention.sh      # every bench script follows PGPORT
#   bench/sized_postgres.sh stop        # stops it and removes its files
set -euo pipefail

action=${1:-}
[ $# -gt 0 ] && shift
port=5433 shared_buffers=8GB
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --shared-buffers) shared_buffers=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
name=bench_sized
version=$(ls /etc/postgresql | sort -V | tail -n 1)
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

case "$action" in
  start)
    if ! [ -d "/etc/postgresql/$version/$name" ]; then
      as_root pg_createcluster "$version" "$name" --port "$port" >/dev/null
      conf=/etc/postgresql/$version/$name
      # The main cluster's own settings (its conf.d too: autovacuum, WAL
      # sizes, ...), then the buffers. The buffers are added last, so
      # they win.
      as_root cp "/etc/postgresql/$version/main/postgresql.conf" "$conf/postgresql.conf.main"
      as_root sed -e "s|/main|/$name|g" -e "s|$version-main|$version-$name|g" \
        -e "s|^port = .*|port = $port|" "$conf/postgresql.conf.main" \
        | as_root tee "$conf/postgresql.conf" >/dev/null
      as_root rm "$conf/postgresql.conf.main"
      printf 'shared_buffers = %s\neffective_cache_size = 16GB\n' "$shared_buffers" \
        | as_root tee -a "$conf/postgresql.conf" >/dev/null
      for file in "/etc/postgresql/$version/main/conf.d/"*.conf; do
        [ -f "$file" ] || continue
        as_root sed -e "s|^port = .*|port = $port|" "$file" \
          | as_root tee "$conf/conf.d/$(basename "$file")" >/dev/null
      done
      as_root cp "/etc/postgresql/$version/main/pg_hba.conf" "$conf/pg_hba.conf"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
    pg_isready -q -h 127.0.0.1 -p "$port"
    psql "postgres://postgres@127.0.0.1:$port/postgres" -Atc \
      "SELECT 'sized cluster on $port: shared_buffers ' || current_setting('shared_buffers')"
    ;;
  stop)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop 2>/dev/null || true
    as_root pg_dropcluster "$version" "$name" 2>/dev/null || true
    ;;
  *) echo "usage: bench/sized_postgres.sh start|stop [--port P] [--shared-buffers S]" >&2; exit 2 ;;
esac
