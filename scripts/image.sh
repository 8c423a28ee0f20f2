#!/usr/bin/env bash
# Builds the service's container image, translation-jobs:local, and with --smoke runs it
# the way the Helm chart does and checks it (docs/image.md).
#
#   scripts/image.sh [--binary PATH] [--smoke [--compose]] [--refresh-base]
#
# The image is the Dockerfile's `prebuilt` target: its `runtime` stage (labels, user 65532,
# ports, entrypoint; no shell needed) with a binary built on this machine, by default
# `cargo build --release` (--binary PATH: that one instead). The base is distroless
# cc-debian12, pinned in the Dockerfile, where gcr.io answers; otherwise one made here:
# `debootstrap --variant=minbase bookworm`, imported, and cut down to distroless's packages
# by scripts/image/local.Containerfile. The debootstrap tree is made once and kept as the
# image localhost/translation-jobs-debootstrap:bookworm (a minute or two, 200 MB; the
# rest is the engine's layer cache); --refresh-base makes it again, with today's updates.
# IMAGE_BASE=local or IMAGE_BASE=distroless forces one.
#
# --smoke: against the local PostgreSQL and Redis (--network host), with the chart's
# securityContext (read-only root filesystem with /tmp on a tmpfs, no capabilities, no
# privilege escalation, the engine's default seccomp profile) and its settings
# (helm/translation-jobs/values.yaml: the config block, SHUTDOWN_TIMEOUT, the probes, the
# migration Job's args, the grace period), checks that:
#   - `translation-jobs migrate`, as the migration Job runs it, migrates a fresh database,
#     and runs again as a no-op (pre-install, then pre-upgrade);
#   - `serve` runs as uid 65532 with no capabilities, no-new-privileges, seccomp and a
#     read-only root, and the image has no shell;
#   - /readyz answers 200 within the startup probe's budget;
#   - the probes the chart can declare answer: grpc.health.v1 Check for its liveness and
#     readiness service names (what the kubelet's gRPC probe sends), GET /healthz, /readyz;
#   - a create over HTTP (POST /api/v1/translation-jobs) reaches the Redis queue;
#   - SIGTERM ends the process with status 0 within the pod's grace period less the
#     preStop sleep.
# It uses its own database and queue (image_smoke_*), dropped and deleted at the end, and
# prints one summary line: "image smoke: PASS ..." or "image smoke: FAILED: <check>".
# --compose: then docker-compose.yml on local images (scripts/image/compose.local.yml:
# PostgreSQL, Redis and Python from Debian's packages), with podman-compose from PyPI
# (pinned in scripts/image/requirements-compose.txt), until the reference worker has
# completed a job created over HTTP; one more line, "compose smoke: ...". The stack is
# torn down with its volumes.
#
# Engine: podman (Debian 12's 4.3, with runc: crun fails here on hybrid cgroups), or docker
# where a docker engine answers and podman is missing; IMAGE_ENGINE=podman|docker chooses.
# Without either, podman, runc and debootstrap are installed from Debian (sudo when not
# root). With --smoke, a machine that cannot run containers at all (not Linux, no engine
# and no apt-get, no root, or a kernel that refuses namespaces) is skipped with a message
# and status 0; anything else that fails is a failure.
#
# Environment: DATABASE_URL or TEST_DATABASE_URL (a PostgreSQL server URL; default
# postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (default
# redis://127.0.0.1:6379/0), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# TOOLS_DIR (default .tools, for podman-compose).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

image=translation-jobs:local
debootstrap_image=localhost/translation-jobs-debootstrap:bookworm
runtime_base_image=localhost/translation-jobs-runtime-base:bookworm
stack_prefix=localhost/translation-jobs
values=helm/translation-jobs/values.yaml
cache=${XDG_CACHE_HOME:-$HOME/.cache}/translation-jobs

binary="" smoke=0 compose=0 refresh=0
usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --smoke) smoke=1; shift ;;
        --compose) compose=1; shift ;;
        --refresh-base) refresh=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[ "$compose" -eq 0 ] || [ "$smoke" -eq 1 ] || { echo "image.sh: --compose goes with --smoke" >&2; exit 2; }

say() { printf 'image: %s\n' "$*" >&2; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() { awk -v a="$1" -v b="$(ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
# A machine that cannot run containers: with --smoke a skip, otherwise an error.
cannot() {
    if [ "$smoke" -eq 1 ]; then
        echo "image smoke: SKIPPED: this machine cannot run containers: $*"
        exit 0
    fi
    echo "image.sh: this machine cannot run containers: $*" >&2
    exit 1
}
apt_install() {
    command -v apt-get >/dev/null 2>&1 || { echo "image.sh: $* missing, and no apt-get to install them" >&2; exit 1; }
    say "installing $* from Debian"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- the engine -------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || cannot "containers need Linux (this is $(uname -s))"
engine=${IMAGE_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v podman >/dev/null 2>&1; then engine=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
    else engine=podman
    fi
fi
case $engine in
    podman)
        if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
            cannot "podman runs as root here (debootstrap needs root too), and sudo asks for a password"
        fi
        if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
            command -v apt-get >/dev/null 2>&1 || cannot "no podman (with runc) or docker engine, and no apt-get to install podman"
            apt_install podman runc
        fi
        as_root unshare --fork --pid --mount --uts --ipc --net true 2>/dev/null \
            || cannot "the kernel (or the sandbox around it) refuses new namespaces"
        # runc: crun, podman's default where installed, fails on hybrid cgroup v1/v2 hosts.
        # Limits: podman's defaults (nofile 1048576) are above what this process may set,
        # and runc then fails with EPERM; take what the caller has, at most these.
        nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
        nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ] && nproc=4096
        engine_cmd=(podman --runtime runc)
        [ "$(id -u)" -eq 0 ] || engine_cmd=(sudo -n "${engine_cmd[@]}")
        limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
        build_flags=(--layers --network host "${limits[@]}")
        ;;
    docker)
        docker info >/dev/null 2>&1 || cannot "IMAGE_ENGINE=docker, but no docker engine answers"
        engine_cmd=(docker)
        limits=()
        build_flags=()
        ;;
    *) echo "image.sh: IMAGE_ENGINE is podman or docker, not $engine" >&2; exit 2 ;;
esac
E() { "${engine_cmd[@]}" "$@"; }
image_exists() { E image inspect "$1" >/dev/null 2>&1; }
say "engine: $(E --version | head -n 1)"

# --- the base ---------------------------------------------------------------------------
# Debian 12 minbase, imported once (the cache); the local images are built on it.
make_debootstrap_image() {
    if [ "$refresh" -eq 1 ]; then
        E rmi "$debootstrap_image" >/dev/null 2>&1 || true
    fi
    image_exists "$debootstrap_image" && return 0
    # One run at a time makes it (another may be making it right now).
    mkdir -p "$cache"
    exec 9>"$cache/debootstrap.lock"
    flock 9
    if ! image_exists "$debootstrap_image"; then
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        local rootfs started quiet
        started=$(ms)
        rootfs=$(mktemp -d "${TMPDIR:-/tmp}/translation-jobs-rootfs.XXXXXX")
        say "making the local base: debootstrap --variant=minbase bookworm (once; a minute or two)"
        if ! as_root debootstrap --variant=minbase bookworm "$rootfs" \
                "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1; then
            tail -n 20 "$cache/debootstrap.log" >&2
            as_root rm -rf "$rootfs"
            echo "image.sh: debootstrap failed (whole log: $cache/debootstrap.log)" >&2
            exit 1
        fi
        quiet=(); [ "$engine" = docker ] || quiet=(--quiet)
        as_root tar -C "$rootfs" -c . | E import "${quiet[@]}" \
            --message "debootstrap --variant=minbase bookworm" - "$debootstrap_image" >/dev/null
        as_root rm -rf "$rootfs"
        say "local base made in $(seconds_since "$started")s: $debootstrap_image"
    fi
    exec 9>&-
}
# A target of scripts/image/local.Containerfile, from the layer cache when nothing changed.
build_local() {
    local target=$1 tag=$2 dir=${3:-.} extra=() log
    [ "$refresh" -eq 0 ] || extra=(--no-cache)
    log=$(mktemp)
    if ! E build "${build_flags[@]}" "${extra[@]}" -f scripts/image/local.Containerfile \
            --build-arg "DEBOOTSTRAP=$debootstrap_image" --target "$target" -t "$tag" "$dir" >"$log" 2>&1; then
        tail -n 30 "$log" | sed "s/^/  build $target | /" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

base_kind=${IMAGE_BASE:-}
if [ -z "$base_kind" ]; then
    if curl -s -o /dev/null --max-time 5 https://gcr.io/v2/; then base_kind=distroless; else base_kind=local; fi
fi
base_args=()
case $base_kind in
    distroless) say "base: distroless cc-debian12, as pinned in the Dockerfile (gcr.io answers)" ;;
    local)
        make_debootstrap_image
        # The updated Debian tree gets a name, so that no prune of dangling images takes it.
        if ! build_local base "$stack_prefix-base:bookworm" || ! build_local runtime-base "$runtime_base_image"; then
            echo "image.sh: building the local base failed" >&2
            exit 1
        fi
        base_args=(--build-arg "RUNTIME_BASE=$runtime_base_image")
        say "base: $runtime_base_image (made here; no registry needed)"
        ;;
    *) echo "image.sh: IMAGE_BASE is local or distroless, not $base_kind" >&2; exit 2 ;;
esac

# --- the image --------------------------------------------------------------------------
if [ -z "$binary" ]; then
    say "building the release binary (cargo build --release)"
    cargo build --release --locked --quiet --bin translation-jobs
    binary=${CARGO_TARGET_DIR:-target}/release/translation-jobs
fi
[ -x "$binary" ] || { echo "image.sh: no executable at $binary" >&2; exit 1; }

run_id=$$_$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
context=$(mktemp -d)
smoke_tag=translation-jobs:smoke-${run_id//_/-}
cleanups=()
cleanup() {
    local i
    for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[$i]}" || true; done
    rm -rf "$context"
}
trap cleanup EXIT

previous=$(E image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
# The build context is a directory holding only the binary (the Dockerfile's `prebuilt`).
tags=(-t "$image")
# A smoke run keeps its own tag on what it runs: a concurrent build may move :local.
[ "$smoke" -eq 0 ] || tags+=(-t "$smoke_tag")
layers=()
[ "$engine" = docker ] || layers=(--layers=false)
mkdir "$context/build"
cp "$binary" "$context/build/translation-jobs"
E build "${layers[@]}" --quiet -f "$root/Dockerfile" --target prebuilt "${base_args[@]}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "${tags[@]}" \
    --iidfile "$context/iid" "$context/build" >/dev/null
image_id=$(sed 's/^sha256://' "$context/iid")
[ "$smoke" -eq 0 ] || cleanups+=("E rmi '$smoke_tag' >/dev/null 2>&1")
# The image :local named before, once nothing names it (another run's smoke tag) and
# no container uses it (rmi refuses then).
if [ -n "$previous" ] && [ "$previous" != "$image_id" ] \
        && [ "$(E image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    E rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(E image inspect --format '{{.Size}}' "$image_id" | awk '{ printf "%d MB", $1 / 1e6 }')
say "built $image (${image_id:0:12}, $size; binary $binary)"
[ "$smoke" -eq 1 ] || exit 0

# --- the smoke run ----------------------------------------------------------------------
smoke_started=$(ms)
step="setting up"
fail() {
    echo "image smoke: FAILED: $step${1:+: $1}"
    exit 1
}
# A value of values.yaml by its dotted path (two-space indentation, scalars only).
chart_value() {
    awk -v path="$1" '
        /^[[:space:]]*(#|$)/ || /^[[:space:]]*-/ { next }
        {
            match($0, /^ */); depth = RLENGTH / 2; line = substr($0, RLENGTH + 1)
            key = line; sub(/:.*/, "", key)
            value = line; sub(/^[^:]*:[[:space:]]*/, "", value); sub(/[[:space:]]+#.*$/, "", value)
            keys[depth] = key; p = keys[0]
            for (i = 1; i <= depth; i++) p = p "." keys[i]
            if (p == path) { gsub(/^"|"$/, "", value); print value; exit }
        }' "$values"
}
# (Called in $(...): a failure is said on stderr, or it would vanish into the variable.)
need() { local v; v=$(chart_value "$1"); [ -n "$v" ] || fail "no $1 in $values" >&2; echo "$v"; }
shutdown_timeout=$(need shutdownTimeoutSeconds)
margin=$(need terminationGraceMarginSeconds)
prestop=0
[ "$(need preStop.enabled)" != true ] || prestop=$(need preStop.sleepSeconds)
grace=$((prestop + shutdown_timeout + margin))
stop_limit=$((grace - prestop))
startup_budget=$(( $(need probes.startup.periodSeconds) * $(need probes.startup.failureThreshold) ))
liveness_service=$(need probes.grpc.livenessService)
readiness_service=$(need probes.grpc.readinessService)
read -r -a migrate_args <<<"$(need migration.args | tr -d '[]",')"

server_url=${TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
name=image_smoke_$run_id
url_base=${server_url%%\?*}
database_url="${url_base%/*}/$name${server_url#"$url_base"}"
redis() { redis-cli -u "$redis_url" "$@"; }
for tool in psql redis-cli curl python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (scripts/services.sh installs what the tests need)"
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
http_port=$(free_port)

step="creating database $name"
psql "$server_url" -qAtc "CREATE DATABASE $name" >/dev/null || fail
cleanups+=("psql '$server_url' -qAtc 'DROP DATABASE IF EXISTS $name WITH (FORCE)' >/dev/null")
cleanups+=("redis --scan --pattern '*$name*' | xargs -r redis-cli -u '$redis_url' DEL >/dev/null")
for container in "$name" "${name}_migrate" "${name}_shell"; do
    cleanups+=("E rm -f $([ "$engine" = podman ] && echo -t 0) '$container' >/dev/null 2>&1")
done

# The chart's settings: its config block (non-empty values), what it derives, the secret.
env_file=$context/env
{
    awk '/^config:/ { f = 1; next } f && /^[^ #]/ { exit }
         f && /^  [A-Z_]+: / { k = $1; sub(/:$/, "", k); v = $0; sub(/^  [A-Z_]+: */, "", v)
                               sub(/[[:space:]]+#.*$/, "", v); gsub(/^"|"$/, "", v)
                               if (v != "" && k != "TRANSLATION_QUEUE") print k "=" v }' "$values"
    echo "TRANSLATION_QUEUE=$name"
    echo "SHUTDOWN_TIMEOUT=${shutdown_timeout}s"
    # On the host's network: the loopback only, and open (the chart's auth.mode none).
    echo "GRPC_ADDR=127.0.0.1:$grpc_port"
    echo "HTTP_ADDR=127.0.0.1:$http_port"
    echo "AUTH_MODE=none"
    echo "DATABASE_URL=$database_url"
    echo "REDIS_URL=$redis_url"
} >"$env_file"
chmod 600 "$env_file"

# The chart's securityContext, as the engine's flags. No --user: the image's own USER must
# be the non-root one.
secure=(--network host --read-only --tmpfs "/tmp:rw,size=64m,mode=1777" --cap-drop ALL
        --security-opt no-new-privileges "${limits[@]}")
[ "$engine" = docker ] || secure+=(--read-only-tmpfs=false)

step="the image's user"
user=$(E image inspect --format '{{.Config.User}}' "$image_id")
[[ "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || fail "USER is '$user', not a numeric non-root uid (runAsNonRoot needs one)"

step="no shell in the image"
status=0
E run --rm --name "${name}_shell" "${secure[@]}" --entrypoint /bin/sh "$image_id" -c true >/dev/null 2>&1 || status=$?
# 127: the engine found no such executable in the image.
[ "$status" -eq 127 ] || fail "/bin/sh -c true: status $status, not 127 (not found)"

step="migrate, as the migration Job runs it (${migrate_args[*]})"
migrations=$(find migrations -name '*.sql' | wc -l)
started=$(ms)
for run in install upgrade; do
    if ! out=$(E run --rm --name "${name}_migrate" "${secure[@]}" --env-file "$env_file" "$image_id" \
            "${migrate_args[@]}" 2>&1); then
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/  migrate | /'
        fail "exit status non-zero on the $run run"
    fi
done
migrate_time=$(seconds_since "$started")
applied=$(psql "$database_url" -qAtc "SELECT count(*) FROM _sqlx_migrations WHERE success" 2>/dev/null) \
    || fail "no _sqlx_migrations table after it ran"
[ "$applied" -eq "$migrations" ] || fail "$applied migrations applied, migrations/ has $migrations"

logs() { E logs "$name" 2>&1 | tail -n 30 | sed 's/^/  serve | /'; }
step="serve"
started=$(ms)
E run -d --name "$name" "${secure[@]}" --env-file "$env_file" "$image_id" serve >/dev/null || fail
step="/readyz within the startup probe's budget (${startup_budget}s)"
ready=""
for _ in $(seq 1 $((startup_budget * 5))); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$http_port/readyz")" = 200 ]; then
        ready=$(seconds_since "$started"); break
    fi
    [ "$(E inspect --format '{{.State.Running}}' "$name")" = true ] || { logs; fail "the container exited"; }
    sleep 0.2
done
[ -n "$ready" ] || { logs; fail "no 200"; }

step="the process: user, capabilities, privileges, seccomp, root filesystem"
pid=$(E inspect --format '{{.State.Pid}}' "$name")
status_of() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "/proc/$pid/status"; }
uids=$(status_of Uid | tr -s '\t ' ' ')
[ "$uids" = "65532 65532 65532 65532" ] || fail "uids are $uids"
for set in CapInh CapPrm CapEff CapBnd CapAmb; do
    [ "$(status_of "$set")" = 0000000000000000 ] || fail "$set is $(status_of "$set")"
done
[ "$(status_of NoNewPrivs)" = 1 ] || fail "NoNewPrivs is $(status_of NoNewPrivs)"
[ "$(status_of Seccomp)" = 2 ] || fail "Seccomp is $(status_of Seccomp), not 2 (a filter)"
root_options=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -n 1)
[[ "$root_options" == ro* ]] || fail "the root filesystem is mounted $root_options"

step="probes"
# grpc.health.v1.Health/Check as the kubelet's gRPC probe sends it, over HTTP/2 without
# TLS: a length-prefixed HealthCheckRequest{service}; SERVING is the message 08 01.
grpc_check() {
    local service=$1 n=${#1} header
    # flag 0, length n + 2 (big-endian, 4 bytes); field 1 (tag 0a), length n; the name.
    header=$(printf '00000000%02x0a%02x' $((n + 2)) "$n" | sed 's/../\\x&/g')
    { printf '%b' "$header"; printf '%s' "$service"; } \
        | curl -s --http2-prior-knowledge --max-time 3 -H 'content-type: application/grpc' -H 'te: trailers' \
            --data-binary @- "http://127.0.0.1:$grpc_port/grpc.health.v1.Health/Check" \
        | od -An -tx1 | tr -d ' \n'
}
for service in "$liveness_service" "$readiness_service"; do
    answer=$(grpc_check "$service")
    [ "$answer" = 00000000020801 ] || fail "gRPC health Check '$service' answered '${answer:-nothing}', not SERVING"
done
for path in /healthz /readyz; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$http_port$path")
    [ "$code" = 200 ] || fail "GET $path: $code"
done

step="a create over HTTP reaches Redis"
started=$(ms)
body=$(curl -s -w '\n%{http_code}' --max-time 10 -X POST "http://127.0.0.1:$http_port/api/v1/translation-jobs" \
    -H 'content-type: application/json' -H 'x-user-id: image-smoke' \
    -d '{"novel_id": "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e", "target_lang": "en"}') || fail "no answer"
[ "$(tail -n 1 <<<"$body")" = 201 ] || fail "POST answered $(tr '\n' ' ' <<<"$body")"
job_id=$(head -n 1 <<<"$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') \
    || fail "no id in $(head -n 1 <<<"$body")"
queued=""
for _ in $(seq 1 100); do
    if redis LRANGE "$name" 0 -1 | grep -qF "$job_id"; then queued=$(seconds_since "$started"); break; fi
    sleep 0.1
done
[ -n "$queued" ] || { logs; fail "job $job_id is not on the list $name after 10 s"; }

step="SIGTERM"
started=$(ms)
E stop -t "$stop_limit" "$name" >/dev/null || fail "stop failed"
stopped=$(seconds_since "$started")
code=$(E inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { logs; fail "exit status $code (137: killed after ${stop_limit}s)"; }
awk -v s="$stopped" -v l="$stop_limit" 'BEGIN { exit !(s < l) }' || fail "took ${stopped}s, limit ${stop_limit}s"

echo "image smoke: PASS $image (${image_id:0:12}, $size, $engine, base $base_kind):" \
     "uid 65532, no capabilities, read-only root, no shell;" \
     "translation-jobs ${migrate_args[*]} twice in ${migrate_time}s ($applied migrations);" \
     "/readyz 200 after ${ready}s; gRPC health $liveness_service and $readiness_service SERVING, /healthz and /readyz 200;" \
     "create reached Redis in ${queued}s; SIGTERM: exit 0 in ${stopped}s (limit ${stop_limit}s of the ${grace}s grace period);" \
     "$(seconds_since "$smoke_started")s"
[ "$compose" -eq 1 ] || exit 0

# --- the compose smoke ------------------------------------------------------------------
compose_started=$(ms)
step="compose: podman-compose"
tools=${TOOLS_DIR:-$root/.tools}
requirements=scripts/image/requirements-compose.txt
# Its virtualenv also downloads the worker's wheels below, for the worker image's Python:
# Debian 12's, so this one is Debian's /usr/bin/python3 too (the same version, hence the
# same environment markers: redis needs async-timeout below Python 3.11.3), not whichever
# python3 comes first on PATH.
venv="$tools/podman-compose-$(sha256sum "$requirements" | cut -c1-12)"
if [ ! -f "$venv/.complete" ]; then
    if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --require-hashes -r "$requirements" || fail "pip install"
    touch "$venv/.complete"
fi
if [ "$engine" = docker ]; then
    compose_cmd=(docker compose)
else
    compose_cmd=("$venv/bin/podman-compose" --podman-args "--runtime runc" --podman-run-args "${limits[*]}")
    [ "$(id -u)" -eq 0 ] || compose_cmd=(sudo -n "${compose_cmd[@]}")
fi

step="compose: images"
if [ "$base_kind" != local ]; then
    make_debootstrap_image
    build_local base "$stack_prefix-base:bookworm" || fail "base"
fi
say "building the stack's local images (PostgreSQL, Redis, Python: Debian's packages)"
build_local postgres "$stack_prefix-postgres:15" || fail "postgres"
build_local redis "$stack_prefix-redis:7" || fail "redis"
worker_context=$context/worker
mkdir -p "$worker_context/wheels"
cp examples/worker/requirements.txt "$worker_context/"
"$venv/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    -d "$worker_context/wheels" -r "$worker_context/requirements.txt" || fail "pip download (worker)"
build_local worker "$stack_prefix-worker:3.11" "$worker_context" || fail "worker"

project=$name
TJ_GRPC_PORT=$(free_port)
TJ_HTTP_PORT=$(free_port)
export TRANSLATION_JOBS_IMAGE=$image_id TJ_GRPC_PORT TJ_HTTP_PORT
C() { "${compose_cmd[@]}" -p "$project" -f docker-compose.yml -f scripts/image/compose.local.yml "$@"; }
compose_log=$context/compose.log
cleanups+=("C down -v >>'$compose_log' 2>&1")
stack_logs() { C logs --tail 20 2>&1 | tail -n 60 | sed 's/^/  compose | /'; }

step="compose: up"
up_started=$(ms)
C up -d --no-build >"$compose_log" 2>&1 || { tail -n 30 "$compose_log" | sed 's/^/  compose | /'; fail; }
step="compose: the service's /readyz"
ready=""
for _ in $(seq 1 240); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$TJ_HTTP_PORT/readyz")" = 200 ]; then
        ready=$(seconds_since "$up_started"); break
    fi
    sleep 0.5
done
[ -n "$ready" ] || { stack_logs; fail "no 200 in 120 s"; }

step="compose: a job, created over HTTP, completed by the reference worker"
started=$(ms)
body=$(curl -s -w '\n%{http_code}' --max-time 10 -X POST "http://127.0.0.1:$TJ_HTTP_PORT/api/v1/translation-jobs" \
    -H 'content-type: application/json' \
    -d '{"novel_id": "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e", "target_lang": "en",
         "subtasks": [{"entity_type": "chapter", "entity_id": "ch-1"}, {"entity_type": "chapter", "entity_id": "ch-2"}]}') \
    || fail "no answer"
[ "$(tail -n 1 <<<"$body")" = 201 ] || fail "POST answered $(tr '\n' ' ' <<<"$body")"
job_id=$(head -n 1 <<<"$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
job_status=""
for _ in $(seq 1 120); do
    job_status=$(curl -s --max-time 3 "http://127.0.0.1:$TJ_HTTP_PORT/api/v1/translation-jobs/$job_id" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin).get("status", ""))' 2>/dev/null || true)
    case $job_status in COMPLETED|FAILED|CANCELLED) break ;; esac
    sleep 0.5
done
[ "$job_status" = COMPLETED ] || { stack_logs; fail "job $job_id is ${job_status:-unknown} after 60 s"; }
completed=$(seconds_since "$started")

step="compose: down"
C down -v >>"$compose_log" 2>&1 || { tail -n 20 "$compose_log" | sed 's/^/  compose | /'; fail; }
unset 'cleanups[-1]'
echo "compose smoke: PASS docker-compose.yml + scripts/image/compose.local.yml (${compose_cmd[0]##*/}," \
     "local postgres, redis, worker images): /readyz 200 ${ready}s after up;" \
     "a job with 2 subtasks COMPLETED by the reference worker in ${completed}s; down -v;" \
     "$(seconds_since "$compose_started")s"
