//! The matrix by bitsets gives exactly what evaluating every pair as one flow gives, on synthetic
//! clusters with admin tiers, named ports, ipBlocks and dual stack, over many ports.

use policyc_compiler::synth::{add_admin_policies, cluster, Rng, Shape};
use policyc_compiler::{compile, CompileOptions, Matrix, Protocol};

const PORTS: [(Protocol, u16); 11] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 5432),
    (Protocol::Tcp, 6379),
    (Protocol::Tcp, 9090),
    (Protocol::Udp, 53),
    (Protocol::Sctp, 3868),
    (Protocol::Tcp, 30050),
    (Protocol::Udp, 9999),
    (Protocol::Tcp, 1),
];

#[test]
fn bitsets_agree_with_per_flow_evaluation() {
    for seed in 0..16u64 {
        let mut rng = Rng::new(seed);
        let shape = Shape {
            pods: 20 + rng.below(60),
            namespaces: 2 + rng.below(6),
            policies: rng.below(40),
            nodes: 1 + rng.below(4),
            dual_stack_every: rng.below(4),
        };
        let mut snap = cluster(shape, seed);
        if seed % 2 == 0 {
            add_admin_policies(&mut snap, 1 + rng.below(12), seed);
        }
        let ir = compile(&snap, &CompileOptions::default());
        for (protocol, port) in PORTS {
            assert_eq!(
                Matrix::evaluate(&ir, protocol, port),
                Matrix::evaluate_per_flow(&ir, protocol, port),
                "seed {seed}, {port}/{protocol}"
            );
        }
    }
}
