#!/usr/bin/env bash
# `make images`: builds slipway-operator, slipway-agent and slipway-server (and slipway-pause, the
# test nodes' sandbox image, once scripts/setup.sh has built the node runtime) as OCI image layouts
# under target/images (no container engine), reproducibly: the creation time is the last
# commit's, the revision its hash. With REGISTRY=host:port the images are pushed there (skopeo,
# digests preserved) and target/images/values-images.yaml is written for `helm install -f`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
out="$target/images"

# IMAGE_PROFILE=dev builds the images from the debug binaries (quick, large); default: the
# `image` profile (release code without debug info).
profile=${IMAGE_PROFILE:-image}
bin_dir="$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
start=$(date +%s)
cargo build --locked --profile "$profile" -p slipway-agent -p slipway-server -p slipway-operator -p slipway-images --bins
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
created=$(git log -1 --format=%ct 2>/dev/null || echo 0)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# slipway-pause too (the test nodes' sandbox and workload image) when the node runtime is built.
# shellcheck source=kube-versions.env
source scripts/kube-versions.env
pause="${SLIPWAY_KUBE_ROOT:-$KUBE_TOOLS_ROOT}/runtime-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_PLUGINS_VERSION-pause-$PAUSE_VERSION/bin/pause"
pause_args=()
[ -x "$pause" ] && pause_args=(--pause "$pause")
"$bin_dir/slipway-image" --bin-dir "$bin_dir" --out "$out" \
  --tag "$version" --revision "$revision" --created "$created" "${pause_args[@]}"
echo "images: built in $(( $(date +%s) - start )) s; layouts in $out"

if [ -n "${REGISTRY:-}" ]; then
  values="$out/values-images.yaml"
  echo "image:" > "$values"
  echo "  registry: $REGISTRY/slipway" >> "$values"
  for name in slipway-operator slipway-agent slipway-server; do
    skopeo copy --quiet --preserve-digests --dest-tls-verify="${REGISTRY_TLS_VERIFY:-false}" \
      "oci:$out/$name:$version" "docker://$REGISTRY/slipway/$name:$version"
    digest=$(sed -n "s/^$(echo "${name#slipway-}" | tr a-z A-Z)_DIGEST=//p" "$out/images.env")
    echo "pushed $REGISTRY/slipway/$name@$digest"
    echo "  ${name#slipway-}Digest: $digest" >> "$values"
  done
  echo "helm values for these images: $values"
fi
