//! `policyc matrix --ports all` on synthetic clusters (100 pods / 30 policies up to 3,000 /
//! 1,200): compile, then the matrix of every distinct port the policies use
//! ([`distinct_ports`]: each port and range named in a rule, each number a named port resolves
//! to, classes of ports no rule tells apart), one port after the other as the CLI does, sharing
//! what does not depend on the port ([`Matrices`]). Also the 8 ports the earlier figures used
//! (TCP 80, 443, 8080, 5432, 6379, 9090, UDP 53, SCTP 3868) by bitsets and, as before, one flow
//! per pair ([`Matrix::evaluate_per_flow`]), checking they agree; the per-flow way is skipped
//! above 1,000 pods unless `MATRIX_BEFORE_ALL=1` (about a minute at 3,000 pods). Peak resident
//! memory is the process's (VmHWM, Linux) after each size. Then criterion times the 8 ports at
//! 1,000 / 500.
//!
//! `cargo bench -p policyc-compiler --bench matrix`

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use policyc_compiler::eval::{distinct_ports, Matrices};
use policyc_compiler::synth::{cluster, Shape};
use policyc_compiler::{compile, CompileOptions, Ir, Matrix, Protocol};

const PORTS: [(Protocol, u16); 8] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 5432),
    (Protocol::Tcp, 6379),
    (Protocol::Tcp, 9090),
    (Protocol::Udp, 53),
    (Protocol::Sctp, 3868),
];

const SIZES: [(usize, usize); 4] = [(100, 30), (300, 150), (1_000, 500), (3_000, 1_200)];

fn shape(pods: usize, policies: usize) -> Shape {
    Shape {
        pods,
        namespaces: (pods / 30).max(3),
        policies,
        nodes: (pods / 100).max(2),
        dual_stack_every: 10,
    }
}

fn ir(pods: usize, policies: usize) -> Ir {
    compile(&cluster(shape(pods, policies), 42), &CompileOptions::default())
}

fn eight_ports(ir: &Ir, f: fn(&Ir, Protocol, u16) -> Matrix) -> (Duration, Vec<Matrix>) {
    let t = Instant::now();
    let v = PORTS.iter().map(|(p, port)| f(ir, *p, *port)).collect();
    (t.elapsed(), v)
}

/// Every distinct port, one matrix at a time (each dropped before the next, as the CLI prints
/// them): the time, how many ports, and how many cells are allowed (so nothing is optimized away).
fn all_ports(ir: &Ir) -> (Duration, usize, usize) {
    let t = Instant::now();
    let classes = distinct_ports(ir, &[]);
    let mut m = Matrices::new(ir);
    let mut allowed = 0;
    for c in &classes {
        allowed += m.bits(c.protocol, c.port()).count();
    }
    (t.elapsed(), classes.len(), allowed)
}

/// The process's peak resident memory in MiB (VmHWM), where /proc tells it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn print_figures() {
    let before_all = std::env::var_os("MATRIX_BEFORE_ALL").is_some();
    println!("matrix (one thread): compile; every distinct port; the 8 ports by bitsets, per flow (before), speed-up; peak RSS");
    for (pods, policies) in SIZES {
        let t = Instant::now();
        let ir = ir(pods, policies);
        let compile = t.elapsed();
        let (all, count, _) = all_ports(&ir);
        let (fast, m) = eight_ports(&ir, Matrix::evaluate);
        let before = (pods <= 1_000 || before_all).then(|| {
            let (slow, r) = eight_ports(&ir, Matrix::evaluate_per_flow);
            assert!(m == r, "{pods} pods: the two ways disagree");
            slow
        });
        drop(m);
        println!(
            "  pods {pods:>5} policies {policies:>5}: compile {:>7.3} s  all {count:>4} ports {:>7.3} s  8 ports {:>7.3} s  per flow {:>9}  {:>5}  peak RSS {}",
            compile.as_secs_f64(),
            all.as_secs_f64(),
            fast.as_secs_f64(),
            before.map_or("skipped".to_string(), |d| format!("{:.3} s", d.as_secs_f64())),
            before.map_or(String::new(), |d| format!("{:.0}x", d.as_secs_f64() / fast.as_secs_f64())),
            peak_rss_mib().map_or("unknown".to_string(), |m| format!("{m:.0} MiB")),
        );
    }
}

fn bench(c: &mut Criterion) {
    let ir = ir(1_000, 500);
    let mut g = c.benchmark_group("matrix-1000-pods-500-policies");
    g.sample_size(10);
    g.bench_function("8 ports by bitsets", |b| {
        b.iter(|| eight_ports(&ir, Matrix::evaluate).1.len())
    });
    g.bench_function("every distinct port", |b| b.iter(|| all_ports(&ir).2));
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    print_figures();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
