#!/usr/bin/env bash
# Stops a control plane started by start.sh DIR: SIGTERM to the scheduler,
# controller-manager and apiserver, wait for them, then SIGTERM to etcd (so the
# apiserver never loses its storage while shutting down), then SIGKILL whatever
# is still alive. Only PIDs listed in DIR/pids whose executable still has the
# recorded name are signalled (a reused PID is left alone). Keeps DIR itself.
#
# Usage: e2e/controlplane/stop.sh DIR
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
pids_file=$1/pids
[[ -f $pids_file ]] || { echo "stop.sh: no $pids_file, nothing to stop" >&2; exit 0; }

log() { echo "stop.sh: $*" >&2; }

# ours NAME PID: true if PID is alive and runs the binary NAME.
ours() {
  local exe
  exe=$(readlink "/proc/$2/exe" 2>/dev/null) || return 1
  [[ ${exe##*/} == "$1" || ${exe##*/} == "$1 (deleted)" ]]
}
pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$pids_file"; }

# term_and_wait SECONDS NAME...: SIGTERM each, then wait up to SECONDS.
term_and_wait() {
  local timeout=$1 name pid left i
  shift
  for name in "$@"; do
    pid=$(pid_of "$name")
    if [[ -n $pid ]] && ours "$name" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < timeout * 10; i++)); do
    left=0
    for name in "$@"; do
      pid=$(pid_of "$name")
      [[ -n $pid ]] && ours "$name" "$pid" && left=1
    done
    ((left)) || return 0
    sleep 0.1
  done
}

term_and_wait 20 kube-scheduler kube-controller-manager kube-apiserver
term_and_wait 10 etcd

status=0
while read -r name pid; do
  if ours "$name" "$pid"; then
    log "$name ($pid) still running after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
    if ours "$name" "$pid"; then log "$name ($pid) survived SIGKILL"; status=1; fi
  fi
done < "$pids_file"
((status)) || { : > "$pids_file"; log "stopped"; }
exit "$status"
