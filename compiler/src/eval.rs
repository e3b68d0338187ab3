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
    pub isolated: bool,
    /// Policies selecting the endpoint for this direction.
    pub policies: Vec<ObjectRef>,
    /// The first rule that allowed the flow, in ruleset order.
    pub allowed_by: Option<RuleRef>,
    pub allowed: bool,
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
}

impl<'a> Evaluator<'a> {
    pub fn new(ir: &'a Ir) -> Self {
        let mut by_ip = BTreeMap::new();
        for (i, ep) in ir.endpoints.iter().enumerate() {
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(i);
            }
        }
        Self { ir, by_ip }
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
                allowed: true,
            };
        };
        let iso = ep.isolation(d);
        let allowed_by = if iso.isolated() && !loopback {
            self.first_match(d, iso, flow)
        } else {
            None
        };
        SideVerdict {
            direction: d,
            endpoint: Some(ep.pod.clone()),
            isolated: iso.isolated(),
            policies: iso.policies.clone(),
            allowed: !iso.isolated() || loopback || allowed_by.is_some(),
            allowed_by,
        }
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
