//! Reading Kubernetes objects (YAML or JSON, multi-document, `kind: List`) into a [`Snapshot`].
//!
//! Every problem becomes a [`Diagnostic`] naming the source, the object and the field; the object
//! in question is skipped and everything else is kept. The loader does no I/O: callers hand it
//! text with a source name (a path, `-`, or `apiserver`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::cidr::Cidr;
use crate::model::*;

// === Diagnostics ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational (a skipped kind).
    Note,
    /// Something was adjusted or looks wrong, but the object is kept.
    Warning,
    /// The object was rejected and is not enforced.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A problem with the input, located as precisely as possible.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// File path, `-` for stdin, or another origin name.
    pub source: String,
    /// `Kind namespace/name`, or `document N` when the object has no usable name.
    pub object: Option<String>,
    /// JSON path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.source)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A field-level problem before it is attached to a source and object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn ferr(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

type FResult<T> = Result<T, FieldError>;

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

// === impl Loader ===

/// Accumulates objects from any number of sources into one snapshot.
#[derive(Debug, Default)]
pub struct Loader {
    snapshot: Snapshot,
    origins: BTreeMap<ObjectKey, String>,
    diagnostics: Vec<Diagnostic>,
    documents: usize,
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every document of a YAML (or JSON, which is YAML) text.
    pub fn add_text(&mut self, source: &str, text: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_name = format!("document {}", i + 1);
            match serde::Deserialize::deserialize(doc) {
                Ok(Value::Null) => {}
                Ok(v) => self.add_value(source, &doc_name, &v),
                Err(e) => {
                    self.diag(
                        Severity::Error,
                        source,
                        Some(doc_name),
                        None,
                        format!("invalid YAML: {e}"),
                    );
                    // The YAML stream cannot be resumed after a syntax error.
                    break;
                }
            }
        }
    }

    /// Adds one decoded document: an object or a list of objects.
    pub fn add_value(&mut self, source: &str, doc_name: &str, value: &Value) {
        self.documents += 1;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        if let (true, Some(items)) = (kind == "List" || kind.ends_with("List"), value.get("items")) {
            let Some(items) = items.as_array() else {
                self.diag(
                    Severity::Error,
                    source,
                    Some(doc_name.into()),
                    Some("items".into()),
                    "must be a list".into(),
                );
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let name = format!("{doc_name} items[{i}]");
                self.add_object(source, &name, item);
            }
            return;
        }
        self.add_object(source, doc_name, value);
    }

    fn add_object(&mut self, source: &str, doc_name: &str, value: &Value) {
        match parse_object(value) {
            Ok((Parsed::Object(obj), warnings)) => {
                let key = obj.key();
                for w in warnings {
                    self.diag(
                        Severity::Warning,
                        source,
                        Some(key.to_string()),
                        Some(w.field),
                        w.message,
                    );
                }
                if let Some(first) = self.origins.get(&key) {
                    let msg = format!("duplicate {key} (first defined in {first}); this one is ignored");
                    self.diag(
                        Severity::Error,
                        source,
                        Some(key.to_string()),
                        Some("metadata.name".into()),
                        msg,
                    );
                    return;
                }
                self.origins.insert(key, source.to_string());
                self.snapshot.upsert(obj);
            }
            Ok((Parsed::Skipped { kind, name }, _)) => {
                let msg = format!("skipping {kind} {name}: policyc does not read this kind");
                self.diag(Severity::Note, source, None, None, msg);
            }
            Err(e) => {
                let object = describe(value).unwrap_or_else(|| doc_name.to_string());
                let msg = format!("{}; object ignored", e.message);
                self.diag(
                    Severity::Error,
                    source,
                    Some(object),
                    Some(e.field).filter(|f| !f.is_empty()),
                    msg,
                );
            }
        }
    }

    /// Records a problem found outside the parser (an unreadable file, say).
    pub fn diag(
        &mut self,
        severity: Severity,
        source: &str,
        object: Option<String>,
        field: Option<String>,
        message: String,
    ) {
        self.diagnostics.push(Diagnostic {
            severity,
            source: source.to_string(),
            object,
            field,
            message,
        });
    }

    /// Number of objects loaded so far.
    pub fn object_count(&self) -> usize {
        self.origins.len()
    }

    pub fn finish(self) -> (Snapshot, Vec<Diagnostic>) {
        (self.snapshot, self.diagnostics)
    }
}

/// `Kind ns/name` of a raw object, for messages about objects that failed to parse.
fn describe(v: &Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) => Some(format!("{kind} {ns}/{name}")),
        None if Kind::parse(kind).is_some_and(Kind::namespaced) => Some(format!("{kind} default/{name}")),
        None => Some(format!("{kind} {name}")),
    }
}

// === Parsing ===

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

struct Meta {
    name: String,
    namespace: String,
    labels: Labels,
    generation: Option<i64>,
}

impl Meta {
    fn parse(obj: &Map<String, Value>, kind: Kind) -> FResult<Meta> {
        let m = req_map(obj, "metadata", "")?;
        let name = req_str(m, "name", "metadata")?;
        if name.is_empty() {
            return Err(ferr("metadata.name", "must not be empty"));
        }
        let namespace = match opt_str(m, "namespace", "metadata")? {
            Some(ns) if kind.namespaced() => ns.to_string(),
            _ if kind.namespaced() => "default".to_string(),
            _ => String::new(),
        };
        let labels = match m.get("labels") {
            None | Some(Value::Null) => Labels::new(),
            Some(v) => string_map(v, "metadata.labels")?,
        };
        let generation = match m.get("generation") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| ferr("metadata.generation", "must be an integer"))?,
            ),
        };
        Ok(Meta {
            name: name.to_string(),
            namespace,
            labels,
            generation,
        })
    }
}

fn parse_node(obj: &Map<String, Value>, meta: Meta) -> FResult<Node> {
    let mut internal_ips = Vec::new();
    let mut addresses = Vec::new();
    let mut pod_cidrs = Vec::new();
    if let Some(spec) = opt_map(obj, "spec", "")? {
        let mut cidrs: Vec<(String, &Value)> = Vec::new();
        if let Some(v) = spec.get("podCIDR").filter(|v| !v.is_null()) {
            cidrs.push(("spec.podCIDR".into(), v));
        }
        for (i, v) in opt_list(spec, "podCIDRs", "spec")?.iter().enumerate() {
            cidrs.push((format!("spec.podCIDRs[{i}]"), v));
        }
        for (field, v) in cidrs {
            let s = v.as_str().ok_or_else(|| ferr(&field, "must be a string"))?;
            let c: Cidr = s.parse().map_err(|e| ferr(&field, format!("{e}")))?;
            if !pod_cidrs.contains(&c) {
                pod_cidrs.push(c);
            }
        }
    }
    if let Some(status) = opt_map(obj, "status", "")? {
        for (i, a) in opt_list(status, "addresses", "status")?.iter().enumerate() {
            let f = format!("status.addresses[{i}]");
            let a = a.as_object().ok_or_else(|| ferr(&f, "must be a mapping"))?;
            let internal = opt_str(a, "type", &f)? == Some("InternalIP");
            let addr = match opt_str(a, "address", &f)? {
                Some(addr) => addr,
                None if internal => return Err(ferr(format!("{f}.address"), "required")),
                None => continue,
            };
            let ip = match addr.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) if internal => {
                    return Err(ferr(format!("{f}.address"), format!("invalid IP address {addr:?}")));
                }
                // Hostname, InternalDNS, ExternalDNS: names, not addresses.
                Err(_) => continue,
            };
            if internal && !internal_ips.contains(&ip) {
                internal_ips.push(ip);
            }
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(Node {
        name: meta.name,
        labels: meta.labels,
        addresses,
        internal_ips,
        pod_cidrs,
    })
}

fn parse_pod(obj: &Map<String, Value>, meta: Meta) -> FResult<Pod> {
    let mut node = None;
    let mut host_network = false;
    let mut ports = Vec::new();
    if let Some(spec) = opt_map(obj, "spec", "")? {
        node = opt_str(spec, "nodeName", "spec")?.map(str::to_string);
        host_network = match spec.get("hostNetwork") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ferr("spec.hostNetwork", "must be true or false"))?,
        };
        let mut names = BTreeSet::new();
        for (ci, c) in opt_list(spec, "containers", "spec")?.iter().enumerate() {
            let cf = format!("spec.containers[{ci}]");
            let c = c.as_object().ok_or_else(|| ferr(&cf, "must be a mapping"))?;
            for (pi, p) in opt_list(c, "ports", &cf)?.iter().enumerate() {
                let pf = format!("{cf}.ports[{pi}]");
                let p = p.as_object().ok_or_else(|| ferr(&pf, "must be a mapping"))?;
                let port = port_number(p.get("containerPort"), &format!("{pf}.containerPort"))?
                    .ok_or_else(|| ferr(format!("{pf}.containerPort"), "required"))?;
                let protocol = protocol(p, &pf)?;
                let name = opt_str(p, "name", &pf)?.map(str::to_string);
                if let Some(n) = &name {
                    if !names.insert(n.clone()) {
                        return Err(ferr(
                            format!("{pf}.name"),
                            format!("duplicate port name {n:?} in this pod"),
                        ));
                    }
                }
                ports.push(ContainerPort { name, port, protocol });
            }
        }
    }
    let mut phase = None;
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = opt_map(obj, "status", "")? {
        phase = opt_str(status, "phase", "status")?.map(str::to_string);
        let mut raw: Vec<(String, &str)> = Vec::new();
        for (i, v) in opt_list(status, "podIPs", "status")?.iter().enumerate() {
            let f = format!("status.podIPs[{i}]");
            let v = v.as_object().ok_or_else(|| ferr(&f, "must be a mapping with an ip"))?;
            raw.push((format!("{f}.ip"), req_str(v, "ip", &f)?));
        }
        if raw.is_empty() {
            if let Some(ip) = opt_str(status, "podIP", "status")? {
                raw.push(("status.podIP".into(), ip));
            }
        }
        for (f, s) in raw {
            let ip: IpAddr = s.parse().map_err(|_| ferr(f, format!("invalid IP address {s:?}")))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Ok(Pod {
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        node,
        host_network,
        phase,
        ips,
        ports,
    })
}

const SPEC_FIELDS: &[&str] = &["podSelector", "policyTypes", "ingress", "egress"];
const INGRESS_FIELDS: &[&str] = &["from", "ports"];
const EGRESS_FIELDS: &[&str] = &["to", "ports"];
const PEER_FIELDS: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];
const IPBLOCK_FIELDS: &[&str] = &["cidr", "except"];
const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];
const REQUIREMENT_FIELDS: &[&str] = &["key", "operator", "values"];

/// Unknown fields in a policy are errors, as `kubectl apply` (strict validation) makes them: a
/// misspelt `from` would otherwise silently become "allow from everywhere".
fn known_fields(m: &Map<String, Value>, allowed: &[&str], path: &str) -> FResult<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ferr(
                join(path, k),
                format!("unknown field {k:?} (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn parse_policy(obj: &Map<String, Value>, meta: Meta, warnings: &mut Vec<FieldError>) -> FResult<NetworkPolicy> {
    let spec = req_map(obj, "spec", "")?;
    known_fields(spec, SPEC_FIELDS, "spec")?;
    // A missing podSelector decodes to the empty selector in the API server: all pods.
    let pod_selector = opt_selector(spec.get("podSelector"), "spec.podSelector")?.unwrap_or_default();
    let ingress = rules(spec, Direction::Ingress, warnings)?;
    let egress = rules(spec, Direction::Egress, warnings)?;
    let mut policy_types = Vec::new();
    let types = opt_list(spec, "policyTypes", "spec")?;
    for (i, t) in types.iter().enumerate() {
        let f = format!("spec.policyTypes[{i}]");
        policy_types.push(match t.as_str() {
            Some("Ingress") => Direction::Ingress,
            Some("Egress") => Direction::Egress,
            _ => {
                return Err(ferr(
                    f,
                    format!("invalid policy type {t} (expected \"Ingress\" or \"Egress\")"),
                ))
            }
        });
    }
    if types.is_empty() {
        // The API's default: Ingress always, Egress when egress rules are present.
        policy_types.push(Direction::Ingress);
        if !egress.is_empty() {
            policy_types.push(Direction::Egress);
        }
    }
    policy_types.sort();
    policy_types.dedup();
    for d in [Direction::Ingress, Direction::Egress] {
        let present = match d {
            Direction::Ingress => !ingress.is_empty(),
            Direction::Egress => !egress.is_empty(),
        };
        if present && !policy_types.contains(&d) {
            warnings.push(ferr(
                format!("spec.{d}"),
                format!("has rules but policyTypes does not list {d:?}; these rules have no effect"),
            ));
        }
    }
    Ok(NetworkPolicy {
        namespace: meta.namespace,
        name: meta.name,
        generation: meta.generation,
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn rules(spec: &Map<String, Value>, d: Direction, warnings: &mut Vec<FieldError>) -> FResult<Vec<Rule>> {
    let (key, peers_key, fields) = match d {
        Direction::Ingress => ("ingress", "from", INGRESS_FIELDS),
        Direction::Egress => ("egress", "to", EGRESS_FIELDS),
    };
    let mut out = Vec::new();
    for (i, r) in opt_list(spec, key, "spec")?.iter().enumerate() {
        let rf = format!("spec.{key}[{i}]");
        let r = match r {
            Value::Null => {
                out.push(Rule::default());
                continue;
            }
            Value::Object(m) => m,
            _ => return Err(ferr(rf, "must be a mapping")),
        };
        known_fields(r, fields, &rf)?;
        let mut peers = Vec::new();
        for (pi, p) in opt_list(r, peers_key, &rf)?.iter().enumerate() {
            peers.push(peer(p, &format!("{rf}.{peers_key}[{pi}]"), warnings)?);
        }
        let mut ports = Vec::new();
        for (pi, p) in opt_list(r, "ports", &rf)?.iter().enumerate() {
            ports.push(port_spec(p, &format!("{rf}.ports[{pi}]"))?);
        }
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

fn peer(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<Peer> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, PEER_FIELDS, f)?;
    let pod_selector = opt_selector(m.get("podSelector"), &format!("{f}.podSelector"))?;
    let namespace_selector = opt_selector(m.get("namespaceSelector"), &format!("{f}.namespaceSelector"))?;
    match m.get("ipBlock").filter(|v| !v.is_null()) {
        Some(b) => {
            if pod_selector.is_some() || namespace_selector.is_some() {
                return Err(ferr(
                    f,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            Ok(Peer::IpBlock(ip_block(b, &format!("{f}.ipBlock"), warnings)?))
        }
        None if pod_selector.is_none() && namespace_selector.is_none() => Err(ferr(
            f,
            "a peer must set at least one of podSelector, namespaceSelector or ipBlock",
        )),
        None => Ok(Peer::Pods {
            namespace_selector,
            pod_selector,
        }),
    }
}

fn ip_block(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<IpBlock> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, IPBLOCK_FIELDS, f)?;
    let cidr_s = req_str(m, "cidr", f)?;
    let cf = format!("{f}.cidr");
    let (cidr, fixed) = Cidr::parse_lenient(cidr_s).map_err(|e| ferr(&cf, e.to_string()))?;
    if fixed {
        warnings.push(ferr(&cf, format!("{cidr_s:?} has host bits set; using {cidr}")));
    }
    let mut except = Vec::new();
    for (i, e) in opt_list(m, "except", f)?.iter().enumerate() {
        let ef = format!("{f}.except[{i}]");
        let s = e.as_str().ok_or_else(|| ferr(&ef, "must be a string"))?;
        let (c, fixed) = Cidr::parse_lenient(s).map_err(|e| ferr(&ef, e.to_string()))?;
        if fixed {
            warnings.push(ferr(&ef, format!("{s:?} has host bits set; using {c}")));
        }
        if !cidr.strictly_contains(&c) {
            return Err(ferr(ef, format!("{c} must be a strict subset of cidr {cidr}")));
        }
        except.push(c);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr, except })
}

fn port_spec(v: &Value, f: &str) -> FResult<PortSpec> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, PORT_FIELDS, f)?;
    let protocol = protocol(m, f)?;
    let pf = format!("{f}.port");
    let end_port = port_number(m.get("endPort"), &format!("{f}.endPort"))?;
    let port = match m.get("port") {
        None | Some(Value::Null) => {
            if end_port.is_some() {
                return Err(ferr(format!("{f}.endPort"), "endPort requires a numeric port"));
            }
            PortRef::All
        }
        Some(Value::String(s)) => {
            if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
                return Err(ferr(
                    pf,
                    format!("{s:?} is a string: write the number without quotes, or use a port name"),
                ));
            }
            validate_port_name(s).map_err(|m| ferr(&pf, m))?;
            if end_port.is_some() {
                return Err(ferr(
                    format!("{f}.endPort"),
                    format!("endPort cannot be used with the named port {s:?}"),
                ));
            }
            PortRef::Named(s.clone())
        }
        Some(v) => {
            let first = port_number(Some(v), &pf)?.unwrap_or(0);
            let last = end_port.unwrap_or(first);
            if last < first {
                return Err(ferr(
                    format!("{f}.endPort"),
                    format!("endPort {last} is below port {first}"),
                ));
            }
            PortRef::Range { first, last }
        }
    };
    Ok(PortSpec { protocol, port })
}

/// IANA service name rules, as the API server validates named ports.
fn validate_port_name(s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() || s.len() > 15 || !ok_chars {
        return Err(format!(
            "invalid port name {s:?}: at most 15 lowercase letters, digits and '-'"
        ));
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) || s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err(format!(
            "invalid port name {s:?}: needs a letter, no leading, trailing or double '-'"
        ));
    }
    Ok(())
}

fn protocol(m: &Map<String, Value>, f: &str) -> FResult<Protocol> {
    match opt_str(m, "protocol", f)? {
        None => Ok(Protocol::Tcp),
        Some(s @ ("TCP" | "UDP" | "SCTP")) => Ok(Protocol::parse(s).expect("known protocol")),
        Some(s) => Err(ferr(
            join(f, "protocol"),
            format!("unsupported protocol {s:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn port_number(v: Option<&Value>, f: &str) -> FResult<Option<u16>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=65535).contains(&n) => Ok(Some(n as u16)),
            Some(n) => Err(ferr(f, format!("port {n} is out of range 1-65535"))),
            None => Err(ferr(f, format!("must be a port number, got {v}"))),
        },
    }
}

fn opt_selector(v: Option<&Value>, f: &str) -> FResult<Option<LabelSelector>> {
    let m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ferr(f, "must be a label selector mapping")),
    };
    known_fields(m, SELECTOR_FIELDS, f)?;
    let match_labels = match m.get("matchLabels") {
        None | Some(Value::Null) => Labels::new(),
        Some(v) => string_map(v, &format!("{f}.matchLabels"))?,
    };
    let mut match_expressions = Vec::new();
    for (i, e) in opt_list(m, "matchExpressions", f)?.iter().enumerate() {
        let ef = format!("{f}.matchExpressions[{i}]");
        let e = e.as_object().ok_or_else(|| ferr(&ef, "must be a mapping"))?;
        known_fields(e, REQUIREMENT_FIELDS, &ef)?;
        let key = req_str(e, "key", &ef)?.to_string();
        let op = req_str(e, "operator", &ef)?;
        let operator = match op {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => {
                return Err(ferr(
                    format!("{ef}.operator"),
                    format!("unknown operator {op:?} (expected In, NotIn, Exists or DoesNotExist)"),
                ))
            }
        };
        let mut values = Vec::new();
        for (vi, v) in opt_list(e, "values", &ef)?.iter().enumerate() {
            let s = v.as_str().ok_or_else(|| {
                ferr(
                    format!("{ef}.values[{vi}]"),
                    "must be a string (quote numbers and booleans)",
                )
            })?;
            values.push(s.to_string());
        }
        values.sort();
        values.dedup();
        match (operator, values.is_empty()) {
            (Operator::In | Operator::NotIn, true) => {
                return Err(ferr(
                    format!("{ef}.values"),
                    format!("operator {op} needs at least one value"),
                ))
            }
            (Operator::Exists | Operator::DoesNotExist, false) => {
                return Err(ferr(format!("{ef}.values"), format!("operator {op} takes no values")))
            }
            _ => {}
        }
        match_expressions.push(Requirement { key, operator, values });
    }
    match_expressions.sort();
    match_expressions.dedup();
    Ok(Some(LabelSelector {
        match_labels,
        match_expressions,
    }))
}

// === Admin policies ===

const CNP_SPEC_FIELDS: &[&str] = &["tier", "priority", "subject", "ingress", "egress"];
const ANP_SPEC_FIELDS: &[&str] = &["priority", "subject", "ingress", "egress"];
const BANP_SPEC_FIELDS: &[&str] = &["subject", "ingress", "egress"];
const ADMIN_SUBJECT_FIELDS: &[&str] = &["namespaces", "pods"];
const NAMESPACED_POD_FIELDS: &[&str] = &["namespaceSelector", "podSelector"];
const CNP_INGRESS_FIELDS: &[&str] = &["name", "action", "from", "protocols"];
const CNP_EGRESS_FIELDS: &[&str] = &["name", "action", "to", "protocols"];
const ANP_INGRESS_FIELDS: &[&str] = &["name", "action", "from", "ports"];
const ANP_EGRESS_FIELDS: &[&str] = &["name", "action", "to", "ports"];
const ADMIN_INGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods"];
const CNP_EGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods", "nodes", "networks", "domainNames"];
const ANP_EGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods", "nodes", "networks"];
/// Egress peers that are addresses rather than pods: no named ports, and no place in ingress.
const ADDRESS_PEER_FIELDS: &[&str] = &["nodes", "networks", "domainNames"];
const CNP_PROTOCOL_FIELDS: &[&str] = &["tcp", "udp", "sctp", "destinationNamedPort"];
const CNP_PROTOCOL_MATCH_FIELDS: &[&str] = &["destinationPort"];
const CNP_PORT_FIELDS: &[&str] = &["number", "range"];
const CNP_RANGE_FIELDS: &[&str] = &["start", "end"];
const ANP_PORT_FIELDS: &[&str] = &["portNumber", "namedPort", "portRange"];
const ANP_PORT_NUMBER_FIELDS: &[&str] = &["protocol", "port"];
const ANP_PORT_RANGE_FIELDS: &[&str] = &["protocol", "start", "end"];

/// Most CIDRs (and domain names) one `networks` (`domainNames`) peer may list.
const MAX_ADDRESS_ITEMS: usize = 25;
/// Longest rule name the API accepts, in characters.
const MAX_RULE_NAME: usize = 100;
/// Highest (least important) priority of the admin APIs.
const MAX_ADMIN_PRIORITY: i64 = 1000;

/// The shape of one admin API: ClusterNetworkPolicy (v1alpha2) differs from the v1alpha1 kinds in
/// its action spelling, its port syntax and its list limits.
struct AdminApi {
    kind: AdminKind,
    /// Most rules per direction; also the most peers per rule and port entries per rule.
    max_items: usize,
    /// Name of the port list of a rule: `protocols` (v1alpha2) or `ports` (v1alpha1).
    ports_key: &'static str,
}

impl AdminApi {
    fn of(kind: AdminKind) -> AdminApi {
        match kind {
            AdminKind::ClusterNetworkPolicy => AdminApi {
                kind,
                max_items: 25,
                ports_key: "protocols",
            },
            AdminKind::AdminNetworkPolicy | AdminKind::BaselineAdminNetworkPolicy => AdminApi {
                kind,
                max_items: 100,
                ports_key: "ports",
            },
        }
    }

    fn is_cnp(&self) -> bool {
        self.kind == AdminKind::ClusterNetworkPolicy
    }

    fn rule_fields(&self, d: Direction) -> &'static [&'static str] {
        match (self.is_cnp(), d) {
            (true, Direction::Ingress) => CNP_INGRESS_FIELDS,
            (true, Direction::Egress) => CNP_EGRESS_FIELDS,
            (false, Direction::Ingress) => ANP_INGRESS_FIELDS,
            (false, Direction::Egress) => ANP_EGRESS_FIELDS,
        }
    }

    fn peer_fields(&self, d: Direction) -> &'static [&'static str] {
        match (self.is_cnp(), d) {
            (_, Direction::Ingress) => ADMIN_INGRESS_PEER_FIELDS,
            (true, Direction::Egress) => CNP_EGRESS_PEER_FIELDS,
            (false, Direction::Egress) => ANP_EGRESS_PEER_FIELDS,
        }
    }

    fn action(&self, s: &str, f: &str) -> FResult<AdminAction> {
        let action = match (self.kind, s) {
            (AdminKind::ClusterNetworkPolicy, "Accept") => Some(AdminAction::Accept),
            (AdminKind::AdminNetworkPolicy | AdminKind::BaselineAdminNetworkPolicy, "Allow") => {
                Some(AdminAction::Accept)
            }
            (_, "Deny") => Some(AdminAction::Deny),
            (AdminKind::ClusterNetworkPolicy | AdminKind::AdminNetworkPolicy, "Pass") => Some(AdminAction::Pass),
            _ => None,
        };
        action.ok_or_else(|| {
            let (expected, hint) = match self.kind {
                AdminKind::ClusterNetworkPolicy => (
                    "Accept, Deny or Pass",
                    if s == "Allow" {
                        "; v1alpha2 spells Allow as Accept"
                    } else {
                        ""
                    },
                ),
                AdminKind::AdminNetworkPolicy => (
                    "Allow, Deny or Pass",
                    if s == "Accept" {
                        "; v1alpha1 spells Accept as Allow"
                    } else {
                        ""
                    },
                ),
                AdminKind::BaselineAdminNetworkPolicy => (
                    "Allow or Deny",
                    match s {
                        "Pass" => "; the baseline is the last tier, there is nothing to pass to",
                        "Accept" => "; v1alpha1 spells Accept as Allow",
                        _ => "",
                    },
                ),
            };
            ferr(
                f,
                format!("invalid action {s:?} for {} (expected {expected}){hint}", self.kind),
            )
        })
    }
}

/// Parses a ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy.
fn parse_admin_policy(
    obj: &Map<String, Value>,
    meta: Meta,
    kind: AdminKind,
    warnings: &mut Vec<FieldError>,
) -> FResult<AdminPolicy> {
    let api = AdminApi::of(kind);
    let spec = req_map(obj, "spec", "")?;
    let (tier, priority) = match kind {
        AdminKind::ClusterNetworkPolicy => {
            known_fields(spec, CNP_SPEC_FIELDS, "spec")?;
            let tier = match req_str(spec, "tier", "spec")? {
                "Admin" => Tier::Admin,
                "Baseline" => Tier::Baseline,
                t => {
                    return Err(ferr(
                        "spec.tier",
                        format!("invalid tier {t:?} (expected Admin or Baseline)"),
                    ))
                }
            };
            (tier, admin_priority(spec)?)
        }
        AdminKind::AdminNetworkPolicy => {
            known_fields(spec, ANP_SPEC_FIELDS, "spec")?;
            (Tier::Admin, admin_priority(spec)?)
        }
        AdminKind::BaselineAdminNetworkPolicy => {
            known_fields(spec, BANP_SPEC_FIELDS, "spec")?;
            if meta.name != "default" {
                return Err(ferr(
                    "metadata.name",
                    format!(
                        "a BaselineAdminNetworkPolicy must be named \"default\" (one per cluster), not {:?}",
                        meta.name
                    ),
                ));
            }
            // A BaselineAdminNetworkPolicy has no priority: it is the whole v1alpha1 baseline. The
            // highest priority the API allows puts it after every baseline-tier
            // ClusterNetworkPolicy, and `order_key` puts it after one of equal priority, so
            // ClusterNetworkPolicies always take precedence over it within the Baseline tier.
            (Tier::Baseline, MAX_ADMIN_PRIORITY as i32)
        }
    };
    let subject = admin_subject(spec)?;
    let ingress = admin_rules(&api, spec, Direction::Ingress, warnings)?;
    let egress = admin_rules(&api, spec, Direction::Egress, warnings)?;
    Ok(AdminPolicy {
        kind,
        name: meta.name,
        generation: meta.generation,
        tier,
        priority,
        subject,
        ingress,
        egress,
    })
}

fn admin_priority(spec: &Map<String, Value>) -> FResult<i32> {
    let f = "spec.priority";
    match spec.get("priority") {
        None | Some(Value::Null) => Err(ferr(f, "required")),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_ADMIN_PRIORITY).contains(&n) => Ok(n as i32),
            Some(n) => Err(ferr(f, format!("priority {n} is out of range 0-{MAX_ADMIN_PRIORITY}"))),
            None => Err(ferr(f, format!("must be an integer, got {v}"))),
        },
    }
}

/// The one field of `m` (among `allowed`, whose other keys are already rejected) that is set.
fn exactly_one<'a>(m: &'a Map<String, Value>, allowed: &[&str], f: &str) -> FResult<(&'a str, &'a Value)> {
    let set: Vec<(&str, &Value)> = m
        .iter()
        .filter(|(k, v)| !v.is_null() && allowed.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    match set.as_slice() {
        [one] => Ok(*one),
        [] => Err(ferr(f, format!("exactly one of {} must be set", allowed.join(", ")))),
        [a, b, ..] => Err(ferr(
            f,
            format!(
                "exactly one of {} must be set, found {} and {}",
                allowed.join(", "),
                a.0,
                b.0
            ),
        )),
    }
}

fn admin_subject(spec: &Map<String, Value>) -> FResult<AdminSubject> {
    let f = "spec.subject";
    let m = req_map(spec, "subject", "spec")?;
    known_fields(m, ADMIN_SUBJECT_FIELDS, f)?;
    match exactly_one(m, ADMIN_SUBJECT_FIELDS, f)? {
        ("namespaces", v) => Ok(AdminSubject::Namespaces(selector(v, &format!("{f}.namespaces"))?)),
        (_, v) => {
            let (namespace_selector, pod_selector) = namespaced_pod(v, &format!("{f}.pods"))?;
            Ok(AdminSubject::Pods {
                namespace_selector,
                pod_selector,
            })
        }
    }
}

/// A label selector that is set (not null).
fn selector(v: &Value, f: &str) -> FResult<LabelSelector> {
    Ok(opt_selector(Some(v), f)?.unwrap_or_default())
}

/// `{namespaceSelector, podSelector}`: a missing namespace selector is the empty one (every
/// namespace, the Go zero value); the pod selector is required, `{}` being every pod.
fn namespaced_pod(v: &Value, f: &str) -> FResult<(LabelSelector, LabelSelector)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, NAMESPACED_POD_FIELDS, f)?;
    let namespace_selector = opt_selector(m.get("namespaceSelector"), &format!("{f}.namespaceSelector"))?;
    let pod_selector = opt_selector(m.get("podSelector"), &format!("{f}.podSelector"))?.ok_or_else(|| {
        ferr(
            format!("{f}.podSelector"),
            "required (use {} for every pod of the selected namespaces)",
        )
    })?;
    Ok((namespace_selector.unwrap_or_default(), pod_selector))
}

fn admin_rules(
    api: &AdminApi,
    spec: &Map<String, Value>,
    d: Direction,
    warnings: &mut Vec<FieldError>,
) -> FResult<Vec<AdminRule>> {
    let key = d.as_str();
    let list = opt_list(spec, key, "spec")?;
    if list.len() > api.max_items {
        return Err(ferr(
            format!("spec.{key}"),
            format!("at most {} rules are allowed, found {}", api.max_items, list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| admin_rule(api, r, d, &format!("spec.{key}[{i}]"), warnings))
        .collect()
}

/// How one peer of an admin rule reads.
enum PeerRead {
    /// A peer with its one field (`namespaces`, `pods`, ...).
    Peer(AdminPeer, &'static str),
    /// No field policyc knows is set: a newer API version's peer, handled by failing closed.
    Unreadable(String),
}

fn admin_rule(api: &AdminApi, v: &Value, d: Direction, rf: &str, warnings: &mut Vec<FieldError>) -> FResult<AdminRule> {
    let r = v.as_object().ok_or_else(|| ferr(rf, "must be a mapping"))?;
    known_fields(r, api.rule_fields(d), rf)?;
    let name = match opt_str(r, "name", rf)? {
        Some(n) if n.chars().count() > MAX_RULE_NAME => {
            return Err(ferr(
                format!("{rf}.name"),
                format!("must be at most {MAX_RULE_NAME} characters long"),
            ))
        }
        Some("") | None => None,
        Some(n) => Some(n.to_string()),
    };
    let action = api.action(req_str(r, "action", rf)?, &format!("{rf}.action"))?;

    let peers_key = match d {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let pf = format!("{rf}.{peers_key}");
    let raw_peers = opt_list(r, peers_key, rf)?;
    if raw_peers.is_empty() {
        return Err(ferr(&pf, "required: list at least one peer"));
    }
    if raw_peers.len() > api.max_items {
        return Err(ferr(
            &pf,
            format!("at most {} peers are allowed, found {}", api.max_items, raw_peers.len()),
        ));
    }
    let mut peers = Vec::new();
    let mut unreadable = Vec::new();
    let mut address_peer = None;
    for (i, p) in raw_peers.iter().enumerate() {
        let f = format!("{pf}[{i}]");
        match admin_peer(api, p, d, action, &f, warnings)? {
            PeerRead::Peer(peer, field) => {
                if address_peer.is_none() && ADDRESS_PEER_FIELDS.contains(&field) {
                    address_peer = Some(format!("{f}.{field}"));
                }
                peers.push(peer);
            }
            PeerRead::Unreadable(found) => {
                unreadable.push((f, found));
                peers.push(AdminPeer::Nothing);
            }
        }
    }

    let mut ports = Vec::new();
    let mut named_port = None;
    let ports_key = api.ports_key;
    let portsf = format!("{rf}.{ports_key}");
    match r.get(ports_key) {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(ferr(
                &portsf,
                "must list at least one entry (leave the field out to match every port and protocol)",
            ))
        }
        Some(Value::Array(list)) if list.len() > api.max_items => {
            return Err(ferr(
                &portsf,
                format!("at most {} entries are allowed, found {}", api.max_items, list.len()),
            ))
        }
        Some(Value::Array(list)) => {
            for (i, p) in list.iter().enumerate() {
                let f = format!("{portsf}[{i}]");
                let (specs, named) = if api.is_cnp() {
                    cnp_protocol(p, &f)?
                } else {
                    anp_port(p, &f, warnings)?
                };
                if named.is_some() && named_port.is_none() {
                    named_port = named;
                }
                ports.extend(specs);
            }
        }
        Some(_) => return Err(ferr(&portsf, "must be a list")),
    }
    // Every entry was an empty v1alpha1 range: the rule matches no port at all (an empty `ports`
    // would mean every port).
    let matches_no_port = ports.is_empty() && r.get(ports_key).is_some_and(|v| !v.is_null());
    // The API's CEL rule on egress rules: nodes, networks and domain names have no named ports.
    if let (Some(port_field), Some(peer_field)) = (&named_port, &address_peer) {
        return Err(ferr(
            port_field,
            format!("a named port cannot be used in a rule with the peer {peer_field}: only pods have named ports"),
        ));
    }

    // A peer this version of the API does not describe must fail closed (as the API requires of
    // implementations): it matches nothing in an Accept rule, and turns a Deny or Pass rule into
    // "deny everything".
    if !unreadable.is_empty() {
        let consequence = match action {
            AdminAction::Accept => "this peer matches nothing".to_string(),
            a => format!("this {a} rule denies all traffic instead"),
        };
        for (f, found) in unreadable {
            warnings.push(ferr(
                f,
                format!(
                    "{found}: not a peer policyc can read (expected one of {}); failing closed: {consequence}",
                    api.peer_fields(d).join(", ")
                ),
            ));
        }
        if action != AdminAction::Accept {
            return Ok(AdminRule {
                name,
                action: AdminAction::Deny,
                peers: vec![AdminPeer::Everything],
                ports: Vec::new(),
            });
        }
    }
    Ok(AdminRule {
        name,
        action,
        // A rule that can match no port matches no traffic: no peer.
        peers: if matches_no_port { Vec::new() } else { peers },
        ports,
    })
}

fn admin_peer(
    api: &AdminApi,
    v: &Value,
    d: Direction,
    action: AdminAction,
    f: &str,
    warnings: &mut Vec<FieldError>,
) -> FResult<PeerRead> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    let allowed = api.peer_fields(d);
    if d == Direction::Ingress {
        let egress_only = api
            .peer_fields(Direction::Egress)
            .iter()
            .filter(|k| !allowed.contains(k));
        for k in egress_only {
            if m.get(*k).is_some_and(|v| !v.is_null()) {
                return Err(ferr(
                    join(f, k),
                    format!(
                        "{k} is only allowed in egress peers (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    let any_known = m.iter().any(|(k, v)| !v.is_null() && allowed.contains(&k.as_str()));
    let unknown: Vec<String> = m
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("{k:?}"))
        .collect();
    if !any_known {
        return Ok(PeerRead::Unreadable(if unknown.is_empty() {
            "no field is set".to_string()
        } else {
            format!("only unknown fields ({})", unknown.join(", "))
        }));
    }
    // Next to a known field, an unknown one cannot come from a newer API version (which also
    // allows one field per peer): it is a mistake, rejected like any other unknown field.
    known_fields(m, allowed, f)?;
    let (field, v) = exactly_one(m, allowed, f)?;
    let vf = format!("{f}.{field}");
    let peer = match field {
        "namespaces" => PeerRead::Peer(AdminPeer::Namespaces(selector(v, &vf)?), "namespaces"),
        "pods" => {
            let (namespace_selector, pod_selector) = namespaced_pod(v, &vf)?;
            let pods = AdminPeer::Pods {
                namespace_selector,
                pod_selector,
            };
            PeerRead::Peer(pods, "pods")
        }
        "nodes" => PeerRead::Peer(AdminPeer::Nodes(selector(v, &vf)?), "nodes"),
        "networks" => PeerRead::Peer(AdminPeer::Networks(networks(v, &vf, warnings)?), "networks"),
        _ => {
            domain_names(v, &vf)?;
            let mut msg = "domain names are not resolved by policyc; this peer matches nothing".to_string();
            if action != AdminAction::Accept {
                msg.push_str(&format!(
                    " (the API supports domainNames in Accept rules only, not in {action} rules)"
                ));
            }
            warnings.push(ferr(&vf, msg));
            PeerRead::Peer(AdminPeer::Nothing, "domainNames")
        }
    };
    Ok(peer)
}

/// The list of an address peer (`networks`, `domainNames`): 1 to 25 strings.
fn address_list<'a>(v: &'a Value, f: &str) -> FResult<Vec<(String, &'a str)>> {
    let list = v.as_array().ok_or_else(|| ferr(f, "must be a list"))?;
    if list.is_empty() {
        return Err(ferr(f, "must list at least one entry"));
    }
    if list.len() > MAX_ADDRESS_ITEMS {
        return Err(ferr(
            f,
            format!("at most {MAX_ADDRESS_ITEMS} entries are allowed, found {}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let ef = format!("{f}[{i}]");
            let s = e.as_str().ok_or_else(|| ferr(&ef, "must be a string"))?;
            Ok((ef, s))
        })
        .collect()
}

fn networks(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<Vec<Cidr>> {
    let mut out = Vec::new();
    for (ef, s) in address_list(v, f)? {
        // Both API versions reject IPv4 addresses written inside IPv6 ones (`::ffff:10.0.0.0/104`).
        if s.contains(':') && s.contains('.') {
            return Err(ferr(
                ef,
                format!("invalid CIDR {s:?}: IPv4 addresses embedded in IPv6 ones are not supported"),
            ));
        }
        let (c, fixed) = Cidr::parse_lenient(s).map_err(|e| ferr(&ef, e.to_string()))?;
        if fixed {
            warnings.push(ferr(&ef, format!("{s:?} has host bits set; using {c}")));
        }
        out.push(c);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks domain names against the API's pattern: an optional `*.` prefix, then at least two
/// labels of letters, digits, `-` and `_` (not at either end of a label), and an optional final dot.
fn domain_names(v: &Value, f: &str) -> FResult<()> {
    for (ef, s) in address_list(v, f)? {
        let name = s.strip_prefix("*.").unwrap_or(s);
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&str> = name.split('.').collect();
        let label_ok = |l: &&str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(ferr(
                ef,
                format!("invalid domain name {s:?}: expected a name like example.com or *.example.com"),
            ));
        }
    }
    Ok(())
}

/// A named port carries no protocol in the admin APIs: it matches a container port of that name
/// whatever its protocol, so it stands for the name under each protocol.
fn named_port_specs(v: &Value, f: &str) -> FResult<Vec<PortSpec>> {
    let name = v.as_str().ok_or_else(|| ferr(f, "must be a string"))?;
    validate_port_name(name).map_err(|m| ferr(f, m))?;
    Ok(Protocol::ALL
        .iter()
        .map(|&protocol| PortSpec {
            protocol,
            port: PortRef::Named(name.to_string()),
        })
        .collect())
}

/// A required port number field.
fn req_port(m: &Map<String, Value>, key: &str, f: &str) -> FResult<u16> {
    let kf = join(f, key);
    port_number(m.get(key), &kf)?.ok_or_else(|| ferr(kf, "required"))
}

/// `start`/`end` of a port range: both required, start below end.
fn port_range(m: &Map<String, Value>, f: &str) -> FResult<PortRef> {
    let first = req_port(m, "start", f)?;
    let last = req_port(m, "end", f)?;
    if first >= last {
        return Err(ferr(
            join(f, "end"),
            format!("end {last} must be greater than start {first}"),
        ));
    }
    Ok(PortRef::Range { first, last })
}

/// One v1alpha2 `protocols` entry. Also returns the field path of a named port, if it is one.
fn cnp_protocol(v: &Value, f: &str) -> FResult<(Vec<PortSpec>, Option<String>)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, CNP_PROTOCOL_FIELDS, f)?;
    let (key, v) = exactly_one(m, CNP_PROTOCOL_FIELDS, f)?;
    let kf = format!("{f}.{key}");
    let protocol = match key {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return Ok((named_port_specs(v, &kf)?, Some(kf))),
    };
    let pm = v.as_object().ok_or_else(|| ferr(&kf, "must be a mapping"))?;
    known_fields(pm, CNP_PROTOCOL_MATCH_FIELDS, &kf)?;
    let df = format!("{kf}.destinationPort");
    let dm = req_map(pm, "destinationPort", &kf)?;
    known_fields(dm, CNP_PORT_FIELDS, &df)?;
    let port = match exactly_one(dm, CNP_PORT_FIELDS, &df)? {
        ("number", _) => {
            let n = req_port(dm, "number", &df)?;
            PortRef::Range { first: n, last: n }
        }
        (_, rv) => {
            let rf = format!("{df}.range");
            let rm = rv.as_object().ok_or_else(|| ferr(&rf, "must be a mapping"))?;
            known_fields(rm, CNP_RANGE_FIELDS, &rf)?;
            port_range(rm, &rf)?
        }
    };
    Ok((vec![PortSpec { protocol, port }], None))
}

/// One v1alpha1 `ports` entry. Also returns the field path of a named port, if it is one.
fn anp_port(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<(Vec<PortSpec>, Option<String>)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, ANP_PORT_FIELDS, f)?;
    let (key, v) = exactly_one(m, ANP_PORT_FIELDS, f)?;
    let kf = format!("{f}.{key}");
    if key == "namedPort" {
        return Ok((named_port_specs(v, &kf)?, Some(kf)));
    }
    let pm = v.as_object().ok_or_else(|| ferr(&kf, "must be a mapping"))?;
    let spec = if key == "portNumber" {
        known_fields(pm, ANP_PORT_NUMBER_FIELDS, &kf)?;
        let n = req_port(pm, "port", &kf)?;
        PortSpec {
            protocol: protocol(pm, &kf)?,
            port: PortRef::Range { first: n, last: n },
        }
    } else {
        known_fields(pm, ANP_PORT_RANGE_FIELDS, &kf)?;
        // v1alpha1 does not require start < end (the API server stores such ranges): start = end
        // is that one port, and start > end is empty.
        let first = req_port(pm, "start", &kf)?;
        let last = req_port(pm, "end", &kf)?;
        let protocol = protocol(pm, &kf)?;
        if first > last {
            warnings.push(ferr(
                join(&kf, "end"),
                format!("end {last} is below start {first}: this range matches no port"),
            ));
            return Ok((Vec::new(), None));
        }
        PortSpec {
            protocol,
            port: PortRef::Range { first, last },
        }
    };
    Ok((vec![spec], None))
}

// === Field access ===

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn req_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a str> {
    opt_str(m, key, path)?.ok_or_else(|| ferr(join(path, key), "required"))
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ferr(join(path, key), format!("must be a string, got {v}"))),
    }
}

fn req_map<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a Map<String, Value>> {
    opt_map(m, key, path)?.ok_or_else(|| ferr(join(path, key), "required"))
}

fn opt_map<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<Option<&'a Map<String, Value>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ferr(join(path, key), "must be a mapping")),
    }
}

fn opt_list<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a [Value]> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ferr(join(path, key), "must be a list")),
    }
}

fn string_map(v: &Value, f: &str) -> FResult<Labels> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping of strings"))?;
    let mut out = Labels::new();
    for (k, v) in m {
        let s = v.as_str().ok_or_else(|| {
            ferr(
                join(f, k),
                format!("must be a string, got {v} (quote numbers and booleans)"),
            )
        })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Snapshot, Vec<Diagnostic>) {
        let mut l = Loader::new();
        l.add_text("test.yaml", text);
        l.finish()
    }

    fn policy_error(spec: &str) -> String {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}"
        );
        let (snap, diags) = load(&text);
        assert!(snap.policies.is_empty(), "policy should be rejected: {spec}");
        let errors: Vec<_> = diags.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{diags:?}");
        errors[0].to_string()
    }

    #[test]
    fn bad_policies_name_object_and_field() {
        let cases = [
            (
                "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0/8}\n",
                "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR",
            ),
            (
                "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n",
                "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 must be a strict subset",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n",
                "spec.podSelector.matchExpressions[0].operator: unknown operator \"Equals\"",
            ),
            (
                "  egress:\n  - ports: [{port: 90, endPort: 80}]\n",
                "spec.egress[0].ports[0].endPort: endPort 80 is below port 90",
            ),
            (
                "  egress:\n  - ports: [{port: http, endPort: 80}]\n",
                "spec.egress[0].ports[0].endPort: endPort cannot be used with the named port",
            ),
            (
                "  ingress:\n  - form: [{podSelector: {}}]\n",
                "spec.ingress[0].form: unknown field",
            ),
            (
                "  ingress:\n  - ports: [{port: 80, protocol: ICMP}]\n",
                "spec.ingress[0].ports[0].protocol: unsupported protocol",
            ),
            ("  policyTypes: [ingress]\n", "spec.policyTypes[0]: invalid policy type"),
            (
                "  ingress:\n  - from: [{}]\n",
                "spec.ingress[0].from[0]: a peer must set at least one",
            ),
        ];
        for (spec, want) in cases {
            let got = policy_error(spec);
            assert!(got.contains("NetworkPolicy x/p"), "{got}");
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn one_bad_policy_does_not_stop_others() {
        let (snap, diags) = load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec: {ingress: [{from: [{ipBlock: {cidr: nope}}]}]}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: good}\nspec: {podSelector: {}}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        );
        assert_eq!(snap.policies.len(), 1);
        assert!(snap.policies.contains_key(&ObjectRef::new("default", "good")));
        assert!(diags
            .iter()
            .any(|d| d.severity == Severity::Note && d.message.contains("Deployment")));
        assert_eq!(diags.iter().filter(|d| d.severity == Severity::Error).count(), 1);
    }

    #[test]
    fn policy_types_default() {
        let (snap, _) = load(
            "kind: List\napiVersion: v1\nitems:\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a}, spec: {podSelector: {}}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: b}, spec: {egress: [{}]}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: c}, spec: {egress: []}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: d}, spec: {policyTypes: [Egress, Ingress, Egress]}}\n",
        );
        let types = |n: &str| snap.policies[&ObjectRef::new("default", n)].policy_types.clone();
        assert_eq!(types("a"), vec![Direction::Ingress]);
        assert_eq!(types("b"), vec![Direction::Ingress, Direction::Egress]);
        assert_eq!(types("c"), vec![Direction::Ingress]);
        assert_eq!(types("d"), vec![Direction::Ingress, Direction::Egress]);
    }

    #[test]
    fn duplicates_and_bad_yaml() {
        let (snap, diags) = load(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: y}}\n",
        );
        assert_eq!(snap.namespaces.len(), 1);
        assert!(diags[0].to_string().contains("duplicate Namespace a"));
        let (_, diags) = load("kind: [\n");
        assert!(diags[0].message.contains("invalid YAML"));
        let (_, diags) = load("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old}\nspec: {}\n");
        assert!(
            diags[0].to_string().contains("apiVersion: unsupported apiVersion"),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn pod_fields() {
        let (snap, diags) = load(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: web}}\n\
             spec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n    - {name: dns, containerPort: 53, protocol: UDP}\n\
             status:\n  phase: Running\n  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let p = &snap.pods[&ObjectRef::new("x", "p")];
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(p.named_port("dns", Protocol::Tcp), None);
        assert_eq!(p.named_port("dns", Protocol::Udp), Some(53));
        assert!(p.is_endpoint());
    }
}
