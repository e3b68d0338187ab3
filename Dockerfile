# policyc-agent image: build with Rust on Debian, run on a minimal Debian with the libraries nftnl
# links against and the tools of the iptables backend (the only programs the agent runs: the nft
# ruleset, its counters and the conntrack cut go over netlink). nft and conntrack stay for
# whoever debugs a node from the agent's pod (`nft list table inet policyc`, `conntrack -L`).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p policyc-controller --bin policyc-agent

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libnftnl11 libmnl0 nftables conntrack iptables ipset \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/policyc-agent /usr/local/bin/policyc-agent
USER 0
ENTRYPOINT ["/usr/local/bin/policyc-agent"]
