//! The agents in the lab: a real API server holds the lab's cluster, one `policyc-agent` per
//! node programs that node's namespace, and every check is on real packets.
//!
//! ```text
//!  upstream scenarios ─► kubectl apply / delete / label ─► API server ─► agents ─► kernels
//!                        policyc wait --for=enforced, rulesetHash = compile(snapshot) ─► probe
//!  never leaks:  continuous prober (denied pairs + allowed control pairs) across kill -9 of the
//!                agents, 1,000 policy updates, pod churn, an API server restart
//!  conntrack cut: long-lived TCP and UDP flows stop when a policy denies them; an allowed one
//!                 keeps its conntrack entry and its bytes
//!  cut under churn: 20 long-lived flows, 200 new connections/s, 50 rounds of edits that revoke
//!                   half, swap halves in one edit, restore all; and the same with kill -9 of an
//!                   agent right after it committed a revoking ruleset, before its cut
//!  node addresses: an admin `nodes` peer follows a Node's status.addresses (kubectl patch
//!                  --subresource=status) into the kernel's sets and into real packets
//! ```
//!
//! Needs root, the built `policyc-agent` and `policyc` (cargo test --workspace builds them) and
//! e2e/bin (bash e2e/apiserver/build.sh); skipped with the reason otherwise, except under CI.
//! The tests run one at a time: each builds its own lab and API server. With
//! `POLICYC_SCENARIO=TEXT`, the scenario test runs only the files whose path contains TEXT.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use policyc_compiler::render::CUT_MARK;

use policyc_lab::cluster::{ClusterLab, ClusterOptions};
use policyc_lab::traffic::{Expect, PairCounts, Prober};
use policyc_lab::verify::{self, Report, VerifyOptions};
use policyc_lab::Attachment;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn cluster_options() -> Option<ClusterOptions> {
    match ClusterOptions::from_target_dir() {
        Ok(o) => Some(o),
        Err(e) => {
            policyc_testhost::skip(e);
            None
        }
    }
}

macro_rules! require_cluster {
    () => {{
        require_lab!();
        match cluster_options() {
            Some(o) => o,
            None => return,
        }
    }};
}

fn upstream_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/upstream")
}

#[test]
fn upstream_scenarios_through_apiserver_and_agents_canal() {
    upstream_scenarios(Attachment::Canal);
}

#[test]
fn upstream_scenarios_through_apiserver_and_agents_flannel() {
    upstream_scenarios(Attachment::Flannel);
}

/// Cluster options for one attachment; `None` (skipped, or failed under CI) when the flannel
/// attachment's CNI plugins or br_netfilter are missing.
fn attachment_options(mut opts: ClusterOptions, attachment: Attachment) -> Option<ClusterOptions> {
    if attachment == Attachment::Flannel && !policyc_testhost::require(policyc_lab::cni::check()) {
        return None;
    }
    opts.lab.attachment = attachment;
    Some(opts)
}

/// The agents' cluster, checking after each step that the flow events of its probes name the
/// rule the IR says decided each cell: a denied cell's record its deciding side's direction
/// and exactly the policies isolating that pod, an allowed cell's records the first rule that
/// allowed it on each isolated side.
struct Observed<'a> {
    cluster: &'a mut ClusterLab,
    /// The step being probed.
    pending: Option<Probed>,
    cells: usize,
    /// Denied cells whose probe was dropped as a cut flow (see `check_pending`).
    by_cut: usize,
    problems: Vec<String>,
}

/// Since when (RFC 3339), the IR and the ports of a step's probes.
type Probed = (String, policyc_compiler::Ir, Vec<(u16, policyc_compiler::Protocol)>);

impl Observed<'_> {
    fn check_pending(&mut self) {
        use policyc_compiler::eval::SideVerdict;
        let Some((since, ir, ports)) = self.pending.take() else {
            return;
        };
        // The last probes' events are merged within the agents' interval (200 ms here).
        std::thread::sleep(Duration::from_millis(600));
        let mut records = Vec::new();
        for node in self.cluster.nodes() {
            records.extend(
                flow_records(self.cluster, &node, "limit=10000")
                    .into_iter()
                    .filter(|r| r.time >= since),
            );
        }
        let ev = policyc_compiler::Evaluator::new(&ir);
        let proto_name = |p: policyc_compiler::Protocol| p.to_string();
        for &(port, protocol) in &ports {
            for src in &ir.endpoints {
                for dst in &ir.endpoints {
                    if src.pod == dst.pod {
                        continue;
                    }
                    let Some((s, d)) = policyc_compiler::eval::flow_addresses(src, dst) else {
                        continue;
                    };
                    let v = ev.evaluate(&policyc_compiler::Flow {
                        src: s,
                        dst: d,
                        protocol,
                        port,
                    });
                    let (sn, dn) = (src.pod.to_string(), dst.pod.to_string());
                    let of_cell = |verdict: &str| -> Vec<&policyc_compiler::flows::FlowRecord> {
                        records
                            .iter()
                            .filter(|r| {
                                r.source.name() == sn
                                    && r.destination.name() == dn
                                    && r.destination.port == Some(port)
                                    && r.protocol == proto_name(protocol)
                                    && r.verdict == verdict
                            })
                            .collect()
                    };
                    self.cells += 1;
                    let cell = format!("{sn} -> {dn} {port}/{protocol}");
                    let side_ok = |side: &SideVerdict, r: &policyc_compiler::flows::FlowRecord| {
                        r.direction == side.direction.to_string()
                    };
                    if !v.allowed {
                        let side = if v.egress.allowed { &v.ingress } else { &v.egress };
                        let want: Vec<String> = side.policies.iter().map(ToString::to_string).collect();
                        let found = of_cell("denied");
                        // A probe that happens to reuse the addresses and ports of a flow an
                        // earlier step's change cut (its conntrack entry still tracked: a
                        // half-open connection, say) is dropped as cut before any policy: a
                        // denial of this cell too, attributed to the cut. Rare; counted.
                        let by_cut = found.iter().any(|r| r.tier == "Cut");
                        self.by_cut += usize::from(by_cut);
                        if !by_cut
                            && !found
                                .iter()
                                .any(|r| side_ok(side, r) && r.isolated_by == want && r.tier == "Default")
                        {
                            self.problems.push(format!(
                                "{cell}: denied ({} isolated by {want:?}) but records say {found:?}",
                                side.direction
                            ));
                        }
                        continue;
                    }
                    for side in [&v.egress, &v.ingress] {
                        let Some(rule) = side.allowed_by.as_ref().filter(|_| side.isolated) else {
                            continue;
                        };
                        let found = of_cell("allowed");
                        let named = |r: &&policyc_compiler::flows::FlowRecord| {
                            side_ok(side, r)
                                && r.policy
                                    .as_ref()
                                    .is_some_and(|p| p.namespace == rule.policy.namespace && p.name == rule.policy.name)
                                && r.rule == format!("{}[{}]", rule.direction, rule.rule)
                        };
                        if !found.iter().any(named) {
                            self.problems.push(format!(
                                "{cell}: allowed by {} {}[{}] but records say {found:?}",
                                rule.policy, rule.direction, rule.rule
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl verify::Enforcer for Observed<'_> {
    fn begin(&mut self, initial: &policyc_compiler::Snapshot) -> Result<(), policyc_lab::Error> {
        self.cluster.begin(initial)
    }

    fn apply_step(
        &mut self,
        step: &policyc_compiler::scenario::Step,
        after: &policyc_compiler::Snapshot,
    ) -> Result<(), policyc_lab::Error> {
        self.check_pending();
        self.cluster.apply_step(step, after)?;
        let ports = step
            .expectations()
            .map_err(policyc_lab::Error::new)?
            .into_iter()
            .flat_map(|b| b.ports)
            .collect();
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        self.pending = Some((now, self.cluster.lab().cluster_ir(), ports));
        Ok(())
    }

    fn lab(&self) -> &policyc_lab::Lab {
        self.cluster.lab()
    }
}

fn upstream_scenarios(attachment: Attachment) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut opts) = attachment_options(require_cluster!(), attachment) else {
        return;
    };
    // Flow events on, as the agents run by default; their records are checked cell by cell.
    opts.lab.flow_log = Some(policyc_compiler::flows::FlowLog::default());
    opts.flow_interval_ms = 200;
    let started = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(upstream_dir())
        .expect("scenarios/upstream")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".yaml") && !name.starts_with("cluster")
        })
        .collect();
    files.sort();
    if let Ok(only) = std::env::var("POLICYC_SCENARIO") {
        files.retain(|f| f.to_string_lossy().contains(&only));
    }
    let loaded: Vec<_> = files
        .iter()
        .map(|f| {
            let (s, initial) = verify::load_scenario(f, Default::default()).expect("scenario loads");
            (f, s, initial)
        })
        .collect();
    let first = &loaded.first().expect("upstream scenarios").2;
    let mut cluster = ClusterLab::start(first, opts.clone()).expect("starting the cluster lab");
    eprintln!(
        "cluster lab {} up in {:.1} s",
        cluster.lab().prefix(),
        started.elapsed().as_secs_f64()
    );

    let vopts = VerifyOptions::default();
    let (mut steps, mut ports, mut failed) = (0usize, 0usize, 0usize);
    let mut failures = String::new();
    let (mut flow_cells, mut flow_by_cut, mut flow_problems) = (0usize, 0usize, Vec::new());
    for (path, scenario, initial) in &loaded {
        let t = Instant::now();
        let mut observed = Observed {
            cluster: &mut cluster,
            pending: None,
            cells: 0,
            by_cut: 0,
            problems: Vec::new(),
        };
        let results = verify::run_scenario(&mut observed, scenario, initial, &vopts);
        observed.check_pending();
        flow_cells += observed.cells;
        flow_by_cut += observed.by_cut;
        flow_problems.extend(observed.problems.into_iter().map(|p| format!("{}: {p}", scenario.name)));
        steps += results.len();
        ports += results.iter().map(|s| s.ports.len()).sum::<usize>();
        let report = Report {
            name: format!("{} ({})", scenario.name, path.display()),
            lab: cluster.lab().prefix().to_string(),
            cluster: false,
            timeout_ms: opts.lab.timeout.as_millis() as u64,
            steps: results,
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        eprintln!(
            "{name:<70} {} steps  {:>5.1} s  {}",
            report.steps.len(),
            t.elapsed().as_secs_f64(),
            if report.ok() { "ok" } else { "FAILED" }
        );
        if report.steps.len() != scenario.steps.len() || !report.ok() {
            failed += 1;
            let _ = writeln!(failures, "\n=== {}", report.to_text());
        }
    }
    drop(cluster);
    eprintln!(
        "{} scenarios through the API server and agents ({}): {steps} steps, {ports} port checks in {:.1} s",
        loaded.len(),
        attachment.name(),
        started.elapsed().as_secs_f64()
    );
    assert!(ports > 0, "no port was checked");
    assert!(failed == 0, "{failed} scenario(s) failed:\n{failures}");
    eprintln!(
        "flow records checked for {flow_cells} cells ({}): {} wrong, {flow_by_cut} denied cells dropped as cut flows",
        attachment.name(),
        flow_problems.len()
    );
    assert!(flow_cells > 0);
    assert!(
        flow_problems.is_empty(),
        "{} cells' flow records wrong:\n{}",
        flow_problems.len(),
        flow_problems[..flow_problems.len().min(30)].join("\n")
    );
}

// === Conntrack cut ===

fn snapshot(yaml: &str) -> policyc_compiler::Snapshot {
    let mut l = policyc_compiler::Loader::new();
    l.add_text("test", yaml);
    let (s, d) = l.finish();
    assert!(
        d.iter().all(|d| d.severity != policyc_compiler::Severity::Error),
        "{d:?}"
    );
    s
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\n\
         status: {{phase: Running, podIPs: [{{ip: '{ip}'}}]}}\n"
    )
}

fn ip_of(cluster: &ClusterLab, ns: &str, name: &str) -> std::net::IpAddr {
    cluster
        .lab()
        .pod_ips(&policyc_compiler::ObjectRef::new(ns, name))
        .and_then(|ips| ips.first().copied())
        .expect("pod address")
}

fn pod_netns(cluster: &ClusterLab, ns: &str, name: &str) -> PathBuf {
    let n = cluster
        .lab()
        .pod_netns(&policyc_compiler::ObjectRef::new(ns, name))
        .expect("pod namespace");
    policyc_lab::sys::netns_path(n)
}

/// The conntrack entries of a node towards `port`: (source address, protocol) → (id, mark).
fn conntrack_entries(cluster: &ClusterLab, node: &str, port: u16) -> BTreeMap<(String, String), (String, u32)> {
    let ns = cluster.lab().node_netns(node).expect("node");
    let out = policyc_lab::sys::netns_exec(ns, &["conntrack", "-L", "-o", "id"]).expect("conntrack -L");
    out.lines()
        .filter(|l| l.contains(&format!(" dport={port} ")))
        .filter_map(|l| {
            let word = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            let proto = l.split_whitespace().next()?.to_string();
            Some(((word("src=")?, proto), (word("id=")?, word("mark=")?.parse().ok()?)))
        })
        .collect()
}

/// Waits (polling) until `f` holds; panics naming `what` after `timeout`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn only_from(pods: &[&str]) -> serde_json::Value {
    let from: Vec<serde_json::Value> = pods
        .iter()
        .map(|p| serde_json::json!({"podSelector": {"matchLabels": {"pod": p}}}))
        .collect();
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server-clients", "namespace": "app"},
        "spec": {"podSelector": {"matchLabels": {"pod": "server"}}, "ingress": [{"from": from}]}
    })
}

/// Long-lived TCP and UDP flows (the server echoes UDP, so conntrack sees replies) from near
/// (the server's node), far and keeper (the other node). A policy then admits only the keeper:
/// near's and far's flows stop at once — not a byte more arrives while the keeper's flows carry
/// on — and the server node's conntrack table holds the same entries (same ids), near's and
/// far's marked cut, the keeper's not. Admitting near again releases its entries and its flows
/// resume; far stays cut.
#[test]
fn conntrack_cut_stops_denied_flows_and_keeps_allowed_ones() {
    conntrack_cut_stops_denied_flows(Attachment::Canal);
}

#[test]
fn conntrack_cut_stops_denied_flows_and_keeps_allowed_ones_flannel() {
    conntrack_cut_stops_denied_flows(Attachment::Flannel);
}

fn conntrack_cut_stops_denied_flows(attachment: Attachment) {
    use policyc_lab::traffic::{Sink, Stream, STREAM_CHUNK};

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut opts) = attachment_options(require_cluster!(), attachment) else {
        return;
    };
    // With flow events, the cut flows' dropped packets are attributed to the cut.
    opts.lab.flow_log = Some(policyc_compiler::flows::FlowLog::default());
    let started = Instant::now();
    let s = snapshot(
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n".to_string(),
            pod("app", "server", "node-1", "10.244.1.10", "pod: server"),
            pod("app", "near", "node-1", "10.244.1.11", "pod: near"),
            pod("app", "far", "node-2", "10.244.2.10", "pod: far"),
            pod("app", "keeper", "node-2", "10.244.2.11", "pod: keeper"),
        ]
        .concat(),
    );
    let mut cluster = ClusterLab::start(&s, opts).expect("starting the cluster lab");
    let server = SocketAddr::new(ip_of(&cluster, "app", "server"), 7100);
    let sink = Sink::start(&pod_netns(&cluster, "app", "server"), server, true).expect("sink");
    let clients = ["near", "far", "keeper"];
    let ips: BTreeMap<&str, IpAddr> = clients.iter().map(|c| (*c, ip_of(&cluster, "app", c))).collect();
    let mut streams = Vec::new();
    for client in clients {
        let ns = pod_netns(&cluster, "app", client);
        streams.push((client, "tcp", Stream::tcp(&ns, server).expect("tcp stream")));
        streams.push((client, "udp", Stream::udp(&ns, server).expect("udp stream")));
    }
    let bytes = |client: &str, proto: &str| {
        let a = sink.arrived_from(ips[client]);
        match proto {
            "tcp" => a.tcp_bytes,
            _ => a.udp_bytes,
        }
    };
    let chunks = |n: u64| n * STREAM_CHUNK as u64;
    for (client, proto, _) in &streams {
        eventually(
            &format!("{client} {proto} bytes at the server"),
            Duration::from_secs(10),
            || bytes(client, proto) >= chunks(10),
        );
    }
    let before = conntrack_entries(&cluster, "node-1", server.port());
    assert_eq!(
        before.len(),
        6,
        "a TCP and a UDP entry per client on node-1: {before:?}"
    );
    assert!(before.values().all(|(_, mark)| mark & CUT_MARK == 0), "{before:?}");
    let cut_before = cluster
        .agent_metric("node-1", "policyc_conntrack_cut_total", "")
        .expect("metrics");

    // Only the keeper may reach the server now.
    let enforced_in = cluster
        .enforce_policies(&[only_from(&["keeper"])])
        .expect("policy enforced");
    let at: BTreeMap<(&str, &str), u64> = streams.iter().map(|(c, p, _)| ((*c, *p), bytes(c, p))).collect();
    let keeper = (bytes("keeper", "tcp"), bytes("keeper", "udp"));
    eventually("2 s more of the keeper's flows", Duration::from_secs(20), || {
        bytes("keeper", "tcp") >= keeper.0 + chunks(200) && bytes("keeper", "udp") >= keeper.1 + chunks(200)
    });
    let leaked: Vec<String> = at
        .iter()
        .filter(|((c, _), _)| *c != "keeper")
        .filter(|((c, p), n)| bytes(c, p) != **n)
        .map(|((c, p), n)| format!("{c}/{p}: {} bytes", bytes(c, p) - n))
        .collect();
    assert!(
        leaked.is_empty(),
        "bytes of denied flows arrived after the cut: {leaked:?}"
    );
    for client in ["near", "far"] {
        let src = format!("app/{client}");
        eventually(&format!("a Cut record of {src}"), Duration::from_secs(10), || {
            flow_records(&cluster, "node-1", "verdict=denied&pod=app/server&limit=10000")
                .iter()
                .any(|r| r.tier == "Cut" && r.source.name() == src && r.rule == "flow cut: a policy change denies it")
        });
    }
    let after = conntrack_entries(&cluster, "node-1", server.port());
    let ids = |m: &BTreeMap<(String, String), (String, u32)>| -> BTreeMap<(String, String), String> {
        m.iter().map(|(k, (id, _))| (k.clone(), id.clone())).collect()
    };
    assert_eq!(ids(&after), ids(&before), "no entry deleted or re-created");
    for ((src, proto), (_, mark)) in &after {
        let cut = src != &ips["keeper"].to_string();
        assert_eq!(mark & CUT_MARK != 0, cut, "{src} {proto}: mark {mark:#x}");
    }
    let marked = cluster
        .agent_metric("node-1", "policyc_conntrack_cut_total", "")
        .expect("metrics")
        - cut_before;
    assert_eq!(
        marked, 4.0,
        "node-1's agent marked near's and far's TCP and UDP entries"
    );

    // Near is admitted again: its entries lose the mark and its flows resume; far stays cut.
    cluster
        .enforce_policies(&[only_from(&["keeper", "near"])])
        .expect("policy enforced");
    let far = (bytes("far", "tcp"), bytes("far", "udp"));
    let near = (bytes("near", "tcp"), bytes("near", "udp"));
    eventually("near's flows resuming", Duration::from_secs(20), || {
        bytes("near", "tcp") > near.0 && bytes("near", "udp") > near.1
    });
    let released = conntrack_entries(&cluster, "node-1", server.port());
    assert_eq!(ids(&released), ids(&before), "no entry deleted or re-created");
    for ((src, proto), (_, mark)) in &released {
        let cut = src == &ips["far"].to_string();
        assert_eq!(mark & CUT_MARK != 0, cut, "{src} {proto}: mark {mark:#x}");
    }
    assert_eq!((bytes("far", "tcp"), bytes("far", "udp")), far, "far stays cut");
    eprintln!(
        "conntrack cut: policy enforced on every node {:.0} ms after kubectl apply; 4 flows cut, 2 kept, \
         2 released; test took {:.1} s",
        enforced_in.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
}

// === Conntrack cut under churn ===

/// The long-lived flows' port on the servers, and the churn's.
const STREAM_PORT: u16 = 7100;
const CHURN_PORT: u16 = 7200;
/// Clients of the long-lived flows and their nodes: each has a TCP stream and a UDP echo flow to
/// each server, so 20 flows, 10 within a node and 10 across.
const CLIENTS: [(&str, &str); 5] = [
    ("c1", "node-1"),
    ("c2", "node-1"),
    ("c3", "node-2"),
    ("c4", "node-2"),
    ("c5", "node-2"),
];
const SERVERS: [(&str, &str); 2] = [("srv1", "node-1"), ("srv2", "node-2")];
/// New short connections per second from each churn pod (half TCP, half UDP).
const CHURN_RATE: u32 = 50;
/// What a policy decides: (client, server index). Both flows of a pair go together.
type CutPair = (&'static str, usize);

/// One long-lived flow.
struct CutFlow {
    client: &'static str,
    server: usize,
    tcp: bool,
    client_ip: IpAddr,
    stream: policyc_lab::traffic::Stream,
}

impl CutFlow {
    fn pair(&self) -> CutPair {
        (self.client, self.server)
    }

    fn name(&self) -> String {
        let proto = if self.tcp { "tcp" } else { "udp" };
        format!("{}->{}/{proto}", self.client, SERVERS[self.server].0)
    }
}

/// What one policy change did, for the figures.
#[derive(Default)]
struct Change {
    /// Flows revoked, restored.
    revoked: usize,
    restored: usize,
    /// From the API's acknowledgement (kubectl apply returned) to every node reporting the
    /// change's ruleset (status written after the kernel commit and the cut).
    synced: Duration,
    /// From the acknowledgement to the last byte of each revoked flow at its server (ms;
    /// negative when the byte came before kubectl returned).
    last_byte_ms: Vec<f64>,
    /// From the acknowledgement to the first byte (as seen by polling) of each restored flow.
    resumed_tcp_ms: Vec<f64>,
    resumed_udp_ms: Vec<f64>,
    /// With a kill: how many of the killed node's revoked entries its agent had marked by then,
    /// of how many.
    marked_at_kill: Option<(usize, usize)>,
}

/// The churn tests' lab: two servers, five clients, 20 long-lived flows, two churn pods, and
/// policies (one per server) that admit a chosen set of client pairs and always the churn.
struct CutRig {
    cluster: ClusterLab,
    sinks: Vec<policyc_lab::traffic::Sink>,
    _churn_sinks: Vec<policyc_lab::traffic::Sink>,
    churn: Vec<policyc_lab::traffic::Churn>,
    /// Churn made while the lab came up (before the rounds).
    churn_before: u64,
    flows: Vec<CutFlow>,
    allowed: BTreeSet<CutPair>,
    started: Instant,
    failures: Vec<String>,
}

fn server_policies(allowed: &BTreeSet<CutPair>) -> Vec<serde_json::Value> {
    (0..SERVERS.len())
        .map(|s| {
            let mut values: Vec<&str> = allowed.iter().filter(|(_, srv)| *srv == s).map(|(c, _)| *c).collect();
            values.push("churn");
            serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("clients-of-{}", SERVERS[s].0), "namespace": "app"},
                "spec": {"podSelector": {"matchLabels": {"pod": SERVERS[s].0}},
                         "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                             {"key": "role", "operator": "In", "values": values}]}}]}]}
            })
        })
        .collect()
}

fn all_pairs() -> BTreeSet<CutPair> {
    CLIENTS
        .iter()
        .flat_map(|(c, _)| (0..SERVERS.len()).map(move |s| (*c, s)))
        .collect()
}

/// Percentile `p` (0..=100) of `v` (nearest rank); 0 when empty.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

fn figures(v: &[f64]) -> String {
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        percentile(v, 50.0),
        percentile(v, 99.0),
        percentile(v, 100.0),
        v.len()
    )
}

impl CutRig {
    fn start(opts: ClusterOptions) -> CutRig {
        use policyc_lab::traffic::{Churn, Sink, Stream};
        let started = Instant::now();
        let mut yaml = vec!["apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n".to_string()];
        for (i, (name, node)) in SERVERS.iter().enumerate() {
            let n = &node[5..];
            yaml.push(pod(
                "app",
                name,
                node,
                &format!("10.244.{n}.{}", 10 + i),
                &format!("pod: {name}, role: server"),
            ));
        }
        for (i, (name, node)) in CLIENTS.iter().enumerate() {
            let n = &node[5..];
            yaml.push(pod(
                "app",
                name,
                node,
                &format!("10.244.{n}.{}", 20 + i),
                &format!("pod: {name}, role: {name}"),
            ));
        }
        for node in ["node-1", "node-2"] {
            let n = &node[5..];
            yaml.push(pod(
                "app",
                &format!("churn-{n}"),
                node,
                &format!("10.244.{n}.30"),
                "role: churn",
            ));
        }
        let s = snapshot(&yaml.concat());
        let mut cluster = ClusterLab::start(&s, opts).expect("starting the cluster lab");
        let allowed = all_pairs();
        cluster
            .enforce_policies(&server_policies(&allowed))
            .expect("policies admitting every client");
        let server_addr = |c: &ClusterLab, s: usize, port| SocketAddr::new(ip_of(c, "app", SERVERS[s].0), port);
        let mut sinks = Vec::new();
        let mut churn_sinks = Vec::new();
        for (s, (name, _)) in SERVERS.iter().enumerate() {
            let ns = pod_netns(&cluster, "app", name);
            sinks.push(Sink::start(&ns, server_addr(&cluster, s, STREAM_PORT), true).expect("stream sink"));
            churn_sinks.push(Sink::start(&ns, server_addr(&cluster, s, CHURN_PORT), false).expect("churn sink"));
        }
        let mut flows = Vec::new();
        for (client, _) in CLIENTS {
            let ns = pod_netns(&cluster, "app", client);
            for server in 0..SERVERS.len() {
                for tcp in [true, false] {
                    let dst = server_addr(&cluster, server, STREAM_PORT);
                    let stream = if tcp {
                        Stream::tcp(&ns, dst)
                    } else {
                        Stream::udp(&ns, dst)
                    }
                    .expect("stream");
                    flows.push(CutFlow {
                        client,
                        server,
                        tcp,
                        client_ip: ip_of(&cluster, "app", client),
                        stream,
                    });
                }
            }
        }
        let targets: Vec<SocketAddr> = (0..SERVERS.len())
            .map(|s| server_addr(&cluster, s, CHURN_PORT))
            .collect();
        let churn = ["churn-1", "churn-2"]
            .iter()
            .map(|p| {
                Churn::start(
                    &pod_netns(&cluster, "app", p),
                    &targets,
                    CHURN_RATE,
                    Duration::from_secs(600),
                )
                .expect("churn")
            })
            .collect();
        let mut rig = CutRig {
            cluster,
            sinks,
            _churn_sinks: churn_sinks,
            churn,
            churn_before: 0,
            flows,
            allowed,
            started,
            failures: Vec::new(),
        };
        for f in &rig.flows {
            let b = rig.bytes(f).0;
            eventually(&format!("{} flowing", f.name()), Duration::from_secs(10), || {
                rig.bytes(f).0 >= b + 10 * policyc_lab::traffic::STREAM_CHUNK as u64
            });
        }
        rig.churn_before = rig.churned().0;
        rig
    }

    /// New connections the churn made, and how many failed.
    fn churned(&self) -> (u64, u64) {
        let made: Vec<policyc_lab::traffic::Churned> = self.churn.iter().map(|c| c.made()).collect();
        (
            made.iter().map(|m| m.connections + m.datagrams).sum(),
            made.iter().map(|m| m.failed).sum(),
        )
    }

    /// Bytes of a flow that reached its server, and when the last of them was read.
    fn bytes(&self, f: &CutFlow) -> (u64, Option<Instant>) {
        let a = self.sinks[f.server].arrived_from(f.client_ip);
        match f.tcp {
            true => (a.tcp_bytes, a.last_tcp),
            false => (a.udp_bytes, a.last_udp),
        }
    }

    /// When a flow's bytes last started arriving again after a pause.
    fn resumed(&self, f: &CutFlow) -> Option<Instant> {
        let a = self.sinks[f.server].arrived_from(f.client_ip);
        if f.tcp {
            a.resumed_tcp
        } else {
            a.resumed_udp
        }
    }

    fn all_bytes(&self) -> Vec<u64> {
        self.flows.iter().map(|f| self.bytes(f).0).collect()
    }

    /// The marks of the long-lived flows' entries in their servers' nodes' tables, by flow
    /// index (`None`: no entry), read with `conntrack -L`; and the nodes' table sizes.
    fn marks(&self) -> (Vec<Option<u32>>, BTreeMap<&'static str, usize>) {
        let mut by_tuple = BTreeMap::new();
        let mut sizes = BTreeMap::new();
        for (_, node) in SERVERS {
            let ns = self.cluster.lab().node_netns(node).expect("node");
            let out = policyc_lab::sys::netns_exec(ns, &["conntrack", "-L"]).expect("conntrack -L");
            sizes.insert(node, out.lines().count());
            for l in out.lines().filter(|l| l.contains(&format!(" dport={STREAM_PORT} "))) {
                let word = |key: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .map(str::to_string)
                };
                let key = (
                    l.split_whitespace().next().map(str::to_string),
                    word("src="),
                    word("sport="),
                    word("dst="),
                );
                if let Some(mark) = word("mark=").and_then(|m| m.parse::<u32>().ok()) {
                    by_tuple.insert((node, key), mark);
                }
            }
        }
        let marks = self
            .flows
            .iter()
            .map(|f| {
                let proto = if f.tcp { "tcp" } else { "udp" };
                let local = f.stream.local_addr();
                let key = (
                    Some(proto.to_string()),
                    Some(f.client_ip.to_string()),
                    Some(local.port().to_string()),
                    Some(ip_of(&self.cluster, "app", SERVERS[f.server].0).to_string()),
                );
                by_tuple.get(&(SERVERS[f.server].1, key)).copied()
            })
            .collect();
        (marks, sizes)
    }

    /// How many times a node's agent logged a ruleset applied (its log survives restarts).
    fn applies_logged(&self, node: &str) -> usize {
        let log = self.cluster.dir().join(format!("agent-{node}.log"));
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("ruleset applied")
            .count()
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAILURE: {what}");
        self.failures.push(what);
    }

    /// Changes the policies to admit `want`, with one kubectl apply; with `kill`, `kill -9` of
    /// that node's agent as soon as it logged the new ruleset applied (before, during or just
    /// after its cut), then a restart. Checks: every node reports the new ruleset; the
    /// revoked flows' entries are marked, the others' not; revoked (and still denied) flows
    /// got no byte after that; kept flows go on; restored flows resume.
    fn change(&mut self, label: &str, want: BTreeSet<CutPair>, kill: Option<&str>) -> Change {
        const CHUNK: u64 = policyc_lab::traffic::STREAM_CHUNK as u64;
        let was = std::mem::replace(&mut self.allowed, want.clone());
        let state = |f: &CutFlow| (was.contains(&f.pair()), want.contains(&f.pair()));
        let before = self.all_bytes();
        let applies = kill.map(|n| self.applies_logged(n));
        self.cluster
            .apply_policies(&server_policies(&want))
            .expect("kubectl apply");
        let ack = Instant::now();
        let mut change = Change::default();
        if let (Some(node), Some(applies)) = (kill, applies) {
            let reached = Instant::now();
            while self.applies_logged(node) == applies {
                assert!(
                    reached.elapsed() < Duration::from_secs(30),
                    "{label}: {node} never applied the change"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            self.cluster.kill_agent(node).expect("kill -9");
            let (marks, _) = self.marks();
            let revoked_here: Vec<usize> = (0..self.flows.len())
                .filter(|i| SERVERS[self.flows[*i].server].1 == node && state(&self.flows[*i]) == (true, false))
                .collect();
            let marked = revoked_here
                .iter()
                .filter(|i| marks[**i].is_some_and(|m| m & CUT_MARK != 0))
                .count();
            change.marked_at_kill = Some((marked, revoked_here.len()));
            self.cluster.start_agent(node).expect("agent restarts");
        }
        if let Err(e) = self.cluster.wait_synced() {
            self.fail(format!("{label}: {e}"));
        }
        change.synced = ack.elapsed();
        let synced_at = Instant::now();
        let at_sync = self.all_bytes();

        // The cut completed: revoked (and still denied) flows' entries marked, the others' not.
        let t = Instant::now();
        let wrong = loop {
            let (marks, _) = self.marks();
            let wrong: Vec<String> = self
                .flows
                .iter()
                .zip(&marks)
                .filter(|(f, m)| {
                    // Wrong: no entry, marked though allowed now, or unmarked though denied.
                    m.is_none_or(|m| (m & CUT_MARK != 0) == state(f).1)
                })
                .map(|(f, m)| format!("{} {:?} mark {m:?}", f.name(), state(f)))
                .collect();
            if wrong.is_empty() || t.elapsed() > Duration::from_secs(10) {
                break wrong;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !wrong.is_empty() {
            self.fail(format!(
                "{label}: entries not as the policy says 10 s after the sync: {wrong:?}"
            ));
        }
        let marked_at = Instant::now();

        // Kept flows go on, restored ones resume; denied ones stay silent.
        let deadline = marked_at + Duration::from_secs(20);
        loop {
            let now = self.all_bytes();
            let restored_all = self
                .flows
                .iter()
                .enumerate()
                .all(|(i, f)| state(f) != (false, true) || now[i] > before[i]);
            let kept_going = self
                .flows
                .iter()
                .enumerate()
                .all(|(i, f)| state(f) != (true, true) || now[i] >= at_sync[i] + 3 * CHUNK);
            if restored_all && kept_going && marked_at.elapsed() >= Duration::from_millis(300) {
                break;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "{label}: 20 s after the cut, restored flows resumed: {restored_all}, kept flows went on: {kept_going}"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = self.all_bytes();
        let ms = |d: f64| d * 1e3;
        let mut leaks = Vec::new();
        for (i, f) in self.flows.iter().enumerate() {
            match state(f) {
                (true, false) => {
                    change.revoked += 1;
                    if after[i] != at_sync[i] {
                        leaks.push(format!("{}: {} bytes after the sync", f.name(), after[i] - at_sync[i]));
                    }
                    match self.bytes(f).1 {
                        Some(last) if last > synced_at => leaks.push(format!("{}: last byte after the sync", f.name())),
                        Some(last) => change.last_byte_ms.push(match last.checked_duration_since(ack) {
                            Some(d) => ms(d.as_secs_f64()),
                            None => -ms(ack.duration_since(last).as_secs_f64()),
                        }),
                        None => leaks.push(format!("{}: never flowed", f.name())),
                    }
                }
                (false, false) if after[i] != before[i] => leaks.push(format!(
                    "{}: denied throughout, {} bytes arrived",
                    f.name(),
                    after[i] - before[i]
                )),
                (false, true) => {
                    change.restored += 1;
                    if let Some(t) = self.resumed(f).filter(|t| *t > ack) {
                        let d = ms(t.duration_since(ack).as_secs_f64());
                        if f.tcp {
                            &mut change.resumed_tcp_ms
                        } else {
                            &mut change.resumed_udp_ms
                        }
                        .push(d);
                    }
                }
                _ => {}
            }
        }
        if !leaks.is_empty() {
            self.fail(format!("{label}: {leaks:?}"));
        }
        change
    }
}

/// The cut exact, quiet or busy: 20 long-lived flows (TCP streams and UDP echo, 10 within a
/// node, 10 across) while two pods open 200 new short connections per second (the tables hold
/// thousands of entries). Each round a policy edit revokes half the flows (a random half of
/// the client–server pairs); in every other round one edit then restores those and revokes the
/// other half at once (what a `conntrack -R` batch got wrong); finally an edit restores all.
/// After each edit: every node reports the new ruleset (written after the kernel commit and
/// the cut), the revoked flows' entries carry the cut mark and no other entry does, no revoked
/// flow delivers a byte after that, kept flows go on and restored ones resume. Prints the
/// time from kubectl apply's acknowledgement to each revoked flow's last byte and to each
/// restored flow's first. `POLICYC_CUT_ROUNDS` sets the rounds (default 50).
#[test]
fn conntrack_cut_is_exact_under_churn() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = require_cluster!();
    let rounds: usize = std::env::var("POLICYC_CUT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let mut rig = CutRig::start(opts);
    let up = rig.started.elapsed();
    let mut rng = policyc_compiler::synth::Rng::new(15);
    let all = all_pairs();
    let mut changes: Vec<(usize, &str, Change)> = Vec::new();
    for r in 0..rounds {
        let mut pairs: Vec<CutPair> = all.iter().copied().collect();
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, rng.below(i + 1));
        }
        let (half, other) = pairs.split_at(pairs.len() / 2);
        let (half, other): (BTreeSet<CutPair>, BTreeSet<CutPair>) =
            (half.iter().copied().collect(), other.iter().copied().collect());
        let c = rig.change(&format!("round {r}: revoke half"), half, None);
        changes.push((r, "revoke", c));
        if r % 2 == 1 {
            let c = rig.change(&format!("round {r}: swap halves"), other, None);
            changes.push((r, "swap", c));
        }
        let c = rig.change(&format!("round {r}: restore all"), all.clone(), None);
        changes.push((r, "restore", c));
    }
    report_cut(&rig, up, &changes);
    assert!(
        rig.failures.is_empty(),
        "{} failures: {:#?}",
        rig.failures.len(),
        rig.failures
    );
}

/// Prints the figures of a run of changes.
fn report_cut(rig: &CutRig, up: Duration, changes: &[(usize, &str, Change)]) {
    let mut per_round: BTreeMap<usize, f64> = BTreeMap::new();
    let (mut last, mut tcp, mut udp, mut synced) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, kind, c) in changes {
        let max = c.last_byte_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        eprintln!(
            "round {r:>2} {kind:<8} revoked {:>2} restored {:>2}  synced +{:>4.0} ms  last byte of revoked {}  resumed tcp {} udp {}{}",
            c.revoked,
            c.restored,
            c.synced.as_secs_f64() * 1e3,
            if c.last_byte_ms.is_empty() { "-".to_string() } else { format!("≤ +{max:.0} ms") },
            c.resumed_tcp_ms.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))).map_or("-".into(), |v| format!("≤ +{v:.0} ms")),
            c.resumed_udp_ms.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))).map_or("-".into(), |v| format!("≤ +{v:.0} ms")),
            c.marked_at_kill.map_or(String::new(), |(m, n)| format!("  (killed with {m}/{n} marked)")),
        );
        if !c.last_byte_ms.is_empty() {
            let e = per_round.entry(*r).or_insert(f64::NEG_INFINITY);
            *e = e.max(max);
        }
        last.extend(&c.last_byte_ms);
        tcp.extend(&c.resumed_tcp_ms);
        udp.extend(&c.resumed_udp_ms);
        synced.push(c.synced.as_secs_f64() * 1e3);
    }
    let (_, sizes) = rig.marks();
    let (churned, churn_failed) = rig.churned();
    let churned = churned - rig.churn_before;
    let secs = (rig.started.elapsed() - up).as_secs_f64();
    let updates = |result: &str| -> f64 {
        SERVERS
            .iter()
            .map(|(_, n)| {
                rig.cluster
                    .agent_metric(n, "policyc_conntrack_updates_total", &format!("result=\"{result}\""))
                    .unwrap_or(f64::NAN)
            })
            .sum::<f64>()
            + 0.0
    };
    // Mean of an agents' histogram in ms, over both nodes (since their last start).
    let mean = |name: &str| -> f64 {
        let sum = |suffix: &str| -> f64 {
            SERVERS
                .iter()
                .map(|(_, n)| {
                    rig.cluster
                        .agent_metric(n, &format!("{name}{suffix}"), "")
                        .unwrap_or(f64::NAN)
                })
                .sum()
        };
        sum("_sum") * 1e3 / sum("_count")
    };
    let per_round: Vec<f64> = per_round.into_values().collect();
    eprintln!(
        "\n{} rounds, {} changes, {} failures; lab up in {:.1} s, rounds took {secs:.1} s\n\
         churn: {churned} new connections ({:.0}/s), {churn_failed} failed; conntrack entries at the end: {sizes:?}\n\
         ack → every node synced (kernel commit + cut + status): {}\n\
         ack → last byte of a revoked flow, every flow: {}\n\
         ack → last byte of a revoked flow, worst per round: {}\n\
         ack → first byte of a restored TCP flow: {}\n\
         ack → first byte of a restored UDP flow: {}\n\
         agents' conntrack updates: marked {} released {} vanished {} failed {}\n\
         agents' mean sync (debounce end → kernel commit) {:.1} ms, mean cut (dump, judge, updates) {:.1} ms",
        per_round.len(),
        changes.len(),
        rig.failures.len(),
        up.as_secs_f64(),
        churned as f64 / secs,
        figures(&synced),
        figures(&last),
        figures(&per_round),
        figures(&tcp),
        figures(&udp),
        updates("marked"),
        updates("released"),
        updates("vanished"),
        updates("failed"),
        mean("policyc_sync_duration_seconds"),
        mean("policyc_conntrack_duration_seconds"),
    );
}

/// The cut completes when its agent is killed in the middle of it: `kill -9` of a node's agent
/// as soon as it logged the revoking change's ruleset applied (so before, during or just after
/// the cut), then a restart; the restarted agent marks what is still unmarked, or releases
/// what a swap restores, and the checks of `conntrack_cut_is_exact_under_churn` hold. Two
/// rounds, each killing both nodes' agents in turn (revoke, swap), under the same churn.
#[test]
fn conntrack_cut_completes_after_agent_killed_mid_cut() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = require_cluster!();
    let mut rig = CutRig::start(opts);
    let up = rig.started.elapsed();
    let mut rng = policyc_compiler::synth::Rng::new(16);
    let all = all_pairs();
    let mut changes: Vec<(usize, &str, Change)> = Vec::new();
    for r in 0..2 {
        let mut pairs: Vec<CutPair> = all.iter().copied().collect();
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, rng.below(i + 1));
        }
        let (half, other) = pairs.split_at(pairs.len() / 2);
        let (half, other): (BTreeSet<CutPair>, BTreeSet<CutPair>) =
            (half.iter().copied().collect(), other.iter().copied().collect());
        let (first, second) = if r == 0 {
            ("node-1", "node-2")
        } else {
            ("node-2", "node-1")
        };
        let c = rig.change(&format!("round {r}: revoke half, kill {first}"), half, Some(first));
        changes.push((r, "revoke+kill", c));
        let c = rig.change(&format!("round {r}: swap halves, kill {second}"), other, Some(second));
        changes.push((r, "swap+kill", c));
        let c = rig.change(&format!("round {r}: restore all"), all.clone(), None);
        changes.push((r, "restore", c));
    }
    report_cut(&rig, up, &changes);
    assert!(
        rig.failures.is_empty(),
        "{} failures: {:#?}",
        rig.failures.len(),
        rig.failures
    );
}

// === Never leak ===

/// The leak-test cluster's policies: prod admits only prod (on the prober's port and `extra`),
/// locked sends nothing, and other/churn isolates other/sink (ingress on `churn` only).
fn leak_policies(extra: u16, churn: u16) -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "prod"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }),
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-prod", "namespace": "prod"},
            "spec": {"podSelector": {}, "ingress": [{
                "from": [{"podSelector": {}}],
                "ports": [{"port": PROBE_PORT}, {"port": PROBE_PORT, "protocol": "UDP"}, {"port": extra}]
            }]}
        }),
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-egress", "namespace": "locked"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
        }),
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "churn", "namespace": "other"},
            "spec": {"podSelector": {"matchLabels": {"app": "sink"}}, "ingress": [{"ports": [{"port": churn}]}]}
        }),
    ]
}

const PROBE_PORT: u16 = 7000;

/// `nft list table inet policyc` of a node without counter values.
fn ruleset(cluster: &ClusterLab, node: &str) -> String {
    let ns = cluster.lab().node_netns(node).expect("node");
    let text = policyc_lab::sys::netns_exec(ns, &["nft", "list", "table", "inet", "policyc"]).expect("nft list");
    let mut out = Vec::new();
    let mut words = text.split(' ').peekable();
    while let Some(w) = words.next() {
        out.push(w);
        if w.ends_with("packets") || w == "bytes" {
            words.next();
        }
    }
    out.join(" ")
}

/// Adds the prober pair `SRC -> DST` (pods as `namespace/name`), on [`PROBE_PORT`].
fn add_pair(prober: &mut Prober, c: &ClusterLab, expect: Expect, src: &str, dst: &str) {
    let ((sns, sname), (dns, dname)) = (
        src.split_once('/').expect("namespace/name"),
        dst.split_once('/').expect("namespace/name"),
    );
    let from = (pod_netns(c, sns, sname), ip_of(c, sns, sname));
    let to = (
        pod_netns(c, dns, dname),
        SocketAddr::new(ip_of(c, dns, dname), PROBE_PORT),
    );
    prober
        .add(&format!("{src} -> {dst}"), expect, (&from.0, from.1), (&to.0, to.1))
        .expect("prober pair");
}

/// One phase of the leak test: what every pair did during it.
struct Phase {
    name: &'static str,
    took: Duration,
    pairs: Vec<PairCounts>,
    note: String,
}

/// Denied pairs (UDP datagrams and TCP connects at a steady rate) must never arrive, allowed
/// pairs in the same run must, while the cluster goes through: `kill -9` of every agent and a
/// restart; 1,000 policy updates (the denied pairs stay denied; an unrelated policy churns);
/// pods created and deleted in a default-deny namespace while a denied pod sends to them from
/// the moment their interface exists; the API server stopped and started again, after which a
/// new policy still takes effect.
#[test]
fn never_leaks_through_restarts_updates_churn_and_outages() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = require_cluster!();
    let started = Instant::now();
    let s = snapshot(
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: prod}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: locked}\n"
                .to_string(),
            pod("prod", "server", "node-1", "10.244.1.10", "pod: server"),
            pod("prod", "client", "node-2", "10.244.2.10", "pod: client"),
            pod("other", "attacker", "node-2", "10.244.2.20", "pod: attacker"),
            pod("other", "neighbour", "node-1", "10.244.1.20", "pod: neighbour"),
            pod("other", "sink", "node-2", "10.244.2.30", "app: sink"),
            pod("locked", "egress", "node-1", "10.244.1.30", "pod: egress"),
        ]
        .concat(),
    );
    let mut cluster = ClusterLab::start(&s, opts).expect("starting the cluster lab");
    cluster
        .enforce_policies(&leak_policies(8000, 9000))
        .expect("policies enforced");
    let nodes = cluster.nodes();

    let mut prober = Prober::new();
    for (src, dst, expect) in [
        ("other/attacker", "prod/server", Expect::Denied),
        ("other/neighbour", "prod/server", Expect::Denied),
        ("locked/egress", "other/sink", Expect::Denied),
        ("prod/client", "prod/server", Expect::Allowed),
        ("other/neighbour", "other/attacker", Expect::Allowed),
    ] {
        add_pair(&mut prober, &cluster, expect, src, dst);
    }
    let controls = ["prod/client -> prod/server", "other/neighbour -> other/attacker"];
    // Waits until every control pair got `n` more datagrams and connections through.
    let flowing = |prober: &Prober, n: u64| {
        let base: Vec<PairCounts> = controls.iter().map(|c| prober.pair(c).expect("pair")).collect();
        eventually(
            &format!("{n} more datagrams and connections of the control pairs"),
            Duration::from_secs(30),
            || {
                controls.iter().zip(&base).all(|(c, b)| {
                    let now = prober.pair(c).expect("pair");
                    now.arrived.datagrams >= b.arrived.datagrams + n
                        && now.arrived.connections >= b.arrived.connections + n / 5
                })
            },
        );
    };
    flowing(&prober, 20);

    let mut phases: Vec<Phase> = Vec::new();
    let mut mark = prober.counts();
    let mut phase_start = Instant::now();
    let mut end_phase = |prober: &Prober, name, note: String, phases: &mut Vec<Phase>| {
        let now = prober.counts();
        phases.push(Phase {
            name,
            took: phase_start.elapsed(),
            pairs: now
                .iter()
                .map(|(n, c)| match mark.get(n) {
                    Some(m) => c.since(m),
                    None => c.clone(),
                })
                .collect(),
            note,
        });
        mark = now;
        phase_start = Instant::now();
    };

    // 1. kill -9 of every agent: the rulesets stay and keep enforcing; restarted agents take over.
    let rulesets: Vec<String> = nodes.iter().map(|n| ruleset(&cluster, n)).collect();
    for n in &nodes {
        cluster.kill_agent(n).expect("kill -9");
    }
    flowing(&prober, 200);
    let kept: Vec<String> = nodes.iter().map(|n| ruleset(&cluster, n)).collect();
    assert_eq!(kept, rulesets, "the rulesets stay while no agent runs");
    let mut ready = Vec::new();
    for n in &nodes {
        ready.push(cluster.start_agent(n).expect("agent restarts"));
    }
    cluster.wait_synced().expect("restarted agents converge");
    let restored: Vec<String> = nodes.iter().map(|n| ruleset(&cluster, n)).collect();
    // Sets and chains added in place are listed after the kept ones; a restarted agent's
    // replace lists them in the rendered order: the same blocks, maybe in another order.
    assert_eq!(
        restored
            .iter()
            .map(|r| policyc_testhost::sorted_blocks(r))
            .collect::<Vec<_>>(),
        rulesets
            .iter()
            .map(|r| policyc_testhost::sorted_blocks(r))
            .collect::<Vec<_>>(),
        "restarted agents hold the same rulesets"
    );
    end_phase(
        &prober,
        "kill -9 of both agents, restart",
        format!(
            "restart to ready: {}",
            ready
                .iter()
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &mut phases,
    );

    // 2. 1,000 policy updates: allow-prod changes its extra port, other/churn its port.
    // Full replaces of a ruleset in a kernel, over both agents.
    let applies = |c: &ClusterLab| -> f64 {
        nodes
            .iter()
            .map(|n| {
                c.agent_metric(n, "policyc_applies_total", "mode=\"replace\"")
                    .expect("metrics")
            })
            .sum()
    };
    let applies_before = applies(&cluster);
    const UPDATES: u16 = 1000;
    const PER_APPLY: u16 = 20;
    let mut last = None;
    for batch in 0..UPDATES / PER_APPLY {
        let items: Vec<serde_json::Value> = (0..PER_APPLY)
            .map(|k| {
                let i = batch * PER_APPLY + k;
                let p = leak_policies(8001 + i, 9001 + i);
                if i % 2 == 0 {
                    p[1].clone()
                } else {
                    p[3].clone()
                }
            })
            .collect();
        last = Some(cluster.apply_policies(&items).expect("kubectl apply"));
    }
    cluster.wait_enforced(&last.expect("updates")).expect("policyc wait");
    cluster.wait_synced().expect("agents converge after the updates");
    let generation = cluster
        .kubectl(
            &[
                "get",
                "networkpolicy",
                "-n",
                "prod",
                "allow-prod",
                "-o",
                "jsonpath={.metadata.generation}",
            ],
            None,
        )
        .expect("kubectl get");
    let kernel_applies = applies(&cluster) - applies_before;
    end_phase(
        &prober,
        "1,000 policy updates",
        format!("allow-prod at generation {generation}; {kernel_applies} ruleset replaces in the kernels"),
        &mut phases,
    );

    // 3. Pods created and deleted in prod (default deny) while other/attacker sends to them from
    //    the moment their interface exists, and prod/client (allowed) proves they are reachable.
    const PODS: u8 = 10;
    for k in 0..PODS {
        let node = 1 + k % 2;
        let name = format!("new-{k}");
        let mut with_pod = cluster.lab().snapshot().clone();
        let extra = snapshot(&pod(
            "prod",
            &name,
            &format!("node-{node}"),
            &format!("10.244.{node}.{}", 100 + k),
            &format!("pod: {name}"),
        ));
        with_pod.pods.extend(extra.pods);
        cluster.create_pods(&with_pod).expect("pod created");
        let new_pod = format!("prod/{name}");
        add_pair(&mut prober, &cluster, Expect::Denied, "other/attacker", &new_pod);
        add_pair(&mut prober, &cluster, Expect::Allowed, "prod/client", &new_pod);
        cluster.report_pods(&with_pod).expect("pod address reported");
        cluster.wait_synced().expect("agents include the pod");
        let control = format!("prod/client -> {new_pod}");
        eventually(&format!("{control} arriving"), Duration::from_secs(30), || {
            prober
                .pair(&control)
                .is_some_and(|c| c.arrived.datagrams > 0 && c.arrived.connections > 0)
        });
        let dst = SocketAddr::new(ip_of(&cluster, "prod", &name), PROBE_PORT);
        let mut without = cluster.lab().snapshot().clone();
        without.pods.remove(&policyc_compiler::ObjectRef::new("prod", &name));
        cluster.sync_objects(&without).expect("pod deleted");
        cluster.wait_synced().expect("agents drop the pod");
        prober.remove_sink(dst);
    }
    end_phase(
        &prober,
        "10 pods created and deleted under policy",
        String::new(),
        &mut phases,
    );

    // 4. API server outage: the rulesets stay; after the restart a new policy still applies.
    let probe = |c: &ClusterLab| {
        c.lab()
            .probe_cell(
                &policyc_compiler::ObjectRef::new("other", "neighbour"),
                &policyc_compiler::ObjectRef::new("prod", "server"),
                policyc_compiler::Protocol::Tcp,
                80,
            )
            .expect("probe")
    };
    assert!(!probe(&cluster).reached(), "neighbour -> server:80 denied before");
    let watch_errors = |c: &ClusterLab| -> Vec<f64> {
        nodes
            .iter()
            .map(|n| {
                c.agent_metric(n, "policyc_errors_total", "kind=\"Watch\"")
                    .expect("metrics")
            })
            .collect()
    };
    let errors_before = watch_errors(&cluster);
    let rulesets: Vec<String> = nodes.iter().map(|n| ruleset(&cluster, n)).collect();
    cluster.apiserver().stop().expect("API server stops");
    let outage = Instant::now();
    eventually("every agent noticing the outage", Duration::from_secs(30), || {
        watch_errors(&cluster)
            .iter()
            .zip(&errors_before)
            .all(|(now, before)| now > before)
    });
    flowing(&prober, 200);
    let kept: Vec<String> = nodes.iter().map(|n| ruleset(&cluster, n)).collect();
    assert_eq!(kept, rulesets, "the rulesets stay through the outage");
    for n in &nodes {
        assert_eq!(
            cluster.agent_http(n, "/healthz").expect("healthz").0,
            200,
            "{n} healthy"
        );
    }
    cluster.apiserver().start_again().expect("API server starts again");
    let down = outage.elapsed();
    let allow_80 = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-neighbour-80", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"pod": "server"}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "neighbour"}}}],
                              "ports": [{"port": 80}]}]}
    });
    let applied_in = cluster
        .enforce_policies(&[allow_80])
        .expect("a change after the restart");
    assert!(
        probe(&cluster).reached(),
        "neighbour -> server:80 allowed after the restart"
    );
    end_phase(
        &prober,
        "API server stopped and started",
        format!(
            "down {:.1} s; a new policy enforced {:.1} s after the restart",
            down.as_secs_f64(),
            applied_in.as_secs_f64()
        ),
        &mut phases,
    );

    // Report, then judge.
    let mut report = String::new();
    let mut leaks = 0;
    for p in &phases {
        let _ = writeln!(report, "{} ({:.1} s) {}", p.name, p.took.as_secs_f64(), p.note);
        for c in p.pairs.iter().filter(|c| c.sent.datagrams + c.sent.connects > 0) {
            leaks += c.leaked();
            let _ = writeln!(
                report,
                "    {:<40} {:?}: UDP {}/{} arrived, TCP {}/{} accepted{}",
                c.name,
                c.expect,
                c.arrived.datagrams,
                c.sent.datagrams,
                c.arrived.connections,
                c.sent.connects,
                if c.leaked() > 0 { "  LEAK" } else { "" }
            );
        }
    }
    eprintln!(
        "{report}never-leak test: {leaks} leaked packets/connections, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(leaks, 0, "denied traffic arrived:\n{report}");
    for p in &phases {
        for c in p
            .pairs
            .iter()
            .filter(|c| c.expect == Expect::Allowed && c.sent.datagrams > 0)
        {
            assert!(
                c.arrived.datagrams > 0 && c.arrived.connections > 0,
                "{}: control {} got nothing through:\n{report}",
                p.name,
                c.name
            );
        }
        for c in &p.pairs {
            assert_eq!(c.sent.errors, 0, "{}: {} had send errors:\n{report}", p.name, c.name);
        }
    }
}

// === Node addresses ===

/// Whether a TCP connect from a pod's namespace to `addr` gets an answer (accepted or refused)
/// within `timeout`; a dropped SYN gets none.
fn answers(netns: &Path, addr: SocketAddr, timeout: Duration) -> bool {
    policyc_lab::sys::in_netns(netns, || match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    })
    .expect("entering the pod's namespace")
}

/// An admin `nodes` peer matches every address in the selected Nodes' `status.addresses`, as the
/// agents learn them by watching Nodes: when a Node's address changes, the kernel's set and the
/// packets follow, and every agent reports the ruleset the compiler makes of the new snapshot.
#[test]
fn admin_nodes_peer_follows_a_node_address_change() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = require_cluster!();
    let started = Instant::now();
    // Both addresses live on node-2's underlay interface (inside the lab): only the one its Node
    // reports is a node address to policy.
    let (old, new) = ("192.168.100.200", "192.168.100.201");
    let node = |name: &str, labels: &str, ip: &str, cidr: &str, external: &str| {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n\
             spec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\n\
             status: {{addresses: [{{type: InternalIP, address: {ip}}}{external}]}}\n"
        )
    };
    let external = |ip: &str| format!(", {{type: ExternalIP, address: {ip}}}");
    let s = snapshot(
        &[
            node(
                "node-1",
                "kubernetes.io/hostname: node-1",
                "192.168.100.11",
                "10.244.1.0/24",
                "",
            ),
            node(
                "node-2",
                "kubernetes.io/hostname: node-2, role: guarded",
                "192.168.100.12",
                "10.244.2.0/24",
                &external(old),
            ),
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n".to_string(),
            pod("app", "client", "node-1", "10.244.1.10", "pod: client"),
            pod("app", "server", "node-2", "10.244.2.10", "pod: server"),
        ]
        .concat(),
    );
    let mut cluster = ClusterLab::start(&s, opts).expect("starting the cluster lab");
    let start_time = started.elapsed();
    let node2 = cluster.lab().node_netns("node-2").expect("node-2").to_string();
    for ip in [old, new] {
        policyc_lab::sys::netns_exec(&node2, &["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])
            .expect("adding an address to node-2");
    }
    let client = pod_netns(&cluster, "app", "client");
    let to = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 7300);
    let wait = Duration::from_millis(300);
    assert!(answers(&client, to(old), wait), "{old} unreachable before any policy");
    assert!(answers(&client, to(new), wait), "{new} unreachable before any policy");

    let cnp = serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "no-guarded-nodes"},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
            "egress": [{"name": "guarded-nodes", "action": "Deny",
                        "to": [{"nodes": {"matchLabels": {"role": "guarded"}}}]}]}
    });
    // No NetworkPolicy selects the client: egress the Admin tier does not decide is allowed,
    // also with fail-closed on (the agents' default). The endpoint's chain used to fall back into
    // the base chain's fail-closed drop there; it ends in an accept now.
    let enforce_time = cluster.enforce_policies(&[cnp]).expect("enforcing the policy");
    let rules = ruleset(&cluster, "node-1");
    assert!(
        rules.contains(old) && !rules.contains(new),
        "node-1's ruleset before the change:\n{rules}"
    );
    assert!(
        !answers(&client, to(old), wait),
        "{old} (node-2's address) reached through the Deny:\n{rules}"
    );
    assert!(
        answers(&client, to(new), wait),
        "{new} (no node's address yet) not reached:\n{rules}"
    );

    // node-2 reports another address, as its kubelet would: through the status subresource.
    let mut after = cluster.lab().snapshot().clone();
    let n2 = after.nodes.get_mut("node-2").expect("node-2 in the snapshot");
    n2.addresses = vec!["192.168.100.12".parse().unwrap(), new.parse().unwrap()];
    let changed = Instant::now();
    cluster.sync_objects(&after).expect("patching node-2's status");
    let stored = cluster
        .kubectl(
            &["get", "node", "node-2", "-o", "jsonpath={.status.addresses[*].address}"],
            None,
        )
        .expect("kubectl get node");
    assert!(
        stored.contains(new) && !stored.contains(old),
        "node-2's addresses: {stored}"
    );
    let synced = cluster.wait_synced().expect("agents report the new snapshot's ruleset");
    let follow_time = changed.elapsed();
    for n in cluster.nodes() {
        let rules = ruleset(&cluster, &n);
        assert!(
            rules.contains(new) && !rules.contains(old),
            "{n}'s ruleset after the change:\n{rules}"
        );
    }
    assert!(
        answers(&client, to(old), wait),
        "{old} (no longer a node address) still denied"
    );
    assert!(
        !answers(&client, to(new), wait),
        "{new} (node-2's new address) reached through the Deny"
    );
    eprintln!(
        "node address change: lab up in {start_time:?}, policy enforced in {enforce_time:?}, \
         address change in every kernel in {follow_time:?} (agents' hashes equal after {synced:?}), total {:?}",
        started.elapsed()
    );
}

// === "Enforced" for every change ===

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// 100 random changes of every kind a ruleset depends on: pod relabels, namespace relabels,
/// new pods, deleted pods, policies added, replaced and deleted. After each, `policyc wait
/// --for=enforced` (every other step with `--since` the API server's resourceVersion after the
/// change, else with no argument: "everything written before now") and then one probe of every
/// ordered pair of pods on TCP 80: the very first probe must already match what the compiler
/// makes of the new snapshot, every time. Wait latencies are reported.
#[test]
fn wait_enforced_covers_every_change() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = require_cluster!();
    opts.lab.timeout = Duration::from_millis(250);
    let started = Instant::now();
    let nodes = ["node-1", "node-2"];
    let apps = ["web", "api", "db"];
    let teams = ["red", "blue"];
    let namespaces = ["a", "b"];
    let mut yaml = String::new();
    for ns in namespaces {
        write!(
            yaml,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: red}}}}\n"
        )
        .unwrap();
    }
    for i in 0..6usize {
        let node = i % 2 + 1;
        yaml.push_str(&pod(
            namespaces[i % 2],
            &format!("p{i}"),
            &format!("node-{node}"),
            &format!("10.244.{node}.{}", 10 + i),
            &format!("app: {}", apps[i % 3]),
        ));
    }
    let mut cluster = ClusterLab::start(&snapshot(&yaml), opts).expect("starting the cluster lab");
    let start_time = started.elapsed();
    let policy = |ns: &str, name: &str, target: &str, from: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": target}}, "ingress": [{"from": from}]}
        })
    };
    let mut rng = Rng(0x5EED_2025);
    let mut next_pod = 6;
    let mut waits = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for step in 0..100 {
        let mut desired = cluster.lab().snapshot().clone();
        let change = match rng.below(6) {
            0 | 1 => {
                let ids: Vec<_> = desired.pods.keys().cloned().collect();
                let id = &ids[rng.below(ids.len())];
                let app = apps[rng.below(apps.len())];
                let p = desired.pods.get_mut(id).unwrap();
                p.labels.insert("app".into(), app.into());
                cluster.sync_objects(&desired).expect("relabelling a pod");
                format!("pod {id} relabelled app={app}")
            }
            2 => {
                let ns = namespaces[rng.below(2)];
                let team = teams[rng.below(2)];
                let n = desired.namespaces.get_mut(ns).unwrap();
                n.labels.insert("team".into(), team.into());
                cluster.sync_objects(&desired).expect("relabelling a namespace");
                format!("namespace {ns} relabelled team={team}")
            }
            3 if desired.pods.len() > 4 && rng.below(2) == 0 => {
                let ids: Vec<_> = desired.pods.keys().cloned().collect();
                let id = ids[rng.below(ids.len())].clone();
                desired.pods.remove(&id);
                cluster.sync_objects(&desired).expect("deleting a pod");
                format!("pod {id} deleted")
            }
            3 => {
                let template = desired.pods.values().next().unwrap().clone();
                let node = rng.below(2) + 1;
                let ns = namespaces[rng.below(2)];
                let mut p = template;
                p.namespace = ns.into();
                p.name = format!("p{next_pod}");
                p.node = Some(nodes[node - 1].into());
                p.ips = vec![format!("10.244.{node}.{}", 10 + next_pod).parse().unwrap()];
                p.labels.insert("app".into(), apps[rng.below(3)].into());
                next_pod += 1;
                let id = p.id();
                desired.pods.insert(id.clone(), p);
                cluster.sync_objects(&desired).expect("creating a pod");
                format!("pod {id} created")
            }
            _ => {
                let ns = namespaces[rng.below(2)];
                let name = format!("np-{}", rng.below(2));
                let exists = desired
                    .policies
                    .contains_key(&policyc_compiler::ObjectRef::new(ns, &name));
                if exists && rng.below(3) == 0 {
                    cluster.delete_policy(ns, &name).expect("deleting a policy");
                    format!("policy {ns}/{name} deleted")
                } else {
                    let target = apps[rng.below(3)];
                    let from = match rng.below(3) {
                        0 => serde_json::json!([{"podSelector": {"matchLabels": {"app": apps[rng.below(3)]}}}]),
                        1 => serde_json::json!([{"namespaceSelector": {"matchLabels": {"team": teams[rng.below(2)]}}}]),
                        _ => serde_json::json!([]),
                    };
                    cluster
                        .apply_policies(&[policy(ns, &name, target, from)])
                        .expect("applying a policy");
                    format!("policy {ns}/{name} applied (target app={target})")
                }
            }
        };
        *counts
            .entry(
                change
                    .split_whitespace()
                    .step_by(2)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .or_default() += 1;
        let since = (step % 2 == 0).then(|| cluster.current_resource_version().expect("resourceVersion"));
        let t = Instant::now();
        cluster.wait_enforced_since(since.as_deref()).expect("policyc wait");
        waits.push(t.elapsed());
        let probed = cluster.lab().probe_matrix(policyc_compiler::Protocol::Tcp, 80).matrix();
        let expected =
            policyc_compiler::eval::Matrix::evaluate(&cluster.lab().cluster_ir(), policyc_compiler::Protocol::Tcp, 80);
        let want = |src: &str, dst: &str| -> Option<bool> {
            let i = expected.pods.iter().position(|p| p == src)?;
            let j = expected.pods.iter().position(|p| p == dst)?;
            Some(expected.allowed[i][j])
        };
        let mut wrong = Vec::new();
        for (i, src) in probed.pods.iter().enumerate() {
            for (j, dst) in probed.pods.iter().enumerate() {
                let got = probed.allowed[i][j];
                if want(src, dst).is_some_and(|w| w != got) {
                    wrong.push(format!("{src} -> {dst}: {}", if got { "reached" } else { "dropped" }));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "step {step} ({change}), wait {:?} returned after {:?}, the first probe disagrees with the compiler:\n  {}",
            since.as_deref().map_or("(now)".to_string(), |s| format!("--since {s}")),
            waits.last().unwrap(),
            wrong.join("\n  ")
        );
    }
    let wait_ms: Vec<f64> = waits.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    eprintln!(
        "100 changes {counts:?}: every first probe right; policyc wait p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         lab up in {start_time:?}, total {:?}",
        percentile(&wait_ms, 50.0),
        percentile(&wait_ms, 99.0),
        percentile(&wait_ms, 100.0),
        started.elapsed()
    );
}

/// One DF ping of `payload` bytes from a pod's namespace; `wait` is ping's -W.
fn ping_df(netns: &Path, to: IpAddr, payload: usize, wait: &str) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "ping",
            "-n",
            "-q",
            "-M",
            "do",
            "-c1",
            "-W",
            wait,
            "-s",
            &payload.to_string(),
        ])
        .arg(to.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// flanneld in every node: its overlay is the one the direct lab makes by hand (link details,
/// addresses, routes, neighbours, fdb, node by node), the MTU is the underlay's minus VXLAN's
/// 50 bytes, and a new node's pods reach the others; measured from its Node's creation.
#[test]
fn flanneld_programs_the_same_overlay_as_the_lab() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = require_cluster!();
    if policyc_testhost::on_path(&["ping", "nsenter"]).is_err() {
        policyc_testhost::skip("ping or nsenter is not installed (iputils-ping, util-linux)");
        return;
    }
    let started = Instant::now();
    let two = [
        pod("app", "a", "node-1", "10.244.1.10", "pod: a"),
        pod("app", "c", "node-1", "10.244.1.11", "pod: c"),
        pod("app", "b", "node-2", "10.244.2.10", "pod: b"),
    ]
    .concat();
    let s = snapshot(&two);
    let mut cluster = ClusterLab::start(&s, opts.clone()).expect("starting the cluster lab");
    let up = started.elapsed();

    // Side by side with the lab's own overlay for the same nodes.
    let direct = policyc_lab::Lab::without_rules(&s, opts.lab.clone()).expect("direct lab");
    let mut diffs = Vec::new();
    for node in cluster.nodes() {
        let ns_f = cluster.lab().node_netns(&node).unwrap().to_string();
        let ns_l = direct.node_netns(&node).unwrap().to_string();
        let f = policyc_lab::flannel::OverlayView::read(&ns_f).expect("flanneld's overlay");
        let l = policyc_lab::flannel::OverlayView::read(&ns_l).expect("the lab's overlay");
        eprintln!("{node} flanneld: {f:#?}\n{node} lab:      {l:#?}");
        assert!(
            !f.routes.is_empty() && !f.fdb.is_empty() && !f.neigh.is_empty(),
            "{f:?}"
        );
        diffs.extend(
            f.diff(&l, "flanneld", "lab")
                .into_iter()
                .map(|d| format!("{node}: {d}")),
        );
        let env = std::fs::read_to_string(&cluster.flanneld(&node).unwrap().subnet_file).unwrap();
        assert!(env.contains("FLANNEL_MTU=1450"), "{node} subnet.env: {env}");
    }
    drop(direct);
    assert!(diffs.is_empty(), "flanneld and the lab differ:\n{}", diffs.join("\n"));

    // The MTU over flanneld's overlay: 1422 + 8 (ICMP) + 20 (IPv4) = 1450.
    let a = pod_netns(&cluster, "app", "a");
    let b_ip = ip_of(&cluster, "app", "b");
    assert!(ping_df(&a, b_ip, 1422, "1"), "1422-byte DF ping across nodes must pass");
    assert!(!ping_df(&a, b_ip, 1423, "1"), "1423-byte DF ping must not pass");

    // A new node: from its Node object to the first packet between its pod and another node's.
    let three = snapshot(&[two.clone(), pod("app", "d", "node-3", "10.244.3.10", "pod: d")].concat());
    cluster.sync_objects(&three).expect("adding node-3");
    let after_sync = Instant::now();
    let d = pod_netns(&cluster, "app", "d");
    let a_ip = ip_of(&cluster, "app", "a");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ping_df(&d, a_ip, 56, "0.2") {
        assert!(Instant::now() < deadline, "node-3's pod never reached node-1's");
    }
    let first_packet = Instant::now();
    let (created, routed) = cluster.overlay_times("node-3").expect("node-3 created");
    let routed = routed.expect("node-3's subnet routed everywhere");
    let started_f = cluster.flanneld("node-3").unwrap().started;
    eprintln!(
        "flanneld: Node node-3 created → flanneld started {:?} → every node routes every subnet {:?} \
         → pods reported {:?} → first cross-node packet {:?} (in all {:?}); cluster of 2 up in {up:?}",
        started_f.duration_since(created),
        routed.duration_since(created),
        after_sync.duration_since(created),
        first_packet.duration_since(after_sync),
        first_packet.duration_since(created),
    );
    cluster.wait_synced().expect("agents synced");
    assert!(ping_df(
        &pod_netns(&cluster, "app", "b"),
        ip_of(&cluster, "app", "d"),
        1422,
        "1"
    ));
    eprintln!("test took {:?}", started.elapsed());
}

// === Anti-spoofing through the agents ===

/// Pod x/b sends UDP datagrams carrying x/a's address to x/c, whose ingress admits only x/a,
/// cross-node and (x/b2) same-node, with the agents programming the nodes: none arrives, x/a's own
/// do, and the guard of the sender's interface counts them by name.
fn forged_sources_through_agents(attachment: Attachment) {
    use policyc_lab::spoof::{self, Receiver};
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(opts) = attachment_options(require_cluster!(), attachment) else {
        return;
    };
    let yaml = [
        pod("x", "a", "node-1", "10.71.1.2", "pod: a"),
        pod("x", "c", "node-1", "10.71.1.3", "pod: c"),
        pod("x", "b2", "node-1", "10.71.1.4", "pod: b2"),
        pod("x", "b", "node-2", "10.71.2.2", "pod: b"),
    ]
    .concat();
    let mut cluster = ClusterLab::start(&snapshot(&yaml), opts).expect("starting the cluster lab");
    let policy = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "only-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}
    });
    cluster.enforce_policies(&[policy]).expect("policy enforced");
    let (a, c) = (
        std::net::Ipv4Addr::new(10, 71, 1, 2),
        std::net::Ipv4Addr::new(10, 71, 1, 3),
    );
    let rx = Receiver::start(&pod_netns(&cluster, "x", "c"), 7777).unwrap();
    let before = cluster.lab().counters().unwrap();
    spoof::send_udp(&pod_netns(&cluster, "x", "a"), c, 7777, b"real-a", 5).unwrap();
    spoof::send_udp_as(&pod_netns(&cluster, "x", "b"), a, c, 7777, b"forged-cross", 5).unwrap();
    spoof::send_udp_as(&pod_netns(&cluster, "x", "b2"), a, c, 7777, b"forged-same", 5).unwrap();
    assert_eq!(
        rx.arrived(b"real-a", 5),
        5,
        "{}: x/a's own datagrams",
        attachment.name()
    );
    assert_eq!(
        rx.count(b"forged-cross"),
        0,
        "{}: forged by x/b on node-2",
        attachment.name()
    );
    assert_eq!(
        rx.count(b"forged-same"),
        0,
        "{}: forged by x/b2 on node-1",
        attachment.name()
    );
    let hits = before.diff(&cluster.lab().counters().unwrap());
    let packets = |node: &str, pod: &str| -> u64 {
        let comment = format!("x/{pod}: source address not the pod's: spoofed, dropped");
        hits.iter()
            .filter(|h| h.node == node && h.comment.as_deref() == Some(comment.as_str()))
            .map(|h| h.packets)
            .sum()
    };
    let text: Vec<String> = hits.iter().map(|h| format!("{h} ({} packets)", h.packets)).collect();
    assert!(packets("node-2", "b") >= 5, "{}: {text:#?}", attachment.name());
    assert!(packets("node-1", "b2") >= 5, "{}: {text:#?}", attachment.name());
    eprintln!(
        "{}: forged datagrams dropped by the agents' guards: node-2 x/b {}, node-1 x/b2 {}",
        attachment.name(),
        packets("node-2", "b"),
        packets("node-1", "b2")
    );
    drop(rx);
}

#[test]
fn forged_sources_are_dropped_through_agents_canal() {
    forged_sources_through_agents(Attachment::Canal);
}

#[test]
fn forged_sources_are_dropped_through_agents_flannel() {
    forged_sources_through_agents(Attachment::Flannel);
}

// === Flow events ===

fn flow_records(cluster: &ClusterLab, node: &str, query: &str) -> Vec<policyc_compiler::flows::FlowRecord> {
    let (code, body) = cluster
        .agent_http(node, &format!("/flows?{query}"))
        .expect("GET /flows");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The record of `node`'s agent from `src` to `dst` (`ns/pod`) with `verdict`, waiting for the
/// interval that merges it.
fn flow_record(
    cluster: &ClusterLab,
    node: &str,
    src: &str,
    dst: &str,
    verdict: &str,
) -> policyc_compiler::flows::FlowRecord {
    let start = Instant::now();
    loop {
        let found = flow_records(cluster, node, "limit=10000")
            .into_iter()
            .find(|r| r.source.name() == src && r.destination.name() == dst && r.verdict == verdict);
        if let Some(r) = found {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {verdict} record {src} -> {dst} from {node}'s agent: {:#?}",
            flow_records(cluster, node, "limit=10000")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netpol(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Seconds of CPU (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Real packets through agents with flow events on: each denied probe's record names the
/// policy and rule that dropped it (a default deny exactly the policies isolating the pod),
/// each allowed one the rule that accepted it, admin Deny and Pass name their tier, a forged
/// source names the sender's guard; records stream to a follower; a flood of denied packets
/// is rate-limited with the rest counted as suppressed, costs the agent little CPU, leaves
/// allowed traffic alone, and the metrics count every packet.
fn flow_events_through_agents(attachment: Attachment) {
    use policyc_compiler::flows::FlowLog;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut opts) = attachment_options(require_cluster!(), attachment) else {
        return;
    };
    let limit = FlowLog::default();
    opts.lab.flow_log = Some(limit);
    let yaml = [
        pod("x", "a", "node-1", "10.72.1.2", "pod: a"),
        pod("x", "b", "node-1", "10.72.1.3", "pod: b"),
        pod("y", "a", "node-2", "10.72.2.2", "pod: a"),
        pod("z", "a", "node-2", "10.72.2.3", "pod: a"),
        pod("w", "a", "node-2", "10.72.2.4", "pod: a"),
    ]
    .concat();
    let mut cluster = ClusterLab::start(&snapshot(&yaml), opts).expect("starting the cluster lab");
    let ns_is = |n: &str| serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}});
    let policies = [
        netpol(
            "x",
            "deny-ingress",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        netpol(
            "x",
            "allow-y",
            serde_json::json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [ns_is("y")], "ports": [{"port": 80}]}]}),
        ),
        netpol(
            "y",
            "egress-x",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [ns_is("x")]}]}),
        ),
        // w: the Admin tier denies its ingress from z and passes x's on to NetworkPolicy.
        serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "guard-w"},
            "spec": {"tier": "Admin", "priority": 5, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "w"}}},
                "ingress": [
                    {"name": "no-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]},
                    {"name": "x-to-np", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]}
        }),
    ];
    cluster.enforce_policies(&policies).expect("enforcing the policies");
    let r = |ns: &str, n: &str| policyc_compiler::ObjectRef::new(ns, n);
    let probe_in = |c: &ClusterLab, s: (&str, &str), d: (&str, &str)| {
        c.lab()
            .probe_cell(&r(s.0, s.1), &r(d.0, d.1), policyc_compiler::Protocol::Tcp, 80)
            .expect("probe")
            .reached()
    };
    let probe = |s: (&str, &str), d: (&str, &str)| probe_in(&cluster, s, d);
    assert!(probe(("y", "a"), ("x", "a")), "y/a -> x/a allowed");
    assert!(!probe(("y", "a"), ("x", "b")), "y/a -> x/b denied");
    assert!(!probe(("z", "a"), ("x", "a")), "z/a -> x/a denied");
    assert!(!probe(("y", "a"), ("z", "a")), "y/a -> z/a denied (egress)");
    assert!(!probe(("z", "a"), ("w", "a")), "z/a -> w/a denied (Admin)");
    assert!(
        probe(("x", "a"), ("w", "a")),
        "x/a -> w/a passed, allowed (no NetworkPolicy)"
    );

    let allowed = flow_record(&cluster, "node-1", "y/a", "x/a", "allowed");
    assert_eq!(allowed.tier, "NetworkPolicy");
    assert_eq!(allowed.direction, "ingress");
    let p = allowed.policy.clone().expect("policy");
    assert_eq!(
        (p.kind.as_str(), p.namespace.as_str(), p.name.as_str()),
        ("NetworkPolicy", "x", "allow-y")
    );
    assert_eq!(allowed.rule, "ingress[0]");
    assert_eq!((allowed.protocol.as_str(), allowed.destination.port), ("TCP", Some(80)));
    let egress = flow_record(&cluster, "node-2", "y/a", "x/a", "allowed");
    assert_eq!(
        (
            egress.direction.as_str(),
            egress.policy.as_ref().map(|p| p.name.as_str()),
            egress.rule.as_str()
        ),
        ("egress", Some("egress-x"), "egress[0]")
    );
    let denied = flow_record(&cluster, "node-1", "y/a", "x/b", "denied");
    assert_eq!(
        (denied.tier.as_str(), denied.direction.as_str()),
        ("Default", "ingress")
    );
    assert_eq!(denied.isolated_by, ["x/deny-ingress"]);
    assert_eq!(denied.rule, "default deny: isolated by x/deny-ingress");
    let both = flow_record(&cluster, "node-1", "z/a", "x/a", "denied");
    assert_eq!(
        both.isolated_by,
        ["x/allow-y", "x/deny-ingress"],
        "exactly the isolating policies"
    );
    let egress_denied = flow_record(&cluster, "node-2", "y/a", "z/a", "denied");
    assert_eq!(
        (egress_denied.direction.as_str(), egress_denied.isolated_by.clone()),
        ("egress", vec!["y/egress-x".to_string()])
    );
    let admin = flow_record(&cluster, "node-2", "z/a", "w/a", "denied");
    assert_eq!(admin.tier, "Admin");
    assert_eq!(
        admin.policy.as_ref().map(|p| (p.kind.as_str(), p.name.as_str())),
        Some(("ClusterNetworkPolicy", "guard-w"))
    );
    assert_eq!(admin.rule, "ingress[0] (no-z): Deny");
    let pass = flow_record(&cluster, "node-2", "x/a", "w/a", "passed");
    assert_eq!(
        (pass.tier.as_str(), pass.rule.as_str()),
        ("Admin", "ingress[1] (x-to-np): Pass")
    );
    eprintln!("{}: records name the rules: {allowed:?}", attachment.name());

    // A forged source: x/b sends as x/a; its guard drops it and says so.
    let (xa, ya) = (
        std::net::Ipv4Addr::new(10, 72, 1, 2),
        std::net::Ipv4Addr::new(10, 72, 2, 2),
    );
    policyc_lab::spoof::send_udp_as(&pod_netns(&cluster, "x", "b"), xa, ya, 7777, b"forged", 3).unwrap();
    let start = Instant::now();
    let spoofed = loop {
        let found = flow_records(&cluster, "node-1", "verdict=denied&limit=10000")
            .into_iter()
            .find(|r| r.tier == "Guard");
        if let Some(f) = found {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no Guard record");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(spoofed.rule, "spoofed source: sent by x/b with an address not its own");
    assert_eq!(spoofed.source.ip, "10.72.1.2", "the forged address");

    // A follower gets a new record: the time from the packet to its line.
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = cluster.agent_addr("node-1").expect("agent address");
    std::thread::spawn(move || {
        use std::io::{BufRead as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /flows?follow=true&limit=0&pod=x/b&verdict=denied HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        for line in std::io::BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if line.contains("\"pod\":\"b\"") && tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    assert!(!probe(("z", "a"), ("x", "b")));
    let seen = rx.recv_timeout(Duration::from_secs(5)).expect("the follower's record");
    eprintln!(
        "{}: packet to its followed record: {:.0} ms (flow interval 1 s)",
        attachment.name(),
        seen.duration_since(sent).as_secs_f64() * 1000.0
    );

    // Flood: 50,000 denied UDP packets/s for 10 s from z/a to x/b; y/a keeps connecting to x/a.
    let agent = cluster.agent_pid("node-1").expect("agent pid");
    let dropped = |c: &ClusterLab| {
        c.agent_metric("node-1", "policyc_denied_packets_total", "pod=\"b\"")
            .unwrap()
    };
    let before_drops = dropped(&cluster);
    let (cpu0, rss0) = (cpu_seconds(agent), rss_mib(agent));
    let t0 = Instant::now();
    let flood_ns = pod_netns(&cluster, "z", "a");
    let xb = std::net::SocketAddr::new("10.72.1.3".parse().unwrap(), 80);
    let secs = 10u64;
    let rate = 50_000u64;
    let (sent_packets, allowed_ok, allowed_tries) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            policyc_lab::sys::in_netns(&flood_ns, || {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                    while n < due {
                        if sock.send_to(b"flood", xb).is_ok() {
                            n += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                n
            })
            .unwrap()
        });
        let mut ok = 0;
        let mut tries = 0;
        while !flood.is_finished() {
            tries += 1;
            if probe(("y", "a"), ("x", "a")) {
                ok += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (flood.join().unwrap(), ok, tries)
    });
    let flood_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(2500));
    let (cpu1, rss1) = (cpu_seconds(agent), rss_mib(agent));
    let counted = dropped(&cluster) - before_drops;
    let flood_records: Vec<_> = flow_records(&cluster, "node-1", "pod=x/b&verdict=denied&limit=10000")
        .into_iter()
        .filter(|r| r.source.name() == "z/a" && r.protocol == "UDP")
        .collect();
    let events: u64 = flood_records.iter().map(|r| r.packets).sum();
    let suppressed: u64 = flood_records.iter().map(|r| r.suppressed).sum();
    let budget = f64::from(limit.rate) * flood_time.as_secs_f64() + f64::from(limit.burst);
    eprintln!(
        "{}: flood {sent_packets} packets in {:.1}s: kernel counted {counted}, {events} events in {} records \
         (limit {}/s burst {}: at most {budget:.0}), {suppressed} suppressed; agent CPU {:.2}s ({:.1}% of one core), \
         RSS {rss0:.1} -> {rss1:.1} MiB; allowed probes {allowed_ok}/{allowed_tries}",
        attachment.name(),
        flood_time.as_secs_f64(),
        flood_records.len(),
        limit.rate,
        limit.burst,
        cpu1 - cpu0,
        (cpu1 - cpu0) / flood_time.as_secs_f64() * 100.0
    );
    assert!(
        counted >= sent_packets as f64 * 0.99,
        "the metrics count every packet: {counted} of {sent_packets}"
    );
    assert!(
        events as f64 <= budget * 1.1 && events > 0,
        "events rate-limited: {events}, budget {budget:.0}"
    );
    assert!(
        events + suppressed >= sent_packets * 8 / 10,
        "suppressed counted: {events} events + {suppressed} suppressed of {sent_packets}"
    );
    assert_eq!(allowed_ok, allowed_tries, "allowed traffic during the flood");
    assert!(
        (cpu1 - cpu0) / flood_time.as_secs_f64() < 0.25,
        "agent CPU under the flood"
    );

    // A restarted agent reads events again.
    cluster.kill_agent("node-1").unwrap();
    cluster.start_agent("node-1").unwrap();
    cluster.wait_agent_ready("node-1").unwrap();
    assert!(!probe_in(&cluster, ("y", "a"), ("x", "b")));
    let again = flow_record(&cluster, "node-1", "y/a", "x/b", "denied");
    assert_eq!(again.isolated_by, ["x/deny-ingress"]);
}

#[test]
fn flow_events_name_the_rule_through_agents_canal() {
    flow_events_through_agents(Attachment::Canal);
}

#[test]
fn flow_events_name_the_rule_through_agents_flannel() {
    flow_events_through_agents(Attachment::Flannel);
}
