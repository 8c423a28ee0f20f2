#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test: unit
# and integration tests against real PostgreSQL and Redis, then the reference
# Python worker's end-to-end test against the service binary.
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=$(scripts/services.sh | tail -n 1)
# #[sqlx::test] creates a throw-away database per test on this server.
export DATABASE_URL=${TEST_DATABASE_URL:-$server_url}

cargo test --locked --all-targets "$@"
# The reference worker against the binary the tests just built.
bash examples/worker/run_tests.sh
# The benchmark scripts still work (tiny runs; their figures mean nothing).
bash bench/smoke.sh
