#!/usr/bin/env bash
# Fuzzes the request edges with cargo-fuzz (libFuzzer): the HTTP JSON body
# (count check and parser), the gRPC pre-decode check (against prost's own
# decoding) and bearer-token parsing. Targets in fuzz/fuzz_targets/, seed
# corpora in fuzz/corpus/.
#
#   scripts/fuzz.sh             # 5 minutes per target (what a real run is)
#   scripts/fuzz.sh 20          # 20 s per target (what the test command runs)
#   scripts/fuzz.sh 600 --keep  # new inputs are kept in fuzz/corpus/ (to commit)
#
# cargo-fuzz needs nightly compiler flags; the one stable toolchain here
# accepts them with RUSTC_BOOTSTRAP=1. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run: add it as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
keep=${2:-}
targets=(http_body grpc_wire jwt_header)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install --locked --quiet cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  if [ "$keep" != "--keep" ]; then
    # A copy: a short run leaves the committed corpus as it is.
    scratch=$(mktemp -d)
    cp -r "$corpus/." "$scratch/"
    corpus=$scratch
  fi
  echo "fuzz: $target for ${seconds}s"
  log=$(mktemp)
  status=0
  cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|thread .* panicked|Failing input|Test unit written)' "$log" \
    | sed 's/^/  /' || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target failed (exit $status); last lines:" >&2
    tail -n 30 "$log" >&2
    ls "fuzz/artifacts/$target" 2>/dev/null >&2 || true
    exit 1
  fi
  rm -f "$log"
  [ "$keep" = "--keep" ] || rm -rf "$corpus"
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no failing input"
