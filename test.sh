#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine as root: installs what is
# missing (Debian packages), then checks formatting and lints and runs every test tier:
# unit and table tests, golden outputs, property tests, the upstream NetworkPolicy scenarios,
# CLI tests, the kernel tests (rulesets loaded into throwaway network namespaces), and the agent
# and Helm chart against a real kube-apiserver.
set -euo pipefail
cd "$(dirname "$0")"

packages=(nftables iproute2 iptables ipset conntrack util-linux iputils-ping iperf3 libnftnl-dev libmnl-dev pkg-config
  containernetworking-plugins)  # the bridge + host-local CNI plugins of the lab's flannel attachment and the port discovery test
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
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A real kube-apiserver (with embedded etcd), kubectl, helm and flanneld (kube subnet manager +
# vxlan backend: every node of the agents' tier runs it), built from their Go modules, for the
# agent and chart tests. Rebuilt only when their sources change.
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
echo "== e2e tools: kube-apiserver, kubectl, helm, flanneld"
bash e2e/apiserver/build.sh

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
