#!/usr/bin/env bash
# Cache-hit throughput and latency of Coral's proxy against nginx proxy_cache and Varnish,
# configured as equivalent reverse caches of one origin, in the same run, on loopback.
#
#   bench/cache-hits.sh [seconds per run, default 10] [connections, default 64] [rounds, default 3]
#                       [protocol: http1 (default) or http2]
#
# The origin is nginx serving a 1 KiB and a 1 MiB file with `Cache-Control: max-age=3600`.
# Each cache is warmed, then wrk (2 threads) asks it for the same object for the given time and
# the table gives its p99 latency; with http2, h2load (2 threads, 10 streams at once on each
# connection, HTTP/2 with prior knowledge on all three caches) does, and the table gives its mean
# latency, as h2load reports no percentiles.
# Coral runs twice: as set by default, copying bodies to the socket, and with
# `sendfileMinBytes: 65536`, sending the 1 MiB body with `sendfile` (the 1 KiB one is too short,
# and HTTP/2 answers never use `sendfile`: those rows only show the spread between two nodes
# doing the same).
# Every round runs each cache once, starting with a different one; the table gives the median
# round of each (the machine is shared and noisy) and every round's rate.
# Installs nginx-light, varnish and wrk from Debian when missing. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-64}
rounds=${3:-3}
protocol=${4:-http1}
case $protocol in
  http1) curl_protocol=() nginx_listen="" varnish_http2=() latency="p99 latency" ;;
  http2)
    curl_protocol=(--http2-prior-knowledge) nginx_listen=" http2"
    varnish_http2=(-p feature=+http2) latency="mean latency"
    ;;
  *) echo "protocol: http1 or http2, not $protocol" >&2 && exit 2 ;;
esac

source bench/lib.sh
need nginx=nginx-light varnishd=varnish wrk=wrk h2load=nghttp2-client
build_coral_node
make_work

origin_port=18081 nginx_port=18082 varnish_port=18083 coral_port=18084 admin_port=18090
sendfile_port=18085 sendfile_admin_port=18091
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
  keepalive_requests 1000000;
  sendfile on;
  proxy_cache_path $work/nginx-cache keys_zone=bench:16m max_size=1g;
  server {
    listen 127.0.0.1:$origin_port;
    root $work/www;
    add_header Cache-Control "max-age=3600";
  }
  server {
    listen 127.0.0.1:$nginx_port$nginx_listen;
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
varnishd -a "127.0.0.1:$varnish_port" -f "$work/default.vcl" -n "$work/varnish" -s malloc,256m \
  "${varnish_http2[@]}" -F \
  >"$work/varnish.log" 2>&1 &
pids+=($!)

proxy_node_files "$admin_port" "$coral_port"
start_proxy_node "$admin_port" "$coral_port"
proxy_node_files "$sendfile_admin_port" "$sendfile_port" "  sendfileMinBytes: 65536"
start_proxy_node "$sendfile_admin_port" "$sendfile_port"

coral_host="origin.test.$origin_port.nyud.net"
ready=
for _ in $(seq 50); do
  if curl "${curl_protocol[@]}" -sf -o /dev/null "http://127.0.0.1:$coral_port/1k" -H "Host: $coral_host" &&
    curl "${curl_protocol[@]}" -sf -o /dev/null "http://127.0.0.1:$sendfile_port/1k" -H "Host: $coral_host" &&
    curl "${curl_protocol[@]}" -sf -o /dev/null "http://127.0.0.1:$varnish_port/1k" &&
    curl "${curl_protocol[@]}" -sf -o /dev/null "http://127.0.0.1:$nginx_port/1k"; then
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

# run CACHE OBJECT: warms the cache, then prints "requests/s latency".
run() {
  local port host=127.0.0.1
  case $1 in
    nginx) port=$nginx_port ;;
    varnish) port=$varnish_port ;;
    coral) port=$coral_port host=$coral_host ;;
    coral-sendfile) port=$sendfile_port host=$coral_host ;;
  esac
  for _ in 1 2 3; do curl "${curl_protocol[@]}" -sf -o /dev/null "http://127.0.0.1:$port/$2" -H "Host: $host"; done
  local url="http://127.0.0.1:$port/$2" out
  if [[ $protocol == http2 ]]; then
    out=$(h2load -t2 -c"$connections" -m10 -D"$seconds" -H ":authority: $host" "$url")
    grep -q ' [1-9][0-9]* 2xx' <<<"$out" || { echo "h2load got no 2xx from $1: $out" >&2 && exit 1; }
    awk '/^finished in/ {rps = $4} /^time for request:/ {mean = $6} END {print rps, mean}' <<<"$out"
  else
    out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency -H "Host: $host" "$url")
    awk '/^Requests\/sec/ {rps = $2} $1 == "99%" {p99 = $2} END {print rps, p99}' <<<"$out"
  fi
}

# median FILE: of the lines "requests/s latency" in FILE, the one with the median requests/s.
median() { sort -n "$1" | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }
# rounds FILE: every round's requests/s, rounded.
rounds() { awk '{ printf "%s%d", (NR > 1 ? ", " : ""), $1 }' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

caches=(nginx varnish coral coral-sendfile)
echo "| object | cache | requests/s (median) | $latency | vs nginx | vs Varnish | every round |"
echo "|---|---|---|---|---|---|---|"
for object in 1k 1m; do
  for cache in "${caches[@]}"; do : >"$work/$object-$cache"; done
  # Each round starts with the next cache, so none always runs first or last on a busy machine.
  for round in $(seq 0 $((rounds - 1))); do
    for i in "${!caches[@]}"; do
      cache=${caches[$(((round + i) % ${#caches[@]}))]}
      run "$cache" "$object" >>"$work/$object-$cache"
    done
  done
  read -r nginx_rps nginx_latency < <(median "$work/$object-nginx")
  read -r varnish_rps varnish_latency < <(median "$work/$object-varnish")
  read -r coral_rps coral_latency < <(median "$work/$object-coral")
  read -r sendfile_rps sendfile_latency < <(median "$work/$object-coral-sendfile")
  echo "| $object | nginx proxy_cache | $nginx_rps | $nginx_latency | 1.00x | $(ratio "$nginx_rps" "$varnish_rps") | $(rounds "$work/$object-nginx") |"
  echo "| $object | Varnish | $varnish_rps | $varnish_latency | $(ratio "$varnish_rps" "$nginx_rps") | 1.00x | $(rounds "$work/$object-varnish") |"
  echo "| $object | Coral | $coral_rps | $coral_latency | $(ratio "$coral_rps" "$nginx_rps") | $(ratio "$coral_rps" "$varnish_rps") | $(rounds "$work/$object-coral") |"
  echo "| $object | Coral, sendfile | $sendfile_rps | $sendfile_latency | $(ratio "$sendfile_rps" "$nginx_rps") | $(ratio "$sendfile_rps" "$varnish_rps") | $(rounds "$work/$object-coral-sendfile") |"
done
origin_hits=$(for port in "$admin_port" "$sendfile_admin_port"; do curl -s "http://127.0.0.1:$port/metrics"; done |
  awk '/^coral_proxy_origin_fetches_total/ {sum += $2} END {print sum + 0}')
sent=$(curl -s "http://127.0.0.1:$sendfile_admin_port/metrics" | awk '/^coral_proxy_sendfile_bytes_total/ {print $2}')
echo
echo "Coral origin fetches during the run: $origin_hits (2 objects, 2 nodes). Bytes the sendfile node sent with sendfile: $sent."
