//! Validated domain types: what a cluster looks like to the compiler.
//!
//! ```text
//!  Snapshot
//!   ├── namespaces   name → Namespace { labels }
//!   ├── nodes        name → Node { labels, addresses, pod CIDRs }
//!   ├── pods         ns/name → Pod { labels, node, hostNetwork, phase, IPs, container ports }
//!   ├── policies     ns/name → NetworkPolicy { podSelector, types, ingress[], egress[] }
//!   │                                         rule = peers (OR) × ports (OR)
//!   └── admin_policies  kind/name → AdminPolicy { tier, priority, subject, ingress[], egress[] }
//!                                   rule = action (Accept | Deny | Pass) × peers (OR) × ports (OR)
//! ```
//!
//! Admin policies come from ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, tier Admin
//! or Baseline) and from AdminNetworkPolicy / BaselineAdminNetworkPolicy (`v1alpha1`, whose
//! `Allow` is `Accept` here).
//!
//! Everything here is already validated by [`crate::load`]: selectors have known operators, CIDRs parse,
//! ports are in range. The compiler never has to reject anything.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::cidr::Cidr;

/// Labels of an object, sorted so that iteration order never leaks into output.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries (set by the API server since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The whole input of one compilation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<ObjectRef, Pod>,
    pub policies: BTreeMap<ObjectRef, NetworkPolicy>,
    pub admin_policies: BTreeMap<AdminRef, AdminPolicy>,
}

impl Snapshot {
    /// Labels of a namespace. A namespace that only appears as the namespace of a pod or policy
    /// still exists for selectors, with the one label the API server always sets.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => Namespace::new(name, Labels::new()).labels,
        }
    }

    /// Pods that take part in policy: not hostNetwork, not finished, with at least one IP.
    pub fn endpoints(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().filter(|p| p.is_endpoint())
    }

    /// The endpoint that owns `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.endpoints().find(|p| p.ips.contains(&ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with its labels plus the automatic `kubernetes.io/metadata.name` label.
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Self { name, labels }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub internal_ips: Vec<IpAddr>,
    /// Every IP address in `status.addresses` (what a `nodes` peer of an admin policy matches).
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<Cidr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling; case-insensitive for CLI convenience.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub host_network: bool,
    pub phase: Option<String>,
    /// status.podIPs (or status.podIP), in the order the API gives them.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn id(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    /// Whether policy applies to this pod at all.
    pub fn is_endpoint(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"))
    }

    /// Resolves a named port on this pod for the given protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// Two-letter suffix used in chain names.
    pub fn suffix(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }
}

/// One `matchExpressions` entry; `values` is sorted and deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    /// Sorted and deduplicated, so equal selectors compare equal.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl fmt::Display for LabelSelector {
    /// kubectl's selector syntax: `app=web,tier in (a,b),!legacy`; `{}` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: Cidr,
    /// Sorted and deduplicated; each strictly inside `cidr`.
    pub except: Vec<Cidr>,
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipBlock {}", self.cidr)?;
        if !self.except.is_empty() {
            let ex: Vec<String> = self.except.iter().map(|c| c.to_string()).collect();
            write!(f, " except {}", ex.join(","))?;
        }
        Ok(())
    }
}

/// One element of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `namespaceSelector` and/or `podSelector`. `None` namespace selector = the policy's own
    /// namespace; `None` pod selector = every pod of the selected namespaces.
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// `port` (and `endPort`): an inclusive range; a single port has `first == last`.
    Range {
        first: u16,
        last: u16,
    },
    Named(String),
    /// No `port`: every port of the protocol.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortRef,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortRef::Range { first, last } if first == last => write!(f, "{first}/{}", self.protocol),
            PortRef::Range { first, last } => write!(f, "{first}-{last}/{}", self.protocol),
            PortRef::Named(n) => write!(f, "{n}/{}", self.protocol),
            PortRef::All => write!(f, "*/{}", self.protocol),
        }
    }
}

/// One ingress or egress rule. Empty `peers` = every peer; empty `ports` = every port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub pod_selector: LabelSelector,
    /// Effective policy types, defaulting applied: sorted, deduplicated.
    pub policy_types: Vec<Direction>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    pub fn id(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    pub fn applies_to(&self, direction: Direction) -> bool {
        self.policy_types.contains(&direction)
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether this policy selects `pod` (same namespace, podSelector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

// === Admin tiers ===

/// The API an admin policy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AdminKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl AdminKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            AdminKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            AdminKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    /// kubectl's short name (`kubectl get cnp`).
    pub fn short(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "cnp",
            AdminKind::AdminNetworkPolicy => "anp",
            AdminKind::BaselineAdminNetworkPolicy => "banp",
        }
    }
}

impl fmt::Display for AdminKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a (cluster-scoped) admin policy. Shown as `cnp/NAME`, `anp/NAME`, `banp/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AdminRef {
    pub kind: AdminKind,
    pub name: String,
}

impl AdminRef {
    pub fn new(kind: AdminKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for AdminRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.short(), self.name)
    }
}

/// Admin tiers around NetworkPolicy: Admin first, then NetworkPolicy, then Baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }

    /// Short prefix of chain and set names.
    pub fn prefix(self) -> &'static str {
        match self {
            Tier::Admin => "adm",
            Tier::Baseline => "bl",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an admin rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AdminAction {
    /// Allowed; no later rule of any tier is consulted for this direction.
    Accept,
    /// Dropped; no later rule of any tier is consulted.
    Deny,
    /// The rest of this tier is skipped; evaluation goes on in the next tier.
    Pass,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::Accept => "Accept",
            AdminAction::Deny => "Deny",
            AdminAction::Pass => "Pass",
        }
    }
}

impl fmt::Display for AdminAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pods an admin policy applies to (never hostNetwork pods).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminSubject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(LabelSelector),
    /// Pods matching `pod_selector` in namespaces matching `namespace_selector`.
    Pods {
        namespace_selector: LabelSelector,
        pod_selector: LabelSelector,
    },
}

impl AdminSubject {
    pub fn matches(&self, namespace_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            AdminSubject::Namespaces(ns) => ns.matches(namespace_labels),
            AdminSubject::Pods {
                namespace_selector,
                pod_selector,
            } => namespace_selector.matches(namespace_labels) && pod_selector.matches(pod_labels),
        }
    }
}

/// One element of an admin rule's `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminPeer {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    Pods {
        namespace_selector: LabelSelector,
        pod_selector: LabelSelector,
    },
    /// The addresses (`status.addresses`) of the selected nodes.
    Nodes(LabelSelector),
    /// CIDRs, matched against any address (pod addresses included).
    Networks(Vec<Cidr>),
    /// Every address: what a Deny or Pass rule with a peer this implementation cannot read
    /// becomes (the API's "fail closed").
    Everything,
    /// No address: domain names (which policyc does not resolve) and, in Accept rules, peers it
    /// cannot read.
    Nothing,
}

/// One ingress or egress rule of an admin policy. Empty `ports` = every port and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRule {
    pub name: Option<String>,
    pub action: AdminAction,
    pub peers: Vec<AdminPeer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminPolicy {
    pub kind: AdminKind,
    pub name: String,
    pub generation: Option<i64>,
    pub tier: Tier,
    /// 0..=1000; lower is evaluated first within the tier.
    pub priority: i32,
    pub subject: AdminSubject,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

impl AdminPolicy {
    pub fn id(&self) -> AdminRef {
        AdminRef::new(self.kind, &self.name)
    }

    pub fn rules(&self, direction: Direction) -> &[AdminRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Evaluation order within a tier: priority, then (for equal priorities, which the API
    /// leaves to the implementation) ClusterNetworkPolicy before the v1alpha1 kinds, then name.
    pub fn order_key(&self) -> (i32, AdminKind, &str) {
        (self.priority, self.kind, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (LabelSelector::default(), true, "empty selector matches all"),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    ..Default::default()
                },
                true,
                "matchLabels hit",
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "db")]),
                    ..Default::default()
                },
                false,
                "matchLabels miss",
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", Operator::In, &["back", "front"])],
                    ..Default::default()
                },
                true,
                "In hit",
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("missing", Operator::NotIn, &["x"])],
                    ..Default::default()
                },
                true,
                "NotIn matches an absent key",
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", Operator::NotIn, &["front"])],
                    ..Default::default()
                },
                false,
                "NotIn miss",
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("app", Operator::Exists, &[])],
                    ..Default::default()
                },
                true,
                "Exists",
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("app", Operator::DoesNotExist, &[])],
                    ..Default::default()
                },
                false,
                "DoesNotExist",
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    match_expressions: vec![req("tier", Operator::In, &["back"])],
                },
                false,
                "matchLabels AND matchExpressions",
            ),
        ];
        for (sel, want, msg) in cases {
            assert_eq!(sel.matches(&l), want, "{msg}");
        }
    }

    #[test]
    fn namespace_gets_name_label() {
        let ns = Namespace::new("prod", Labels::new());
        assert_eq!(ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("prod"));
    }
}
