//! `policyc matrix` over every distinct port of synthetic clusters (100 pods / 30 policies up to
//! 3,000 / 1,200), by bitsets ([`Matrix::evaluate`]) and, as before, one flow per pair
//! ([`Matrix::evaluate_per_flow`]). Prints one line per size: compile, then the matrices of the
//! 8 distinct ports the synthetic policies use (TCP 80, 443, 8080, 5432, 6379, 9090, UDP 53,
//! SCTP 3868), each way, and checks they agree. The per-flow way is skipped above 1,000 pods
//! unless `MATRIX_BEFORE_ALL=1` (about a minute at 3,000 pods). Then criterion times the bitset
//! way at 1,000 / 500.
//!
//! `cargo bench -p policyc-compiler --bench matrix`

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
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

fn all_ports(ir: &Ir, f: fn(&Ir, Protocol, u16) -> Matrix) -> (Duration, Vec<Matrix>) {
    let t = Instant::now();
    let v = PORTS.iter().map(|(p, port)| f(ir, *p, *port)).collect();
    (t.elapsed(), v)
}

fn print_figures() {
    let before_all = std::env::var_os("MATRIX_BEFORE_ALL").is_some();
    println!("matrix over all 8 distinct ports (one thread): compile, bitsets, per flow (before), speed-up");
    for (pods, policies) in SIZES {
        let t = Instant::now();
        let ir = ir(pods, policies);
        let compile = t.elapsed();
        let (fast, m) = all_ports(&ir, Matrix::evaluate);
        let before = (pods <= 1_000 || before_all).then(|| {
            let (slow, r) = all_ports(&ir, Matrix::evaluate_per_flow);
            assert!(m == r, "{pods} pods: the two ways disagree");
            slow
        });
        println!(
            "  pods {pods:>5} policies {policies:>5}: compile {:>8.3} s  bitsets {:>8.3} s  per flow {:>9}  {}",
            compile.as_secs_f64(),
            fast.as_secs_f64(),
            before.map_or("skipped".to_string(), |d| format!("{:.3} s", d.as_secs_f64())),
            before.map_or(String::new(), |d| format!(
                "{:.0}x",
                d.as_secs_f64() / fast.as_secs_f64()
            )),
        );
    }
}

fn bench(c: &mut Criterion) {
    let ir = ir(1_000, 500);
    let mut g = c.benchmark_group("matrix-1000-pods-500-policies");
    g.sample_size(10);
    g.bench_function("8 ports by bitsets", |b| {
        b.iter(|| all_ports(&ir, Matrix::evaluate).1.len())
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    print_figures();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
