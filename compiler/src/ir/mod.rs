//! The canonical rule IR and the compiler that builds it.
//!
//! ```text
//!  Ir (one node, or the whole cluster)
//!   ├── endpoints   local pods: interface, IPs, and per direction
//!   │                 isolated? + the policy chains that apply (sorted by policy)
//!   ├── chains      one per (policy, direction) with rules: peer × ports → accept
//!   ├── sets        shared named address sets, one per distinct selector pair / ipBlock
//!   └── port_sets   named-port resolutions: (address, port) pairs per (port name, protocol)
//! ```
//!
//! Size is O(policies + pods + selector matches): a policy's rules exist once, however many pods
//! it selects; a selector's member list exists once, however many rules use it.
//!
//! One file per responsibility: the IR types are here; `compile` holds the [`Compiler`] and the
//! NetworkPolicy chains, `admin` the admin policies' rules and tier tables, `sets` the building
//! of address and named-port sets, `selector_cache` the sets' identities and the members kept
//! across snapshots ([`SelectorCache`]), `naming` the content-derived names, and `hash`
//! [`Ir::ruleset_hash`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::cidr::{Family, IpRange};
use crate::model::*;
pub use crate::tiers::{AdminRuleIr, PortClass, PortOutcome, Target, TierTable};

mod admin;
mod compile;
mod hash;
mod naming;
mod selector_cache;
mod sets;
mod validate;

pub use compile::{compile, compile_all_nodes, CompileOptions, Compiler};
pub use naming::{interface_name, policy_chain_name, short_hash};
pub use selector_cache::SelectorCache;
pub use validate::IrError;

// === IR types ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ir {
    pub node: Option<String>,
    /// Drop traffic of pods the ruleset does not know yet (unknown `cali*` interfaces, unknown
    /// source or destination addresses on the bridge) instead of allowing it.
    pub fail_closed: bool,
    /// Which verdict points send flow events (NFLOG), and how many; `None`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_log: Option<crate::flows::FlowLog>,
    /// How the node's pods are attached, which decides how traffic is dispatched to endpoints.
    pub attachment: Attachment,
    pub endpoints: Vec<Endpoint>,
    pub chains: BTreeMap<String, PolicyChain>,
    pub sets: BTreeMap<String, AddrSet>,
    pub port_sets: BTreeMap<String, PortSet>,
    /// Every valid policy in the snapshot, with how many of this IR's endpoints it selects.
    pub policies: Vec<PolicyInfo>,
    /// Every valid admin policy, with how many of this IR's endpoints it selects.
    pub admin_policies: Vec<AdminPolicyInfo>,
    /// Admin rules the tier tables can reach, by chain name (`ar_*`).
    pub admin_rules: BTreeMap<String, AdminRuleIr>,
    /// First-match decision tables of the Admin and Baseline tiers (`adm_*`, `bl_*`).
    pub tier_tables: BTreeMap<String, TierTable>,
    /// Port decisions the tier tables refer to (`pc_*`).
    pub port_classes: BTreeMap<String, PortClass>,
    /// Peer address sets of admin rules (explain and evaluation use them; the ruleset holds
    /// their addresses in the tier tables instead).
    pub tier_sets: BTreeMap<String, AddrSet>,
}

/// How pods are attached, as the compiler is told ([`CompileOptions::attachment`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum AttachmentKind {
    /// Routed veths named by the CNI plugin from the pod (Calico's, and so Canal's).
    #[default]
    Canal,
    /// Veths enslaved to a Linux bridge (Flannel's CNI plugin delegating to `bridge`).
    Bridge { bridge: String },
}

/// How the IR's endpoints are reached.
///
/// - `Canal`: every pod has its own routed interface, `PREFIX` + a hash of its name; traffic is
///   dispatched by interface, and the source guard sits on that interface.
/// - `Bridge`: pods share one bridge (`cni0`); traffic is dispatched by pod address, which is
///   only sound because a per-port source guard in a `bridge` table drops every frame whose
///   source address is not its port's pod. Same-node traffic is seen by the `inet` hooks only
///   through `br_netfilter`: the `inet` forward chain marks what it saw, and the `bridge` forward
///   chain drops pod traffic it did not see (fail closed when `br_netfilter` is off).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Attachment {
    Canal { prefix: String },
    Bridge { bridge: String },
}

impl Default for Attachment {
    fn default() -> Self {
        Attachment::Canal { prefix: "cali".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminPolicyInfo {
    pub policy: AdminRef,
    pub generation: Option<i64>,
    pub tier: Tier,
    pub priority: i32,
    pub selected_endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    pub policy: ObjectRef,
    pub generation: Option<i64>,
    pub policy_types: Vec<Direction>,
    pub selected_endpoints: usize,
}

/// A pod this IR enforces policy for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub pod: ObjectRef,
    pub node: Option<String>,
    /// Host-side interface of the pod's veth: Canal's routed `cali…` veth (derived from the
    /// pod's name), or the pod's bridge port; empty when the bridge port is not known yet.
    pub interface: String,
    pub ips: Vec<IpAddr>,
    pub ingress: Isolation,
    pub egress: Isolation,
}

impl Endpoint {
    pub fn isolation(&self, d: Direction) -> &Isolation {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Name of this endpoint's source guard chain.
    pub fn guard_chain_name(&self) -> String {
        format!("guard_{}", short_hash(&self.pod.to_string()))
    }

    /// Name of this endpoint's chain for a direction.
    pub fn chain_name(&self, d: Direction) -> String {
        format!("ep_{}_{}", short_hash(&self.pod.to_string()), d.suffix())
    }
}

/// What decides an endpoint's traffic in one direction: the Admin tier, then NetworkPolicies
/// (which isolate the pod), then the Baseline tier, then the default (allow).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Isolation {
    /// NetworkPolicies selecting the endpoint for this direction, sorted by namespace/name.
    pub policies: Vec<ObjectRef>,
    /// Chains (in `Ir::chains`) to consult, in policy order; policies without rules have none.
    pub chains: Vec<String>,
    /// Admin-tier policies with rules for this direction selecting the endpoint, in evaluation
    /// order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<AdminRef>,
    /// Their decision table (`Ir::tier_tables`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_table: Option<String>,
    /// Baseline-tier policies with rules for this direction selecting the endpoint, in
    /// evaluation order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<AdminRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_table: Option<String>,
}

impl Isolation {
    /// Whether NetworkPolicies isolate the endpoint (everything they do not allow is dropped).
    pub fn isolated(&self) -> bool {
        !self.policies.is_empty()
    }

    /// Whether any policy of any tier applies: the endpoint needs its own chain.
    pub fn enforced(&self) -> bool {
        self.isolated() || self.admin_table.is_some() || self.baseline_table.is_some()
    }
}

/// The rules of one policy for one direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyChain {
    pub policy: ObjectRef,
    pub direction: Direction,
    pub rules: Vec<IrRule>,
}

/// One accept rule: a single peer and a single port match. A NetworkPolicy rule with several
/// peers or several named ports becomes several IR rules with the same `rule` index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IrRule {
    /// Index of the rule in the policy's `ingress` / `egress` list.
    pub rule: usize,
    pub peer: PeerMatch,
    pub ports: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "set")]
pub enum PeerMatch {
    /// No `from` / `to`: every address.
    Any,
    /// Addresses in the named set (`Ir::sets`).
    Set(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMatch {
    /// No `ports`: every protocol and port.
    Any,
    /// Numeric ports and ranges, and whole protocols.
    Ports(Vec<PortRange>),
    /// A named port: destination address and port must be in the named port set (`Ir::port_sets`).
    Named { set: String, protocol: Protocol },
}

/// An inclusive destination-port range of one protocol; `0..=65535` is the whole protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn is_whole_protocol(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_whole_protocol() {
            write!(f, "all {}", self.protocol)
        } else if self.first == self.last {
            write!(f, "{}/{}", self.first, self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.protocol)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// Pods matched by a (namespace selector, pod selector) pair: single addresses.
    Selector,
    /// An ipBlock minus its excepts: address intervals.
    IpBlock,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AddrSet {
    pub kind: SetKind,
    /// Human-readable origin, e.g. `pods app=web in namespace prod`.
    pub description: String,
    /// Families this set can hold (a selector set holds both, an ipBlock one).
    pub families: Vec<Family>,
    /// Sorted, disjoint.
    pub members: Vec<IpRange>,
}

impl AddrSet {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let key = IpRange::single(*ip);
        let i = self
            .members
            .partition_point(|r| (r.family, r.start) <= (key.family, key.start));
        i > 0 && self.members[i - 1].contains(ip)
    }

    pub fn members_of(&self, f: Family) -> impl Iterator<Item = &IpRange> {
        self.members.iter().filter(move |r| r.family == f)
    }
}

/// Where a named port resolves: (pod address, port) for every endpoint defining that name for
/// that protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortSet {
    pub port_name: String,
    pub protocol: Protocol,
    /// Sorted, deduplicated.
    pub members: Vec<(IpAddr, u16)>,
}

impl PortSet {
    pub fn contains(&self, ip: IpAddr, port: u16) -> bool {
        self.members.binary_search(&(ip, port)).is_ok()
    }
}

/// Size figures of an IR (also the agent's gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IrStats {
    pub endpoints: usize,
    pub policy_chains: usize,
    /// IR rules in policy chains plus jumps and final drops in endpoint chains.
    pub rules: usize,
    pub sets: usize,
    /// Addresses, intervals and (address, port) pairs over all sets.
    pub set_elements: usize,
}

impl Ir {
    pub fn stats(&self) -> IrStats {
        let mut rules: usize = self.chains.values().map(|c| c.rules.len()).sum();
        rules += self.admin_rules.len() + self.tier_tables.len() * 2;
        rules += self.port_classes.len() * 4;
        for ep in &self.endpoints {
            for d in [Direction::Ingress, Direction::Egress] {
                let iso = ep.isolation(d);
                if iso.isolated() {
                    rules += iso.chains.len() + 1;
                }
                rules += usize::from(iso.admin_table.is_some()) + usize::from(iso.baseline_table.is_some());
            }
        }
        let table_elements: usize = self.tier_tables.values().map(|t| t.v4.len() + t.v6.len()).sum();
        let class_elements: usize = self
            .port_classes
            .values()
            .map(|c| c.tcp.len() + c.udp.len() + c.sctp.len())
            .sum();
        IrStats {
            endpoints: self.endpoints.len(),
            policy_chains: self.chains.len() + self.admin_rules.len(),
            rules,
            sets: self.sets.len() + self.port_sets.len() + self.tier_tables.len() + self.port_classes.len(),
            set_elements: self.sets.values().map(|s| s.members.len()).sum::<usize>()
                + self.port_sets.values().map(|s| s.members.len()).sum::<usize>()
                + table_elements
                + class_elements,
        }
    }
}
