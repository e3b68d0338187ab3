//! SIG Network's admin policy API (`policy.networking.k8s.io`), as upstream's experimental
//! channel defines it: the Rust types policyc reads, and the CRDs for clusters that lack them.
//!
//! ```text
//!  v1alpha1  AdminNetworkPolicy (anp)          priority 0..1000, rules Allow | Deny | Pass
//!            BaselineAdminNetworkPolicy (banp) named "default",  rules Allow | Deny
//!  v1alpha2  ClusterNetworkPolicy (cnp)        tier Admin | Baseline, priority 0..1000,
//!                                              rules Accept | Deny | Pass
//!
//!  spec: subject  namespaces | pods{namespaceSelector, podSelector}        exactly one
//!        ingress[] {name, action, from[] namespaces | pods,               ports | protocols}
//!        egress[]  {name, action, to[]   namespaces | pods | nodes | networks | domainNames, …}
//!
//!  evaluation of a connection:
//!    ANP / CNP Admin (by priority) ──Pass──► NetworkPolicy ──no policy selects──► BANP / CNP Baseline
//!         │ Allow/Accept, Deny: final                │ final                              │ else allowed
//! ```
//!
//! The CRDs belong to the cluster's admin, like the Gateway API's: `crdgen` writes them to
//! `crds/yaml/policy.networking.k8s.io.yaml`, and the chart installs them only when asked
//! (`adminPolicies.installCRDs`). Each kind's `crd()` is the derived definition; [`crds`] adds
//! what the apiserver requires of a `*.k8s.io` group (the API-approval annotation) and upstream's
//! root schema, and is what gets installed.

pub mod v1alpha1;
pub mod v1alpha2;

mod schema;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};

/// API group of the admin policy kinds.
pub const GROUP: &str = "policy.networking.k8s.io";

/// Where `crdgen` writes the admin CRDs (not into the chart's `crds/`: Helm would own them).
pub const CRD_PATH: &str = "crds/yaml/policy.networking.k8s.io.yaml";

/// The chart template that installs the admin CRDs when `adminPolicies.installCRDs` is set.
pub const CHART_TEMPLATE_PATH: &str = "charts/policyc/templates/admin-policy-crds.yaml";

/// The three CRDs as upstream publishes them (approval annotation, channel, list kind), in a
/// stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt as _;
    // Upstream's approval records: the API review of v1alpha1 and of ClusterNetworkPolicy.
    const ANP_REVIEW: &str = "https://github.com/kubernetes-sigs/network-policy-api/pull/30";
    const CNP_REVIEW: &str = "https://github.com/kubernetes-sigs/network-policy-api/pull/347";
    vec![
        finish(v1alpha1::AdminNetworkPolicy::crd(), ANP_REVIEW),
        finish(v1alpha1::BaselineAdminNetworkPolicy::crd(), ANP_REVIEW),
        finish(v1alpha2::ClusterNetworkPolicy::crd(), CNP_REVIEW),
    ]
}

fn finish(mut crd: CustomResourceDefinition, review: &str) -> CustomResourceDefinition {
    let annotations = crd.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert("api-approved.kubernetes.io".into(), review.into());
    annotations.insert("policy.networking.k8s.io/channel".into(), "experimental".into());
    let names = &mut crd.spec.names;
    names.list_kind = Some(format!("{}List", names.kind));
    // Upstream's root: apiVersion, kind and metadata declared, metadata required, and a status
    // that is not nullable (a null status is pruned like any other null field).
    for version in &mut crd.spec.versions {
        let root = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .expect("derived CRDs have a schema");
        root.title = None;
        root.required = Some(vec!["metadata".into(), "spec".into()]);
        let properties = root.properties.get_or_insert_with(Default::default);
        if let Some(status) = properties.get_mut("status") {
            status.nullable = None;
        }
        let string = |description: &str| JSONSchemaProps {
            description: Some(description.into()),
            type_: Some("string".into()),
            ..Default::default()
        };
        properties.insert(
            "apiVersion".into(),
            string("The versioned schema of this representation of an object."),
        );
        properties.insert("kind".into(), string("The REST resource this object represents."));
        properties.insert(
            "metadata".into(),
            JSONSchemaProps {
                type_: Some("object".into()),
                ..Default::default()
            },
        );
    }
    crd
}

/// The admin CRDs as YAML documents, for `kubectl apply -f`.
pub fn crd_yaml() -> String {
    documents(&crds())
}

/// The chart template: the same CRDs, rendered only with `adminPolicies.installCRDs`, and kept on
/// `helm uninstall` (deleting a CRD deletes every policy of its kind).
pub fn chart_template() -> String {
    let mut crds = crds();
    for crd in &mut crds {
        let annotations = crd.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert("helm.sh/resource-policy".into(), "keep".into());
    }
    format!(
        "# Generated by crdgen from crds/src/admin: do not edit.\n\
         {{{{- if .Values.adminPolicies.installCRDs }}}}\n{}{{{{- end }}}}\n",
        documents(&crds)
    )
}

fn documents(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(crd).expect("CRD serializes"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    /// CI fails when the committed YAML drifts from the types: regenerate with
    /// `cargo run -p policyc-crds --bin crdgen`.
    #[test]
    fn committed_admin_crds_match_types() {
        for (path, want) in [(CRD_PATH, crd_yaml()), (CHART_TEMPLATE_PATH, chart_template())] {
            let committed = std::fs::read_to_string(repo(path)).unwrap_or_default();
            assert!(
                committed == want,
                "{path} is out of date: run `cargo run -p policyc-crds --bin crdgen`"
            );
        }
    }

    #[test]
    fn crds_are_cluster_scoped_with_upstream_names_and_columns() {
        let crds = crds();
        let want = [
            (
                "adminnetworkpolicies",
                "AdminNetworkPolicy",
                "anp",
                "v1alpha1",
                vec!["Priority", "Age"],
            ),
            (
                "baselineadminnetworkpolicies",
                "BaselineAdminNetworkPolicy",
                "banp",
                "v1alpha1",
                vec!["Age"],
            ),
            (
                "clusternetworkpolicies",
                "ClusterNetworkPolicy",
                "cnp",
                "v1alpha2",
                vec!["Tier", "Priority", "Age"],
            ),
        ];
        assert_eq!(crds.len(), want.len());
        for (crd, (plural, kind, short, version, columns)) in crds.iter().zip(want) {
            assert_eq!(crd.metadata.name.as_deref(), Some(format!("{plural}.{GROUP}").as_str()));
            let annotations = crd.metadata.annotations.as_ref().unwrap();
            assert!(annotations["api-approved.kubernetes.io"].starts_with("https://github.com/kubernetes-sigs/"));
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            let names = &crd.spec.names;
            assert_eq!((names.plural.as_str(), names.kind.as_str()), (plural, kind));
            assert_eq!(names.list_kind.as_deref(), Some(format!("{kind}List").as_str()));
            assert_eq!(names.singular.as_deref(), Some(kind.to_lowercase().as_str()));
            assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));
            assert_eq!(crd.spec.versions.len(), 1, "{kind}");
            let v = &crd.spec.versions[0];
            assert_eq!((v.name.as_str(), v.served, v.storage), (version, true, true));
            assert!(
                v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{kind}"
            );
            let got: Vec<&str> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(got, columns, "{kind}");
        }
        let cnp = &crds[2].spec.versions[0].additional_printer_columns.as_ref().unwrap();
        assert_eq!(
            (
                cnp[0].json_path.as_str(),
                cnp[1].json_path.as_str(),
                cnp[1].type_.as_str()
            ),
            (".spec.tier", ".spec.priority", "string")
        );
    }

    fn schemas() -> Vec<Value> {
        crds()
            .into_iter()
            .map(|crd| {
                serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap()["openAPIV3Schema"].clone()
            })
            .collect()
    }

    /// The schema at a dotted path: `spec.ingress[].from` is the `from` list of an ingress rule.
    fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
        let mut s = schema;
        for part in path.split('.') {
            let (name, items) = match part.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (part, false),
            };
            s = &s["properties"][name];
            if items {
                s = &s["items"];
            }
            assert!(!s.is_null(), "no schema at {path} ({part})");
        }
        s
    }

    fn keys(schema: &Value) -> Vec<&str> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// The validations upstream's CRDs carry, one table row per rule.
    #[test]
    fn schemas_carry_upstream_validation() {
        let [anp, banp, cnp] = <[Value; 3]>::try_from(schemas()).unwrap();
        let exactly_one = json!({"maxProperties": 1, "minProperties": 1});
        let cases: Vec<(&str, &Value, &str, Value)> = vec![
            // AdminNetworkPolicy
            ("anp", &anp, "", json!({"required": ["metadata", "spec"]})),
            ("anp", &anp, "spec", json!({"required": ["priority", "subject"]})),
            (
                "anp",
                &anp,
                "spec.priority",
                json!({"minimum": 0.0, "maximum": 1000.0, "format": "int32"}),
            ),
            ("anp", &anp, "spec.ingress", json!({"maxItems": 100})),
            ("anp", &anp, "spec.egress", json!({"maxItems": 100})),
            ("anp", &anp, "spec.subject", exactly_one.clone()),
            (
                "anp",
                &anp,
                "spec.subject.pods",
                json!({"required": ["namespaceSelector", "podSelector"]}),
            ),
            (
                "anp",
                &anp,
                "spec.subject.namespaces",
                json!({"x-kubernetes-map-type": "atomic"}),
            ),
            ("anp", &anp, "spec.ingress[]", json!({"required": ["action", "from"]})),
            ("anp", &anp, "spec.ingress[].name", json!({"maxLength": 100})),
            (
                "anp",
                &anp,
                "spec.ingress[].action",
                json!({"enum": ["Allow", "Deny", "Pass"]}),
            ),
            (
                "anp",
                &anp,
                "spec.ingress[].from",
                json!({"minItems": 1, "maxItems": 100}),
            ),
            ("anp", &anp, "spec.ingress[].from[]", exactly_one.clone()),
            (
                "anp",
                &anp,
                "spec.ingress[].ports",
                json!({"minItems": 1, "maxItems": 100}),
            ),
            ("anp", &anp, "spec.ingress[].ports[]", exactly_one.clone()),
            (
                "anp",
                &anp,
                "spec.ingress[].ports[].portNumber",
                json!({"required": ["port", "protocol"]}),
            ),
            (
                "anp",
                &anp,
                "spec.ingress[].ports[].portNumber.protocol",
                json!({"default": "TCP"}),
            ),
            (
                "anp",
                &anp,
                "spec.ingress[].ports[].portNumber.port",
                json!({"minimum": 1.0, "maximum": 65535.0}),
            ),
            (
                "anp",
                &anp,
                "spec.ingress[].ports[].portRange",
                json!({"required": ["end", "start"]}),
            ),
            (
                "anp",
                &anp,
                "spec.ingress[].ports[].portRange.protocol",
                json!({"default": "TCP"}),
            ),
            ("anp", &anp, "spec.egress[]", json!({"required": ["action", "to"]})),
            (
                "anp",
                &anp,
                "spec.egress[]",
                json!({"x-kubernetes-validations": [{
                    "message": "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
                    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
                }]}),
            ),
            ("anp", &anp, "spec.egress[].to", json!({"minItems": 1, "maxItems": 100})),
            ("anp", &anp, "spec.egress[].to[]", exactly_one.clone()),
            (
                "anp",
                &anp,
                "spec.egress[].to[].networks",
                json!({"minItems": 1, "maxItems": 25, "x-kubernetes-list-type": "set"}),
            ),
            (
                "anp",
                &anp,
                "spec.egress[].to[].networks[]",
                json!({"maxLength": 43, "x-kubernetes-validations": [
                    {"message": "Invalid CIDR format provided", "rule": "isCIDR(self)"},
                ]}),
            ),
            (
                "anp",
                &anp,
                "spec.egress[].to[].domainNames",
                json!({"minItems": 1, "maxItems": 25, "x-kubernetes-list-type": "set"}),
            ),
            (
                "anp",
                &anp,
                "spec.egress[].to[].nodes.matchExpressions",
                json!({"x-kubernetes-list-type": "atomic"}),
            ),
            ("anp", &anp, "status", json!({"required": ["conditions"]})),
            (
                "anp",
                &anp,
                "status.conditions",
                json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
            ),
            // BaselineAdminNetworkPolicy
            (
                "banp",
                &banp,
                "",
                json!({"x-kubernetes-validations": [{
                    "message": "Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster",
                    "rule": "self.metadata.name == 'default'",
                }]}),
            ),
            ("banp", &banp, "spec", json!({"required": ["subject"]})),
            ("banp", &banp, "spec.subject", exactly_one.clone()),
            ("banp", &banp, "spec.ingress", json!({"maxItems": 100})),
            (
                "banp",
                &banp,
                "spec.ingress[].action",
                json!({"enum": ["Allow", "Deny"]}),
            ),
            (
                "banp",
                &banp,
                "spec.egress[].action",
                json!({"enum": ["Allow", "Deny"]}),
            ),
            (
                "banp",
                &banp,
                "spec.egress[]",
                json!({"x-kubernetes-validations": [{
                    "message": "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes",
                    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
                }]}),
            ),
            ("banp", &banp, "spec.egress[].to[]", exactly_one.clone()),
            // ClusterNetworkPolicy
            (
                "cnp",
                &cnp,
                "spec",
                json!({"required": ["priority", "subject", "tier"]}),
            ),
            ("cnp", &cnp, "spec.tier", json!({"enum": ["Admin", "Baseline"]})),
            ("cnp", &cnp, "spec.priority", json!({"minimum": 0.0, "maximum": 1000.0})),
            ("cnp", &cnp, "spec.ingress", json!({"maxItems": 25})),
            ("cnp", &cnp, "spec.egress", json!({"maxItems": 25})),
            ("cnp", &cnp, "spec.subject", exactly_one.clone()),
            ("cnp", &cnp, "spec.subject.pods", json!({"required": ["podSelector"]})),
            (
                "cnp",
                &cnp,
                "spec.ingress[].action",
                json!({"enum": ["Accept", "Deny", "Pass"]}),
            ),
            (
                "cnp",
                &cnp,
                "spec.ingress[].from",
                json!({"minItems": 1, "maxItems": 25}),
            ),
            ("cnp", &cnp, "spec.ingress[].from[]", exactly_one.clone()),
            (
                "cnp",
                &cnp,
                "spec.ingress[].protocols",
                json!({"minItems": 1, "maxItems": 25}),
            ),
            ("cnp", &cnp, "spec.ingress[].protocols[]", exactly_one.clone()),
            (
                "cnp",
                &cnp,
                "spec.ingress[].protocols[].tcp",
                json!({"minProperties": 1}),
            ),
            (
                "cnp",
                &cnp,
                "spec.ingress[].protocols[].udp.destinationPort",
                exactly_one.clone(),
            ),
            (
                "cnp",
                &cnp,
                "spec.ingress[].protocols[].sctp.destinationPort.number",
                json!({"minimum": 1.0, "maximum": 65535.0}),
            ),
            (
                "cnp",
                &cnp,
                "spec.ingress[].protocols[].tcp.destinationPort.range",
                json!({
                    "required": ["end", "start"],
                    "x-kubernetes-validations": [{"message": "Start port must be less than End port", "rule": "self.start < self.end"}],
                }),
            ),
            (
                "cnp",
                &cnp,
                "spec.egress[]",
                json!({"x-kubernetes-validations": [{
                    "message": "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
                    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))",
                }]}),
            ),
            ("cnp", &cnp, "spec.egress[].to[]", exactly_one.clone()),
            ("cnp", &cnp, "spec.egress[].to[].networks[]", json!({"maxLength": 43})),
            (
                "cnp",
                &cnp,
                "spec.egress[].to[].domainNames[]",
                json!({
                    "pattern": r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$",
                }),
            ),
            (
                "cnp",
                &cnp,
                "status.conditions",
                json!({"x-kubernetes-list-type": "map"}),
            ),
        ];
        for (kind, schema, path, want) in cases {
            let got = if path.is_empty() { schema } else { at(schema, path) };
            for (key, value) in want.as_object().unwrap() {
                assert_eq!(&got[key], value, "{kind} {path}: {key}");
            }
        }
        // The peers each version and kind allows, no more.
        assert_eq!(keys(at(&anp, "spec.ingress[].from[]")), ["namespaces", "pods"]);
        assert_eq!(
            keys(at(&anp, "spec.egress[].to[]")),
            ["domainNames", "namespaces", "networks", "nodes", "pods"]
        );
        assert_eq!(
            keys(at(&banp, "spec.egress[].to[]")),
            ["namespaces", "networks", "nodes", "pods"]
        );
        assert_eq!(
            keys(at(&anp, "spec.egress[].ports[]")),
            ["namedPort", "portNumber", "portRange"]
        );
        assert_eq!(
            keys(at(&cnp, "spec.egress[].to[]")),
            ["domainNames", "namespaces", "networks", "nodes", "pods"]
        );
        assert_eq!(
            keys(at(&cnp, "spec.ingress[].protocols[]")),
            ["destinationNamedPort", "sctp", "tcp", "udp"]
        );
        // Nothing is nullable: null fields are pruned, so "exactly one field" counts what is set.
        for (kind, schema) in [("anp", &anp), ("banp", &banp), ("cnp", &cnp)] {
            assert!(!schema.to_string().contains("nullable"), "{kind} has a nullable field");
        }
    }

    /// Objects shaped as upstream's conformance policies deserialize into the types and serialize
    /// back to the same JSON.
    #[test]
    fn upstream_shaped_objects_round_trip() {
        let dir = repo("crds/testdata/admin");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut kinds = std::collections::BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let value: Value = serde_yaml::from_str(&text).unwrap();
            let kind = value["kind"].as_str().unwrap().to_string();
            let back = match kind.as_str() {
                "AdminNetworkPolicy" => {
                    serde_json::to_value(serde_json::from_value::<v1alpha1::AdminNetworkPolicy>(value.clone()).unwrap())
                }
                "BaselineAdminNetworkPolicy" => serde_json::to_value(
                    serde_json::from_value::<v1alpha1::BaselineAdminNetworkPolicy>(value.clone()).unwrap(),
                ),
                "ClusterNetworkPolicy" => serde_json::to_value(
                    serde_json::from_value::<v1alpha2::ClusterNetworkPolicy>(value.clone()).unwrap(),
                ),
                other => panic!("{}: unexpected kind {other}", file.display()),
            }
            .unwrap();
            assert_eq!(back, value, "{} changed in a round trip", file.display());
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), 3, "samples of every kind: {kinds:?}");
    }

    #[test]
    fn typed_fields_read_as_upstream_writes_them() {
        let text = std::fs::read_to_string(repo("crds/testdata/admin/cnp-admin-port-ranges.yaml")).unwrap();
        let cnp: v1alpha2::ClusterNetworkPolicy = serde_yaml::from_str(&text).unwrap();
        assert_eq!(cnp.spec.tier, v1alpha2::Tier::Admin);
        let egress = cnp.spec.egress.as_ref().unwrap();
        assert_eq!(egress[0].action, v1alpha2::ClusterNetworkPolicyRuleAction::Accept);
        let range = egress[0].protocols.as_ref().unwrap()[0].tcp.as_ref().unwrap();
        assert_eq!(
            range.destination_port.as_ref().unwrap().range,
            Some(v1alpha2::PortRange { start: 80, end: 8080 })
        );
        // A port number without a protocol is TCP, as the apiserver would store it.
        let port: v1alpha1::Port = serde_json::from_value(json!({"port": 53})).unwrap();
        assert_eq!(port.protocol, "TCP");
    }
}
