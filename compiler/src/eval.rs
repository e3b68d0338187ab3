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
        Matrices::new(ir).port(protocol, port)
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

/// Matrices of one IR for several ports, one port at a time: what does not depend on the port
/// (the evaluator, every peer set's members, which pods share an address) is computed once, and
/// a side whose rules say the same for two ports is walked once.
#[derive(Debug)]
pub struct Matrices<'a> {
    ir: &'a Ir,
    ev: Evaluator<'a>,
    pods: Vec<String>,
    /// Per family (IPv4, IPv6).
    families: [SideSets<'a>; 2],
    /// Per endpoint: bit 0 has an IPv4 address, bit 1 an IPv6 one.
    has: Vec<u8>,
    /// The endpoints whose address is IPv4 (`[0]`); IPv6 ones that have no IPv4 address (`[1]`).
    masks: [Bits; 2],
    /// Per source endpoint: the destinations that are the same pod (always allowed).
    same_pod: Vec<Vec<usize>>,
}

impl<'a> Matrices<'a> {
    pub fn new(ir: &'a Ir) -> Self {
        let n = ir.endpoints.len();
        let ev = Evaluator::new(ir);
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
        let families = [
            SideSets::new(ir, &ev, Family::V4, &pod_of),
            SideSets::new(ir, &ev, Family::V6, &pod_of),
        ];
        let has: Vec<u8> = (0..n)
            .map(|j| u8::from(families[0].addrs[j].is_some()) | u8::from(families[1].addrs[j].is_some()) << 1)
            .collect();
        let mut masks = [Bits::none(n), Bits::none(n)];
        for (j, h) in has.iter().enumerate() {
            if h & 1 != 0 {
                masks[0].set(j);
            } else if h & 2 != 0 {
                masks[1].set(j);
            }
        }
        // A pair is judged on IPv4 when both have it, else on IPv6 (as `flow_addresses`); the
        // same pod (by the owner of the address, or by name when no family is common) is
        // always allowed.
        let mut groups: HashMap<(u8, usize), Vec<usize>> = HashMap::new();
        for (j, pod) in pod_of.iter().enumerate() {
            groups.entry((2, *pod)).or_default().push(j);
            for (f, fam) in families.iter().enumerate() {
                if fam.addrs[j].is_some() {
                    groups.entry((f as u8, fam.owner_pod[j])).or_default().push(j);
                }
            }
        }
        let same_pod = (0..n)
            .map(|s| {
                let mut candidates: Vec<usize> = groups[&(2, pod_of[s])].clone();
                for (f, fam) in families.iter().enumerate() {
                    if fam.addrs[s].is_some() {
                        candidates.extend(&groups[&(f as u8, fam.owner_pod[s])]);
                    }
                }
                candidates.sort_unstable();
                candidates.dedup();
                candidates.retain(|&d| {
                    let common = has[s] & has[d];
                    if common == 0 {
                        return pod_of[s] == pod_of[d];
                    }
                    let f = usize::from(common & 1 == 0);
                    families[f].owner_pod[s] == families[f].owner_pod[d]
                });
                candidates
            })
            .collect();
        Self {
            ir,
            ev,
            pods: ir.endpoints.iter().map(|e| e.pod.to_string()).collect(),
            families,
            has,
            masks,
            same_pod,
        }
    }

    /// The pods, in the order of rows and columns.
    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    /// The matrix of one port and protocol (see [`Matrix::evaluate`]).
    pub fn port(&mut self, protocol: Protocol, port: u16) -> Matrix {
        self.bits(protocol, port).to_matrix(&self.pods)
    }

    /// The matrix of one port and protocol, one bitset per source.
    pub fn bits(&mut self, protocol: Protocol, port: u16) -> BitMatrix {
        let n = self.ir.endpoints.len();
        let mut rows: Vec<Bits> = (0..n).map(|_| Bits::none(n)).collect();
        for f in 0..2 {
            let fam = &mut self.families[f];
            let sides = fam.sides(&self.ev, protocol, port);
            // Row `d` of the ingress sides: the sources destination `d` allows; turned over,
            // row `s`: the destinations that allow source `s`.
            let empty = Bits::none(n);
            let ingress: Vec<&Bits> = sides
                .iter()
                .map(|s| s.map_or(&empty, |(_, i)| &fam.results[i]))
                .collect();
            let allowed_by = transpose(&ingress, n);
            for (s, row) in rows.iter_mut().enumerate() {
                let Some((e, _)) = sides[s] else { continue };
                // IPv4 pairs; IPv6 pairs are those where the two do not both have IPv4.
                let mut r = fam.results[e].and(&allowed_by[s]);
                if f == 0 {
                    r.and_assign(&self.masks[0]);
                } else if self.has[s] & 1 != 0 {
                    r.and_assign(&self.masks[1]);
                } else {
                    let mut m = self.masks[0].clone();
                    m.or_assign(&self.masks[1]);
                    r.and_assign(&m);
                }
                row.or_assign(&r);
            }
        }
        for (s, row) in rows.iter_mut().enumerate() {
            for d in &self.same_pod[s] {
                row.set(*d);
            }
        }
        BitMatrix { rows }
    }
}

/// A reachability matrix as one bitset of destinations per source: the compact form of
/// [`Matrix`], written out without building it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitMatrix {
    rows: Vec<Bits>,
}

impl BitMatrix {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, src: usize, dst: usize) -> bool {
        self.rows[src].get(dst)
    }

    /// How many pairs are allowed.
    pub fn count(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.0.iter().map(|w| w.count_ones() as usize).sum::<usize>())
            .sum()
    }

    /// How many destinations among `dsts` source `src` reaches.
    fn count_in(&self, src: usize, dsts: &Bits) -> usize {
        self.rows[src]
            .0
            .iter()
            .zip(&dsts.0)
            .map(|(a, b)| (a & b).count_ones() as usize)
            .sum()
    }

    pub fn to_matrix(&self, pods: &[String]) -> Matrix {
        let n = self.rows.len();
        Matrix {
            pods: pods.to_vec(),
            allowed: self.rows.iter().map(|r| (0..n).map(|d| r.get(d)).collect()).collect(),
        }
    }

    /// Exactly [`Matrix::to_table`].
    pub fn write_table(&self, pods: &[String], w: &mut impl std::io::Write) -> std::io::Result<()> {
        write!(w, "-")?;
        for p in pods {
            write!(w, "\t{p}")?;
        }
        writeln!(w)?;
        let mut line = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            line.clear();
            line.extend_from_slice(p.as_bytes());
            for d in 0..self.rows.len() {
                line.extend_from_slice(if self.rows[i].get(d) { b"\t." } else { b"\tX" });
            }
            line.push(b'\n');
            w.write_all(&line)?;
        }
        Ok(())
    }

    /// Exactly the JSON of the [`Matrix`] (`{"pods": [...], "allowed": [[...]]}`), without a
    /// newline.
    pub fn write_json(&self, pods: &[String], w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(b"{")?;
        self.write_json_fields(pods, w)?;
        w.write_all(b"}")
    }

    /// The members of [`BitMatrix::write_json`]'s object without its braces (`"pods":[...],
    /// "allowed":[[...]]`), for an object with more members.
    pub fn write_json_fields(&self, pods: &[String], w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(b"\"pods\":")?;
        serde_json::to_writer(&mut *w, pods)?;
        w.write_all(b",\"allowed\":[")?;
        let mut line = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            line.clear();
            if i > 0 {
                line.push(b',');
            }
            line.push(b'[');
            for d in 0..self.rows.len() {
                if d > 0 {
                    line.push(b',');
                }
                line.extend_from_slice(if r.get(d) { b"true" } else { b"false" });
            }
            line.push(b']');
            w.write_all(&line)?;
        }
        w.write_all(b"]")
    }
}

/// Turns a square bit matrix over: bit `c` of row `r` becomes bit `r` of row `c`, 64×64 blocks at
/// a time.
fn transpose(rows: &[&Bits], n: usize) -> Vec<Bits> {
    let words = n.div_ceil(64);
    let mut out: Vec<Bits> = (0..n).map(|_| Bits::none(n)).collect();
    let mut block = [0u64; 64];
    for br in 0..words {
        for bc in 0..words {
            for (i, b) in block.iter_mut().enumerate() {
                *b = rows.get(br * 64 + i).map_or(0, |r| r.0[bc]);
            }
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            transpose64(&mut block);
            for (i, b) in block.iter().enumerate() {
                if let Some(r) = out.get_mut(bc * 64 + i) {
                    r.0[br] = *b;
                }
            }
        }
    }
    out
}

/// Transposes a 64×64 bit block in place: bit `c` of `a[r]` becomes bit `r` of `a[c]`.
fn transpose64(a: &mut [u64; 64]) {
    let mut j = 32;
    let mut m: u64 = 0x0000_0000_FFFF_FFFF;
    while j != 0 {
        let mut k = 0;
        while k < 64 {
            let t = ((a[k] >> j) ^ a[k + j]) & m;
            a[k] ^= t << j;
            a[k + j] ^= t;
            k = (k + j + 1) & !j;
        }
        j >>= 1;
        m ^= m << j;
    }
}
// === Distinct ports ===

/// Ports of one protocol that no rule tells apart: every port in it gets the same matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortClass {
    pub protocol: Protocol,
    /// Inclusive ranges, ascending, not adjacent.
    pub ranges: Vec<(u16, u16)>,
}

impl PortClass {
    /// The port the class's matrix is computed at: its first.
    pub fn port(&self) -> u16 {
        self.ranges[0].0
    }
}

/// `80/TCP`, `30000-30009/TCP`, `1-52,54-65535/UDP`.
impl std::fmt::Display for PortClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        write!(f, "/{}", self.protocol)
    }
}

/// Every distinct port the IR's rules use, as classes of ports no rule tells apart, in protocol
/// then port order.
///
/// A port, or a range, named in a NetworkPolicy or admin rule, and each number a named port
/// resolves to on some pod, and each of `extra` (e.g. the ports a user asks for) is covered by
/// exactly one class. A named port's number and each of `extra` is a class of its own; the other
/// ports are classed by the set of ranges that contain them (a port inside a range that some
/// other rule names on its own is split off, and so on). Ports no rule names (allowed only by
/// rules without ports) are in no class. Port 0 is never part of a class.
pub fn distinct_ports(ir: &Ir, extra: &[(Protocol, u16)]) -> Vec<PortClass> {
    let mut ranges: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    let mut points: BTreeMap<Protocol, Vec<u16>> = BTreeMap::new();
    let mut add = |m: &PortMatch| match m {
        PortMatch::Any => {}
        PortMatch::Ports(v) => {
            for r in v {
                ranges.entry(r.protocol).or_default().push((r.first, r.last));
            }
        }
        // Named ports: the numbers of the port sets, below.
        PortMatch::Named { .. } => {}
    };
    for c in ir.chains.values() {
        for r in &c.rules {
            add(&r.ports);
        }
    }
    for r in ir.admin_rules.values() {
        r.ports.iter().for_each(&mut add);
    }
    for ps in ir.port_sets.values() {
        points
            .entry(ps.protocol)
            .or_default()
            .extend(ps.members.iter().map(|(_, p)| *p));
    }
    for (p, port) in extra {
        points.entry(*p).or_default().push(*port);
    }
    let mut out = Vec::new();
    for protocol in Protocol::ALL {
        let mut rs = ranges.remove(&protocol).unwrap_or_default();
        let mut ps = points.remove(&protocol).unwrap_or_default();
        rs.sort_unstable();
        rs.dedup();
        ps.sort_unstable();
        ps.dedup();
        // Elementary intervals: between consecutive boundaries no range starts or ends.
        let mut bounds: Vec<u32> = Vec::new();
        for (a, b) in &rs {
            bounds.push(u32::from(*a));
            bounds.push(u32::from(*b) + 1);
        }
        for p in &ps {
            bounds.push(u32::from(*p));
            bounds.push(u32::from(*p) + 1);
        }
        bounds.retain(|b| *b >= 1);
        bounds.push(1);
        bounds.sort_unstable();
        bounds.dedup();
        // Classes by what covers them: the ranges' indexes, and the port itself for points.
        let mut classes: Vec<PortClass> = Vec::new();
        let mut by_sig: HashMap<(Vec<usize>, Option<u16>), usize> = HashMap::new();
        for w in bounds.windows(2) {
            let (a, b) = (w[0] as u16, (w[1] - 1) as u16);
            let covering: Vec<usize> = rs
                .iter()
                .enumerate()
                .filter(|(_, (f, l))| *f <= a && b <= *l)
                .map(|(i, _)| i)
                .collect();
            let point = (a == b && ps.binary_search(&a).is_ok()).then_some(a);
            if covering.is_empty() && point.is_none() {
                continue;
            }
            let i = *by_sig.entry((covering, point)).or_insert_with(|| {
                classes.push(PortClass {
                    protocol,
                    ranges: Vec::new(),
                });
                classes.len() - 1
            });
            let c = &mut classes[i];
            match c.ranges.last_mut() {
                Some(last) if u32::from(last.1) + 1 == u32::from(a) => last.1 = b,
                _ => c.ranges.push((a, b)),
            }
        }
        out.extend(classes);
    }
    out
}

// === Matrix by groups ===

/// How `matrix --group-by` groups pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Namespace,
    Workload,
}

/// A pod's workload, as `namespace/name`: its `app.kubernetes.io/name` label, else its `app`
/// label, else its name without what controllers append (see [`workload_name`]).
pub fn workload(pod: &Pod) -> String {
    let name = pod
        .labels
        .get("app.kubernetes.io/name")
        .or_else(|| pod.labels.get("app"))
        .cloned()
        .unwrap_or_else(|| workload_name(&pod.name, pod.labels.get("pod-template-hash").map(String::as_str)));
    format!("{}/{name}", pod.namespace)
}

/// A pod's name without what its controller appended: a Deployment's `-<pod-template-hash>-<5>`,
/// a DaemonSet's, Job's or generateName's `-<5>` (5 characters of the alphabet Kubernetes draws
/// generated names from), then a ReplicaSet hash before it (5 to 10 characters of that alphabet,
/// at least one digit); else a StatefulSet's `-<ordinal>`. A name with none of these is its own
/// workload.
pub fn workload_name(name: &str, pod_template_hash: Option<&str>) -> String {
    const ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
    let generated =
        |s: &str, min: usize, max: usize| (min..=max).contains(&s.len()) && s.chars().all(|c| ALPHABET.contains(c));
    if let Some(h) = pod_template_hash.filter(|h| !h.is_empty()) {
        if let Some((rest, _)) = name.rsplit_once('-') {
            if let Some(base) = rest.strip_suffix(h).and_then(|b| b.strip_suffix('-')) {
                if !base.is_empty() {
                    return base.to_string();
                }
            }
        }
    }
    if let Some((rest, last)) = name.rsplit_once('-') {
        if !rest.is_empty() && generated(last, 5, 5) {
            if let Some((base, hash)) = rest.rsplit_once('-') {
                if !base.is_empty() && generated(hash, 5, 10) && hash.chars().any(|c| c.is_ascii_digit()) {
                    return base.to_string();
                }
            }
            return rest.to_string();
        }
        if !rest.is_empty() && !last.is_empty() && last.chars().all(|c| c.is_ascii_digit()) {
            return rest.to_string();
        }
    }
    name.to_string()
}

/// A matrix summed over groups of pods: for each source group and destination group, how many of
/// the pairs (a pod and another pod; a pod to itself is not counted) are allowed. The JSON form:
/// `{"by": "namespace", "groups": [...], "of": [group of each pod], "allowed": [[count]],
/// "pairs": [[count]]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupMatrix {
    pub by: GroupBy,
    pub groups: Vec<String>,
    /// The group of each pod of the matrix, by index into `groups`.
    pub of: Vec<usize>,
    pub allowed: Vec<Vec<usize>>,
    pub pairs: Vec<Vec<usize>>,
}

impl GroupMatrix {
    /// Groups the pods of `m` (named `pods`) by `group[i]`, the group of pod `i`; groups sorted
    /// by name.
    pub fn new(m: &BitMatrix, pods: &[String], by: GroupBy, group: &[String]) -> GroupMatrix {
        let n = m.len();
        let groups: Vec<String> = group
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let of: Vec<usize> = group
            .iter()
            .map(|g| groups.binary_search(g).expect("every pod's group is listed"))
            .collect();
        let k = groups.len();
        let mut members: Vec<Bits> = (0..k).map(|_| Bits::none(n)).collect();
        let mut size = vec![0; k];
        for (i, g) in of.iter().enumerate() {
            members[*g].set(i);
            size[*g] += 1;
        }
        let mut allowed = vec![vec![0; k]; k];
        let mut pairs = vec![vec![0; k]; k];
        for s in 0..n {
            for h in 0..k {
                allowed[of[s]][h] += m.count_in(s, &members[h]);
                pairs[of[s]][h] += size[h];
            }
        }
        // A pod to itself is not a pair (nor another endpoint of the same pod).
        let mut same: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            same.entry(p.as_str()).or_default().push(i);
        }
        for v in same.values() {
            for s in v {
                for d in v {
                    pairs[of[*s]][of[*d]] -= 1;
                    allowed[of[*s]][of[*d]] -= usize::from(m.get(*s, *d));
                }
            }
        }
        GroupMatrix {
            by,
            groups,
            of,
            allowed,
            pairs,
        }
    }

    /// One cell: `all`, `none`, `allowed/pairs` when some are, `-` when there is no pair.
    pub fn cell(&self, s: usize, d: usize) -> String {
        match (self.allowed[s][d], self.pairs[s][d]) {
            (_, 0) => "-".into(),
            (a, p) if a == p => "all".into(),
            (0, _) => "none".into(),
            (a, p) => format!("{a}/{p}"),
        }
    }

    /// Tab-separated as [`Matrix::to_table`]: rows are sources, columns destinations.
    pub fn to_table(&self) -> String {
        let mut out = String::from("-");
        for g in &self.groups {
            out.push('\t');
            out.push_str(g);
        }
        out.push('\n');
        for (i, g) in self.groups.iter().enumerate() {
            out.push_str(g);
            for j in 0..self.groups.len() {
                out.push('\t');
                out.push_str(&self.cell(i, j));
            }
            out.push('\n');
        }
        out
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

    fn and_assign(&mut self, o: &Bits) {
        self.0.iter_mut().zip(&o.0).for_each(|(a, b)| *a &= b);
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

/// What decides a side's walk for one port: the side (direction and distinct isolation), for
/// ingress named ports its own address, and what each of its rules' port matches says.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WalkKey {
    direction: Direction,
    isolation: usize,
    own: Option<IpAddr>,
    /// Per port match, in walk order: 0 no, 1 yes, 2 + port for an egress named port (its peers
    /// depend on the port).
    ports: Vec<u32>,
}

/// The peers each endpoint allows per direction, for one address family, port after port.
/// Bit `j` stands for endpoint `j`'s first address of the family.
#[derive(Debug)]
struct SideSets<'a> {
    ir: &'a Ir,
    /// Each endpoint's first address of the family.
    addrs: Vec<Option<IpAddr>>,
    /// Per endpoint with an address: the endpoint whose policies judge it (the first with the
    /// address), and that endpoint's pod by number.
    owner: Vec<usize>,
    owner_pod: Vec<usize>,
    /// Distinct isolations; per endpoint its egress and ingress isolation there.
    isolations: Vec<&'a Isolation>,
    iso_of: Vec<[usize; 2]>,
    /// Per isolation: whether its ingress walk resolves named ports on the endpoint itself.
    named_ingress: Vec<bool>,
    /// Members of NetworkPolicy sets (`false`) and admin peer sets (`true`).
    peer_bits: HashMap<(bool, &'a str), Bits>,
    /// The current port.
    protocol: Protocol,
    port: u16,
    /// Where each egress named port resolves at the current port.
    named_bits: HashMap<&'a str, Bits>,
    /// Walks done, over all ports: index into `results`.
    walks: HashMap<WalkKey, usize>,
    results: Vec<Bits>,
}

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

impl<'a> SideSets<'a> {
    fn new(ir: &'a Ir, ev: &Evaluator<'a>, family: Family, pod_of: &[usize]) -> Self {
        let addrs: Vec<Option<IpAddr>> = ir
            .endpoints
            .iter()
            .map(|e| e.ips.iter().find(|ip| Family::of(ip) == family).copied())
            .collect();
        let owner: Vec<usize> = addrs
            .iter()
            .enumerate()
            .map(|(j, a)| a.map_or(j, |a| ev.by_ip[&a]))
            .collect();
        let owner_pod = owner.iter().map(|k| pod_of[*k]).collect();
        let mut ids: HashMap<&'a Isolation, usize> = HashMap::new();
        let mut isolations = Vec::new();
        let iso_of = ir
            .endpoints
            .iter()
            .map(|ep| {
                [Direction::Egress, Direction::Ingress].map(|d| {
                    let iso = ep.isolation(d);
                    *ids.entry(iso).or_insert_with(|| {
                        isolations.push(iso);
                        isolations.len() - 1
                    })
                })
            })
            .collect();
        let named = |pm: &PortMatch| matches!(pm, PortMatch::Named { .. });
        let named_ingress = isolations
            .iter()
            .map(|iso: &&Isolation| {
                let d = Direction::Ingress;
                iso.chains
                    .iter()
                    .any(|c| ir.chains[c].rules.iter().any(|r| named(&r.ports)))
                    || iso
                        .admin
                        .iter()
                        .chain(&iso.baseline)
                        .flat_map(|p| ev.admin_rules.get(&(p, d)).into_iter().flatten())
                        .any(|c| ir.admin_rules[*c].ports.iter().any(named))
            })
            .collect();
        Self {
            ir,
            addrs,
            owner,
            owner_pod,
            isolations,
            iso_of,
            named_ingress,
            peer_bits: HashMap::new(),
            protocol: Protocol::Tcp,
            port: 0,
            named_bits: HashMap::new(),
            walks: HashMap::new(),
            results: Vec::new(),
        }
    }

    /// For the port, per endpoint with an address of the family: its egress and ingress
    /// results (indexes into `results`).
    fn sides(&mut self, ev: &Evaluator<'a>, protocol: Protocol, port: u16) -> Vec<Option<(usize, usize)>> {
        self.protocol = protocol;
        self.port = port;
        self.named_bits.clear();
        // Sides that do not depend on their own address, by isolation, for this port.
        let mut by_iso: HashMap<(Direction, usize), usize> = HashMap::new();
        (0..self.addrs.len())
            .map(|j| {
                let at = self.addrs[j]?;
                let k = self.owner[j];
                let [e, i] = [Direction::Egress, Direction::Ingress].map(|d| {
                    let iso = self.iso_of[k][direction_index(d)];
                    let own = (d == Direction::Ingress && self.named_ingress[iso]).then_some(at);
                    if own.is_none() {
                        if let Some(r) = by_iso.get(&(d, iso)) {
                            return *r;
                        }
                    }
                    let r = self.side(ev, d, iso, own);
                    if own.is_none() {
                        by_iso.insert((d, iso), r);
                    }
                    r
                });
                Some((e, i))
            })
            .collect()
    }

    /// The result index of a side at the current port: a walk done before for the same rules'
    /// answers, or a new one.
    fn side(&mut self, ev: &Evaluator<'a>, d: Direction, iso: usize, own: Option<IpAddr>) -> usize {
        let isolation = self.isolations[iso];
        let key = WalkKey {
            direction: d,
            isolation: iso,
            own,
            ports: self.port_answers(ev, isolation, d, own),
        };
        if let Some(i) = self.walks.get(&key) {
            return *i;
        }
        let bits = self.walk(ev, isolation, d, own);
        self.results.push(bits);
        let i = self.results.len() - 1;
        self.walks.insert(key, i);
        i
    }

    /// What every port match the walk consults says at the current port (see [`WalkKey`]).
    fn port_answers(&self, ev: &Evaluator<'a>, iso: &'a Isolation, d: Direction, own: Option<IpAddr>) -> Vec<u32> {
        let answer = |m: &PortMatch| -> u32 {
            match m {
                PortMatch::Any => 1,
                PortMatch::Ports(ranges) => u32::from(ranges.iter().any(|r| r.contains(self.protocol, self.port))),
                PortMatch::Named { set, protocol } => {
                    if *protocol != self.protocol {
                        0
                    } else if d == Direction::Ingress {
                        u32::from(own.is_some_and(|ip| self.ir.port_sets[set].contains(ip, self.port)))
                    } else {
                        2 + u32::from(self.port)
                    }
                }
            }
        };
        let admin = |policies: &'a [AdminRef]| {
            policies
                .iter()
                .flat_map(move |p| ev.admin_rules.get(&(p, d)).into_iter().flatten())
                .flat_map(|c| &self.ir.admin_rules[*c].ports)
        };
        let chains = iso
            .chains
            .iter()
            .flat_map(|c| &self.ir.chains[c].rules)
            .map(|r| &r.ports);
        admin(&iso.admin)
            .chain(chains)
            .chain(admin(&iso.baseline))
            .map(answer)
            .collect()
    }

    /// The tier walk of [`Evaluator::evaluate`] over every peer at once.
    fn walk(&mut self, ev: &Evaluator<'a>, iso: &'a Isolation, d: Direction, own: Option<IpAddr>) -> Bits {
        let n = self.ir.endpoints.len();
        let all = Bits::all(n);
        let mut allow = Bits::none(n);
        // Admin tier: the first matching rule decides; Pass skips to the next tier.
        let mut undecided = all.clone();
        let mut passed = Bits::none(n);
        for (bits, action) in self.admin_rules(ev, &iso.admin, d, own) {
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
                    match self.port(&r.ports, d, own) {
                        PortBits::Yes => {
                            let peers = self.peer(false, &r.peer);
                            any.or_assign(&peers)
                        }
                        PortBits::No => {}
                        PortBits::Peers(p) => {
                            let peers = self.peer(false, &r.peer);
                            any.or_assign(&peers.and(&p))
                        }
                    }
                }
            }
            allow.or_assign(&undecided.and(&any));
            return allow;
        }
        // Baseline tier: first match; Pass and no match are allowed by default.
        for (bits, action) in self.admin_rules(ev, &iso.baseline, d, own) {
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
    fn admin_rules(
        &mut self,
        ev: &Evaluator<'a>,
        policies: &'a [AdminRef],
        d: Direction,
        own: Option<IpAddr>,
    ) -> Vec<(Bits, AdminAction)> {
        let ir = self.ir;
        let mut out = Vec::new();
        for p in policies {
            for chain in ev.admin_rules.get(&(p, d)).into_iter().flatten() {
                let r = &ir.admin_rules[*chain];
                let mut peers = Bits::none(ir.endpoints.len());
                for pm in &r.peers {
                    peers.or_assign(&self.peer(true, pm));
                }
                let mut ports = Bits::none(ir.endpoints.len());
                for pm in &r.ports {
                    match self.port(pm, d, own) {
                        PortBits::Yes => ports = Bits::all(ir.endpoints.len()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_drop_what_controllers_append() {
        let cases = [
            ("coredns-5d78c9869d-x2k4q", None, "coredns"),
            ("web-api-7d4b9c6f5-2xz8q", Some("7d4b9c6f5"), "web-api"),
            ("web-bbbbb-2xz8q", Some("bbbbb"), "web"),
            ("fluentd-x7k2p", None, "fluentd"),
            ("database-0", None, "database"),
            ("kafka-12", None, "kafka"),
            ("redis-cache", None, "redis-cache"),
            ("nginx", None, "nginx"),
            ("frontend-abcde", None, "frontend-abcde"),
        ];
        for (name, hash, want) in cases {
            assert_eq!(workload_name(name, hash), want, "{name}");
        }
    }

    #[test]
    fn transpose_turns_bits_over() {
        for n in [1, 63, 64, 65, 130] {
            let mut rows: Vec<Bits> = (0..n).map(|_| Bits::none(n)).collect();
            for (r, row) in rows.iter_mut().enumerate() {
                for c in 0..n {
                    if (r * 7 + c * 13) % 5 == 0 {
                        row.set(c);
                    }
                }
            }
            let refs: Vec<&Bits> = rows.iter().collect();
            let t = transpose(&refs, n);
            for (r, row) in rows.iter().enumerate() {
                for (c, col) in t.iter().enumerate() {
                    assert_eq!(col.get(r), row.get(c), "n {n}, {r}, {c}");
                }
            }
        }
    }
}
