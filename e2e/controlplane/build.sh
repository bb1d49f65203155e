#!/usr/bin/env bash
# Builds the four control-plane binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) from the upstream Go modules pinned
# in go.mod/go.sum, into <repo>/.cache/controlplane/<go.sum hash>/bin/.
# Modules and the Go build cache also live under <repo>/.cache/go/, which git
# ignores. Does nothing if the binaries for the current go.sum already exist.
#
# Usage: e2e/controlplane/build.sh      (progress on stderr; the bin directory
#                                        is the last line on stdout)
#   BIN=$(e2e/controlplane/build.sh | tail -n1)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$repo/.cache"

log() { echo "build.sh: $*" >&2; }

binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd)

hash=$(sha256sum "$here/go.sum" | cut -c1-16)
out="$cache/controlplane/$hash"
bin="$out/bin"

all_built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

if all_built; then
  log "binaries for go.sum $hash already built"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go not found in PATH (Go >= 1.26 needed)"; exit 1; }

export GOTOOLCHAIN=local          # never download another toolchain
export CGO_ENABLED=0              # static binaries, no C toolchain needed
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-modcacherw -buildvcs=false -mod=readonly"  # rw: cache can be rm -rf'd

# Version stamp: the component-base version the binaries report (kubectl
# version, /version, skew checks), taken from the k8s.io/kubernetes requirement.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")
[[ $k8s_version =~ ^v([0-9]+)\.([0-9]+)\. ]] || { log "cannot read k8s.io/kubernetes version from go.mod"; exit 1; }
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=${BASH_REMATCH[1]} -X $vpkg.gitMinor=${BASH_REMATCH[2]} -X $vpkg.gitTreeState=clean"

log "$(go version); Kubernetes $k8s_version; output $bin"
cd "$here"
log "downloading modules (first time: ~0.8 GB)..."
go mod download

# Build into a scratch directory, then rename: an interrupted build never
# leaves a half-filled bin/ that would later be taken as complete.
tmp="$out/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
first=" (first build takes ~7 min on 2 cores; ~20 s with a warm Go cache)"
for b in "${binaries[@]}"; do
  log "building $b...$first"
  first=""
  start=$SECONDS
  nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/$b" "./cmd/$b"
  log "built $b in $((SECONDS - start)) s"
done
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
log "done: $(du -sh "$bin" | cut -f1) in $bin"
echo "$bin"
