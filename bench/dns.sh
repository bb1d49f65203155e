#!/usr/bin/env bash
# Coral's DNS role against PowerDNS Authoritative with LUA records (the peer doing the same job: `ifurlup` health
# checks, `netmask()` choice of the client's zone) and NSD serving a static zone (the ceiling), on loopback, in the
# same run, with dnsperf as the load generator; then the failover time after a proxy is killed with SIGKILL (five
# kills in a row), Coral against PowerDNS's ifurlup.
#
#   bench/dns.sh [seconds per run, default 10] [dnsperf clients, default 8]
#
# Three real coral-node proxies (127.0.0.61-63: zones z1, z1, z2) are the published addresses; each server answers
# `*.nyud.net` with the healthy ones in the client's zone (127.0.0.0/8 is placed in z1), falling back to the rest.
# Every server gets 2 threads (Coral: 2 runtime workers and 2 SO_REUSEPORT sockets; NSD: server-count 2; PowerDNS:
# 2 receiver threads) and its defaults otherwise, except: NSD's response rate limiting is off (it would throttle the
# single benchmark client), Coral's is raised for the same reason, and PowerDNS checks health every second like Coral
# (its default is 5 s). The queries are 20,000 distinct names, asked in random order.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
clients=${2:-8}

source bench/lib.sh
need pdns_server="pdns-server pdns-backend-bind" nsd=nsd dnsperf=dnsperf dig=bind9-dnsutils
build_coral_node
make_work
cleanup_more() { pkill -f "pdns_server.*$work" 2>/dev/null || true; }

server=127.0.0.60
coral_port=5300 pdns_port=5301 nsd_port=5302 admin_port=19590 http_port=19580
proxies=(127.0.0.61 127.0.0.62 127.0.0.63)

{
  proxy_config "$admin_port" "$http_port"
  cat <<EOF
dns:
  port: $coral_port
  answerTtl: 20s
  answersPerQuery: 2
  nameservers: [{ name: ns1.nyud.net, addresses: [$server] }]
  membersFile: $work/members.yaml
  responseRate: { requestsPerSecond: 10000000, burst: 10000000 }
locality:
  labelKeys: [topology.kubernetes.io/zone, topology.kubernetes.io/region]
  clientNetworks: [{ cidr: 127.0.0.0/8, locality: [z1, r1] }]
dht: { port: 19510, keyFile: /nonexistent, protocolVersion: 1, bootstrapName: localhost }
health: { interval: 1s, timeout: 500ms, failureThreshold: 2, successThreshold: 2 }
EOF
} >"$work/node.yaml"
cat >"$work/topology.yaml" <<EOF
nodes:
  node-1: [z1, r1]
  node-2: [z1, r1]
  node-3: [z2, r1]
  node-dns: [z1, r1]
EOF
cat >"$work/members.yaml" <<EOF
proxies:
  - { node: node-1, address: ${proxies[0]} }
  - { node: node-2, address: ${proxies[1]} }
  - { node: node-3, address: ${proxies[2]} }
EOF

# start_proxy INDEX: a coral-node proxy on proxies[INDEX]; prints its pid.
start_proxy() {
  local ip=${proxies[$1]}
  RUST_LOG=warn target/release/coral-node run --roles proxy --config "$work/node.yaml" \
    --topology "$work/topology.yaml" --node-name "node-$(($1 + 1))" --pod-ip "$ip" \
    --admin-address "$ip:$admin_port" --proxy-address "$ip:$http_port" >"$work/proxy-$1.log" 2>&1 &
  echo $!
}
proxy_pids=()
for index in 0 1 2; do
  proxy_pids+=("$(start_proxy "$index")")
done
pids+=("${proxy_pids[@]}")
for ip in "${proxies[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://$ip:$admin_port/healthz" && break; sleep 0.1; done
done

RUST_LOG=warn target/release/coral-node run --roles dns --config "$work/node.yaml" --topology "$work/topology.yaml" \
  --node-name node-dns --pod-ip "$server" --admin-address "$server:$admin_port" \
  --dns-address "$server:$coral_port" >"$work/coral-dns.log" 2>&1 &
pids+=($!)

# PowerDNS: the same answer as a LUA record. ifurlup returns the up addresses of the first set that has any
# (all of them, as Coral does with answersPerQuery 2, rather than its default of one picked at random).
health_url="http://health.test:$admin_port/healthz"
z1="{'${proxies[0]}','${proxies[1]}'}" z2="{'${proxies[2]}'}" all="{selector='all'}"
cat >"$work/nyud.net.zone" <<EOF
\$ORIGIN nyud.net.
@ 3600 IN SOA ns1.nyud.net. hostmaster.nyud.net. 1 3600 600 86400 20
@ 3600 IN NS ns1.nyud.net.
ns1 3600 IN A $server
* 20 IN LUA A ";if netmask({'127.0.0.0/8'}) then return ifurlup('$health_url', {$z1, $z2}, $all) else return ifurlup('$health_url', {$z2, $z1}, $all) end"
EOF
echo "zone \"nyud.net\" { type master; file \"$work/nyud.net.zone\"; };" >"$work/named.conf"
cat >"$work/pdns.conf" <<EOF
launch=bind
bind-config=$work/named.conf
local-address=$server
local-port=$pdns_port
enable-lua-records=yes
lua-health-checks-interval=1
edns-subnet-processing=yes
receiver-threads=2
socket-dir=$work
webserver=no
EOF
pdns_server --config-dir="$work" --daemon=no --guardian=no --disable-syslog --loglevel=3 >"$work/pdns.log" 2>&1 &
pids+=($!)

# NSD: the static answer, the ceiling.
mkdir -p "$work/nsd"
cat >"$work/nsd.zone" <<EOF
\$ORIGIN nyud.net.
@ 3600 IN SOA ns1.nyud.net. hostmaster.nyud.net. 1 3600 600 86400 20
@ 3600 IN NS ns1.nyud.net.
ns1 3600 IN A $server
* 20 IN A ${proxies[0]}
* 20 IN A ${proxies[1]}
EOF
cat >"$work/nsd.conf" <<EOF
server:
  ip-address: $server@$nsd_port
  server-count: 2
  username: ""
  database: ""
  zonelistfile: "$work/nsd/zone.list"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  pidfile: "$work/nsd.pid"
  rrl-ratelimit: 0
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: nyud.net
  zonefile: "$work/nsd.zone"
EOF
nsd -c "$work/nsd.conf" -d >"$work/nsd.log" 2>&1 &
pids+=($!)

# wait_for PORT: until the server there answers a query.
wait_for() {
  for _ in $(seq 100); do
    dig +short +time=1 +tries=1 @"$server" -p "$1" warmup.example.com.nyud.net A | grep -q . && return 0
    sleep 0.1
  done
  echo "the server on port $1 never answered; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}
for port in $coral_port $pdns_port $nsd_port; do wait_for "$port"; done
sleep 2 # PowerDNS starts its health checks on the first query: let them report

for n in $(seq 20000); do echo "host$n.example.com.nyud.net A"; done | shuf --random-source=<(yes) >"$work/queries"

# perf PORT: prints "queries/s average-latency-ms lost".
perf() {
  local out
  out=$(dnsperf -s "$server" -p "$1" -d "$work/queries" -l "$seconds" -c "$clients" -T 2 -q 200 2>&1)
  local qps latency lost
  qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
  latency=$(awk '/Average Latency/ {printf "%.3f", $4 * 1000}' <<<"$out")
  lost=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  echo "$qps $latency $lost"
}
names_z1() { # PORT: whether the answer names z1's proxies, both
  local answer
  answer=$(dig +short +time=1 +tries=1 @"$server" -p "$1" "check-$RANDOM.example.com.nyud.net" A | sort | tr '\n' ' ')
  [[ $answer == "${proxies[0]} ${proxies[1]} " ]]
}
check() { # PORT: waits up to 10 s until the answer names z1's proxies
  for _ in $(seq 100); do names_z1 "$1" && return 0; sleep 0.1; done
  echo "port $1 never named both z1 proxies; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}
for port in $coral_port $pdns_port $nsd_port; do check "$port"; done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# median of three: the machine is shared, so each server runs three times, interleaved with the others.
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
declare -A qps latency lost
for round in 1 2 3; do
  for name in nsd pdns coral; do
    port_var="${name}_port"
    read -r q l x < <(perf "${!port_var}")
    qps[$name]+="$q " latency[$name]+="$l " lost[$name]+="$x "
  done
done
for name in nsd pdns coral; do
  # shellcheck disable=SC2086
  read -r "${name}_qps" "${name}_lat" "${name}_lost" <<<"$(median ${qps[$name]}) $(median ${latency[$name]}) $(median ${lost[$name]})"
done
echo "Queries/s per run: NSD ${qps[nsd]}; PowerDNS ${qps[pdns]}; Coral ${qps[coral]}."
echo
echo "| server | queries/s (median of 3) | average latency (ms) | lost | vs PowerDNS LUA | vs NSD |"
echo "|---|---|---|---|---|---|"
echo "| NSD 4.6, static zone | $nsd_qps | $nsd_lat | $nsd_lost | $(ratio "$nsd_qps" "$pdns_qps") | 1.00x |"
echo "| PowerDNS 4.7, LUA ifurlup + netmask | $pdns_qps | $pdns_lat | $pdns_lost | 1.00x | $(ratio "$pdns_qps" "$nsd_qps") |"
echo "| Coral | $coral_qps | $coral_lat | $coral_lost | $(ratio "$coral_qps" "$pdns_qps") | $(ratio "$coral_qps" "$nsd_qps") |"

# failover PORT: kills nothing; polls until the answer lacks proxies[1], prints the seconds since $killed_at.
failover() {
  local n=0
  while ((n < 1000)); do
    n=$((n + 1))
    # A new name every time: the health checks are measured, not the servers' answer caches.
    # Only an answer naming some proxy counts (a timeout or an empty answer says nothing).
    local answer
    answer=$(dig +short +time=1 +tries=1 @"$server" -p "$1" "poll$n-$RANDOM.example.com.nyud.net" A || true)
    echo "$(date +%s.%N) $answer" | tr '\n' ' ' >>"$work/failover-$1.log"
    echo >>"$work/failover-$1.log"
    if grep -q . <<<"$answer" && ! grep -qx "${proxies[1]}" <<<"$answer"; then
      awk -v start="$killed_at" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - start }'
      return
    fi
    sleep 0.02
  done
  echo "never"
}
# stays_gone PORT: 50 more answers over 2 s never name the killed proxy.
stays_gone() {
  for n in $(seq 50); do
    if dig +short @"$server" -p "$1" "after$n-$RANDOM.example.com.nyud.net" A | grep -qx "${proxies[1]}"; then
      echo "no: named again"
      return
    fi
    sleep 0.04
  done
  echo "yes"
}
# One kill after another: the moment of a kill falls anywhere in the servers' check intervals, so one trial
# says little. Each trial kills proxies[1], polls both servers at once until they drop it, checks it stays
# gone, restarts it and waits until both name it again.
trials=5
times_coral=() times_pdns=() gone_coral=yes gone_pdns=yes
for trial in $(seq "$trials"); do
  sleep 3 # let the load and the last readmission settle
  for port in $coral_port $pdns_port; do check "$port"; done
  kill -9 "${proxy_pids[1]}"
  killed_at=$(date +%s.%N)
  failover $coral_port >"$work/coral-failover" &
  coral_poll=$!
  failover $pdns_port >"$work/pdns-failover" &
  pdns_poll=$!
  wait "$coral_poll" "$pdns_poll"
  times_coral+=("$(cat "$work/coral-failover")") times_pdns+=("$(cat "$work/pdns-failover")")
  [[ $(stays_gone $coral_port) == yes ]] || gone_coral=no
  [[ $(stays_gone $pdns_port) == yes ]] || gone_pdns=no
  echo "==> trial $trial: Coral ${times_coral[-1]} s, PowerDNS ${times_pdns[-1]} s" >&2
  proxy_pids[1]=$(start_proxy 1)
  pids+=("${proxy_pids[1]}")
done
# stats SECONDS...: "median / worst" of the trials ("never" counts as worst).
stats() {
  printf '%s\n' "$@" | sed 's/never/999/' | sort -g | awk '{ t[NR] = $1 } END { printf "%.2f / %s", t[int((NR + 1) / 2)], (t[NR] == 999 ? "never" : sprintf("%.2f", t[NR])) }'
}
echo
echo "Seconds until a killed proxy left the answers, per trial: Coral ${times_coral[*]}; PowerDNS ${times_pdns[*]}."
echo
echo "| server | killed proxy gone from answers after (s), median / worst of $trials | never named again (50 answers over 2 s, every trial) |"
echo "|---|---|---|"
echo "| Coral (interval 1 s, 2 failures) | $(stats "${times_coral[@]}") | $gone_coral |"
echo "| PowerDNS ifurlup (interval 1 s) | $(stats "${times_pdns[@]}") | $gone_pdns |"
