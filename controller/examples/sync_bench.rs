//! The agent's sync, phase by phase, on a large synthetic cluster, without an API server: the
//! agent's index fed with API objects as its watchers feed it, and the same compile (with the
//! index's selector cache), ruleset hash and netlink writer the agent runs, programming a
//! throwaway network namespace. Needs root (`ip netns`).
//!
//! ```sh
//! cargo run --release -p policyc-controller --example sync_bench [-- --quick] [-- -n 40]
//! ```
//!
//! The cluster is `synth::cluster(Shape::LARGE, 42)` (10,000 pods, 100 namespaces, 2,000
//! policies, 100 nodes; `--quick`: a tenth of it), compiled for `node-7`, as in `agent_bench`'s
//! scale phase. The changes: a policy `ns-7/bench` selecting the node's pods is created and
//! deleted, n times each, alternating; a policy `ns-7/elsewhere` selecting no pod of the node is
//! created and deleted likewise (its IR is the node's IR unchanged, so the sync must not send
//! anything: the `msgs` column counts the netlink messages of each sync's transaction, 0 when
//! the writer was not called or sent nothing); then `ns-7/bench` is created again and gets a new
//! port, and pods of `ns-7` on another node get their IP and so join the policy's peer set (set
//! elements only). The `replace` count says how many syncs replaced the whole table. Each sync
//! is timed as the agent runs it: compile (under the index lock in the agent), ruleset hash
//! (the unchanged check), then the writer's apply: planning (lowering, comparing with the
//! committed plan, encoding) and the kernel's transaction. Phases are timed in thread CPU time,
//! which other load on the machine barely moves, and the whole sync also in wall time.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::time::{clock_gettime, ClockId};
use policyc_compiler::load::Kind;
use policyc_compiler::synth::{self, Shape};
use policyc_compiler::{CompileOptions, Ir};
use policyc_controller::index::{Index, WATCHED};
use policyc_dataplane::{ApplyStats, Dataplane, NetlinkWriter};
use serde_json::{json, Value};

const NODE: &str = "node-7";

struct Netns(String);

impl Netns {
    fn create() -> anyhow::Result<Netns> {
        let name = format!("pcsync-{}", std::process::id());
        if !Command::new("ip").args(["netns", "add", &name]).status()?.success() {
            bail!("ip netns add {name} failed (needs root)");
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// CPU time of the calling thread (user and system, the kernel's work inside `sendmsg`
/// included): unlike wall time, barely moved by other processes on a busy machine.
fn cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// One sync's phases: thread CPU time per phase, and the wall time of the whole sync and of the
/// writer's planning and kernel transaction.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    compile: Duration,
    hash: Duration,
    apply: Duration,
    cpu: Duration,
    plan_wall: Duration,
    kernel_wall: Duration,
    wall: Duration,
    /// The writer replaced the whole table.
    replace: bool,
    /// Netlink messages sent to the kernel (0: no transaction).
    messages: usize,
}

/// The agent's sync loop body, minus the API server and the debounce: the agent's index
/// (fed with API objects, as the watchers feed it), compile, ruleset hash, netlink writer.
struct Sync {
    index: Index,
    opts: CompileOptions,
    writer: NetlinkWriter,
    applied: Option<(Ir, String)>,
}

impl Sync {
    fn run(&mut self) -> anyhow::Result<Phases> {
        let (started, c0) = (Instant::now(), cpu());
        let ir = self.index.compile(&self.opts);
        let c1 = cpu();
        let hash = ir.ruleset_hash();
        let c2 = cpu();
        let mut p = Phases {
            compile: c1 - c0,
            hash: c2 - c1,
            ..Phases::default()
        };
        if self.applied.as_ref().is_none_or(|(_, h)| *h != hash) {
            let current = self.applied.take();
            let s: ApplyStats = self.writer.apply(current.as_ref().map(|(ir, _)| ir), &ir)?;
            p.apply = cpu() - c2;
            p.plan_wall = s.plan_time;
            p.kernel_wall = s.kernel_time;
            // `chains > 0` also meant a replace before the writer could add chains in place.
            p.replace = s.chains > 0 && !s.in_place;
            p.messages = s.messages;
            self.applied = Some((ir, hash));
        }
        p.cpu = cpu() - c0;
        p.wall = started.elapsed();
        Ok(p)
    }
}

/// `ns-7/bench`: selects every pod of `ns-7`, allows `app=bench` pods of `ns-7` on `port`.
fn bench_policy(port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench", "namespace": "ns-7", "generation": port},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench"}}}], "ports": [{"port": port}]}]}
    })
}

/// `ns-7/elsewhere`: selects `app=nowhere` pods of `ns-7`, of which there are none: the
/// node's IR does not change when it comes or goes.
fn elsewhere_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "elsewhere", "namespace": "ns-7", "generation": 1},
        "spec": {"podSelector": {"matchLabels": {"app": "nowhere"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench"}}}], "ports": [{"port": 7000}]}]}
    })
}

/// A running `app=bench` pod of `ns-7` on another node.
fn bench_pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i}"), "namespace": "ns-7", "labels": {"app": "bench"}},
        "spec": {"nodeName": "node-42", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": format!("10.200.{}.{}", i / 200, 10 + i % 200)}]}
    })
}

/// A phase's name and how to read it from a sync's figures.
type Phase = fn(&Phases) -> Duration;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn report(rows: &BTreeMap<&str, Vec<Phases>>) {
    println!("| sync | n | phase | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for (what, samples) in rows {
        let replaces = samples.iter().filter(|p| p.replace).count();
        let msgs = samples.iter().map(|p| p.messages).max().unwrap_or(0);
        let label = format!("{what} ({replaces} of {} full replace, msgs max {msgs})", samples.len());
        let phases: [(&str, Phase); 7] = [
            ("compile (CPU)", |p| p.compile),
            ("ruleset hash (CPU)", |p| p.hash),
            ("apply (CPU)", |p| p.apply),
            ("sync (CPU)", |p| p.cpu),
            ("plan (wall)", |p| p.plan_wall),
            ("kernel (wall)", |p| p.kernel_wall),
            ("sync (wall)", |p| p.wall),
        ];
        for (name, get) in phases {
            let mut v: Vec<Duration> = samples.iter().map(get).collect();
            v.sort();
            println!(
                "| {label} | {} | {name} | {} | {} | {} | {} |",
                v.len(),
                ms(pct(&v, 0.5)),
                ms(pct(&v, 0.9)),
                ms(pct(&v, 0.99)),
                ms(*v.last().expect("samples"))
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    let mut n = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "-n" => n = args.next().context("-n COUNT")?.parse()?,
            other => bail!("unknown argument {other} (usage: sync_bench [--quick] [-n COUNT])"),
        }
    }
    let shape = if quick {
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
    let mut index = Index::new();
    let mut objects: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in synth::to_objects(&synth::cluster(shape, 42)) {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        objects.entry(kind).or_default().push(o);
    }
    for kind in WATCHED {
        index.reset(kind, objects.remove(kind.as_str()).unwrap_or_default());
    }
    let netns = Netns::create()?;
    let mut sync = Sync {
        index,
        opts: CompileOptions {
            node: Some(NODE.into()),
            interface_prefix: "cali".into(),
            fail_closed: true,
            ..Default::default()
        },
        writer: NetlinkWriter::in_netns(format!("/run/netns/{}", netns.0)),
        applied: None,
    };
    let mut rows: BTreeMap<&str, Vec<Phases>> = BTreeMap::new();
    rows.entry("1 first sync").or_default().push(sync.run()?);
    let stats = sync.applied.as_ref().expect("applied").0.stats();
    println!(
        "{} pods, {} policies; {NODE}: {} endpoints, {} rules, {} set elements",
        shape.pods, shape.policies, stats.endpoints, stats.rules, stats.set_elements
    );
    for _ in 0..n {
        sync.index.apply(Kind::NetworkPolicy, bench_policy(40_000));
        rows.entry("2 policy create").or_default().push(sync.run()?);
        sync.index.delete(Kind::NetworkPolicy, &bench_policy(40_000));
        rows.entry("3 policy delete").or_default().push(sync.run()?);
    }
    for _ in 0..n {
        sync.index.apply(Kind::NetworkPolicy, elsewhere_policy());
        rows.entry("4 policy create, no local pod")
            .or_default()
            .push(sync.run()?);
        sync.index.delete(Kind::NetworkPolicy, &elsewhere_policy());
        rows.entry("5 policy delete, no local pod")
            .or_default()
            .push(sync.run()?);
    }
    sync.index.apply(Kind::NetworkPolicy, bench_policy(40_000));
    sync.run()?;
    for i in 0..n {
        sync.index.apply(Kind::NetworkPolicy, bench_policy(40_001 + i as u16));
        rows.entry("6 policy update (port)").or_default().push(sync.run()?);
        sync.index.apply(Kind::Pod, bench_pod(i));
        rows.entry("7 remote pod gets its IP").or_default().push(sync.run()?);
        rows.entry("8 nothing changed").or_default().push(sync.run()?);
    }
    report(&rows);
    Ok(())
}
