#!/usr/bin/env bash
# Builds the pinned Open Policy Agent (scripts/kube-versions.env: OPA_VERSION) from the Go module
# proxy into a version-keyed directory, like the Kubernetes components, so fresh clones and CI
# reuse it. Does nothing when it is there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=kube-versions.env
source "$here/kube-versions.env"
root=${SLIPWAY_KUBE_ROOT:-$KUBE_TOOLS_ROOT}
dest="$root/opa-$OPA_VERSION"
if [ -x "$dest/bin/opa" ] && [ -f "$dest/complete" ]; then
  exit 0
fi
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "build-opa: go not found (Go 1.26 or newer is needed)" >&2; exit 1; }
echo "build-opa: building OPA $OPA_VERSION into $dest (first time only; a few minutes on 2 cores)"
start=$(date +%s)
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/src"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$dest/src"
cat > go.mod <<MOD
module slipway.dev/opa-build

go 1.26

require github.com/open-policy-agent/opa $OPA_VERSION

tool github.com/open-policy-agent/opa
MOD
go mod tidy
go build -trimpath -ldflags "-s -w -X github.com/open-policy-agent/opa/version.Version=${OPA_VERSION#v}" \
  -o "$dest/bin/opa" github.com/open-policy-agent/opa
"$dest/bin/opa" version | sed -n 1p
touch "$dest/complete"
echo "build-opa: done in $(( $(date +%s) - start )) s"
