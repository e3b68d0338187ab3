//! Synthetic clusters for benchmarks and randomized tests: deterministic from a seed, with the mix
//! real clusters have (default deny, selector peers across namespaces, matchExpressions, ipBlocks
//! with excepts, named ports, port ranges, all three protocols, dual-stack pods).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::Cidr;
use crate::model::*;

/// Size of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub nodes: usize,
    /// Every n-th pod also gets an IPv6 address (0 = none).
    pub dual_stack_every: usize,
}

impl Shape {
    /// The benchmark's reference size: 10,000 pods, 100 namespaces, 2,000 policies, 100 nodes.
    pub const LARGE: Shape = Shape {
        pods: 10_000,
        namespaces: 100,
        policies: 2_000,
        nodes: 100,
        dual_stack_every: 10,
    };
}

/// A small deterministic PRNG (xorshift64*), so outputs are reproducible without dependencies.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const APPS: usize = 20;
const TIERS: [&str; 4] = ["web", "api", "db", "cache"];
const PORT_NAMES: [(&str, u16, Protocol); 4] = [
    ("http", 8080, Protocol::Tcp),
    ("metrics", 9090, Protocol::Tcp),
    ("dns", 53, Protocol::Udp),
    ("assoc", 3868, Protocol::Sctp),
];

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn pod_selector(rng: &mut Rng) -> LabelSelector {
    match rng.below(5) {
        0 => LabelSelector::default(),
        1 => LabelSelector {
            match_labels: labels(&[("tier", TIERS[rng.below(TIERS.len())].to_string())]),
            ..Default::default()
        },
        2 => LabelSelector {
            match_expressions: vec![Requirement {
                key: "tier".into(),
                operator: Operator::In,
                values: {
                    let mut v = vec![TIERS[rng.below(4)].to_string(), TIERS[rng.below(4)].to_string()];
                    v.sort();
                    v.dedup();
                    v
                },
            }],
            ..Default::default()
        },
        3 => LabelSelector {
            match_labels: labels(&[("app", format!("app-{}", rng.below(APPS)))]),
            match_expressions: vec![Requirement {
                key: "canary".into(),
                operator: Operator::DoesNotExist,
                values: vec![],
            }],
        },
        _ => LabelSelector {
            match_labels: labels(&[("app", format!("app-{}", rng.below(APPS)))]),
            ..Default::default()
        },
    }
}

fn peer(rng: &mut Rng, namespaces: usize) -> Peer {
    match rng.below(10) {
        0 | 1 => {
            let a = rng.below(200) as u8;
            let cidr = Cidr::new(IpAddr::V4(Ipv4Addr::new(172, 16 + (a % 16), 0, 0)), 16).expect("valid");
            let except = if rng.chance(50) {
                vec![Cidr::new(IpAddr::V4(Ipv4Addr::new(172, 16 + (a % 16), a, 0)), 24).expect("valid")]
            } else {
                vec![]
            };
            Peer::IpBlock(IpBlock { cidr, except })
        }
        2 => Peer::IpBlock(IpBlock {
            cidr: Cidr::new(
                IpAddr::V6(Ipv6Addr::new(0xfd00, rng.below(8) as u16, 0, 0, 0, 0, 0, 0)),
                48,
            )
            .expect("valid"),
            except: vec![],
        }),
        3 | 4 => Peer::Pods {
            namespace_selector: Some(LabelSelector {
                match_labels: labels(&[("team", format!("team-{}", rng.below(namespaces.div_ceil(5).max(1))))]),
                ..Default::default()
            }),
            pod_selector: rng.chance(50).then(|| pod_selector(rng)),
        },
        _ => Peer::Pods {
            namespace_selector: None,
            pod_selector: Some(pod_selector(rng)),
        },
    }
}

fn port_spec(rng: &mut Rng) -> PortSpec {
    match rng.below(6) {
        0 => {
            let (name, _, protocol) = PORT_NAMES[rng.below(PORT_NAMES.len())];
            PortSpec {
                protocol,
                port: PortRef::Named(name.into()),
            }
        }
        1 => {
            let first = 30000 + rng.below(1000) as u16;
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range {
                    first,
                    last: first + rng.below(100) as u16,
                },
            }
        }
        2 => PortSpec {
            protocol: Protocol::Udp,
            port: PortRef::Range { first: 53, last: 53 },
        },
        _ => {
            let p = [80, 443, 8080, 5432, 6379][rng.below(5)];
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range { first: p, last: p },
            }
        }
    }
}

fn rule(rng: &mut Rng, namespaces: usize) -> Rule {
    let peers = (0..rng.below(3)).map(|_| peer(rng, namespaces)).collect();
    let ports = (0..rng.below(3)).map(|_| port_spec(rng)).collect();
    Rule { peers, ports }
}

/// Builds a synthetic snapshot of the given shape.
pub fn cluster(shape: Shape, seed: u64) -> Snapshot {
    let mut rng = Rng::new(seed);
    let mut s = Snapshot::default();
    let namespaces = shape.namespaces.max(1);
    let nodes = shape.nodes.max(1);
    for i in 0..namespaces {
        let name = format!("ns-{i}");
        let l = labels(&[
            ("team", format!("team-{}", i / 5)),
            ("env", ["prod", "dev"][i % 2].into()),
        ]);
        s.namespaces.insert(name.clone(), Namespace::new(name, l));
    }
    for i in 0..shape.pods {
        let ns = format!("ns-{}", i % namespaces);
        let node = i % nodes;
        let mut l = labels(&[
            ("app", format!("app-{}", rng.below(APPS))),
            ("tier", TIERS[rng.below(TIERS.len())].into()),
        ]);
        if rng.chance(5) {
            l.insert("canary".into(), "true".into());
        }
        let host = (i / nodes) as u32 + 2;
        let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((node as u32) << 8) * 4 + host);
        let mut ips = vec![IpAddr::V4(v4)];
        if shape.dual_stack_every > 0 && i % shape.dual_stack_every == 0 {
            ips.push(IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                node as u16,
                0,
                0,
                0,
                0,
                host as u16,
            )));
        }
        let mut ports = Vec::new();
        for (n, p, protocol) in PORT_NAMES {
            if rng.chance(60) {
                ports.push(ContainerPort {
                    name: Some(n.to_string()),
                    // Named ports resolve to different numbers on different pods.
                    port: p + rng.below(2) as u16,
                    protocol,
                });
            }
        }
        let pod = Pod {
            namespace: ns,
            name: format!("pod-{i}"),
            labels: l,
            node: Some(format!("node-{node}")),
            host_network: false,
            phase: Some("Running".into()),
            ips,
            ports,
        };
        s.pods.insert(pod.id(), pod);
    }
    for i in 0..shape.policies {
        let ns = format!("ns-{}", rng.below(namespaces));
        let mut policy_types = vec![Direction::Ingress];
        if rng.chance(40) {
            policy_types.push(Direction::Egress);
        }
        let ingress = (0..rng.below(3)).map(|_| rule(&mut rng, namespaces)).collect();
        let egress = if policy_types.contains(&Direction::Egress) {
            (0..rng.below(3)).map(|_| rule(&mut rng, namespaces)).collect()
        } else {
            vec![]
        };
        let p = NetworkPolicy {
            namespace: ns,
            name: format!("policy-{i}"),
            generation: Some(1),
            pod_selector: pod_selector(&mut rng),
            policy_types,
            ingress,
            egress,
        };
        s.policies.insert(p.id(), p);
    }
    s
}

/// Adds `count` random admin policies: ClusterNetworkPolicies of both tiers, some
/// AdminNetworkPolicies and one BaselineAdminNetworkPolicy, with every peer and port kind the
/// APIs have and few distinct priorities (so that ties occur).
pub fn add_admin_policies(s: &mut Snapshot, count: usize, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xad);
    let namespaces = s.namespaces.len().max(1);
    for i in 0..count {
        let kind = match (i, rng.below(10)) {
            (0, _) if count > 2 => AdminKind::BaselineAdminNetworkPolicy,
            (_, 0..=2) => AdminKind::AdminNetworkPolicy,
            _ => AdminKind::ClusterNetworkPolicy,
        };
        let tier = match kind {
            AdminKind::BaselineAdminNetworkPolicy => Tier::Baseline,
            AdminKind::AdminNetworkPolicy => Tier::Admin,
            AdminKind::ClusterNetworkPolicy if rng.chance(30) => Tier::Baseline,
            AdminKind::ClusterNetworkPolicy => Tier::Admin,
        };
        let actions: &[AdminAction] = match kind {
            AdminKind::BaselineAdminNetworkPolicy => &[AdminAction::Accept, AdminAction::Deny],
            _ => &[AdminAction::Accept, AdminAction::Deny, AdminAction::Pass],
        };
        let team = |rng: &mut Rng| LabelSelector {
            match_labels: labels(&[("team", format!("team-{}", rng.below(namespaces.div_ceil(5).max(1))))]),
            ..Default::default()
        };
        let subject = match rng.below(3) {
            0 => AdminSubject::Namespaces(LabelSelector::default()),
            1 => AdminSubject::Namespaces(team(&mut rng)),
            _ => AdminSubject::Pods {
                namespace_selector: if rng.chance(50) {
                    team(&mut rng)
                } else {
                    LabelSelector::default()
                },
                pod_selector: pod_selector(&mut rng),
            },
        };
        let rules = |rng: &mut Rng, d: Direction| -> Vec<AdminRule> {
            (0..rng.below(4))
                .map(|r| {
                    let peers: Vec<AdminPeer> = (0..1 + rng.below(2))
                        .map(|_| match (rng.below(6), d) {
                            (0, _) => AdminPeer::Namespaces(team(rng)),
                            (1, _) => AdminPeer::Namespaces(LabelSelector::default()),
                            (2, Direction::Egress) => {
                                let a = rng.below(4) as u8;
                                let cidr = if rng.chance(50) {
                                    Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 128, a, 0)), 22 + a % 4)
                                } else {
                                    Cidr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, a as u16, 0, 0, 0, 0, 0)), 64)
                                };
                                AdminPeer::Networks(vec![cidr.expect("valid")])
                            }
                            _ => AdminPeer::Pods {
                                namespace_selector: if rng.chance(50) {
                                    team(rng)
                                } else {
                                    LabelSelector::default()
                                },
                                pod_selector: pod_selector(rng),
                            },
                        })
                        .collect();
                    // Networks and nodes have no named ports: the API rejects them together.
                    let named_ok = !peers
                        .iter()
                        .any(|p| matches!(p, AdminPeer::Networks(_) | AdminPeer::Nodes(_)));
                    let mut ports = Vec::new();
                    for _ in 0..rng.below(3) {
                        match rng.below(4) {
                            0 if named_ok => {
                                let (name, _, _) = PORT_NAMES[rng.below(PORT_NAMES.len())];
                                if ports.iter().any(|p: &PortSpec| p.port == PortRef::Named(name.into())) {
                                    continue;
                                }
                                for protocol in Protocol::ALL {
                                    ports.push(PortSpec {
                                        protocol,
                                        port: PortRef::Named(name.into()),
                                    });
                                }
                            }
                            1 => ports.push(PortSpec {
                                protocol: Protocol::ALL[rng.below(3)],
                                port: PortRef::Range {
                                    first: 8080,
                                    last: 9090,
                                },
                            }),
                            _ => {
                                let p = [80, 53, 8080, 5432, 3868][rng.below(5)];
                                ports.push(PortSpec {
                                    protocol: Protocol::ALL[rng.below(3)],
                                    port: PortRef::Range { first: p, last: p },
                                });
                            }
                        }
                    }
                    AdminRule {
                        name: rng.chance(70).then(|| format!("rule-{r}")),
                        action: actions[rng.below(actions.len())],
                        peers,
                        ports,
                    }
                })
                .collect()
        };
        let ingress = rules(&mut rng, Direction::Ingress);
        let egress = rules(&mut rng, Direction::Egress);
        let p = AdminPolicy {
            kind,
            name: match kind {
                AdminKind::BaselineAdminNetworkPolicy => "default".into(),
                _ => format!("admin-{i}"),
            },
            generation: Some(1),
            tier,
            priority: match kind {
                AdminKind::BaselineAdminNetworkPolicy => 1000,
                _ => rng.below(5) as i32 * 10,
            },
            subject,
            ingress,
            egress,
        };
        s.admin_policies.insert(p.id(), p);
    }
}

// === Back to manifests ===

fn admin_json(p: &AdminPolicy) -> serde_json::Value {
    use serde_json::json;
    let v1 = p.kind != AdminKind::ClusterNetworkPolicy;
    let subject = match &p.subject {
        AdminSubject::Namespaces(s) => json!({"namespaces": selector_json(s)}),
        AdminSubject::Pods {
            namespace_selector,
            pod_selector,
        } => {
            json!({"pods": {"namespaceSelector": selector_json(namespace_selector), "podSelector": selector_json(pod_selector)}})
        }
    };
    let rule = |r: &AdminRule, peers_key: &str| {
        let peers: Vec<serde_json::Value> = r
            .peers
            .iter()
            .map(|peer| match peer {
                AdminPeer::Namespaces(s) => json!({"namespaces": selector_json(s)}),
                AdminPeer::Pods {
                    namespace_selector,
                    pod_selector,
                } => json!({"pods": {"namespaceSelector": selector_json(namespace_selector), "podSelector": selector_json(pod_selector)}}),
                AdminPeer::Nodes(s) => json!({"nodes": selector_json(s)}),
                AdminPeer::Networks(c) => json!({"networks": c.iter().map(|c| c.to_string()).collect::<Vec<_>>()}),
                AdminPeer::Everything | AdminPeer::Nothing => json!({}),
            })
            .collect();
        let mut ports: Vec<serde_json::Value> = Vec::new();
        let mut named_seen: Vec<&str> = Vec::new();
        for spec in &r.ports {
            let proto = spec.protocol.as_str();
            let v = match (&spec.port, v1) {
                (PortRef::Named(n), _) if named_seen.contains(&n.as_str()) => continue,
                (PortRef::Named(n), true) => {
                    named_seen.push(n);
                    json!({ "namedPort": n })
                }
                (PortRef::Named(n), false) => {
                    named_seen.push(n);
                    json!({ "destinationNamedPort": n })
                }
                (PortRef::Range { first, last }, true) if first == last => {
                    json!({"portNumber": {"protocol": proto, "port": first}})
                }
                (PortRef::Range { first, last }, true) => {
                    json!({"portRange": {"protocol": proto, "start": first, "end": last}})
                }
                (PortRef::Range { first, last }, false) if first == last => {
                    json!({ proto.to_ascii_lowercase(): {"destinationPort": {"number": first}} })
                }
                (PortRef::Range { first, last }, false) => {
                    json!({ proto.to_ascii_lowercase(): {"destinationPort": {"range": {"start": first, "end": last}}} })
                }
                (PortRef::All, _) => continue,
            };
            ports.push(v);
        }
        let action = match (r.action, v1) {
            (AdminAction::Accept, true) => "Allow",
            (a, _) => a.as_str(),
        };
        let mut m = serde_json::Map::new();
        if let Some(n) = &r.name {
            m.insert("name".into(), json!(n));
        }
        m.insert("action".into(), json!(action));
        m.insert(peers_key.into(), json!(peers));
        if !ports.is_empty() {
            m.insert((if v1 { "ports" } else { "protocols" }).into(), json!(ports));
        }
        serde_json::Value::Object(m)
    };
    let mut spec = serde_json::Map::new();
    match p.kind {
        AdminKind::ClusterNetworkPolicy => {
            spec.insert("tier".into(), json!(p.tier.as_str()));
            spec.insert("priority".into(), json!(p.priority));
        }
        AdminKind::AdminNetworkPolicy => {
            spec.insert("priority".into(), json!(p.priority));
        }
        AdminKind::BaselineAdminNetworkPolicy => {}
    }
    spec.insert("subject".into(), subject);
    if !p.ingress.is_empty() {
        spec.insert(
            "ingress".into(),
            json!(p.ingress.iter().map(|r| rule(r, "from")).collect::<Vec<_>>()),
        );
    }
    if !p.egress.is_empty() {
        spec.insert(
            "egress".into(),
            json!(p.egress.iter().map(|r| rule(r, "to")).collect::<Vec<_>>()),
        );
    }
    let api = if v1 {
        "policy.networking.k8s.io/v1alpha1"
    } else {
        "policy.networking.k8s.io/v1alpha2"
    };
    json!({"apiVersion": api, "kind": p.kind.as_str(),
        "metadata": {"name": p.name, "generation": p.generation}, "spec": spec})
}

fn selector_json(s: &LabelSelector) -> serde_json::Value {
    let exprs: Vec<serde_json::Value> = s
        .match_expressions
        .iter()
        .map(|r| serde_json::json!({"key": r.key, "operator": r.operator.as_str(), "values": r.values}))
        .collect();
    serde_json::json!({"matchLabels": s.match_labels, "matchExpressions": exprs})
}

fn rule_json(r: &Rule, peers_key: &str) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = r
        .peers
        .iter()
        .map(|p| match p {
            Peer::IpBlock(b) if b.except.is_empty() => serde_json::json!({"ipBlock": {"cidr": b.cidr.to_string()}}),
            Peer::IpBlock(b) => serde_json::json!({"ipBlock": {
                "cidr": b.cidr.to_string(),
                "except": b.except.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            }}),
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                let mut m = serde_json::Map::new();
                if let Some(s) = namespace_selector {
                    m.insert("namespaceSelector".into(), selector_json(s));
                }
                if let Some(s) = pod_selector {
                    m.insert("podSelector".into(), selector_json(s));
                }
                serde_json::Value::Object(m)
            }
        })
        .collect();
    let ports: Vec<serde_json::Value> = r
        .ports
        .iter()
        .map(|p| match &p.port {
            PortRef::All => serde_json::json!({"protocol": p.protocol.as_str()}),
            PortRef::Named(n) => serde_json::json!({"protocol": p.protocol.as_str(), "port": n}),
            PortRef::Range { first, last } if first == last => {
                serde_json::json!({"protocol": p.protocol.as_str(), "port": first})
            }
            PortRef::Range { first, last } => {
                serde_json::json!({"protocol": p.protocol.as_str(), "port": first, "endPort": last})
            }
        })
        .collect();
    // Empty lists are left out, as the API server prints them: a missing `from`/`to` or `ports`
    // is every peer or port.
    let mut rule = serde_json::Map::new();
    if !peers.is_empty() {
        rule.insert(peers_key.into(), peers.into());
    }
    if !ports.is_empty() {
        rule.insert("ports".into(), ports.into());
    }
    serde_json::Value::Object(rule)
}

/// The snapshot as Kubernetes manifests (what `kubectl get -o json` would print), sorted by kind
/// and name. Loading them gives back an equal snapshot.
pub fn to_objects(s: &Snapshot) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut out = Vec::new();
    for n in s.nodes.values() {
        out.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name},
            "spec": {"podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
            "status": {"addresses": n.internal_ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip.to_string()})).collect::<Vec<_>>()}}));
    }
    for ns in s.namespaces.values() {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns.name, "labels": ns.labels}}));
    }
    for p in s.pods.values() {
        let ports: Vec<serde_json::Value> = p
            .ports
            .iter()
            .map(|c| json!({"name": c.name, "containerPort": c.port, "protocol": c.protocol.as_str()}))
            .collect();
        out.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": {"nodeName": p.node, "hostNetwork": p.host_network, "containers": [{"name": "main", "ports": ports}]},
            "status": {"phase": p.phase, "podIPs": p.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>()}}));
    }
    for p in s.policies.values() {
        let types: Vec<&str> = p
            .policy_types
            .iter()
            .map(|d| match d {
                Direction::Ingress => "Ingress",
                Direction::Egress => "Egress",
            })
            .collect();
        // Empty rule lists are left out, as the API server prints them (some readers take an
        // `egress` member as a claim of the Egress policy type).
        let mut spec = json!({"podSelector": selector_json(&p.pod_selector), "policyTypes": types});
        if !p.ingress.is_empty() {
            spec["ingress"] = p.ingress.iter().map(|r| rule_json(r, "from")).collect();
        }
        if !p.egress.is_empty() {
            spec["egress"] = p.egress.iter().map(|r| rule_json(r, "to")).collect();
        }
        out.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": p.name, "namespace": p.namespace, "generation": p.generation},
            "spec": spec}));
    }
    for p in s.admin_policies.values() {
        out.push(admin_json(p));
    }
    out
}
