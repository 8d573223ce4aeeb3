#!/usr/bin/env bash
# Installs, on a fresh Debian 12 machine, what Slipway's build and tests need. Idempotent and
# quiet: when everything is present it does nothing (no apt-get update).
set -euo pipefail

# Debian packages the tests use. Keep this list the single source of truth.
PACKAGES=(
  build-essential pkg-config ca-certificates
  openssl            # key interoperability tests (openssl reads our keys and we read its)
  grub-common grub-emu fdisk e2fsprogs  # boot backend tests: grub-editenv, grub.cfg run in grub-emu, sfdisk
  postgresql         # update-server store tests start a throwaway cluster (initdb, pg_ctl)
  dbus-daemon        # a private bus for the engine's D-Bus tests
  xz-utils zstd      # payload compression in tests and image builds
  # vm-tests: the node image builder and QEMU nodes (software emulation)
  mmdebstrap grub-pc-bin busybox-static fakeroot cpio socat curl
  kmod               # depmod for the node image after its unused kernel modules are dropped
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU: Debian 12's qemu-system-x86 (7.2) conflicts with the newer backported qemu-utils that
# some images preinstall; install both at the same version, explicitly.
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  [ ${#missing[@]} -gt 0 ] || $SUDO apt-get update -qq
  ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  echo "setup: installing qemu-system-x86 $ver"
  $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-system-x86=$ver" "qemu-system-common=$ver" "qemu-utils=$ver" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain named in rust-toolchain.toml" >&2
  exit 1
fi
