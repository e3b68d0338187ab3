#!/usr/bin/env bash
# Starts `kube-lab serve` (kube-apiserver + embedded etcd) in the background
# and prints the admin kubeconfig path on stdout once the apiserver is ready.
#
#   e2e/apiserver/start.sh DIR [-- EXTRA-KUBE-APISERVER-FLAGS...]
#
# DIR is created if missing; it gets certs, kubeconfig, lab.json, etcd data,
# kube-lab.pid and logs (kube-lab.log: apiserver, etcd.log: etcd).
# Builds e2e/bin/kube-lab first if it is missing or stale (see build.sh).
# KUBE_LAB_TIMEOUT (seconds, default 120) bounds the wait for readiness.
# Stop it with e2e/apiserver/stop.sh DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 DIR [-- EXTRA-KUBE-APISERVER-FLAGS...]" >&2; exit 2; }
dir="$1"; shift
[ "${1:-}" != "--" ] || shift
timeout="${KUBE_LAB_TIMEOUT:-120}"

"$here/build.sh" kube-lab >&2
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if [ -f "$dir/kube-lab.pid" ] && kill -0 "$(cat "$dir/kube-lab.pid")" 2>/dev/null \
   && grep -qa kube-lab "/proc/$(cat "$dir/kube-lab.pid")/cmdline" 2>/dev/null; then
  echo "start.sh: kube-lab already running in $dir (pid $(cat "$dir/kube-lab.pid"))" >&2
  exit 1
fi

: > "$dir/kube-lab.out"
nohup "$here/../bin/kube-lab" serve --dir "$dir" -- "$@" \
  < /dev/null > "$dir/kube-lab.out" 2>> "$dir/kube-lab.log" &
pid=$!
echo "$pid" > "$dir/kube-lab.pid"

start=$(date +%s)
while :; do
  if read -r word path < "$dir/kube-lab.out" && [ "$word" = READY ]; then
    echo "start.sh: ready in $(( $(date +%s) - start ))s (pid $pid, log $dir/kube-lab.log)" >&2
    echo "$path"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start.sh: kube-lab exited before ready; last log lines:" >&2
    tail -n 20 "$dir/kube-lab.log" >&2
    exit 1
  fi
  if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then
    echo "start.sh: not ready after ${timeout}s; stopping it. Last log lines:" >&2
    tail -n 20 "$dir/kube-lab.log" >&2
    kill -TERM "$pid" 2>/dev/null || true
    exit 1
  fi
  sleep 0.1
done
