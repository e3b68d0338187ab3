//! Compile + render a synthetic cluster of 10,000 pods, 100 namespaces and 2,000 policies:
//! one node's ruleset, and every node's. Before timing, prints how the ruleset grows with the
//! input (rules and set elements at 1/4, 1/2 and the full size) so linear growth can be checked.

use criterion::{criterion_group, Criterion};
use policyc_compiler::render::nft;
use policyc_compiler::synth::{cluster, Shape};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions};

fn scaled(f: usize, d: usize) -> Shape {
    let l = Shape::LARGE;
    Shape {
        pods: l.pods * f / d,
        namespaces: l.namespaces * f / d,
        policies: l.policies * f / d,
        nodes: l.nodes,
        dual_stack_every: l.dual_stack_every,
    }
}

fn print_growth() {
    println!("growth (all nodes, summed): input -> rules, set elements, rendered bytes");
    for (f, d) in [(1, 4), (1, 2), (1, 1)] {
        let shape = scaled(f, d);
        let snap = cluster(shape, 42);
        let irs = compile_all_nodes(&snap, &CompileOptions::default());
        let (mut rules, mut elems, mut bytes) = (0, 0, 0);
        let (mut nft_rules, mut nft_elems) = (0, 0);
        for ir in irs.values() {
            let st = ir.stats();
            rules += st.rules;
            elems += st.set_elements;
            bytes += nft::render(ir, true).expect("a compiled IR is valid").len();
            // The lowered table: the NetworkPolicy maps repeat pod addresses per class.
            let t = policyc_compiler::nft::lower(ir).expect("a compiled IR is valid");
            nft_rules += t.rule_count();
            nft_elems += t.element_count();
        }
        println!("  nft tables: rules {nft_rules:>7} elements {nft_elems:>8}");
        println!(
            "  pods {:>6} policies {:>5}: rules {:>7} set elements {:>8} bytes {:>10}  (rules+elements per pod+policy: {:.2})",
            shape.pods,
            shape.policies,
            rules,
            elems,
            bytes,
            (rules + elems) as f64 / (shape.pods + shape.policies) as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    let snap = cluster(Shape::LARGE, 42);
    let one = CompileOptions {
        node: Some("node-7".into()),
        ..Default::default()
    };
    let mut g = c.benchmark_group("large-10k-pods-2k-policies");
    g.sample_size(10);
    g.bench_function("one node: compile + render nft", |b| {
        b.iter(|| {
            nft::render(&compile(&snap, &one), true)
                .expect("a compiled IR is valid")
                .len()
        })
    });
    g.bench_function("all 100 nodes: compile + render nft", |b| {
        b.iter(|| {
            compile_all_nodes(&snap, &CompileOptions::default())
                .values()
                .map(|ir| nft::render(ir, true).expect("a compiled IR is valid").len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    print_growth();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
