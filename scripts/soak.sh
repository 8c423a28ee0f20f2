#!/usr/bin/env bash
# The soak: mixed load (creates on two replicas, cancels, retries, a worker
# that claims with the message's attempt) under random faults (PostgreSQL
# restarts fast and immediate, PostgreSQL and Redis black holes, Redis
# SIGKILLed, full under noeviction, turned read-only, replicas SIGKILLed)
# for DURATION, against a PostgreSQL and a Redis of its own. Prints one
# summary line (created, delivered, lost, duplicated, p99 create latency)
# and fails on any lost or duplicated job.
#
#   scripts/soak.sh 10m          # PROFILE=release for an optimised build
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-60s}
profile=${PROFILE:-dev}
# The soak starts its own servers; it only needs their binaries installed.
scripts/services.sh >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SOAK_DURATION=$duration cargo test --locked --profile "$profile" --test faults soak \
  -- --ignored --exact soak::soak --nocapture 2>&1 | tee "$out" | grep -E '^(faults: soak|soak |test result|thread)' || true
line=$(grep -E '^soak duration=' "$out" | tail -n 1 || true)
if [ -z "$line" ] || ! grep -q 'test result: ok' "$out"; then
  echo "soak failed; last lines:" >&2
  tail -n 40 "$out" >&2
  exit 1
fi
echo "$line"
