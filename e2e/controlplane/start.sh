#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for tests: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, built by
# build.sh from upstream Go modules. Everything listens on 127.0.0.1 only.
#
# Usage: e2e/controlplane/start.sh DIR
#   DIR/kubeconfig   admin kubeconfig (O=system:masters)
#   DIR/env          APISERVER=..., ETCD=..., KUBECONFIG=... (shell syntax)
#   DIR/pids         "name pid" per line, for stop.sh
#   DIR/logs/*.log   one log per process
#   DIR/pki/         CA, serving cert, client certs, service-account keys
# Binaries: $CONTROLPLANE_BIN if set, otherwise build.sh's output (built on
# first use). Stop with e2e/controlplane/stop.sh DIR.
set -euo pipefail

t0=$(date +%s.%N)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)

log() { echo "start.sh: $*" >&2; }
elapsed() { echo "$(date +%s.%N) $1" | awk '{ printf "%.1f", $1 - $2 }'; }

if [[ -s $dir/pids ]]; then
  while read -r _ pid; do
    if kill -0 "$pid" 2>/dev/null; then
      log "$dir/pids lists running process $pid: run stop.sh $dir first"; exit 1
    fi
  done < "$dir/pids"
fi

bin=${CONTROLPLANE_BIN:-$("$here/build.sh" | tail -n1)}
for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x $bin/$b ]] || { log "missing $bin/$b"; exit 1; }
done

pki=$dir/pki
logs=$dir/logs
rm -rf "$dir/etcd" "$pki" "$logs" "$dir/pids"
mkdir -p "$pki" "$logs"
: > "$dir/pids"

# If anything below fails, stop whatever was already started.
started_ok=0
on_exit() {
  if [[ $started_ok != 1 ]]; then
    log "start failed; stopping what was started"
    "$here/stop.sh" "$dir" >&2 || true
  fi
}
trap on_exit EXIT

# ---------------------------------------------------------------- certificates
# A CA, a serving cert for the apiserver, client certs for admin and the two
# controllers, and a key pair for signing service-account tokens.
ossl() { openssl "$@" 2>>"$logs/openssl.log"; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=coral-e2e-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# sign NAME SUBJECT EXTENSIONS: writes $pki/NAME.key and $pki/NAME.crt
sign() {
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
  printf '%b\n' "$3" > "$pki/$1.ext"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}
client_ext='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
# Pods of the e2e kubelet reach the apiserver through a forwarder on their bridge's gateway
# (10.200+k.0.1, k < 32), so those addresses are names of the apiserver too.
pod_gateways=$(for k in $(seq 0 31); do printf ',IP:10.%d.0.1' $((200 + k)); done)
sign apiserver "/CN=kube-apiserver" \
  "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local$pod_gateways"
sign admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
sign controller-manager "/CN=system:kube-controller-manager" "$client_ext"
sign scheduler "/CN=system:kube-scheduler" "$client_ext"
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
chmod 600 "$pki"/*.key

# ----------------------------------------------------------------------- ports
# Free loopback ports below the ephemeral range (32768+), so an outgoing
# connection cannot take one between the check and the bind.
taken=" "
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    [[ $taken == *" $p "* ]] && continue
    if [[ -z $(ss -Htan "( sport = :$p )") ]]; then echo "$p"; return; fi
  done
  log "no free port found"; return 1
}
etcd_port=$(free_port); taken+="$etcd_port "
peer_port=$(free_port); taken+="$peer_port "
api_port=$(free_port)
api=https://127.0.0.1:$api_port
etcd_url=http://127.0.0.1:$etcd_port

# start NAME ARGS...: runs $bin/NAME in the background, logging to logs/NAME.log
start() {
  local name=$1; shift
  "$bin/$name" "$@" </dev/null >"$logs/$name.log" 2>&1 &
  echo "$name $!" >> "$dir/pids"
}
alive() { kill -0 "$(awk -v n="$1" '$1 == n { print $2 }' "$dir/pids")" 2>/dev/null; }
dump_logs() {
  local f
  for f in "$logs"/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler}.log; do
    [[ -f $f ]] && { echo "==== $f (last 60 lines)"; tail -n 60 "$f"; }
  done >&2
}

# ------------------------------------------------------------------------ etcd
start etcd --name=coral-e2e --data-dir="$dir/etcd" \
  --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="coral-e2e=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync=true --log-level=warn

# -------------------------------------------------------------- kube-apiserver
# --endpoint-reconciler-type=none: the apiserver would publish its advertise
# address as the endpoint of Service "kubernetes", but 127.0.0.1 fails
# Endpoints validation (loopback) and it logs an error every 10 s. The Service
# (10.96.0.1) still exists, without endpoints; clients use DIR/kubeconfig.
t_api=$(date +%s.%N)
start kube-apiserver \
  --etcd-servers="$etcd_url" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --authorization-mode=Node,RBAC \
  --service-cluster-ip-range=10.96.0.0/16 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --allow-privileged=true \
  --endpoint-reconciler-type=none

curl_api() {
  curl -sS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"
}
deadline=$((SECONDS + 60))
until [[ $(curl_api -o /dev/null -w '%{http_code}' "$api/readyz" 2>/dev/null) == 200 ]]; do
  if ((SECONDS >= deadline)) || ! alive kube-apiserver || ! alive etcd; then
    log "kube-apiserver not ready after 60 s (or a process died)"
    curl_api "$api/readyz?verbose" >&2 || true
    dump_logs
    exit 1
  fi
  sleep 0.2
done
log "kube-apiserver ready at $api: $(elapsed "$t_api") s after its launch, $(elapsed "$t0") s after start.sh began"

# ------------------------------------------------------------------ kubeconfig
# kubeconfig FILE CERTNAME: a kubeconfig with embedded CA and client cert.
kubeconfig() {
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: coral-e2e
  cluster:
    server: $api
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 < "$pki/$2.crt")
    client-key-data: $(base64 -w0 < "$pki/$2.key")
contexts:
- name: coral-e2e
  context:
    cluster: coral-e2e
    user: $2
current-context: coral-e2e
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$pki/controller-manager.kubeconfig" controller-manager
kubeconfig "$pki/scheduler.kubeconfig" scheduler
cat > "$dir/env" <<EOF
APISERVER=$api
ETCD=$etcd_url
KUBECONFIG=$dir/kubeconfig
EOF

# ---------------------------------------------- controller-manager, scheduler
start kube-controller-manager \
  --kubeconfig="$pki/controller-manager.kubeconfig" \
  --leader-elect=false --secure-port=0 \
  --controllers=daemonset,garbagecollector,serviceaccount,serviceaccount-token,endpointslice,namespace,deployment,replicaset,clusterrole-aggregation,root-ca-cert-publisher,nodelifecycle \
  --node-monitor-period=2s --node-monitor-grace-period=20s \
  --use-service-account-credentials=true \
  --root-ca-file="$pki/ca.crt" \
  --service-account-private-key-file="$pki/sa.key"
start kube-scheduler \
  --kubeconfig="$pki/scheduler.kubeconfig" \
  --leader-elect=false --secure-port=0

# Pods are rejected until their namespace has a "default" ServiceAccount:
# wait for the controller-manager to create it in "default".
deadline=$((SECONDS + 60))
until [[ $(curl_api -o /dev/null -w '%{http_code}' "$api/api/v1/namespaces/default/serviceaccounts/default" 2>/dev/null) == 200 ]]; do
  if ((SECONDS >= deadline)) || ! alive kube-controller-manager; then
    log "no default ServiceAccount after 60 s (or kube-controller-manager died)"
    dump_logs
    exit 1
  fi
  sleep 0.2
done
for p in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  alive "$p" || { log "$p exited"; dump_logs; exit 1; }
done

started_ok=1
log "control plane up in $(elapsed "$t0") s; kubeconfig: $dir/kubeconfig; stop with: $here/stop.sh $dir"
echo "$dir/kubeconfig"
