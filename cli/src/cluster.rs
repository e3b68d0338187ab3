//! Commands that talk to a cluster: `policyc status` and `policyc wait --for=enforced`, for
//! NetworkPolicies and the admin policy kinds alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client};
use policyc_compiler::load::{parse_object, Kind, Parsed};
use policyc_compiler::model::{AdminRef, Snapshot};
use policyc_compiler::ObjectRef;
use policyc_crds::NodePolicyStatus;

/// A client from `--kubeconfig`, or the usual inference (KUBECONFIG, ~/.kube/config, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(Client::try_from(config(kubeconfig).await?)?)
}

/// The configuration [`client`] uses.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no cluster configuration found")?,
    })
}

/// Reads the cluster's namespaces, pods and policies into a snapshot (invalid objects skipped).
pub(crate) async fn snapshot(client: &Client) -> Result<Snapshot> {
    let mut s = Snapshot::default();
    let lp = ListParams::default();
    let mut add = |v: serde_json::Value| {
        if let Ok((Parsed::Object(o), _)) = parse_object(&v) {
            s.upsert(o);
        }
    };
    for o in Api::<Namespace>::all(client.clone()).list(&lp).await? {
        add(serde_json::to_value(o)?);
    }
    for o in Api::<Pod>::all(client.clone()).list(&lp).await? {
        add(serde_json::to_value(o)?);
    }
    for o in Api::<NetworkPolicy>::all(client.clone()).list(&lp).await? {
        add(serde_json::to_value(o)?);
    }
    // The admin policy kinds, where their CRDs are installed.
    for kind in Kind::ADMIN {
        let resource = policyc_crds::api_resource(kind.api_version(), kind.as_str(), kind.plural());
        match Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource)
            .list(&lp)
            .await
        {
            Ok(list) => {
                for o in list {
                    let mut v = serde_json::to_value(o)?;
                    if let Some(m) = v.as_object_mut() {
                        m.insert("apiVersion".into(), resource.api_version.clone().into());
                        m.insert("kind".into(), kind.as_str().into());
                    }
                    add(v);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(s)
}

/// The names of the cluster's Nodes.
pub(crate) async fn node_names(client: &Client) -> Result<BTreeSet<String>> {
    Ok(Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .context("listing nodes")?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// A policy of any kind, as NodePolicyStatus reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PolicyId {
    Network(ObjectRef),
    Admin(AdminRef),
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyId::Network(r) => write!(f, "{r}"),
            PolicyId::Admin(r) => write!(f, "{r}"),
        }
    }
}

impl PolicyId {
    fn of_report(p: &policyc_crds::EnforcedPolicy) -> Option<PolicyId> {
        match p.kind.as_deref() {
            None | Some("NetworkPolicy") => Some(PolicyId::Network(ObjectRef::new(&p.namespace, &p.name))),
            Some(kind) => {
                let kind = Kind::parse(kind)?.admin()?;
                Some(PolicyId::Admin(AdminRef::new(kind, &p.name)))
            }
        }
    }

    /// The policy's current generation in the snapshot; `None` when it is not there.
    fn generation(&self, s: &Snapshot) -> Option<Option<i64>> {
        match self {
            PolicyId::Network(r) => s.policies.get(r).map(|p| p.generation),
            PolicyId::Admin(r) => s.admin_policies.get(r).map(|p| p.generation),
        }
    }

    /// Every policy of the snapshot.
    fn all(s: &Snapshot) -> Vec<PolicyId> {
        s.policies
            .keys()
            .cloned()
            .map(PolicyId::Network)
            .chain(s.admin_policies.keys().cloned().map(PolicyId::Admin))
            .collect()
    }
}

/// For each policy: the nodes hosting a pod it selects (admin policies: with rules).
fn nodes_by_policy(s: &Snapshot) -> BTreeMap<PolicyId, BTreeSet<String>> {
    let mut out: BTreeMap<PolicyId, BTreeSet<String>> = s
        .policies
        .values()
        .map(|p| {
            let nodes = s
                .endpoints()
                .filter(|pod| p.selects(pod))
                .filter_map(|pod| pod.node.clone())
                .collect();
            (PolicyId::Network(p.id()), nodes)
        })
        .collect();
    for p in s.admin_policies.values() {
        let nodes = s
            .endpoints()
            .filter(|pod| p.subject.matches(&s.namespace_labels(&pod.namespace), &pod.labels))
            .filter_map(|pod| pod.node.clone())
            .collect();
        out.insert(PolicyId::Admin(p.id()), nodes);
    }
    out
}

/// Generation each node reports for each policy.
fn reported(statuses: &[NodePolicyStatus]) -> BTreeMap<(PolicyId, String), Option<i64>> {
    let mut out = BTreeMap::new();
    for nps in statuses {
        for p in nps.status.iter().flat_map(|s| &s.policies) {
            if let Some(id) = PolicyId::of_report(p) {
                out.insert((id, nps.spec.node_name.clone()), p.generation);
            }
        }
    }
    out
}

// === status ===

pub async fn status(kubeconfig: Option<&Path>, output_json: bool) -> Result<()> {
    let client = client(kubeconfig).await?;
    let statuses = Api::<NodePolicyStatus>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing NodePolicyStatus (is the policyc CRD installed?)")?
        .items;
    let snap = snapshot(&client).await?;
    if output_json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<6} {:>8} {:>9} {:>6} {:>6}  LAST SYNC",
        "NODE", "READY", "POLICIES", "ENDPOINTS", "RULES", "ERRORS"
    );
    for nps in &statuses {
        let st = nps.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or("Unknown", |c| c.status.as_str());
        println!(
            "{:<20} {:<6} {:>8} {:>9} {:>6} {:>6}  {}",
            nps.spec.node_name,
            ready,
            st.policy_count,
            st.endpoints,
            st.rules,
            st.errors.len(),
            st.last_sync_time.as_deref().unwrap_or("-")
        );
        for e in &st.errors {
            println!(
                "    error: {}: {}: {}",
                e.object,
                e.field.as_deref().unwrap_or("-"),
                e.message
            );
        }
    }
    println!();
    let reports = reported(&statuses);
    println!("{:<40} {:>10}  NODES", "POLICY", "GENERATION");
    for (id, nodes) in nodes_by_policy(&snap) {
        let generation = id.generation(&snap).flatten();
        let cells: Vec<String> = nodes
            .iter()
            .map(|n| match reports.get(&(id.clone(), n.clone())) {
                Some(g) if *g >= generation => format!("{n} (enforced)"),
                Some(g) => format!("{n} (at generation {})", g.map_or("-".into(), |g| g.to_string())),
                None => format!("{n} (pending)"),
            })
            .collect();
        let gen = generation.map_or("-".into(), |g| g.to_string());
        let nodes = if cells.is_empty() {
            "(selects no pods)".to_string()
        } else {
            cells.join(", ")
        };
        println!("{:<40} {:>10}  {}", id.to_string(), gen, nodes);
    }
    Ok(())
}

// === wait ===

/// Why `policyc wait` did not return successfully; [`WaitError::exit_status`] is its exit status.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Some node still lags behind when the timeout expires (exit status 1): the lines name each
    /// policy and node, so a script can print them.
    #[error("timed out after {timeout:?}:\n  {}", lagging.join("\n  "))]
    TimedOut { timeout: Duration, lagging: Vec<String> },
    /// The input holds nothing to wait for (exit status 2).
    #[error("no NetworkPolicy or admin policy in the input")]
    NoPolicies,
    /// NodePolicyStatus cannot be listed (exit status 2). The message already carries the kube
    /// error's own cause, so it is not chained as a source (it would print twice).
    #[error("listing NodePolicyStatus (is the policyc CRD installed?): {0}")]
    ListStatus(kube::Error),
    /// `--since` or a resourceVersion the API server or an agent gave is not an integer
    /// (exit status 2): resourceVersions are compared as etcd revisions.
    #[error(
        "{what} resourceVersion {value:?} is not an integer: `--since` compares resourceVersions as etcd revisions, \
         which a cluster on another storage may not give"
    )]
    NotARevision { what: String, value: String },
    /// No NodePolicyStatus of an existing Node: no agent runs, nothing can be enforced (exit
    /// status 2).
    #[error("no node reports a NodePolicyStatus: is policyc-agent running?")]
    NoAgents,
    /// No cluster configuration, or reading the cluster's objects failed (exit status 2).
    #[error(transparent)]
    Cluster(#[from] anyhow::Error),
}

impl WaitError {
    /// 1 when the policies are not enforced in time, 2 for every other error (as `kubectl wait`).
    pub fn exit_status(&self) -> u8 {
        match self {
            WaitError::TimedOut { .. } => 1,
            WaitError::NoPolicies
            | WaitError::ListStatus(_)
            | WaitError::NotARevision { .. }
            | WaitError::NoAgents
            | WaitError::Cluster(_) => 2,
        }
    }
}

/// What `policyc wait --for=enforced` waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitFor {
    /// Policy manifests: every node hosting a pod a policy selects reports its current generation.
    pub files: Vec<PathBuf>,
    /// Every change up to this resourceVersion is in every node's kernel. With neither `files`
    /// nor `since`: every change written before the wait started.
    pub since: Option<String>,
}

/// Waits for `what` (see [`WaitFor`]); on timeout, [`WaitError::TimedOut`] names the lagging
/// nodes.
pub async fn wait_enforced(kubeconfig: Option<&Path>, what: &WaitFor, timeout: Duration) -> Result<(), WaitError> {
    let since = match &what.since {
        Some(s) => Some(revision("--since", s)?),
        None => None,
    };
    let deadline = Instant::now() + timeout;
    if !what.files.is_empty() {
        wait_generations(kubeconfig, &what.files, deadline, timeout).await?;
    }
    if since.is_none() && !what.files.is_empty() {
        return Ok(());
    }
    let client = client(kubeconfig).await?;
    let since = match since {
        Some(rv) => rv,
        None => current_revision(&client).await?,
    };
    wait_revision(&client, since, deadline, timeout).await
}

/// A resourceVersion as an etcd revision.
fn revision(what: &str, value: &str) -> Result<u64, WaitError> {
    value.parse().map_err(|_| WaitError::NotARevision {
        what: what.to_string(),
        value: value.to_string(),
    })
}

/// The store's current revision: the resourceVersion of a (consistent, one-item) list.
async fn current_revision(client: &Client) -> Result<u64, WaitError> {
    let list = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .context("reading the cluster's current resourceVersion")?;
    revision(
        "the cluster's current",
        list.metadata.resource_version.as_deref().unwrap_or(""),
    )
}

/// One kind as the cluster holds it now: how many objects, and the highest resourceVersion
/// among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindNow {
    pub objects: i64,
    pub newest: u64,
}

/// The nodes that do not yet hold every change up to `since` in their kernels, with why. A node
/// holds them when, for every kind it watches, what its ruleset was compiled from
/// (`compiledFrom`) either reaches `since`, or is the kind as the cluster holds it now: as many
/// objects, none newer than the reported resourceVersion. (Watch events arrive in revision
/// order, so a reported resourceVersion R means every change of the kind up to R was in the
/// agent's view; if no object is newer than R and none is missing, the kind has not changed
/// since R, so its state at R is its state at `since`.) `now` holds the kinds listed this round;
/// a kind missing from it is judged by its resourceVersion alone.
pub fn lagging_nodes(
    since: u64,
    statuses: &[(String, Option<&[policyc_crds::KindProgress]>)],
    now: &BTreeMap<String, KindNow>,
) -> Result<Vec<String>, WaitError> {
    let mut lagging = Vec::new();
    for (node, reported) in statuses {
        let Some(reported) = reported.filter(|r| !r.is_empty()) else {
            lagging.push(format!(
                "node {node}: reports no compiledFrom yet (not synced, or an agent older than this policyc)"
            ));
            continue;
        };
        for p in reported.iter() {
            let rv = revision(&format!("node {node}'s {}", p.kind), &p.resource_version)?;
            if rv >= since {
                continue;
            }
            match now.get(&p.kind) {
                Some(k) if k.newest <= rv && k.objects == p.objects => {}
                _ => lagging.push(format!(
                    "node {node}: {} compiled at resourceVersion {rv} ({} objects), want {since}",
                    p.kind, p.objects
                )),
            }
        }
    }
    Ok(lagging)
}

/// The kinds some node reports behind `since`, as the cluster holds them now.
async fn kinds_now(
    client: &Client,
    since: u64,
    statuses: &[(String, Option<&[policyc_crds::KindProgress]>)],
) -> Result<BTreeMap<String, KindNow>, WaitError> {
    let behind: BTreeSet<&str> = statuses
        .iter()
        .flat_map(|(_, r)| r.iter().flat_map(|r| r.iter()))
        .filter(|p| p.resource_version.parse::<u64>().is_ok_and(|rv| rv < since))
        .map(|p| p.kind.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for name in behind {
        let Some(kind) = Kind::parse(name) else { continue };
        let resource = policyc_crds::api_resource(kind.api_version(), kind.as_str(), kind.plural());
        let list = Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource)
            .list_metadata(&ListParams::default())
            .await
            .with_context(|| format!("listing {}", kind.plural()))?;
        let mut k = KindNow {
            objects: list.items.len() as i64,
            newest: 0,
        };
        for o in &list.items {
            let rv = o.metadata.resource_version.as_deref().unwrap_or("");
            k.newest = k.newest.max(revision(&format!("{name} {:?}'s", o.metadata.name), rv)?);
        }
        out.insert(name.to_string(), k);
    }
    Ok(out)
}

/// Waits until every node whose agent runs (a NodePolicyStatus of an existing Node) holds every
/// change up to `since` (see [`lagging_nodes`]).
async fn wait_revision(client: &Client, since: u64, deadline: Instant, timeout: Duration) -> Result<(), WaitError> {
    let started = Instant::now();
    loop {
        let statuses = match Api::<NodePolicyStatus>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => return Err(WaitError::ListStatus(e)),
        };
        let nodes = node_names(client).await?;
        let reports: Vec<(String, Option<&[policyc_crds::KindProgress]>)> = statuses
            .iter()
            .filter(|s| nodes.contains(&s.spec.node_name))
            .map(|s| {
                (
                    s.spec.node_name.clone(),
                    s.status.as_ref().map(|st| st.compiled_from.as_slice()),
                )
            })
            .collect();
        if reports.is_empty() {
            return Err(WaitError::NoAgents);
        }
        let now = kinds_now(client, since, &reports).await?;
        let lagging = lagging_nodes(since, &reports, &now)?;
        if lagging.is_empty() {
            let names: Vec<&str> = reports.iter().map(|(n, _)| n.as_str()).collect();
            eprintln!(
                "every change up to resourceVersion {since} is enforced on {} ({} ms)",
                names.join(", "),
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut { timeout, lagging });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node hosting a pod selected by each policy in `files` reports (at least) the
/// policy's current generation.
async fn wait_generations(
    kubeconfig: Option<&Path>,
    files: &[PathBuf],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), WaitError> {
    let input = crate::input::load(files);
    input.report(true);
    let wanted: Vec<PolicyId> = PolicyId::all(&input.snapshot);
    if wanted.is_empty() {
        return Err(WaitError::NoPolicies);
    }
    let client = client(kubeconfig).await?;
    let mut lagging: Vec<String>;
    loop {
        let snap = snapshot(&client).await?;
        let statuses = match Api::<NodePolicyStatus>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => return Err(WaitError::ListStatus(e)),
        };
        let reports = reported(&statuses);
        let by_policy = nodes_by_policy(&snap);
        lagging = Vec::new();
        for id in &wanted {
            let Some(generation) = id.generation(&snap) else {
                lagging.push(format!("{id}: not in the cluster (or invalid)"));
                continue;
            };
            for node in by_policy.get(id).into_iter().flatten() {
                match reports.get(&(id.clone(), node.clone())) {
                    Some(g) if *g >= generation => {}
                    Some(g) => lagging.push(format!(
                        "{id}: node {node} enforces generation {}, want {}",
                        g.map_or("-".into(), |g| g.to_string()),
                        generation.map_or("-".into(), |g| g.to_string())
                    )),
                    None => lagging.push(format!("{id}: node {node} does not report it yet")),
                }
            }
        }
        if lagging.is_empty() {
            for id in &wanted {
                let nodes: Vec<String> = by_policy.get(id).into_iter().flatten().cloned().collect();
                let gen = id.generation(&snap).flatten().map_or("-".into(), |g| g.to_string());
                match nodes.is_empty() {
                    true => eprintln!("{id} (generation {gen}) selects no pods: nothing to enforce"),
                    false => eprintln!("{id} (generation {gen}) enforced on {}", nodes.join(", ")),
                }
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut { timeout, lagging });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_crds::KindProgress;

    fn kp(kind: &str, rv: &str, objects: i64) -> KindProgress {
        KindProgress {
            kind: kind.into(),
            resource_version: rv.into(),
            objects,
        }
    }

    fn now(kinds: &[(&str, i64, u64)]) -> BTreeMap<String, KindNow> {
        kinds
            .iter()
            .map(|(k, objects, newest)| {
                (
                    k.to_string(),
                    KindNow {
                        objects: *objects,
                        newest: *newest,
                    },
                )
            })
            .collect()
    }

    /// A relabel of a pod at 100 leaves the namespaces at 40: the node is done once its Pods
    /// reach 100, and its Namespaces count as current because none changed after 40.
    #[test]
    fn a_quiet_kind_counts_when_nothing_of_it_changed_since() {
        let n1 = [kp("Namespace", "40", 3), kp("Pod", "100", 5)];
        let statuses = [("n1".to_string(), Some(&n1[..]))];
        let cluster = now(&[("Namespace", 3, 40)]);
        assert!(lagging_nodes(100, &statuses, &cluster).unwrap().is_empty());
        // The agent's Pods are not there yet.
        let behind = [kp("Namespace", "40", 3), kp("Pod", "99", 5)];
        let statuses = [("n1".to_string(), Some(&behind[..]))];
        let lag = lagging_nodes(100, &statuses, &now(&[("Namespace", 3, 40), ("Pod", 5, 100)])).unwrap();
        assert_eq!(
            lag,
            ["node n1: Pod compiled at resourceVersion 99 (5 objects), want 100"]
        );
    }

    /// A namespace changed (or was created) after what the node compiled from: newer than its
    /// resourceVersion. A namespace deleted after it: fewer objects, though none is newer (the
    /// deleted one may have been the newest). Either way the node lags.
    #[test]
    fn a_changed_or_deleted_object_of_a_quiet_kind_is_waited_for() {
        let n1 = [kp("Namespace", "40", 3), kp("Pod", "120", 5)];
        let statuses = [("n1".to_string(), Some(&n1[..]))];
        let changed = lagging_nodes(100, &statuses, &now(&[("Namespace", 3, 95)])).unwrap();
        assert_eq!(changed.len(), 1, "{changed:?}");
        let deleted = lagging_nodes(100, &statuses, &now(&[("Namespace", 2, 38)])).unwrap();
        assert_eq!(
            deleted,
            ["node n1: Namespace compiled at resourceVersion 40 (3 objects), want 100"]
        );
        // Not listed this round: judged by the resourceVersion alone.
        assert_eq!(lagging_nodes(100, &statuses, &BTreeMap::new()).unwrap().len(), 1);
        // Everything reaches `since`: nothing to list.
        assert!(lagging_nodes(40, &statuses, &BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn every_node_counts_and_silence_is_not_enforcement() {
        let done = [kp("Pod", "100", 1)];
        let behind = [kp("Pod", "7", 1)];
        let statuses = [
            ("n1".to_string(), Some(&done[..])),
            ("n2".to_string(), Some(&behind[..])),
            ("n3".to_string(), None),
            ("n4".to_string(), Some(&[][..])),
        ];
        let lag = lagging_nodes(100, &statuses, &now(&[("Pod", 2, 100)])).unwrap();
        assert_eq!(lag.len(), 3, "{lag:?}");
        assert!(lag[0].starts_with("node n2: Pod"), "{lag:?}");
        assert!(lag[1].starts_with("node n3: reports no compiledFrom"), "{lag:?}");
        assert!(lag[2].starts_with("node n4: reports no compiledFrom"), "{lag:?}");
    }

    #[test]
    fn non_numeric_resource_versions_fail_clearly() {
        let odd = [kp("Pod", "a1b2", 1)];
        let statuses = [("n1".to_string(), Some(&odd[..]))];
        let e = lagging_nodes(100, &statuses, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        assert!(
            e.to_string()
                .contains("node n1's Pod resourceVersion \"a1b2\" is not an integer"),
            "{e}"
        );
        assert!(matches!(
            revision("--since", "12x"),
            Err(WaitError::NotARevision { .. })
        ));
        assert_eq!(revision("--since", "12").unwrap(), 12);
    }
}
