#!/usr/bin/env bash
# `make tour`: a walk through the trust core and the slipway CLI, for real: keys, a 2-of-3 root
# of trust, a signed release, verification, and a tampered payload refused. The rolling update
# across QEMU nodes with the dashboard is `make demo` (vm-tests/src/bin/demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Slipway tour: signed releases (the QEMU fleet rollout with the dashboard: make demo) =="
cargo build -q --locked -p slipway-server --bin slipway
S="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/slipway"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$S" keygen --out keys --name alice
step "$S" keygen --out keys --name bob
step "$S" keygen --out keys --name carol
step "$S" root init --key keys/alice.key --key keys/bob.key --public-key keys/carol.pub --threshold 2 --out root.json
head -c $((16 << 20)) /dev/urandom > os.img
step "$S" manifest new --channel stable --version 2.0.0 --expires-in 30d --out manifest.json
step "$S" sign --key keys/alice.key --key keys/bob.key --os os.img --out release.json manifest.json
step "$S" verify --root root.json --os os.img --running-version 1.0.0 release.json
printf '\x01' | dd of=os.img bs=1 seek=4096 conv=notrunc status=none
echo
echo "# one byte of os.img changed:"
if "$S" verify --root root.json --os os.img release.json; then
  echo "demo: a tampered payload was accepted" >&2
  exit 1
fi
echo
echo "== done: the tampered payload was refused (exit 1), as a node would refuse it =="
