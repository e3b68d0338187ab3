//! `policy.networking.k8s.io/v1alpha1`: AdminNetworkPolicy and BaselineAdminNetworkPolicy, the
//! experimental channel's shape (node and network peers, domain names, named ports).
//!
//! Optional fields are `Option`s (lists too), as in k8s-openapi, so an object read from the
//! apiserver serializes back to the same JSON. The apiserver enforces "exactly one field" on
//! subjects, peers and ports; readers must still treat an object with none set (a newer peer kind
//! this version does not know) as matching nothing for Allow rules and everything for Deny and
//! Pass rules ("fail closed").

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

// === AdminNetworkPolicy ===

/// What an AdminNetworkPolicy wants: rules evaluated before any NetworkPolicy, in priority order.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    shortname = "anp",
    status = "AdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "A cluster-wide policy of the admin tier: its verdicts override NetworkPolicies, or pass to them.",
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// 0 to 1000; lower values are evaluated first. Two policies with the same priority that match
    /// the same connection may be applied in either order.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The pods the policy applies to (host-network pods never are).
    pub subject: AdminNetworkPolicySubject,
    /// Rules for traffic to the subject, first match wins; at most 100. Without rules the policy
    /// does not affect ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyIngressRule>", length(max = 100))]
    pub ingress: Option<Vec<AdminNetworkPolicyIngressRule>>,
    /// Rules for traffic from the subject, first match wins; at most 100. Without rules the policy
    /// does not affect egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyEgressRule>", length(max = 100))]
    pub egress: Option<Vec<AdminNetworkPolicyEgressRule>>,
}

/// What an implementation reports about an AdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyStatus {
    /// Conditions, one per type.
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// The pods a policy applies to: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct AdminNetworkPolicySubject {
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
    /// The namespaces; empty selects all.
    #[schemars(schema_with = "schema::label_selector")]
    pub namespace_selector: LabelSelector,
    /// The pods in those namespaces; empty selects all.
    #[schemars(schema_with = "schema::label_selector")]
    pub pod_selector: LabelSelector,
}

/// An ingress rule: traffic from any of `from` to any of `ports` of the subject gets `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyIngressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: AdminNetworkPolicyRuleAction,
    /// The sources, ORed; 1 to 100.
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports on the subject, ORed; 1 to 100. Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyPort>", length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An egress rule: traffic from the subject to any of `to` on any of `ports` gets `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
}]))]
pub struct AdminNetworkPolicyEgressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: AdminNetworkPolicyRuleAction,
    /// The destinations, ORed; 1 to 100.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<AdminNetworkPolicyEgressPeer>,
    /// Destination ports, ORed; 1 to 100. Absent: every port. Named ports only with pod peers
    /// (nodes, networks and domain names have no named ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyPort>", length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// The verdict of an AdminNetworkPolicy rule. Allow and Deny are final, whatever NetworkPolicies
/// and the baseline say; Pass skips the remaining admin rules and leaves the traffic to
/// NetworkPolicies, then to the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AdminNetworkPolicyRuleAction {
    Allow,
    Deny,
    Pass,
}

/// A source of ingress traffic: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct AdminNetworkPolicyIngressPeer {
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
pub struct AdminNetworkPolicyEgressPeer {
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
    /// Address ranges, 1 to 25. Pod and node addresses inside them match too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::networks")]
    pub networks: Option<Vec<String>>,
    /// Domain names, 1 to 25; meant for Allow rules in front of a broader Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::domain_names_v1alpha1")]
    pub domain_names: Option<Vec<String>>,
}

/// A destination port: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct AdminNetworkPolicyPort {
    /// One port of one protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Port")]
    pub port_number: Option<Port>,
    /// A container port name, resolved on each destination pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub named_port: Option<String>,
    /// A range of ports of one protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PortRange")]
    pub port_range: Option<PortRange>,
}

/// One port of one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::require_protocol)]
pub struct Port {
    /// TCP, UDP or SCTP (the schema does not restrict it); the apiserver defaults it to TCP.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Ports `start` to `end`, both included, of one protocol. Unlike `v1alpha2`, the schema does not
/// check that `start` is below `end`: readers must.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    /// TCP, UDP or SCTP (the schema does not restrict it); the apiserver defaults it to TCP.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// The first port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    /// The last port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}

fn tcp() -> String {
    "TCP".to_string()
}

// === BaselineAdminNetworkPolicy ===

/// What the cluster's BaselineAdminNetworkPolicy wants: rules for pods no NetworkPolicy decides.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "BaselineAdminNetworkPolicy",
    plural = "baselineadminnetworkpolicies",
    shortname = "banp",
    status = "BaselineAdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "The cluster's single baseline policy, named default: it decides what NetworkPolicies leave open.",
    validation = Rule::new("self.metadata.name == 'default'")
        .message(r#"Only one baseline admin network policy with metadata.name="default" can be created in the cluster"#),
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicySpec {
    /// The pods the policy applies to (host-network pods never are).
    pub subject: AdminNetworkPolicySubject,
    /// Rules for traffic to the subject that no admin policy or NetworkPolicy decided, first
    /// match wins; at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<BaselineAdminNetworkPolicyIngressRule>", length(max = 100))]
    pub ingress: Option<Vec<BaselineAdminNetworkPolicyIngressRule>>,
    /// Rules for traffic from the subject that no admin policy or NetworkPolicy decided, first
    /// match wins; at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<BaselineAdminNetworkPolicyEgressRule>", length(max = 100))]
    pub egress: Option<Vec<BaselineAdminNetworkPolicyEgressRule>>,
}

/// What an implementation reports about the BaselineAdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyStatus {
    /// Conditions, one per type.
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// A baseline ingress rule: traffic from any of `from` to any of `ports` of the subject gets
/// `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyIngressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// The sources, ORed; 1 to 100.
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports on the subject, ORed; 1 to 100. Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyPort>", length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// A baseline egress rule: traffic from the subject to any of `to` on any of `ports` gets
/// `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes",
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
}]))]
pub struct BaselineAdminNetworkPolicyEgressRule {
    /// A name for logs, metrics and errors; at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = 100))]
    pub name: Option<String>,
    /// What matching traffic gets.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// The destinations, ORed; 1 to 100.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<BaselineAdminNetworkPolicyEgressPeer>,
    /// Destination ports, ORed; 1 to 100. Absent: every port. Named ports only with pod peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<AdminNetworkPolicyPort>", length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// The verdict of a baseline rule, always final: there is no tier after the baseline to pass to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BaselineAdminNetworkPolicyRuleAction {
    Allow,
    Deny,
}

/// A destination of baseline egress traffic: exactly one of the fields (no domain names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1, "minProperties" = 1))]
pub struct BaselineAdminNetworkPolicyEgressPeer {
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
    /// Address ranges, 1 to 25. Pod and node addresses inside them match too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::networks")]
    pub networks: Option<Vec<String>>,
}
