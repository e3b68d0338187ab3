//! Property tests over random synthetic clusters:
//! - the compiled IR decides every flow exactly as a reference evaluator written directly from the
//!   NetworkPolicy API reference (no sets, no chains: selectors and rules walked per flow);
//! - output is deterministic and independent of document order;
//! - a policy with no ingress rules denies all ingress to the pods it selects (but loopback);
//! - per-node compilation agrees with the whole-cluster one;
//! - with admin policies, the IR decides every flow as a reference walk of the tiers (Admin by
//!   priority, first matching rule, Accept/Deny/Pass; NetworkPolicy; Baseline; default allow),
//!   and the ruleset's decision tables pick the same rule as that walk.

use std::net::IpAddr;

use policyc_compiler::model::*;
use policyc_compiler::render::nft;
use policyc_compiler::synth::{add_admin_policies, cluster, to_objects, Rng, Shape};
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
    tiered_side_allows(s, src, Direction::Egress, dst_ip, Some(dst), dst_ip, proto, port)
        && tiered_side_allows(s, dst, Direction::Ingress, src_ip, Some(dst), dst_ip, proto, port)
}

fn admin_peer_matches(s: &Snapshot, peer: &AdminPeer, ip: IpAddr) -> bool {
    let pods = |ns: &LabelSelector, pods: Option<&LabelSelector>| {
        s.endpoints()
            .filter(|p| p.ips.contains(&ip))
            .any(|p| ns.matches(&ns_labels(s, &p.namespace)) && pods.is_none_or(|sel| sel.matches(&p.labels)))
    };
    match peer {
        AdminPeer::Namespaces(ns) => pods(ns, None),
        AdminPeer::Pods {
            namespace_selector,
            pod_selector,
        } => pods(namespace_selector, Some(pod_selector)),
        AdminPeer::Nodes(sel) => s
            .nodes
            .values()
            .any(|n| sel.matches(&n.labels) && n.addresses.contains(&ip)),
        AdminPeer::Networks(cidrs) => cidrs.iter().any(|c| c.contains(&ip)),
        AdminPeer::Everything => true,
        AdminPeer::Nothing => false,
    }
}

/// The first rule of a tier matching the flow, walking policies by priority as the API says.
#[allow(clippy::too_many_arguments)]
fn tier_decision(
    s: &Snapshot,
    pod: &Pod,
    d: Direction,
    tier: Tier,
    peer_ip: IpAddr,
    dst: Option<&Pod>,
    dst_ip: IpAddr,
    proto: Protocol,
    port: u16,
) -> Option<(AdminRef, usize, AdminAction)> {
    let mut policies: Vec<&AdminPolicy> = s
        .admin_policies
        .values()
        .filter(|p| p.tier == tier && p.subject.matches(&ns_labels(s, &pod.namespace), &pod.labels))
        .collect();
    policies.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    for p in policies {
        for (i, r) in p.rules(d).iter().enumerate() {
            if r.peers.iter().any(|peer| admin_peer_matches(s, peer, peer_ip))
                && (r.ports.is_empty() || r.ports.iter().any(|spec| port_matches(spec, dst, dst_ip, proto, port)))
            {
                return Some((p.id(), i, r.action));
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn tiered_side_allows(
    s: &Snapshot,
    pod: &Pod,
    d: Direction,
    peer_ip: IpAddr,
    dst: Option<&Pod>,
    dst_ip: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    match tier_decision(s, pod, d, Tier::Admin, peer_ip, dst, dst_ip, proto, port) {
        Some((_, _, AdminAction::Accept)) => return true,
        Some((_, _, AdminAction::Deny)) => return false,
        _ => {}
    }
    let isolated = s
        .policies
        .values()
        .any(|p| p.applies_to(d) && p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels));
    if isolated {
        return side_allows(s, pod, d, peer_ip, dst, dst_ip, proto, port);
    }
    !matches!(
        tier_decision(s, pod, d, Tier::Baseline, peer_ip, dst, dst_ip, proto, port),
        Some((_, _, AdminAction::Deny))
    )
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
    fn admin_tiers_match_reference_semantics(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut snap = cluster(small_shape(&mut rng), seed);
        add_admin_policies(&mut snap, 1 + rng.below(12), seed);
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
                let flow = Flow { src: s_ip, dst: d_ip, protocol: proto, port };
                let want = reference(&snap, src, s_ip, dst, d_ip, proto, port);
                let v = ev.evaluate(&flow);
                prop_assert_eq!(v.allowed, want, "{} ({}) -> {} ({}) {}/{}: {:#?}", src.id(), s_ip, dst.id(), d_ip, port, proto, v);
                if v.loopback {
                    continue;
                }
                // The kernel's lookup tables pick the rule the walk picks.
                for (pod, d, peer_ip) in [(src, Direction::Egress, d_ip), (dst, Direction::Ingress, s_ip)] {
                    let iso = ev.endpoint(&pod.ips[0]).expect("endpoint").isolation(d);
                    for (tier, table) in [(Tier::Admin, &iso.admin_table), (Tier::Baseline, &iso.baseline_table)] {
                        let walked = tier_decision(&snap, pod, d, tier, peer_ip, Some(dst), d_ip, proto, port);
                        let looked_up = table.as_ref().and_then(|t| ev.table_decision(&ir.tier_tables[t], d, &flow));
                        let looked_up = looked_up.map(|r| (r.policy.clone(), r.rule, r.action));
                        prop_assert_eq!(looked_up, walked, "{} {} {} tier, {} -> {} {}/{}", pod.id(), d, tier, s_ip, d_ip, port, proto);
                    }
                }
            }
        }
    }

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
        let mut snap = cluster(small_shape(&mut rng), seed);
        add_admin_policies(&mut snap, rng.below(6), seed);
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
