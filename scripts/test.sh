#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test: the
# proto and deployment checks, the unit and integration tests against real
# PostgreSQL and Redis, the reference Python worker's end-to-end test and the
# dashboard's browser test against the service binary, and a smoke run of the
# benchmark scripts. Each part is headed by a `==== ... ====` line; the last
# part checks that no database or Redis key was left behind.
#
# Environment: TEST_DATABASE_URL (a PostgreSQL server URL; default the one
# scripts/services.sh starts), REDIS_URL (default redis://127.0.0.1:6379/0).
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "manual: every relative link of README.md and docs/ resolves"
python3 scripts/check_links.py
section "proto: buf lint and breaking-change check"
bash scripts/check_proto.sh
section "deployment: Helm chart, Dockerfile, docker-compose.yml"
bash scripts/check_chart.sh

section "PostgreSQL and Redis"
server_url=$(scripts/services.sh | tail -n 1)
# #[sqlx::test] creates a throw-away database per test on this server.
export DATABASE_URL=${TEST_DATABASE_URL:-$server_url}
redis_cli=(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/0}")
# Databases and Redis keys that exist now, to find what the tests leave.
leftovers() {
  {
    psql "$DATABASE_URL" -qtAc "SELECT 'database ' || datname FROM pg_database WHERE NOT datistemplate"
    "${redis_cli[@]}" --scan | sed 's/^/redis key /'
  } | sort
}
before=$(mktemp)
trap 'rm -f "$before"' EXIT
leftovers >"$before"

section "Rust unit and integration tests"
cargo test --locked --all-targets "$@"
section "reference worker end to end (against the binary the tests just built)"
bash examples/worker/run_tests.sh
section "dashboard in a headless Chromium (against the same binary)"
bash examples/dashboard_test/run_tests.sh
section "fuzz: a short run of each target (scripts/fuzz.sh 20; a real run is minutes per target)"
bash scripts/fuzz.sh 20
section "benchmark smoke run (tiny runs on the debug build: the figures mean nothing)"
bash bench/smoke.sh

section "nothing left behind: databases and Redis keys before and after"
left=$(comm -13 "$before" <(leftovers))
if [ -z "$left" ]; then
  echo "none left: every database and Redis key the tests made is gone"
else
  echo "left behind (or made meanwhile by something else on the same servers):"
  echo "$left" | sed 's/^/  /'
  echo "a test or benchmark left state that could break the next run; drop it and find its owner" >&2
  exit 1
fi
