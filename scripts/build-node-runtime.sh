#!/usr/bin/env bash
# Builds the node runtime the QEMU nodes run under their kubelet: containerd and its runc shim,
# runc, the CNI plugins (bridge, host-local, loopback) from the Go module proxy, and the pause
# (sandbox) binary from Kubernetes' own pause.c, into a directory keyed by their versions
# (scripts/kube-versions.env). Does nothing when that directory is complete. Prints the cold
# build time once. Debian 12's containerd 1.6 is older than any Kubernetes 1.37 supports.
#
# Also kubelet-next: the pinned kubelet linked again under the version $KUBERNETES_VERSION+slipway.1
# (build metadata, as distributions mark their own builds), the "new kubelet" of the runtime
# release tests. Only the link step differs, so it costs seconds after scripts/build-kube.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=kube-versions.env
source "$here/kube-versions.env"
root=${SLIPWAY_KUBE_ROOT:-$KUBE_TOOLS_ROOT}
dest="$root/runtime-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_PLUGINS_VERSION-pause-$PAUSE_VERSION"
bins=(containerd containerd-shim-runc-v2 runc bridge host-local loopback pause)

kube_src="$root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION/src/kubernetes"
next_version="$KUBERNETES_VERSION+slipway.1"

command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="/usr/local/go/bin:$PATH"
kubelet_next() {
  [ -x "$dest/bin/kubelet-next" ] && return 0
  [ -f "$kube_src/go.mod" ] || { echo "build-node-runtime: $kube_src is missing (run scripts/build-kube.sh first)" >&2; exit 1; }
  local minor=${KUBERNETES_VERSION#v1.} ldflags="-s -w"
  for kv in gitVersion=$next_version gitMajor=1 gitMinor=${minor%%.*} gitTreeState=clean; do
    ldflags="$ldflags -X k8s.io/component-base/version.$kv"
  done
  mkdir -p "$dest/bin"
  (cd "$kube_src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" \
    -o "$dest/bin/kubelet-next" k8s.io/kubernetes/cmd/kubelet)
  "$dest/bin/kubelet-next" --version
}

complete=1
for b in "${bins[@]}"; do [ -x "$dest/bin/$b" ] || complete=0; done
[ -f "$dest/complete" ] || complete=0
if [ "$complete" = 1 ]; then
  kubelet_next
  exit 0
fi

command -v go >/dev/null || { echo "build-node-runtime: go not found (Go 1.26 or newer)" >&2; exit 1; }
pkg-config --exists libseccomp || { echo "build-node-runtime: libseccomp-dev is missing (make setup installs it)" >&2; exit 1; }
echo "build-node-runtime: containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, CNI plugins $CNI_PLUGINS_VERSION, pause $PAUSE_VERSION into $dest (first time only)"
start=$(date +%s)
mkdir -p "$dest/bin" "$dest/src"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
s="$dest/src"
cat > "$s/go.mod" <<MOD
module slipway.dev/node-runtime-build

go 1.26

require (
	github.com/containerd/containerd/v2 $CONTAINERD_VERSION
	github.com/opencontainers/runc $RUNC_VERSION
	github.com/containernetworking/plugins $CNI_PLUGINS_VERSION
)

tool (
	github.com/containerd/containerd/v2/cmd/containerd
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	github.com/opencontainers/runc
	github.com/containernetworking/plugins/plugins/main/bridge
	github.com/containernetworking/plugins/plugins/main/loopback
	github.com/containernetworking/plugins/plugins/ipam/host-local
)
MOD
(cd "$s" && go mod tidy)

# containerd and its shim: no cgo (btrfs needs cgo; devmapper and zfs are not used here).
(cd "$s" && CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Revision=slipway" \
  -o "$dest/bin/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
echo "build-node-runtime: containerd after $(( $(date +%s) - start )) s"
# runc: cgo for nsenter and seccomp; without libpathrs (not packaged in Debian 12: the pure-Go
# fallback is used). Linked dynamically against libc and libseccomp, both in the node image.
(cd "$s" && CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$dest/bin/runc" github.com/opencontainers/runc)
# The CNI plugins a single-node bridge network needs.
(cd "$s" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dest/bin/" \
  github.com/containernetworking/plugins/plugins/main/bridge \
  github.com/containernetworking/plugins/plugins/main/loopback \
  github.com/containernetworking/plugins/plugins/ipam/host-local)
# pause: Kubernetes' source, as its own Makefile builds it (static).
kmod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-slipway" -o "$dest/bin/pause" "$kmod/build/pause/linux/pause.c"
strip "$dest/bin/pause"

"$dest/bin/containerd" --version
"$dest/bin/runc" --version | sed -n 1p
"$dest/bin/pause" -v
kubelet_next
date -u +%FT%TZ > "$dest/complete"
echo "build-node-runtime: cold build took $(( $(date +%s) - start )) s"
