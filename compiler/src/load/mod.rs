//! Reading Kubernetes objects (YAML or JSON, multi-document, `kind: List`) into a [`Snapshot`].
//!
//! Every problem becomes a [`Diagnostic`] naming the source, the object and the field; the object
//! in question is skipped and everything else is kept. The loader does no I/O: callers hand it
//! text with a source name (a path, `-`, or `apiserver`).
//!
//! ```text
//!  text ──add_text──► document ──add_value──► object ──parse_object──► Object ──upsert──► Snapshot
//!  (YAML or JSON)    (split at `---`)        (`kind: List`   │ by kind:        (a duplicate is
//!                                             unrolled)      ├─ core           refused)
//!                                                            │  Namespace, Node, Pod
//!                                                            ├─ networkpolicy
//!                                                            └─ admin
//!                                                               CNP, ANP, BANP
//!  every problem ──► Diagnostic (source, object, field) ──────────────────────────► finish()
//! ```
//!
//! One file per responsibility: `diagnostic` (what is reported), `object` (kinds, identities,
//! [`parse_object`]), `core`, `networkpolicy` and `admin` (one API group's objects each), and
//! `field` (typed field access and the values several kinds share). The [`Loader`] is here.

use std::collections::BTreeMap;

use serde_json::Value;

mod admin;
mod core;
mod diagnostic;
mod field;
mod networkpolicy;
mod object;

pub use diagnostic::{Diagnostic, FieldError, Severity};
pub use object::{parse_object, Kind, Object, ObjectKey, Parsed};

use crate::model::Snapshot;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    pub(super) fn load(text: &str) -> (Snapshot, Vec<Diagnostic>) {
        let mut l = Loader::new();
        l.add_text("test.yaml", text);
        l.finish()
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
}
