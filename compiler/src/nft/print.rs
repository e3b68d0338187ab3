//! The `nft -f` text of a [`Table`]: a printer, nothing more. It writes what the model holds,
//! in the model's order, in the syntax `nft list` uses.

use std::fmt::Write as _;

use crate::cidr::Family;
use crate::model::Protocol;

use super::model::*;
use super::TABLE;

/// The script that creates the table or, with `replace`, atomically replaces it: it first adds
/// an empty table and deletes it, so that loading it with `nft -f` swaps the whole table in one
/// transaction whether or not it existed.
pub fn print(table: &Table, replace: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}", table.summary);
    let family = table.family.as_str();
    if replace {
        let _ = writeln!(out, "table {family} {TABLE}\ndelete table {family} {TABLE}");
    }
    let _ = writeln!(out, "table {family} {TABLE} {{");
    for set in &table.sets {
        print_set(&mut out, set);
    }
    for chain in &table.chains {
        print_chain(&mut out, chain);
    }
    out.push_str("}\n");
    out
}

/// `"text"`: comments in the model are already sanitized.
fn quoted(s: &str) -> String {
    format!("\"{s}\"")
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

fn l4(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn addr_field(end: End) -> &'static str {
    match end {
        End::Source => "saddr",
        End::Destination => "daddr",
    }
}

fn iface_kw(i: Iface) -> &'static str {
    match i {
        Iface::In => "iifname",
        Iface::Out => "oifname",
    }
}

fn key_type(k: KeyType) -> String {
    match k {
        KeyType::Addr(f) => addr_type(f).to_string(),
        KeyType::InetService => "inet_service".to_string(),
        KeyType::Ifname => "ifname".to_string(),
        KeyType::AddrService(f) => format!("{} . inet_service", addr_type(f)),
    }
}

fn ports(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

fn print_set(out: &mut String, set: &Set) {
    let kind = if set.verdict_map { "map" } else { "set" };
    let _ = writeln!(out, "\t{kind} {} {{", set.name);
    if set.verdict_map {
        let _ = writeln!(out, "\t\ttype {} : verdict", key_type(set.key));
    } else {
        let _ = writeln!(out, "\t\ttype {}", key_type(set.key));
    }
    if set.interval {
        out.push_str("\t\tflags interval\n");
    }
    if let Some(c) = &set.comment {
        let _ = writeln!(out, "\t\tcomment {}", quoted(c));
    }
    if !set.elements.is_empty() {
        out.push_str("\t\telements = { ");
        for (i, e) in set.elements.iter().enumerate() {
            if i > 0 {
                // Maps: one element a line; sets: eight, to keep large sets readable.
                out.push_str(if set.verdict_map || i % 8 == 0 {
                    ",\n\t\t\t     "
                } else {
                    ", "
                });
            }
            print_element(out, e);
        }
        out.push_str(" }\n");
    }
    out.push_str("\t}\n");
}

fn print_element(out: &mut String, e: &Element) {
    match &e.key {
        Key::Addr(r) => {
            let _ = write!(out, "{r}");
        }
        Key::AddrPort(ip, port) => {
            let _ = write!(out, "{ip} . {port}");
        }
        Key::Ifname(name) => out.push_str(&quoted(name)),
        Key::Ports(first, last) => out.push_str(&ports(*first, *last)),
    }
    if let Some(v) = &e.verdict {
        let _ = write!(out, " : {}", verdict(v));
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn print_chain(out: &mut String, chain: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(base) = chain.hook {
        let hook = match base.hook {
            Hook::Prerouting => "prerouting",
            Hook::Forward => "forward",
            Hook::Input => "input",
        };
        let priority = match base.priority {
            0 => "filter".to_string(),
            p if p < 0 => format!("filter - {}", -p),
            p => format!("filter + {p}"),
        };
        let _ = writeln!(out, "\t\ttype filter hook {hook} priority {priority}; policy accept;");
    }
    for rule in &chain.rules {
        let mut words: Vec<String> = rule.matches.iter().map(match_text).collect();
        if rule.counter {
            words.push("counter".into());
        }
        if let Some(log) = &rule.log {
            print_log(&mut words, log);
        }
        match &rule.action {
            Action::Verdict(v) => words.push(verdict(v)),
            Action::Continue => {}
            Action::Vmap { key, map } => words.push(format!("{} vmap @{map}", vmap_key(*key))),
            Action::SetMarkBits(bits) => words.push(format!("meta mark set meta mark | {bits:#010x}")),
        }
        if let Some(c) = &rule.comment {
            words.push(format!("comment {}", quoted(c)));
        }
        let _ = writeln!(out, "\t\t{}", words.join(" "));
    }
    out.push_str("\t}\n");
}

/// `limit rate N/UNIT [burst B packets] log [prefix "P"] group G [snaplen S]
/// [queue-threshold Q]`, leaving out what `nft list` leaves out: the default burst and a zero
/// queue threshold (the kernel keeps no zero threshold).
fn print_log(words: &mut Vec<String>, log: &Log) {
    if let Some(l) = &log.limit {
        words.push(format!("limit rate {}/{}", l.rate, l.unit.as_str()));
        if l.burst != Limit::DEFAULT_BURST {
            words.push(format!("burst {} packets", l.burst));
        }
    }
    words.push("log".into());
    if let Some(p) = &log.prefix {
        words.push(format!("prefix {}", quoted(p)));
    }
    words.push(format!("group {}", log.group));
    if let Some(s) = log.snaplen {
        words.push(format!("snaplen {s}"));
    }
    if let Some(q) = log.queue_threshold.filter(|q| *q > 0) {
        words.push(format!("queue-threshold {q}"));
    }
}

fn vmap_key(k: VmapKey) -> String {
    match k {
        VmapKey::Ifname(i) => iface_kw(i).to_string(),
        VmapKey::Addr(f, end) => format!("{} {}", ip_kw(f), addr_field(end)),
        VmapKey::Dport(p) => format!("{} dport", l4(p)),
    }
}

/// nft's names of the ICMPv6 types the rulesets use.
fn icmpv6_type(t: u8) -> String {
    match t {
        133 => "nd-router-solicit".into(),
        134 => "nd-router-advert".into(),
        135 => "nd-neighbor-solicit".into(),
        136 => "nd-neighbor-advert".into(),
        t => t.to_string(),
    }
}

fn match_text(m: &Match) -> String {
    match m {
        Match::CtMarkAll(bits) => format!("ct mark & {bits:#010x} == {bits:#010x}"),
        Match::CtState(CtStates(bits)) => {
            let names: Vec<&str> = CtStates::NAMES
                .iter()
                .filter(|(b, _)| bits & b != 0)
                .map(|(_, n)| *n)
                .collect();
            format!("ct state {}", names.join(","))
        }
        Match::IfnamePrefix(i, prefix) => format!("{} {}", iface_kw(*i), quoted(&format!("{prefix}*"))),
        Match::Ifname(i, name) => format!("{} {}", iface_kw(*i), quoted(name)),
        Match::MarkClear(bits) => format!("meta mark & {bits:#010x} == 0x00000000"),
        Match::Icmpv6Types(types) => {
            let names: Vec<String> = types.iter().map(|t| icmpv6_type(*t)).collect();
            match names.as_slice() {
                [one] => format!("icmpv6 type {one}"),
                many => format!("icmpv6 type {{ {} }}", many.join(", ")),
            }
        }
        Match::AddrPrefix { family, end, net, len } => {
            format!("{} {} {net}/{len}", ip_kw(*family), addr_field(*end))
        }
        Match::ArpSenderIn(addrs) => {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("arp saddr ip {{ {} }}", list.join(", "))
        }
        Match::AddrInSet { family, end, set } => format!("{} {} @{set}", ip_kw(*family), addr_field(*end)),
        Match::AddrIn { family, end, addrs } => {
            // Always as a set (nft loads a one-element set as a comparison).
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("{} {} {{ {} }}", ip_kw(*family), addr_field(*end), list.join(", "))
        }
        Match::L4Proto(p) => format!("meta l4proto {}", l4(*p)),
        Match::Dport { protocol, ports: list } => {
            let items: Vec<String> = list.iter().map(|(a, b)| ports(*a, *b)).collect();
            match items.as_slice() {
                [one] => format!("{} dport {one}", l4(*protocol)),
                many => format!("{} dport {{ {} }}", l4(*protocol), many.join(", ")),
            }
        }
        Match::AddrDportInSet { family, protocol, set } => {
            format!("{} daddr . {} dport @{set}", ip_kw(*family), l4(*protocol))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_text(rules: Vec<Rule>) -> String {
        let mut out = String::new();
        print_chain(
            &mut out,
            &Chain {
                name: "c".into(),
                hook: None,
                rules,
            },
        );
        out
    }

    /// As `nft list ruleset` (1.0.6) prints them: the default burst (5) and a zero queue
    /// threshold left out, a zero snaplen kept, a log-only rule without a verdict.
    #[test]
    fn log_and_limit_as_nft_lists_them() {
        let from = || {
            vec![Match::AddrIn {
                family: Family::V4,
                end: End::Source,
                addrs: vec!["10.0.0.1".parse().unwrap()],
            }]
        };
        let text = chain_text(vec![
            Rule::log_only(from(), Log::group(1, "pc:42").with_limit(Limit::per_second(100)), None),
            Rule {
                matches: from(),
                counter: true,
                log: Some(Log::group(1, "pc:123")),
                action: Action::Verdict(Verdict::Accept),
                comment: Some("ns/web ingress[0]".into()),
            },
            Rule {
                matches: Vec::new(),
                counter: true,
                log: Some(Log {
                    limit: Some(Limit {
                        rate: 1000,
                        unit: RateUnit::Minute,
                        burst: 1,
                    }),
                    prefix: None,
                    group: 2,
                    snaplen: Some(0),
                    queue_threshold: Some(0),
                }),
                action: Action::Verdict(Verdict::Drop),
                comment: None,
            },
            Rule::log_only(
                Vec::new(),
                Log {
                    snaplen: Some(128),
                    queue_threshold: Some(10),
                    ..Log::group(3, "pc:7")
                },
                None,
            ),
        ]);
        assert_eq!(
            text,
            "\tchain c {
\t\tip saddr { 10.0.0.1 } limit rate 100/second log prefix \"pc:42\" group 1
\t\tip saddr { 10.0.0.1 } counter log prefix \"pc:123\" group 1 accept comment \"ns/web ingress[0]\"
\t\tcounter limit rate 1000/minute burst 1 packets log group 2 snaplen 0 drop
\t\tlog prefix \"pc:7\" group 3 snaplen 128 queue-threshold 10
\t}
"
        );
    }
}
