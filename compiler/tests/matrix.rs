//! The matrix by bitsets gives exactly what evaluating every pair as one flow gives, on synthetic
//! clusters with admin tiers, named ports, ipBlocks and dual stack, over many ports.

use policyc_compiler::eval::{distinct_ports, Matrices};
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

/// One `Matrices` going over every distinct port (sharing peer sets and walks from port to port)
/// gives what evaluating each port on its own, one flow per pair, gives; and every port of a
/// class (its first and last, and the ends of each of its ranges) has the class's matrix.
#[test]
fn every_distinct_port_in_one_run_agrees_with_single_ports() {
    for seed in 0..8u64 {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let shape = Shape {
            pods: 20 + rng.below(40),
            namespaces: 2 + rng.below(5),
            policies: 5 + rng.below(30),
            nodes: 1 + rng.below(3),
            dual_stack_every: rng.below(4),
        };
        let mut snap = cluster(shape, seed);
        if seed % 2 == 1 {
            add_admin_policies(&mut snap, 1 + rng.below(8), seed);
        }
        let ir = compile(&snap, &CompileOptions::default());
        let classes = distinct_ports(&ir, &[(Protocol::Tcp, 12345)]);
        assert!(
            classes
                .iter()
                .any(|c| c.protocol == Protocol::Tcp && c.ranges == [(12345, 12345)]),
            "seed {seed}: a port asked for is a class of its own"
        );
        let mut all = Matrices::new(&ir);
        for c in &classes {
            let m = all.port(c.protocol, c.port());
            assert_eq!(
                m,
                Matrix::evaluate_per_flow(&ir, c.protocol, c.port()),
                "seed {seed}, {c}"
            );
            for (a, b) in &c.ranges {
                for p in [*a, *b] {
                    assert_eq!(m, Matrix::evaluate(&ir, c.protocol, p), "seed {seed}, {p} in {c}");
                }
            }
        }
    }
}

/// The classes of a small IR: single ports, a named port's numbers on its own, a range split
/// where another rule names a port inside it, and ports asked for.
#[test]
fn distinct_ports_split_ranges_where_rules_differ() {
    use policyc_compiler::model::{LabelSelector, NetworkPolicy, PortRef, PortSpec, Rule};
    let mut snap = cluster(
        Shape {
            pods: 6,
            namespaces: 1,
            policies: 0,
            nodes: 1,
            dual_stack_every: 0,
        },
        1,
    );
    let spec = |protocol, port| PortSpec { protocol, port };
    let policy = NetworkPolicy {
        namespace: "ns-0".into(),
        name: "p".into(),
        generation: Some(1),
        pod_selector: LabelSelector::default(),
        policy_types: vec![policyc_compiler::Direction::Ingress],
        ingress: vec![
            Rule {
                peers: vec![],
                ports: vec![
                    spec(
                        Protocol::Tcp,
                        PortRef::Range {
                            first: 1000,
                            last: 2000,
                        },
                    ),
                    spec(Protocol::Udp, PortRef::Range { first: 53, last: 53 }),
                ],
            },
            Rule {
                peers: vec![],
                ports: vec![
                    spec(
                        Protocol::Tcp,
                        PortRef::Range {
                            first: 1500,
                            last: 1500,
                        },
                    ),
                    spec(Protocol::Sctp, PortRef::Named("assoc".into())),
                ],
            },
        ],
        egress: vec![],
    };
    snap.policies.insert(policy.id(), policy);
    let ir = compile(&snap, &CompileOptions::default());
    let names: Vec<String> = distinct_ports(&ir, &[(Protocol::Tcp, 80)])
        .iter()
        .map(|c| c.to_string())
        .collect();
    // The synthetic pods' `assoc` ports are 3868 or 3869.
    let sctp: Vec<String> = snap
        .pods
        .values()
        .flat_map(|p| p.ports.iter().filter(|c| c.name.as_deref() == Some("assoc")))
        .map(|c| format!("{}/SCTP", c.port))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(!sctp.is_empty());
    let mut expected = vec!["80/TCP", "1000-1499,1501-2000/TCP", "1500/TCP", "53/UDP"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    expected.extend(sctp);
    assert_eq!(names, expected);
}
