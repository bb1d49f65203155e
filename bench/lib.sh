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

# proxy_node_files ADMIN_PORT HTTP_PORT [PROXY_SETTINGS]: $work/node-HTTP_PORT.yaml and $work/topology.yaml
# for one proxy-only node on loopback: proxy_config's proxy section, with PROXY_SETTINGS (lines indented
# under `proxy:`) appended to it.
proxy_node_files() {
  {
    proxy_config "$1" "$2"
    [[ -z ${3:-} ]] || echo "$3"
    cat <<CONFIG
dns: { port: 5353, answerTtl: 20s, answersPerQuery: 2, nameservers: [] }
locality: { labelKeys: [topology.kubernetes.io/zone], clientNetworks: [] }
dht: { port: 9410, keyFile: /nonexistent, protocolVersion: 1, bootstrapName: localhost }
health: { interval: 1s, timeout: 500ms, failureThreshold: 2, successThreshold: 2 }
CONFIG
  } >"$work/node-$2.yaml"
  echo "nodes: {}" >"$work/topology.yaml"
}

# start_proxy_node ADMIN_PORT HTTP_PORT [WRAPPER...]: starts the node proxy_node_files made for these
# ports in the background, under WRAPPER (such as valgrind and its options) when given, logging to
# $work/coral-HTTP_PORT.log; its pid joins $pids.
start_proxy_node() {
  local admin_port=$1 http_port=$2
  shift 2
  RUST_LOG=warn "$@" target/release/coral-node run --roles proxy --config "$work/node-$http_port.yaml" \
    --topology "$work/topology.yaml" --node-name bench --pod-ip 127.0.0.1 \
    --admin-address "127.0.0.1:$admin_port" --proxy-address "127.0.0.1:$http_port" \
    >"$work/coral-$http_port.log" 2>&1 &
  pids+=($!)
}
