#!/usr/bin/env bash
# Runs every test in the workspace and ends with one aggregate line, "tests: N passed, M failed",
# summed over all test binaries (cargo's own last line belongs to whichever binary ran last).
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The VM scenarios boot the agent and run the server and CLI as separate programs.
cargo build --workspace --bins --locked || exit 1
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

sum() { grep -E '^test result: ' "$log" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
echo
echo "tests: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ]; then
  exit "$status"
fi
if [ "$passed" -eq 0 ]; then
  echo "tests: no test ran" >&2
  exit 1
fi
