#!/usr/bin/env bash
# Starts the service on this machine with everything it needs: PostgreSQL
# and Redis (installed and started when missing), a database for the jobs,
# then the service itself on GRPC_ADDR (default here 127.0.0.1:50051) and
# HTTP_ADDR (default here 127.0.0.1:8000, the dashboard at /). On loopback
# only, it runs without keys and without AUTH_MODE; to listen beyond this
# machine set a key (AUTH_JWT_SECRET) or AUTH_MODE=none (see docs/security.md,
# Security). Arguments go to the binary (`scripts/run.sh stats`,
# `scripts/run.sh redrive-dead`).
#
# Environment: DATABASE_URL (default: the database TRANSLATION_JOBS_DB,
# default translation_jobs, on the server scripts/services.sh starts),
# REDIS_URL (default redis://127.0.0.1:6379/0), PROFILE (dev, the default,
# or release), and every variable of docs/configuration.md.
#
# The dev build is the very build scripts/test.sh makes (`cargo build
# --all-targets` resolves the same features as `cargo test --all-targets`),
# so running after testing compiles nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=$(scripts/services.sh | tail -n 1)
if [ -z "${DATABASE_URL:-}" ]; then
  database=${TRANSLATION_JOBS_DB:-translation_jobs}
  if ! psql "$server_url" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
    psql "$server_url" -qc "CREATE DATABASE \"$database\""
  fi
  export DATABASE_URL=${server_url%/*}/$database
fi
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export GRPC_ADDR=${GRPC_ADDR:-127.0.0.1:50051}
export HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8000}

case "${PROFILE:-dev}" in
  dev)
    cargo build --locked --all-targets
    exec target/debug/translation-jobs "$@"
    ;;
  release)
    cargo build --locked --release --bin translation-jobs
    exec target/release/translation-jobs "$@"
    ;;
  *)
    echo "run.sh: PROFILE must be dev or release, got ${PROFILE}" >&2
    exit 2
    ;;
esac
