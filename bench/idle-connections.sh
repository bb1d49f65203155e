#!/usr/bin/env bash
# Peak memory of the proxy holding 10,000 idle client connections, against nginx proxy_cache holding as many.
# Each connection sends one GET for a cached 1 KiB object, reads the answer and then stays open, idle (keep-alive).
# Peak RSS is the kernel's VmHWM of the server processes (nginx: master plus workers).
#
#   bench/idle-connections.sh [connections, default 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-10000}
ulimit -n $((connections + 1024))

source bench/lib.sh
need nginx=nginx-light
build_coral_node
make_work

mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/1k"
cat >"$work/nginx.conf" <<EOF
user root; worker_processes 2; worker_rlimit_nofile $((connections + 1024));
pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections $((connections + 1024)); }
http {
  access_log off; keepalive_timeout 60s; keepalive_requests 1000;
  proxy_cache_path $work/nginx-cache keys_zone=idle:16m;
  server { listen 127.0.0.1:18381; root $work/www; add_header Cache-Control "max-age=3600"; }
  server { listen 127.0.0.1:18382 backlog=16384;
    location / { proxy_pass http://127.0.0.1:18381; proxy_cache idle; } }
}
EOF
nginx -c "$work/nginx.conf"

# Every connection comes from 127.0.0.1: the per-address share must hold them all.
proxy_node_files 18390 18384 "  clientLimits: { headerTimeout: 60s, maxConnectionsPerClient: $connections }"
start_proxy_node 18390 18384
coral_pid=${pids[-1]}
sleep 1

cat >"$work/idle.py" <<'EOF'
import socket, sys, time
port, host, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
request = f"GET /1k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
opened = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    opened.append(s)
served = 0
for s in opened:
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    served += data.startswith(b"HTTP/1.1 200")
print(served, flush=True)
time.sleep(3)
EOF

# peak KIB PID...: the sum of the processes' VmHWM.
peak() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '/VmHWM/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}

coral_host="origin.test.18381.nyud.net"
curl -sf -o /dev/null -H "Host: $coral_host" http://127.0.0.1:18384/1k
curl -sf -o /dev/null http://127.0.0.1:18382/1k
coral_before=$(peak "$coral_pid")
coral_served=$(python3 "$work/idle.py" 18384 "$coral_host" "$connections")
coral_peak=$(peak "$coral_pid")
nginx_pids=$(pgrep -f "nginx: .*$work/nginx.conf|nginx: worker" | tr '\n' ' ')
# shellcheck disable=SC2086
nginx_before=$(peak $nginx_pids)
nginx_served=$(python3 "$work/idle.py" 18382 127.0.0.1 "$connections")
# shellcheck disable=SC2086
nginx_peak=$(peak $nginx_pids)
echo "| server | connections answered, then idle | peak RSS before | peak RSS with them | per connection |"
echo "|---|---|---|---|---|"
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f KiB", (b - a) / n }'; }
echo "| Coral | $coral_served | $((coral_before / 1024)) MiB | $((coral_peak / 1024)) MiB | $(per "$coral_before" "$coral_peak" "$connections") |"
echo "| nginx proxy_cache (2 workers) | $nginx_served | $((nginx_before / 1024)) MiB | $((nginx_peak / 1024)) MiB | $(per "$nginx_before" "$nginx_peak" "$connections") |"
if ((coral_served != connections || nginx_served != connections)); then
  echo "not every connection was answered (Coral $coral_served, nginx $nginx_served of $connections): the figures are not per idle connection" >&2
  exit 1
fi
