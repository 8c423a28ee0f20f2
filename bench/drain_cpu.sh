#!/usr/bin/env bash
# Where the CPU goes while the relay drains a backlog: CPU cores used by the
# service, PostgreSQL and Redis over 3 s of a 300,000-job drain.
#
#   bench/drain_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
db=bench_drain queue=bench_drain_cpu
fresh_db $db
port=$(free_port)
start_service $db $queue redis://127.0.0.1:$port/0
psql "$BASE_URL/$db" -qc "WITH jobs AS (INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields, output_dir) SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || lpad(to_hex(g), 20, '0'))::uuid, gen_random_uuid(), 'ja', 'en', '{title,description,content}', 'outputs/novel_jobs' FROM generate_series(1, 300000) g RETURNING id) INSERT INTO outbox (job_id, lane, payload) SELECT id, 'normal', '{\"job_id\":\"' || id || '\",\"target_lang\":\"en\",\"source_lang\":\"ja\",\"output_dir\":\"outputs/novel_jobs\",\"target_fields\":[\"title\",\"description\",\"content\"]}' FROM jobs; ANALYZE translation_jobs, outbox;"
hz=$(getconf CLK_TCK)
ticks() { local t=0; for p in $(pgrep -f "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
start_redis $port everysec
sleep 0.5
s0=$(awk '{print $14+$15}' /proc/$SERVICE_PID/stat); p0=$(ticks '^postgres'); r0=$(awk '{print $14+$15}' /proc/$REDIS_PID/stat); t0=$(now_ms)
sleep 3
s1=$(awk '{print $14+$15}' /proc/$SERVICE_PID/stat); p1=$(ticks '^postgres'); r1=$(awk '{print $14+$15}' /proc/$REDIS_PID/stat); t1=$(now_ms)
awk -v s=$((s1-s0)) -v p=$((p1-p0)) -v r=$((r1-r0)) -v ms=$((t1-t0)) -v hz="$hz" -v left="$(outbox_count $db)" 'BEGIN {
  w = ms / 1000
  printf "drained=%d in %.1fs; cpu cores: service=%.2f postgres=%.2f redis=%.2f\n", 300000 - left, w, s/hz/w, p/hz/w, r/hz/w
}'
