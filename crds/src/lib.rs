//! Custom resources policyc owns.
//!
//! ```text
//!  NodePolicyStatus (cluster-scoped, one per node, named after the node)
//!   spec:   nodeName
//!   status: policies[] {kind, namespace, name, generation, endpoints} ← what this node enforces
//!           rulesetHash, endpoints, rules, sets, setElements, lastSyncTime (RFC 3339, sub-second)
//!           compiledFrom[] {kind, resourceVersion, objects}           ← what that ruleset was compiled from
//!           errors[] {object, field, message}                      ← objects skipped as invalid
//!           attachment                                             ← canal | flannel: how pods are reached
//!           conditions[] Ready / Degraded
//! ```
//!
//! The agent on each node writes its object with server-side apply; `policyc status` reads them
//! and `policyc wait --for=enforced` waits until every node that hosts a selected pod reports the
//! policy's generation.
//!
//! [`admin`] holds the types of SIG Network's admin policy API (AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy, ClusterNetworkPolicy), which policyc reads but does not own.

pub mod admin;

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
    printcolumn = r#"{"name":"Attachment","type":"string","jsonPath":".status.attachment"}"#,
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
    /// SHA-256 of the ruleset in the kernel: of the node's compiled rules (endpoints, chains,
    /// sets, admin rules and tier tables of the IR, not the rendered text). Equal hashes mean
    /// identical rulesets.
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
    /// When the kernel last matched the cluster's policies (RFC 3339 with microseconds): the
    /// time of the sync that put (or confirmed) the ruleset described here in the kernel.
    /// Written on every sync that changes what is enforced or what it was compiled from, and at
    /// least once a minute otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// What the ruleset in the kernel was compiled from: for each kind the agent watches, the
    /// highest resourceVersion its watch had delivered (objects, deletions, lists) and how many
    /// objects of that kind the agent held. `policyc wait --for=enforced --since RV` reads it.
    #[serde(default)]
    pub compiled_from: Vec<KindProgress>,
    /// Objects skipped because they are invalid; everything else stays enforced.
    #[serde(default)]
    pub errors: Vec<ObjectError>,
    /// How this node's pods are attached, which decides how the ruleset tells them apart:
    /// `canal` (Calico's routed `cali*` veths, one per pod) or `flannel` (veths enslaved to
    /// plain Flannel's bridge, `cni0`; pods told apart by address behind a per-port source
    /// guard). Absent while the agent has not found either (see the `Ready` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedPolicy {
    /// The policy's kind when it is not a NetworkPolicy: `ClusterNetworkPolicy`,
    /// `AdminNetworkPolicy` or `BaselineAdminNetworkPolicy` (cluster-scoped, empty namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` of the policy the kernel enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Pods on this node the policy selects.
    pub endpoints: i64,
}

/// How far one kind's watch had got when the node's ruleset was compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KindProgress {
    /// `Pod`, `Namespace`, `Node`, `NetworkPolicy`, or an admin policy kind.
    pub kind: String,
    /// Every event of this kind up to this resourceVersion (an etcd revision) was in the agent's
    /// view: the highest resourceVersion among the objects its watch delivered (updates and
    /// deletions; after a relist, the highest among the listed objects, a lower bound of the
    /// list's own).
    pub resource_version: String,
    /// Objects of this kind in the agent's view (valid, invalid and ignored alike).
    pub objects: i64,
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
    /// `Ready`: the kernel holds the ruleset for the current policies and the node's traffic
    /// passes it as intended (`False` with reason `NoPodAttachment`: no pod attachment found
    /// yet, nothing enforced; `ApplyFailed`; `BrNetfilterOff`: bridged traffic skips the
    /// `inet` hooks, so same-node pod traffic is dropped). `Degraded`: some objects are invalid
    /// and skipped, the last apply failed, or denied flows are still open.
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
    let crds = vec![NodePolicyStatus::crd()];
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serializes"));
    }
    out
}

/// Where `crdgen` writes the CRDs: the crate's copy and the chart's.
pub const CRD_PATHS: [&str; 2] = ["crds/yaml/crds.yaml", "charts/policyc/crds/crds.yaml"];

/// The chart's values table (Markdown), from the `# -- description` comments in `values.yaml`
/// (the helm-docs convention): one row per documented key, with its default.
pub fn values_table(values_yaml: &str) -> String {
    let tree: serde_yaml::Value = serde_yaml::from_str(values_yaml).unwrap_or(serde_yaml::Value::Null);
    let mut out = String::from("| Key | Default | Description |\n|---|---|---|\n");
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut doc: Option<String> = None;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(d) = trimmed.strip_prefix("# --") {
            doc = Some(d.trim().to_string());
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        path.push((indent, key.to_string()));
        if let Some(d) = doc.take() {
            let keys: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            let mut v = &tree;
            for k in &keys {
                v = &v[*k];
            }
            let default = serde_json::to_string(v).unwrap_or_default();
            out.push_str(&format!("| `{}` | `{}` | {} |\n", keys.join("."), default, d));
        }
    }
    out
}

/// Replaces the text between the values-table markers of a README.
pub fn with_values_table(readme: &str, table: &str) -> Option<String> {
    const BEGIN: &str = "<!-- values-table:begin -->\n";
    const END: &str = "<!-- values-table:end -->";
    let start = readme.find(BEGIN)? + BEGIN.len();
    let end = readme.find(END)?;
    Some(format!("{}{}{}", &readme[..start], table, &readme[end..]))
}

/// The API resource of a kind read as dynamic objects (the admin policy kinds, whose CRDs a
/// cluster may lack), e.g. `("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy",
/// "clusternetworkpolicies")`.
pub fn api_resource(api_version: &str, kind: &str, plural: &str) -> kube::core::ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    kube::core::ApiResource::from_gvk_with_plural(&gvk, plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the committed YAML drifts from the types: regenerate with
    /// `cargo run -p policyc-crds --bin crdgen`.
    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    #[test]
    fn committed_crds_match_types() {
        for path in CRD_PATHS {
            let committed = std::fs::read_to_string(repo(path)).unwrap_or_default();
            assert!(
                committed == crd_yaml(),
                "{path} is out of date: run `cargo run -p policyc-crds --bin crdgen`"
            );
        }
    }

    #[test]
    fn chart_values_table_is_current() {
        let values = std::fs::read_to_string(repo("charts/policyc/values.yaml")).unwrap();
        let readme = std::fs::read_to_string(repo("charts/policyc/README.md")).unwrap();
        let table = values_table(&values);
        assert!(table.contains("| `backend` | `\"nftables\"` |"), "{table}");
        assert!(table.contains("| `serviceMonitor.enabled` | `false` |"), "{table}");
        assert_eq!(
            with_values_table(&readme, &table).as_deref(),
            Some(readme.as_str()),
            "charts/policyc/README.md values table is out of date: run `cargo run -p policyc-crds --bin crdgen`"
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
