#!/bin/sh
# Entrypoint of the local Redis 7 image (scripts/image/local.Containerfile), as the redis:7
# image's: `redis-server ...` runs as user redis in /data, out of protected mode (the
# container's network is its protection; redis-server would otherwise refuse every client
# but loopback without a password). Anything else runs as given.
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    [ "$(id -u)" -ne 0 ] || chown redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
