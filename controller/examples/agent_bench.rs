//! Benchmarks of `policyc-agent` against a real kube-apiserver (kube-lab), programming throwaway
//! network namespaces. Needs root and `e2e/bin/kube-lab` (`bash e2e/apiserver/build.sh`).
//!
//! ```sh
//! cargo run --release -p policyc-controller --example agent_bench [-- OPTIONS]
//! ```
//!
//! The agent runs with `MALLOC_ARENA_MAX=1`, as the chart's DaemonSet runs it (glibc's default
//! gives each thread that allocates its own arena, whose freed memory stays resident); set
//! `MALLOC_ARENA_MAX` to measure otherwise.
//!
//! Options: `--quick` (20 changes per latency row, a cluster a tenth of the size),
//! `--no-latency`, `--no-scale`, `--agent PATH` (a prebuilt agent instead of building
//! `target/release/policyc-agent`). `POLICYC_BENCH_WRAP="heaptrack -o FILE"` runs the scale agent
//! under a profiler (its memory figures are then the wrapper's).
//!
//! What it measures, and how:
//!
//! 1. **policy → kernel commit**: the agent runs for node `n1` with `--debounce-ms 30`. Each
//!    NetworkPolicy create, delete or update is sent with the Rust client; the clock starts when
//!    the API server acknowledges it and stops when `nft monitor` in the namespace prints
//!    `# new generation`, which the kernel emits when the transaction commits. One change at a
//!    time, waiting for its commit; the commit's objects are checked to hold the change, and a
//!    second commit within the settle time is reported.
//! 2. **pod churn → commit**: a new pod on `n1` gets its IP (status subresource), then loses the
//!    label a policy peer selects; the table says what the commits sent (set elements only,
//!    chains rewritten in place, or a full replace).
//! 3. **scale**: the synthetic cluster of the compiler benchmark (`synth::cluster(Shape::LARGE,
//!    42)`: 10,000 running pods over 100 nodes, 100 namespaces, 2,000 NetworkPolicies) is created
//!    through the API; then an agent for `node-7` starts. Reported: time to its first full sync
//!    (`/readyz` 200), its memory (`/proc/PID/status`) after a settle and after one `/metrics`
//!    scrape, the ruleset size from `/metrics`, then the latency of policy updates and pod IP
//!    changes on that cluster (clocked by the agent's "ruleset applied" log line, as `nft monitor`
//!    would lag printing ~20,000 elements per replace) and the memory after them.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use policyc_compiler::synth::{self, Shape};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{repo, ApiServer};

const DEBOUNCE_MS: u64 = 30;
/// Quiet time after each commit before the next change, so that the agent's post-commit work
/// (conntrack, NodePolicyStatus) is done and every sample starts from an idle agent.
const SETTLE: Duration = Duration::from_millis(150);
/// Parallel API requests while creating the large cluster.
const CONCURRENCY: usize = 32;

#[derive(Debug)]
struct Options {
    quick: bool,
    scale: bool,
    latency: bool,
    /// A prebuilt agent instead of building target/release/policyc-agent.
    agent: Option<PathBuf>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        quick: false,
        scale: true,
        latency: true,
        agent: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-scale" => o.scale = false,
            "--no-latency" => o.latency = false,
            "--agent" => o.agent = Some(args.next().context("--agent PATH")?.into()),
            "-h" | "--help" => {
                println!("usage: agent_bench [--quick] [--no-latency] [--no-scale] [--agent PATH]");
                std::process::exit(0);
            }
            other => bail!(
                "unknown argument {other} (usage: agent_bench [--quick] [--no-latency] [--no-scale] [--agent PATH])"
            ),
        }
    }
    Ok(o)
}

// === Processes and namespaces we own ===

struct Netns(String);

impl Netns {
    fn create(name: String) -> anyhow::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status()?.success();
        if !ok {
            bail!("ip netns add {name} failed");
        }
        Ok(Netns(name))
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed (by its own id) when dropped.
struct Owned(Child);

impl Owned {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

/// Builds the release agent, the way it ships.
fn build_agent() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(repo())
        .args([
            "build",
            "--release",
            "-p",
            "policyc-controller",
            "--bin",
            "policyc-agent",
        ])
        .status()
        .context("running cargo")?
        .success();
    if !ok {
        bail!("cargo build of policyc-agent failed");
    }
    Ok(target_dir().join("release/policyc-agent"))
}

/// `MALLOC_ARENA_MAX` for the agent: the chart's `1`, unless the environment sets another (e.g.
/// `8`, glibc's default behaviour on this machine, to see what more arenas cost).
fn malloc_arena_max() -> String {
    std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".into())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Agent {
    child: Owned,
    port: u16,
    log: PathBuf,
}

/// Starts the agent; `wrap` is a command line to run it under (e.g. `heaptrack -o FILE`).
fn start_agent(
    bin: &PathBuf,
    api: &ApiServer,
    ns: &Netns,
    node: &str,
    tag: &str,
    wrap: Option<&str>,
) -> anyhow::Result<Agent> {
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("policyc-agent-bench-{}-{tag}.log", std::process::id()));
    let mut cmd = match wrap.map(|w| w.split_whitespace().collect::<Vec<_>>()) {
        Some(w) if !w.is_empty() => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    let child = cmd
        .args(["--node-name", node, "--debounce-ms", &DEBOUNCE_MS.to_string()])
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--netns")
        .arg(ns.path())
        .env("KUBECONFIG", &api.kubeconfig)
        // As the chart runs the agent: one malloc arena.
        .env("MALLOC_ARENA_MAX", malloc_arena_max())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting policyc-agent")?;
    Ok(Agent {
        child: Owned(child),
        port,
        log,
    })
}

fn ready(port: u16) -> bool {
    support::http_get(port, Duration::from_secs(120), "/readyz").is_some_and(|(c, _)| c == 200)
}

/// `name value` lines of an OpenMetrics text, labels included in the name.
fn metrics(port: u16) -> anyhow::Result<BTreeMap<String, f64>> {
    let (code, text) = support::http_get(port, Duration::from_secs(120), "/metrics").context("GET /metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("policyc_") && !l.starts_with("policyc_policy_rule") && !l.starts_with("policyc_denied")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// Memory of a process in KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

fn mem(pid: u32) -> anyhow::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    })
}

// === Kernel commits, from `nft monitor` ===

/// One committed transaction: the objects `nft monitor` printed for it, and when the kernel
/// announced the new generation.
#[derive(Debug)]
struct Commit {
    at: Instant,
    lines: Vec<String>,
}

impl Commit {
    fn mentions(&self, s: &str) -> bool {
        self.lines.iter().any(|l| l.contains(s))
    }

    /// The first object that is not a set or map element (a table, chain, rule or set).
    fn structural(&self) -> Option<&String> {
        self.lines.iter().find(|l| {
            !["add element", "create element", "delete element"]
                .iter()
                .any(|p| l.starts_with(p))
        })
    }
}

fn monitor(ns: &Netns) -> anyhow::Result<(Owned, mpsc::UnboundedReceiver<Commit>)> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("nft monitor")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("# new generation") {
                let commit = Commit {
                    at: Instant::now(),
                    lines: std::mem::take(&mut lines),
                };
                if tx.send(commit).is_err() {
                    return;
                }
            } else {
                lines.push(line);
            }
        }
    });
    Ok((Owned(child), rx))
}

const ELEMENTS: &str = "elements only";
const IN_PLACE: &str = "chains in place";
const REPLACE: &str = "full replace";

#[derive(Clone, Debug)]
struct Sample {
    /// The first object of the commit that is not a set element, if any.
    structural: Option<String>,
    /// API acknowledgement → kernel commit.
    latency: Duration,
    /// The request's round trip.
    request: Duration,
    /// What the kernel was sent: `elements only`, `chains in place` or `full replace`.
    commit: &'static str,
    /// The commit did not contain what the change should have produced.
    unexpected: bool,
    /// Further commits within the settle time (a change should make exactly one).
    extra_commits: usize,
    /// The commit was announced before the API acknowledgement arrived.
    before_ack: bool,
    /// The agent's own time from the end of the debounce to the kernel's answer (`sync_ms` of
    /// its "ruleset applied" line), when it logs one.
    agent_sync: Option<Duration>,
}

async fn settle(rx: &mut mpsc::UnboundedReceiver<Commit>) -> usize {
    tokio::time::sleep(SETTLE).await;
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// Sends one change, waits for the kernel to commit it, and checks the commit with `expect`.
async fn measure<F>(
    rx: &mut mpsc::UnboundedReceiver<Commit>,
    what: &str,
    expect: impl Fn(&Commit) -> bool,
    change: F,
) -> anyhow::Result<Sample>
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    while rx.try_recv().is_ok() {}
    let sent = Instant::now();
    change.await?;
    let ack = Instant::now();
    let commit = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .with_context(|| format!("no kernel commit within 10 s after {what}"))?
        .context("nft monitor ended")?;
    let extra_commits = settle(rx).await;
    Ok(Sample {
        latency: commit.at.saturating_duration_since(ack),
        request: ack - sent,
        commit: match commit.structural() {
            None => ELEMENTS,
            Some(_) if commit.mentions("add table") => REPLACE,
            Some(_) => IN_PLACE,
        },
        structural: commit.structural().cloned(),
        unexpected: !expect(&commit),
        extra_commits,
        before_ack: commit.at < ack,
        agent_sync: None,
    })
}

// === Objects ===

fn pod(name: &str, ns: &str, node: &str, app: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))?)
}

fn running(ips: &[&str]) -> Value {
    let list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"status": {"phase": "Running", "podIP": ips.first(), "podIPs": list}})
}

fn policy(name: &str, port: u16) -> anyhow::Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": port}]}]}
    }))?)
}

async fn client(api: &ApiServer) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(&api.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

// === Figures ===

#[derive(Debug)]
struct Row {
    what: String,
    samples: Vec<Sample>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn print_latency(clock: &str, rows: &[Row]) {
    let debounce = Duration::from_millis(DEBOUNCE_MS);
    println!();
    println!("Latency: {clock}; agent debounce {DEBOUNCE_MS} ms; in ms");
    println!();
    println!(
        "| change | n | p50 | p99 | max | p50 − debounce | p99 − debounce | API request p50 | commits | anomalies |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mut l: Vec<Duration> = r.samples.iter().map(|s| s.latency).collect();
        l.sort();
        let mut q: Vec<Duration> = r.samples.iter().map(|s| s.request).collect();
        q.sort();
        if l.is_empty() {
            continue;
        }
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &r.samples {
            *kinds.entry(s.commit).or_default() += 1;
        }
        let kind = match kinds.len() {
            1 => kinds.keys().next().expect("one kind").to_string(),
            _ => kinds
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut anomalies = Vec::new();
        let unexpected = r.samples.iter().filter(|s| s.unexpected).count();
        let extra: usize = r.samples.iter().map(|s| s.extra_commits).sum();
        let early = r.samples.iter().filter(|s| s.before_ack).count();
        if unexpected > 0 {
            anomalies.push(format!("{unexpected} commits without the change"));
        }
        if extra > 0 {
            anomalies.push(format!("{extra} extra commits"));
        }
        if early > 0 {
            anomalies.push(format!("{early} committed before the ack"));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what,
            l.len(),
            ms(pct(&l, 0.5)),
            ms(pct(&l, 0.99)),
            ms(*l.last().expect("not empty")),
            ms(pct(&l, 0.5).saturating_sub(debounce)),
            ms(pct(&l, 0.99).saturating_sub(debounce)),
            ms(pct(&q, 0.5)),
            kind,
            if anomalies.is_empty() {
                "none".to_string()
            } else {
                anomalies.join(", ")
            }
        );
    }
    for r in rows {
        let mut own: Vec<Duration> = r.samples.iter().filter_map(|s| s.agent_sync).collect();
        own.sort();
        if !own.is_empty() {
            println!(
                "  {}: the agent's own sync (sync_ms, debounce end → kernel answer): p50 {} ms, p99 {} ms",
                r.what,
                ms(pct(&own, 0.5)),
                ms(pct(&own, 0.99))
            );
        }
    }
    for r in rows {
        if let Some(line) = r.samples.iter().find_map(|s| s.structural.as_ref()) {
            let short: String = line.chars().take(140).collect();
            println!("  {}: first non-element object of a commit: `{short}`", r.what);
        }
    }
}

fn histogram_mean(m: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, name: &str) -> Option<Duration> {
    let get = |map: &BTreeMap<String, f64>, suffix: &str| map.get(&format!("{name}_{suffix}")).copied().unwrap_or(0.0);
    let n = get(m, "count") - get(before, "count");
    (n > 0.0).then(|| Duration::from_secs_f64((get(m, "sum") - get(before, "sum")) / n))
}

// === Phases ===

async fn latency(
    opts: &Options,
    agent_bin: &PathBuf,
    api: &ApiServer,
    client: &Client,
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    let n = if opts.quick { 20 } else { 100 };
    let pp = PostParams::default();
    let patch = PatchParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "x"}}))?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    for (name, node, app, ip) in [
        ("a", "n1", "a", "10.244.1.5"),
        ("b", "n1", "b", "10.244.1.6"),
        ("c", "n2", "b", "10.244.2.7"),
    ] {
        pods.create(&pp, &pod(name, "x", node, app)?).await?;
        pods.patch_status(name, &patch, &Patch::Merge(running(&[ip]))).await?;
    }

    let ns = Netns::create(format!("pcb-{}", std::process::id()))?;
    let (mut _monitor, mut rx) = monitor(&ns)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = start_agent(agent_bin, api, &ns, "n1", "n1", None)?;
    let t = Instant::now();
    while !ready(agent.port) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("agent not ready after 60 s, see {}", agent.log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    let before = metrics(agent.port)?;
    let mut notes = Vec::new();

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "x");
    policies.create(&pp, &policy("web", 20_000)?).await?;
    settle(&mut rx).await;
    // Each new policy is deleted again after its commit, so every sample sees the same ruleset
    // (one policy, three pods) and a pod is never selected by more than two policies.
    let mut create = Row {
        what: "NetworkPolicy create".into(),
        samples: Vec::new(),
    };
    let mut delete = Row {
        what: "NetworkPolicy delete".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let name = format!("lat-{i}");
        let p = policy(&name, 10_000 + i as u16)?;
        let id = format!("x/{name} ");
        let what = format!("creating {name}");
        create.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&id), async {
                policies.create(&pp, &p).await.map(drop)
            })
            .await?,
        );
        let what = format!("deleting {name}");
        delete.samples.push(
            measure(&mut rx, &what, |c| c.mentions("add table") && !c.mentions(&id), async {
                policies.delete(&name, &Default::default()).await.map(drop)
            })
            .await?,
        );
    }
    let mut update = Row {
        what: "NetworkPolicy update (port)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let port = 20_001 + i as u16;
        let body = json!({"spec": {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": port}]}]}});
        let expect = format!("dport {port} ");
        let what = format!("updating web to port {port}");
        update.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&expect), async {
                policies.patch("web", &patch, &Patch::Merge(&body)).await.map(drop)
            })
            .await?,
        );
    }
    let mid = metrics(agent.port)?;
    if let Some(d) = histogram_mean(&mid, &before, "policyc_sync_duration_seconds") {
        notes.push(format!(
            "policy changes: the agent's own compile+apply (policyc_sync_duration_seconds) averaged {} ms",
            ms(d)
        ));
    }

    // Policy updates rewrite chains in place, and `nft monitor` (nftables 1.0.6) forgets a named
    // set once it sees a rule deleted that looks it up: it would no longer print that set's
    // elements. A new monitor starts from the table as it is.
    (_monitor, rx) = monitor(&ns)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ip = Row {
        what: "pod on n1 gets its IP (new pod)".into(),
        samples: Vec::new(),
    };
    let mut label = Row {
        what: "pod label change (leaves a peer selector)".into(),
        samples: Vec::new(),
    };
    for i in 0..n / 2 {
        let name = format!("churn-{i}");
        let addr = format!("10.244.1.{}", 10 + i);
        pods.create(&pp, &pod(&name, "x", "n1", "b")?).await?;
        // A pod without an IP is not an endpoint yet: no commit is expected for the create.
        if settle(&mut rx).await > 0 {
            notes.push(format!("creating pod {name} without an IP made a commit"));
        }
        let status = running(&[&addr]);
        let (added, removed) = (format!("{addr} "), format!("{addr} "));
        let what = format!("setting the IP of {name}");
        ip.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&added), async {
                pods.patch_status(&name, &patch, &Patch::Merge(&status)).await.map(drop)
            })
            .await?,
        );
        let relabel = json!({"metadata": {"labels": {"app": "d"}}});
        let what = format!("relabelling {name}");
        label.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&removed), async {
                pods.patch(&name, &patch, &Patch::Merge(&relabel)).await.map(drop)
            })
            .await?,
        );
    }
    let after = metrics(agent.port)?;
    if let Some(d) = histogram_mean(&after, &mid, "policyc_sync_duration_seconds") {
        notes.push(format!(
            "pod churn: the agent's own compile+apply (policyc_sync_duration_seconds) averaged {} ms",
            ms(d)
        ));
    }
    let applies = |m: &BTreeMap<String, f64>, mode: &str| {
        m.get(&format!("policyc_applies_total{{mode=\"{mode}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    notes.push(format!(
        "agent applies during the pod churn: {} elements, {} replace, {} unchanged (policyc_applies_total)",
        applies(&after, "elements") - applies(&mid, "elements"),
        applies(&after, "replace") - applies(&mid, "replace"),
        applies(&after, "unchanged") - applies(&mid, "unchanged"),
    ));
    let m = mem(agent.child.pid())?;
    notes.push(format!(
        "agent for n1 after the latency runs: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        m.rss as f64 / 1024.0,
        m.hwm as f64 / 1024.0
    ));
    let mut both = Row {
        what: "pod churn (both kinds)".into(),
        samples: Vec::new(),
    };
    for (a, b) in ip.samples.iter().zip(&label.samples) {
        for s in [a, b] {
            both.samples.push(s.clone());
        }
    }
    drop(agent);
    Ok((vec![create, delete, update, ip, label, both], notes))
}

/// Creates every item (then applies its status, when `status` gives one), `CONCURRENCY` requests
/// at a time; returns the errors.
async fn create_all<K, A, S>(items: Vec<K>, api_for: A, status: S) -> Vec<String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
    A: Fn(&str) -> Api<K>,
    S: Fn(&K) -> Option<Value>,
{
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let (pp, patch, api_for, status) = (&pp, &patch, &api_for, &status);
    futures::stream::iter(items)
        .map(|item| async move {
            let ns = item.meta().namespace.clone().unwrap_or_default();
            let name = item.meta().name.clone().unwrap_or_default();
            let api = api_for(&ns);
            api.create(pp, &item).await.map_err(|e| format!("{ns}/{name}: {e}"))?;
            if let Some(s) = status(&item) {
                api.patch_status(&name, patch, &Patch::Merge(&s))
                    .await
                    .map_err(|e| format!("{ns}/{name} status: {e}"))?;
            }
            Ok::<(), String>(())
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

async fn scale(opts: &Options, agent_bin: &PathBuf, api: &ApiServer, client: &Client) -> anyhow::Result<Vec<String>> {
    let shape = if opts.quick {
        Shape {
            pods: 1_000,
            namespaces: 10,
            policies: 200,
            nodes: 10,
            dual_stack_every: 10,
        }
    } else {
        Shape::LARGE
    };
    let node = "node-7";
    let objects = synth::to_objects(&synth::cluster(shape, 42));
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    for mut o in objects {
        match o["kind"].as_str() {
            Some("Namespace") => namespaces.push(serde_json::from_value::<Namespace>(o)?),
            Some("Pod") => {
                for c in o["spec"]["containers"].as_array_mut().into_iter().flatten() {
                    c["image"] = json!("none");
                }
                let status = o["status"].take();
                let ips: Vec<&str> = status["podIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip["ip"].as_str())
                    .collect();
                let status = running(&ips);
                let pod: Pod = serde_json::from_value(o)?;
                pods.push((pod, status));
            }
            Some("NetworkPolicy") => policies.push(serde_json::from_value::<NetworkPolicy>(o)?),
            _ => {}
        }
    }
    let mut notes = Vec::new();
    let t = Instant::now();
    let (n_ns, n_pods, n_pol) = (namespaces.len(), pods.len(), policies.len());
    let mut errors = create_all(namespaces, |_| Api::all(client.clone()), |_| None).await;
    let statuses: BTreeMap<(String, String), Value> = pods
        .iter()
        .map(|(p, s)| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            (key, s.clone())
        })
        .collect();
    let pods: Vec<Pod> = pods.into_iter().map(|(p, _)| p).collect();
    let (pod_errors, policy_errors) = tokio::join!(
        create_all(
            pods,
            |ns| Api::namespaced(client.clone(), ns),
            |p: &Pod| {
                let key = (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                statuses.get(&key).cloned()
            }
        ),
        create_all(policies, |ns| Api::namespaced(client.clone(), ns), |_| None),
    );
    errors.extend(pod_errors);
    errors.extend(policy_errors);
    let created = t.elapsed();
    let requests = n_ns + 2 * n_pods + n_pol;
    notes.push(format!(
        "created {n_ns} namespaces, {n_pods} pods (+ status), {n_pol} policies: {requests} requests in {:.1} s ({:.0}/s, {CONCURRENCY} in flight), {} failed",
        created.as_secs_f64(),
        requests as f64 / created.as_secs_f64(),
        errors.len()
    ));
    for e in errors.iter().take(5) {
        notes.push(format!("  failed: {e}"));
    }

    let ns = Netns::create(format!("pcb-{}-scale", std::process::id()))?;
    let wrap = std::env::var("POLICYC_BENCH_WRAP").ok();
    if let Some(w) = &wrap {
        println!("(scale agent runs under `{w}`: the memory figures are the wrapper's)");
    }
    let agent = start_agent(agent_bin, api, &ns, node, node, wrap.as_deref())?;
    let pid = agent.child.pid();
    let t = Instant::now();
    let limit = Duration::from_secs(if opts.quick { 60 } else { 300 });
    let mut first_sync = None;
    while t.elapsed() < limit {
        if ready(agent.port) {
            first_sync = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle_for = Duration::from_secs(if opts.quick { 3 } else { 10 });
    if first_sync.is_some() {
        tokio::time::sleep(settle_for).await;
    }
    let settled = mem(pid)?;
    let t = Instant::now();
    let m = metrics(agent.port)?;
    let scrape = t.elapsed();
    let scraped = mem(pid)?;
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);

    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!();
    println!(
        "Scale: {} pods ({} namespaces, {} nodes), {} NetworkPolicies in the API server; agent for {node}",
        shape.pods, shape.namespaces, shape.nodes, shape.policies
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    match first_sync {
        Some(d) => println!("| agent start → first full sync (/readyz 200) | {} ms |", ms(d)),
        None => {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            let last_error = log
                .lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("no error logged");
            println!(
                "| agent start → first full sync (/readyz 200) | NOT READY after {} s; last error: {} |",
                limit.as_secs(),
                last_error
            );
        }
    }
    println!(
        "| VmRSS {} s after the first sync (goal ≤ 64 MB) | {} ({:.1} MB) |",
        settle_for.as_secs(),
        mib(settled.rss),
        settled.rss as f64 * 1024.0 / 1e6
    );
    println!("| VmHWM (peak) | {} |", mib(settled.hwm));
    println!("| RssAnon / RssFile | {} / {} |", mib(settled.anon), mib(settled.file));
    println!(
        "| VmRSS after one /metrics scrape ({} ms) | {} |",
        ms(scrape),
        mib(scraped.rss)
    );
    println!("| VmHWM after the scrape | {} |", mib(scraped.hwm));
    println!("| rules (policyc_rules) | {} |", get("policyc_rules"));
    println!("| sets (policyc_sets) | {} |", get("policyc_sets"));
    println!(
        "| set elements (policyc_set_elements) | {} |",
        get("policyc_set_elements")
    );
    println!(
        "| endpoints on {node} (policyc_endpoints) | {} |",
        get("policyc_endpoints")
    );
    println!("| valid policies (policyc_policies) | {} |", get("policyc_policies"));
    println!(
        "| invalid objects (policyc_invalid_objects) | {} |",
        get("policyc_invalid_objects")
    );
    if let Some(d) = histogram_mean(&m, &BTreeMap::new(), "policyc_sync_duration_seconds") {
        println!(
            "| syncs / mean compile+apply (policyc_sync_duration_seconds) | {} / {} ms |",
            get("policyc_sync_duration_seconds_count"),
            ms(d)
        );
    }
    if let Some(d) = histogram_mean(&m, &BTreeMap::new(), "policyc_apply_duration_seconds") {
        println!(
            "| netlink transactions / mean (policyc_apply_duration_seconds) | {} / {} ms |",
            get("policyc_apply_duration_seconds_count"),
            ms(d)
        );
    }
    if first_sync.is_some() {
        let rows = activity(opts, client, &agent).await?;
        print_latency(
            "API acknowledgement → the agent's \"ruleset applied\" log line (written when the kernel acknowledged the batch)",
            &rows,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = mem(pid)?;
        println!();
        println!(
            "agent memory after these changes (+5 s): VmRSS {}, VmHWM {}, RssAnon {}",
            mib(after.rss),
            mib(after.hwm),
            mib(after.anon)
        );
    }
    notes.push(format!("agent log (scale): {}", agent.log.display()));
    drop(agent);
    Ok(notes)
}

/// The agent's log, read as it grows: the times of its "ruleset applied" lines.
struct AgentLog {
    path: PathBuf,
    offset: usize,
}

impl AgentLog {
    fn new(path: &std::path::Path) -> AgentLog {
        let offset = std::fs::read(path).map_or(0, |b| b.len());
        AgentLog {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// New "ruleset applied" lines since the last call: (time logged, mode, the agent's sync
    /// time if logged).
    fn applied(&mut self) -> Vec<(jiff::Timestamp, String, Option<Duration>)> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Vec::new();
        };
        let end = bytes[self.offset.min(bytes.len())..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(self.offset, |i| self.offset + i + 1);
        let text = String::from_utf8_lossy(&bytes[self.offset.min(end)..end]).into_owned();
        self.offset = end;
        text.lines()
            .filter(|l| l.contains("ruleset applied"))
            .filter_map(|l| {
                let plain = strip_ansi(l);
                let ts: jiff::Timestamp = plain.split_whitespace().next()?.parse().ok()?;
                let mode = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("mode="))
                    .unwrap_or("?")
                    .trim_matches('"')
                    .to_string();
                let sync = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("sync_ms="))
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|v| Duration::from_secs_f64(v / 1e3));
                Some((ts, mode, sync))
            })
            .collect()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends one change and waits for the agent to log the commit it caused.
async fn measure_logged<F>(log: &mut AgentLog, what: &str, change: F) -> anyhow::Result<Sample>
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    log.applied();
    let sent = Instant::now();
    change.await?;
    let (ack, ack_wall) = (Instant::now(), jiff::Timestamp::now());
    let mut seen = Vec::new();
    while seen.is_empty() {
        if ack.elapsed() > Duration::from_secs(30) {
            bail!("no commit logged within 30 s after {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen = log.applied();
    }
    tokio::time::sleep(SETTLE).await;
    let extra_commits = seen.len() - 1 + log.applied().len();
    let (ts, mode, agent_sync) = &seen[0];
    let latency = ts.duration_since(ack_wall);
    Ok(Sample {
        structural: None,
        latency: latency.unsigned_abs(),
        request: ack - sent,
        commit: match mode.as_str() {
            "elements" => ELEMENTS,
            "chains" => IN_PLACE,
            _ => REPLACE,
        },
        unexpected: false,
        extra_commits,
        before_ack: latency.is_negative(),
        agent_sync: *agent_sync,
    })
}

/// Changes on the loaded cluster: a policy in `ns-7` (whose pods all run on `node-7`) is updated,
/// and new pods on another node gain the IP that puts them in its peer set.
async fn activity(opts: &Options, client: &Client, agent: &Agent) -> anyhow::Result<Vec<Row>> {
    let n = if opts.quick { 10 } else { 20 };
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let ns = "ns-7";
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec = |port: u16| json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench"}}}], "ports": [{"port": port}]}]});
    let mut log = AgentLog::new(&agent.log);
    let mut create = Row {
        what: "NetworkPolicy create (selects the node's 100 pods)".into(),
        samples: Vec::new(),
    };
    let p: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench", "namespace": ns}, "spec": spec(40_000)
    }))?;
    create.samples.push(
        measure_logged(&mut log, "creating ns-7/bench", async {
            policies.create(&pp, &p).await.map(drop)
        })
        .await?,
    );
    let mut update = Row {
        what: "NetworkPolicy update (port)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let body = json!({"spec": spec(40_001 + i as u16)});
        update.samples.push(
            measure_logged(&mut log, "updating ns-7/bench", async {
                policies.patch("bench", &patch, &Patch::Merge(&body)).await.map(drop)
            })
            .await?,
        );
    }
    let mut churn = Row {
        what: "remote pod gets its IP (joins a peer set)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let name = format!("bench-{i}");
        pods.create(&pp, &pod(&name, ns, "node-42", "bench")?).await?;
        tokio::time::sleep(SETTLE).await;
        log.applied();
        let status = running(&[&format!("10.200.0.{}", 10 + i)]);
        churn.samples.push(
            measure_logged(&mut log, "setting a pod IP", async {
                pods.patch_status(&name, &patch, &Patch::Merge(&status)).await.map(drop)
            })
            .await?,
        );
    }
    Ok(vec![create, update, churn])
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    if !policyc_testhost::is_root() {
        bail!("needs root (network namespaces, nftables)");
    }
    let agent_bin = match &opts.agent {
        Some(p) => p.clone(),
        None => build_agent()?,
    };
    let Some(api) = ApiServer::start("bench") else {
        bail!("kube-lab not built: bash e2e/apiserver/build.sh");
    };
    let crds = repo().join("crds/yaml/crds.yaml");
    api.kubectl(&["apply", "-f", crds.to_str().context("path")?], None);
    api.kubectl(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/nodepolicystatuses.policyc.dev",
        ],
        None,
    );
    let client = client(&api).await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "policyc-agent benchmarks: kube-lab (kube-apiserver v1.34 + etcd), {cpus} CPUs, agent {} (MALLOC_ARENA_MAX={})",
        agent_bin.display(),
        malloc_arena_max()
    );

    let mut notes = Vec::new();
    if opts.latency {
        let (rows, n) = latency(&opts, &agent_bin, &api, &client).await?;
        print_latency(
            "API acknowledgement → kernel commit (`# new generation` from nft monitor)",
            &rows,
        );
        notes.extend(n);
    }
    if opts.scale {
        notes.extend(scale(&opts, &agent_bin, &api, &client).await?);
    }
    println!();
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}
