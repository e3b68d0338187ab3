//! The objects the loader reads: their kinds and identities, how one goes into or out of a
//! [`Snapshot`], and [`parse_object`], which reads one object by dispatching on its kind.

use std::fmt;

use serde_json::Value;

use super::admin::parse_admin_policy;
use super::core::{parse_node, parse_pod, Meta};
use super::diagnostic::{ferr, FieldError};
use super::field::req_str;
use super::networkpolicy::parse_policy;
use crate::model::*;

// === Objects ===

/// The kinds the compiler understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Node,
    NetworkPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "Namespace" => Some(Kind::Namespace),
            "Pod" => Some(Kind::Pod),
            "Node" => Some(Kind::Node),
            "NetworkPolicy" => Some(Kind::NetworkPolicy),
            "ClusterNetworkPolicy" => Some(Kind::ClusterNetworkPolicy),
            "AdminNetworkPolicy" => Some(Kind::AdminNetworkPolicy),
            "BaselineAdminNetworkPolicy" => Some(Kind::BaselineAdminNetworkPolicy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => "policy.networking.k8s.io/v1alpha1",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::NetworkPolicy)
    }

    /// The admin policy kinds, served by the API server only where their CRDs are installed.
    pub const ADMIN: [Kind; 3] = [
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    /// The resource name of the kind in the API (`kubectl get <plural>`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
            Kind::AdminNetworkPolicy => "adminnetworkpolicies",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
        }
    }

    /// The admin policy kind this is, if it is one.
    pub fn admin(self) -> Option<AdminKind> {
        match self {
            Kind::ClusterNetworkPolicy => Some(AdminKind::ClusterNetworkPolicy),
            Kind::AdminNetworkPolicy => Some(AdminKind::AdminNetworkPolicy),
            Kind::BaselineAdminNetworkPolicy => Some(AdminKind::BaselineAdminNetworkPolicy),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Node(Node),
    NetworkPolicy(NetworkPolicy),
    AdminPolicy(AdminPolicy),
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Namespace(n) => (Kind::Namespace, String::new(), n.name.clone()),
            Object::Node(n) => (Kind::Node, String::new(), n.name.clone()),
            Object::Pod(p) => (Kind::Pod, p.namespace.clone(), p.name.clone()),
            Object::NetworkPolicy(p) => (Kind::NetworkPolicy, p.namespace.clone(), p.name.clone()),
            Object::AdminPolicy(p) => (
                match p.kind {
                    AdminKind::ClusterNetworkPolicy => Kind::ClusterNetworkPolicy,
                    AdminKind::AdminNetworkPolicy => Kind::AdminNetworkPolicy,
                    AdminKind::BaselineAdminNetworkPolicy => Kind::BaselineAdminNetworkPolicy,
                },
                String::new(),
                p.name.clone(),
            ),
        };
        ObjectKey { kind, namespace, name }
    }
}

impl Snapshot {
    /// Inserts or replaces an object (what `kubectl apply` does to the stored state).
    pub fn upsert(&mut self, obj: Object) {
        match obj {
            Object::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Object::Node(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            Object::Pod(p) => {
                self.pods.insert(p.id(), p);
            }
            Object::NetworkPolicy(p) => {
                self.policies.insert(p.id(), p);
            }
            Object::AdminPolicy(p) => {
                self.admin_policies.insert(p.id(), p);
            }
        }
    }

    /// Removes an object; returns whether it existed.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let id = ObjectRef::new(&key.namespace, &key.name);
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Node => self.nodes.remove(&key.name).is_some(),
            Kind::Pod => self.pods.remove(&id).is_some(),
            Kind::NetworkPolicy => self.policies.remove(&id).is_some(),
            Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => {
                let kind = key.kind.admin().expect("admin kind");
                self.admin_policies.remove(&AdminRef::new(kind, &key.name)).is_some()
            }
        }
    }
}

/// What one document turned into.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    Object(Object),
    /// A kind the compiler does not read (Deployment, Service, ...).
    Skipped {
        kind: String,
        name: String,
    },
}

// === Parsing one object ===

/// Parses one object. On success also returns warnings (fields that were adjusted).
pub fn parse_object(v: &Value) -> Result<(Parsed, Vec<FieldError>), FieldError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ferr("", "a Kubernetes object must be a mapping"))?;
    let kind_s = req_str(obj, "kind", "")?;
    let api_version = req_str(obj, "apiVersion", "")?;
    let Some(kind) = Kind::parse(kind_s) else {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_string();
        return Ok((
            Parsed::Skipped {
                kind: format!("{api_version}/{kind_s}"),
                name,
            },
            Vec::new(),
        ));
    };
    if api_version != kind.api_version() {
        return Err(ferr(
            "apiVersion",
            format!(
                "unsupported apiVersion {api_version:?} for {kind} (expected {:?})",
                kind.api_version()
            ),
        ));
    }
    let mut warnings = Vec::new();
    let meta = Meta::parse(obj, kind)?;
    let parsed = match kind {
        Kind::Namespace => Object::Namespace(Namespace::new(meta.name, meta.labels)),
        Kind::Node => Object::Node(parse_node(obj, meta)?),
        Kind::Pod => Object::Pod(parse_pod(obj, meta)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(parse_policy(obj, meta, &mut warnings)?),
        Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => {
            let kind = kind.admin().expect("admin kind");
            Object::AdminPolicy(parse_admin_policy(obj, meta, kind, &mut warnings)?)
        }
    };
    Ok((Parsed::Object(parsed), warnings))
}
