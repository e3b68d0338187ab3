#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine as root: installs what is
# missing (Debian packages), then checks formatting and lints and runs every test tier:
# unit and table tests, golden outputs, property tests, the upstream NetworkPolicy scenarios,
# CLI tests, the kernel tests (rulesets loaded into throwaway network namespaces), the agent
# and Helm chart against a real kube-apiserver, and the chart on real kubelets (e2e/node).
set -euo pipefail
cd "$(dirname "$0")"

packages=(nftables iproute2 iptables ipset conntrack util-linux iputils-ping iperf3 libnftnl-dev libmnl-dev pkg-config
  # The bridge and host-local CNI plugins (the lab's flannel attachment, the port discovery
  # test, the real-node tier); for the real-node tier (e2e/node): containerd and runc per node,
  # mmdebstrap for the image's rootfs, jq for up.sh and the Canal-like CNI plugin, objcopy
  # (binutils) to leave debug info out of the image.
  containerd runc containernetworking-plugins mmdebstrap jq binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  apt-get update -qq
  # No service may start on the host (containerd's package would start the host's own
  # containerd, in the host's /run and /var/lib; the tests run one per node namespace):
  # Debian's policy-rc.d says no, for the time of the install.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
fi

# A real kube-apiserver (with embedded etcd), kubectl, helm and flanneld (kube subnet manager +
# vxlan backend: every node of the agents' tier runs it), built from their Go modules, for the
# agent and chart tests; and for the real-node tier (e2e/tests/node.rs) kube-controller-manager,
# kube-scheduler, kubelet and a pause binary ("node"). Rebuilt only when their sources change.
# (The node tier's images are built by its test, from the binaries cargo test builds.)
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
echo "== e2e tools: kube-apiserver, kubectl, helm, flanneld, controller-manager, scheduler, kubelet"
bash e2e/apiserver/build.sh kube-lab kubectl helm flanneld node

echo "== the CLI links no netlink C library (the README's first command builds anywhere)"
if cargo tree -q -p policyc -e normal,build --locked | grep -E 'nftnl-sys|mnl-sys'; then
  echo "test.sh: policyc depends on the netlink C libraries (see the lines above)" >&2
  exit 1
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
