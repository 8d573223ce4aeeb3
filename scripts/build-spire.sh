#!/usr/bin/env bash
# Builds the pinned SPIRE server and agent (scripts/kube-versions.env: SPIRE_VERSION) from the Go
# module proxy into a version-keyed directory, like the Kubernetes components, so fresh clones and
# CI reuse them. Does nothing when they are there. About 7 minutes on 2 cores the first time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=kube-versions.env
source "$here/kube-versions.env"
root=${SLIPWAY_KUBE_ROOT:-$KUBE_TOOLS_ROOT}
dest="$root/spire-$SPIRE_VERSION"
if [ -x "$dest/bin/spire-server" ] && [ -x "$dest/bin/spire-agent" ] && [ -f "$dest/complete" ]; then
  exit 0
fi
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "build-spire: go not found (Go 1.26 or newer is needed)" >&2; exit 1; }
echo "build-spire: building SPIRE $SPIRE_VERSION into $dest (first time only; several minutes on 2 cores)"
start=$(date +%s)
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/src"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$dest/src"
cat > go.mod <<MOD
module slipway.dev/spire-build

go 1.26
MOD
# `go get` names each of several hundred modules it adds: keep that in a log, shown on failure.
if ! go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" \
  "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" > "$dest/go-get.log" 2>&1; then
  tail -n 40 "$dest/go-get.log" >&2
  exit 1
fi
go build -trimpath -ldflags "-s -w" -o "$dest/bin/" \
  github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
"$dest/bin/spire-server" --version 2>&1 | sed -n 1p
touch "$dest/complete"
echo "build-spire: done in $(( $(date +%s) - start )) s"
