//! Property tests over random synthetic clusters:
//! - the compiled IR decides every flow exactly as a reference evaluator written directly from the
//!   NetworkPolicy API reference (no sets, no chains: selectors and rules walked per flow);
//! - output is deterministic and independent of document order;
//! - a policy with no ingress rules denies all ingress to the pods it selects (but loopback);
//! - per-node compilation agrees with the whole-cluster one.

use std::net::IpAddr;

use policyc_compiler::model::*;
use policyc_compiler::render::nft;
use policyc_compiler::synth::{cluster, to_objects, Rng, Shape};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions, Evaluator, Flow, Loader};
use proptest::prelude::*;

// === Reference semantics ===

fn ns_labels(s: &Snapshot, ns: &str) -> Labels {
    s.namespace_labels(ns)
}

fn peer_matches(s: &Snapshot, policy: &NetworkPolicy, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::IpBlock(b) => b.cidr.contains(&ip) && !b.except.iter().any(|e| e.contains(&ip)),
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => s.endpoints().filter(|p| p.ips.contains(&ip)).any(|p| {
            let ns_ok = match namespace_selector {
                None => p.namespace == policy.namespace,
                Some(sel) => sel.matches(&ns_labels(s, &p.namespace)),
            };
            ns_ok && pod_selector.as_ref().is_none_or(|sel| sel.matches(&p.labels))
        }),
    }
}

fn port_matches(spec: &PortSpec, target: Option<&Pod>, ip: IpAddr, proto: Protocol, port: u16) -> bool {
    if spec.protocol != proto {
        return false;
    }
    match &spec.port {
        PortRef::All => true,
        PortRef::Range { first, last } => (*first..=*last).contains(&port),
        // Named ports resolve on the destination pod.
        PortRef::Named(n) => {
            target
                .filter(|t| t.ips.contains(&ip))
                .and_then(|t| t.named_port(n, proto))
                == Some(port)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn side_allows(
    s: &Snapshot,
    pod: &Pod,
    d: Direction,
    peer_ip: IpAddr,
    dst: Option<&Pod>,
    dst_ip: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    let policies: Vec<&NetworkPolicy> = s
        .policies
        .values()
        .filter(|p| p.applies_to(d) && p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
        .collect();
    if policies.is_empty() {
        return true;
    }
    policies.iter().any(|p| {
        p.rules(d).iter().any(|r| {
            (r.peers.is_empty() || r.peers.iter().any(|peer| peer_matches(s, p, peer, peer_ip)))
                && (r.ports.is_empty() || r.ports.iter().any(|spec| port_matches(spec, dst, dst_ip, proto, port)))
        })
    })
}

fn reference(s: &Snapshot, src: &Pod, src_ip: IpAddr, dst: &Pod, dst_ip: IpAddr, proto: Protocol, port: u16) -> bool {
    if src.id() == dst.id() {
        return true;
    }
    side_allows(s, src, Direction::Egress, dst_ip, Some(dst), dst_ip, proto, port)
        && side_allows(s, dst, Direction::Ingress, src_ip, Some(dst), dst_ip, proto, port)
}

fn small_shape(rng: &mut Rng) -> Shape {
    Shape {
        pods: 20 + rng.below(60),
        namespaces: 2 + rng.below(6),
        policies: 1 + rng.below(30),
        nodes: 1 + rng.below(4),
        dual_stack_every: rng.below(4),
    }
}

const PORTS: [(Protocol, u16); 10] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 8081),
    (Protocol::Tcp, 9090),
    (Protocol::Tcp, 30050),
    (Protocol::Udp, 53),
    (Protocol::Udp, 54),
    (Protocol::Sctp, 3868),
    (Protocol::Sctp, 3869),
    (Protocol::Tcp, 5432),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn ir_matches_reference_semantics(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let snap = cluster(small_shape(&mut rng), seed);
        let ir = compile(&snap, &CompileOptions::default());
        let ev = Evaluator::new(&ir);
        let pods: Vec<&Pod> = snap.endpoints().collect();
        for _ in 0..400 {
            let src = pods[rng.below(pods.len())];
            let dst = pods[rng.below(pods.len())];
            let (proto, port) = PORTS[rng.below(PORTS.len())];
            for (s_ip, d_ip) in src.ips.iter().flat_map(|a| dst.ips.iter().map(move |b| (*a, *b))) {
                if s_ip.is_ipv4() != d_ip.is_ipv4() {
                    continue;
                }
                let want = reference(&snap, src, s_ip, dst, d_ip, proto, port);
                let got = ev.evaluate(&Flow { src: s_ip, dst: d_ip, protocol: proto, port }).allowed;
                prop_assert_eq!(got, want, "{} ({}) -> {} ({}) {}/{}", src.id(), s_ip, dst.id(), d_ip, port, proto);
            }
        }
    }

    #[test]
    fn document_order_does_not_matter(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let snap = cluster(small_shape(&mut rng), seed);
        let mut docs = to_objects(&snap);
        let render = |docs: &[serde_json::Value]| {
            let mut l = Loader::new();
            for (i, d) in docs.iter().enumerate() {
                l.add_value("gen", &format!("document {i}"), d);
            }
            let (s, diags) = l.finish();
            assert!(diags.is_empty(), "{diags:?}");
            (s.clone(), nft::render(&compile(&s, &CompileOptions { node: Some("node-0".into()), ..Default::default() }), true))
        };
        let (loaded, first) = render(&docs);
        prop_assert_eq!(&loaded, &snap, "manifests round-trip");
        for i in (1..docs.len()).rev() {
            docs.swap(i, rng.below(i + 1));
        }
        let (_, second) = render(&docs);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn empty_ingress_denies_all_ingress(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut snap = cluster(small_shape(&mut rng), seed);
        let ns = format!("ns-{}", rng.below(2));
        let deny = NetworkPolicy {
            namespace: ns.clone(),
            name: "deny-ingress".into(),
            generation: None,
            pod_selector: LabelSelector::default(),
            policy_types: vec![Direction::Ingress],
            ingress: vec![],
            egress: vec![],
        };
        // Other policies may allow some ingress; remove those in this namespace so the property holds.
        snap.policies.retain(|id, p| id.namespace != ns || !p.applies_to(Direction::Ingress));
        snap.policies.insert(deny.id(), deny);
        let ir = compile(&snap, &CompileOptions::default());
        let ev = Evaluator::new(&ir);
        let pods: Vec<&Pod> = snap.endpoints().collect();
        for dst in pods.iter().filter(|p| p.namespace == ns) {
            for src in &pods {
                for (proto, port) in PORTS {
                    let (s, d) = (src.ips[0], dst.ips[0]);
                    let v = ev.evaluate(&Flow { src: s, dst: d, protocol: proto, port });
                    prop_assert_eq!(v.allowed, src.id() == dst.id(), "{} -> {}", src.id(), dst.id());
                }
            }
        }
    }

    #[test]
    fn per_node_split_agrees(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let snap = cluster(small_shape(&mut rng), seed);
        let all = compile(&snap, &CompileOptions::default());
        let per_node = compile_all_nodes(&snap, &CompileOptions::default());
        let ev_all = Evaluator::new(&all);
        let pods: Vec<&Pod> = snap.endpoints().collect();
        for _ in 0..200 {
            let src = pods[rng.below(pods.len())];
            let dst = pods[rng.below(pods.len())];
            let (protocol, port) = PORTS[rng.below(PORTS.len())];
            let flow = Flow { src: src.ips[0], dst: dst.ips[0], protocol, port };
            let e = Evaluator::new(&per_node[src.node.as_ref().unwrap()]).evaluate(&flow);
            let i = Evaluator::new(&per_node[dst.node.as_ref().unwrap()]).evaluate(&flow);
            prop_assert_eq!(e.egress.allowed && i.ingress.allowed, ev_all.evaluate(&flow).allowed);
        }
    }
}
