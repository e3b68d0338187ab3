//! NetworkPolicies resolved into lookups, as the admin tiers are (see `crate::tiers`).
//!
//! An endpoint's NetworkPolicy rules, in the order the chain walk would try them (policies in
//! the endpoint's order, rules in order), are cut into segments at named-port rules (after the
//! numeric ports of the same policy rule, which credit the same counter). A segment
//! becomes a *group*, shared by every endpoint with the same rules:
//!
//! ```text
//!  ep_*      jump npg_*                      one per segment; a named-port rule between two
//!            ip saddr @sel . dport @np goto np_*_R   segments stays a rule (its port is per pod)
//!            counter drop                    the endpoint's denial, as before
//!  npg_*     tcp dport vmap @npp_*_tcp       port range → the class of rules covering it
//!            udp/sctp likewise; other protocols: goto the class of the rules without ports
//!  npc_*     (≤ MAX_LISTED rules)  ip saddr @sel_*_v4 goto np_*_R   one set lookup per rule
//!            (more)  ip saddr vmap @npc_*_v4      selector peers: pod address → first rule
//!                    ip saddr vmap @npc_*_net_v4  ipBlock / any peers: interval → first rule
//!  np_*_R    counter accept comment "ns/policy ingress[R]"   one per policy rule
//! ```
//!
//! A new connection costs the port lookup and at most `MAX_LISTED` set lookups or two map
//! lookups per family, however many policies select the pod (plus one rule per named-port rule).
//! When several rules allow a packet, the first the chain walk would try gets it: the maps hold,
//! per port and peer address, that first rule.
//!
//! Group and class names derive from the rules (policy, rule index, peer set, ports), not from
//! the pods in the sets, so pod churn changes only elements: of the selector sets and of the
//! class maps keyed by pod address (hash maps, updated in place). The `_net` maps hold ipBlocks
//! only, which change with a policy, never with a pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::cidr::{Family, IpRange};
use crate::ir::*;
use crate::model::{Direction, Protocol};

use super::lower::{logged, peer_end, set_name, share_chain, Prev};
use super::model::*;
use super::{comment, labels};
use crate::flows::FlowVerdict;

/// A class of at most this many rules tests one peer set per rule; a larger one looks peers up
/// in maps.
pub const MAX_LISTED: usize = 2;

/// One IR rule as a class holds it: the counter chain it credits and its peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Entry {
    chain: String,
    peer: PeerMatch,
}

#[derive(Debug)]
struct Group {
    direction: Direction,
    /// Per protocol: (first, last, class).
    ports: BTreeMap<Protocol, Vec<(u16, u16, String)>>,
    /// Class of the rules without ports (other protocols).
    other: Option<String>,
}

#[derive(Debug)]
struct Class {
    direction: Direction,
    entries: Vec<Entry>,
}

/// Builds the resolved NetworkPolicy structure of one table while the endpoint chains are
/// lowered.
#[derive(Debug)]
pub(super) struct Resolver<'a> {
    ir: &'a Ir,
    groups: BTreeMap<String, Group>,
    classes: BTreeMap<String, Class>,
    /// Counter chains of policy rules: name → how the comment names the rule.
    rule_chains: BTreeMap<String, String>,
    /// Address sets rules still test (listed classes, named-port rules).
    pub used_sets: BTreeSet<String>,
    /// The rules an endpoint chain gets, by direction and policy chains.
    cache: HashMap<(Direction, Vec<String>), Vec<Rule>>,
}

/// Name of the counter chain of one rule of a policy.
pub fn rule_chain_name(policy_chain: &str, rule: usize) -> String {
    format!("{policy_chain}_r{rule}")
}

impl<'a> Resolver<'a> {
    pub fn new(ir: &'a Ir) -> Self {
        Self {
            ir,
            groups: BTreeMap::new(),
            classes: BTreeMap::new(),
            rule_chains: BTreeMap::new(),
            used_sets: BTreeSet::new(),
            cache: HashMap::new(),
        }
    }

    /// The rules of an isolated endpoint chain that allow (before its final drop).
    pub fn endpoint_rules(&mut self, iso: &Isolation, d: Direction) -> Vec<Rule> {
        let key = (d, iso.chains.clone());
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let ir = self.ir;
        let mut out = Vec::new();
        let mut segment: Vec<(String, &IrRule)> = Vec::new();
        for name in &iso.chains {
            let chain = &ir.chains[name];
            // The IR rules of one policy rule credit the same counter, so their order among
            // themselves does not matter: numeric ports first keeps segments long.
            let mut rules: Vec<&IrRule> = chain.rules.iter().collect();
            rules.sort_by_key(|r| (r.rule, matches!(r.ports, PortMatch::Named { .. })));
            for r in rules {
                let counter = rule_chain_name(name, r.rule);
                self.rule_chains
                    .entry(counter.clone())
                    .or_insert_with(|| labels::policy_rule(chain, r));
                if matches!(r.ports, PortMatch::Named { .. }) {
                    self.flush(d, &mut segment, &mut out);
                    out.extend(self.named_rule(d, r, &counter));
                } else {
                    segment.push((counter, r));
                }
            }
        }
        self.flush(d, &mut segment, &mut out);
        self.cache.insert(key, out.clone());
        out
    }

    fn flush(&mut self, d: Direction, segment: &mut Vec<(String, &IrRule)>, out: &mut Vec<Rule>) {
        if segment.is_empty() {
            return;
        }
        let name = self.group(d, segment);
        segment.clear();
        out.push(Rule::always(false, Verdict::Jump(name), None));
    }

    /// A named-port rule, tested where it stands in the walk.
    fn named_rule(&mut self, d: Direction, r: &IrRule, counter: &str) -> Vec<Rule> {
        let PortMatch::Named { set, protocol } = &r.ports else {
            unreachable!("named ports only")
        };
        let families: Vec<Family> = match &r.peer {
            PeerMatch::Set(s) => {
                self.used_sets.insert(s.clone());
                self.ir.sets[s].families.clone()
            }
            PeerMatch::Any => vec![Family::V4, Family::V6],
        };
        families
            .into_iter()
            .map(|f| {
                let mut matches = Vec::new();
                if let PeerMatch::Set(s) = &r.peer {
                    matches.push(Match::AddrInSet {
                        family: f,
                        end: peer_end(d),
                        set: set_name(s, f),
                    });
                }
                matches.push(Match::AddrDportInSet {
                    family: f,
                    protocol: *protocol,
                    set: set_name(set, f),
                });
                Rule {
                    matches,
                    counter: false,
                    log: None,
                    action: Action::Verdict(Verdict::Goto(counter.to_string())),
                    comment: None,
                }
            })
            .collect()
    }

    /// The group of a segment of rules without named ports: its port classes.
    fn group(&mut self, d: Direction, segment: &[(String, &IrRule)]) -> String {
        let id: Vec<(&str, &PeerMatch, &PortMatch)> =
            segment.iter().map(|(c, r)| (c.as_str(), &r.peer, &r.ports)).collect();
        let name = format!("npg_{}_{}", short_hash(&format!("{d} {id:?}")), d.suffix());
        if self.groups.contains_key(&name) {
            return name;
        }
        let covers = |r: &IrRule, p: Protocol, port: u16| match &r.ports {
            PortMatch::Any => true,
            PortMatch::Ports(rs) => rs.iter().any(|x| x.contains(p, port)),
            PortMatch::Named { .. } => false,
        };
        let mut ports = BTreeMap::new();
        for p in Protocol::ALL {
            let mut bounds: BTreeSet<u32> = BTreeSet::from([0]);
            for (_, r) in segment {
                if let PortMatch::Ports(rs) = &r.ports {
                    for x in rs.iter().filter(|x| x.protocol == p) {
                        bounds.insert(u32::from(x.first));
                        bounds.insert(u32::from(x.last) + 1);
                    }
                }
            }
            let bounds: Vec<u32> = bounds.into_iter().filter(|b| *b <= u32::from(u16::MAX)).collect();
            let mut out: Vec<(u16, u16, String)> = Vec::new();
            for (i, &b) in bounds.iter().enumerate() {
                let first = b as u16;
                let last = bounds.get(i + 1).map_or(u16::MAX, |n| (n - 1) as u16);
                let entries: Vec<Entry> = segment
                    .iter()
                    .filter(|(_, r)| covers(r, p, first))
                    .map(|(c, r)| Entry {
                        chain: c.clone(),
                        peer: r.peer.clone(),
                    })
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                let class = self.class(d, entries);
                match out.last_mut() {
                    Some(o) if o.2 == class && u32::from(o.1) + 1 == u32::from(first) => o.1 = last,
                    _ => out.push((first, last, class)),
                }
            }
            if !out.is_empty() {
                ports.insert(p, out);
            }
        }
        let any: Vec<Entry> = segment
            .iter()
            .filter(|(_, r)| r.ports == PortMatch::Any)
            .map(|(c, r)| Entry {
                chain: c.clone(),
                peer: r.peer.clone(),
            })
            .collect();
        let other = (!any.is_empty()).then(|| self.class(d, any));
        self.groups.insert(
            name.clone(),
            Group {
                direction: d,
                ports,
                other,
            },
        );
        name
    }

    /// The class of an ordered list of rules (all covering the same ports).
    fn class(&mut self, d: Direction, mut entries: Vec<Entry>) -> String {
        // Nothing after a rule that admits every peer is ever reached; a repeated entry neither.
        if let Some(i) = entries.iter().position(|e| e.peer == PeerMatch::Any) {
            entries.truncate(i + 1);
        }
        let mut seen = BTreeSet::new();
        entries.retain(|e| seen.insert(e.clone()));
        let name = format!("npc_{}_{}", short_hash(&format!("{d} {entries:?}")), d.suffix());
        if !self.classes.contains_key(&name) {
            if entries.len() <= MAX_LISTED {
                for e in &entries {
                    if let PeerMatch::Set(s) = &e.peer {
                        self.used_sets.insert(s.clone());
                    }
                }
            }
            self.classes.insert(name.clone(), Class { direction: d, entries });
        }
        name
    }

    fn is_selector(&self, p: &PeerMatch) -> bool {
        matches!(p, PeerMatch::Set(s) if self.ir.sets[s].kind == SetKind::Selector)
    }

    fn contains(&self, p: &PeerMatch, ip: &std::net::IpAddr) -> bool {
        match p {
            PeerMatch::Any => true,
            PeerMatch::Set(s) => self.ir.sets[s].contains(ip),
        }
    }

    /// Selector peers of a class: each pod address → the first rule whose peer holds it.
    fn pod_map(&self, class: &Class, f: Family) -> Vec<Element> {
        let mut first: BTreeMap<u128, &str> = BTreeMap::new();
        for (i, e) in class.entries.iter().enumerate() {
            let PeerMatch::Set(s) = &e.peer else { continue };
            let set = &self.ir.sets[s];
            if set.kind != SetKind::Selector {
                continue;
            }
            for r in set.members_of(f) {
                for v in r.start..=r.end {
                    if first.contains_key(&v) {
                        continue;
                    }
                    let ip = IpRange {
                        family: f,
                        start: v,
                        end: v,
                    }
                    .first();
                    // An earlier ipBlock (or any-peer) rule holding the address comes first.
                    let winner = class.entries[..i]
                        .iter()
                        .find(|x| !self.is_selector(&x.peer) && self.contains(&x.peer, &ip))
                        .unwrap_or(e);
                    first.insert(v, winner.chain.as_str());
                }
            }
        }
        first
            .into_iter()
            .map(|(v, chain)| Element {
                key: Key::Addr(IpRange {
                    family: f,
                    start: v,
                    end: v,
                }),
                verdict: Some(Verdict::Goto(chain.to_string())),
            })
            .collect()
    }

    /// ipBlock and any peers of a class: disjoint address intervals → the first rule.
    fn net_map(&self, class: &Class, f: Family) -> Vec<Element> {
        let max = match f {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        };
        let mut cover: Vec<(&str, Vec<IpRange>)> = Vec::new();
        let mut bounds: BTreeSet<u128> = BTreeSet::new();
        for e in &class.entries {
            let ranges: Vec<IpRange> = match &e.peer {
                PeerMatch::Any => vec![IpRange {
                    family: f,
                    start: 0,
                    end: max,
                }],
                p if self.is_selector(p) => continue,
                PeerMatch::Set(s) => self.ir.sets[s].members_of(f).copied().collect(),
            };
            for r in &ranges {
                bounds.insert(r.start);
                if r.end < max {
                    bounds.insert(r.end + 1);
                }
            }
            cover.push((e.chain.as_str(), ranges));
        }
        let bounds: Vec<u128> = bounds.into_iter().collect();
        let mut out: Vec<(IpRange, &str)> = Vec::new();
        for (i, &start) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).map_or(max, |n| n - 1);
            let Some((chain, _)) = cover.iter().find(|(_, rs)| {
                let k = rs.partition_point(|r| r.start <= start);
                k > 0 && rs[k - 1].end >= start
            }) else {
                continue;
            };
            match out.last_mut() {
                Some((r, c)) if c == chain && r.end + 1 == start => r.end = end,
                _ => out.push((IpRange { family: f, start, end }, chain)),
            }
        }
        out.into_iter()
            .map(|(r, c)| Element {
                key: Key::Addr(r),
                verdict: Some(Verdict::Goto(c.to_string())),
            })
            .collect()
    }

    /// Whether every address set `class` looks up is the same in `prev`'s IR as now: then its
    /// chain and maps (named after its rules) are what `prev` holds under those names.
    fn same_sets(&self, prev: &Prev<'_>, class: &Class) -> bool {
        class.entries.iter().all(|e| match &e.peer {
            PeerMatch::Any => true,
            PeerMatch::Set(s) => prev.ir.sets.get(s) == self.ir.sets.get(s),
        })
    }

    /// The maps and chains of every group, class and rule used. Group and class names derive
    /// from their rules, so an object `prev` holds under the same name is taken over (the same
    /// `Arc`) when what else it is lowered from is unchanged: nothing for a group, the address
    /// sets of its rules for a class. Pod churn then lowers only the classes whose sets changed.
    pub fn finish(self, prev: Option<&Prev<'_>>) -> (Vec<Arc<Set>>, Vec<Arc<Chain>>) {
        let mut sets: Vec<Arc<Set>> = Vec::new();
        let mut chains: Vec<Arc<Chain>> = Vec::new();
        let old_set = |name: &str| prev.and_then(|p| p.sets.get(name)).map(|s| Arc::clone(s));
        let old_chain = |name: &str| prev.and_then(|p| p.chains.get(name)).map(|c| Arc::clone(c));
        let mut port_maps = BTreeSet::new();
        for (name, g) in &self.groups {
            let mut rules = Vec::new();
            for (p, entries) in &g.ports {
                // Named after its elements, not after the group: groups that send a protocol's
                // ports to the same classes share the map, and a group that changes (a policy
                // comes or goes for its endpoints) keeps the maps of the protocols it does not
                // change.
                let map = format!(
                    "npp_{}_{}_{}",
                    short_hash(&format!("{} {p} {entries:?}", g.direction)),
                    g.direction.suffix(),
                    p.as_str().to_ascii_lowercase()
                );
                rules.push(Rule {
                    matches: Vec::new(),
                    counter: false,
                    log: None,
                    action: Action::Vmap {
                        key: VmapKey::Dport(*p),
                        map: map.clone(),
                    },
                    comment: None,
                });
                if !port_maps.insert(map.clone()) {
                    continue;
                }
                sets.push(old_set(&map).unwrap_or_else(|| {
                    Arc::new(Set {
                        name: map.clone(),
                        key: KeyType::InetService,
                        verdict_map: true,
                        interval: true,
                        comment: Some(comment(&format!("NetworkPolicy {} {p}: port -> rules", g.direction))),
                        elements: entries
                            .iter()
                            .map(|(a, b, c)| Element {
                                key: Key::Ports(*a, *b),
                                verdict: Some(Verdict::Goto(c.clone())),
                            })
                            .collect(),
                    })
                }));
            }
            if let Some(other) = &g.other {
                rules.push(Rule::always(false, Verdict::Goto(other.clone()), None));
            }
            chains.push(old_chain(name).unwrap_or_else(|| {
                Arc::new(Chain {
                    name: name.clone(),
                    hook: None,
                    rules,
                })
            }));
        }
        for (name, c) in &self.classes {
            let same = prev.is_some_and(|p| self.same_sets(p, c));
            let (class_sets, chain) = match old_chain(name).filter(|_| same) {
                Some(chain) => {
                    // The maps its rules look up, by name, from the previous table.
                    let maps = chain.rules.iter().filter_map(|r| match &r.action {
                        Action::Vmap { map, .. } => old_set(map),
                        _ => None,
                    });
                    (maps.collect::<Vec<_>>(), chain)
                }
                None => {
                    let (maps, chain) = self.class_objects(name, c);
                    (maps.into_iter().map(Arc::new).collect(), Arc::new(chain))
                }
            };
            sets.extend(class_sets);
            chains.push(chain);
        }
        for (name, text) in &self.rule_chains {
            let accept = Rule::always(true, Verdict::Accept, Some(comment(text)));
            let chain = Chain {
                name: name.clone(),
                hook: None,
                rules: logged(self.ir, FlowVerdict::Allowed, text, accept),
            };
            chains.push(share_chain(prev, chain));
        }
        (sets, chains)
    }

    /// A class's chain and maps: a set test per rule for a short class, else the pod address
    /// map and the network interval map of each family.
    fn class_objects(&self, name: &str, c: &Class) -> (Vec<Set>, Chain) {
        let mut sets = Vec::new();
        let end = peer_end(c.direction);
        let mut rules = Vec::new();
        if c.entries.len() <= MAX_LISTED {
            for e in &c.entries {
                match &e.peer {
                    PeerMatch::Any => rules.push(Rule::always(false, Verdict::Goto(e.chain.clone()), None)),
                    PeerMatch::Set(s) => {
                        for f in &self.ir.sets[s].families {
                            rules.push(Rule {
                                matches: vec![Match::AddrInSet {
                                    family: *f,
                                    end,
                                    set: set_name(s, *f),
                                }],
                                counter: false,
                                log: None,
                                action: Action::Verdict(Verdict::Goto(e.chain.clone())),
                                comment: None,
                            });
                        }
                    }
                }
            }
        } else {
            let selectors = c.entries.iter().any(|e| self.is_selector(&e.peer));
            for f in [Family::V4, Family::V6] {
                let mut maps = Vec::new();
                if selectors {
                    maps.push((format!("{name}_{}", f.suffix()), false, self.pod_map(c, f)));
                }
                let net = self.net_map(c, f);
                if !net.is_empty() {
                    maps.push((format!("{name}_net_{}", f.suffix()), true, net));
                }
                for (map, interval, elements) in maps {
                    sets.push(Set {
                        name: map.clone(),
                        key: KeyType::Addr(f),
                        verdict_map: true,
                        interval,
                        comment: Some(comment(&format!(
                            "NetworkPolicy {}: peer {} -> first rule",
                            c.direction,
                            if interval { "network" } else { "pod" }
                        ))),
                        elements,
                    });
                    rules.push(Rule {
                        matches: Vec::new(),
                        counter: false,
                        log: None,
                        action: Action::Vmap {
                            key: VmapKey::Addr(f, end),
                            map,
                        },
                        comment: None,
                    });
                }
            }
        }
        (
            sets,
            Chain {
                name: name.to_string(),
                hook: None,
                rules,
            },
        )
    }
}
