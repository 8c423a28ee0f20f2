# Shared by the bench/ scripts: a fresh database, the service, a Redis of
# the benchmark's own. Source it from the repository root.

# The build to measure: release for figures, dev for the CI smoke run.
PROFILE=${PROFILE:-release}
BIN_DIR=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

bench_setup() {
  SERVER_URL=$(scripts/services.sh | tail -n 1)
  BASE_URL=${SERVER_URL%/*}
  if [ "${BENCH_SKIP_BUILD:-}" != 1 ]; then
    cargo build --locked --profile "$PROFILE" --bin translation-jobs --bin loadgen >&2
  fi
  BENCH_TMP=$(mktemp -d)
  SERVICE_PID= REDIS_PID=
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if [ -n "${SERVICE_PID:-}" ]; then kill -TERM "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null || true; fi
  if [ -n "${REDIS_PID:-}" ]; then kill -KILL "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "${BENCH_TMP:-/nonexistent}"
  true
}

# fresh_db NAME: drops and creates a database on the local server.
fresh_db() {
  psql "$SERVER_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_redis PORT [FSYNC]: a redis-server of the benchmark's own (AOF on,
# so a stop and start keeps the lists; FSYNC always or everysec), in the
# background.
start_redis() {
  mkdir -p "$BENCH_TMP/redis"
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync "${2:-always}" \
    --dir "$BENCH_TMP/redis" --logfile "$BENCH_TMP/redis/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis-server on $1 did not start" >&2; exit 1
}

stop_redis() {
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
}

# start_service DB QUEUE REDIS_URL [VAR=VALUE ...]: the service on free ports,
# waiting until it is ready. Sets GRPC_PORT, HTTP_PORT, SERVICE_PID.
start_service() {
  local db=$1 queue=$2 redis_url=$3; shift 3
  GRPC_PORT=$(free_port) HTTP_PORT=$(free_port)
  env DATABASE_URL="$BASE_URL/$db" REDIS_URL="$redis_url" TRANSLATION_QUEUE="$queue" \
    GRPC_ADDR="127.0.0.1:$GRPC_PORT" HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    QUEUE_MAX_BACKLOG=0 LOG_FORMAT=json RUST_LOG=warn "$@" \
    "$BIN_DIR/translation-jobs" >>"$BENCH_TMP/service.log" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "the service did not become ready; log:" >&2; tail -20 "$BENCH_TMP/service.log" >&2; exit 1
}

stop_service() {
  kill -TERM "$SERVICE_PID" 2>/dev/null || true
  wait "$SERVICE_PID" 2>/dev/null || true
  SERVICE_PID=
}

outbox_count() {
  psql "$BASE_URL/$1" -qtAc "SELECT count(*) FROM outbox"
}

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }

# redis_forget QUEUE [REDIS-CLI ARGS...]: deletes the queue's keys on the
# shared Redis: the plain list and everything tagged {QUEUE} (lanes, dead
# letters, push-once markers, state).
redis_forget() {
  local queue=$1; shift
  redis-cli "$@" del "$queue" >/dev/null
  redis-cli "$@" --scan --pattern "{$queue}:*" | xargs -r redis-cli "$@" del >/dev/null
}
