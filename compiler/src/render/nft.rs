//! nftables text: one `table inet policyc`, loadable with `nft -f`.
//!
//! ```text
//! table inet policyc
//!  ├── sets        sel_* (pods of a selector pair), cidr_* (ipBlock intervals), port_* (named ports)
//!  ├── maps        ingress_dispatch / egress_dispatch: pod interface → jump ep_<pod>_{in,out}
//!  ├── base chains forward_egress  (forward, filter - 1): cut flow → drop; ct established → accept; iifname vmap
//!  │               forward_ingress (forward, filter):     cut flow → drop; ct established → accept; oifname vmap
//!  │               input_egress    (input,   filter - 1): pod → its own node, egress policy too
//!  ├── ep_<pod>_*  loopback accept; jump adm_* (Admin tier); jump np_* of each selecting
//!  │               NetworkPolicy + counter drop, or else jump bl_* (Baseline tier)
//!  ├── np_<pol>_*  one accept rule per peer × port match, counter + comment "ns/name ingress[i]"
//!  ├── adm_*, bl_* a tier table: `ip saddr vmap @adm_*_v4` (peer address → goto ar_* or pc_*)
//!  ├── pc_*        a port class: `tcp dport vmap @pc_*_tcp` ... (port → goto ar_*)
//!  └── ar_*        one admin rule: counter accept | drop | return (Pass), comment "cnp/x ingress[i]"
//! ```
//!
//! Admin tiers cost a fixed number of lookups per packet however many rules they have: see
//! [`crate::tiers`]. Falling off a tier table (no rule matches, or Pass) returns to the endpoint
//! chain, which goes on with the next tier.
//!
//! An accept in one base chain does not skip the other, and a drop is final: a flow needs both
//! the source's egress and the destination's ingress. Interfaces not in a dispatch map (pods not
//! isolated in that direction, anything else) fall through to `policy accept`.

use std::fmt::Write as _;

use crate::cidr::Family;
use crate::ir::*;
use crate::model::{AdminAction, Direction, Protocol};

use super::{CUT_COMMENT, CUT_MARK};

/// Name of the table policyc owns.
pub const TABLE: &str = "policyc";

/// nft accepts 128 bytes, but libnftnl's userdata buffer (what the netlink writer builds with)
/// holds 125: stay within both.
const MAX_COMMENT: usize = 125;

/// Renders the IR as an nft script that creates (or, with `replace`, atomically replaces) the
/// table. With `replace`, the script first adds an empty table and deletes it, so that loading it
/// with `nft -f` swaps the whole table in one transaction whether or not it existed.
pub fn render(ir: &Ir, replace: bool) -> String {
    let mut out = String::new();
    let scope = match &ir.node {
        Some(n) => format!("node {n}"),
        None => "all endpoints".to_string(),
    };
    let _ = writeln!(
        out,
        "# policyc ruleset for {scope}: {} endpoints, {} policy chains, {} sets",
        ir.endpoints.len(),
        ir.chains.len(),
        ir.sets.len() + ir.port_sets.len()
    );
    if replace {
        let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    }
    let _ = writeln!(out, "table inet {TABLE} {{");

    for (name, set) in &ir.sets {
        for f in &set.families {
            render_addr_set(&mut out, name, set, *f);
        }
    }
    for (name, set) in &ir.port_sets {
        for f in [Family::V4, Family::V6] {
            render_port_set(&mut out, name, set, f);
        }
    }
    for (name, table) in &ir.tier_tables {
        for f in [Family::V4, Family::V6] {
            render_table_map(&mut out, name, table, f);
        }
    }
    for (name, class) in &ir.port_classes {
        for p in Protocol::ALL {
            render_class_map(&mut out, name, class, p);
        }
    }
    for d in [Direction::Ingress, Direction::Egress] {
        render_dispatch(&mut out, ir, d);
    }
    render_base_chains(&mut out, ir);
    for ep in &ir.endpoints {
        for d in [Direction::Ingress, Direction::Egress] {
            if ep.isolation(d).enforced() {
                render_endpoint_chain(&mut out, ir, ep, d);
            }
        }
    }
    for (name, chain) in &ir.chains {
        render_policy_chain(&mut out, ir, name, chain);
    }
    for (name, table) in &ir.tier_tables {
        render_table_chain(&mut out, name, table);
    }
    for (name, class) in &ir.port_classes {
        render_class_chain(&mut out, name, class);
    }
    for (name, rule) in &ir.admin_rules {
        render_admin_rule(&mut out, name, rule);
    }
    out.push_str("}\n");
    out
}

/// Name of a tier table's map for one family, or a port class's map for one protocol.
pub fn table_map_name(table: &str, f: Family) -> String {
    set_name(table, f)
}

pub fn class_map_name(class: &str, p: Protocol) -> String {
    format!("{class}_{}", l4(p))
}

fn verdict_elements(out: &mut String, elems: &[String]) {
    if elems.is_empty() {
        return;
    }
    out.push_str("\t\telements = { ");
    out.push_str(&elems.join(",\n\t\t\t     "));
    out.push_str(" }\n");
}

fn render_table_map(out: &mut String, name: &str, table: &TierTable, f: Family) {
    let entries = table.entries(f);
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(out, "\tmap {} {{", table_map_name(name, f));
    let _ = writeln!(out, "\t\ttype {} : verdict", addr_type(f));
    out.push_str("\t\tflags interval\n");
    let _ = writeln!(
        out,
        "\t\tcomment {}",
        comment(&format!(
            "{} tier {}: peer address -> rule",
            table.tier, table.direction
        ))
    );
    let elems: Vec<String> = entries
        .iter()
        .map(|(r, t)| format!("{r} : goto {}", t.chain()))
        .collect();
    verdict_elements(out, &elems);
    out.push_str("\t}\n");
}

fn render_class_map(out: &mut String, name: &str, class: &PortClass, p: Protocol) {
    let entries = class.protocol(p);
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(out, "\tmap {} {{", class_map_name(name, p));
    out.push_str("\t\ttype inet_service : verdict\n");
    out.push_str("\t\tflags interval\n");
    let elems: Vec<String> = entries
        .iter()
        .map(|o| {
            if o.first == o.last {
                format!("{} : goto {}", o.first, o.rule)
            } else {
                format!("{}-{} : goto {}", o.first, o.last, o.rule)
            }
        })
        .collect();
    verdict_elements(out, &elems);
    out.push_str("\t}\n");
}

fn render_table_chain(out: &mut String, name: &str, table: &TierTable) {
    let _ = writeln!(out, "\tchain {name} {{");
    let peer = match table.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    for f in [Family::V4, Family::V6] {
        if !table.entries(f).is_empty() {
            let _ = writeln!(out, "\t\t{} {peer} vmap @{}", ip_kw(f), table_map_name(name, f));
        }
    }
    out.push_str("\t}\n");
}

/// A port class: each protocol's map; other protocols go to the rule without ports, if any,
/// after TCP, UDP and SCTP packets no port entry matched have returned.
fn render_class_chain(out: &mut String, name: &str, class: &PortClass) {
    let _ = writeln!(out, "\tchain {name} {{");
    for p in Protocol::ALL {
        if !class.protocol(p).is_empty() {
            let _ = writeln!(out, "\t\t{} dport vmap @{}", l4(p), class_map_name(name, p));
        }
    }
    if let Some(rule) = &class.other {
        for p in Protocol::ALL {
            let _ = writeln!(out, "\t\tmeta l4proto {} return", l4(p));
        }
        let _ = writeln!(out, "\t\tgoto {rule}");
    }
    out.push_str("\t}\n");
}

fn render_admin_rule(out: &mut String, name: &str, rule: &AdminRuleIr) {
    let verdict = match rule.action {
        AdminAction::Accept => "accept",
        AdminAction::Deny => "drop",
        AdminAction::Pass => "return",
    };
    let _ = writeln!(out, "\tchain {name} {{");
    let _ = writeln!(
        out,
        "\t\tcounter {verdict} comment {}",
        comment(&format!(
            "{} tier: {}: {}",
            rule.tier,
            rule.comment_label(),
            rule.action
        ))
    );
    out.push_str("\t}\n");
}

/// The three base chains; with fail-closed, unknown pod interfaces are dropped after dispatch.
fn render_base_chains(out: &mut String, ir: &Ir) {
    for (name, hook, priority, key, map) in [
        ("forward_egress", "forward", "filter - 1", "iifname", "egress_dispatch"),
        ("forward_ingress", "forward", "filter", "oifname", "ingress_dispatch"),
        ("input_egress", "input", "filter - 1", "iifname", "egress_dispatch"),
    ] {
        let _ = writeln!(out, "\tchain {name} {{");
        let _ = writeln!(out, "\t\ttype filter hook {hook} priority {priority}; policy accept;");
        let _ = writeln!(
            out,
            "\t\tct mark & {CUT_MARK:#010x} == {CUT_MARK:#010x} counter drop comment {}",
            comment(CUT_COMMENT)
        );
        out.push_str("\t\tct state established,related accept\n");
        let _ = writeln!(out, "\t\t{key} vmap @{map}");
        if let Some(prefix) = &ir.fail_closed {
            let _ = writeln!(
                out,
                "\t\t{key} \"{prefix}*\" counter drop comment {}",
                comment(&format!("{prefix}* interface not programmed yet: fail closed"))
            );
        }
        out.push_str("\t}\n");
    }
}

fn set_name(base: &str, f: Family) -> String {
    format!("{base}_{}", f.suffix())
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn ip_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// Quotes a comment for nft (see [`MAX_COMMENT`]).
pub fn comment(s: &str) -> String {
    format!("\"{}\"", super::sanitize_comment(s, MAX_COMMENT))
}

fn write_elements(out: &mut String, elems: &[String]) {
    if elems.is_empty() {
        return;
    }
    out.push_str("\t\telements = { ");
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            // Keep lines readable in large sets.
            out.push_str(if i % 8 == 0 { ",\n\t\t\t     " } else { ", " });
        }
        out.push_str(e);
    }
    out.push_str(" }\n");
}

fn render_addr_set(out: &mut String, name: &str, set: &AddrSet, f: Family) {
    let _ = writeln!(out, "\tset {} {{", set_name(name, f));
    let _ = writeln!(out, "\t\ttype {}", addr_type(f));
    if set.kind == SetKind::IpBlock {
        out.push_str("\t\tflags interval\n");
    }
    let _ = writeln!(out, "\t\tcomment {}", comment(&set.description));
    let elems: Vec<String> = set.members_of(f).map(|r| r.to_string()).collect();
    write_elements(out, &elems);
    out.push_str("\t}\n");
}

fn render_port_set(out: &mut String, name: &str, set: &PortSet, f: Family) {
    let _ = writeln!(out, "\tset {} {{", set_name(name, f));
    let _ = writeln!(out, "\t\ttype {} . inet_service", addr_type(f));
    let _ = writeln!(
        out,
        "\t\tcomment {}",
        comment(&format!("named port {}/{}", set.port_name, set.protocol))
    );
    let elems: Vec<String> = set
        .members
        .iter()
        .filter(|(ip, _)| Family::of(ip) == f)
        .map(|(ip, port)| format!("{ip} . {port}"))
        .collect();
    write_elements(out, &elems);
    out.push_str("\t}\n");
}

fn render_dispatch(out: &mut String, ir: &Ir, d: Direction) {
    let _ = writeln!(out, "\tmap {}_dispatch {{", d.as_str());
    out.push_str("\t\ttype ifname : verdict\n");
    // Every local pod: isolated ones jump to their chain, the others are accepted here (the
    // other direction's chain still runs), so that only unknown interfaces fall through.
    let elems: Vec<String> = ir
        .endpoints
        .iter()
        .map(|ep| match ep.isolation(d).enforced() {
            true => format!("\"{}\" : jump {}", ep.interface, ep.chain_name(d)),
            false => format!("\"{}\" : accept", ep.interface),
        })
        .collect();
    if !elems.is_empty() {
        out.push_str("\t\telements = { ");
        out.push_str(&elems.join(",\n\t\t\t     "));
        out.push_str(" }\n");
    }
    out.push_str("\t}\n");
}

fn render_endpoint_chain(out: &mut String, ir: &Ir, ep: &Endpoint, d: Direction) {
    let _ = writeln!(out, "\tchain {} {{", ep.chain_name(d));
    // A pod reaching itself through its own address (hairpin) is never blocked.
    let other_end = match d {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    for f in [Family::V4, Family::V6] {
        let own: Vec<String> = ep
            .ips
            .iter()
            .filter(|ip| Family::of(ip) == f)
            .map(|ip| ip.to_string())
            .collect();
        if !own.is_empty() {
            let _ = writeln!(
                out,
                "\t\t{} {other_end} {{ {} }} accept comment {}",
                ip_kw(f),
                own.join(", "),
                comment(&format!("{} to itself", ep.pod))
            );
        }
    }
    let iso = ep.isolation(d);
    if let Some(table) = &iso.admin_table {
        let names: Vec<String> = iso.admin.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "\t\tjump {table} comment {}",
            comment(&format!("Admin tier: {}", names.join(", ")))
        );
    }
    if iso.isolated() {
        for chain in &iso.chains {
            let _ = writeln!(
                out,
                "\t\tjump {chain} comment {}",
                comment(&ir.chains[chain].policy.to_string())
            );
        }
        let policies: Vec<String> = iso.policies.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "\t\tcounter drop comment {}",
            comment(&format!("{} {d} denied: selected by {}", ep.pod, policies.join(", ")))
        );
    } else if let Some(table) = &iso.baseline_table {
        let names: Vec<String> = iso.baseline.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "\t\tjump {table} comment {}",
            comment(&format!("Baseline tier: {}", names.join(", ")))
        );
    }
    out.push_str("\t}\n");
}

fn l4(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The port part of an nft rule, one entry per protocol.
fn port_matches(ir: &Ir, m: &PortMatch, f: Family) -> Vec<String> {
    match m {
        PortMatch::Any => vec![String::new()],
        PortMatch::Named { set, protocol } => {
            vec![format!(
                "{} daddr . {} dport @{} ",
                ip_kw(f),
                l4(*protocol),
                set_name(set, f)
            )]
        }
        PortMatch::Ports(ranges) => {
            let _ = ir;
            let mut out = Vec::new();
            for p in Protocol::ALL {
                let rs: Vec<&PortRange> = ranges.iter().filter(|r| r.protocol == p).collect();
                if rs.is_empty() {
                    continue;
                }
                if rs.iter().any(|r| r.is_whole_protocol()) {
                    out.push(format!("meta l4proto {} ", l4(p)));
                    continue;
                }
                let items: Vec<String> = rs
                    .iter()
                    .map(|r| {
                        if r.first == r.last {
                            r.first.to_string()
                        } else {
                            format!("{}-{}", r.first, r.last)
                        }
                    })
                    .collect();
                if items.len() == 1 {
                    out.push(format!("{} dport {} ", l4(p), items[0]));
                } else {
                    out.push(format!("{} dport {{ {} }} ", l4(p), items.join(", ")));
                }
            }
            out
        }
    }
}

fn render_policy_chain(out: &mut String, ir: &Ir, name: &str, chain: &PolicyChain) {
    let _ = writeln!(out, "\tchain {name} {{");
    let other_end = match chain.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    for r in &chain.rules {
        let c = comment(&format!("{} {}[{}]", chain.policy, chain.direction, r.rule));
        // Families this rule can match: a set restricts them, as does a named port (which is
        // per family); otherwise one family-agnostic rule covers both.
        let families: Vec<Option<Family>> = match (&r.peer, &r.ports) {
            (PeerMatch::Set(s), _) => ir.sets[s].families.iter().map(|f| Some(*f)).collect(),
            (PeerMatch::Any, PortMatch::Named { .. }) => vec![Some(Family::V4), Some(Family::V6)],
            (PeerMatch::Any, _) => vec![None],
        };
        for f in families {
            let peer = match (&r.peer, f) {
                (PeerMatch::Set(s), Some(f)) => format!("{} {other_end} @{} ", ip_kw(f), set_name(s, f)),
                _ => String::new(),
            };
            for ports in port_matches(ir, &r.ports, f.unwrap_or(Family::V4)) {
                let _ = writeln!(out, "\t\t{peer}{ports}counter accept comment {c}");
            }
        }
    }
    out.push_str("\t}\n");
}
