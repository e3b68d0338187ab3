//! The agent's runtime: watchers feed the index, a debounced loop compiles this node's ruleset
//! and applies it, then cuts denied flows and reports status.
//!
//! ```text
//!  watch Pods ──────┐
//!  watch Namespaces ┤
//!  watch Nodes ─────┼─► Index (one writer) ─version─► sync loop: debounce → compile(node) → hash
//!  watch NetPols ───┤                                   ▲ │ unchanged: nothing
//!  watch admin kinds┘ (those the API server serves)     │ │
//!  node links, bridge ports ─► attach task ──state──────┘ │ changed: writer.apply (elements, chains in place, or replace)
//!  (canal | flannel + ports, br_netfilter; crate::attach) ├─► conntrack: cut flows now denied
//!                                                         ├─► metrics
//!                                                         └─► NodePolicyStatus (server-side apply)
//! ```
//!
//! Never leak: nothing is flushed at start or exit (except when the agent is uninstalled, see
//! [`crate::uninstall`] and [`remove_ruleset`]); the ruleset in the kernel is replaced only by a
//! complete new one in one transaction, and only once every kind has been listed (a partial view
//! would drop policies that merely have not arrived yet). A failed watch keeps the last ruleset
//! and reconnects with backoff; a failed apply keeps the previous ruleset and retries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use policyc_compiler::load::Kind;
use policyc_compiler::{CompileOptions, Ir};
use tokio::sync::watch;

use crate::attach;
use crate::index::Index;
use crate::metrics::{ApplyLabels, ConntrackLabels, ErrorKind, Metrics};
use crate::status::{Report, StatusWriter};
use policyc_crds::KindProgress;
use policyc_dataplane::{Dataplane, IptablesRestore, NetlinkWriter};

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// Quiet time after a change before syncing, so bursts become one transaction.
    pub debounce: Duration,
    pub interface_prefix: String,
    /// Drop traffic of pod interfaces that are not programmed yet.
    pub fail_closed: bool,
    /// Program this network namespace instead of the agent's own (the lab runs one agent per
    /// node namespace).
    pub netns: Option<PathBuf>,
    /// Delete conntrack entries of flows a policy change no longer allows.
    pub cut_conntrack: bool,
    /// Write the NodePolicyStatus object.
    pub report_status: bool,
    /// Least time between status writes that only move `compiledFrom`.
    pub status_progress: Duration,
    /// The ClusterRole the status object is a dependent of (deleted with it by the garbage
    /// collector), see [`StatusWriter::owned_by`].
    pub status_owner: Option<String>,
    pub backend: Backend,
    /// How pods are attached: detected, or given (see [`crate::attach`]).
    pub attachment: attach::Mode,
    /// The bridge of the Flannel attachment.
    pub bridge: String,
    /// Flow events: which verdict points log, to which NFLOG group, how many; `None`: none.
    pub flow_log: Option<policyc_compiler::flows::FlowLog>,
    /// Identical flow events within this interval become one record.
    pub flow_interval: Duration,
    /// Write flow records as JSON lines to this file (`-`: stdout).
    pub flow_output: Option<PathBuf>,
}

/// How rules reach the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One nftables table, programmed over netlink in one transaction.
    Nftables,
    /// ipsets and iptables chains, loaded with the restore tools.
    Iptables,
}

/// State shared with the HTTP endpoints.
#[derive(Debug)]
pub struct Shared {
    pub index: RwLock<Index>,
    pub metrics: Metrics,
    /// Set after the first complete ruleset reached the kernel.
    pub ready: AtomicBool,
    /// Flow records and the verdict points of the applied rulesets.
    pub flows: crate::flows::FlowHub,
    /// Held while a ruleset is written to the kernel: removing the ruleset (an uninstall) waits
    /// for a write under way, which would otherwise bring it back.
    pub kernel: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    pub fn new(metrics: Metrics) -> Arc<Shared> {
        Arc::new(Shared {
            index: RwLock::new(Index::new()),
            metrics,
            ready: AtomicBool::new(false),
            flows: crate::flows::FlowHub::default(),
            kernel: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

/// Runs until the process is stopped.
pub async fn run(client: Client, cfg: Config, shared: Arc<Shared>) {
    // Flow events are for seeing, not enforcing: without them the node still enforces.
    let _flows = cfg.flow_log.and_then(|log| {
        let opts = crate::flows::FlowOptions {
            log,
            interval: cfg.flow_interval,
            output: cfg.flow_output.clone(),
            netns: cfg.netns.clone(),
            node: cfg.node_name.clone(),
        };
        match crate::flows::start(opts, shared.clone()) {
            Ok(f) => {
                tracing::info!(group = log.group, "reading flow events");
                Some(f)
            }
            Err(e) => {
                tracing::error!("flow events unavailable: {e}");
                None
            }
        }
    });
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(watch_kind(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        without_managed_fields,
        shared.clone(),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Pod>::all(client.clone()),
        Kind::Pod,
        without_managed_fields,
        shared.clone(),
        tx.clone(),
    ));
    // Admin policies' `nodes` peers match the Nodes' addresses.
    tokio::spawn(watch_kind(
        Api::<Node>::all(client.clone()),
        Kind::Node,
        node_value,
        shared.clone(),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<NetworkPolicy>::all(client.clone()),
        Kind::NetworkPolicy,
        without_managed_fields,
        shared.clone(),
        tx.clone(),
    ));
    shared.index.write().expect("index lock").begin_discovery();
    tokio::spawn(watch_admin_kinds(client.clone(), shared.clone(), tx));
    let status = cfg
        .report_status
        .then(|| StatusWriter::new(client, &cfg.node_name, cfg.status_progress).owned_by(cfg.status_owner.clone()));
    let (attach_tx, attach_rx) = watch::channel(attach::initial());
    tokio::spawn(attach::run(
        attach::Config {
            mode: cfg.attachment,
            bridge: cfg.bridge.clone(),
            interface_prefix: cfg.interface_prefix.clone(),
            node_name: cfg.node_name.clone(),
            netns: cfg.netns.clone(),
        },
        shared.clone(),
        rx.clone(),
        attach_tx,
    ));
    sync_loop(cfg, shared, rx, attach_rx, status).await;
}

/// Which admin policy kinds the API server serves (their CRDs are installed).
async fn served_admin_kinds(client: &Client) -> Result<Vec<Kind>, kube::Error> {
    let mut group_versions: Vec<&str> = Kind::ADMIN.iter().map(|k| k.api_version()).collect();
    group_versions.dedup();
    let mut served = Vec::new();
    for gv in group_versions {
        let resources = match client.list_api_group_resources(gv).await {
            Ok(list) => list.resources,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for kind in Kind::ADMIN {
            if kind.api_version() == gv && resources.iter().any(|r| r.name == kind.plural()) {
                served.push(kind);
            }
        }
    }
    Ok(served)
}

/// The API resource of a kind that k8s-openapi has no type for (the admin policy kinds).
pub fn dynamic_resource(kind: Kind) -> kube::api::ApiResource {
    policyc_crds::api_resource(kind.api_version(), kind.as_str(), kind.plural())
}

/// Watches the admin policy kinds the API server serves. The first answer decides which kinds the
/// first ruleset waits for (never enforce an Admin tier half-listed); kinds whose CRDs appear later
/// are watched from then on.
async fn watch_admin_kinds(client: Client, shared: Arc<Shared>, tx: watch::Sender<u64>) {
    let mut watching: Vec<Kind> = Vec::new();
    let mut first = true;
    loop {
        match served_admin_kinds(&client).await {
            Ok(kinds) => {
                let new: Vec<Kind> = kinds.into_iter().filter(|k| !watching.contains(k)).collect();
                if first {
                    tracing::info!(kinds = ?new, "admin policy kinds served");
                    shared.index.write().expect("index lock").discovered(&new);
                    tx.send_modify(|_| {});
                    first = false;
                }
                for kind in new {
                    let resource = dynamic_resource(kind);
                    tracing::info!(kind = %kind, "watching");
                    tokio::spawn(watch_kind(
                        Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource),
                        kind,
                        without_managed_fields,
                        shared.clone(),
                        tx.clone(),
                    ));
                    watching.push(kind);
                }
            }
            Err(e) => {
                tracing::warn!("discovering admin policy kinds: {e}");
                shared.metrics.error(ErrorKind::Watch);
            }
        }
        if watching.len() == Kind::ADMIN.len() {
            return;
        }
        let pause = if first { 2 } else { 30 };
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
}

/// An object as the index takes it, without its managedFields (bookkeeping of who wrote what,
/// often larger than the object).
fn without_managed_fields<K>(o: &K) -> serde_json::Value
where
    K: kube::Resource + Clone + serde::Serialize,
{
    let mut o = o.clone();
    o.meta_mut().managed_fields = None;
    serde_json::to_value(&o).unwrap_or_default()
}

/// A Node as the index takes it: only what the compiler reads (name, labels, pod CIDRs and
/// addresses), not its images, conditions and the rest of its status, which kubelets rewrite often.
fn node_value(n: &Node) -> serde_json::Value {
    let spec = n.spec.as_ref();
    serde_json::json!({
        "metadata": {"name": n.metadata.name, "labels": n.metadata.labels,
            "resourceVersion": n.metadata.resource_version},
        "spec": {
            "podCIDR": spec.and_then(|s| s.pod_cidr.as_ref()),
            "podCIDRs": spec.and_then(|s| s.pod_cidrs.as_ref()),
        },
        "status": {"addresses": n.status.as_ref().and_then(|s| s.addresses.as_ref())},
    })
}

async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    value: fn(&K) -> serde_json::Value,
    shared: Arc<Shared>,
    tx: watch::Sender<u64>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize + Send + 'static,
{
    let config = watcher::Config::default().page_size(500);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let mut ix = shared.index.write().expect("index lock");
        // Every delivered update, deletion and completed list moves the kind's resourceVersion
        // (see `Index::progress`), which the status reports, even when the ruleset stays: the
        // sync loop hears of all of them and compiles only when the snapshot changed.
        let progressed = match event {
            Ok(Event::Init) => {
                ix.relist_start(kind);
                false
            }
            Ok(Event::InitApply(o)) => ix.apply(kind, value(&o)),
            Ok(Event::InitDone) => {
                tracing::info!(kind = %kind, "listed");
                ix.relist_done(kind);
                true
            }
            Ok(Event::Apply(o)) => {
                ix.apply(kind, value(&o));
                true
            }
            Ok(Event::Delete(o)) => {
                ix.delete(kind, &value(&o));
                true
            }
            Err(e) => {
                tracing::warn!(kind = %kind, "watch failed, keeping the current ruleset and retrying: {e}");
                shared.metrics.error(ErrorKind::Watch);
                false
            }
        };
        if progressed {
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// What was last applied.
struct Applied {
    ir: Ir,
    /// [`Ir::ruleset_hash`] of `ir`.
    hash: String,
    /// [`Index::version`] `ir` was compiled at: while the index stays at it, nothing is compiled.
    version: u64,
    /// [`attach::State::version`] `ir` was compiled with.
    attach_version: u64,
}

/// The writer of `cfg`'s backend and network namespace.
fn writer(cfg: &Config) -> Box<dyn Dataplane + Send> {
    match (cfg.backend, &cfg.netns) {
        (Backend::Nftables, Some(ns)) => Box::new(NetlinkWriter::in_netns(ns)),
        (Backend::Nftables, None) => Box::new(NetlinkWriter::new()),
        (Backend::Iptables, ns) => Box::new(IptablesRestore::new(ns.clone())),
    }
}

/// Removes the agent's ruleset from the kernel (nftables: `table inet policyc` and `table
/// bridge policyc` in one transaction; iptables: the hooks, chains and ipsets), after a write
/// under way. Call it once [`run`] is stopped (dropped), or the next sync writes it again.
pub async fn remove_ruleset(cfg: &Config, shared: &Shared) -> Result<(), policyc_dataplane::DataplaneError> {
    let _kernel = shared.kernel.lock().await;
    let mut w = writer(cfg);
    tokio::task::spawn_blocking(move || w.remove())
        .await
        .expect("remove task")
}

async fn sync_loop(
    cfg: Config,
    shared: Arc<Shared>,
    mut rx: watch::Receiver<u64>,
    mut attach_rx: watch::Receiver<attach::State>,
    status: Option<StatusWriter>,
) {
    let mut writer = writer(&cfg);
    let mut applied: Option<Applied> = None;
    let mut retry: Option<Duration> = None;
    // A cut that left flows it should have cut open (or could not read the table): retried
    // with its own backoff until it completes, also when nothing else changes.
    let mut cut_retry: Option<Duration> = None;
    // A status write the writer put off (only resourceVersions moved, and it wrote recently).
    let mut status_due: Option<Duration> = None;
    let mut open_flows = 0;
    let mut invalid = Vec::new();
    let mut status = status;
    loop {
        // A change, a retry after a failure, a put-off status write, or a periodic heartbeat.
        let wait = [retry, cut_retry, status_due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = attach_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(cfg.debounce).await;
        rx.mark_unchanged();
        let att = attach_rx.borrow_and_update().clone();
        let started = Instant::now();
        if att.attachment.is_none() {
            // No pod attachment found yet: nothing to enforce, and the status must not claim to.
            if !shared.index.read().expect("index lock").ready() {
                continue;
            }
            // The agent works; there is just nothing on this node to program yet.
            shared.ready.store(true, Ordering::Release);
            status_due = None;
            if let Some(sw) = status.as_mut() {
                let not_ready = att.not_ready();
                let report = Report {
                    enforced: None,
                    invalid: &invalid,
                    apply_error: None,
                    open_flows: 0,
                    compiled_from: Vec::new(),
                    synced_at: jiff::Timestamp::now(),
                    attachment: None,
                    not_ready: not_ready.as_ref().map(|(r, m)| (*r, m.as_str())),
                };
                status_due = publish_status(sw, report, &shared.metrics).await;
            }
            continue;
        }
        // Under one read lock: what the ruleset is compiled from, and (when the snapshot changed
        // since the applied ruleset was compiled, or nothing is applied) the ruleset.
        let (compiled, compiled_from) = {
            let ix = shared.index.read().expect("index lock");
            if !ix.ready() {
                continue;
            }
            let same = applied
                .as_ref()
                .is_some_and(|a| a.version == ix.version() && a.attach_version == att.version);
            let compiled = (!same).then(|| {
                let ports = att.pod_ports(ix.snapshot(), &cfg.node_name);
                let without = att.pods_without_port(ix.snapshot(), &cfg.node_name, &ports);
                shared.metrics.pods_without_port.set(without as i64);
                let opts = CompileOptions {
                    node: Some(cfg.node_name.clone()),
                    interface_prefix: cfg.interface_prefix.clone(),
                    fail_closed: cfg.fail_closed,
                    flow_log: cfg.flow_log,
                    attachment: att.kind(&cfg.bridge),
                    ports,
                };
                (
                    ix.compile(&opts),
                    ix.snapshot().policies.len() + ix.snapshot().admin_policies.len(),
                    ix.invalid().cloned().collect::<Vec<_>>(),
                    ix.version(),
                )
            });
            (compiled, compiled_from(&ix))
        };
        let compile_time = started.elapsed();
        let m = &shared.metrics;
        let mut apply_error = None;
        let mut cut = None;
        match compiled {
            // Nothing the ruleset is compiled from changed: only resourceVersions moved.
            None => {
                if let Some(a) = applied.as_ref().filter(|_| cut_retry.is_some() && cfg.cut_conntrack) {
                    cut = Some(a.ir.clone());
                }
            }
            Some((ir, policy_count, inv, version)) => {
                invalid = inv;
                let hash = ir.ruleset_hash();
                let stats = ir.stats();
                m.policies.set(policy_count as i64);
                m.invalid_objects.set(invalid.len() as i64);
                if let Some(a) = applied.as_mut().filter(|a| a.hash == hash) {
                    m.applies.get_or_create(&ApplyLabels { mode: "unchanged" }).inc();
                    if cut_retry.is_some() && cfg.cut_conntrack {
                        cut = Some(ir.clone());
                    }
                    // Same rules; policy generations and selection counts (the status) may be new.
                    a.ir = ir;
                    a.version = version;
                    a.attach_version = att.version;
                } else {
                    let current = applied.take();
                    let t = Instant::now();
                    let kernel = shared.kernel.clone().lock_owned().await;
                    let (w, current, ir_back, result) = tokio::task::spawn_blocking(move || {
                        // Held until the kernel answered, also when this task outlives the loop.
                        let _kernel = kernel;
                        let r = writer.apply(current.as_ref().map(|a| &a.ir), &ir);
                        (writer, current, ir, r)
                    })
                    .await
                    .expect("apply task");
                    writer = w;
                    let apply_time = t.elapsed();
                    m.apply_duration.observe(apply_time.as_secs_f64());
                    match result {
                        Ok(s) => {
                            // In place, `chains` also covers chains and sets added or deleted
                            // (a policy created or deleted); only a whole-table replace is
                            // `replace`.
                            let mode = match (s.in_place, s.chains, s.rules) {
                                (false, _, _) => "replace",
                                (true, 0, 0) => "elements",
                                (true, _, _) => "chains",
                            };
                            m.applies.get_or_create(&ApplyLabels { mode }).inc();
                            tracing::info!(
                                mode,
                                rules = stats.rules,
                                set_elements = stats.set_elements,
                                endpoints = stats.endpoints,
                                elements_added = s.elements_added,
                                elements_removed = s.elements_removed,
                                compile_ms = ms(compile_time),
                                apply_ms = ms(apply_time),
                                plan_ms = ms(s.plan_time),
                                kernel_ms = ms(s.kernel_time),
                                sync_ms = ms(started.elapsed()),
                                "ruleset applied"
                            );
                            if cfg.flow_log.is_some() {
                                shared.flows.set_points(policyc_compiler::flows::points(&ir_back));
                            }
                            // Also after a start: a flow denied meanwhile is cut, one allowed again released.
                            if cfg.cut_conntrack {
                                cut = Some(ir_back.clone());
                            }
                            applied = Some(Applied {
                                ir: ir_back,
                                hash,
                                version,
                                attach_version: att.version,
                            });
                            retry = None;
                        }
                        Err(e) => {
                            tracing::error!("applying the ruleset failed; the previous one stays: {e}");
                            m.error(ErrorKind::Apply);
                            apply_error = Some(e.to_string());
                            // Without a known kernel state, the next attempt is a full replace.
                            applied = None;
                            let _ = current;
                            retry = Some(
                                retry.map_or(Duration::from_millis(500), |d| (d * 2).min(Duration::from_secs(30))),
                            );
                        }
                    }
                }
                if apply_error.is_none() {
                    m.rules.set(stats.rules as i64);
                    m.sets.set(stats.sets as i64);
                    m.set_elements.set(stats.set_elements as i64);
                    m.endpoints.set(stats.endpoints as i64);
                }
            }
        }
        // The kernel holds the ruleset compiled from `compiled_from`: the sync time.
        let synced_at = jiff::Timestamp::now();
        if apply_error.is_none() {
            m.last_sync.set(unix_now());
            // What follows (conntrack, status) is not part of the sync.
            m.sync_duration.observe(started.elapsed().as_secs_f64());
            shared.ready.store(true, Ordering::Release);
        }
        if let Some(ir) = cut {
            match cut_conntrack(ir, cfg.netns.clone(), m).await {
                Some(0) => {
                    cut_retry = None;
                    open_flows = 0;
                }
                left => {
                    // Unknown (the table could not be read) counts as one flow left open.
                    open_flows = left.unwrap_or(1);
                    let next = cut_retry.map_or(Duration::from_millis(100), |d| (d * 2).min(Duration::from_secs(10)));
                    tracing::warn!(open_flows, retry_in_ms = ms(next), "conntrack cut incomplete, retrying");
                    cut_retry = Some(next);
                }
            }
        }
        // After the kernel commit and the cut: the status says what the kernel holds.
        // Also when nothing is applied (the first apply failed): the status then claims nothing.
        status_due = None;
        if let Some(sw) = status.as_mut() {
            let not_ready = att.not_ready();
            let report = Report {
                enforced: applied.as_ref().map(|a| (&a.ir, a.hash.as_str())),
                invalid: &invalid,
                apply_error: apply_error.as_deref(),
                open_flows,
                compiled_from,
                synced_at,
                attachment: att.attachment.map(attach::Attachment::as_str),
                not_ready: not_ready.as_ref().map(|(r, m)| (*r, m.as_str())),
            };
            status_due = publish_status(sw, report, m).await;
        }
    }
}

/// Writes the status; returns when to write again (put off, or failed).
async fn publish_status(sw: &mut StatusWriter, report: Report<'_>, m: &Metrics) -> Option<Duration> {
    match sw.publish(report).await {
        Ok(later) => later,
        Err(e) => {
            tracing::warn!("writing NodePolicyStatus: {e}");
            m.error(ErrorKind::Status);
            Some(Duration::from_secs(1))
        }
    }
}

/// What the index's ruleset is compiled from: each listed kind's resourceVersion and objects.
fn compiled_from(ix: &Index) -> Vec<KindProgress> {
    ix.progress()
        .filter_map(|(kind, p)| {
            Some(KindProgress {
                kind: kind.as_str().to_string(),
                resource_version: p.resource_version?.to_string(),
                objects: p.objects() as i64,
            })
        })
        .collect()
}

/// Marks the conntrack entries of flows `ir` denies and releases those it allows again, off
/// the runtime thread (a dump and one netlink request per changed entry). Returns how many
/// entries that needed a change did not get it (`Some(0)`: the cut is complete), or `None`
/// when the table could not be read.
async fn cut_conntrack(ir: Ir, netns: Option<PathBuf>, m: &Metrics) -> Option<usize> {
    let t = Instant::now();
    let result =
        tokio::task::spawn_blocking(move || policyc_dataplane::conntrack::cut_denied(&ir, netns.as_deref())).await;
    m.conntrack_duration.observe(t.elapsed().as_secs_f64());
    match result {
        Ok(Ok(cut)) => {
            if cut.marked + cut.released + cut.failed > 0 {
                tracing::info!(
                    judged = cut.judged,
                    marked = cut.marked,
                    released = cut.released,
                    vanished = cut.vanished,
                    failed = cut.failed,
                    cut_ms = ms(t.elapsed()),
                    "cut flows no longer allowed"
                );
            }
            m.conntrack_cut.inc_by(cut.marked as u64);
            for (result, n) in [
                ("marked", cut.marked),
                ("released", cut.released),
                ("vanished", cut.vanished),
                ("failed", cut.failed),
            ] {
                if n > 0 {
                    m.conntrack_updates
                        .get_or_create(&ConntrackLabels { result })
                        .inc_by(n as u64);
                }
            }
            if cut.failed > 0 {
                m.error(ErrorKind::Conntrack);
            }
            Some(cut.failed)
        }
        Ok(Err(e)) => {
            tracing::warn!("conntrack: {e}");
            m.error(ErrorKind::Conntrack);
            None
        }
        Err(e) => {
            tracing::warn!("conntrack task: {e}");
            m.error(ErrorKind::Conntrack);
            None
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_compiler::load::{parse_object, Object, Parsed};

    fn parsed_node(mut v: serde_json::Value) -> policyc_compiler::model::Node {
        v["apiVersion"] = "v1".into();
        v["kind"] = "Node".into();
        match parse_object(&v) {
            Ok((Parsed::Object(Object::Node(n)), _)) => n,
            other => panic!("not a node: {other:?}"),
        }
    }

    /// The slim Node the watcher keeps gives the compiler the very Node the full object does.
    #[test]
    fn node_value_keeps_what_the_compiler_reads() {
        let full = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"zone": "a"}, "resourceVersion": "7",
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"], "providerID": "x"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                              {"type": "ExternalIP", "address": "203.0.113.1"},
                              {"type": "Hostname", "address": "n1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 1}],
            },
        });
        let node: Node = serde_json::from_value(full.clone()).unwrap();
        let slim = node_value(&node);
        assert!(slim["metadata"].get("managedFields").is_none());
        assert!(slim["status"].get("images").is_none() && slim["status"].get("conditions").is_none());
        let n = parsed_node(slim);
        assert_eq!(n, parsed_node(full));
        assert_eq!(n.addresses.len(), 2);
        assert_eq!(n.pod_cidrs.len(), 2);
        // A Node with neither spec nor status (as some tests create them).
        let bare: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(parsed_node(node_value(&bare)).addresses.is_empty());
    }
}
