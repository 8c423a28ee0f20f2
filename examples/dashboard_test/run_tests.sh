#!/usr/bin/env bash
# Runs the dashboard's browser test (examples/dashboard_test/test_dashboard.py):
# the real service binary, its page at GET / in a headless Chromium.
#
# Installs Debian's chromium package when /usr/bin/chromium is missing (as
# root or through sudo), creates examples/dashboard_test/.venv on first use and
# installs requirements.txt into it (again only when that file changed), then
# runs pytest; extra arguments go to pytest. Exits non-zero when a test fails
# or none was collected.
#
# Expects the service binary to be built (cargo build --bin translation-jobs, or
# TRANSLATION_JOBS_BIN pointing at one) and DATABASE_URL to name a PostgreSQL
# server URL; Redis on REDIS_URL (default redis://127.0.0.1:6379/0).
# CHROMIUM names another Chromium binary. DASHBOARD_SCREENSHOT names where the
# screenshot goes (default examples/dashboard_test/screenshot.png).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
stamp="$venv/.requirements.sha256"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    echo "dashboard test: installing Debian's chromium package" >&2
    apt_install chromium
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    python3 -m venv "$venv"
fi
wanted=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$wanted" > "$stamp"
fi

cd "$here"
# pytest exits 5 when it collected no tests: set -e turns that into a failure too.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@"
