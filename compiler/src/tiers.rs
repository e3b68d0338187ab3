//! Admin tiers in the IR: the rules of ClusterNetworkPolicy, AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy, and the decision tables the ruleset looks them up in.
//!
//! Within a tier the first matching rule decides (policies by priority, rules in the order
//! written). Walking every rule per packet would cost O(rules), so the compiler resolves the
//! first match ahead of time, for each endpoint's ordered list of policies:
//!
//! ```text
//!  TierTable (one per distinct decision, shared by endpoints)
//!   v4 / v6:   peer address range → Target          (disjoint ranges: an interval verdict map)
//!   Target:    Rule(ar_*)      every port and protocol decided by one rule
//!              Class(pc_*)     PortClass: per protocol, port range → rule; other protocols → rule
//!   ar_* chain one per admin rule: counter + accept | drop | return (Pass), commented with the rule
//! ```
//!
//! A packet costs two or three map lookups whatever the number of admin rules. Addresses no rule
//! matches, and Pass, return to the endpoint chain, which goes on with the next tier.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::cidr::{Family, IpRange};
use crate::ir::{short_hash, AddrSet, PeerMatch, PortMatch};
use crate::model::*;

/// One admin rule as compiled. Its chain (`ar_*`) counts and decides.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AdminRuleIr {
    pub policy: AdminRef,
    pub tier: Tier,
    pub priority: i32,
    pub direction: Direction,
    /// Index in the policy's `ingress` / `egress` list.
    pub rule: usize,
    pub name: Option<String>,
    pub action: AdminAction,
    /// Address sets (in `Ir::tier_sets`) or `Any`; empty = the rule matches nothing.
    pub peers: Vec<PeerMatch>,
    /// `Any` when the rule has no ports.
    pub ports: Vec<PortMatch>,
}

impl AdminRuleIr {
    /// How explain names the rule: `cnp/x ingress[0] "name"`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {}[{}] \"{n}\"", self.policy, self.direction, self.rule),
            None => format!("{} {}[{}]", self.policy, self.direction, self.rule),
        }
    }
}

impl AdminRuleIr {
    /// How ruleset comments and metrics name the rule (no quotes, which iptables-save
    /// escapes): `cnp/x ingress[0] (name)`.
    pub fn comment_label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {}[{}] ({n})", self.policy, self.direction, self.rule),
            None => format!("{} {}[{}]", self.policy, self.direction, self.rule),
        }
    }
}

/// Name of an admin rule's chain.
pub fn admin_rule_chain_name(policy: &AdminRef, d: Direction, rule: usize) -> String {
    format!("ar_{}", short_hash(&format!("{policy} {d} {rule}")))
}

/// Where a peer address goes in a tier table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "chain")]
pub enum Target {
    /// One rule decides every port and protocol: its `ar_*` chain.
    Rule(String),
    /// Ports decide: a `pc_*` chain (`Ir::port_classes`).
    Class(String),
}

impl Target {
    pub fn chain(&self) -> &str {
        match self {
            Target::Rule(c) | Target::Class(c) => c,
        }
    }
}

/// The first-match decision of one tier for one endpoint and direction, by peer address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TierTable {
    pub tier: Tier,
    pub direction: Direction,
    /// Sorted, disjoint.
    pub v4: Vec<(IpRange, Target)>,
    pub v6: Vec<(IpRange, Target)>,
}

impl TierTable {
    pub fn entries(&self, f: Family) -> &[(IpRange, Target)] {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The target for a peer address, if any rule of the tier matches that address.
    pub fn lookup(&self, ip: &IpAddr) -> Option<&Target> {
        let entries = self.entries(Family::of(ip));
        let key = IpRange::single(*ip);
        let i = entries.partition_point(|(r, _)| r.start <= key.start);
        (i > 0 && entries[i - 1].0.contains(ip)).then(|| &entries[i - 1].1)
    }
}

/// A port range decided by one rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortOutcome {
    pub first: u16,
    pub last: u16,
    /// The deciding rule's `ar_*` chain.
    pub rule: String,
}

/// For one set of peer addresses: which rule decides each port of each protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortClass {
    pub tcp: Vec<PortOutcome>,
    pub udp: Vec<PortOutcome>,
    pub sctp: Vec<PortOutcome>,
    /// Protocols other than TCP, UDP and SCTP (ICMP, ...): only rules without ports match them.
    pub other: Option<String>,
}

impl PortClass {
    pub fn protocol(&self, p: Protocol) -> &[PortOutcome] {
        match p {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
            Protocol::Sctp => &self.sctp,
        }
    }

    fn protocol_mut(&mut self, p: Protocol) -> &mut Vec<PortOutcome> {
        match p {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
            Protocol::Sctp => &mut self.sctp,
        }
    }

    /// The single rule deciding everything, if one does.
    fn uniform(&self) -> Option<&str> {
        let other = self.other.as_deref()?;
        Protocol::ALL
            .iter()
            .all(|p| matches!(self.protocol(*p), [o] if o.first == 0 && o.last == u16::MAX && o.rule == other))
            .then_some(other)
    }

    /// The rule deciding a port of a protocol.
    pub fn lookup(&self, p: Protocol, port: u16) -> Option<&str> {
        self.protocol(p)
            .iter()
            .find(|o| (o.first..=o.last).contains(&port))
            .map(|o| o.rule.as_str())
    }
}

/// Name of a port class's chain.
pub fn port_class_name(c: &PortClass) -> String {
    format!("pc_{}", short_hash(&format!("{c:?}")))
}

/// What a flattening needs to know besides the rules.
pub(crate) struct FlattenCtx<'a> {
    /// The rules' peer sets, by name.
    pub sets: BTreeMap<&'a str, &'a AddrSet>,
    /// The members of the rules' named-port sets, by set name.
    pub port_sets: BTreeMap<&'a str, &'a [(IpAddr, u16)]>,
    /// For ingress: the endpoint's own addresses, where its named ports resolve. `None` for
    /// egress, where a named port resolves on the destination (the peer address).
    pub dst_ips: Option<&'a [IpAddr]>,
}

fn family_max(f: Family) -> u128 {
    match f {
        Family::V4 => u32::MAX as u128,
        Family::V6 => u128::MAX,
    }
}

/// Resolves the first match of `rules` (in evaluation order) for every peer address of one
/// family. Port classes it needs are added to `classes`.
pub(crate) fn flatten(
    rules: &[(&str, &AdminRuleIr)],
    ctx: &FlattenCtx<'_>,
    f: Family,
    classes: &mut BTreeMap<String, PortClass>,
) -> Vec<(IpRange, Target)> {
    let max = family_max(f);
    // Each rule's peer addresses, and the addresses where its named ports resolve (egress).
    let mut cover: Vec<Vec<IpRange>> = Vec::with_capacity(rules.len());
    let mut bounds: BTreeSet<u128> = BTreeSet::new();
    let push_bounds = |start: u128, end: u128, bounds: &mut BTreeSet<u128>| {
        bounds.insert(start);
        if end < max {
            bounds.insert(end + 1);
        }
    };
    for (_, r) in rules {
        let mut ranges = Vec::new();
        for p in &r.peers {
            match p {
                PeerMatch::Any => ranges.push(IpRange {
                    family: f,
                    start: 0,
                    end: max,
                }),
                PeerMatch::Set(s) => ranges.extend(ctx.sets[s.as_str()].members_of(f).copied()),
            }
        }
        let ranges = crate::cidr::normalize(ranges);
        for r in &ranges {
            push_bounds(r.start, r.end, &mut bounds);
        }
        if ctx.dst_ips.is_none() {
            for pm in &r.ports {
                if let PortMatch::Named { set, .. } = pm {
                    for (ip, _) in ctx.port_sets[set.as_str()] {
                        if Family::of(ip) == f {
                            let v = IpRange::single(*ip).start;
                            push_bounds(v, v, &mut bounds);
                        }
                    }
                }
            }
        }
        cover.push(ranges);
    }

    let bounds: Vec<u128> = bounds.into_iter().collect();
    let mut out: Vec<(IpRange, Target)> = Vec::new();
    for (i, &start) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).map_or(max, |n| n - 1);
        let matching: Vec<usize> = (0..rules.len())
            .filter(|&ri| {
                let c = &cover[ri];
                let k = c.partition_point(|r| r.start <= start);
                k > 0 && c[k - 1].end >= start
            })
            .collect();
        if matching.is_empty() {
            continue;
        }
        let peer_ip = (start == end).then(|| IpRange { family: f, start, end }.first());
        let class = port_class(rules, &matching, ctx, peer_ip);
        let target = match class.uniform() {
            Some(rule) => Target::Rule(rule.to_string()),
            None if class == PortClass::default() => continue,
            None => {
                let name = port_class_name(&class);
                classes.entry(name.clone()).or_insert(class);
                Target::Class(name)
            }
        };
        match out.last_mut() {
            Some((r, t)) if *t == target && r.end + 1 == start => r.end = end,
            _ => out.push((IpRange { family: f, start, end }, target)),
        }
    }
    out
}

/// First match by port among the rules that match a peer address.
fn port_class(
    rules: &[(&str, &AdminRuleIr)],
    matching: &[usize],
    ctx: &FlattenCtx<'_>,
    peer_ip: Option<IpAddr>,
) -> PortClass {
    let mut remaining: BTreeMap<Protocol, Vec<(u16, u16)>> =
        Protocol::ALL.iter().map(|p| (*p, vec![(0, u16::MAX)])).collect();
    let mut class = PortClass::default();
    for &ri in matching {
        let (chain, rule) = rules[ri];
        for pm in &rule.ports {
            match pm {
                PortMatch::Any => {
                    for p in Protocol::ALL {
                        claim(&mut remaining, &mut class, p, 0, u16::MAX, chain);
                    }
                    if class.other.is_none() {
                        class.other = Some(chain.to_string());
                    }
                }
                PortMatch::Ports(ranges) => {
                    for r in ranges {
                        claim(&mut remaining, &mut class, r.protocol, r.first, r.last, chain);
                    }
                }
                PortMatch::Named { set, protocol } => {
                    let at: Vec<u16> = match (ctx.dst_ips, peer_ip) {
                        (Some(dst), _) => ctx.port_sets[set.as_str()]
                            .iter()
                            .filter(|(ip, _)| dst.contains(ip))
                            .map(|(_, p)| *p)
                            .collect(),
                        (None, Some(peer)) => ctx.port_sets[set.as_str()]
                            .iter()
                            .filter(|(ip, _)| *ip == peer)
                            .map(|(_, p)| *p)
                            .collect(),
                        (None, None) => Vec::new(),
                    };
                    for port in at {
                        claim(&mut remaining, &mut class, *protocol, port, port, chain);
                    }
                }
            }
        }
        if class.other.is_some() && remaining.values().all(Vec::is_empty) {
            break;
        }
    }
    for p in Protocol::ALL {
        let v = class.protocol_mut(p);
        v.sort_by_key(|o| o.first);
        let mut merged: Vec<PortOutcome> = Vec::with_capacity(v.len());
        for o in v.drain(..) {
            match merged.last_mut() {
                Some(m) if m.rule == o.rule && m.last as u32 + 1 == o.first as u32 => m.last = o.last,
                _ => merged.push(o),
            }
        }
        *v = merged;
    }
    class
}

/// Gives the still-undecided part of `first..=last` of a protocol to `rule`.
fn claim(
    remaining: &mut BTreeMap<Protocol, Vec<(u16, u16)>>,
    class: &mut PortClass,
    p: Protocol,
    first: u16,
    last: u16,
    rule: &str,
) {
    let rem = remaining.get_mut(&p).expect("every protocol");
    let mut next = Vec::with_capacity(rem.len() + 1);
    for &(a, b) in rem.iter() {
        if b < first || a > last {
            next.push((a, b));
            continue;
        }
        let (ca, cb) = (a.max(first), b.min(last));
        class.protocol_mut(p).push(PortOutcome {
            first: ca,
            last: cb,
            rule: rule.to_string(),
        });
        if a < ca {
            next.push((a, ca - 1));
        }
        if cb < b {
            next.push((cb + 1, b));
        }
    }
    *rem = next;
}
