//! Writes a synthetic cluster (namespaces, pods with their IPs and named ports, NetworkPolicies)
//! as multi-document YAML, the shape `policyc matrix -f` and other tools read. The same clusters
//! as the matrix benchmark for the same sizes and seed.
//!
//! `cargo run -p policyc-compiler --example synth -- --pods 1000 --policies 500 [--seed 42] > cluster.yaml`

use std::io::Write as _;
use std::process::ExitCode;

use policyc_compiler::synth::{cluster, to_objects, Shape};

fn usage() -> ExitCode {
    eprintln!("usage: synth --pods N --policies N [--seed N] [--namespaces N] [--nodes N] [--dual-stack-every N]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut pods = None;
    let mut policies = None;
    let mut seed = 42u64;
    let mut namespaces = None;
    let mut nodes = None;
    let mut dual_stack_every = 10;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("error: {flag} needs a value");
            return usage();
        };
        let Ok(n) = value.parse::<u64>() else {
            eprintln!("error: {flag}: {value:?} is not a number");
            return usage();
        };
        let n_usize = n as usize;
        match flag.as_str() {
            "--pods" => pods = Some(n_usize),
            "--policies" => policies = Some(n_usize),
            "--seed" => seed = n,
            "--namespaces" => namespaces = Some(n_usize),
            "--nodes" => nodes = Some(n_usize),
            "--dual-stack-every" => dual_stack_every = n_usize,
            _ => {
                eprintln!("error: unknown flag {flag}");
                return usage();
            }
        }
    }
    let (Some(pods), Some(policies)) = (pods, policies) else {
        eprintln!("error: --pods and --policies are required");
        return usage();
    };
    // As the matrix benchmark: 30 pods per namespace, 100 per node, every 10th dual stack.
    let shape = Shape {
        pods,
        namespaces: namespaces.unwrap_or((pods / 30).max(3)),
        policies,
        nodes: nodes.unwrap_or((pods / 100).max(2)),
        dual_stack_every,
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for o in to_objects(&cluster(shape, seed)) {
        let doc = match serde_yaml::to_string(&o) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        if writeln!(w, "---\n{}", doc.trim_end()).is_err() {
            return ExitCode::from(1);
        }
    }
    if w.flush().is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
