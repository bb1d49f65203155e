#!/usr/bin/env bash
# Cache-hit throughput and p99 latency of Coral's proxy against nginx proxy_cache and Varnish,
# configured as equivalent reverse caches of one origin, in the same run, on loopback.
#
#   bench/cache-hits.sh [seconds per run, default 10] [connections, default 64] [rounds, default 3]
#
# The origin is nginx serving a 1 KiB and a 1 MiB file with `Cache-Control: max-age=3600`.
# Each cache is warmed, then wrk (2 threads) asks it for the same object for the given time.
# Every round runs each cache once, starting with a different one; the table gives the median
# round of each (the machine is shared and noisy) and every round's rate.
# Installs nginx-light, varnish and wrk from Debian when missing. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-64}
rounds=${3:-3}

source bench/lib.sh
need nginx=nginx-light varnishd=varnish wrk=wrk
build_coral_node
make_work

origin_port=18081 nginx_port=18082 varnish_port=18083 coral_port=18084 admin_port=18090
mkdir -p "$work/www" "$work/nginx-cache" "$work/varnish"
head -c 1024 /dev/urandom >"$work/www/1k"
head -c $((1024 * 1024)) /dev/urandom >"$work/www/1m"

cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  proxy_cache_path $work/nginx-cache keys_zone=bench:16m max_size=1g;
  server {
    listen 127.0.0.1:$origin_port;
    root $work/www;
    add_header Cache-Control "max-age=3600";
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://127.0.0.1:$origin_port;
      proxy_cache bench;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$work/nginx.conf"

cat >"$work/default.vcl" <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$origin_port"; }
EOF
varnishd -a "127.0.0.1:$varnish_port" -f "$work/default.vcl" -n "$work/varnish" -s malloc,256m -F \
  >"$work/varnish.log" 2>&1 &
pids+=($!)

proxy_node_files "$admin_port" "$coral_port"
start_proxy_node "$admin_port" "$coral_port"

coral_host="origin.test.$origin_port.nyud.net"
ready=
for _ in $(seq 50); do
  if curl -sf -o /dev/null "http://127.0.0.1:$coral_port/1k" -H "Host: $coral_host" &&
    curl -sf -o /dev/null "http://127.0.0.1:$varnish_port/1k" &&
    curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/1k"; then
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z $ready ]]; then
  echo "the caches did not come up; their logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
fi

# run CACHE OBJECT: warms the cache, then prints "requests/s p99".
run() {
  local port host=127.0.0.1
  case $1 in
    nginx) port=$nginx_port ;;
    varnish) port=$varnish_port ;;
    coral) port=$coral_port host=$coral_host ;;
  esac
  for _ in 1 2 3; do curl -sf -o /dev/null "http://127.0.0.1:$port/$2" -H "Host: $host"; done
  local out
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency -H "Host: $host" "http://127.0.0.1:$port/$2")
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$rps $p99"
}

# median FILE: of the lines "requests/s p99" in FILE, the one with the median requests/s.
median() { sort -n "$1" | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }
# rounds FILE: every round's requests/s, rounded.
rounds() { awk '{ printf "%s%d", (NR > 1 ? ", " : ""), $1 }' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

caches=(nginx varnish coral)
echo "| object | cache | requests/s (median) | p99 latency | vs nginx | vs Varnish | every round |"
echo "|---|---|---|---|---|---|---|"
for object in 1k 1m; do
  for cache in "${caches[@]}"; do : >"$work/$object-$cache"; done
  # Each round starts with the next cache, so none always runs first or last on a busy machine.
  for round in $(seq 0 $((rounds - 1))); do
    for i in 0 1 2; do
      cache=${caches[$(((round + i) % 3))]}
      run "$cache" "$object" >>"$work/$object-$cache"
    done
  done
  read -r nginx_rps nginx_p99 < <(median "$work/$object-nginx")
  read -r varnish_rps varnish_p99 < <(median "$work/$object-varnish")
  read -r coral_rps coral_p99 < <(median "$work/$object-coral")
  echo "| $object | nginx proxy_cache | $nginx_rps | $nginx_p99 | 1.00x | $(ratio "$nginx_rps" "$varnish_rps") | $(rounds "$work/$object-nginx") |"
  echo "| $object | Varnish | $varnish_rps | $varnish_p99 | $(ratio "$varnish_rps" "$nginx_rps") | 1.00x | $(rounds "$work/$object-varnish") |"
  echo "| $object | Coral | $coral_rps | $coral_p99 | $(ratio "$coral_rps" "$nginx_rps") | $(ratio "$coral_rps" "$varnish_rps") | $(rounds "$work/$object-coral") |"
done
origin_hits=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^coral_proxy_origin_fetches_total/ {sum += $2} END {print sum + 0}')
echo
echo "Coral origin fetches during the run: $origin_hits (2 objects)."
