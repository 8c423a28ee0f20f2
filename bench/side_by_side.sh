#!/usr/bin/env bash
# The service next to the old design, in one alternating run on one
# machine: the pgbench reference (bench/create_job.sql), the service over
# gRPC (loadgen) and over HTTP JSON (wrk), and the old Go design rebuilt
# from its description (../shared/peers/seed-go, over HTTP with wrk, the same
# body). Same concurrency, same jobs (10 subtasks by default), every
# database on the same server. Everything connects with sslmode=disable,
# as the peer must (its driver cannot negotiate), so no side pays for TLS.
#
# The peer is built on first use into ~/.cache (never into the repository)
# with its own build.sh, offline from Debian's Go packages; wrk is installed
# from Debian when missing.
#
#   bench/side_by_side.sh [--rounds 3] [--duration 15s] [--concurrency 32] [--subtasks 10]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rounds=3 duration=15s concurrency=32 subtasks=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --subtasks) subtasks=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

peers=${PEERS_DIR:-$(cd .. && pwd)/shared/peers}
peer_bin=${SEEDGO_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/translation-jobs-peers/seed-go-bin}
if [ ! -x "$peer_bin" ]; then
  [ -x "$peers/seed-go/build.sh" ] || { echo "the old design's source is not at $peers/seed-go (set PEERS_DIR)" >&2; exit 1; }
  mkdir -p "$(dirname "$peer_bin")"
  "$peers/seed-go/build.sh" "$peer_bin" >&2
fi

bench_setup
ensure_wrk

db=bench_sbs peer_db=bench_sbs_peer queue=bench_sbs_jobs peer_queue=bench_sbs_peer_jobs
fresh_db $db
fresh_db $peer_db
redis_forget "$queue"
redis-cli del "$peer_queue" >/dev/null
# The service with sslmode=disable, like the peer and the reference below.
start_service "$db?sslmode=disable" $queue redis://127.0.0.1:6379/0
PEER_PORT=$(free_port)
DATABASE_DSN="$BASE_URL/$peer_db?sslmode=disable" REDIS_URL=redis://127.0.0.1:6379/0 \
  TRANSLATION_QUEUE=$peer_queue HTTP_ADDR=127.0.0.1:$PEER_PORT "$peer_bin" >"$BENCH_TMP/peer.log" 2>&1 &
PEER_PID=$!
trap 'kill $PEER_PID 2>/dev/null; wait $PEER_PID 2>/dev/null; redis-cli del "$peer_queue" >/dev/null; bench_cleanup' EXIT
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PEER_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
wrk_script "$subtasks" "$BENCH_TMP/create.lua"
# Warm the peer one request at a time: it prepares its subtask statement on
# first use outside the request's transaction, and a cold burst of more
# callers than pool connections deadlocks it.
body=$(lua -e 'dofile("'"$BENCH_TMP"'/create.lua") print(wrk.body)' 2>/dev/null \
  || python3 -c 'import json,sys; n=int(sys.argv[1]); print(json.dumps({"novel_id":"0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e","target_lang":"en","source_lang":"ja","subtasks":[{"entity_type":"chapter","entity_id":f"chapter-{i}"} for i in range(n)]}))' "$subtasks")
for _ in 1 2 3; do
  curl -sf -o /dev/null -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$PEER_PORT/api/v1/translation-jobs" || { echo "the peer does not take creates; log:" >&2; tail "$BENCH_TMP/peer.log" >&2; exit 1; }
done

# The reference connects without TLS too.
pg_ref() { PGSSLMODE=disable pgbench_round $db "$concurrency" "$duration" "$subtasks"; }

printf '%-6s %-8s %10s %10s %12s %12s %s\n' round what "per s" "p99 ms" "vs ref" "vs old" "errors"
for round in $(seq 1 "$rounds"); do
  order="ref grpc http old"
  [ $((round % 2)) -eq 0 ] && order="old http grpc ref"
  for what in $order; do
    case $what in
      ref) read -r r_rate r_p99 < <(pg_ref) ;;
      grpc) read -r g_rate g_p99 g_err < <(grpc_round "$GRPC_PORT" "$concurrency" "$duration" 2s "$subtasks") ;;
      http) read -r h_rate h_p99 h_err < <(http_round "$HTTP_PORT" "$concurrency" "$duration" "$BENCH_TMP/create.lua") ;;
      old) read -r o_rate o_p99 o_err < <(http_round "$PEER_PORT" "$concurrency" "$duration" "$BENCH_TMP/create.lua") ;;
    esac
  done
  printf '%-6s %-8s %10s %10s %12s %12s\n' "$round" ref "$r_rate" "$r_p99" "1, 1" "-"
  printf '%-6s %-8s %10s %10s %12s %12s %s\n' "$round" grpc "$g_rate" "$g_p99" \
    "$(ratio "$g_rate" "$r_rate"), $(ratio "$g_p99" "$r_p99")" "$(ratio "$g_rate" "$o_rate"), $(ratio "$g_p99" "$o_p99")" "$g_err"
  printf '%-6s %-8s %10s %10s %12s %12s %s\n' "$round" http "$h_rate" "$h_p99" \
    "$(ratio "$h_rate" "$r_rate"), $(ratio "$h_p99" "$r_p99")" "$(ratio "$h_rate" "$o_rate"), $(ratio "$h_p99" "$o_p99")" "$h_err"
  printf '%-6s %-8s %10s %10s %12s %12s %s\n' "$round" old "$o_rate" "$o_p99" \
    "$(ratio "$o_rate" "$r_rate"), $(ratio "$o_p99" "$r_p99")" "1, 1" "$o_err"
done
echo "rounds=$rounds duration=$duration concurrency=$concurrency subtasks=$subtasks profile=$PROFILE QUEUE_MAX_BACKLOG=$BENCH_QUEUE_MAX_BACKLOG (ratios: rate, p99)"
echo "service outbox left after the run: $(outbox_count $db)"
redis_forget "$queue"
