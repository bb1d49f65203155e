#!/usr/bin/env bash
# Instructions one 1 KiB cache hit costs the proxy, counted by callgrind: a measure of the node's own
# work that this shared machine's noise does not move, for comparing two versions of the hit path.
#
#   bench/hit-instructions.sh [seconds counted, default 4] [protocol: http1 (default) or http2]
#
# The node runs under valgrind (about 50 times slower); after a warm-up, wrk (1 thread, 16
# connections) asks it for the same cached object while callgrind counts, and the script prints
# the instructions per request and the 25 functions with the most instructions of their own. With
# http2, h2load does (1 thread, 16 connections, 10 streams at once on each, prior knowledge).
# Installs nginx-light (the origin), wrk, h2load and valgrind from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-4}
protocol=${2:-http1}
[[ $protocol == http1 || $protocol == http2 ]] || { echo "protocol: http1 or http2, not $protocol" >&2 && exit 2; }

source bench/lib.sh
need nginx=nginx-light wrk=wrk h2load=nghttp2-client valgrind=valgrind
build_coral_node
make_work

origin_port=18481 coral_port=18484 admin_port=18490
mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/1k"
cat >"$work/nginx.conf" <<EOF
user root; worker_processes 1; pid $work/nginx.pid; error_log $work/nginx-error.log;
events {}
http {
  access_log off;
  server { listen 127.0.0.1:$origin_port; root $work/www; add_header Cache-Control "max-age=3600"; }
}
EOF
nginx -c "$work/nginx.conf"

proxy_node_files "$admin_port" "$coral_port"
start_proxy_node "$admin_port" "$coral_port" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out"

host="origin.test.$origin_port.nyud.net"
url="http://127.0.0.1:$coral_port/1k"
for _ in $(seq 150); do
  curl -sf -o /dev/null "$url" -H "Host: $host" && break
  sleep 0.2
done
curl -sf -o /dev/null "$url" -H "Host: $host" || {
  echo "the node did not come up; its log:" >&2
  tail -n 20 "$work/coral-$coral_port.log" >&2
  exit 1
}
# load SECONDS: asks for the object for that long; prints how many requests were answered.
load() {
  if [[ $protocol == http2 ]]; then
    h2load -t1 -c16 -m10 -D"$1" -H ":authority: $host" "$url" | awk '/^requests:/ {print $6}'
  else
    wrk -t1 -c16 -d"$1s" -H "Host: $host" "$url" | awk '/requests in/ {print $1}'
  fi
}
load 2 >/dev/null
# callgrind ARGS...: callgrind_control ARGS (a command, then the node's pid), or a clear failure.
callgrind() {
  callgrind_control "$@" >"$work/callgrind-control.log" 2>&1 || {
    echo "callgrind_control $* failed:" >&2
    cat "$work/callgrind-control.log" >&2
    exit 1
  }
}
callgrind -i on "${pids[-1]}"
requests=$(load "$seconds")
callgrind -i off "${pids[-1]}"
callgrind -d "${pids[-1]}"
sleep 1
profile=
for _ in $(seq 50); do
  profile=$(find "$work" -name 'callgrind.out.*' -size +0 | head -n 1)
  [[ -z $profile ]] || break
  sleep 0.2
done
total=$( [[ -z $profile ]] || callgrind_annotate "$profile" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
if [[ -z $profile || -z $total || ${requests:-0} -eq 0 ]]; then
  echo "no count: profile '${profile}', ${requests:-no} requests; the node's log:" >&2
  tail -n 20 "$work/coral-$coral_port.log" >&2
  exit 1
fi
echo "Requests counted ($protocol): $requests; instructions per 1 KiB hit: $((total / requests))."
echo
echo "Functions with the most instructions of their own:"
callgrind_annotate --inclusive=no "$profile" | sed -E 's/ \[[^]]*\]$//; s/\?\?\?://' |
  awk '/file:function/ {on = 1; next} on && NF && !/^-/ && shown < 25 {print; shown++}'
