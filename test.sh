#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine as root: installs what is
# missing (Debian packages), then checks formatting and lints and runs every test tier:
# unit and table tests, golden outputs, property tests, the upstream NetworkPolicy scenarios,
# CLI tests, and the kernel tests (rulesets loaded into throwaway network namespaces).
set -euo pipefail
cd "$(dirname "$0")"

packages=(nftables iproute2 iptables ipset conntrack iperf3 libnftnl-dev libmnl-dev pkg-config)
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

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
