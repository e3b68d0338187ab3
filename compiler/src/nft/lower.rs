//! The one lowering: IR → [`Table`]. Every layout decision of the ruleset lives here: names of
//! sets, maps and chains, their order, the base chains and their hooks, every comment and every
//! verdict. The printer and the netlink writer only spell out what this builds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::cidr::{Family, IpRange};
use crate::flows::FlowVerdict;
use crate::ir::*;
use crate::model::{AdminAction, Direction, ObjectRef, Protocol};
use crate::render::{CUT_COMMENT, CUT_MARK, SEEN_MARK};

use super::model::*;
use super::np::Resolver;
use super::{comment, labels};

/// Lowers a node's (or the whole cluster's) IR into the nftables model; an IR whose parts name
/// something it does not hold ([`Ir::validate`]) is refused, never half-lowered.
pub fn lower(ir: &Ir) -> Result<Table, IrError> {
    lower_after(None, ir)
}

/// [`lower`], taking over from `prev` (an IR and the table lowered from it) every set, map and
/// chain whose IR parts are equal: the same `Arc`, neither lowered nor compared again. The agent
/// lowers each sync this way; on a large node a change touches a few of many parts, and whoever
/// compares two tables (the netlink writer) skips shared parts by pointer.
pub fn lower_after(prev: Option<(&Ir, &Table)>, ir: &Ir) -> Result<Table, IrError> {
    ir.validate()?;
    Ok(lower_valid(prev, ir))
}

/// The bridge attachment's `table bridge policyc`: the per-port source guard, and the drop of
/// bridged pod traffic that the `inet` table did not see. `None` for the Canal attachment, whose
/// guard sits in the `inet` table. Small (a chain per local pod), so it is always lowered whole.
pub fn lower_bridge(ir: &Ir) -> Result<Option<Table>, IrError> {
    ir.validate()?;
    let Attachment::Bridge { .. } = &ir.attachment else {
        return Ok(None);
    };
    let mut sets = vec![guard_map(ir)];
    for f in [Family::V4, Family::V6] {
        sets.push(Set {
            name: set_name(LOCAL_PODS, f),
            key: KeyType::Addr(f),
            verdict_map: false,
            interval: false,
            comment: Some(comment("addresses of this node's pods")),
            elements: local_addrs(ir, f)
                .into_iter()
                .map(|ip| Element::key(Key::Addr(IpRange::single(ip))))
                .collect(),
        });
    }
    let mut prerouting = vec![guard_dispatch()];
    let mut forward = Vec::new();
    for f in [Family::V4, Family::V6] {
        // Ports the guard map does not know yet: their pods' addresses are not known either, but
        // they must not send as a pod this node knows.
        let unknown_port = Rule {
            matches: vec![Match::AddrInSet {
                family: f,
                end: End::Source,
                set: set_name(LOCAL_PODS, f),
            }],
            counter: true,
            log: None,
            action: Action::Verdict(Verdict::Drop),
            comment: Some(comment(labels::SPOOFED_UNKNOWN_PORT)),
        };
        prerouting.extend(logged(
            ir,
            FlowVerdict::Denied,
            labels::SPOOFED_UNKNOWN_PORT,
            unknown_port,
        ));
        for end in [End::Source, End::Destination] {
            forward.push(Rule {
                matches: vec![
                    Match::MarkClear(SEEN_MARK),
                    Match::AddrInSet {
                        family: f,
                        end,
                        set: set_name(LOCAL_PODS, f),
                    },
                ],
                counter: true,
                log: None,
                action: Action::Verdict(Verdict::Drop),
                comment: Some(comment(labels::UNSEEN_BRIDGED)),
            });
        }
    }
    let mut chains = vec![
        Chain {
            name: "prerouting_guard".into(),
            hook: Some(BaseHook {
                hook: Hook::Prerouting,
                priority: 0,
            }),
            rules: prerouting,
        },
        // After br_netfilter's forward hook (priority -1), which runs the inet forward chains.
        Chain {
            name: "forward_unseen".into(),
            hook: Some(BaseHook {
                hook: Hook::Forward,
                priority: 201,
            }),
            rules: forward,
        },
    ];
    chains.extend(
        ir.endpoints
            .iter()
            .filter(|ep| !ep.interface.is_empty())
            .map(|ep| guard_chain(ir, ep, true)),
    );
    Ok(Some(Table {
        family: TableFamily::Bridge,
        summary: format!(
            "policyc bridge guard for {}: {} pod ports",
            ir.node
                .as_deref()
                .map(|n| format!("node {n}"))
                .unwrap_or_else(|| "all endpoints".into()),
            ir.endpoints.iter().filter(|ep| !ep.interface.is_empty()).count()
        ),
        sets: sets.into_iter().map(Arc::new).collect(),
        chains: chains.into_iter().map(Arc::new).collect(),
    }))
}

/// The source guard's map: pod interface → `goto guard_<pod>`.
const GUARD_MAP: &str = "source_guard";
/// The bridge table's sets of local pod addresses (`local_pods_v4`, `_v6`).
const LOCAL_PODS: &str = "local_pods";

fn local_addrs(ir: &Ir, f: Family) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = ir
        .endpoints
        .iter()
        .flat_map(|ep| ep.ips.iter().copied())
        .filter(|ip| Family::of(ip) == f)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn guard_map(ir: &Ir) -> Set {
    Set {
        name: GUARD_MAP.into(),
        key: KeyType::Ifname,
        verdict_map: true,
        interval: false,
        comment: None,
        elements: ir
            .endpoints
            .iter()
            .filter(|ep| !ep.interface.is_empty())
            .map(|ep| Element {
                key: Key::Ifname(ep.interface.clone()),
                verdict: Some(Verdict::Goto(ep.guard_chain_name())),
            })
            .collect(),
    }
}

/// A pod's source guard: its own addresses (and IPv6 link-local and unspecified sources, for
/// neighbour discovery) pass; on a bridge, so do ARP packets sent as itself; everything else from
/// its interface is dropped, counted and named.
fn guard_chain(ir: &Ir, ep: &Endpoint, bridge: bool) -> Chain {
    let mut rules = Vec::new();
    let accept = |m: Match| Rule {
        matches: vec![m],
        counter: false,
        log: None,
        action: Action::Verdict(Verdict::Accept),
        comment: None,
    };
    for f in [Family::V4, Family::V6] {
        let own: Vec<IpAddr> = ep.ips.iter().filter(|ip| Family::of(ip) == f).copied().collect();
        if !own.is_empty() {
            rules.push(accept(Match::AddrIn {
                family: f,
                end: End::Source,
                addrs: own,
            }));
        }
    }
    rules.push(accept(link_local_source()));
    rules.push(accept(Match::AddrIn {
        family: Family::V6,
        end: End::Source,
        addrs: vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
    }));
    if bridge {
        let mut own: Vec<Ipv4Addr> = ep
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        // ARP probes (duplicate address detection) are sent from 0.0.0.0.
        own.push(Ipv4Addr::UNSPECIFIED);
        rules.push(accept(Match::ArpSenderIn(own)));
    }
    let text = labels::spoofed(ep);
    rules.extend(logged(
        ir,
        FlowVerdict::Denied,
        &text,
        Rule::always(true, Verdict::Drop, Some(comment(&text))),
    ));
    Chain {
        name: ep.guard_chain_name(),
        hook: None,
        rules,
    }
}

/// The parts of a previous lowering, by name, and the IR they came from.
pub(super) struct Prev<'a> {
    pub(super) ir: &'a Ir,
    pub(super) sets: HashMap<&'a str, &'a Arc<Set>>,
    pub(super) chains: HashMap<&'a str, &'a Arc<Chain>>,
    endpoints: HashMap<&'a ObjectRef, &'a Endpoint>,
}

impl<'a> Prev<'a> {
    fn new((ir, table): (&'a Ir, &'a Table)) -> Prev<'a> {
        Prev {
            ir,
            sets: table.sets.iter().map(|s| (s.name.as_str(), s)).collect(),
            chains: table.chains.iter().map(|c| (c.name.as_str(), c)).collect(),
            endpoints: ir.endpoints.iter().map(|e| (&e.pod, e)).collect(),
        }
    }
}

/// The previous set named `name` when `same` (its IR part is unchanged), else `lower()`.
fn set_or(prev: Option<&Prev<'_>>, same: bool, name: &str, lower: impl FnOnce() -> Set) -> Arc<Set> {
    match prev.filter(|_| same).and_then(|p| p.sets.get(name)) {
        Some(s) => Arc::clone(s),
        None => Arc::new(lower()),
    }
}

fn chain_or(prev: Option<&Prev<'_>>, same: bool, name: &str, lower: impl FnOnce() -> Chain) -> Arc<Chain> {
    match prev.filter(|_| same).and_then(|p| p.chains.get(name)) {
        Some(c) => Arc::clone(c),
        None => Arc::new(lower()),
    }
}

/// `chain`, or the previous table's equal chain of that name (shared, so compared by pointer
/// later).
pub(super) fn share_chain(prev: Option<&Prev<'_>>, chain: Chain) -> Arc<Chain> {
    match prev.and_then(|p| p.chains.get(chain.name.as_str())) {
        Some(c) if ***c == chain => Arc::clone(c),
        _ => Arc::new(chain),
    }
}

/// [`lower_after`] of an IR that [`Ir::validate`] accepted: every reference resolves.
fn lower_valid(prev: Option<(&Ir, &Table)>, ir: &Ir) -> Table {
    // Every verdict point's rules depend on the flow log: nothing is reused across a change.
    let prev = prev.filter(|(p, _)| p.flow_log == ir.flow_log).map(Prev::new);
    let prev = prev.as_ref();
    let was = |f: &dyn Fn(&Ir) -> bool| prev.is_some_and(|p| f(p.ir));
    let scope = match &ir.node {
        Some(n) => format!("node {n}"),
        None => "all endpoints".to_string(),
    };
    let summary = format!(
        "policyc ruleset for {scope}: {} endpoints, {} policy chains, {} sets",
        ir.endpoints.len(),
        ir.chains.len(),
        ir.sets.len() + ir.port_sets.len()
    );

    // Endpoint chains first: they decide which NetworkPolicy groups, classes and address sets
    // exist. They are lowered on every sync (the resolver shares its work between endpoints
    // with the same policies) and take over the previous table's chain when equal; the
    // NetworkPolicy maps and chains are taken over when what they are lowered from is unchanged
    // (see `Resolver::finish`).
    let mut np = Resolver::new(ir);
    let mut endpoint_chains = Vec::new();
    for ep in &ir.endpoints {
        for d in [Direction::Ingress, Direction::Egress] {
            if ep.isolation(d).enforced() {
                endpoint_chains.push(share_chain(prev, endpoint_chain(ir, &mut np, ep, d)));
            }
        }
    }
    let used_sets = std::mem::take(&mut np.used_sets);
    let (np_sets, np_chains) = np.finish(prev);

    let mut sets = Vec::new();
    for (name, set) in ir.sets.iter().filter(|(n, _)| used_sets.contains(*n)) {
        let same = was(&|p| p.sets.get(name) == Some(set));
        for f in &set.families {
            sets.push(set_or(prev, same, &set_name(name, *f), || addr_set(name, set, *f)));
        }
    }
    for (name, set) in &ir.port_sets {
        let same = was(&|p| p.port_sets.get(name) == Some(set));
        for f in [Family::V4, Family::V6] {
            sets.push(set_or(prev, same, &set_name(name, f), || port_set(name, set, f)));
        }
    }
    sets.extend(np_sets);
    for (name, table) in &ir.tier_tables {
        let same = was(&|p| p.tier_tables.get(name) == Some(table));
        for f in [Family::V4, Family::V6] {
            if !table.entries(f).is_empty() {
                let map = || table_map(name, table, f).expect("a family with entries has a map");
                sets.push(set_or(prev, same, &table_map_name(name, f), map));
            }
        }
    }
    for (name, class) in &ir.port_classes {
        let same = was(&|p| p.port_classes.get(name) == Some(class));
        for p in Protocol::ALL {
            if !class.protocol(p).is_empty() {
                let map = || class_map(name, class, p).expect("a protocol with entries has a map");
                sets.push(set_or(prev, same, &class_map_name(name, p), map));
            }
        }
    }
    // The dispatch maps (and the Canal source guard's map) are lowered from the endpoints and
    // the attachment alone.
    let same_endpoints = was(&|p| p.endpoints == ir.endpoints && p.attachment == ir.attachment);
    match &ir.attachment {
        Attachment::Canal { .. } => {
            for d in [Direction::Ingress, Direction::Egress] {
                sets.push(set_or(prev, same_endpoints, &dispatch_map_name(d), || {
                    dispatch_map(ir, d)
                }));
            }
            sets.push(set_or(prev, same_endpoints, GUARD_MAP, || guard_map(ir)));
        }
        Attachment::Bridge { .. } => {
            for d in [Direction::Ingress, Direction::Egress] {
                for f in [Family::V4, Family::V6] {
                    let name = set_name(&dispatch_map_name(d), f);
                    sets.push(set_or(prev, same_endpoints, &name, || addr_dispatch_map(ir, d, f)));
                }
            }
        }
    }

    // The base chains are lowered from the attachment and fail-closed alone.
    let same_base = was(&|p| p.fail_closed == ir.fail_closed && p.attachment == ir.attachment);
    let mut chains: Vec<Arc<Chain>> = base_chains(ir)
        .into_iter()
        .map(|c| {
            let name = c.name.clone();
            chain_or(prev, same_base, &name, || c)
        })
        .collect();
    // A source guard is lowered from its endpoint and the attachment.
    for ep in &ir.endpoints {
        let same = prev.is_some_and(|p| p.endpoints.get(&ep.pod) == Some(&ep));
        if matches!(ir.attachment, Attachment::Canal { .. }) && !ep.interface.is_empty() {
            let same = same && was(&|p| p.attachment == ir.attachment);
            chains.push(chain_or(prev, same, &ep.guard_chain_name(), || {
                guard_chain(ir, ep, false)
            }));
        }
    }
    chains.extend(endpoint_chains);
    chains.extend(np_chains);
    for (name, table) in &ir.tier_tables {
        let same = was(&|p| p.tier_tables.get(name) == Some(table));
        chains.push(chain_or(prev, same, name, || table_chain(name, table)));
    }
    for (name, class) in &ir.port_classes {
        let same = was(&|p| p.port_classes.get(name) == Some(class));
        chains.push(chain_or(prev, same, name, || class_chain(name, class)));
    }
    for (name, rule) in &ir.admin_rules {
        let same = was(&|p| p.admin_rules.get(name) == Some(rule));
        chains.push(chain_or(prev, same, name, || admin_rule_chain(ir, name, rule)));
    }
    Table {
        family: TableFamily::Inet,
        summary,
        sets,
        chains,
    }
}

// === names ===

/// A set's name for one family: `sel_<hash>_v4`.
pub fn set_name(base: &str, f: Family) -> String {
    format!("{base}_{}", f.suffix())
}

/// Name of a tier table's map for one family.
pub fn table_map_name(table: &str, f: Family) -> String {
    set_name(table, f)
}

/// Name of a port class's map for one protocol: `pc_<hash>_tcp`.
pub fn class_map_name(class: &str, p: Protocol) -> String {
    format!("{class}_{}", p.as_str().to_ascii_lowercase())
}

/// Name of a direction's dispatch map: `ingress_dispatch`.
pub fn dispatch_map_name(d: Direction) -> String {
    format!("{}_dispatch", d.as_str())
}

/// The end of a packet a rule of this direction matches peers on: where ingress comes from,
/// where egress goes.
pub fn peer_end(d: Direction) -> End {
    match d {
        Direction::Ingress => End::Source,
        Direction::Egress => End::Destination,
    }
}

// === sets and maps ===

fn addr_set(name: &str, set: &AddrSet, f: Family) -> Set {
    Set {
        name: set_name(name, f),
        key: KeyType::Addr(f),
        verdict_map: false,
        interval: set.kind == SetKind::IpBlock,
        comment: Some(comment(&set.description)),
        elements: set.members_of(f).map(|r| Element::key(Key::Addr(*r))).collect(),
    }
}

fn port_set(name: &str, set: &PortSet, f: Family) -> Set {
    Set {
        name: set_name(name, f),
        key: KeyType::AddrService(f),
        verdict_map: false,
        interval: false,
        comment: Some(comment(&labels::named_port(set))),
        elements: set
            .members
            .iter()
            .filter(|(ip, _)| Family::of(ip) == f)
            .map(|(ip, port)| Element::key(Key::AddrPort(*ip, *port)))
            .collect(),
    }
}

/// A tier table's map for one family: peer address range → goto the rule or port class; none
/// for a family without entries.
fn table_map(name: &str, table: &TierTable, f: Family) -> Option<Set> {
    let entries = table.entries(f);
    if entries.is_empty() {
        return None;
    }
    Some(Set {
        name: table_map_name(name, f),
        key: KeyType::Addr(f),
        verdict_map: true,
        interval: true,
        comment: Some(comment(&format!(
            "{} tier {}: peer address -> rule",
            table.tier, table.direction
        ))),
        elements: entries
            .iter()
            .map(|(r, t)| Element {
                key: Key::Addr(*r),
                verdict: Some(Verdict::Goto(t.chain().to_string())),
            })
            .collect(),
    })
}

/// A port class's map for one protocol: port range → goto the rule; none for a protocol
/// without entries.
fn class_map(name: &str, class: &PortClass, p: Protocol) -> Option<Set> {
    let entries = class.protocol(p);
    if entries.is_empty() {
        return None;
    }
    Some(Set {
        name: class_map_name(name, p),
        key: KeyType::InetService,
        verdict_map: true,
        interval: true,
        comment: None,
        elements: entries
            .iter()
            .map(|o| Element {
                key: Key::Ports(o.first, o.last),
                verdict: Some(Verdict::Goto(o.rule.clone())),
            })
            .collect(),
    })
}

/// Every local pod: isolated ones jump to their chain, the others are accepted here (the other
/// direction's chain still runs), so that only unknown interfaces fall through.
fn dispatch_map(ir: &Ir, d: Direction) -> Set {
    Set {
        name: dispatch_map_name(d),
        key: KeyType::Ifname,
        verdict_map: true,
        interval: false,
        comment: None,
        elements: ir
            .endpoints
            .iter()
            .map(|ep| Element {
                key: Key::Ifname(ep.interface.clone()),
                verdict: Some(match ep.isolation(d).enforced() {
                    true => Verdict::Jump(ep.chain_name(d)),
                    false => Verdict::Accept,
                }),
            })
            .collect(),
    }
}

/// The bridge attachment's dispatch: a local pod's address → its chain, or accept when the pod is
/// not isolated in that direction.
fn addr_dispatch_map(ir: &Ir, d: Direction, f: Family) -> Set {
    let mut elements: Vec<Element> = ir
        .endpoints
        .iter()
        .flat_map(|ep| {
            let verdict = match ep.isolation(d).enforced() {
                true => Verdict::Jump(ep.chain_name(d)),
                false => Verdict::Accept,
            };
            ep.ips
                .iter()
                .filter(move |ip| Family::of(ip) == f)
                .map(move |ip| Element {
                    key: Key::Addr(IpRange::single(*ip)),
                    verdict: Some(verdict.clone()),
                })
        })
        .collect();
    elements.sort();
    Set {
        name: set_name(&dispatch_map_name(d), f),
        key: KeyType::Addr(f),
        verdict_map: true,
        interval: false,
        comment: None,
        elements,
    }
}

// === chains ===

/// The base chains: on Canal, dispatch by pod interface; on a bridge, by pod address.
fn base_chains(ir: &Ir) -> Vec<Chain> {
    match &ir.attachment {
        Attachment::Canal { prefix } => canal_base_chains(ir, prefix),
        Attachment::Bridge { bridge } => bridge_base_chains(ir, bridge),
    }
}

/// The two first rules of every base chain: cut flows dropped, established flows accepted.
fn cut_and_established(ir: &Ir) -> Vec<Rule> {
    let cut = Rule {
        matches: vec![Match::CtMarkAll(CUT_MARK)],
        counter: true,
        log: None,
        action: Action::Verdict(Verdict::Drop),
        comment: Some(comment(CUT_COMMENT)),
    };
    let mut rules = logged(ir, FlowVerdict::Denied, CUT_COMMENT, cut);
    rules.push(Rule {
        matches: vec![Match::CtState(CtStates(CtStates::ESTABLISHED | CtStates::RELATED))],
        counter: false,
        log: None,
        action: Action::Verdict(Verdict::Accept),
        comment: None,
    });
    rules
}

/// A verdict rule, after a log rule with its matches when the IR's flow log covers the verdict:
/// `MATCHES limit rate R/second burst B packets log prefix "pc:<id>" group G`, then `rule`.
/// The log rule has no counter and no comment: the verdict rule counts every packet, and the
/// comment names the rule once.
pub(super) fn logged(ir: &Ir, v: FlowVerdict, text: &str, rule: Rule) -> Vec<Rule> {
    match &ir.flow_log {
        Some(fl) if fl.logs(v) => vec![Rule::log_only(rule.matches.clone(), fl.log(text), None), rule],
        _ => vec![rule],
    }
}

/// The base chains both attachments hook, in declaration order: name, hook, priority (relative to
/// `filter`), the interface the pod side is on, and the direction they judge.
const BASE_CHAINS: [(&str, Hook, i32, Iface, Direction); 3] = [
    ("forward_egress", Hook::Forward, -1, Iface::In, Direction::Egress),
    ("forward_ingress", Hook::Forward, 0, Iface::Out, Direction::Ingress),
    ("input_egress", Hook::Input, -1, Iface::In, Direction::Egress),
];

/// `iifname vmap @source_guard`: a pod interface's frames to its source guard.
fn guard_dispatch() -> Rule {
    Rule {
        matches: Vec::new(),
        counter: false,
        log: None,
        action: Action::Vmap {
            key: VmapKey::Ifname(Iface::In),
            map: GUARD_MAP.into(),
        },
        comment: None,
    }
}

/// `iifname "cni0" oifname "cni0"`: bridged traffic between the bridge's ports.
fn bridged(bridge: &str) -> Vec<Match> {
    vec![
        Match::Ifname(Iface::In, bridge.to_string()),
        Match::Ifname(Iface::Out, bridge.to_string()),
    ]
}

/// `ip6 saddr fe80::/10`.
fn link_local_source() -> Match {
    Match::AddrPrefix {
        family: Family::V6,
        end: End::Source,
        net: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        len: 10,
    }
}

/// ICMPv6 router and neighbour discovery: pods on one bridge resolve each other directly, and
/// conntrack does not track these messages.
const ND_TYPES: [u8; 4] = [133, 134, 135, 136];

/// The bridge attachment's base chains. Pod traffic enters from and leaves to the bridge (`iif`
/// or `oif` the bridge, both for same-node traffic seen through `br_netfilter`); the pod address
/// picks the endpoint chain, which is sound because the `bridge` table's source guard drops
/// forged source addresses before these chains run. The first forward chain marks bridged
/// traffic as seen ([`SEEN_MARK`]).
fn bridge_base_chains(ir: &Ir, bridge: &str) -> Vec<Chain> {
    let base = |name: &str, hook, priority, iface: Iface, d: Direction| {
        let mut rules = Vec::new();
        if hook == Hook::Forward && d == Direction::Egress {
            rules.push(Rule {
                matches: bridged(bridge),
                counter: false,
                log: None,
                action: Action::SetMarkBits(SEEN_MARK),
                comment: None,
            });
        }
        rules.extend(cut_and_established(ir));
        rules.push(Rule {
            matches: vec![Match::Icmpv6Types(ND_TYPES.to_vec())],
            counter: false,
            log: None,
            action: Action::Verdict(Verdict::Accept),
            comment: None,
        });
        if hook == Hook::Forward && d == Direction::Egress {
            // Pods on one bridge share a link: one pod reaches another by its IPv6 link-local
            // address, which no dispatch map holds. Neighbour discovery is accepted above;
            // everything else between pods from a link-local source is dropped, or it would
            // pass unjudged without fail-closed.
            rules.push(Rule {
                matches: [bridged(bridge), vec![link_local_source()]].concat(),
                counter: true,
                log: None,
                action: Action::Verdict(Verdict::Drop),
                comment: Some(comment(&labels::link_local_bridged(bridge))),
            });
        }
        let end = match d {
            Direction::Egress => End::Source,
            Direction::Ingress => End::Destination,
        };
        for f in [Family::V4, Family::V6] {
            rules.push(Rule {
                matches: vec![Match::Ifname(iface, bridge.to_string())],
                counter: false,
                log: None,
                action: Action::Vmap {
                    key: VmapKey::Addr(f, end),
                    map: set_name(&dispatch_map_name(d), f),
                },
                comment: None,
            });
        }
        if ir.fail_closed {
            rules.push(Rule {
                matches: vec![Match::Ifname(iface, bridge.to_string())],
                counter: true,
                log: None,
                action: Action::Verdict(Verdict::Drop),
                comment: Some(comment(&labels::fail_closed_bridge(bridge, d))),
            });
        } else if hook == Hook::Forward && d == Direction::Ingress {
            // Bridged traffic to an address no local pod has (subnet or limited broadcast,
            // multicast) would reach every pod on the bridge unjudged; without fail-closed it
            // is dropped here (with fail-closed, by the rule above).
            rules.push(Rule {
                matches: bridged(bridge),
                counter: true,
                log: None,
                action: Action::Verdict(Verdict::Drop),
                comment: Some(comment(&labels::bridged_to_no_pod(bridge))),
            });
        }
        Chain {
            name: name.to_string(),
            hook: Some(BaseHook { hook, priority }),
            rules,
        }
    };
    BASE_CHAINS
        .iter()
        .map(|&(name, hook, priority, iface, d)| base(name, hook, priority, iface, d))
        .collect()
}

/// Canal's base chains, and its source guard before conntrack (priority raw); with
/// fail-closed, unknown pod interfaces are dropped after dispatch.
fn canal_base_chains(ir: &Ir, prefix: &str) -> Vec<Chain> {
    let mut chains = vec![Chain {
        name: "prerouting_guard".into(),
        hook: Some(BaseHook {
            hook: Hook::Prerouting,
            priority: -300,
        }),
        rules: vec![guard_dispatch()],
    }];
    chains.extend(canal_policy_chains(ir, prefix));
    chains
}

fn canal_policy_chains(ir: &Ir, prefix: &str) -> Vec<Chain> {
    let base = |name: &str, hook, priority, iface, d: Direction| {
        let mut rules = cut_and_established(ir);
        rules.push(Rule {
            matches: Vec::new(),
            counter: false,
            log: None,
            action: Action::Vmap {
                key: VmapKey::Ifname(iface),
                map: dispatch_map_name(d),
            },
            comment: None,
        });
        if ir.fail_closed {
            rules.push(Rule {
                matches: vec![Match::IfnamePrefix(iface, prefix.to_string())],
                counter: true,
                log: None,
                action: Action::Verdict(Verdict::Drop),
                comment: Some(comment(&labels::fail_closed(prefix))),
            });
        }
        Chain {
            name: name.to_string(),
            hook: Some(BaseHook { hook, priority }),
            rules,
        }
    };
    BASE_CHAINS
        .iter()
        .map(|&(name, hook, priority, iface, d)| base(name, hook, priority, iface, d))
        .collect()
}

fn endpoint_chain(ir: &Ir, np: &mut Resolver<'_>, ep: &Endpoint, d: Direction) -> Chain {
    let mut rules = Vec::new();
    // A pod reaching itself through its own address (hairpin) is never blocked.
    for f in [Family::V4, Family::V6] {
        let own: Vec<_> = ep.ips.iter().filter(|ip| Family::of(ip) == f).copied().collect();
        if !own.is_empty() {
            rules.push(Rule {
                matches: vec![Match::AddrIn {
                    family: f,
                    end: peer_end(d),
                    addrs: own,
                }],
                counter: false,
                log: None,
                action: Action::Verdict(Verdict::Accept),
                comment: Some(comment(&format!("{} to itself", ep.pod))),
            });
        }
    }
    let iso = ep.isolation(d);
    if let Some(table) = &iso.admin_table {
        rules.push(Rule::always(
            false,
            Verdict::Jump(table.clone()),
            Some(comment(&labels::tier_jump("Admin", &iso.admin))),
        ));
    }
    if iso.isolated() {
        rules.extend(np.endpoint_rules(iso, d));
        let text = labels::endpoint_denied(ep, d);
        rules.extend(logged(
            ir,
            FlowVerdict::Denied,
            &text,
            Rule::always(true, Verdict::Drop, Some(comment(&text))),
        ));
    } else {
        if let Some(table) = &iso.baseline_table {
            rules.push(Rule::always(
                false,
                Verdict::Jump(table.clone()),
                Some(comment(&labels::tier_jump("Baseline", &iso.baseline))),
            ));
        }
        // No tier decided: allowed. Said here rather than by falling back into the base chain,
        // whose next rule is the fail-closed drop of every pod interface.
        rules.push(Rule::always(
            false,
            Verdict::Accept,
            Some(comment(&labels::not_isolated(ep, d))),
        ));
    }
    Chain {
        name: ep.chain_name(d),
        hook: None,
        rules,
    }
}

/// A tier table's chain: the peer address's verdict, per family with entries.
fn table_chain(name: &str, table: &TierTable) -> Chain {
    let rules = [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| !table.entries(*f).is_empty())
        .map(|f| Rule {
            matches: Vec::new(),
            counter: false,
            log: None,
            action: Action::Vmap {
                key: VmapKey::Addr(f, peer_end(table.direction)),
                map: table_map_name(name, f),
            },
            comment: None,
        })
        .collect();
    Chain {
        name: name.to_string(),
        hook: None,
        rules,
    }
}

/// A port class: each protocol's map; other protocols go to the rule without ports, if any,
/// after TCP, UDP and SCTP packets no port entry matched have returned.
fn class_chain(name: &str, class: &PortClass) -> Chain {
    let mut rules: Vec<Rule> = Protocol::ALL
        .into_iter()
        .filter(|p| !class.protocol(*p).is_empty())
        .map(|p| Rule {
            matches: Vec::new(),
            counter: false,
            log: None,
            action: Action::Vmap {
                key: VmapKey::Dport(p),
                map: class_map_name(name, p),
            },
            comment: None,
        })
        .collect();
    if let Some(other) = &class.other {
        for p in Protocol::ALL {
            rules.push(Rule {
                matches: vec![Match::L4Proto(p)],
                counter: false,
                log: None,
                action: Action::Verdict(Verdict::Return),
                comment: None,
            });
        }
        rules.push(Rule::always(false, Verdict::Goto(other.clone()), None));
    }
    Chain {
        name: name.to_string(),
        hook: None,
        rules,
    }
}

/// An admin rule's counter chain: its action.
fn admin_rule_chain(ir: &Ir, name: &str, rule: &AdminRuleIr) -> Chain {
    let (verdict, logged_as) = match rule.action {
        AdminAction::Accept => (Verdict::Accept, FlowVerdict::Allowed),
        AdminAction::Deny => (Verdict::Drop, FlowVerdict::Denied),
        AdminAction::Pass => (Verdict::Return, FlowVerdict::Passed),
    };
    let text = labels::admin_rule(rule);
    Chain {
        name: name.to_string(),
        hook: None,
        rules: logged(ir, logged_as, &text, Rule::always(true, verdict, Some(comment(&text)))),
    }
}
