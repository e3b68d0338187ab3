//! Evaluating flows on the IR: the same decisions the rendered ruleset makes, with the reasons.
//!
//! A flow is allowed when the source's egress and the destination's ingress both allow it. A side
//! is judged only where its pod is an endpoint of the IR; traffic from a pod to itself is always
//! allowed (it never leaves the pod).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;

use crate::cidr::Family;
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
    /// Its counter chain in the nft ruleset (`np_*_R`).
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
                        chain: crate::nft::rule_chain_name(chain_name, r.rule),
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
    ///
    /// The same verdicts as [`Matrix::evaluate_per_flow`], computed per side rather than per
    /// flow: for each endpoint and direction, the peers it allows form a bitset over the
    /// endpoints, built by walking its tiers once with every rule's peers as bitsets (see
    /// [`SideSets`]). Endpoints with the same policies share the walk.
    pub fn evaluate(ir: &Ir, protocol: Protocol, port: u16) -> Matrix {
        let pods = ir.endpoints.iter().map(|e| e.pod.to_string()).collect();
        let ev = Evaluator::new(ir);
        let n = ir.endpoints.len();
        // Pods by number, so that a pod reaching itself through another endpoint's address is
        // told without comparing names per pair.
        let mut pod_ids: HashMap<&ObjectRef, usize> = HashMap::new();
        let pod_of: Vec<usize> = ir
            .endpoints
            .iter()
            .map(|e| {
                let next = pod_ids.len();
                *pod_ids.entry(&e.pod).or_insert(next)
            })
            .collect();
        // Per family and endpoint: the pod its address belongs to (the endpoint whose policies
        // judge it; the same address is the same pod), and its egress and ingress sides.
        #[derive(Clone, Copy, Default)]
        struct At {
            pod: usize,
            egress: usize,
            ingress: usize,
        }
        let mut sides: Vec<SideSets<'_>> = Vec::new();
        let mut at: Vec<Vec<At>> = Vec::new();
        // Bit 0: has an IPv4 address, bit 1: IPv6.
        let mut families = vec![0u8; n];
        for (fi, f) in [Family::V4, Family::V6].into_iter().enumerate() {
            let mut side = SideSets::new(ir, &ev, f, protocol, port);
            let mut v = vec![At::default(); n];
            for (j, a) in side.addrs.clone().into_iter().enumerate() {
                let Some(addr) = a else { continue };
                families[j] |= 1 << fi;
                let k = ev.by_ip[&addr];
                v[j] = At {
                    pod: pod_of[k],
                    egress: side.side(k, Direction::Egress, addr),
                    ingress: side.side(k, Direction::Ingress, addr),
                };
            }
            sides.push(side);
            at.push(v);
        }
        let mut allowed = vec![vec![false; n]; n];
        for (si, row) in allowed.iter_mut().enumerate() {
            for (di, cell) in row.iter_mut().enumerate() {
                // IPv4 when both have it, else IPv6 (as `flow_addresses`).
                let common = families[si] & families[di];
                if common == 0 {
                    *cell = pod_of[si] == pod_of[di];
                    continue;
                }
                let f = usize::from(common & 1 == 0);
                let (s, d) = (&at[f][si], &at[f][di]);
                *cell = s.pod == d.pod || (sides[f].results[s.egress].get(di) && sides[f].results[d.ingress].get(si));
            }
        }
        Matrix { pods, allowed }
    }

    /// The reference: every ordered pair evaluated as one flow by the [`Evaluator`] (slow; for
    /// tests and the benchmark).
    pub fn evaluate_per_flow(ir: &Ir, protocol: Protocol, port: u16) -> Matrix {
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

// === Matrix by bitsets ===

/// A set of endpoints (by index).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn none(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn all(n: usize) -> Bits {
        let mut b = Bits(vec![u64::MAX; n.div_ceil(64)]);
        if n % 64 != 0 {
            if let Some(last) = b.0.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        b
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn and(&self, o: &Bits) -> Bits {
        Bits(self.0.iter().zip(&o.0).map(|(a, b)| a & b).collect())
    }

    fn or_assign(&mut self, o: &Bits) {
        self.0.iter_mut().zip(&o.0).for_each(|(a, b)| *a |= b);
    }

    fn and_not_assign(&mut self, o: &Bits) {
        self.0.iter_mut().zip(&o.0).for_each(|(a, b)| *a &= !b);
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// What a rule's port match says for the matrix's protocol and port.
enum PortBits {
    Yes,
    No,
    /// An egress named port: where it resolves on the destination (the peer).
    Peers(Bits),
}

/// The peers each endpoint allows per direction, for one address family, protocol and port.
/// Bit `j` stands for endpoint `j`'s first address of the family.
struct SideSets<'a> {
    ir: &'a Ir,
    ev: &'a Evaluator<'a>,
    protocol: Protocol,
    port: u16,
    /// Each endpoint's first address of the family.
    addrs: Vec<Option<IpAddr>>,
    /// Members of NetworkPolicy sets (`false`) and admin peer sets (`true`).
    peer_bits: HashMap<(bool, &'a str), Bits>,
    named_bits: HashMap<&'a str, Bits>,
    /// Per what decides a side: index into `results`.
    by_key: HashMap<SideKey<'a>, usize>,
    results: Vec<Bits>,
}

/// What a side's walk depends on: its policies, and for ingress named ports its own address.
#[derive(PartialEq, Eq, Hash)]
struct SideKey<'a> {
    direction: Direction,
    isolation: &'a Isolation,
    own: Option<IpAddr>,
}

impl<'a> SideSets<'a> {
    fn new(ir: &'a Ir, ev: &'a Evaluator<'a>, family: Family, protocol: Protocol, port: u16) -> Self {
        let addrs = ir
            .endpoints
            .iter()
            .map(|e| e.ips.iter().find(|ip| Family::of(ip) == family).copied())
            .collect();
        Self {
            ir,
            ev,
            protocol,
            port,
            addrs,
            peer_bits: HashMap::new(),
            named_bits: HashMap::new(),
            by_key: HashMap::new(),
            results: Vec::new(),
        }
    }

    /// The result index of endpoint `k`'s side `d` when its address in the flow is `at`.
    fn side(&mut self, k: usize, d: Direction, at: IpAddr) -> usize {
        let ir = self.ir;
        let ep = &ir.endpoints[k];
        let iso = ep.isolation(d);
        let named = |pm: &PortMatch| matches!(pm, PortMatch::Named { .. });
        let has_named = d == Direction::Ingress
            && (iso
                .chains
                .iter()
                .any(|c| ir.chains[c].rules.iter().any(|r| named(&r.ports)))
                || iso
                    .admin
                    .iter()
                    .chain(&iso.baseline)
                    .flat_map(|p| self.ev.admin_rules.get(&(p, d)).into_iter().flatten())
                    .any(|c| ir.admin_rules[*c].ports.iter().any(named)));
        let key = SideKey {
            direction: d,
            isolation: iso,
            own: has_named.then_some(at),
        };
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let bits = self.walk(iso, d, key.own);
        self.results.push(bits);
        let i = self.results.len() - 1;
        self.by_key.insert(key, i);
        i
    }

    /// The tier walk of [`Evaluator::evaluate`] over every peer at once.
    fn walk(&mut self, iso: &'a Isolation, d: Direction, own: Option<IpAddr>) -> Bits {
        let n = self.ir.endpoints.len();
        let all = Bits::all(n);
        let mut allow = Bits::none(n);
        // Admin tier: the first matching rule decides; Pass skips to the next tier.
        let mut undecided = all.clone();
        let mut passed = Bits::none(n);
        for (bits, action) in self.admin_rules(&iso.admin, d, own) {
            let m = undecided.and(&bits);
            match action {
                AdminAction::Accept => allow.or_assign(&m),
                AdminAction::Deny => {}
                AdminAction::Pass => passed.or_assign(&m),
            }
            undecided.and_not_assign(&m);
            if undecided.is_empty() {
                break;
            }
        }
        undecided.or_assign(&passed);
        if iso.isolated() {
            let mut any = Bits::none(n);
            for c in &iso.chains {
                for r in &self.ir.chains[c].rules {
                    let peers = self.peer(false, &r.peer);
                    match self.port(&r.ports, d, own) {
                        PortBits::Yes => any.or_assign(&peers),
                        PortBits::No => {}
                        PortBits::Peers(p) => any.or_assign(&peers.and(&p)),
                    }
                }
            }
            allow.or_assign(&undecided.and(&any));
            return allow;
        }
        // Baseline tier: first match; Pass and no match are allowed by default.
        for (bits, action) in self.admin_rules(&iso.baseline, d, own) {
            let m = undecided.and(&bits);
            if action != AdminAction::Deny {
                allow.or_assign(&m);
            }
            undecided.and_not_assign(&m);
        }
        allow.or_assign(&undecided);
        allow
    }

    /// The rules of admin policies in evaluation order: the peers each matches, and its action.
    fn admin_rules(&mut self, policies: &'a [AdminRef], d: Direction, own: Option<IpAddr>) -> Vec<(Bits, AdminAction)> {
        let ev = self.ev;
        let mut out = Vec::new();
        for p in policies {
            for chain in ev.admin_rules.get(&(p, d)).into_iter().flatten() {
                let r = &self.ir.admin_rules[*chain];
                let mut peers = Bits::none(self.ir.endpoints.len());
                for pm in &r.peers {
                    peers.or_assign(&self.peer(true, pm));
                }
                let mut ports = Bits::none(self.ir.endpoints.len());
                for pm in &r.ports {
                    match self.port(pm, d, own) {
                        PortBits::Yes => ports = Bits::all(self.ir.endpoints.len()),
                        PortBits::No => {}
                        PortBits::Peers(b) => ports.or_assign(&b),
                    }
                }
                out.push((peers.and(&ports), r.action));
            }
        }
        out
    }

    fn peer(&mut self, admin: bool, p: &'a PeerMatch) -> Bits {
        let n = self.ir.endpoints.len();
        let s = match p {
            PeerMatch::Any => return Bits::all(n),
            PeerMatch::Set(s) => s.as_str(),
        };
        if let Some(b) = self.peer_bits.get(&(admin, s)) {
            return b.clone();
        }
        let set = if admin { &self.ir.tier_sets[s] } else { &self.ir.sets[s] };
        let mut b = Bits::none(n);
        for (j, a) in self.addrs.iter().enumerate() {
            if a.is_some_and(|a| set.contains(&a)) {
                b.set(j);
            }
        }
        self.peer_bits.insert((admin, s), b.clone());
        b
    }

    fn port(&mut self, m: &'a PortMatch, d: Direction, own: Option<IpAddr>) -> PortBits {
        let yes = |b: bool| if b { PortBits::Yes } else { PortBits::No };
        match m {
            PortMatch::Any => PortBits::Yes,
            PortMatch::Ports(ranges) => yes(ranges.iter().any(|r| r.contains(self.protocol, self.port))),
            PortMatch::Named { set, protocol } => {
                if *protocol != self.protocol {
                    return PortBits::No;
                }
                let ps = &self.ir.port_sets[set];
                if d == Direction::Ingress {
                    // Resolves on the destination: the endpoint itself.
                    return yes(own.is_some_and(|ip| ps.contains(ip, self.port)));
                }
                if let Some(b) = self.named_bits.get(set.as_str()) {
                    return PortBits::Peers(b.clone());
                }
                let mut b = Bits::none(self.ir.endpoints.len());
                for (j, a) in self.addrs.iter().enumerate() {
                    if a.is_some_and(|a| ps.contains(a, self.port)) {
                        b.set(j);
                    }
                }
                self.named_bits.insert(set, b.clone());
                PortBits::Peers(b)
            }
        }
    }
}
