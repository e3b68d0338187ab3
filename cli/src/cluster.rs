//! Commands that talk to a cluster: `policyc status` and `policyc wait --for=enforced`, for
//! NetworkPolicies and the admin policy kinds alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client};
use policyc_compiler::load::{parse_object, Kind, Parsed};
use policyc_compiler::model::{AdminRef, Snapshot};
use policyc_compiler::ObjectRef;
use policyc_crds::NodePolicyStatus;

/// A client from `--kubeconfig`, or the usual inference (KUBECONFIG, ~/.kube/config, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no cluster configuration found")?,
    };
    Ok(Client::try_from(config)?)
}

/// Reads the cluster's namespaces, pods and policies into a snapshot (invalid objects skipped).
async fn snapshot(client: &Client) -> Result<Snapshot> {
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
    /// No cluster configuration, or reading the cluster's objects failed (exit status 2).
    #[error(transparent)]
    Cluster(#[from] anyhow::Error),
}

impl WaitError {
    /// 1 when the policies are not enforced in time, 2 for every other error (as `kubectl wait`).
    pub fn exit_status(&self) -> u8 {
        match self {
            WaitError::TimedOut { .. } => 1,
            WaitError::NoPolicies | WaitError::ListStatus(_) | WaitError::Cluster(_) => 2,
        }
    }
}

/// Waits until every node hosting a pod selected by each policy in `files` reports (at least) the
/// policy's current generation. On timeout, [`WaitError::TimedOut`] names the lagging nodes.
pub async fn wait_enforced(kubeconfig: Option<&Path>, files: &[PathBuf], timeout: Duration) -> Result<(), WaitError> {
    let input = crate::input::load(files);
    input.report(true);
    let wanted: Vec<PolicyId> = PolicyId::all(&input.snapshot);
    if wanted.is_empty() {
        return Err(WaitError::NoPolicies);
    }
    let client = client(kubeconfig).await?;
    let deadline = Instant::now() + timeout;
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
