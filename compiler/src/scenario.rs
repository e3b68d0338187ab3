//! Multi-step scenarios: a cluster, then steps that change it (apply, delete, relabel) and the
//! reachability expected after each. The same files drive the compiler's table tests and the
//! real-packet lab.
//!
//! ```yaml
//! name: deny-ingress-then-allow-y
//! include: [cluster.yaml]        # objects loaded first (paths relative to this file)
//! objects: []                    # more objects
//! steps:
//! - name: deny all ingress to x
//!   apply:                       # objects upserted, as `kubectl apply` does
//!   - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, ...}
//!   delete:                      # objects removed
//!   - {kind: NetworkPolicy, namespace: x, name: old}
//!   label:                       # `kubectl label --overwrite`
//!   - {kind: Namespace, name: y, set: {team: a}, remove: [old]}
//!   expect:
//!   - ports: [80/TCP, 81/UDP]
//!     reachability: |
//!       * -> x/* deny
//!       x/* -> x/* allow
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::expect::{parse_port, Expectations};
use crate::load::{parse_object, Kind, ObjectKey, Parsed};
use crate::model::{Protocol, Snapshot};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The upstream test this reproduces, when there is one.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub objects: Vec<Value>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub apply: Vec<Value>,
    #[serde(default)]
    pub delete: Vec<DeleteRef>,
    #[serde(default)]
    pub label: Vec<LabelChange>,
    #[serde(default)]
    pub expect: Vec<Expect>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `80/TCP` style.
    pub ports: Vec<String>,
    pub reachability: String,
}

/// One parsed expectation block.
#[derive(Clone, Debug)]
pub struct PortExpectation {
    pub ports: Vec<(u16, Protocol)>,
    pub expectations: Expectations,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }
}

fn key(kind: &str, namespace: &Option<String>, name: &str) -> Result<ObjectKey, String> {
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let namespace = if kind.namespaced() {
        namespace.clone().unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    Ok(ObjectKey {
        kind,
        namespace,
        name: name.to_string(),
    })
}

/// Upserts one raw object into the snapshot.
pub fn apply_object(snapshot: &mut Snapshot, v: &Value) -> Result<(), String> {
    match parse_object(v) {
        Ok((Parsed::Object(o), _)) => {
            snapshot.upsert(o);
            Ok(())
        }
        Ok((Parsed::Skipped { kind, name }, _)) => Err(format!("unsupported kind {kind} ({name})")),
        Err(e) => Err(format!("{}: {}", e.field, e.message)),
    }
}

impl Step {
    /// Applies this step's changes to a snapshot, in the order delete, apply, label.
    pub fn apply_to(&self, snapshot: &mut Snapshot) -> Result<(), String> {
        for d in &self.delete {
            let k = key(&d.kind, &d.namespace, &d.name)?;
            if !snapshot.remove(&k) {
                return Err(format!("delete: {k} does not exist"));
            }
        }
        for v in &self.apply {
            apply_object(snapshot, v)?;
        }
        for l in &self.label {
            let k = key(&l.kind, &l.namespace, &l.name)?;
            let labels = match k.kind {
                Kind::Namespace => {
                    // A namespace only implied by its pods becomes explicit when labelled.
                    let ns = snapshot
                        .namespaces
                        .entry(k.name.clone())
                        .or_insert_with(|| crate::model::Namespace::new(&k.name, Default::default()));
                    &mut ns.labels
                }
                Kind::Pod => {
                    let id = crate::model::ObjectRef::new(&k.namespace, &k.name);
                    &mut snapshot
                        .pods
                        .get_mut(&id)
                        .ok_or_else(|| format!("label: {k} does not exist"))?
                        .labels
                }
                _ => return Err(format!("label: cannot label a {}", k.kind)),
            };
            for r in &l.remove {
                labels.remove(r);
            }
            for (a, b) in &l.set {
                labels.insert(a.clone(), b.clone());
            }
        }
        Ok(())
    }

    pub fn expectations(&self) -> Result<Vec<PortExpectation>, String> {
        self.expect
            .iter()
            .map(|e| {
                let ports = e.ports.iter().map(|p| parse_port(p)).collect::<Result<Vec<_>, _>>()?;
                let expectations = Expectations::parse(&e.reachability)?;
                Ok(PortExpectation { ports, expectations })
            })
            .collect()
    }
}
