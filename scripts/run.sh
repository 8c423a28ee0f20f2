#!/usr/bin/env bash
# Starts the service on this machine with everything it needs: PostgreSQL
# and Redis (installed and started when missing), a database for the jobs,
# then the service itself on GRPC_ADDR (default 0.0.0.0:50051) and
# HTTP_ADDR (default 0.0.0.0:8000). PROFILE=release for a release build.
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=$(scripts/services.sh | tail -n 1)
database=${TRANSLATION_JOBS_DB:-translation_jobs}
if ! psql "$server_url" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
  psql "$server_url" -qc "CREATE DATABASE $database"
fi
export DATABASE_URL=${DATABASE_URL:-${server_url%/*}/$database}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

profile=${PROFILE:-dev}
exec cargo run --locked --profile "$profile" --bin translation-jobs
