//! `policy.networking.k8s.io/v1alpha2`: ClusterNetworkPolicy, the experimental channel's shape
//! (node and network peers, domain names, destination named ports).
//!
//! One kind for both tiers: `tier: Admin` is evaluated before NetworkPolicies, `tier: Baseline`
//! after them. As in `v1alpha1`, optional fields are `Option`s so objects round-trip, and a peer or
//! protocol with no field set (a newer kind this version does not know) must fail closed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// What a ClusterNetworkPolicy wants: rules of one tier, in priority order.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    shortname = "cnp",
    status = "ClusterNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "A cluster-wide policy of the Admin tier (before NetworkPolicies) or the Baseline tier (after them).",
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Admin: evaluated before NetworkPolicies, a verdict there is final. Baseline: evaluated for
    /// traffic no NetworkPolicy decided. Traffic no tier decides is allowed.
    pub tier: Tier,
    /// 0 to 1000 within the tier; lower values are evaluated first. Two policies with the same
    /// priority that match the same connection may be applied in either order.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The pods the policy applies to (host-network pods never are).
    pub subject: ClusterNetworkPolicySubject,
    /// Rules for traffic to the subject, first match wins; at most 25. Without rules the policy
    /// does not affect ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<ClusterNetworkPolicyIngressRule>", length(max = 25))]
    pub ingress: Option<Vec<ClusterNetworkPolicyIngressRule>>,
    /// Rules for traffic from the subject, first match wins; at most 25. Without rules the policy
    /// does not affect egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<ClusterNetworkPolicyEgressRule>", length(max = 25))]
    pub egress: Option<Vec<ClusterNetworkPolicyEgressRule>>,
}

/// The tier of a ClusterNetworkPolicy: Admin (before NetworkPolicies) or Baseline (after them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    Admin,
    Baseline,
}

/// What an implementation reports about a ClusterNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyStatus {
    /// Conditions, one per type.
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// The pods a policy applies to: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct ClusterNetworkPolicySubject {
    /// Every pod in the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespaces: Option<LabelSelector>,
    /// The pods this selects in the namespaces it selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "NamespacedPod")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace and pod labels, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces; empty or absent selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    /// The pods in those namespaces; empty selects all.
    #[schemars(schema_with = "schema::label_selector")]
    pub pod_selector: LabelSelector,
}

/// An ingress rule: traffic from any of `from` matching any of `protocols` gets `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: ClusterNetworkPolicyRuleAction,
    /// The sources, ORed; 1 to 25.
    #[schemars(length(min = 1, max = 25))]
    pub from: Vec<ClusterNetworkPolicyIngressPeer>,
    /// Protocol matches (destination ports on the subject), ORed; 1 to 25. Absent: all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<ClusterNetworkPolicyProtocol>", length(min = 1, max = 25))]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// An egress rule: traffic from the subject to any of `to` matching any of `protocols` gets
/// `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))",
}]))]
pub struct ClusterNetworkPolicyEgressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: ClusterNetworkPolicyRuleAction,
    /// The destinations, ORed; 1 to 25.
    #[schemars(length(min = 1, max = 25))]
    pub to: Vec<ClusterNetworkPolicyEgressPeer>,
    /// Protocol matches (destination ports), ORed; 1 to 25. Absent: all traffic. Named ports only
    /// with pod peers (nodes, networks and domain names have no named ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<ClusterNetworkPolicyProtocol>", length(min = 1, max = 25))]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// The verdict of a rule. Accept and Deny are final (an egress Accept still leaves the
/// destination's ingress rules to decide); Pass skips the tier's remaining rules and hands the
/// traffic to the next tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ClusterNetworkPolicyRuleAction {
    Accept,
    Deny,
    Pass,
}

/// A source of ingress traffic: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct ClusterNetworkPolicyIngressPeer {
    /// Every pod (not host-network) in the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespaces: Option<LabelSelector>,
    /// The pods (not host-network) this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "NamespacedPod")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of egress traffic: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct ClusterNetworkPolicyEgressPeer {
    /// Every pod (not host-network) in the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespaces: Option<LabelSelector>,
    /// The pods (not host-network) this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "NamespacedPod")]
    pub pods: Option<NamespacedPod>,
    /// The addresses in `status.addresses` of the nodes this selects; empty selects all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub nodes: Option<LabelSelector>,
    /// Address ranges, 1 to 25, for IP and ICMP traffic. Pod and node addresses inside them match
    /// too: Pass pod traffic first if that is not meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::networks")]
    pub networks: Option<Vec<String>>,
    /// Domain names, 1 to 25; meant for Accept rules in front of a broader Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::domain_names_v1alpha2")]
    pub domain_names: Option<Vec<String>>,
}

/// A protocol match: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct ClusterNetworkPolicyProtocol {
    /// TCP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ProtocolMatch")]
    pub tcp: Option<ProtocolMatch>,
    /// UDP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ProtocolMatch")]
    pub udp: Option<ProtocolMatch>,
    /// SCTP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ProtocolMatch")]
    pub sctp: Option<ProtocolMatch>,
    /// A container port name, resolved on each destination pod (its protocol too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub destination_named_port: Option<String>,
}

/// What to match of one protocol; at least one field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct ProtocolMatch {
    /// The destination port or ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Port")]
    pub destination_port: Option<Port>,
}

/// A port or a range of ports: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct Port {
    /// One port, 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i32", range(min = 1, max = 65535))]
    pub number: Option<i32>,
    /// Ports `start` to `end`, both included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PortRange")]
    pub range: Option<PortRange>,
}

/// Ports `start` to `end`, both included; `start` must be below `end`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "Start port must be less than End port",
    "rule": "self.start < self.end",
}]))]
pub struct PortRange {
    /// The first port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    /// The last port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}
