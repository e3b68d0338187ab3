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

#[path = "../../tests/support/mod.rs"]
mod support;

use support::{repo, ApiServer};

mod commits;
mod figures;
mod objects;
mod phases;
mod procs;

use commits::*;
use figures::*;
use objects::*;
use phases::*;
use procs::*;

const DEBOUNCE_MS: u64 = 30;
/// Quiet time after each commit before the next change, so that the agent's post-commit work
/// (conntrack, NodePolicyStatus) is done and every sample starts from an idle agent.
const SETTLE: Duration = Duration::from_millis(150);
/// Parallel API requests while creating the large cluster.
const CONCURRENCY: usize = 32;

#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) scale: bool,
    pub(crate) latency: bool,
    /// A prebuilt agent instead of building target/release/policyc-agent.
    pub(crate) agent: Option<PathBuf>,
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
