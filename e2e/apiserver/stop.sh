#!/usr/bin/env bash
# Stops a kube-lab started by start.sh DIR: SIGTERM (clean shutdown of
# kube-apiserver, then etcd), SIGKILL after KUBE_LAB_STOP_TIMEOUT (default 30) s.
# Keeps DIR (certs, etcd data, logs): start.sh DIR resumes from it; rm -rf it
# for a fresh cluster. Succeeds if nothing is running.
#
#   e2e/apiserver/stop.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
pidfile="$1/kube-lab.pid"
[ -f "$pidfile" ] || { echo "stop.sh: no $pidfile: not running" >&2; exit 0; }
pid="$(cat "$pidfile")"
# Only signal the process if it still is our kube-lab (pids get reused).
if ! kill -0 "$pid" 2>/dev/null || ! grep -qa kube-lab "/proc/$pid/cmdline" 2>/dev/null; then
  rm -f "$pidfile"; echo "stop.sh: not running" >&2; exit 0
fi
kill -TERM "$pid"
limit=$(( ${KUBE_LAB_STOP_TIMEOUT:-30} * 10 ))
gone() { # exited; a zombie counts (its reaper, often init, may be slow)
  ! kill -0 "$pid" 2>/dev/null || [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = Z ]
}
for ((i = 0; i < limit; i++)); do
  gone && { rm -f "$pidfile"; echo "stop.sh: stopped (pid $pid)" >&2; exit 0; }
  sleep 0.1
done
echo "stop.sh: pid $pid still running after SIGTERM; sending SIGKILL" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$pidfile"
exit 1
