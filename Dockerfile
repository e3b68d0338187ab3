# policyc-agent image: build with Rust on Debian, run on a minimal Debian with the libraries nftnl
# links against and the tools of the iptables backend (the only programs the agent runs: the nft
# ruleset, its counters and the conntrack cut go over netlink). nft and conntrack stay for
# whoever debugs a node from the agent's pod (`nft list table inet policyc`, `conntrack -L`).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p policyc-controller --bin policyc-agent -p policyc --bin policyc

FROM debian:bookworm-slim
# The runtime packages: one list, shared with the rootfs e2e/node/images.sh builds for the
# real-node tests.
COPY images/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update && grep -v '^#' /tmp/runtime-packages.txt | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt
COPY --from=build /src/target/release/policyc-agent /usr/local/bin/policyc-agent
# The CLI too: `policyc serve` / `policyc connect` make the same image the probe image.
COPY --from=build /src/target/release/policyc /usr/local/bin/policyc
USER 0
ENTRYPOINT ["/usr/local/bin/policyc-agent"]
