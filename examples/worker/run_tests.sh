#!/usr/bin/env bash
# Runs the reference worker's end-to-end test (examples/worker/test_worker_e2e.py).
#
# Creates examples/worker/.venv on first use and installs requirements.txt into
# it (again only when that file changed), then runs pytest from the repository
# root; extra arguments go to pytest. Exits non-zero when a test fails or none
# was collected.
#
# Expects the service binary to be built (cargo build --bin translation-jobs, or
# TRANSLATION_JOBS_BIN pointing at one) and DATABASE_URL to name a PostgreSQL
# server URL; Redis on REDIS_URL (default redis://127.0.0.1:6379/0).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
stamp="$venv/.requirements.sha256"

if [ ! -x "$venv/bin/python" ]; then
    # A bare Debian has no python3, or no venv module for it.
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        as_root=""; [ "$(id -u)" -eq 0 ] || as_root=sudo
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    python3 -m venv "$venv"
fi
wanted=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$wanted" > "$stamp"
fi

cd "$root"
# pytest exits 5 when it collected no tests: set -e turns that into a failure too.
exec "$venv/bin/python" -m pytest -q examples/worker "$@"
