#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test: the
# proto and deployment checks, the unit and integration tests against real
# PostgreSQL and Redis, the reference Python worker's end-to-end test and the
# dashboard's browser test against the service binary, and a smoke run of the
# benchmark scripts. Each part is headed by a `==== ... ====` line; builds are
# quiet. The last part checks that nothing the tests made was left behind;
# at the end one summary gives each part's result, counts and time.
#
# Environment: TEST_DATABASE_URL (a PostgreSQL server URL; default the one
# scripts/services.sh starts), REDIS_URL (default redis://127.0.0.1:6379/0).
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The summary: one line per part, written as each part ends; on a failure
# the part that failed is named last.
summary=$(mktemp) current="" started=0 counts=""
log=$(mktemp)
trap 'finish $?' EXIT
close_section() {
  [ -n "$current" ] || return 0
  printf '  %-58s %-6s %5ss  %s\n' "$current" "$1" "$(( $(date +%s) - started ))" "$counts" >>"$summary"
  current="" counts=""
}
section() {
  close_section ok
  printf '\n==== %s ====\n' "$*"
  current=$*
  started=$(date +%s)
}
finish() {
  close_section "$([ "$1" -eq 0 ] && echo ok || echo FAILED)"
  printf '\n==== summary ====\n'
  cat "$summary"
  if [ "$1" -eq 0 ]; then echo "all parts passed"; else echo "a part FAILED (see its output above)"; fi
  rm -f "$summary" "$log" "${before:-}"
}
# Runs a command, its output also kept to count what passed.
counted() {
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  counts=$(awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
    / passed/ && /in [0-9.]+s/ && !/^test result/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) p += $i }
    END { if (p + f + g > 0) printf "%d passed, %d failed, %d ignored", p, f, g }' "$log")
  return "$status"
}

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
# What the tests make carries one of these prefixes: #[sqlx::test]'s
# databases, the unique queue names of the Rust tests, the Python tests'
# runs, the benchmarks, the fault suite. Only such names are compared, so
# another user of the same servers never fails the run.
db_prefixes="^(_sqlx_test|bench_|worker_e2e_|dashboard_test_|faults_|image_smoke_)"
key_pattern="(test_jobs_|worker_e2e_|dashboard_test_|bench_|faults_jobs|image_smoke_)"
leftovers() {
  {
    psql "$DATABASE_URL" -qtAc "SELECT 'database ' || datname FROM pg_database
                                WHERE NOT datistemplate AND datname ~ '$db_prefixes'"
    "${redis_cli[@]}" --scan | grep -E "$key_pattern" | sed 's/^/redis key /' || true
  } | sort
}
before=$(mktemp)
leftovers >"$before"

section "Rust unit and integration tests (quiet build; a dot per test)"
counted cargo test --locked --all-targets --quiet "$@"
section "reference worker end to end (against the binary the tests just built)"
counted bash examples/worker/run_tests.sh
section "dashboard in a headless Chromium (against the same binary)"
counted bash examples/dashboard_test/run_tests.sh
section "fuzz: a short run of each target (scripts/fuzz.sh 20; a real run is minutes per target)"
bash scripts/fuzz.sh 20
section "benchmark smoke run (tiny runs on the debug build: the figures mean nothing)"
bash bench/smoke.sh 2>&1 | sed "s/^/  smoke | /"
section "container image: scripts/image.sh --smoke --compose (podman, read-only root, no capabilities)"
# The debug binary the tests built, not a release build; the base is made once and cached.
bash scripts/image.sh --smoke --compose --binary "${CARGO_TARGET_DIR:-target}/debug/translation-jobs"

section "nothing left behind: the tests' own databases and Redis keys, before and after"
left=$(comm -13 "$before" <(leftovers))
if [ -z "$left" ]; then
  echo "none left: every database and Redis key the tests made is gone"
else
  echo "left behind by the tests (names with their prefixes, made during this run):"
  echo "$left" | sed 's/^/  /'
  echo "a test or benchmark left state that could break the next run; drop it and find its owner" >&2
  exit 1
fi
