//! The agent's sync, phase by phase, on a large synthetic cluster, without an API server: the
//! same compile, ruleset hash and netlink writer the agent runs, programming a throwaway
//! network namespace. Needs root (`ip netns`).
//!
//! ```sh
//! cargo run --release -p policyc-controller --example sync_bench [-- --quick] [-- -n 40]
//! ```
//!
//! The cluster is `synth::cluster(Shape::LARGE, 42)` (10,000 pods, 100 namespaces, 2,000
//! policies, 100 nodes; `--quick`: a tenth of it), compiled for `node-7`, as in `agent_bench`'s
//! scale phase. The changes are those of that phase: a policy `ns-7/bench` selecting the node's
//! pods is created and then gets a new port (a full replace each time), and pods of `ns-7` on
//! another node get their IP and so join the policy's peer set (set elements only). Each sync
//! is timed as the agent runs it: compile (under the index lock in the agent), ruleset hash
//! (the unchanged check), then the writer's apply: planning (lowering, comparing with the
//! committed plan, encoding) and the kernel's transaction. Phases are timed in thread CPU time,
//! which other load on the machine barely moves, and the whole sync also in wall time.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::time::{clock_gettime, ClockId};
use policyc_compiler::model::{Direction, LabelSelector, NetworkPolicy, Peer, PortRef, PortSpec, Rule};
use policyc_compiler::synth::{self, Shape};
use policyc_compiler::{compile, CompileOptions, Ir, Protocol, Snapshot};
use policyc_controller::dataplane::{ApplyStats, Dataplane, NetlinkWriter};

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
    replace: bool,
}

/// The agent's sync loop body, minus the API server and the debounce.
struct Sync {
    opts: CompileOptions,
    writer: NetlinkWriter,
    applied: Option<(Ir, String)>,
}

impl Sync {
    fn run(&mut self, snapshot: &Snapshot) -> anyhow::Result<Phases> {
        let (started, c0) = (Instant::now(), cpu());
        let ir = compile(snapshot, &self.opts);
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
            p.replace = s.chains > 0;
            self.applied = Some((ir, hash));
        }
        p.cpu = cpu() - c0;
        p.wall = started.elapsed();
        Ok(p)
    }
}

fn bench_policy(port: u16) -> NetworkPolicy {
    let app_bench = LabelSelector {
        match_labels: [("app".to_string(), "bench".to_string())].into_iter().collect(),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        namespace: "ns-7".into(),
        name: "bench".into(),
        generation: Some(i64::from(port)),
        pod_selector: LabelSelector::default(),
        policy_types: vec![Direction::Ingress],
        ingress: vec![Rule {
            peers: vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(app_bench),
            }],
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range {
                    first: port,
                    last: port,
                },
            }],
        }],
        egress: vec![],
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn report(rows: &BTreeMap<&str, Vec<Phases>>) {
    println!("| sync | n | phase | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (what, samples) in rows {
        let replaces = samples.iter().filter(|p| p.replace).count();
        let label = format!("{what} ({replaces} of {} full replace)", samples.len());
        let phases: [(&str, fn(&Phases) -> Duration); 7] = [
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
                "| {label} | {} | {name} | {} | {} | {} |",
                v.len(),
                ms(pct(&v, 0.5)),
                ms(pct(&v, 0.9)),
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
    let mut snapshot = synth::cluster(shape, 42);
    let netns = Netns::create()?;
    let mut sync = Sync {
        opts: CompileOptions {
            node: Some(NODE.into()),
            interface_prefix: "cali".into(),
            fail_closed: true,
        },
        writer: NetlinkWriter::in_netns(format!("/run/netns/{}", netns.0)),
        applied: None,
    };
    let mut rows: BTreeMap<&str, Vec<Phases>> = BTreeMap::new();
    rows.entry("1 first sync").or_default().push(sync.run(&snapshot)?);
    let ir = &sync.applied.as_ref().expect("applied").0;
    let stats = ir.stats();
    println!(
        "{} pods, {} policies; {NODE}: {} endpoints, {} rules, {} set elements",
        shape.pods, shape.policies, stats.endpoints, stats.rules, stats.set_elements
    );
    let policy = bench_policy(40_000);
    snapshot.policies.insert(policy.id(), policy);
    rows.entry("2 policy create").or_default().push(sync.run(&snapshot)?);
    let template = snapshot
        .pods
        .values()
        .find(|p| p.namespace == "ns-7")
        .context("a pod in ns-7")?
        .clone();
    for i in 0..n {
        let policy = bench_policy(40_001 + i as u16);
        snapshot.policies.insert(policy.id(), policy);
        rows.entry("3 policy update (port)")
            .or_default()
            .push(sync.run(&snapshot)?);

        let mut pod = template.clone();
        pod.name = format!("bench-{i}");
        pod.node = Some("node-42".into());
        pod.labels = [("app".to_string(), "bench".to_string())].into_iter().collect();
        pod.ips = vec![format!("10.200.{}.{}", i / 200, 10 + i % 200).parse()?];
        snapshot.pods.insert(pod.id(), pod);
        rows.entry("4 remote pod gets its IP")
            .or_default()
            .push(sync.run(&snapshot)?);

        rows.entry("5 nothing changed").or_default().push(sync.run(&snapshot)?);
    }
    report(&rows);
    Ok(())
}
