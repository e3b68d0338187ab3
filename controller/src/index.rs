//! The cluster-state index: the only writer of the agent's view of the cluster.
//!
//! ```text
//!  watcher(Pod) ────────┐
//!  watcher(Namespace) ──┤
//!  watcher(Node) ───────┼─► Event ─► Index::{apply, delete, reset} ─► Snapshot + invalid objects
//!  watcher(NetworkPolicy)┘                     │
//!                                              └─► version (tokio watch) ─► sync loop reads a snapshot
//! ```
//!
//! Objects are validated by the compiler's own parser (`load::parse_object`), the same path the
//! offline CLI uses, so the agent and `policyc render` agree on what is valid. An invalid object is
//! recorded and skipped; every other object stays enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use policyc_compiler::load::{parse_object, Kind, ObjectKey, Parsed};
use policyc_compiler::model::{ObjectRef, Snapshot};
use policyc_compiler::{CompileOptions, Compiler, Ir, SelectorCache};
use serde_json::Value;

/// An object the index rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidObject {
    pub key: ObjectKey,
    pub field: Option<String>,
    pub message: String,
}

/// The agent's view of the cluster.
#[derive(Debug, Default)]
pub struct Index {
    snapshot: Snapshot,
    invalid: BTreeMap<ObjectKey, InvalidObject>,
    /// Kinds whose initial list has completed at least once.
    listed: BTreeSet<Kind>,
    /// Objects of a kind being relisted (between `Init` and `InitDone`).
    relisting: BTreeMap<Kind, Vec<(ObjectKey, Staged)>>,
    /// Optional kinds (admin policies) to list before the first ruleset; `None` while the agent
    /// has not yet learnt which the API server serves.
    expected: Option<Vec<Kind>>,
    version: u64,
    /// How far each kind's watch has got (see [`Progress`]); of a kind being relisted, the list
    /// so far is in `relisting_progress` until it completes.
    progress: BTreeMap<Kind, Progress>,
    relisting_progress: BTreeMap<Kind, Progress>,
    /// Set members of earlier compilations, told of every pod, namespace and node change, so that a
    /// sync computes only the sets a change can touch. Locked only by [`Index::compile`] (the
    /// sync loop, under the index's read lock) and reached without locking by the writer.
    selectors: Mutex<SelectorCache>,
}

/// How far one kind's watch has got: every event up to `resource_version` has been applied,
/// and the keys of the objects it holds (valid, invalid and skipped alike).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The highest resourceVersion among the objects delivered (updates and deletions: a
    /// deletion event carries the deletion's revision; after a relist, the highest among the
    /// listed objects, kept if higher before). `None` until a numeric resourceVersion arrives.
    pub resource_version: Option<u64>,
    keys: BTreeSet<(String, String)>,
}

impl Progress {
    pub fn objects(&self) -> usize {
        self.keys.len()
    }

    fn saw(&mut self, rv: Option<u64>) {
        if rv > self.resource_version {
            self.resource_version = rv;
        }
    }
}

/// An object's `metadata.resourceVersion` as an integer (an etcd revision), when it is one.
fn resource_version(v: &Value) -> Option<u64> {
    v.get("metadata")?.get("resourceVersion")?.as_str()?.parse().ok()
}

/// An object parsed during a relist, applied when the relist completes.
#[derive(Debug)]
enum Staged {
    Valid(policyc_compiler::load::Object),
    Invalid(InvalidObject),
    Skipped,
}

/// When the selector cache hears of a change.
#[derive(Clone, Copy, Debug)]
enum Moment {
    Before,
    After,
}

/// The kinds the agent always watches (and lists before its first ruleset).
pub const WATCHED: [Kind; 4] = [Kind::Namespace, Kind::Pod, Kind::Node, Kind::NetworkPolicy];

fn key_of(kind: Kind, v: &Value) -> Option<ObjectKey> {
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = if kind.namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    Some(ObjectKey { kind, namespace, name })
}

impl Index {
    pub fn new() -> Self {
        Self {
            expected: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Bumped on every change that can affect the ruleset.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Compiles the snapshot, with set members kept from earlier compilations where no change
    /// since can have touched them. The same IR as `policyc_compiler::compile`.
    pub fn compile(&self, opts: &CompileOptions) -> Ir {
        let mut cache = self.selectors.lock().unwrap_or_else(PoisonError::into_inner);
        Compiler::with_cache(&self.snapshot, &mut cache).compile(opts)
    }

    /// Tells the selector cache about the stored version of the object at `key`: before a
    /// change (it goes away) and after it (it comes).
    fn touch(&mut self, key: &ObjectKey, moment: Moment) {
        let cache = self.selectors.get_mut().unwrap_or_else(PoisonError::into_inner);
        match key.kind {
            Kind::Pod => {
                if let Some(p) = self.snapshot.pods.get(&ObjectRef::new(&key.namespace, &key.name)) {
                    let labels = self.snapshot.namespace_labels(&p.namespace);
                    match moment {
                        Moment::Before => cache.pod_removed(p, &labels),
                        Moment::After => cache.pod_added(p, &labels),
                    }
                }
            }
            Kind::Namespace => cache.namespace_changed(),
            // Admin policies' `nodes` peers hold node addresses.
            Kind::Node => cache.node_changed(),
            // Policies of every tier use sets but are no members of any.
            Kind::NetworkPolicy
            | Kind::ClusterNetworkPolicy
            | Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy => {}
        }
    }

    /// Objects skipped as invalid, sorted.
    pub fn invalid(&self) -> impl Iterator<Item = &InvalidObject> {
        self.invalid.values()
    }

    /// Whether every watched kind has been listed once: before that, the snapshot is partial and
    /// must not be enforced (it would drop policies that simply have not arrived yet).
    pub fn ready(&self) -> bool {
        WATCHED.iter().all(|k| self.listed.contains(k))
            && self
                .expected
                .as_ref()
                .is_some_and(|ks| ks.iter().all(|k| self.listed.contains(k)))
    }

    /// The agent is finding out which optional kinds the API server serves: not ready until
    /// [`Index::discovered`].
    pub fn begin_discovery(&mut self) {
        self.expected = None;
    }

    /// The optional kinds the API server serves, which must be listed before the first ruleset.
    pub fn discovered(&mut self, kinds: &[Kind]) {
        self.expected = Some(kinds.to_vec());
    }

    /// How far each listed kind's watch has got, in kind order: what a ruleset compiled now is
    /// compiled from.
    pub fn progress(&self) -> impl Iterator<Item = (Kind, &Progress)> {
        self.progress
            .iter()
            .filter(|(k, _)| self.listed.contains(k))
            .map(|(k, p)| (*k, p))
    }

    /// Records an object the watch delivered (`deleted`: its deletion).
    fn observe(&mut self, kind: Kind, v: &Value, deleted: bool) {
        let Some(key) = key_of(kind, v) else {
            return;
        };
        let rv = resource_version(v);
        let key = (key.namespace, key.name);
        if let Some(p) = self.relisting_progress.get_mut(&kind) {
            p.saw(rv);
            p.keys.insert(key);
            return;
        }
        let p = self.progress.entry(kind).or_default();
        p.saw(rv);
        if deleted {
            p.keys.remove(&key);
        } else {
            p.keys.insert(key);
        }
    }

    /// An object was added or changed. Returns whether the snapshot changed.
    pub fn apply(&mut self, kind: Kind, mut v: Value) -> bool {
        self.observe(kind, &v, false);
        // Objects from watch streams may lack apiVersion/kind; the parser needs them.
        if let Some(m) = v.as_object_mut() {
            m.entry("apiVersion").or_insert_with(|| kind.api_version().into());
            m.entry("kind").or_insert_with(|| kind.as_str().into());
        }
        let Some(staged) = Self::stage(kind, &v) else {
            return false;
        };
        drop(v);
        if let Some(buf) = self.relisting.get_mut(&kind) {
            buf.push(staged);
            return false;
        }
        self.commit(staged)
    }

    fn stage(kind: Kind, v: &Value) -> Option<(ObjectKey, Staged)> {
        let key = key_of(kind, v)?;
        let staged = match parse_object(v) {
            Ok((Parsed::Object(obj), _warnings)) => Staged::Valid(obj),
            Ok((Parsed::Skipped { .. }, _)) => Staged::Skipped,
            Err(e) => Staged::Invalid(InvalidObject {
                key: key.clone(),
                field: (!e.field.is_empty()).then_some(e.field),
                message: e.message,
            }),
        };
        Some((key, staged))
    }

    fn commit(&mut self, (key, staged): (ObjectKey, Staged)) -> bool {
        match staged {
            Staged::Valid(obj) => {
                self.invalid.remove(&key);
                let changed = !self.same_as_stored(&obj);
                if changed {
                    self.touch(&key, Moment::Before);
                    self.snapshot.upsert(obj);
                    self.touch(&key, Moment::After);
                    self.version += 1;
                }
                changed
            }
            Staged::Skipped => false,
            Staged::Invalid(i) => {
                tracing::warn!(object = %key, field = ?i.field, "invalid object skipped: {}", i.message);
                self.invalid.insert(key.clone(), i);
                // A previously valid version is no longer what the cluster says: stop enforcing it.
                self.touch(&key, Moment::Before);
                self.snapshot.remove(&key);
                self.version += 1;
                true
            }
        }
    }

    fn same_as_stored(&self, obj: &policyc_compiler::load::Object) -> bool {
        use policyc_compiler::load::Object;
        use policyc_compiler::model::ObjectRef;
        match obj {
            Object::Namespace(n) => self.snapshot.namespaces.get(&n.name) == Some(n),
            Object::Node(n) => self.snapshot.nodes.get(&n.name) == Some(n),
            Object::Pod(p) => self.snapshot.pods.get(&ObjectRef::new(&p.namespace, &p.name)) == Some(p),
            Object::NetworkPolicy(p) => self.snapshot.policies.get(&ObjectRef::new(&p.namespace, &p.name)) == Some(p),
            Object::AdminPolicy(p) => self.snapshot.admin_policies.get(&p.id()) == Some(p),
        }
    }

    /// An object was deleted. Returns whether the snapshot changed.
    pub fn delete(&mut self, kind: Kind, v: &Value) -> bool {
        self.observe(kind, v, true);
        let Some(key) = key_of(kind, v) else {
            return false;
        };
        let was_invalid = self.invalid.remove(&key).is_some();
        self.touch(&key, Moment::Before);
        let removed = self.snapshot.remove(&key);
        if removed || was_invalid {
            self.version += 1;
        }
        removed || was_invalid
    }

    /// A relist of `kind` starts: objects are buffered until [`Index::relist_done`].
    pub fn relist_start(&mut self, kind: Kind) {
        self.relisting.insert(kind, Vec::new());
        self.relisting_progress.insert(kind, Progress::default());
    }

    /// A relist of `kind` completed: the buffered objects replace every object of that kind.
    pub fn relist_done(&mut self, kind: Kind) -> bool {
        let objects = self.relisting.remove(&kind).unwrap_or_default();
        self.listed_progress(kind);
        self.reset_staged(kind, objects)
    }

    /// The relist of `kind` completed: its objects are the kind's, and its revision (at least as
    /// high as anything delivered before it) is the kind's if higher.
    fn listed_progress(&mut self, kind: Kind) {
        let listed = self.relisting_progress.remove(&kind).unwrap_or_default();
        let p = self.progress.entry(kind).or_default();
        p.saw(listed.resource_version);
        p.keys = listed.keys;
    }

    /// Replaces every object of `kind` with `objects`.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Value>) -> bool {
        self.relisting_progress.insert(kind, Progress::default());
        for v in &objects {
            self.observe(kind, v, false);
        }
        self.listed_progress(kind);
        let staged = objects.iter().filter_map(|v| Self::stage(kind, v)).collect();
        self.reset_staged(kind, staged)
    }

    fn reset_staged(&mut self, kind: Kind, objects: Vec<(ObjectKey, Staged)>) -> bool {
        let before = self.version;
        // Many objects may change: start the selector cache afresh rather than per object
        // (stale objects are removed below without telling it).
        let cache = self.selectors.get_mut().unwrap_or_else(PoisonError::into_inner);
        match kind {
            Kind::Pod | Kind::Namespace => cache.clear(),
            Kind::Node => cache.node_changed(),
            _ => {}
        }
        let keys: BTreeSet<ObjectKey> = objects.iter().map(|(k, _)| k.clone()).collect();
        let stale: Vec<ObjectKey> = self.keys(kind).into_iter().filter(|k| !keys.contains(k)).collect();
        for k in stale {
            if self.snapshot.remove(&k) {
                self.version += 1;
            }
        }
        let stale_invalid: Vec<ObjectKey> = self
            .invalid
            .keys()
            .filter(|k| k.kind == kind && !keys.contains(k))
            .cloned()
            .collect();
        for k in stale_invalid {
            self.invalid.remove(&k);
            self.version += 1;
        }
        for staged in objects {
            self.commit(staged);
        }
        if self.listed.insert(kind) {
            self.version += 1;
        }
        self.version != before
    }

    fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        let s = &self.snapshot;
        let k = |namespace: &str, name: &str| ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match kind {
            Kind::Namespace => s.namespaces.keys().map(|n| k("", n)).collect(),
            Kind::Node => s.nodes.keys().map(|n| k("", n)).collect(),
            Kind::Pod => s.pods.keys().map(|r| k(&r.namespace, &r.name)).collect(),
            Kind::NetworkPolicy => s.policies.keys().map(|r| k(&r.namespace, &r.name)).collect(),
            Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => s
                .admin_policies
                .keys()
                .filter(|r| Some(r.kind) == kind.admin())
                .map(|r| k("", &r.name))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, cidr: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "x", "generation": 1},
               "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}})
    }

    #[test]
    fn invalid_objects_are_skipped_and_reported() {
        let mut ix = Index::new();
        assert!(ix.apply(Kind::NetworkPolicy, policy("good", "10.0.0.0/8")));
        assert!(ix.apply(Kind::NetworkPolicy, policy("bad", "10.0.0.0/99")));
        assert_eq!(ix.snapshot().policies.len(), 1);
        let bad: Vec<_> = ix.invalid().collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].key.to_string(), "NetworkPolicy x/bad");
        assert_eq!(bad[0].field.as_deref(), Some("spec.ingress[0].from[0].ipBlock.cidr"));
        // Fixing it brings it back and clears the error.
        assert!(ix.apply(Kind::NetworkPolicy, policy("bad", "10.0.0.0/9")));
        assert_eq!(ix.snapshot().policies.len(), 2);
        assert_eq!(ix.invalid().count(), 0);
    }

    #[test]
    fn unchanged_objects_do_not_bump_the_version() {
        let mut ix = Index::new();
        ix.apply(Kind::NetworkPolicy, policy("p", "10.0.0.0/8"));
        let v = ix.version();
        // A status-only or resourceVersion-only update changes nothing we enforce.
        let mut again = policy("p", "10.0.0.0/8");
        again["metadata"]["resourceVersion"] = json!("42");
        assert!(!ix.apply(Kind::NetworkPolicy, again));
        assert_eq!(ix.version(), v);
    }

    /// The index's compile, with set members kept across changes, gives what compiling the
    /// snapshot afresh gives, after every kind of change that can touch a set.
    #[test]
    fn kept_selectors_compile_like_a_fresh_compile() {
        use policyc_compiler::synth::{add_admin_policies, cluster, to_objects, Shape};
        let shape = Shape {
            pods: 300,
            namespaces: 6,
            policies: 60,
            nodes: 3,
            dual_stack_every: 4,
        };
        let mut snapshot = cluster(shape, 7);
        add_admin_policies(&mut snapshot, 10, 7);
        let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let node = |i: usize, zone: &str, ip: &str| {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}"), "labels": {"zone": zone}},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        };
        by_kind.insert(
            "Node".into(),
            (0..3).map(|i| node(i, "a", &format!("192.168.0.{i}"))).collect(),
        );
        for o in to_objects(&snapshot) {
            by_kind
                .entry(o["kind"].as_str().unwrap().to_string())
                .or_default()
                .push(o);
        }
        let pods = by_kind["Pod"].clone();
        let mut ix = Index::new();
        let admin_kinds = [
            Kind::ClusterNetworkPolicy,
            Kind::AdminNetworkPolicy,
            Kind::BaselineAdminNetworkPolicy,
        ];
        for kind in WATCHED.into_iter().chain(admin_kinds) {
            ix.reset(kind, by_kind.remove(kind.as_str()).unwrap_or_default());
        }
        assert_eq!(ix.snapshot().admin_policies.len(), 10);
        let opts = CompileOptions {
            node: Some("node-1".into()),
            ..CompileOptions::default()
        };
        let check = |ix: &Index, step: &str| {
            let fresh = policyc_compiler::compile(ix.snapshot(), &opts);
            let kept = ix.compile(&opts);
            assert!(kept == fresh, "{step}: kept selectors give another IR");
            assert_eq!(kept.ruleset_hash(), fresh.ruleset_hash(), "{step}");
        };
        check(&ix, "initial");
        check(&ix, "again");
        for (i, pod) in pods.iter().enumerate().step_by(37) {
            let mut p = pod.clone();
            match i % 4 {
                0 => p["metadata"]["labels"] = json!({"app": "moved", "tier": "web"}),
                1 => p["status"]["podIPs"] = json!([{"ip": format!("10.250.0.{}", i % 250)}]),
                2 => p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 9999}]),
                _ => {
                    assert!(ix.delete(Kind::Pod, &p));
                    check(&ix, &format!("pod {i} deleted"));
                    continue;
                }
            }
            ix.apply(Kind::Pod, p);
            check(&ix, &format!("pod {i} changed ({})", i % 4));
        }
        // Endpoints of the compiled node come and go.
        let mut moved = pods[3].clone();
        moved["spec"]["nodeName"] = json!("node-1");
        ix.apply(Kind::Pod, moved.clone());
        check(&ix, "pod moved to the compiled node");
        moved["metadata"]["name"] = json!("new-local");
        ix.apply(Kind::Pod, moved.clone());
        check(&ix, "new pod on the compiled node");
        moved["spec"]["nodeName"] = json!("node-2");
        ix.apply(Kind::Pod, moved);
        check(&ix, "pod moved away");
        // Two pods with one address: the address stays while either holds it.
        let (mut x, mut y) = (pods[1].clone(), pods[2].clone());
        x["status"]["podIPs"] = json!([{"ip": "10.251.0.1"}]);
        y["status"]["podIPs"] = json!([{"ip": "10.251.0.1"}]);
        ix.apply(Kind::Pod, x.clone());
        ix.apply(Kind::Pod, y.clone());
        check(&ix, "two pods share an address");
        ix.delete(Kind::Pod, &y);
        check(&ix, "one of them deleted");
        // A finished pod is no endpoint; a running one again is.
        x["status"]["phase"] = json!("Succeeded");
        ix.apply(Kind::Pod, x.clone());
        check(&ix, "pod finished");
        x["status"]["phase"] = json!("Running");
        ix.apply(Kind::Pod, x);
        check(&ix, "pod running again");
        ix.apply(
            Kind::Namespace,
            json!({"metadata": {"name": "ns-1", "labels": {"team": "team-1", "env": "prod"}}}),
        );
        check(&ix, "namespace relabelled");
        ix.apply(Kind::NetworkPolicy, policy("late", "10.1.0.0/16"));
        check(&ix, "policy added");

        // Admin policies: peers by namespace, by pod, by node, with named ports.
        let cnp = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "late"},
            "spec": {"tier": "Admin", "priority": 3, "subject": {"namespaces": {}},
                "ingress": [{"action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": "team-1"}}}],
                    "protocols": [{"destinationNamedPort": "http"}]}],
                "egress": [
                    {"action": "Deny", "to": [{"nodes": {"matchLabels": {"zone": "a"}}}]},
                    {"action": "Pass", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "db"}}}}]}
                ]}
        });
        assert!(ix.apply(Kind::ClusterNetworkPolicy, cnp.clone()));
        assert_eq!(ix.invalid().count(), 0, "{:?}", ix.invalid().collect::<Vec<_>>());
        check(&ix, "admin policy added");
        let mut p = pods[5].clone();
        p["metadata"]["labels"] = json!({"app": "moved", "tier": "db"});
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8888}]);
        ix.apply(Kind::Pod, p);
        check(&ix, "pod moves into an admin peer");
        ix.apply(
            Kind::Namespace,
            json!({"metadata": {"name": "ns-2", "labels": {"team": "team-1", "env": "dev"}}}),
        );
        check(&ix, "namespace moves into an admin peer");
        ix.apply(Kind::Node, node(1, "b", "192.168.0.1"));
        check(&ix, "node relabelled");
        ix.apply(Kind::Node, node(2, "a", "192.168.7.2"));
        check(&ix, "node readdressed");
        ix.apply(Kind::Node, node(3, "a", "192.168.0.3"));
        check(&ix, "node added");
        assert!(ix.delete(Kind::Node, &node(0, "a", "")));
        check(&ix, "node deleted");
        ix.reset(Kind::Node, vec![node(4, "a", "192.168.0.4")]);
        check(&ix, "nodes relisted");
        assert!(ix.delete(Kind::ClusterNetworkPolicy, &cnp));
        check(&ix, "admin policy deleted");
    }

    #[test]
    fn relist_replaces_and_readiness_needs_every_kind() {
        let mut ix = Index::new();
        ix.apply(Kind::NetworkPolicy, policy("old", "10.0.0.0/8"));
        assert!(!ix.ready());
        ix.relist_start(Kind::NetworkPolicy);
        ix.apply(Kind::NetworkPolicy, policy("new", "10.0.0.0/8"));
        assert_eq!(ix.snapshot().policies.len(), 1, "buffered until the relist completes");
        assert!(ix.relist_done(Kind::NetworkPolicy));
        let names: Vec<_> = ix.snapshot().policies.keys().map(|k| k.name.clone()).collect();
        assert_eq!(names, ["new"]);
        ix.reset(Kind::Namespace, vec![]);
        assert!(!ix.ready());
        ix.reset(Kind::Pod, vec![]);
        assert!(
            !ix.ready(),
            "Nodes not listed yet: admin `nodes` peers would match nothing"
        );
        ix.reset(Kind::Node, vec![]);
        assert!(ix.ready());
        assert!(ix.delete(Kind::NetworkPolicy, &policy("new", "")));
        assert!(ix.snapshot().policies.is_empty());
    }

    #[test]
    fn waits_for_the_admin_kinds_the_server_serves() {
        let mut ix = Index::new();
        for k in WATCHED {
            ix.relist_start(k);
            ix.relist_done(k);
        }
        assert!(ix.ready(), "no optional kinds expected");
        ix.begin_discovery();
        assert!(!ix.ready(), "not ready before discovery answers");
        ix.discovered(&[Kind::ClusterNetworkPolicy]);
        assert!(!ix.ready(), "ClusterNetworkPolicies not listed yet");
        ix.relist_start(Kind::ClusterNetworkPolicy);
        let cnp = serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        });
        assert!(
            !ix.apply(Kind::ClusterNetworkPolicy, cnp),
            "buffered until the list completes"
        );
        assert!(ix.relist_done(Kind::ClusterNetworkPolicy));
        assert!(ix.ready());
        assert_eq!(ix.snapshot().admin_policies.len(), 1);
    }

    fn progress_of(ix: &Index, kind: Kind) -> (Option<u64>, usize) {
        ix.progress()
            .find(|(k, _)| *k == kind)
            .map_or((None, 0), |(_, p)| (p.resource_version, p.objects()))
    }

    fn ns(name: &str, rv: u64, team: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv.to_string(), "labels": {"team": team}}})
    }

    /// Every delivered event moves its kind's resourceVersion, whether or not the snapshot
    /// changes: updates, no-op updates, and deletions (a deletion of the newest object too: its
    /// event carries the deletion's revision). A relist keeps the higher revision and counts
    /// what it listed; a kind is reported only once listed.
    #[test]
    fn progress_follows_every_event_and_deletion() {
        let mut ix = Index::new();
        ix.relist_start(Kind::Namespace);
        ix.apply(Kind::Namespace, ns("a", 10, "x"));
        ix.apply(Kind::Namespace, ns("b", 30, "y"));
        assert_eq!(progress_of(&ix, Kind::Namespace), (None, 0), "not listed yet");
        ix.relist_done(Kind::Namespace);
        assert_eq!(progress_of(&ix, Kind::Namespace), (Some(30), 2));
        assert!(
            !ix.apply(Kind::Namespace, ns("a", 41, "x")),
            "only the resourceVersion changed"
        );
        assert_eq!(progress_of(&ix, Kind::Namespace), (Some(41), 2));
        assert!(ix.delete(Kind::Namespace, &ns("b", 57, "y")));
        assert_eq!(
            progress_of(&ix, Kind::Namespace),
            (Some(57), 1),
            "a deletion advances it"
        );
        // Deleting an object the index never held (an ignored one) still counts as progress.
        ix.delete(Kind::Namespace, &ns("ghost", 60, "z"));
        assert_eq!(progress_of(&ix, Kind::Namespace), (Some(60), 1));
        // A relist after a gap: its objects may all be older than what was seen (the newest
        // were deleted meanwhile); the list itself is newer, so the higher revision stays.
        ix.relist_start(Kind::Namespace);
        ix.apply(Kind::Namespace, ns("a", 41, "x"));
        assert_eq!(
            progress_of(&ix, Kind::Namespace),
            (Some(60), 1),
            "unchanged until the list completes"
        );
        ix.relist_done(Kind::Namespace);
        assert_eq!(progress_of(&ix, Kind::Namespace), (Some(60), 1));
        // Non-numeric resourceVersions are not reported as progress.
        ix.reset(
            Kind::Pod,
            vec![json!({"metadata": {"name": "p", "namespace": "x", "resourceVersion": "abc"}})],
        );
        assert_eq!(progress_of(&ix, Kind::Pod), (None, 1));
        let kinds: Vec<Kind> = ix.progress().map(|(k, _)| k).collect();
        assert_eq!(kinds, [Kind::Namespace, Kind::Pod]);
    }
}
