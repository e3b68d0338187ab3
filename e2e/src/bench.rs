//! Dataplane cost, measured in the lab: a server pod on node-1, a client pod on node-2 (so every
//! packet crosses the VXLAN overlay and both nodes' rules), and N policies that all select both
//! pods, the only one allowing the benchmark's ports sorting last (a new connection walks every
//! policy chain before it is accepted).
//!
//! | figure | tool | what it shows |
//! |---|---|---|
//! | TCP throughput | `iperf3 -c` (one stream) | bulk cost; established packets skip the policy chains |
//! | UDP packet rate | `iperf3 -u -b 0 -l 64` | per-packet cost (received packets per second) |
//! | new connections | connect/accept/close loop | per-connection cost: the first packet walks the chains |
//!
//! With `admin`, the N policies are Admin-tier ClusterNetworkPolicies instead, each with a Deny
//! rule for its own port and the last (highest priority number) accepting the benchmark's ports:
//! the nft ruleset decides by lookups in the tier tables, the iptables one walks the rules.
//!
//! Each runs with no ruleset at all, then with the nft ruleset (loaded with `nft -f`) and the
//! iptables rendering (ipset + iptables-restore) for every policy count; figures are reported as
//! ratios to the no-ruleset run, each the median of several runs (2-core machines are noisy).

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use policyc_compiler::{Loader, ObjectRef, Snapshot};
use serde::Serialize;
use serde_json::Value;

use crate::lab::{Attachment, Lab, LabOptions};
use crate::{sys, Error};
use policyc_compiler::flows::FlowLog;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Policy counts to measure (besides no ruleset).
    pub policy_counts: Vec<usize>,
    /// Also measure the iptables rendering.
    pub iptables: bool,
    /// Runs per figure; the median is reported.
    pub repeat: usize,
    /// Admin-tier ClusterNetworkPolicies instead of NetworkPolicies.
    pub admin: bool,
    /// Attachments to measure, each in its own lab, side by side.
    pub attachments: Vec<Attachment>,
    /// Also measure the nft rendering with flow events on (denied and allowed, the agent's
    /// defaults), each node's NFLOG group read as an agent reads it.
    pub flow_events: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            seconds: 3,
            policy_counts: vec![10, 100, 1000],
            iptables: true,
            repeat: 3,
            admin: false,
            attachments: vec![Attachment::Canal],
            flow_events: false,
        }
    }
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// `canal` or `flannel`.
    pub attachment: String,
    /// `none`, `conntrack` (connection tracking alone, see `Lab::conntrack_only`), `nft`,
    /// `nft+flows` (flow events on) or `iptables`.
    pub backend: String,
    pub policies: usize,
    pub tcp_gbit_s: f64,
    pub udp_kpps: f64,
    pub connections_per_s: f64,
    pub tcp_ratio: f64,
    pub udp_ratio: f64,
    pub connections_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub seconds: u32,
    pub repeat: usize,
    pub rows: Vec<BenchRow>,
    /// Configurations that could not be measured, and why.
    pub skipped: Vec<String>,
}

const SERVER_IP: &str = "10.244.1.10";
const CLIENT_IP: &str = "10.244.2.10";
const IPERF_PORT: u16 = 5201;
/// The lab's listener on the server pod (accept and close) for the connection-rate test.
const CONNECT_PORT: u16 = 8080;

fn base_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server, bench: pair}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: i, ports: [{{containerPort: {CONNECT_PORT}}}]}}]}}
status: {{phase: Running, podIPs: [{{ip: {SERVER_IP}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: bench, labels: {{app: client, bench: pair}}}}
spec: {{nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{phase: Running, podIPs: [{{ip: {CLIENT_IP}}}]}}
"
    )
}

/// `n` policies selecting both pods (ingress and egress); policy i allows the other pod on port
/// 10000+i, and only the last (by name) also on the benchmark's ports.
fn policies_yaml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let last = i + 1 == n;
        let mut ports = format!("[{{port: {}, protocol: TCP}}", 10_000 + i);
        if last {
            let _ = write!(
                ports,
                ", {{port: {IPERF_PORT}, protocol: TCP}}, {{port: {IPERF_PORT}, protocol: UDP}}, {{port: {CONNECT_PORT}, protocol: TCP}}"
            );
        }
        ports.push(']');
        let _ = write!(
            out,
            "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p-{i:05}, namespace: bench}}
spec:
  podSelector: {{matchLabels: {{bench: pair}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: {ports}
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: server}}}}}}]
    ports: {ports}
"
        );
    }
    out
}

/// `n` Admin-tier ClusterNetworkPolicies selecting both pods: policy i denies port 10000+i both
/// ways; the last (priority n-1) accepts the benchmark's ports.
fn admin_policies_yaml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let last = i + 1 == n;
        let (action, protocols) = if last {
            (
                "Accept",
                format!(
                    "[{{tcp: {{destinationPort: {{number: {IPERF_PORT}}}}}}}, {{udp: {{destinationPort: {{number: {IPERF_PORT}}}}}}}, {{tcp: {{destinationPort: {{number: {CONNECT_PORT}}}}}}}]"
                ),
            )
        } else {
            (
                "Deny",
                format!("[{{tcp: {{destinationPort: {{number: {}}}}}}}]", 10_000 + i),
            )
        };
        let _ = write!(
            out,
            "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: p-{i:05}}}
spec:
  tier: Admin
  priority: {}
  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{bench: pair}}}}}}}}
  ingress:
  - action: {action}
    from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: client}}}}}}}}]
    protocols: {protocols}
  egress:
  - action: {action}
    to: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: server}}}}}}}}]
    protocols: {protocols}
",
            i.min(1000)
        );
    }
    // Everything else between the pair is denied, so the accept rule is what lets them talk.
    out.push_str(
        "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: zz-deny-rest}
spec:
  tier: Baseline
  priority: 0
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {bench: pair}}}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
",
    );
    out
}

fn snapshot(policies: usize, admin: bool) -> Result<Snapshot, Error> {
    let mut l = Loader::new();
    l.add_text("bench", &base_yaml());
    if policies > 0 && admin {
        l.add_text("bench-policies", &admin_policies_yaml(policies));
    } else if policies > 0 {
        l.add_text("bench-policies", &policies_yaml(policies));
    }
    let (s, diags) = l.finish();
    if let Some(d) = diags.iter().find(|d| d.severity == policyc_compiler::Severity::Error) {
        return Err(Error::new(format!("benchmark input: {d}")));
    }
    Ok(s)
}

/// The iperf3 server, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_json(netns: &str, args: &[&str]) -> Result<Value, Error> {
    let mut all = vec!["iperf3", "-J"];
    all.extend_from_slice(args);
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot run iperf3: {e}")))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::new(format!("iperf3 {}: unreadable output: {e}", args.join(" "))))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(Error::new(format!("iperf3 {}: {e}", args.join(" "))));
    }
    Ok(v)
}

fn tcp_gbit_s(client_ns: &str, seconds: u32) -> Result<f64, Error> {
    let t = seconds.to_string();
    let v = iperf_json(client_ns, &["-c", SERVER_IP, "-p", &IPERF_PORT.to_string(), "-t", &t])?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .map(|b| b / 1e9)
        .ok_or_else(|| Error::new("iperf3: no end.sum_received.bits_per_second"))
}

fn udp_kpps(client_ns: &str, seconds: u32) -> Result<f64, Error> {
    let t = seconds.to_string();
    let v = iperf_json(
        client_ns,
        &[
            "-c",
            SERVER_IP,
            "-p",
            &IPERF_PORT.to_string(),
            "-u",
            "-b",
            "0",
            "-l",
            "64",
            "-t",
            &t,
        ],
    )?;
    let sum = v.pointer("/end/sum").ok_or_else(|| Error::new("iperf3: no end.sum"))?;
    let packets = sum.get("packets").and_then(Value::as_f64).unwrap_or(0.0);
    let lost = sum.get("lost_packets").and_then(Value::as_f64).unwrap_or(0.0);
    let secs = sum.get("seconds").and_then(Value::as_f64).unwrap_or(seconds as f64);
    Ok((packets - lost) / secs.max(0.001) / 1e3)
}

/// New TCP connections per second from the client (connect, then close once the server closed).
fn connections_per_s(lab: &Lab, client: &ObjectRef, budget: Duration) -> Result<f64, Error> {
    let ns = lab
        .pod_netns(client)
        .ok_or_else(|| Error::new("no client pod"))?
        .to_string();
    let dst = SocketAddr::new(SERVER_IP.parse::<IpAddr>().expect("address"), CONNECT_PORT);
    sys::in_netns(&sys::netns_path(&ns), move || -> Result<f64, Error> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget && n < 50_000 {
            let fail = |e: std::io::Error| Error::new(format!("connection {n} to {dst}: {e}"));
            let mut conn = TcpStream::connect_timeout(&dst, Duration::from_secs(1)).map_err(fail)?;
            // Wait for the server's close: paces the loop to the server's accept rate.
            conn.set_read_timeout(Some(Duration::from_secs(1))).map_err(fail)?;
            let _ = conn.read(&mut [0u8; 1]).map_err(fail)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark, one lab per attachment; `progress` receives one line per step.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(String)) -> Result<BenchResult, Error> {
    for tool in ["iperf3"] {
        if sys::output("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(Error::new(format!("{tool} is not installed (apt-get install {tool})")));
        }
    }
    let mut result = BenchResult {
        seconds: opts.seconds,
        repeat: opts.repeat.max(1),
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    let attachments = if opts.attachments.is_empty() {
        vec![Attachment::Canal]
    } else {
        opts.attachments.clone()
    };
    for a in attachments {
        let (rows, skipped) = run_attachment(opts, a, progress)?;
        result.rows.extend(rows);
        result.skipped.extend(skipped);
    }
    Ok(result)
}

fn run_attachment(
    opts: &BenchOptions,
    attachment: Attachment,
    progress: &mut dyn FnMut(String),
) -> Result<(Vec<BenchRow>, Vec<String>), Error> {
    let server = ObjectRef::new("bench", "server");
    let client = ObjectRef::new("bench", "client");
    let lab_opts = LabOptions {
        attachment,
        ..LabOptions::default()
    };
    let mut lab = Lab::new(&snapshot(0, false)?, lab_opts)?;
    progress(format!(
        "lab {} ({} attachment): bench/server on node-1, bench/client on node-2",
        lab.prefix(),
        attachment.name()
    ));
    let server_ns = lab.pod_netns(&server).expect("server pod").to_string();
    let client_ns = lab.pod_netns(&client).expect("client pod").to_string();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server_ns,
            "iperf3",
            "-s",
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start iperf3 -s: {e}")))?;
    let _server = Server(child);
    std::thread::sleep(Duration::from_millis(300));

    let mut configs: Vec<(&str, usize)> = vec![("none", 0), ("conntrack", 0)];
    configs.extend(opts.policy_counts.iter().map(|n| ("nft", *n)));
    if opts.flow_events {
        configs.extend(opts.policy_counts.iter().map(|n| ("nft+flows", *n)));
    }
    let mut skipped = Vec::new();
    if opts.iptables && attachment == Attachment::Flannel {
        skipped.push("iptables: the iptables rendering has no bridge attachment".into());
    } else if opts.iptables {
        let missing: Vec<&str> = ["ipset", "iptables-restore", "ip6tables-restore"]
            .into_iter()
            .filter(|t| sys::output("sh", &["-c", &format!("command -v {t}")]).is_err())
            .collect();
        if missing.is_empty() {
            configs.extend(opts.policy_counts.iter().map(|n| ("iptables", *n)));
        } else {
            skipped.push(format!("iptables: {} not installed", missing.join(", ")));
        }
    }

    let mut rows: Vec<BenchRow> = Vec::new();
    for (backend, n) in configs {
        lab.update_topology(&snapshot(n, opts.admin)?)?;
        let flows = (backend == "nft+flows").then(FlowLog::default);
        lab.set_flow_log(flows);
        match backend {
            "none" => lab.clear_rules()?,
            "conntrack" => lab.conntrack_only()?,
            "iptables" => lab.load_iptables()?,
            _ => lab.reload()?,
        }
        // With flow events, each node's group is read, as its agent would.
        let mut drains = Vec::new();
        if let Some(fl) = flows {
            for node in lab.topology().nodes.keys() {
                let ns = lab.node_netns(node).expect("node namespace");
                drains.push(crate::nflog::Drain::start(&sys::netns_path(ns), fl.group)?);
            }
        }
        // Whatever the rules, the pair must still reach each other.
        let check = lab.probe_cell(&client, &server, policyc_compiler::Protocol::Tcp, CONNECT_PORT)?;
        if !check.reached() {
            return Err(Error::new(format!(
                "{backend} with {n} policies: client cannot reach server ({})",
                check.describe()
            )));
        }
        let (mut tcps, mut udps, mut connss) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.repeat.max(1) {
            tcps.push(tcp_gbit_s(&client_ns, opts.seconds)?);
            udps.push(udp_kpps(&client_ns, opts.seconds)?);
            connss.push(connections_per_s(&lab, &client, Duration::from_secs(1))?);
        }
        let event_bytes: u64 = drains.into_iter().map(crate::nflog::Drain::stop).sum();
        if flows.is_some() {
            progress(format!("  flow events read: {} KiB", event_bytes / 1024));
        }
        let (tcp, udp, conns) = (median(tcps), median(udps), median(connss));
        let base = rows.first();
        let ratio = |v: f64, b: Option<f64>| b.map_or(1.0, |b| if b > 0.0 { v / b } else { 0.0 });
        let row = BenchRow {
            attachment: attachment.name().to_string(),
            backend: backend.to_string(),
            policies: n,
            tcp_gbit_s: tcp,
            udp_kpps: udp,
            connections_per_s: conns,
            tcp_ratio: ratio(tcp, base.map(|b| b.tcp_gbit_s)),
            udp_ratio: ratio(udp, base.map(|b| b.udp_kpps)),
            connections_ratio: ratio(conns, base.map(|b| b.connections_per_s)),
        };
        progress(format!(
            "{:<8} {backend:<8} {n:>5} policies: TCP {tcp:.2} Gbit/s, UDP {udp:.0} kpps, {conns:.0} connections/s",
            attachment.name()
        ));
        rows.push(row);
    }
    drop(_server);
    lab.teardown()?;
    Ok((rows, skipped))
}

impl BenchResult {
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "median of {} runs of {} s each (connections: 1 s); ratios to the same attachment's run without any ruleset",
            self.repeat, self.seconds
        );
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>8}  {:>10} {:>6}  {:>13} {:>6}  {:>9} {:>6}",
            "attachment", "backend", "policies", "TCP Gbit/s", "ratio", "UDP kpps 64B", "ratio", "conn/s", "ratio"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>8}  {:>10.2} {:>6.2}  {:>13.0} {:>6.2}  {:>9.0} {:>6.2}",
                r.attachment,
                r.backend,
                r.policies,
                r.tcp_gbit_s,
                r.tcp_ratio,
                r.udp_kpps,
                r.udp_ratio,
                r.connections_per_s,
                r.connections_ratio
            );
        }
        // What enforcing costs beyond connection tracking, which any stateful firewall (and
        // kube-proxy) turns on: each row against the same attachment's conntrack-only row.
        let ct = |a: &str| self.rows.iter().find(|r| r.attachment == a && r.backend == "conntrack");
        let beyond: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.policies > 0)
            .filter_map(|r| {
                let b = ct(&r.attachment)?;
                let q = |v: f64, base: f64| if base > 0.0 { v / base } else { 0.0 };
                Some(format!(
                    "{:<10} {:<9} {:>8}  {:>6.2}  {:>6.2}  {:>6.2}",
                    r.attachment,
                    r.backend,
                    r.policies,
                    q(r.tcp_gbit_s, b.tcp_gbit_s),
                    q(r.udp_kpps, b.udp_kpps),
                    q(r.connections_per_s, b.connections_per_s)
                ))
            })
            .collect();
        if !beyond.is_empty() {
            let _ = writeln!(
                out,
                "ratios to the same attachment's conntrack-only run (connection tracking alone):"
            );
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>8}  {:>6}  {:>6}  {:>6}",
                "attachment", "backend", "policies", "TCP", "UDP", "conn/s"
            );
            for line in beyond {
                let _ = writeln!(out, "{line}");
            }
        }
        for s in &self.skipped {
            let _ = writeln!(out, "skipped: {s}");
        }
        out
    }
}
