#!/usr/bin/env bash
# Removes a cluster e2e/node/up.sh DIR made (also a half-made one): every process of it (found
# by its cgroup tree /pcnode-<id>: control plane, relays, namespace holders, containerd, shims,
# kubelets, flanneld and every container; SIGKILL), so its network and mount namespaces go
# with them;
# then the cgroups and DIR's contents. Usage: e2e/node/down.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "down.sh: needs root" >&2; exit 1; }
dir="$(cd "$1" 2>/dev/null && pwd)" || { echo "down.sh: no $1" >&2; exit 0; }
[ -s "$dir/state.env" ] || { echo "down.sh: $dir holds no cluster (no state.env)" >&2; exit 0; }
cg="$(sed -n 's/^CGROUP=//p' "$dir/state.env")"
[[ "$cg" =~ ^pcnode-[0-9a-f]{8}$ ]] || { echo "down.sh: bad CGROUP in $dir/state.env" >&2; exit 1; }
t0="$(date +%s.%N)"
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

trees() { # the cluster's cgroup directories in every hierarchy
  local h
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"; [ -L "$h" ] && continue
    [ -d "$h/$cg" ] && echo "$h/$cg"
  done
}
pids() { # every process in the trees
  local t
  for t in $(trees); do find "$t" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un
}
# SIGKILL at once: nothing of the cluster outlives it (DIR goes too), so no clean shutdown is
# worth waiting for (TERM first took 1.7-7.6 s: containers' PID 1 ignore it).
mapfile -t procs < <(pids)
count=${#procs[@]}
# Frozen while they are listed and signalled: none can fork meanwhile, and none can exit and
# leave its PID to an unrelated process before the kill (the signal lands on thaw).
freezer="/sys/fs/cgroup/freezer/$cg"
for _ in $(seq 1 50); do
  [ ! -e "$freezer/freezer.state" ] || echo FROZEN >"$freezer/freezer.state"
  mapfile -t procs < <(pids)
  ((${#procs[@]})) && kill -KILL "${procs[@]}" 2>/dev/null || true
  [ ! -e "$freezer/freezer.state" ] || echo THAWED >"$freezer/freezer.state"
  ((${#procs[@]})) || break
  sleep 0.1
done
mapfile -t procs < <(pids)
if ((${#procs[@]})); then
  echo "down.sh: processes survive in /$cg: ${procs[*]}" >&2; exit 1
fi
stopped="$(since "$t0")"
t1="$(date +%s.%N)"
# Deepest first.
for t in $(trees); do find "$t" -depth -type d -exec rmdir {} + ; done
# Mounts live in the nodes' mount namespaces, gone with their last process; refuse to delete
# through one that is somehow still visible here.
if grep -q " $dir/" /proc/self/mountinfo; then
  echo "down.sh: mounts under $dir remain:" >&2; grep " $dir/" /proc/self/mountinfo >&2; exit 1
fi
cgroups="$(since "$t1")"
t1="$(date +%s.%N)"
find "$dir" -mindepth 1 -delete
echo "down.sh: removed in $(since "$t0")s ($count processes ended in ${stopped}s, cgroups removed in ${cgroups}s, files in $(since "$t1")s)" >&2
