#!/usr/bin/env bash
# The slot images `cargo bench -p slipway-agent --bench delta` compares, built with the vm-tests
# image builder into target/bench-images (kept while its inputs are unchanged):
#   slot-1.0.0.img, slot-2.0.0.img   2.0.0 adds one Debian package (vm-tests/image/packages-2.0.0)
#   slot-kernel.img                  2.0.0 with another Debian cloud kernel (vmlinuz and modules)
# It reuses what the vm-tests harness made in target/vm-images (base root file system, keys,
# boot partition); without them it runs the harness's image build first.
set -euo pipefail
cd "$(dirname "$0")/.."
T=target
VM=$T/vm-images
OUT=$T/bench-images
log() { printf 'bench-images: %s\n' "$*" >&2; }

cargo build -q --locked -p slipway-agent --bin slipway-agent
base=$(ls "$VM"/base-bookworm-*.tar 2>/dev/null | head -1 || true)
if [ -z "$base" ] || [ ! -f "$VM/keys/root.json" ] || [ ! -d "$VM/boot-staging" ]; then
  log "no vm-tests images yet: building them"
  cargo build -q --locked --workspace --bins
  cargo run -q --locked -p slipway-vm-tests --bin slipway-demo -- --images-only
  base=$(ls "$VM"/base-bookworm-*.tar | head -1)
fi

# Another cloud kernel than the base's: the newest one older than the newest available.
kernels=$(apt-cache search --names-only '^linux-image-6\.[0-9.]+-[0-9]+-cloud-amd64$' | cut -d' ' -f1 | sort -V)
[ -n "$kernels" ] || { log "no linux-image-*-cloud-amd64 in the apt lists (apt-get update?)"; exit 1; }
variant=$(echo "$kernels" | tail -2 | head -1)

key=$( (sha256sum vm-tests/image/build.sh vm-tests/image/packages* "$T/debug/slipway-agent" "$base"; echo "$variant") | sha256sum | cut -c1-16)
if [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$key" ] && [ -f "$OUT/slot-kernel.img" ]; then
  log "up to date ($OUT)"
  exit 0
fi
log "building into $OUT with kernel variant $variant"
rm -rf "$OUT"
KERNEL_VARIANT=$variant EXTENSIONS= vm-tests/image/build.sh "$base" "$OUT" "$T/debug/slipway-agent" \
  "$VM/keys/root.json" "$VM/boot-staging" 1.0.0 2.0.0 >"$T/bench-images.log" 2>&1 ||
  { tail -20 "$T/bench-images.log" >&2; exit 1; }
rm -f "$OUT/disk.raw" "$OUT"/payload-*.zst
echo "$key" > "$OUT/key"
ls -la "$OUT" >&2
