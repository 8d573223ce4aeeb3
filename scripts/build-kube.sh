#!/usr/bin/env bash
# Builds the pinned Kubernetes components (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet) and etcd from upstream source through the Go module proxy, into a
# directory keyed by their versions (scripts/kube-versions.env), so fresh clones and CI reuse
# them. Does nothing when that directory is complete. Prints the cold build time once.
#
# k8s.io/kubernetes is not meant to be imported: its go.mod replaces each staging module
# (k8s.io/api, k8s.io/client-go, ...) with ./staging/..., which a dependent module does not
# inherit. So the build module below requires k8s.io/kubernetes and replaces every staging
# module with its published v0.Y.Z, listed from that release's own go.mod.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=kube-versions.env
source "$here/kube-versions.env"
root=${SLIPWAY_KUBE_ROOT:-$KUBE_TOOLS_ROOT}
dest="$root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd)

complete=1
for b in "${bins[@]}"; do [ -x "$dest/bin/$b" ] || complete=0; done
[ -f "$dest/complete" ] || complete=0
if [ "$complete" = 1 ]; then
  exit 0
fi

# The machines ship Go in /usr/local/go; a login shell's PATH has it, a bare one may not.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "build-kube: go not found (Go 1.26 or newer is needed; Debian's golang-go is too old for Kubernetes $KUBERNETES_VERSION)" >&2; exit 1; }
echo "build-kube: building Kubernetes $KUBERNETES_VERSION and etcd $ETCD_VERSION into $dest (first time only; 6-9 minutes on 2 cores)"
start=$(date +%s)
mkdir -p "$dest/bin" "$dest/src/kubernetes" "$dest/src/etcd"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# --- Kubernetes
minor=${KUBERNETES_VERSION#v1.}            # 37.2
staging="v0.$minor"                         # v0.37.2
modfile=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
goline=$(grep -m1 '^go ' "$modfile")
k="$dest/src/kubernetes"
{
  echo "module slipway.dev/kube-build"
  echo
  echo "$goline"
  echo
  echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
  echo
  echo "replace ("
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" \
    | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
  echo
  echo "tool ("
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    echo "	k8s.io/kubernetes/cmd/$b"
  done
  echo ")"
} > "$k/go.mod"
(cd "$k" && go mod tidy)
ldflags="-s -w"
for kv in gitVersion=$KUBERNETES_VERSION gitMajor=1 gitMinor=${minor%%.*} gitTreeState=clean; do
  ldflags="$ldflags -X k8s.io/component-base/version.$kv"
done
(cd "$k" && go build -trimpath -ldflags "$ldflags" -o "$dest/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet)
echo "build-kube: Kubernetes built after $(( $(date +%s) - start )) s"

# --- etcd: its server module holds the etcd binary's main package.
e="$dest/src/etcd"
printf 'module slipway.dev/etcd-build\n\n%s\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' \
  "$goline" "$ETCD_VERSION" > "$e/go.mod"
(cd "$e" && go mod tidy)
(cd "$e" && go build -trimpath -ldflags "-s -w" -o "$dest/bin/etcd" go.etcd.io/etcd/server/v3)

for b in "${bins[@]}"; do "$dest/bin/$b" --version 2>&1 | sed -n 1p; done
date -u +%FT%TZ > "$dest/complete"
echo "build-kube: cold build of Kubernetes $KUBERNETES_VERSION + etcd $ETCD_VERSION took $(( $(date +%s) - start )) s"
