# What the bench scripts share; each sources it after `set -euo pipefail` and `cd` to the repository.

# need COMMAND=PACKAGES...: installs from Debian the packages of every command that is missing
# (PACKAGES space-separated).
need() {
  local missing=() pair
  for pair in "$@"; do
    # shellcheck disable=SC2206 # a command may need several packages
    command -v "${pair%%=*}" >/dev/null || missing+=(${pair#*=})
  done
  if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# build_coral_node: the release binary, target/release/coral-node.
build_coral_node() {
  echo "==> building coral-node (release)" >&2
  cargo build --release -q -p coral-node
}

# make_work: a scratch directory $work (readable by servers running as unprivileged users), the
# list $pids of background processes, and a trap that kills them (and nginx, by its pid file, and
# whatever a `cleanup_more` function the script defines stops) and removes $work on exit.
make_work() {
  work=$(mktemp -d)
  chmod 755 "$work"
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}

# proxy_config ADMIN_PORT HTTP_PORT: the head of a node.yaml for a proxy of an origin on loopback
# (`origin.test` is 127.0.0.1), with a 256 MiB memory cache and no client or origin rate limits;
# the script appends its dns, locality, dht and health sections.
proxy_config() {
  cat <<CONFIG
zone: nyud.net
adminPort: $1
proxy:
  httpPort: $2
  cacheMemoryBytes: 268435456
  cacheDiskBytes: 0
  cacheDir: $work/coral-cache
  maxObjectBytes: 52428800
  originTimeouts: { connect: 5s, firstByte: 15s, idle: 30s }
  serveStale: 1h
  originAllow: []
  originDeny: []
  perClientRate: { requestsPerSecond: 1000000, burst: 1000000 }
  perOriginRate: { requestsPerSecond: 1000000, burst: 1000000 }
  originAccess:
    internalNetworks: [127.0.0.0/8]
    addresses: { origin.test: [127.0.0.1] }
    resolvers: [127.0.0.1:9]
CONFIG
}
