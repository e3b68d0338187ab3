//! Evaluating flows on the IR: the same decisions the rendered ruleset makes, with the reasons.
//!
//! A flow is allowed when the source's egress and the destination's ingress both allow it. A side
//! is judged only where its pod is an endpoint of the IR; traffic from a pod to itself is always
//! allowed (it never leaves the pod).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::ir::*;
use crate::model::*;

/// One connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The verdict on a flow and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The flow stays inside one pod.
    pub loopback: bool,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

/// The decision of one direction (source egress or destination ingress).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideVerdict {
    pub direction: Direction,
    /// The pod whose policies are judged; `None` when the address is not an endpoint of the IR
    /// (outside the cluster, a hostNetwork pod, or a pod on another node).
    pub endpoint: Option<ObjectRef>,
    /// Whether NetworkPolicies isolate the endpoint in this direction.
    pub isolated: bool,
    /// NetworkPolicies selecting the endpoint for this direction.
    pub policies: Vec<ObjectRef>,
    /// The first NetworkPolicy rule that allowed the flow, in ruleset order.
    pub allowed_by: Option<RuleRef>,
    /// Admin-tier policies selecting the endpoint for this direction, in evaluation order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_policies: Vec<AdminRef>,
    /// The first Admin-tier rule matching the flow (Accept, Deny or Pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminMatch>,
    /// Baseline-tier policies selecting the endpoint for this direction, in evaluation order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baseline_policies: Vec<AdminRef>,
    /// The first Baseline-tier rule matching the flow, when the Baseline tier was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<AdminMatch>,
    /// The tier whose decision stands.
    pub decided_by: DecidedBy,
    pub allowed: bool,
}

/// Which step of the tier walk decided a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// A pod reaching itself: never blocked.
    Loopback,
    /// An Admin-tier rule accepted or denied.
    Admin,
    /// NetworkPolicies isolate the endpoint: one of their rules allowed, or none did.
    NetworkPolicy,
    /// A Baseline-tier rule accepted or denied.
    Baseline,
    /// Nothing applied (or everything passed): allowed, as Kubernetes does by default.
    Default,
}

/// An admin rule that matched a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminMatch {
    pub policy: AdminRef,
    pub tier: Tier,
    pub priority: i32,
    /// `cnp/x ingress[0] "name"`.
    pub rule: String,
    pub action: AdminAction,
    /// Chain holding its counter in the nft ruleset.
    pub chain: String,
    pub peer: String,
    pub ports: String,
}

impl std::fmt::Display for AdminMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({}, {})", self.rule, self.action, self.peer, self.ports)
    }
}

/// A rule of a policy, as the ruleset's comments name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: ObjectRef,
    pub direction: Direction,
    /// Index in the policy's `ingress` / `egress` list.
    pub rule: usize,
    /// Chain holding it in the nft ruleset.
    pub chain: String,
    pub peer: String,
    pub ports: String,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}[{}] ({} {}, {})",
            self.policy,
            self.direction,
            self.rule,
            match self.direction {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            },
            self.peer,
            self.ports
        )
    }
}

/// Evaluates flows against one IR. Build once, ask many times.
#[derive(Debug)]
pub struct Evaluator<'a> {
    ir: &'a Ir,
    by_ip: BTreeMap<IpAddr, usize>,
    /// Admin rule chains of each policy and direction, in rule order.
    admin_rules: BTreeMap<(&'a AdminRef, Direction), Vec<&'a str>>,
}

impl<'a> Evaluator<'a> {
    pub fn new(ir: &'a Ir) -> Self {
        let mut by_ip = BTreeMap::new();
        for (i, ep) in ir.endpoints.iter().enumerate() {
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(i);
            }
        }
        let mut admin_rules: BTreeMap<(&AdminRef, Direction), Vec<(usize, &str)>> = BTreeMap::new();
        for (chain, r) in &ir.admin_rules {
            admin_rules
                .entry((&r.policy, r.direction))
                .or_default()
                .push((r.rule, chain.as_str()));
        }
        let admin_rules = admin_rules
            .into_iter()
            .map(|(k, mut v)| {
                v.sort();
                (k, v.into_iter().map(|(_, c)| c).collect())
            })
            .collect();
        Self { ir, by_ip, admin_rules }
    }

    pub fn endpoint(&self, ip: &IpAddr) -> Option<&'a Endpoint> {
        self.by_ip.get(ip).map(|i| &self.ir.endpoints[*i])
    }

    pub fn evaluate(&self, flow: &Flow) -> Verdict {
        let src = self.endpoint(&flow.src);
        let dst = self.endpoint(&flow.dst);
        let loopback = flow.src == flow.dst || (src.is_some() && src.map(|e| &e.pod) == dst.map(|e| &e.pod));
        let egress = self.side(Direction::Egress, src, flow, loopback);
        let ingress = self.side(Direction::Ingress, dst, flow, loopback);
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            loopback,
            egress,
            ingress,
        }
    }

    fn side(&self, d: Direction, ep: Option<&Endpoint>, flow: &Flow, loopback: bool) -> SideVerdict {
        let Some(ep) = ep else {
            return SideVerdict {
                direction: d,
                endpoint: None,
                isolated: false,
                policies: Vec::new(),
                allowed_by: None,
                admin_policies: Vec::new(),
                admin: None,
                baseline_policies: Vec::new(),
                baseline: None,
                decided_by: DecidedBy::Default,
                allowed: true,
            };
        };
        let iso = ep.isolation(d);
        let mut v = SideVerdict {
            direction: d,
            endpoint: Some(ep.pod.clone()),
            isolated: iso.isolated(),
            policies: iso.policies.clone(),
            allowed_by: None,
            admin_policies: iso.admin.clone(),
            admin: None,
            baseline_policies: iso.baseline.clone(),
            baseline: None,
            decided_by: DecidedBy::Default,
            allowed: true,
        };
        if loopback {
            v.decided_by = DecidedBy::Loopback;
            return v;
        }
        // Admin tier: the first matching rule decides, unless it passes.
        v.admin = self.first_admin_match(d, &iso.admin, flow);
        if let Some(m) = &v.admin {
            if m.action != AdminAction::Pass {
                v.decided_by = DecidedBy::Admin;
                v.allowed = m.action == AdminAction::Accept;
                return v;
            }
        }
        // NetworkPolicy tier: isolation decides for good.
        if iso.isolated() {
            v.allowed_by = self.first_match(d, iso, flow);
            v.decided_by = DecidedBy::NetworkPolicy;
            v.allowed = v.allowed_by.is_some();
            return v;
        }
        // Baseline tier, then the default.
        v.baseline = self.first_admin_match(d, &iso.baseline, flow);
        if let Some(m) = &v.baseline {
            if m.action != AdminAction::Pass {
                v.decided_by = DecidedBy::Baseline;
                v.allowed = m.action == AdminAction::Accept;
            }
        }
        v
    }

    /// The first rule of `policies` (in order) matching the flow.
    fn first_admin_match(&self, d: Direction, policies: &[AdminRef], flow: &Flow) -> Option<AdminMatch> {
        let peer_ip = match d {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        for p in policies {
            for chain in self.admin_rules.get(&(p, d)).into_iter().flatten() {
                let r = &self.ir.admin_rules[*chain];
                let peer_ok = r.peers.iter().any(|pm| match pm {
                    PeerMatch::Any => true,
                    PeerMatch::Set(s) => self.ir.tier_sets[s].contains(&peer_ip),
                });
                if peer_ok && r.ports.iter().any(|pm| self.ports_match(pm, flow)) {
                    return Some(AdminMatch {
                        policy: r.policy.clone(),
                        tier: r.tier,
                        priority: r.priority,
                        rule: r.label(),
                        action: r.action,
                        chain: chain.to_string(),
                        peer: describe_admin_peers(self.ir, &r.peers),
                        ports: {
                            // Admin named ports carry no protocol: one entry per name.
                            let mut v: Vec<String> = Vec::new();
                            for p in &r.ports {
                                let d = match p {
                                    PortMatch::Named { set, .. } => {
                                        format!("named port {}", self.ir.port_sets[set].port_name)
                                    }
                                    p => describe_ports(self.ir, p),
                                };
                                if !v.contains(&d) {
                                    v.push(d);
                                }
                            }
                            v.join(", ")
                        },
                    });
                }
            }
        }
        None
    }

    /// The admin rule the ruleset's tier table picks for a flow (what the kernel does), for
    /// checking the tables against the rule-by-rule walk.
    pub fn table_decision(&self, table: &TierTable, d: Direction, flow: &Flow) -> Option<&'a AdminRuleIr> {
        let peer_ip = match d {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        let chain = match table.lookup(&peer_ip)? {
            Target::Rule(c) => c.as_str(),
            Target::Class(c) => self.ir.port_classes[c].lookup(flow.protocol, flow.port)?,
        };
        self.ir.admin_rules.get(chain)
    }

    fn first_match(&self, d: Direction, iso: &Isolation, flow: &Flow) -> Option<RuleRef> {
        // The peer is the other end: the source for ingress, the destination for egress.
        let peer_ip = match d {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        for chain_name in &iso.chains {
            let chain = &self.ir.chains[chain_name];
            for r in &chain.rules {
                let peer_ok = match &r.peer {
                    PeerMatch::Any => true,
                    PeerMatch::Set(s) => self.ir.sets[s].contains(&peer_ip),
                };
                if peer_ok && self.ports_match(&r.ports, flow) {
                    return Some(RuleRef {
                        policy: chain.policy.clone(),
                        direction: d,
                        rule: r.rule,
                        chain: chain_name.clone(),
                        peer: describe_peer(self.ir, &r.peer),
                        ports: describe_ports(self.ir, &r.ports),
                    });
                }
            }
        }
        None
    }

    fn ports_match(&self, m: &PortMatch, flow: &Flow) -> bool {
        match m {
            PortMatch::Any => true,
            PortMatch::Ports(ranges) => ranges.iter().any(|r| r.contains(flow.protocol, flow.port)),
            PortMatch::Named { set, protocol } => {
                *protocol == flow.protocol && self.ir.port_sets[set].contains(flow.dst, flow.port)
            }
        }
    }
}

pub fn describe_peer(ir: &Ir, p: &PeerMatch) -> String {
    match p {
        PeerMatch::Any => "anywhere".into(),
        PeerMatch::Set(s) => ir.sets[s].description.clone(),
    }
}

pub fn describe_admin_peers(ir: &Ir, peers: &[PeerMatch]) -> String {
    if peers.is_empty() {
        return "nothing".into();
    }
    let v: Vec<String> = peers
        .iter()
        .map(|p| match p {
            PeerMatch::Any => "anywhere".to_string(),
            PeerMatch::Set(s) => ir.tier_sets[s].description.clone(),
        })
        .collect();
    v.join(" or ")
}

pub fn describe_ports(ir: &Ir, p: &PortMatch) -> String {
    match p {
        PortMatch::Any => "any port".into(),
        PortMatch::Ports(r) => {
            let v: Vec<String> = r.iter().map(|r| r.to_string()).collect();
            format!("ports {}", v.join(", "))
        }
        PortMatch::Named { set, protocol } => {
            format!("named port {}/{protocol}", ir.port_sets[set].port_name)
        }
    }
}

// === Matrix ===

/// The reachability truth table among endpoints: `allowed[src][dst]`. The JSON form is exactly
/// `{"pods": [...], "allowed": [[...]]}`, shared by `matrix`, `probe` and `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Matrix {
    pub pods: Vec<String>,
    pub allowed: Vec<Vec<bool>>,
}

/// The address a probe from `src` to `dst` would use: IPv4 when both have one, else IPv6.
pub fn flow_addresses(src: &Endpoint, dst: &Endpoint) -> Option<(IpAddr, IpAddr)> {
    for v4 in [true, false] {
        let s = src.ips.iter().find(|ip| ip.is_ipv4() == v4);
        let d = dst.ips.iter().find(|ip| ip.is_ipv4() == v4);
        if let (Some(s), Some(d)) = (s, d) {
            return Some((*s, *d));
        }
    }
    None
}

impl Matrix {
    /// Evaluates every ordered pair of the IR's endpoints for one port and protocol.
    pub fn evaluate(ir: &Ir, protocol: Protocol, port: u16) -> Matrix {
        let ev = Evaluator::new(ir);
        let pods = ir.endpoints.iter().map(|e| e.pod.to_string()).collect();
        let allowed = ir
            .endpoints
            .iter()
            .map(|src| {
                ir.endpoints
                    .iter()
                    .map(|dst| match flow_addresses(src, dst) {
                        Some((s, d)) => {
                            ev.evaluate(&Flow {
                                src: s,
                                dst: d,
                                protocol,
                                port,
                            })
                            .allowed
                        }
                        // No common address family: nothing can connect, except a pod to itself.
                        None => src.pod == dst.pod,
                    })
                    .collect()
            })
            .collect();
        Matrix { pods, allowed }
    }

    /// The upstream e2e truth-table look: tab-separated, `.` allowed, `X` denied.
    pub fn to_table(&self) -> String {
        let mut out = String::from("-");
        for p in &self.pods {
            out.push('\t');
            out.push_str(p);
        }
        out.push('\n');
        for (i, p) in self.pods.iter().enumerate() {
            out.push_str(p);
            for v in &self.allowed[i] {
                out.push('\t');
                out.push(if *v { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }

    pub fn get(&self, src: &str, dst: &str) -> Option<bool> {
        let s = self.pods.iter().position(|p| p == src)?;
        let d = self.pods.iter().position(|p| p == dst)?;
        Some(self.allowed[s][d])
    }
}
