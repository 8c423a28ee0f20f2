#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test: the
# proto and deployment checks, the unit and integration tests against real
# PostgreSQL and Redis, the reference Python worker's end-to-end test against
# the service binary, and a smoke run of the benchmark scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "proto: buf lint and breaking-change check"
bash scripts/check_proto.sh
section "deployment: Helm chart, Dockerfile, docker-compose.yml"
bash scripts/check_chart.sh

section "PostgreSQL and Redis"
server_url=$(scripts/services.sh | tail -n 1)
# #[sqlx::test] creates a throw-away database per test on this server.
export DATABASE_URL=${TEST_DATABASE_URL:-$server_url}

section "Rust unit and integration tests"
cargo test --locked --all-targets "$@"
section "reference worker end to end (against the binary the tests just built)"
bash examples/worker/run_tests.sh
section "benchmark smoke run (tiny runs on the debug build: the figures mean nothing)"
bash bench/smoke.sh
