//! policyc's lab: a Canal-style cluster (Flannel VXLAN overlay, Calico-style pod veths) built
//! from network namespaces on one host, with policyc's rules loaded on every node, probed with
//! real packets.
//!
//! ```text
//!  Snapshot ──topo::plan──► Topology ──Lab::new / update──► namespaces, links, routes, listeners
//!      │                                                     │
//!      └──compile(node) per node──► nft -f in the node ────┘ (atomic per node)
//!
//!  Lab::probe_ports ──► ProbeMatrix (real TCP / UDP / SCTP) ──┐
//!  Matrix::evaluate(cluster IR) ─────────────────────────────├─► verify: cell-by-cell report,
//!  Expectations (user file, scenario step) ──────────────────┘   nft counters name the rule
//! ```
//!
//! Modules:
//! - [`topo`]: the plan (pure): nodes, addresses, prefixes, interface names.
//! - [`lab`]: building, updating and tearing down the namespaces; loading rules; probing.
//! - [`listen`] / [`probe`] / [`sctp`]: the servers in the pods and the probes.
//! - [`counters`]: which rule counted a packet.
//! - [`verify`]: packets vs IR vs expectations, for one input or a multi-step scenario.
//! - [`bench`]: throughput and packet rate with and without rules, nft and iptables.
//! - [`cleanup`]: Ctrl-C handling and `policyc lab down`.
//!
//! Needs root, `ip`/`bridge` (iproute2) and nftables; [`sys::check_environment`] says why not.

pub mod apiserver;
pub mod bench;
pub mod cleanup;
pub mod cluster;
pub mod cni;
pub mod conntrack;
pub mod counters;
pub mod flannel;
pub mod lab;
pub mod listen;
pub mod nflog;
pub mod probe;
pub mod sctp;
pub mod spoof;
pub mod sys;
pub mod topo;
pub mod traffic;
pub mod verify;

pub use lab::{Attachment, Lab, LabOptions, Overlay, ProbeMatrix};
pub use probe::Outcome;

/// A lab failure, as one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }
}
