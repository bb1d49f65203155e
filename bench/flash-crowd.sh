#!/usr/bin/env bash
# Flash crowd: how many times does a slow origin get asked for one uncached object when a crowd hits three caches at
# once? Coral: three coral-node processes (proxy and DHT roles) on 127.0.0.11-13 cooperating through the DHT. Peer:
# three independent nginx proxy_cache servers with proxy_cache_lock on. The origin (python3) takes 1 s to answer and
# counts the requests it gets; three wrk instances, one per cache, start together.
#
#   bench/flash-crowd.sh [connections per cache, default 170] [seconds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-170}
seconds=${2:-3}

source bench/lib.sh
need nginx=nginx-light wrk=wrk
build_coral_node
make_work

origin_port=18281
cat >"$work/origin.py" <<'EOF'
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
body = b"x" * 65536
class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.path, flush=True)
        time.sleep(1)
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=3600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
EOF
python3 "$work/origin.py" "$origin_port" >"$work/origin.log" 2>&1 &
pids+=($!)

# nginx: three independent caches of the origin.
{
  echo "user root; worker_processes 2; pid $work/nginx.pid; error_log $work/nginx-error.log;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  for i in 1 2 3; do
    echo "  proxy_cache_path $work/cache$i keys_zone=c$i:8m;"
    echo "  server { listen 127.0.0.1:1829$i; location / { proxy_pass http://127.0.0.1:$origin_port;"
    echo "    proxy_cache c$i; proxy_cache_lock on; proxy_cache_lock_timeout 10s; } }"
  done
  echo "}"
} >"$work/nginx.conf"
nginx -c "$work/nginx.conf"

# Coral: three nodes in three zones, each a DHT peer of the others.
head -c 48 /dev/urandom >"$work/key"
cat >"$work/topology.yaml" <<EOF
nodes:
  n1: [z1, r1]
  n2: [z2, r1]
  n3: [z3, r2]
EOF
{
  proxy_config 18290 18284
  cat <<EOF
dns: { port: 5353, answerTtl: 20s, answersPerQuery: 2, nameservers: [] }
locality: { labelKeys: [topology.kubernetes.io/zone, topology.kubernetes.io/region], clientNetworks: [] }
dht: { port: 18210, keyFile: $work/key, protocolVersion: 1, bootstrapName: localhost }
health: { interval: 1s, timeout: 500ms, failureThreshold: 2, successThreshold: 2 }
EOF
} >"$work/node.yaml"
for i in 1 2 3; do
  peers=()
  for j in 1 2 3; do [[ $i == "$j" ]] || peers+=(--dht-peer "127.0.0.1$j:18210"); done
  RUST_LOG=warn target/release/coral-node run --roles proxy,dht --config "$work/node.yaml" \
    --topology "$work/topology.yaml" --node-name "n$i" --pod-ip "127.0.0.1$i" \
    --admin-address "127.0.0.1$i:18290" --proxy-address "127.0.0.1$i:18284" "${peers[@]}" \
    >"$work/coral$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1$i:18290/readyz" >/dev/null && break
    sleep 0.1
  done
done
sleep 2 # one upkeep round, so that every node knows the others' zones

# crowd PATH HOST URL...: three wrk instances at once, one per cache; prints origin requests for the path.
crowd() {
  local path=$1 host=$2
  shift 2
  local started=()
  for base in "$@"; do
    wrk -t1 -c"$connections" -d"${seconds}s" -H "Host: $host" "$base$path" >"$work/wrk-$RANDOM.txt" &
    started+=($!)
  done
  wait "${started[@]}"
  grep -c "^$path\$" "$work/origin.log" || true
}

coral_host="origin.test.$origin_port.nyud.net"
coral=$(crowd /coral "$coral_host" http://127.0.0.11:18284 http://127.0.0.12:18284 http://127.0.0.13:18284)
nginx=$(crowd /nginx 127.0.0.1 http://127.0.0.1:18291 http://127.0.0.1:18292 http://127.0.0.1:18293)
echo "| caches | clients | origin fetches of the object |"
echo "|---|---|---|"
echo "| Coral, 3 nodes cooperating | $((3 * connections)) | $coral |"
echo "| nginx proxy_cache_lock, 3 independent caches | $((3 * connections)) | $nginx |"
