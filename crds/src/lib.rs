//! Custom resources policyc owns.
//!
//! ```text
//!  NodePolicyStatus (cluster-scoped, one per node, named after the node)
//!   spec:   nodeName
//!   status: policies[] {namespace, name, generation, endpoints}   ← what this node enforces
//!           rulesetHash, endpoints, rules, sets, setElements, lastSyncTime
//!           errors[] {object, field, message}                      ← objects skipped as invalid
//!           conditions[] Ready / Degraded
//! ```
//!
//! The agent on each node writes its object with server-side apply; `policyc status` reads them
//! and `policyc wait --for=enforced` waits until every node that hosts a selected pod reports the
//! policy's generation.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of policyc's own resources.
pub const GROUP: &str = "policyc.dev";

/// One node's enforcement report. The object is named after the node.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policyc.dev",
    version = "v1alpha1",
    kind = "NodePolicyStatus",
    plural = "nodepolicystatuses",
    shortname = "nps",
    status = "NodePolicyStatusStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".status.policyCount"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.rules"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyStatusSpec {
    /// The node this report is about.
    pub node_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyStatusStatus {
    /// Policies that select at least one pod on this node, with the generation enforced.
    #[serde(default)]
    pub policies: Vec<EnforcedPolicy>,
    #[serde(default)]
    pub policy_count: i64,
    /// SHA-256 of the ruleset in the kernel (the rendered nft text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset_hash: Option<String>,
    #[serde(default)]
    pub endpoints: i64,
    #[serde(default)]
    pub rules: i64,
    #[serde(default)]
    pub sets: i64,
    #[serde(default)]
    pub set_elements: i64,
    /// When the kernel last matched the cluster's policies (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Objects skipped because they are invalid; everything else stays enforced.
    #[serde(default)]
    pub errors: Vec<ObjectError>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedPolicy {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` of the policy the kernel enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Pods on this node the policy selects.
    pub endpoints: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectError {
    /// `Kind namespace/name`.
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// A condition in the usual Kubernetes shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`: the kernel holds the ruleset for the current policies. `Degraded`: some objects
    /// are invalid and skipped, or the last apply failed.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// Every CRD policyc owns, as YAML documents, in a stable order.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let mut out = String::new();
    // The admin policy kinds join this list when policyc reads them.
    let crds = vec![NodePolicyStatus::crd()];
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serializes"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the committed YAML drifts from the types: regenerate with
    /// `cargo run -p policyc-crds --bin crdgen`.
    #[test]
    fn committed_crds_match_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/yaml/crds.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{path} is out of date: run `cargo run -p policyc-crds --bin crdgen`"
        );
    }

    #[test]
    fn crd_is_cluster_scoped_with_status() {
        use kube::CustomResourceExt as _;
        let crd = NodePolicyStatus::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, GROUP);
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    }
}
