#!/usr/bin/env bash
# Brings up a real-node cluster for tests: kube-lab (kube-apiserver + etcd) with
# kube-controller-manager and kube-scheduler on the host's loopback, and N nodes, each a kubelet
# with its own containerd (runc) and the real flanneld, in a network namespace and a mount
# namespace of its own (its /var/lib and /var/log are directories under DIR, its /run and
# containerd's store tmpfs, so nothing touches the host's; its nftables are its network
# namespace's).
#
#   e2e/node/up.sh DIR [--nodes N] [--attachment canal|flannel]     (default: 2 nodes, canal)
#
# Prints the admin kubeconfig's path as its last line and writes DIR/values.yaml: the chart
# values that run the locally built image. e2e/node/down.sh DIR removes everything it made.
#
#  host:       kube-lab 127.0.0.1:P  kube-controller-manager  kube-scheduler
#              relay unix:DIR/api.sock -> 127.0.0.1:P
#  underlay:   br0 10.99.0.254/24 ── ulN ─┐   connect-proxy unix:DIR/egress.sock (the API
#              (network namespace)        │   server's egress selector "cluster": exec, logs)
#  node-N:     eth0 10.99.0.N/24 ─────────┘   lo: 10.96.0.1 (the kubernetes Service), relay
#              10.96.0.1:443 -> unix:DIR/api.sock; containerd, kubelet, flanneld (vxlan over eth0),
#              pods attached by policyc-canal (Calico's veths) or bridge (cni0)
#
# Processes run in cgroup v1 trees /pcnode-<id>/... (every hierarchy), so that down.sh finds and
# ends every process of the cluster (shims and containers too) by its cgroup, and kubelet has a
# cgroupRoot of its own. Needs root, Go-built e2e/bin/{kube-lab,kube-controller-manager,
# kube-scheduler,kubelet,flanneld,kubectl} (e2e/apiserver/build.sh ... node) and the images
# (e2e/node/images.sh); Debian's containerd, runc, containernetworking-plugins, jq.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/e2e/bin"
usage() { echo "usage: $0 DIR [--nodes N] [--attachment canal|flannel]" >&2; exit 2; }
[ $# -ge 1 ] || usage
dir="$1"; shift
nodes=2; attachment=canal
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --attachment) attachment="$2"; shift 2 ;;
    *) usage ;;
  esac
done
case "$attachment" in canal|flannel) ;; *) usage ;; esac
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] && [ "$nodes" -le 50 ] || { echo "up.sh: --nodes 1..50" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "up.sh: needs root" >&2; exit 1; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
case "$dir/" in /run/*|/var/run/*|/var/lib/*|/var/log/*)
  echo "up.sh: DIR must not be under /run, /var/lib or /var/log (the nodes mount their own there)" >&2; exit 2 ;;
esac
[ ! -e "$dir/state.env" ] || { echo "up.sh: $dir holds a cluster (e2e/node/down.sh $dir first)" >&2; exit 1; }
for b in kube-lab kube-controller-manager kube-scheduler kubelet flanneld kubectl; do
  [ -x "$bin/$b" ] || { echo "up.sh: $bin/$b missing (e2e/apiserver/build.sh kube-lab kubectl flanneld node)" >&2; exit 1; }
done
[ -s "$bin/images/images.env" ] || { echo "up.sh: images missing (e2e/node/images.sh)" >&2; exit 1; }
for t in containerd runc jq nsenter unshare ip; do
  command -v "$t" >/dev/null || { echo "up.sh: $t missing (apt-get install containerd runc jq util-linux iproute2)" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ||
  { echo "up.sh: CNI plugins missing (apt-get install containernetworking-plugins)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$bin/images/images.env"

t0="$(date +%s.%N)"
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "up.sh: [$(since "$t0")s] $*" >&2; }
id="$(printf '%s' "$dir" | sha1sum | cut -c1-8)"
cg="pcnode-$id"
# Recorded first: down.sh can clean up whatever a failed up.sh left.
cat >"$dir/state.env" <<ENV
CGROUP=$cg
NODES=$nodes
ATTACHMENT=$attachment
ENV
# On failure, leave the pieces for down.sh (and say so).
trap 'echo "up.sh: failed; logs in $dir, clean up with e2e/node/down.sh $dir" >&2' ERR

hierarchies() { # the cgroup v1 hierarchies (mount points; cpu -> cpu,cpuacct symlinks skipped)
  local h
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"; [ -L "$h" ] && continue
    [ -e "$h/cgroup.procs" ] && echo "$h"
  done
}
mkcg() { # mkcg PATH: in every hierarchy (cpuset: the parent's cpus and mems)
  local h p part
  for h in $(hierarchies); do
    p="$h"
    for part in ${1//\// }; do
      if [ ! -d "$p/$part" ]; then
        mkdir "$p/$part"
        if [ -e "$p/cpuset.cpus" ]; then
          cat "$p/cpuset.cpus" >"$p/$part/cpuset.cpus"
          cat "$p/cpuset.mems" >"$p/$part/cpuset.mems"
        fi
      fi
      p="$p/$part"
    done
  done
}
# start CGROUP LOG CMD...: runs CMD in the background in that cgroup (every hierarchy), stdin
# /dev/null, prints its PID.
start() {
  local c="$1" logf="$2"; shift 2
  mkcg "$c"
  # shellcheck disable=SC2016
  setsid bash -c 'for h in '"$(hierarchies | tr '\n' ' ')"'; do echo $$ >"$h/'"$c"'/cgroup.procs"; done; exec "$@"' \
    start "$@" </dev/null >>"$logf" 2>&1 &
  echo $!
}
wait_for() { # wait_for SECONDS WHAT CMD...
  local limit="$1" what="$2" i; shift 2
  for ((i = 0; i < limit * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "up.sh: timed out after ${limit}s waiting for $what" >&2
  return 1
}

# === control plane, on the host's loopback ===
mkdir -p "$dir/api"
cat >"$dir/egress.yaml" <<YAML
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $dir/egress.sock
YAML
start "$cg/control" "$dir/kube-lab.log" "$bin/kube-lab" serve --dir "$dir/api" --service-account-admission -- \
  --kubelet-preferred-address-types=InternalIP --egress-selector-config-file="$dir/egress.yaml" >/dev/null
wait_for 120 "kube-lab (see $dir/kube-lab.log)" grep -q '^READY ' "$dir/kube-lab.log"
kubeconfig="$dir/api/kubeconfig"
server="$(jq -r .server "$dir/api/lab.json")"
log "kube-lab ready at $server"
kubectl() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
start "$cg/control" "$dir/relay-host.log" "$bin/kube-lab" relay "unix:$dir/api.sock" "tcp:${server#https://}" >/dev/null
start "$cg/control" "$dir/kube-controller-manager.log" "$bin/kube-controller-manager" \
  --kubeconfig="$kubeconfig" --leader-elect=false --secure-port=0 \
  --controllers=daemonset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,garbage-collector-controller,namespace-controller,node-lifecycle-controller,node-ipam-controller,pod-garbage-collector-controller \
  --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --node-cidr-mask-size=24 \
  --service-cluster-ip-range=10.96.0.0/16 \
  --service-account-private-key-file="$dir/api/sa.key" --root-ca-file="$dir/api/ca.crt" \
  --node-monitor-grace-period=20s --node-monitor-period=2s >/dev/null
start "$cg/control" "$dir/kube-scheduler.log" "$bin/kube-scheduler" \
  --kubeconfig="$kubeconfig" --leader-elect=false --secure-port=0 >/dev/null

# === the underlay: a bridge in a network namespace of its own ===
holder() { # holder NAME UNSHARE-FLAGS...: a process holding new namespaces, prints its PID
  local name="$1"; shift
  mkcg "$cg/$name"
  start "$cg/$name" "$dir/$name.log" unshare "$@" -- sleep infinity
}
ul_pid="$(holder underlay --net)"
echo "UNDERLAY_PID=$ul_pid" >>"$dir/state.env"
wait_for 10 "the underlay namespace" bash -c "[ \"\$(readlink /proc/$ul_pid/ns/net)\" != \"\$(readlink /proc/self/ns/net)\" ]"
ul() { nsenter --net="/proc/$ul_pid/ns/net" "$@"; }
ul ip link set lo up
ul ip link add br0 type bridge
ul ip addr add 10.99.0.254/24 dev br0
ul ip link set br0 up
start "$cg/underlay" "$dir/egress-proxy.log" nsenter --net="/proc/$ul_pid/ns/net" \
  "$bin/kube-lab" connect-proxy "unix:$dir/egress.sock" >/dev/null

# flannel's network config (as kube-flannel.yml's net-conf.json: vxlan, VNI 1, port 8472).
cat >"$dir/net-conf.json" <<'JSON'
{"Network": "10.244.0.0/16", "EnableIPv4": true, "Backend": {"Type": "vxlan"}}
JSON
"$bin/kube-lab" kubeconfig --dir "$dir/api" --user system:node-admin --group system:masters \
  --out "$dir/node.kubeconfig" >/dev/null
# The nodes reach the API server at the kubernetes Service's address (in the server's
# certificate), which their relay serves.
sed -i "s#server: .*#server: https://10.96.0.1:443#" "$dir/node.kubeconfig"

# === nodes ===
for i in $(seq 1 "$nodes"); do
  n="node-$i"; nd="$dir/$n"; ip="10.99.0.$i"
  mkdir -p "$nd"/{varlib/containerd,varlog,opt,cni/bin,cni/net.d,flannel}
  # Its network and mount namespaces: /var/lib and /var/log are its own directories; /run and
  # containerd's store (images, snapshots) are tmpfs, gone with the namespace's last process
  # (deleting the unpacked images from disk took down.sh 20 s).
  pid="$(start "$cg/$n/system" "$nd/holder.log" unshare --net --mount --propagation private -- bash -c "
    mount -t tmpfs -o size=256m,mode=0755 tmpfs /run &&
    mount --bind '$nd/varlib' /var/lib && mount --bind '$nd/varlog' /var/log &&
    mount -t tmpfs -o size=2g,mode=0711 tmpfs /var/lib/containerd &&
    exec sleep infinity")"
  echo "NODE_${i}_PID=$pid" >>"$dir/state.env"
  wait_for 10 "$n's namespaces" bash -c "grep -q ' /var/log ' /proc/$pid/mountinfo"
  nodex() { nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" "$@"; }
  ip link add eth0 netns "$pid" type veth peer name "ul$i" netns "$ul_pid"
  ul ip link set "ul$i" master br0 up
  nodex sh -ec "
    ip link set lo up
    ip addr add 10.96.0.1/32 dev lo
    ip addr add $ip/24 dev eth0
    ip link set eth0 up
    ip route add default dev eth0
    sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"
  # A plain Flannel node passes bridged traffic through iptables/nftables (br_netfilter), as
  # kube-proxy and Flannel's manifest require; per network namespace on this kernel.
  if [ "$attachment" = flannel ]; then
    nodex sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  fi
  start "$cg/$n/system" "$nd/relay.log" nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" \
    "$bin/kube-lab" relay tcp:10.96.0.1:443 "unix:$dir/api.sock" >/dev/null

  # containerd: the CRI plugin with runc; CNI config and plugins from DIR.
  for p in /usr/lib/cni/*; do ln -sf "$p" "$nd/cni/bin/"; done
  ln -sf "$here/policyc-canal" "$nd/cni/bin/policyc-canal"
  cat >"$nd/containerd.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this runc fails every sandbox
  # ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$nd/cni/bin"
    conf_dir = "$nd/cni/net.d"
TOML
  start "$cg/$n/system" "$nd/containerd.log" nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" \
    containerd --config "$nd/containerd.toml" >/dev/null
  wait_for 30 "$n's containerd" nodex ctr --address /run/containerd/containerd.sock version
  for img in policyc pause; do
    nodex ctr --address /run/containerd/containerd.sock -n k8s.io images import "$bin/images/$img.oci.tar" >/dev/null
  done

  mkcg "$cg/$n/pods"
  cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# This kernel has cgroup v1 only.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cg/$n/pods
failSwapOn: false
# Imported images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 5s
localStorageCapacityIsolation: false
serializeImagePulls: false
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
syncFrequency: 5s
fileCheckFrequency: 60s
resolvConf: ""
podLogsDir: /var/log/pods
YAML
  start "$cg/$n/system" "$nd/kubelet.log" nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" \
    "$bin/kubelet" --config="$nd/kubelet.yaml" --kubeconfig="$dir/node.kubeconfig" \
    --hostname-override="$n" --node-ip="$ip" >/dev/null
done
log "$nodes nodes started (containerd, images imported, kubelet)"

for i in $(seq 1 "$nodes"); do
  n="node-$i"
  wait_for 60 "node $n to register with a pod CIDR (see $dir/$n/kubelet.log)" \
    bash -c "[ -n \"\$('$bin/kubectl' --kubeconfig '$kubeconfig' get node $n -o jsonpath='{.spec.podCIDR}')\" ]"
done
log "nodes registered, pod CIDRs allocated"

# flanneld per node, then the CNI config from its subnet.env.
for i in $(seq 1 "$nodes"); do
  n="node-$i"; nd="$dir/$n"; ip="10.99.0.$i"
  pid="$(sed -n "s/^NODE_${i}_PID=//p" "$dir/state.env")"
  NODE_NAME="$n" start "$cg/$n/system" "$nd/flanneld.log" \
    nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" \
    env NODE_NAME="$n" "$bin/flanneld" --kube-subnet-mgr --kubeconfig-file="$dir/node.kubeconfig" \
    --net-config-path="$dir/net-conf.json" --subnet-file="$nd/flannel/subnet.env" --iface="$ip" >/dev/null
done
for i in $(seq 1 "$nodes"); do
  n="node-$i"; nd="$dir/$n"
  wait_for 60 "$n's flanneld (see $nd/flanneld.log)" test -s "$nd/flannel/subnet.env"
  # shellcheck source=/dev/null
  (
    . "$nd/flannel/subnet.env"
    # FLANNEL_SUBNET is the gateway's address (10.244.1.1/24); host-local wants the network,
    # as flannel's CNI plugin hands it on (net.ParseCIDR).
    FLANNEL_SUBNET="$(awk -F'[./]' '{ a = $1 * 16777216 + $2 * 65536 + $3 * 256 + $4
      m = 2 ^ (32 - $5); a = a - a % m
      printf "%d.%d.%d.%d/%d", a / 16777216 % 256, a / 65536 % 256, a / 256 % 256, a % 256, $5 }' <<<"$FLANNEL_SUBNET")"
    if [ "$attachment" = canal ]; then
      jq -n --arg subnet "$FLANNEL_SUBNET" --argjson mtu "$FLANNEL_MTU" '{
        cniVersion: "0.4.0", name: "k8s-pod-network",
        plugins: [{type: "policyc-canal", mtu: $mtu,
                   ipam: {type: "host-local", ranges: [[{subnet: $subnet}]]}}]}'
    else
      # What flannel's CNI plugin hands to bridge (ipMasq off: kube-flannel.yml runs flanneld
      # with --ip-masq, and flannel then tells bridge not to masquerade).
      jq -n --arg subnet "$FLANNEL_SUBNET" --arg network "$FLANNEL_NETWORK" --argjson mtu "$FLANNEL_MTU" '{
        cniVersion: "0.3.1", name: "cbr0",
        plugins: [{type: "bridge", name: "cbr0", bridge: "cni0", isGateway: true,
                   isDefaultGateway: true, hairpinMode: true, ipMasq: false, mtu: $mtu,
                   ipam: {type: "host-local", ranges: [[{subnet: $subnet}]],
                          routes: [{dst: $network}]}}]}'
    fi
  ) >"$nd/cni/net.d/.10-pod.conflist.tmp"
  mv "$nd/cni/net.d/.10-pod.conflist.tmp" "$nd/cni/net.d/10-pod.conflist"
done
log "flanneld up, CNI ($attachment) configured"

for i in $(seq 1 "$nodes"); do
  wait_for 90 "node-$i Ready and untainted" bash -c "
    [ \"\$('$bin/kubectl' --kubeconfig '$kubeconfig' get node node-$i -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}/{.spec.taints}')\" = True/ ]"
done
wait_for 60 "the default ServiceAccount" kubectl get serviceaccount default -n default
log "cluster ready"

cat >"$dir/values.yaml" <<YAML
# The chart's values for this cluster: the locally built image, imported into every node.
image:
  repository: $POLICYC_IMAGE_REPOSITORY
  tag: $POLICYC_IMAGE_TAG
  pullPolicy: Never
# The nodes' attachment, as up.sh made it: with the chart's default (auto) a node that has no pod
# yet cannot tell, and says NoPodAttachment until its first pod.
agent:
  attachment: $attachment
YAML
echo "KUBECONFIG=$kubeconfig" >>"$dir/state.env"
echo "up.sh: up in $(since "$t0")s: $nodes nodes, $attachment; chart values $dir/values.yaml" >&2
echo "$kubeconfig"
