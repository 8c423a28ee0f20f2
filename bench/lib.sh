# Shared by the bench/ scripts: a fresh database, the service, a Redis of
# the benchmark's own. Source it from the repository root.
#
# For a script that runs the others (bench/retention.sh): BENCH_PREFIX
# replaces the `bench_` that starts the names of their databases and queues,
# BENCH_TEMPLATE makes each fresh database a copy of that database, and
# BENCH_SERVICE_LOG names a file the service's log is copied to at exit.

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
  # The queues the service ran on, on the shared Redis, once no service
  # is left to write them again (a forget while it ran could lose the race
  # with its last write of the queue's state).
  for queue in ${BENCH_QUEUES:-}; do redis_forget "$queue"; done
  if [ -n "${BENCH_SERVICE_LOG:-}" ] && [ -f "${BENCH_TMP:-/nonexistent}/service.log" ]; then
    cp "$BENCH_TMP/service.log" "$BENCH_SERVICE_LOG"
  fi
  rm -rf "${BENCH_TMP:-/nonexistent}"
  # The databases the run made: the figures are printed, nothing else needs them.
  for db in ${BENCH_DBS:-}; do
    psql "$SERVER_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null
  done
  true
}

# fresh_db NAME: drops and creates a database on the local server (a copy
# of $BENCH_TEMPLATE when set), dropped again when the script exits.
fresh_db() {
  BENCH_DBS="${BENCH_DBS:-} $1"
  local from=""
  # FILE_COPY: copies the files after a checkpoint instead of writing the
  # whole template to the WAL.
  [ -n "${BENCH_TEMPLATE:-}" ] && from=" TEMPLATE $BENCH_TEMPLATE STRATEGY FILE_COPY"
  psql "$SERVER_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1$from" 2>/dev/null
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

# Backpressure is on in every run, as in the default configuration, at a
# limit no benchmark reaches: creates pay for the readings (a PostgreSQL
# count and three LLENs every 250 ms, in the background) and are never
# refused. BENCH_QUEUE_MAX_BACKLOG=0 turns it off, to compare.
BENCH_QUEUE_MAX_BACKLOG=${BENCH_QUEUE_MAX_BACKLOG:-100000000}

# start_service DB QUEUE REDIS_URL [VAR=VALUE ...]: the service ($SERVICE_BIN, by
# default the build being measured) on free ports,
# waiting until it is ready. Sets GRPC_PORT, HTTP_PORT, SERVICE_PID.
start_service() {
  local db=$1 queue=$2 redis_url=$3; shift 3
  BENCH_QUEUES="${BENCH_QUEUES:-} $queue"
  GRPC_PORT=$(free_port) HTTP_PORT=$(free_port)
  env DATABASE_URL="$BASE_URL/$db" REDIS_URL="$redis_url" TRANSLATION_QUEUE="$queue" \
    GRPC_ADDR="127.0.0.1:$GRPC_PORT" HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    QUEUE_MAX_BACKLOG="$BENCH_QUEUE_MAX_BACKLOG" LOG_FORMAT=json RUST_LOG=warn "$@" \
    "${SERVICE_BIN:-$BIN_DIR/translation-jobs}" >>"$BENCH_TMP/service.log" 2>&1 &
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

# ensure_wrk: the HTTP load generator, installed from Debian when missing.
ensure_wrk() {
  command -v wrk >/dev/null && return
  echo "installing wrk (apt-get install wrk)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2; }
}

# entity_ids_array N: the pgbench array parameter of N chapters.
entity_ids_array() { echo "{$(seq -s, -f 'chapter-%g' 0 $(($1 - 1)))}"; }

# wrk_script N FILE: a wrk script posting the old service's create body with
# N subtasks (the body both the service and the old design accept).
wrk_script() {
  cat >"$2" <<LUA
local subs = {}
for i = 0, $(($1 - 1)) do subs[#subs + 1] = string.format('{"entity_type":"chapter","entity_id":"chapter-%d"}', i) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"novel_id":"0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e","target_lang":"en","source_lang":"ja","subtasks":[' .. table.concat(subs, ",") .. ']}'
LUA
}

# batched_round DB DURATION SUBTASKS: the batched limit (bench/create_batch.sql:
# 32 jobs per statement and commit, 2 clients); prints jobs per second.
batched_round() {
  local db=$1 duration=$2 subtasks=$3 tps
  PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c 2 -j 2 \
    -T "${duration%s}" -D batch=32 -D entity_ids="$(entity_ids_array "$subtasks")" \
    -f bench/create_batch.sql >"$BENCH_TMP/batched.out" 2>&1
  tps=$(awk '/^tps/ {print $3; exit}' "$BENCH_TMP/batched.out")
  awk -v t="$tps" 'BEGIN {printf "%.0f\n", t * 32}'
}

# pgbench_round DB CLIENTS DURATION SUBTASKS: the one-statement reference
# (bench/create_job.sql); prints "tps p99_ms".
pgbench_round() {
  local db=$1 clients=$2 duration=$3 subtasks=$4 tps p99
  # Same planner setting as the service's pool (see src/db.rs).
  PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c "$clients" \
    -j "$(( clients < 2 ? 1 : 2 ))" -T "${duration%s}" -D entity_ids="$(entity_ids_array "$subtasks")" \
    -f bench/create_job.sql -l --log-prefix "$BENCH_TMP/pgbench" >"$BENCH_TMP/pgbench.out" 2>&1
  tps=$(awk '/^tps/ {print $3; exit}' "$BENCH_TMP/pgbench.out")
  # Per-transaction log: the third column is the latency in microseconds.
  p99=$(cat "$BENCH_TMP"/pgbench.[0-9]* | awk '{print $3}' | sort -n \
        | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", v[i]/1000}')
  rm -f "$BENCH_TMP"/pgbench.[0-9]*
  echo "${tps%.*} $p99"
}

# grpc_round PORT CONCURRENCY DURATION WARMUP SUBTASKS [LOADGEN FLAGS...]: the
# service over gRPC (loadgen); prints "rate p99_ms errors", errors being
# "errors=0" or the codes and counts without spaces. The whole output stays
# in $BENCH_TMP/loadgen.out.
grpc_round() {
  local port=$1 concurrency=$2 duration=$3 warmup=$4 subtasks=$5; shift 5
  "$BIN_DIR/loadgen" --addr "http://127.0.0.1:$port" --concurrency "$concurrency" \
    --subtasks "$subtasks" --duration "$duration" --warmup "$warmup" "$@" >"$BENCH_TMP/loadgen.out"
  local rate p99 errors
  rate=$(awk -F'[= /]' '/^ok=/ {print $4; exit}' "$BENCH_TMP/loadgen.out")
  p99=$(awk '/^latency_ms/ {for (i=1;i<=NF;i++) if ($i ~ /^p99=/) {sub("p99=","",$i); print $i}}' "$BENCH_TMP/loadgen.out")
  errors=$(grep '^errors' "$BENCH_TMP/loadgen.out" | tr -d ' ' | tr '\n' ',' | sed 's/,$//')
  echo "$rate $p99 $errors"
}

# http_round PORT CONNECTIONS DURATION SCRIPT: wrk against the create
# endpoint after a 2 s warm-up; prints "rate p99_ms non2xx".
http_round() {
  local port=$1 connections=$2 duration=$3 script=$4 threads
  threads=$(( connections < 2 ? 1 : 2 ))
  wrk -t"$threads" -c"$connections" -d2s -s "$script" "http://127.0.0.1:$port/api/v1/translation-jobs" >/dev/null 2>&1 || true
  wrk -t"$threads" -c"$connections" -d"${duration%s}s" --latency -s "$script" \
    "http://127.0.0.1:$port/api/v1/translation-jobs" >"$BENCH_TMP/wrk.out" 2>&1
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^Requests\/sec/ {rate = $2}
    $1 == "99%" {p99 = ms($2)}
    /Non-2xx/ {bad = $NF}
    END {printf "%d %.2f non2xx=%d\n", rate, p99, bad}' "$BENCH_TMP/wrk.out"
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
