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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;
use sha1::Digest as _;

use crate::cidr::{self, Family, IpRange};
use crate::model::*;
use crate::tiers::{admin_rule_chain_name, flatten, FlattenCtx};
pub use crate::tiers::{AdminRuleIr, PortClass, PortOutcome, Target, TierTable};

/// What to compile for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Compile for the endpoints of this node only; `None` = every endpoint in the snapshot.
    pub node: Option<String>,
    /// Prefix of host-side pod interface names (Calico, and so Canal, uses `cali`).
    pub interface_prefix: String,
    /// Drop traffic of pod interfaces (by prefix) that the ruleset does not know yet: a new pod is
    /// denied until a sync includes it, rather than allowed.
    pub fail_closed: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            node: None,
            interface_prefix: "cali".into(),
            fail_closed: false,
        }
    }
}

// === IR types ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ir {
    pub node: Option<String>,
    /// With fail-closed, the interface prefix whose unknown interfaces are dropped.
    pub fail_closed: Option<String>,
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
    /// Host-side interface of the pod's veth.
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

impl Ir {
    /// SHA-256 (hex) of what the kernel holds for this IR: the fail-closed prefix, the
    /// endpoints (with their Admin and Baseline tables), policy chains, sets, admin rules, tier
    /// tables and port classes, in a fixed binary encoding (every field in declaration order,
    /// integers little-endian, lengths before sequences), after the conntrack cut mark and
    /// comment that every ruleset's base chains begin with. Equal hashes mean identical
    /// rulesets; the node name, `policies` and `admin_policies` (generations, selection counts)
    /// are left out, as no rule depends on them. Far cheaper than hashing the rendered text:
    /// nothing is formatted.
    pub fn ruleset_hash(&self) -> String {
        use std::hash::Hash as _;
        let mut h = RulesetHasher(sha2::Sha256::new());
        crate::render::CUT_MARK.hash(&mut h);
        crate::render::CUT_COMMENT.hash(&mut h);
        self.fail_closed.hash(&mut h);
        self.endpoints.hash(&mut h);
        self.chains.hash(&mut h);
        self.sets.hash(&mut h);
        self.port_sets.hash(&mut h);
        self.admin_rules.hash(&mut h);
        self.tier_tables.hash(&mut h);
        self.port_classes.hash(&mut h);
        // The iptables backend loads them as ipsets.
        self.tier_sets.hash(&mut h);
        h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Feeds `Hash` implementations into SHA-256 with a platform-independent encoding.
struct RulesetHasher(sha2::Sha256);

impl std::hash::Hasher for RulesetHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn write_u16(&mut self, v: u16) {
        self.write(&v.to_le_bytes());
    }
    fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    fn write_u128(&mut self, v: u128) {
        self.write(&v.to_le_bytes());
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as i64 as u64);
    }
    /// Not used: the digest is read from the SHA-256 state.
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }
}

// === Naming ===

/// First 12 hex digits of the SHA-256 of `s`: stable, content-derived names.
pub fn short_hash(s: &str) -> String {
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The host-side veth name Calico's CNI plugin gives a pod: prefix + 11 hex digits of
/// SHA-1(`namespace.name`).
pub fn interface_name(prefix: &str, pod: &ObjectRef) -> String {
    let d = sha1::Sha1::digest(format!("{}.{}", pod.namespace, pod.name).as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("{prefix}{}", &hex[..11]);
    name.truncate(15);
    name
}

/// Name of a policy's chain for a direction.
pub fn policy_chain_name(policy: &ObjectRef, d: Direction) -> String {
    format!("np_{}_{}", short_hash(&policy.to_string()), d.suffix())
}

// === impl Compiler ===

/// Which namespaces a selector-pair peer covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum NamespaceScope {
    /// The policy's own namespace (no namespaceSelector).
    Named(String),
    Selector(LabelSelector),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum SetKey {
    Pods {
        namespaces: NamespaceScope,
        pods: Option<LabelSelector>,
    },
    Block(IpBlock),
    /// Addresses of the nodes a selector matches.
    Nodes(LabelSelector),
    /// CIDRs of an admin rule's `networks` peer.
    Networks(Vec<cidr::Cidr>),
}

impl SetKey {
    fn name(&self) -> String {
        match self {
            SetKey::Pods { .. } => format!("sel_{}", short_hash(&format!("{self:?}"))),
            SetKey::Block(b) => format!("cidr_{}", short_hash(&format!("{b:?}"))),
            SetKey::Nodes(_) => format!("node_{}", short_hash(&format!("{self:?}"))),
            SetKey::Networks(_) => format!("net_{}", short_hash(&format!("{self:?}"))),
        }
    }

    fn description(&self) -> String {
        match self {
            SetKey::Pods { namespaces, pods } => {
                let pods = match pods {
                    None => "all pods".to_string(),
                    Some(s) if s.is_empty() => "all pods".to_string(),
                    Some(s) => format!("pods {s}"),
                };
                match namespaces {
                    NamespaceScope::Named(n) => format!("{pods} in namespace {n}"),
                    NamespaceScope::Selector(s) if s.is_empty() => format!("{pods} in all namespaces"),
                    NamespaceScope::Selector(s) => format!("{pods} in namespaces {s}"),
                }
            }
            SetKey::Block(b) => b.to_string(),
            SetKey::Nodes(s) if s.is_empty() => "all nodes".to_string(),
            SetKey::Nodes(s) => format!("nodes {s}"),
            SetKey::Networks(c) => {
                let v: Vec<String> = c.iter().map(|c| c.to_string()).collect();
                format!("networks {}", v.join(","))
            }
        }
    }
}

impl SetKey {
    /// Whether `pod`, in a namespace labelled `namespace_labels`, is a member when it is an
    /// endpoint: its namespace is in scope and its labels match.
    fn selects(&self, pod: &Pod, namespace_labels: &Labels) -> bool {
        match self {
            SetKey::Block(_) | SetKey::Networks(_) | SetKey::Nodes(_) => false,
            SetKey::Pods { namespaces, pods } => {
                let in_scope = match namespaces {
                    NamespaceScope::Named(n) => *n == pod.namespace,
                    NamespaceScope::Selector(s) => s.matches(namespace_labels),
                };
                in_scope && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
        }
    }
}

/// Sorted members and, per member, how many endpoints contribute it, so that one endpoint's
/// change updates the members in place.
#[derive(Clone, Debug, Default)]
struct Counted<T: Ord> {
    members: Vec<T>,
    counts: BTreeMap<T, u32>,
}

impl<T: Ord + Copy> Counted<T> {
    fn new(items: impl IntoIterator<Item = T>) -> Self {
        let mut counts: BTreeMap<T, u32> = BTreeMap::new();
        for i in items {
            *counts.entry(i).or_default() += 1;
        }
        Counted {
            members: counts.keys().copied().collect(),
            counts,
        }
    }

    fn add(&mut self, item: T) {
        let n = self.counts.entry(item).or_default();
        *n += 1;
        if *n == 1 {
            let i = self.members.partition_point(|m| *m < item);
            self.members.insert(i, item);
        }
    }

    /// `false` when `item` was not a member: the members were not what they should be.
    fn remove(&mut self, item: T) -> bool {
        let Some(n) = self.counts.get_mut(&item) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&item);
            if let Ok(i) = self.members.binary_search(&item) {
                self.members.remove(i);
            }
        }
        true
    }
}

/// Set members that outlive one snapshot (the selector cache across snapshots). A long-running
/// compiler, the agent, keeps one across syncs and reports every pod, namespace and node
/// change: pod changes update the cached members in place (in the sets of NetworkPolicy and
/// admin policy peers and in named-port sets alike), namespace and node changes drop the sets
/// they can touch, so a sync computes only sets it has not seen. CIDR sets never change.
#[derive(Clone, Debug, Default)]
pub struct SelectorCache {
    sets: BTreeMap<SetKey, CachedSet>,
    port_sets: BTreeMap<(String, Protocol), Counted<(IpAddr, u16)>>,
    /// The local endpoints of the last compilation's scope, so that the next one need not walk
    /// every pod to find them.
    local: Option<LocalEndpoints>,
}

#[derive(Clone, Debug)]
struct LocalEndpoints {
    /// `CompileOptions::node`.
    node: Option<String>,
    pods: BTreeSet<ObjectRef>,
}

#[derive(Clone, Debug)]
struct CachedSet {
    set: AddrSet,
    /// Pod sets: the addresses of `set.members`, counted.
    pods: Option<Counted<IpAddr>>,
}

impl SelectorCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pod is about to change or be removed: call with its stored version and the labels of
    /// its namespace.
    pub fn pod_removed(&mut self, pod: &Pod, namespace_labels: &Labels) {
        self.update(pod, namespace_labels, false);
    }

    /// A pod was added or changed: call with its new version and the labels of its namespace.
    pub fn pod_added(&mut self, pod: &Pod, namespace_labels: &Labels) {
        self.update(pod, namespace_labels, true);
    }

    fn update(&mut self, pod: &Pod, namespace_labels: &Labels, add: bool) {
        if !pod.is_endpoint() {
            return;
        }
        if let Some(local) = self.local.as_mut().filter(|l| l.node.is_none() || l.node == pod.node) {
            if add {
                local.pods.insert(pod.id());
            } else {
                local.pods.remove(&pod.id());
            }
        }
        self.sets.retain(|key, cached| {
            let Some(counted) = cached.pods.as_mut().filter(|_| key.selects(pod, namespace_labels)) else {
                return true;
            };
            for ip in &pod.ips {
                if add {
                    counted.add(*ip);
                } else if !counted.remove(*ip) {
                    // Not what the set was built from: compute it again.
                    return false;
                }
            }
            cached.set.members = counted.members.iter().map(|ip| IpRange::single(*ip)).collect();
            true
        });
        self.port_sets.retain(|(name, protocol), counted| {
            let Some(port) = pod.named_port(name, *protocol) else {
                return true;
            };
            pod.ips.iter().all(|ip| {
                if add {
                    counted.add((*ip, port));
                    true
                } else {
                    counted.remove((*ip, port))
                }
            })
        });
    }

    /// A namespace is added, relabelled or removed: every pod set may change.
    pub fn namespace_changed(&mut self) {
        self.sets.retain(|k, _| !matches!(k, SetKey::Pods { .. }));
    }

    /// A node is added, relabelled, readdressed or removed: every node set (an admin policy's
    /// `nodes` peer) may change.
    pub fn node_changed(&mut self) {
        self.sets.retain(|k, _| !matches!(k, SetKey::Nodes(_)));
    }

    pub fn clear(&mut self) {
        self.sets.clear();
        self.port_sets.clear();
        self.local = None;
    }

    /// Cached sets (address sets and named-port sets).
    pub fn len(&self) -> usize {
        self.sets.len() + self.port_sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compiler's selector cache: its own, or one kept across snapshots.
#[derive(Debug)]
enum Cache<'a> {
    Own(SelectorCache),
    Kept(&'a mut SelectorCache),
}

impl std::ops::Deref for Cache<'_> {
    type Target = SelectorCache;
    fn deref(&self) -> &SelectorCache {
        match self {
            Cache::Own(c) => c,
            Cache::Kept(c) => c,
        }
    }
}

impl std::ops::DerefMut for Cache<'_> {
    fn deref_mut(&mut self) -> &mut SelectorCache {
        match self {
            Cache::Own(c) => c,
            Cache::Kept(c) => c,
        }
    }
}

/// Namespace labels: what computing a namespace selector's members needs, built when the first
/// such set is computed.
#[derive(Debug)]
struct PodIndex<'a> {
    /// Every namespace, with or without a Namespace object, and its labels.
    namespace_labels: BTreeMap<&'a str, Labels>,
}

impl<'a> PodIndex<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        let mut namespace_labels = BTreeMap::new();
        for ns in pod_namespaces(snapshot).chain(snapshot.namespaces.keys().map(String::as_str)) {
            namespace_labels
                .entry(ns)
                .or_insert_with(|| snapshot.namespace_labels(ns));
        }
        Self { namespace_labels }
    }
}

/// The namespaces that have pods, each found with one lookup in the pods, sorted by
/// namespace, rather than a walk over every pod.
fn pod_namespaces(snapshot: &Snapshot) -> impl Iterator<Item = &str> {
    let mut next = snapshot.pods.keys().next();
    std::iter::from_fn(move || {
        let ns = next?.namespace.as_str();
        // The first key after every key of `ns`: no namespace lies between `ns` and `ns\0`.
        let after = ObjectRef::new(format!("{ns}\0"), "");
        next = snapshot.pods.range(after..).next().map(|(k, _)| k);
        Some(ns)
    })
}

/// The endpoints of one namespace, sorted by name.
fn endpoints_of<'a>(snapshot: &'a Snapshot, ns: &str) -> impl Iterator<Item = &'a Pod> + 'a {
    let ns = ns.to_string();
    snapshot
        .pods
        .range(ObjectRef::new(ns.clone(), "")..)
        .take_while(move |(k, _)| k.namespace == ns)
        .map(|(_, p)| p)
        .filter(|p| p.is_endpoint())
}

/// Every endpoint's named ports: (name, protocol) → (address, port), in one pass instead of one
/// pass over all endpoints per named port.
type NamedPorts<'a> = BTreeMap<(&'a str, Protocol), Vec<(IpAddr, u16)>>;

fn named_ports(snapshot: &Snapshot) -> NamedPorts<'_> {
    let mut named_ports: NamedPorts<'_> = BTreeMap::new();
    for pod in snapshot.endpoints() {
        for (i, p) in pod.ports.iter().enumerate() {
            let Some(name) = p.name.as_deref() else { continue };
            // The first container port of a name and protocol is the one a name resolves to
            // (`Pod::named_port`).
            let earlier = pod.ports[..i]
                .iter()
                .any(|q| q.protocol == p.protocol && q.name.as_deref() == Some(name));
            if !earlier {
                let v = named_ports.entry((name, p.protocol)).or_default();
                v.extend(pod.ips.iter().map(|ip| (*ip, p.port)));
            }
        }
    }
    named_ports
}

/// Compiles snapshots. Keeps a cache of set contents so that compiling many nodes of one
/// snapshot computes every selector's members once (the selector cache); with
/// [`Compiler::with_cache`], across snapshots too.
#[derive(Debug)]
pub struct Compiler<'a> {
    snapshot: &'a Snapshot,
    /// Built on first use: a compilation whose sets are all cached never walks every pod.
    index: Option<PodIndex<'a>>,
    named_ports: Option<NamedPorts<'a>>,
    cache: Cache<'a>,
    set_names: BTreeMap<SetKey, String>,
    /// Name → key of every set named so far.
    set_keys: BTreeMap<String, SetKey>,
    port_set_names: BTreeMap<(String, Protocol), String>,
    port_set_keys: BTreeMap<String, (String, Protocol)>,
    chains: BTreeMap<(ObjectRef, Direction), PolicyChain>,
    /// Compiled admin rules of each (policy, direction): chain names and rules, in order.
    admin_rules: BTreeMap<(AdminRef, Direction), Vec<(String, AdminRuleIr)>>,
    /// Tier tables by what determines them.
    tables: BTreeMap<TableKey, (String, TierTable)>,
    port_classes: BTreeMap<String, PortClass>,
}

/// What a tier table depends on: the ordered policies, and for ingress named ports the
/// endpoint's own addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TableKey {
    tier: Tier,
    direction: Direction,
    policies: Vec<AdminRef>,
    dst_ips: Option<Vec<IpAddr>>,
}

impl<'a> Compiler<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        Self::with(snapshot, Cache::Own(SelectorCache::new()))
    }

    /// A compiler that takes set members from `cache` and adds those it computes. The cache
    /// must have been told of every pod, namespace and node change since it was filled
    /// ([`SelectorCache::pod_removed`], [`SelectorCache::pod_added`],
    /// [`SelectorCache::namespace_changed`], [`SelectorCache::node_changed`]).
    pub fn with_cache(snapshot: &'a Snapshot, cache: &'a mut SelectorCache) -> Self {
        Self::with(snapshot, Cache::Kept(cache))
    }

    fn with(snapshot: &'a Snapshot, cache: Cache<'a>) -> Self {
        Self {
            snapshot,
            index: None,
            named_ports: None,
            cache,
            set_names: BTreeMap::new(),
            set_keys: BTreeMap::new(),
            port_set_names: BTreeMap::new(),
            port_set_keys: BTreeMap::new(),
            chains: BTreeMap::new(),
            admin_rules: BTreeMap::new(),
            tables: BTreeMap::new(),
            port_classes: BTreeMap::new(),
        }
    }

    /// Nodes that host at least one endpoint, or are listed as Node objects.
    pub fn nodes(&self) -> BTreeSet<String> {
        let mut nodes: BTreeSet<String> = self.snapshot.nodes.keys().cloned().collect();
        nodes.extend(self.snapshot.endpoints().filter_map(|p| p.node.clone()));
        nodes
    }

    /// This scope's endpoints, sorted: from the cache when it knows them, else by a walk over
    /// every pod (which the cache then remembers).
    fn local_endpoints(&mut self, node: Option<&String>) -> Vec<&'a Pod> {
        let snapshot = self.snapshot;
        let in_scope = |p: &Pod| p.is_endpoint() && (node.is_none() || p.node.as_ref() == node);
        if let Some(known) = self.cache.local.as_ref().filter(|l| l.node.as_ref() == node) {
            let pods: Vec<&Pod> = known.pods.iter().filter_map(|id| snapshot.pods.get(id)).collect();
            // Not told of some change after all: walk.
            if pods.len() == known.pods.len() && pods.iter().all(|p| in_scope(p)) {
                return pods;
            }
        }
        let pods: Vec<&Pod> = snapshot.pods.values().filter(|p| in_scope(p)).collect();
        self.cache.local = Some(LocalEndpoints {
            node: node.cloned(),
            pods: pods.iter().map(|p| p.id()).collect(),
        });
        pods
    }

    pub fn compile(&mut self, opts: &CompileOptions) -> Ir {
        let snapshot = self.snapshot;
        let local = self.local_endpoints(opts.node.as_ref());

        // Which policies select which local endpoints. A policy selects pods of its own
        // namespace only, so only those are matched against its selector.
        let mut local_by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in local.iter().enumerate() {
            local_by_namespace.entry(p.namespace.as_str()).or_default().push(i);
        }
        let mut selected: Vec<(Isolation, Isolation)> = vec![Default::default(); local.len()];
        let mut policies = Vec::with_capacity(snapshot.policies.len());
        let mut used_chains: BTreeSet<(ObjectRef, Direction)> = BTreeSet::new();
        for policy in snapshot.policies.values() {
            let pid = policy.id();
            let mut count = 0;
            let candidates = local_by_namespace.get(policy.namespace.as_str()).into_iter().flatten();
            // Computed once per policy and direction, not per selected pod.
            let mut chain_names: [Option<String>; 2] = [None, None];
            for &i in candidates.filter(|&&i| policy.selects(local[i])) {
                count += 1;
                let iso = &mut selected[i];
                for d in &policy.policy_types {
                    let (iso, name) = match d {
                        Direction::Ingress => (&mut iso.0, &mut chain_names[0]),
                        Direction::Egress => (&mut iso.1, &mut chain_names[1]),
                    };
                    iso.policies.push(pid.clone());
                    if !policy.rules(*d).is_empty() {
                        let name = name.get_or_insert_with(|| {
                            used_chains.insert((pid.clone(), *d));
                            policy_chain_name(&pid, *d)
                        });
                        iso.chains.push(name.clone());
                    }
                }
            }
            policies.push(PolicyInfo {
                policy: pid,
                generation: policy.generation,
                policy_types: policy.policy_types.clone(),
                selected_endpoints: count,
            });
        }

        // Admin policies, in evaluation order.
        let mut admin: Vec<&AdminPolicy> = snapshot.admin_policies.values().collect();
        admin.sort_by(|a, b| (a.tier, a.order_key()).cmp(&(b.tier, b.order_key())));
        let mut admin_policies = Vec::with_capacity(admin.len());
        // Namespace labels are needed only when admin policies pick their subjects.
        let index = if admin.is_empty() { None } else { Some(self.index()) };
        for policy in &admin {
            let ns_labels = &index.as_ref().expect("built for admin policies").namespace_labels;
            let count = local
                .iter()
                .filter(|p| policy.subject.matches(&ns_labels[p.namespace.as_str()], &p.labels))
                .count();
            admin_policies.push(AdminPolicyInfo {
                policy: policy.id(),
                generation: policy.generation,
                tier: policy.tier,
                priority: policy.priority,
                selected_endpoints: count,
            });
        }

        let mut ir = Ir {
            node: opts.node.clone(),
            fail_closed: opts.fail_closed.then(|| opts.interface_prefix.clone()),
            endpoints: Vec::with_capacity(local.len()),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            port_sets: BTreeMap::new(),
            policies,
            admin_policies,
            admin_rules: BTreeMap::new(),
            tier_tables: BTreeMap::new(),
            port_classes: BTreeMap::new(),
            tier_sets: BTreeMap::new(),
        };
        for (pod, (mut ingress, mut egress)) in local.iter().zip(selected) {
            let id = pod.id();
            if !admin.is_empty() {
                let ns_labels = &self.index().namespace_labels[pod.namespace.as_str()];
                let subject_of: Vec<&AdminPolicy> = admin
                    .iter()
                    .copied()
                    .filter(|p| p.subject.matches(ns_labels, &pod.labels))
                    .collect();
                for (d, iso) in [(Direction::Ingress, &mut ingress), (Direction::Egress, &mut egress)] {
                    for tier in [Tier::Admin, Tier::Baseline] {
                        let policies: Vec<AdminRef> = subject_of
                            .iter()
                            .filter(|p| p.tier == tier && !p.rules(d).is_empty())
                            .map(|p| p.id())
                            .collect();
                        if policies.is_empty() {
                            continue;
                        }
                        let table = self.tier_table(&mut ir, tier, d, &policies, pod);
                        match tier {
                            Tier::Admin => {
                                iso.admin = policies;
                                iso.admin_table = Some(table);
                            }
                            Tier::Baseline => {
                                iso.baseline = policies;
                                iso.baseline_table = Some(table);
                            }
                        }
                    }
                }
            }
            ir.endpoints.push(Endpoint {
                interface: interface_name(&opts.interface_prefix, &id),
                pod: id,
                node: pod.node.clone(),
                ips: pod.ips.clone(),
                ingress,
                egress,
            });
        }

        for (pid, d) in used_chains {
            let chain = self.chain(&pid, d);
            for r in &chain.rules {
                if let PeerMatch::Set(name) = &r.peer {
                    if !ir.sets.contains_key(name) {
                        ir.sets.insert(name.clone(), self.addr_set(name).clone());
                    }
                }
                if let PortMatch::Named { set, .. } = &r.ports {
                    if !ir.port_sets.contains_key(set) {
                        ir.port_sets.insert(set.clone(), self.port_set_ir(set));
                    }
                }
            }
            ir.chains.insert(policy_chain_name(&pid, d), chain);
        }
        ir
    }

    /// The members of a set named by [`Compiler::set_for`].
    fn addr_set(&self, name: &str) -> &AddrSet {
        &self.cache.sets[&self.set_keys[name]].set
    }

    /// The (address, port) pairs of a set named by [`Compiler::port_set`].
    fn port_set_members(&self, name: &str) -> &[(IpAddr, u16)] {
        &self.cache.port_sets[&self.port_set_keys[name]].members
    }

    /// A set named by [`Compiler::port_set`], as the IR holds it.
    fn port_set_ir(&self, name: &str) -> PortSet {
        let (port_name, protocol) = &self.port_set_keys[name];
        PortSet {
            port_name: port_name.clone(),
            protocol: *protocol,
            members: self.port_set_members(name).to_vec(),
        }
    }

    /// The compiled rules of one admin policy and direction (cached: identical on every node).
    fn admin_rules(&mut self, pid: &AdminRef, d: Direction) -> Vec<(String, AdminRuleIr)> {
        if let Some(r) = self.admin_rules.get(&(pid.clone(), d)) {
            return r.clone();
        }
        let policy = &self.snapshot.admin_policies[pid];
        let mut out = Vec::new();
        for (index, rule) in policy.rules(d).iter().enumerate() {
            let mut peers: Vec<PeerMatch> = Vec::new();
            for p in &rule.peers {
                let key = match p {
                    AdminPeer::Everything => {
                        peers.push(PeerMatch::Any);
                        continue;
                    }
                    AdminPeer::Nothing => continue,
                    AdminPeer::Namespaces(ns) => SetKey::Pods {
                        namespaces: NamespaceScope::Selector(ns.clone()),
                        pods: None,
                    },
                    AdminPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => SetKey::Pods {
                        namespaces: NamespaceScope::Selector(namespace_selector.clone()),
                        pods: Some(pod_selector.clone()).filter(|s| !s.is_empty()),
                    },
                    AdminPeer::Nodes(s) => SetKey::Nodes(s.clone()),
                    AdminPeer::Networks(c) => SetKey::Networks(c.clone()),
                };
                peers.push(PeerMatch::Set(self.set_for(key)));
            }
            peers.sort();
            peers.dedup();
            let ports = self.port_matches(&rule.ports);
            out.push((
                admin_rule_chain_name(pid, d, index),
                AdminRuleIr {
                    policy: pid.clone(),
                    tier: policy.tier,
                    priority: policy.priority,
                    direction: d,
                    rule: index,
                    name: rule.name.clone(),
                    action: rule.action,
                    peers,
                    ports,
                },
            ));
        }
        self.admin_rules.insert((pid.clone(), d), out.clone());
        out
    }

    /// The decision table of one tier for an endpoint, added to `ir` with everything it uses;
    /// returns its name.
    fn tier_table(&mut self, ir: &mut Ir, tier: Tier, d: Direction, policies: &[AdminRef], pod: &Pod) -> String {
        let mut rules: Vec<(String, AdminRuleIr)> = Vec::new();
        for pid in policies {
            rules.extend(self.admin_rules(pid, d));
        }
        let named = rules
            .iter()
            .any(|(_, r)| r.ports.iter().any(|p| matches!(p, PortMatch::Named { .. })));
        let key = TableKey {
            tier,
            direction: d,
            policies: policies.to_vec(),
            dst_ips: (named && d == Direction::Ingress).then(|| pod.ips.clone()),
        };
        if !self.tables.contains_key(&key) {
            let refs: Vec<(&str, &AdminRuleIr)> = rules.iter().map(|(n, r)| (n.as_str(), r)).collect();
            let mut ctx = FlattenCtx {
                sets: BTreeMap::new(),
                port_sets: BTreeMap::new(),
                dst_ips: key.dst_ips.as_deref(),
            };
            for (_, r) in &rules {
                for p in &r.peers {
                    if let PeerMatch::Set(s) = p {
                        ctx.sets.insert(s.as_str(), self.addr_set(s));
                    }
                }
                for p in &r.ports {
                    if let PortMatch::Named { set, .. } = p {
                        ctx.port_sets.insert(set.as_str(), self.port_set_members(set));
                    }
                }
            }
            let mut classes = BTreeMap::new();
            let table = TierTable {
                tier,
                direction: d,
                v4: flatten(&refs, &ctx, Family::V4, &mut classes),
                v6: flatten(&refs, &ctx, Family::V6, &mut classes),
            };
            let name = format!(
                "{}_{}_{}",
                tier.prefix(),
                short_hash(&format!("{:?}{:?}", table.v4, table.v6)),
                d.suffix()
            );
            self.port_classes.extend(classes);
            self.tables.insert(key.clone(), (name, table));
        }
        let (name, table) = &self.tables[&key];
        if !ir.tier_tables.contains_key(name) {
            for (_, target) in table.v4.iter().chain(&table.v6) {
                if let Target::Class(c) = target {
                    ir.port_classes
                        .entry(c.clone())
                        .or_insert_with(|| self.port_classes[c].clone());
                }
            }
            ir.tier_tables.insert(name.clone(), table.clone());
        }
        for (chain, r) in rules {
            for p in &r.peers {
                if let PeerMatch::Set(s) = p {
                    if !ir.tier_sets.contains_key(s) {
                        ir.tier_sets.insert(s.clone(), self.addr_set(s).clone());
                    }
                }
            }
            for p in &r.ports {
                if let PortMatch::Named { set, .. } = p {
                    if !ir.port_sets.contains_key(set) {
                        ir.port_sets.insert(set.clone(), self.port_set_ir(set));
                    }
                }
            }
            ir.admin_rules.entry(chain).or_insert(r);
        }
        name.clone()
    }

    /// Port matches of a rule: named ports one by one, numbers and ranges merged; no ports =
    /// `Any`.
    fn port_matches(&mut self, specs: &[PortSpec]) -> Vec<PortMatch> {
        let mut ports: Vec<PortMatch> = Vec::new();
        let mut numeric: Vec<PortRange> = Vec::new();
        for spec in specs {
            match &spec.port {
                PortRef::All => numeric.push(PortRange {
                    protocol: spec.protocol,
                    first: 0,
                    last: u16::MAX,
                }),
                PortRef::Range { first, last } => numeric.push(PortRange {
                    protocol: spec.protocol,
                    first: *first,
                    last: *last,
                }),
                PortRef::Named(name) => ports.push(PortMatch::Named {
                    set: self.port_set(name, spec.protocol),
                    protocol: spec.protocol,
                }),
            }
        }
        if !numeric.is_empty() {
            ports.push(PortMatch::Ports(merge_ports(numeric)));
        }
        if specs.is_empty() {
            ports.push(PortMatch::Any);
        }
        ports.sort();
        ports.dedup();
        ports
    }

    /// The chain of one policy and direction (cached: identical on every node).
    fn chain(&mut self, pid: &ObjectRef, d: Direction) -> PolicyChain {
        if let Some(c) = self.chains.get(&(pid.clone(), d)) {
            return c.clone();
        }
        let policy = &self.snapshot.policies[pid];
        let mut rules = Vec::new();
        for (index, rule) in policy.rules(d).iter().enumerate() {
            let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
                vec![PeerMatch::Any]
            } else {
                let mut v: Vec<PeerMatch> = rule
                    .peers
                    .iter()
                    .map(|p| PeerMatch::Set(self.peer_set(&policy.namespace, p)))
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let ports = self.port_matches(&rule.ports);
            for peer in &peers {
                for pm in &ports {
                    rules.push(IrRule {
                        rule: index,
                        peer: peer.clone(),
                        ports: pm.clone(),
                    });
                }
            }
        }
        let chain = PolicyChain {
            policy: pid.clone(),
            direction: d,
            rules,
        };
        self.chains.insert((pid.clone(), d), chain.clone());
        chain
    }

    fn peer_set(&mut self, policy_ns: &str, peer: &Peer) -> String {
        let key: SetKey = match peer {
            Peer::IpBlock(b) => SetKey::Block(b.clone()),
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => SetKey::Pods {
                namespaces: match namespace_selector {
                    None => NamespaceScope::Named(policy_ns.to_string()),
                    Some(s) => NamespaceScope::Selector(s.clone()),
                },
                // An empty pod selector and an absent one both mean every pod.
                pods: pod_selector.clone().filter(|s| !s.is_empty()),
            },
        };
        self.set_for(key)
    }

    /// The name of the set for a key, building the set on first use.
    fn set_for(&mut self, key: SetKey) -> String {
        if let Some(name) = self.set_names.get(&key) {
            return name.clone();
        }
        if !self.cache.sets.contains_key(&key) {
            let cached = self.build_set(&key);
            self.cache.sets.insert(key.clone(), cached);
        }
        let name = key.name();
        self.set_keys.insert(name.clone(), key.clone());
        self.set_names.insert(key, name.clone());
        name
    }

    fn index(&mut self) -> &PodIndex<'a> {
        let snapshot = self.snapshot;
        self.index.get_or_insert_with(|| PodIndex::new(snapshot))
    }

    fn build_set(&mut self, key: &SetKey) -> CachedSet {
        match key {
            SetKey::Block(b) => CachedSet {
                set: AddrSet {
                    kind: SetKind::IpBlock,
                    description: key.description(),
                    families: vec![b.cidr.family()],
                    members: cidr::subtract(&b.cidr, &b.except),
                },
                pods: None,
            },
            SetKey::Networks(cidrs) => {
                let mut families: Vec<Family> = cidrs.iter().map(|c| c.family()).collect();
                families.sort();
                families.dedup();
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::IpBlock,
                        description: key.description(),
                        families,
                        members: cidr::normalize(cidrs.iter().map(|c| c.range()).collect()),
                    },
                    pods: None,
                }
            }
            SetKey::Nodes(sel) => {
                let mut members: Vec<IpRange> = self
                    .snapshot
                    .nodes
                    .values()
                    .filter(|n| sel.matches(&n.labels))
                    .flat_map(|n| n.addresses.iter().map(|ip| IpRange::single(*ip)))
                    .collect();
                members.sort();
                members.dedup();
                // Not a pod set: pod changes leave it alone, node changes drop it
                // (`SelectorCache::node_changed`).
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::Selector,
                        description: key.description(),
                        families: vec![Family::V4, Family::V6],
                        members,
                    },
                    pods: None,
                }
            }
            SetKey::Pods { namespaces, pods } => {
                let snapshot = self.snapshot;
                let index = self.index();
                let namespaces: Vec<&str> = match namespaces {
                    NamespaceScope::Named(n) => vec![n.as_str()],
                    NamespaceScope::Selector(s) => index
                        .namespace_labels
                        .iter()
                        .filter(|(_, l)| s.matches(l))
                        .map(|(n, _)| *n)
                        .collect(),
                };
                let mut addresses = Vec::new();
                for ns in namespaces {
                    for pod in endpoints_of(snapshot, ns) {
                        if pods.as_ref().is_none_or(|s| s.matches(&pod.labels)) {
                            addresses.extend(pod.ips.iter().copied());
                        }
                    }
                }
                let counted = Counted::new(addresses);
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::Selector,
                        description: key.description(),
                        families: vec![Family::V4, Family::V6],
                        // Single addresses, never merged into prefixes: the set is not an
                        // interval set.
                        members: counted.members.iter().map(|ip| IpRange::single(*ip)).collect(),
                    },
                    pods: Some(counted),
                }
            }
        }
    }

    fn port_set(&mut self, name: &str, protocol: Protocol) -> String {
        let key = (name.to_string(), protocol);
        if let Some(n) = self.port_set_names.get(&key) {
            return n.clone();
        }
        if !self.cache.port_sets.contains_key(&key) {
            let snapshot = self.snapshot;
            let named_ports = self.named_ports.get_or_insert_with(|| named_ports(snapshot));
            let members = named_ports.get(&(name, protocol)).cloned().unwrap_or_default();
            self.cache.port_sets.insert(key.clone(), Counted::new(members));
        }
        let set_name = format!("port_{}", short_hash(&format!("{name}/{protocol}")));
        self.port_set_keys.insert(set_name.clone(), key.clone());
        self.port_set_names.insert(key, set_name.clone());
        set_name
    }
}

/// Sorts port ranges and merges overlapping or adjacent ranges of the same protocol.
fn merge_ports(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        if let Some(last) = out.last_mut() {
            if last.protocol == r.protocol && r.first as u32 <= last.last as u32 + 1 {
                last.last = last.last.max(r.last);
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Compiles one snapshot for one scope.
pub fn compile(snapshot: &Snapshot, opts: &CompileOptions) -> Ir {
    Compiler::new(snapshot).compile(opts)
}

/// Compiles one IR per node, sharing selector work across nodes.
pub fn compile_all_nodes(snapshot: &Snapshot, opts: &CompileOptions) -> BTreeMap<String, Ir> {
    let mut c = Compiler::new(snapshot);
    c.nodes()
        .into_iter()
        .map(|n| {
            let o = CompileOptions {
                node: Some(n.clone()),
                ..opts.clone()
            };
            (n, c.compile(&o))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_interface_names() {
        // Calico's CNI plugin: "cali" + first 11 hex digits of sha1("<namespace>.<pod>").
        let name = interface_name("cali", &ObjectRef::new("default", "nginx"));
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        let d = sha1::Sha1::digest(b"default.nginx");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&name[4..], &hex[..11]);
    }

    #[test]
    fn ports_merge() {
        let r = |p, a, b| PortRange {
            protocol: p,
            first: a,
            last: b,
        };
        let merged = merge_ports(vec![
            r(Protocol::Tcp, 90, 100),
            r(Protocol::Tcp, 80, 89),
            r(Protocol::Udp, 80, 80),
            r(Protocol::Tcp, 200, 200),
        ]);
        assert_eq!(
            merged,
            vec![
                r(Protocol::Tcp, 80, 100),
                r(Protocol::Tcp, 200, 200),
                r(Protocol::Udp, 80, 80)
            ]
        );
    }
}
