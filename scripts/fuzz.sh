#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets (fuzz/, cargo-fuzz + libFuzzer), refreshes their committed
# seeds, and runs each target for FUZZ_SECONDS (default 600) on one core, then prints one line
# per target: executions, executions/s, coverage (libFuzzer's cov: edges, ft: features), corpus
# size and crashes. New inputs go to target/fuzz-corpus/TARGET (not committed); a crash leaves
# its input in fuzz/artifacts/TARGET/ and the run goes on with the next target.
#   FUZZ_TARGETS="grubenv gpt"   only these targets
#   FUZZ_SECONDS=60              time per target
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-600}
cargo_fuzz() {
  if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install --locked cargo-fuzz@0.13.2 >&2
  fi
  # cargo-fuzz passes nightly-only flags: a nightly toolchain if the machine has one, else the
  # pinned stable toolchain allowed to take them.
  if rustup run nightly rustc -V >/dev/null 2>&1; then
    cargo +nightly fuzz "$@"
  else
    RUSTC_BOOTSTRAP=1 cargo fuzz "$@"
  fi
}

# No sanitizer: the project forbids unsafe code, and without ASan's shadow memory the targets run
# several times faster; debug assertions stay on so that arithmetic overflow is a crash.
flags=(--sanitizer none --debug-assertions --release)
cd fuzz
cargo_fuzz build "${flags[@]}"
bin_dir=$(ls -d target/*/release | head -1)
"$bin_dir/seeds"

targets=${FUZZ_TARGETS:-$(cargo_fuzz list | grep -vx seeds)}
report=()
for t in $targets; do
  work=../target/fuzz-corpus/$t
  mkdir -p "$work" "artifacts/$t"
  log=../target/fuzz-corpus/$t.log
  echo "== fuzz $t for ${seconds}s" >&2
  status=0
  # -timeout: an input that takes over 10 s is a hang; -rss_limit_mb bounds memory per input.
  cargo_fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/cov \1, ft \2, corpus \3/p' <<<"$last")
  crashes=$(find "artifacts/$t" -type f | wc -l)
  line="$t: ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-no coverage line}, $crashes crash file(s)"
  [ "$status" -eq 0 ] || line="$line, FAILED (exit $status; see target/fuzz-corpus/$t.log)"
  report+=("$line")
  echo "$line" >&2
done
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${report[@]}"
