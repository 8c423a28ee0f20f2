#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test
# (unit, integration against real PostgreSQL and Redis, and the reference
# worker's end-to-end test when present).
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=$(scripts/services.sh | tail -n 1)
# #[sqlx::test] creates a throw-away database per test on this server.
export DATABASE_URL=${TEST_DATABASE_URL:-$server_url}

cargo test --locked --all-targets "$@"
