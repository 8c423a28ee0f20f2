#!/usr/bin/env bash
# Lints the API (proto/, configured by buf.yaml) and checks it for breaking changes,
# with buf pinned. Exits non-zero on any problem.
#
# Installs buf into .tools/ (git-ignored) when missing: the npm package @bufbuild/buf
# pulls the binary in as a platform package (@bufbuild/buf-linux-x64/bin/buf, ...),
# which is run directly.
#
# `buf breaking` compares proto/ with:
#   - PROTO_AGAINST (any git revision) when set: in CI for a branch, e.g.
#     PROTO_AGAINST=$(git merge-base origin/main HEAD);
#   - otherwise HEAD when proto/ has uncommitted changes (what you are about to commit);
#   - otherwise the parent of the last commit that changed proto/ (that change is
#     checked, however many commits came after it).
# It skips with a message when there is nothing to compare with: no commit touched
# proto/ yet, the API was created by that commit, or its parent is missing (a shallow
# clone: fetch more history, or set PROTO_AGAINST).
#
# Then a self-test: in a scratch copy, a renumbered field must fail `buf breaking` and a
# badly named message must fail `buf lint`, so a weakened buf.yaml cannot pass silently.
#
# Environment: TOOLS_DIR (default .tools), PROTO_AGAINST.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TOOLS_DIR:-$PWD/.tools}
buf_version=1.75.0

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'check_proto: %s\n' "$*" >&2; exit 1; }
started=$(date +%s)

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) platform=linux-x64 ;;
    Linux-aarch64 | Linux-arm64) platform=linux-aarch64 ;;
    Darwin-arm64) platform=darwin-arm64 ;;
    Darwin-x86_64) platform=darwin-x64 ;;
    *) die "no @bufbuild/buf platform package for $(uname -sm)" ;;
esac
buf_dir="$tools/buf-$buf_version"
buf="$buf_dir/node_modules/@bufbuild/buf-$platform/bin/buf"

say "tools"
if ! { [ -x "$buf" ] && [ "$("$buf" --version 2>/dev/null)" = "$buf_version" ]; }; then
    echo "installing @bufbuild/buf@$buf_version from npm"
    if ! command -v npm >/dev/null 2>&1; then
        as_root=""; [ "$(id -u)" -eq 0 ] || as_root=sudo
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
    rm -rf "$buf_dir"
    mkdir -p "$buf_dir"
    # --ignore-scripts: the wrapper's postinstall only checks for the binary, done below.
    npm install --prefix "$buf_dir" --no-save --no-package-lock --no-audit --no-fund \
        --ignore-scripts --loglevel=error "@bufbuild/buf@$buf_version" >/dev/null
    [ -x "$buf" ] || die "@bufbuild/buf@$buf_version brought no binary at ${buf#"$PWD"/}"
    [ "$("$buf" --version)" = "$buf_version" ] || die "buf is not $buf_version"
fi
echo "buf $("$buf" --version) (${buf#"$PWD"/})"

say "buf lint (STANDARD, exceptions in buf.yaml)"
"$buf" lint
echo "  ok   $(find proto -name '*.proto' | wc -l) file(s) in proto/"

say "buf breaking (FILE)"
against=""
reason=""
if [ -n "${PROTO_AGAINST:-}" ]; then
    against=$(git rev-parse --verify -q "${PROTO_AGAINST}^{commit}") || die "PROTO_AGAINST=$PROTO_AGAINST is not a commit"
    reason="PROTO_AGAINST=$PROTO_AGAINST"
elif ! git diff --quiet HEAD -- proto/ || [ -n "$(git ls-files --others --exclude-standard -- proto/)" ]; then
    against=$(git rev-parse HEAD)
    reason="uncommitted changes in proto/, compared with HEAD"
else
    last=$(git log -1 --format=%H -- proto/)
    if [ -z "$last" ]; then
        echo "  skipped: no commit has proto/ yet"
    elif ! against=$(git rev-parse --verify -q "$last^"); then
        against=""
        echo "  skipped: the parent of $(git log -1 --format='%h "%s"' "$last"), the last change to proto/," \
             "is not in this clone (root commit or shallow clone); set PROTO_AGAINST or fetch more history"
    else
        reason="the last change to proto/: $(git log -1 --format='%h "%s"' "$last")"
    fi
fi
if [ -n "$against" ]; then
    if [ -z "$(git ls-tree -d "$against" proto)" ]; then
        echo "  skipped: $(git log -1 --format=%h "$against") has no proto/: the API starts after it ($reason)"
    else
        # A revision without buf.yaml is read as a plain directory of .proto files.
        input=".git#ref=$against,depth=1"
        git cat-file -e "$against:buf.yaml" 2>/dev/null || input="$input,subdir=proto"
        echo "  against $(git log -1 --format='%h "%s"' "$against") ($reason)"
        "$buf" breaking --against "$input"
        echo "  ok   no breaking change"
    fi
fi

say "self-test: the checks can fail"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/before" "$scratch/after"
cp -r buf.yaml proto "$scratch/before/"
cp -r buf.yaml proto "$scratch/after/"
target="$scratch/after/proto/translation/v1/translation_jobs.proto"
sed -i 's/^\(  string novel_id = \)1;/\199;/' "$target"
grep -q 'string novel_id = 99;' "$target" || die "self-test: could not renumber novel_id"
if out=$(cd "$scratch/after" && "$buf" breaking --against ../before 2>&1); then
    die "self-test: renumbering a field did not fail buf breaking"
fi
echo "  ok   buf breaking refuses a renumbered field: $(head -n1 <<<"$out")"
cp "$scratch/before/proto/translation/v1/translation_jobs.proto" "$target"
printf '\nmessage bad_name {}\n' >>"$target"
if out=$(cd "$scratch/after" && "$buf" lint 2>&1); then
    die "self-test: a snake_case message name did not fail buf lint"
fi
echo "  ok   buf lint refuses a bad message name: $(head -n1 <<<"$out")"

say "summary"
echo "check_proto: passed ($(($(date +%s) - started))s)"
