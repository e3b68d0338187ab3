//! iptables text: `ipset restore` input for the address and named-port sets, and
//! `iptables-restore` / `ip6tables-restore` input for the `filter` table. The decisions are
//! exactly those of [`super::nft`] and [`crate::eval`].
//!
//! ```text
//! filter table (one ruleset per family; only chains policyc owns)
//!  ├── POLICYC-FORWARD  cut flow → DROP; ct established,related → RETURN; jump PC-EGRESS; jump PC-INGRESS
//!  ├── POLICYC-INPUT    cut flow → DROP; ct established,related → RETURN; jump PC-EGRESS (pod → its own node)
//!  ├── PC-EGRESS        -i <pod interface> → goto PC-EP-<pod>-OUT   (isolated pods only)
//!  ├── PC-INGRESS       -o <pod interface> → goto PC-EP-<pod>-IN
//!  ├── PC-EP-<pod>-*    clear mark bit; loopback → RETURN;
//!  │                    for each policy: jump PC-NP-<pol>-*, mark bit set → RETURN;
//!  │                    DROP (counted, comment "ns/pod ingress denied: selected by …")
//!  ├── PC-NP-<pol>-*    one rule per peer × port match, comment "ns/name ingress[i]",
//!  │                    goto PC-ALLOWED
//!  ├── PC-ALLOWED       set mark bit (then back to the PC-EP chain that called the policy)
//!  ├── PC-ADM-*, PC-BL-* an Admin / Baseline tier for one ordered list of admin policies: their
//!  │                    rules in evaluation order, each peer × port match → goto PC-AR-<rule>
//!  └── PC-AR-<rule>     Accept: set mark bit; Deny: DROP; Pass: RETURN (comment "cnp/x ingress[i]")
//!
//! raw table (before conntrack)
//!  ├── POLICYC-GUARD    -i <pod interface> → goto PC-GUARD-<pod>
//!  └── PC-GUARD-<pod>   own addresses (IPv6: and fe80::/10, ::) → RETURN; DROP (comment
//!                       "ns/pod: source address not the pod's: spoofed, dropped")
//! ```
//!
//! The endpoint chain jumps to its Admin tier chain first and RETURNs if the mark bit is set
//! (accepted); a Pass or no match falls through to the NetworkPolicy jumps, and when no
//! NetworkPolicy isolates the pod, to the Baseline tier chain. Unlike the nft ruleset, whose
//! tier tables cost a constant number of lookups, the iptables tiers walk their rules in order.
//!
//! In iptables an `ACCEPT` in a called chain ends the whole built-in chain, so policyc never
//! accepts: a flow it allows RETURNs from `POLICYC-FORWARD` / `POLICYC-INPUT` and the rest of the
//! built-in chain still decides, just as an nft `accept` in policyc's table leaves other tables
//! to decide. A denied flow is DROPped, which is final. The source's egress is judged first and
//! then the destination's ingress: both must allow a flow. Policy chains are shared by every pod
//! a policy selects, so a matching rule cannot return to "its" pod directly: it jumps (`-g`) to
//! `PC-ALLOWED`, which sets the mark bit [`MARK_ALLOWED`], and the pod chain RETURNs when the bit
//! is set after a policy chain. The pod chain clears the bit on entry and the base chains clear
//! it before they return, so the bit is policyc's alone while the packet is in its chains.
//!
//! # Loading
//!
//! ```sh
//! ipset restore < policyc.ipset                 # render_ipset: sets first, the rules use them
//! iptables-restore --noflush < policyc.rules4   # render_iptables(ir, Family::V4)
//! ip6tables-restore --noflush < policyc.rules6  # render_iptables(ir, Family::V6)
//! sh policyc-hooks4.sh; sh policyc-hooks6.sh    # render_iptables_hooks: jumps from FORWARD/INPUT
//! ```
//!
//! Every step can be repeated. The set script creates each set with `-exist`, fills a temporary
//! twin and `swap`s it in, so a live set is never seen empty or half filled. The rules declare
//! and flush only policyc's chains (`--noflush` leaves every other chain alone) and are
//! replaced in one transaction. `iptables-restore` cannot say "insert only if absent", so the
//! jumps from the built-in `FORWARD` and `INPUT` chains are a separate shell script,
//! [`render_iptables_hooks`], that checks with `-C` and inserts at position 1 with `-I` only
//! when the jump is missing.
//!
//! Chains and sets of pods and policies that are gone stay behind, unreferenced, after a
//! reload. [`render_iptables_prune`] (given `iptables-save -t filter` and `-t raw`) and [`render_ipset_prune`]
//! (given `ipset list -n`) produce the input that deletes them; run them after the new rules are
//! in, rules before sets (a set cannot be destroyed while a rule uses it).
//!
//! Removing everything (an uninstall): [`render_iptables_unhook`] deletes the jumps,
//! [`render_iptables_remove`] then every chain policyc owns, and [`render_ipset_prune`] of an
//! empty IR every set.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::cidr::{self, Cidr, Family, IpRange};
use crate::flows::FlowVerdict;
use crate::ir::*;
use crate::model::{AdminAction, AdminRef, Direction, Protocol, Tier};

use super::{labels, CUT_COMMENT, CUT_MARK};

/// The chain the hook in `FORWARD` jumps to.
pub const CHAIN_FORWARD: &str = "POLICYC-FORWARD";
/// The chain the hook in `INPUT` jumps to.
pub const CHAIN_INPUT: &str = "POLICYC-INPUT";
/// The chain the hook in the `raw` table's `PREROUTING` jumps to: the per-pod source guard.
pub const CHAIN_GUARD: &str = "POLICYC-GUARD";
/// Prefix of every other chain policyc owns.
pub const CHAIN_PREFIX: &str = "PC-";
/// Prefix of every ipset policyc owns.
pub const SET_PREFIX: &str = "pc-";
/// The packet mark bit meaning "a policy rule of the direction being judged allowed the flow".
/// Reserved for policyc: its chains overwrite it.
pub const MARK_ALLOWED: u32 = 0x10000;

const CHAIN_EGRESS: &str = "PC-EGRESS";
const CHAIN_INGRESS: &str = "PC-INGRESS";
const CHAIN_ALLOWED: &str = "PC-ALLOWED";

/// iptables chain names are at most 28 characters.
const MAX_CHAIN: usize = 28;
/// ipset names are at most 31 characters.
const MAX_SET: usize = 31;
/// Suffix of the temporary twin a set is filled in before it is swapped in.
const TMP_SUFFIX: &str = "-tmp";
/// xt_comment holds at most 255 bytes.
const MAX_COMMENT: usize = 255;
/// `-m multiport` takes at most 15 ports; a range counts as two.
const MULTIPORT_MAX: usize = 15;
/// Fixed so that re-creating an existing set with `-exist` always matches its parameters.
const SET_MAXELEM: u32 = 1 << 20;

/// Why the iptables rendering cannot express `ir`, if it cannot: it supports the Canal
/// attachment only. The bridge attachment (plain Flannel) needs a per-port source guard in the
/// `bridge` family and the `br_netfilter` fail-closed check, which the nftables backend has and
/// iptables does not; rendering it anyway would dispatch by interfaces that bridged traffic does
/// not show. Callers check this before [`render_iptables`] and refuse.
pub fn unsupported(ir: &Ir) -> Option<String> {
    match &ir.attachment {
        Attachment::Canal { .. } => None,
        Attachment::Bridge { bridge } => Some(format!(
            "the iptables backend supports the Canal attachment only, not the bridge attachment (pods on bridge {bridge}); use the nftables backend"
        )),
    }
}

// === Names ===

fn family_digit(f: Family) -> &'static str {
    match f {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

fn ipset_family(f: Family) -> &'static str {
    match f {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

/// The ipset holding one family of an IR set or port set: `pc-<name>-4` / `pc-<name>-6`. Names
/// that would not leave room for the temporary suffix within 31 characters are hashed.
pub fn ipset_name(ir_set: &str, f: Family) -> String {
    let name = format!("{SET_PREFIX}{ir_set}-{}", family_digit(f));
    if name.len() + TMP_SUFFIX.len() <= MAX_SET {
        name
    } else {
        format!("{SET_PREFIX}{}-{}", short_hash(ir_set), family_digit(f))
    }
}

/// The iptables chain of an IR chain (policy or endpoint chain): `PC-` + the name in upper
/// case with `-` for `_`, e.g. `np_0123456789ab_in` → `PC-NP-0123456789AB-IN`. Names longer
/// than 28 characters are hashed.
pub fn chain_name(ir_chain: &str) -> String {
    let name = format!("{CHAIN_PREFIX}{}", ir_chain.to_uppercase().replace('_', "-"));
    if name.len() <= MAX_CHAIN && name.bytes().all(|b| b.is_ascii_graphic()) {
        name
    } else {
        format!("{CHAIN_PREFIX}{}", short_hash(ir_chain).to_uppercase())
    }
}

/// Quotes a comment for iptables-restore: no quotes, backslashes or line breaks inside, at most
/// 255 bytes.
pub fn comment(s: &str) -> String {
    format!("\"{}\"", super::sanitize_comment(s, MAX_COMMENT))
}

fn scope(ir: &Ir) -> String {
    match &ir.node {
        Some(n) => format!("node {n}"),
        None => "all endpoints".to_string(),
    }
}

/// A `#` comment line for a restore file: one line, whatever the text holds.
fn comment_line(out: &mut String, s: &str) {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let _ = writeln!(out, "# {s}");
}

// === ipset ===

/// The smallest list of CIDRs covering exactly `r`, in address order. Never a `/0`: `hash:net`
/// cannot hold one, so the whole address space becomes two `/1`s.
pub fn range_to_cidrs(r: &IpRange) -> Vec<Cidr> {
    let bits = r.family.bits() as u32;
    let mut out = Vec::new();
    let mut start = r.start;
    loop {
        let align = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        let remaining = r.end - start; // block size - 1 must not exceed this
        let mut host = align.min(bits - 1);
        while host > 0 && (1u128 << host) - 1 > remaining {
            host -= 1;
        }
        let cidr = Cidr::new(cidr::from_u128(r.family, start), (bits - host) as u8).expect("prefix within family");
        out.push(cidr);
        let last = start + ((1u128 << host) - 1);
        if last >= r.end {
            break;
        }
        start = last + 1;
    }
    out
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Creates (if missing) and atomically refills one set.
fn write_set(out: &mut String, name: &str, kind: &str, f: Family, members: &[String]) {
    let tmp = format!("{name}{TMP_SUFFIX}");
    let params = format!("{kind} family {} maxelem {SET_MAXELEM}", ipset_family(f));
    let _ = writeln!(out, "create {name} {params} -exist");
    let _ = writeln!(out, "create {tmp} {params} -exist");
    let _ = writeln!(out, "flush {tmp}");
    for m in members {
        let _ = writeln!(out, "add {tmp} {m}");
    }
    let _ = writeln!(out, "swap {tmp} {name}");
    let _ = writeln!(out, "destroy {tmp}");
}

/// Every set the rules of both families use, as `ipset restore` input: selector sets as
/// `hash:ip`, ipBlock sets as `hash:net` (the IR's intervals, ipBlock minus excepts, as covering
/// CIDRs), named-port sets as `hash:ip,port` with `ip,tcp:80` members. Restoring it again
/// updates every set in place.
pub fn render_ipset(ir: &Ir) -> String {
    let mut out = String::new();
    comment_line(
        &mut out,
        &format!(
            "policyc ipsets for {}: {} address sets, {} named-port sets",
            scope(ir),
            ir.sets.len(),
            ir.port_sets.len()
        ),
    );
    for (name, set) in ir
        .sets
        .iter()
        .chain(ir.tier_sets.iter().filter(|(n, _)| !ir.sets.contains_key(*n)))
    {
        for f in &set.families {
            let (kind, members): (&str, Vec<String>) = match set.kind {
                SetKind::Selector => (
                    "hash:ip",
                    // Pod addresses, one by one (hash:ip takes no IPv6 ranges).
                    set.members_of(*f)
                        .flat_map(|r| (r.start..=r.end).map(move |v| cidr::from_u128(r.family, v).to_string()))
                        .collect(),
                ),
                SetKind::IpBlock => (
                    "hash:net",
                    set.members_of(*f)
                        .flat_map(range_to_cidrs)
                        .map(|c| c.to_string())
                        .collect(),
                ),
            };
            comment_line(&mut out, &format!("{name}: {}", set.description));
            write_set(&mut out, &ipset_name(name, *f), kind, *f, &members);
        }
    }
    for (name, set) in &ir.port_sets {
        for f in [Family::V4, Family::V6] {
            let members: Vec<String> = set
                .members
                .iter()
                .filter(|(ip, _)| Family::of(ip) == f)
                .map(|(ip, port)| format!("{ip},{}:{port}", protocol_name(set.protocol)))
                .collect();
            comment_line(&mut out, &format!("{name}: {}", labels::named_port(set)));
            write_set(&mut out, &ipset_name(name, f), "hash:ip,port", f, &members);
        }
    }
    out
}

/// Names of every set [`render_ipset`] creates for this IR, sorted.
pub fn ipset_names(ir: &Ir) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, set) in ir.sets.iter().chain(&ir.tier_sets) {
        for f in &set.families {
            names.insert(ipset_name(name, *f));
        }
    }
    for name in ir.port_sets.keys() {
        for f in [Family::V4, Family::V6] {
            names.insert(ipset_name(name, f));
        }
    }
    names
}

/// `ipset restore` input destroying policyc's sets (those named `pc-…`) listed in `existing`
/// (the output of `ipset list -n`) that this IR no longer uses. Load it only after the rules
/// that referenced them are gone.
pub fn render_ipset_prune(ir: &Ir, existing: &str) -> String {
    let keep = ipset_names(ir);
    let stale: BTreeSet<&str> = existing
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(SET_PREFIX) && !keep.contains(*n))
        .collect();
    let mut out = String::new();
    for name in stale {
        let _ = writeln!(out, "destroy {name}");
    }
    out
}

// === iptables ===

fn restore_cmd(f: Family) -> &'static str {
    match f {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn host_prefix(f: Family) -> u8 {
    f.bits()
}

/// Every chain of the ruleset, in the order they are declared.
fn chains(ir: &Ir) -> Vec<String> {
    let mut v: Vec<String> = [CHAIN_FORWARD, CHAIN_INPUT, CHAIN_EGRESS, CHAIN_INGRESS, CHAIN_ALLOWED]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for ep in &ir.endpoints {
        for d in [Direction::Ingress, Direction::Egress] {
            if ep.isolation(d).enforced() {
                v.push(chain_name(&ep.chain_name(d)));
            }
        }
    }
    v.extend(ir.chains.keys().map(|n| chain_name(n)));
    v.extend(tier_chains(ir).into_keys());
    v.extend(ir.admin_rules.keys().map(|n| chain_name(n)));
    v
}

/// The tier chain of an ordered list of admin policies for one direction.
fn tier_chain_name(tier: Tier, d: Direction, policies: &[AdminRef]) -> String {
    let key: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    chain_name(&format!(
        "{}_{}_{}",
        tier.prefix(),
        short_hash(&key.join(",")),
        d.suffix()
    ))
}

/// Every tier chain the endpoints use: name → (tier, direction, policies in order).
fn tier_chains(ir: &Ir) -> std::collections::BTreeMap<String, (Tier, Direction, Vec<AdminRef>)> {
    let mut out = std::collections::BTreeMap::new();
    for ep in &ir.endpoints {
        for d in [Direction::Ingress, Direction::Egress] {
            let iso = ep.isolation(d);
            for (tier, policies) in [(Tier::Admin, &iso.admin), (Tier::Baseline, &iso.baseline)] {
                if !policies.is_empty() {
                    out.entry(tier_chain_name(tier, d, policies))
                        .or_insert_with(|| (tier, d, policies.clone()));
                }
            }
        }
    }
    out
}

/// The `filter` table for one family as `iptables-restore --noflush` (V4) or
/// `ip6tables-restore --noflush` (V6) input: declares and flushes policyc's chains and fills
/// them. Does not touch `FORWARD` or `INPUT`; see [`render_iptables_hooks`].
pub fn render_iptables(ir: &Ir, family: Family) -> String {
    let mut out = String::new();
    comment_line(
        &mut out,
        &format!(
            "policyc {} ruleset for {}: {} endpoints, {} policy chains; load with {}-restore --noflush",
            restore_cmd(family),
            scope(ir),
            ir.endpoints.len(),
            ir.chains.len(),
            restore_cmd(family)
        ),
    );
    out.push_str("*filter\n");
    let chains = chains(ir);
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for c in &chains {
        let _ = writeln!(out, "-F {c}");
    }

    let clear = format!("-j MARK --set-xmark 0x0/{MARK_ALLOWED:#x}");
    let cut = format!(
        "-m connmark --mark {CUT_MARK:#x}/{CUT_MARK:#x} -m comment --comment {} -j DROP",
        comment(CUT_COMMENT)
    );
    let established = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN";
    let cut_mark = format!("-m connmark --mark {CUT_MARK:#x}/{CUT_MARK:#x} ");
    out.push_str(&flow_log(
        ir,
        FlowVerdict::Denied,
        CUT_COMMENT,
        CHAIN_FORWARD,
        &cut_mark,
    ));
    let _ = writeln!(out, "-A {CHAIN_FORWARD} {cut}");
    let _ = writeln!(out, "-A {CHAIN_FORWARD} {established}");
    let _ = writeln!(out, "-A {CHAIN_FORWARD} -j {CHAIN_EGRESS}");
    let _ = writeln!(out, "-A {CHAIN_FORWARD} -j {CHAIN_INGRESS}");
    let _ = writeln!(out, "-A {CHAIN_FORWARD} {clear}");
    out.push_str(&flow_log(ir, FlowVerdict::Denied, CUT_COMMENT, CHAIN_INPUT, &cut_mark));
    let _ = writeln!(out, "-A {CHAIN_INPUT} {cut}");
    let _ = writeln!(out, "-A {CHAIN_INPUT} {established}");
    let _ = writeln!(out, "-A {CHAIN_INPUT} -j {CHAIN_EGRESS}");
    let _ = writeln!(out, "-A {CHAIN_INPUT} {clear}");
    for (d, chain, flag) in [
        (Direction::Egress, CHAIN_EGRESS, "-i"),
        (Direction::Ingress, CHAIN_INGRESS, "-o"),
    ] {
        for ep in ir.endpoints.iter().filter(|ep| ep.isolation(d).enforced()) {
            let _ = writeln!(
                out,
                "-A {chain} {flag} {} -m comment --comment {} -g {}",
                ep.interface,
                comment(&ep.pod.to_string()),
                chain_name(&ep.chain_name(d))
            );
        }
    }
    let _ = writeln!(
        out,
        "-A {CHAIN_ALLOWED} -j MARK --set-xmark {MARK_ALLOWED:#x}/{MARK_ALLOWED:#x}"
    );

    for ep in &ir.endpoints {
        for d in [Direction::Ingress, Direction::Egress] {
            if ep.isolation(d).enforced() {
                render_endpoint_chain(&mut out, ir, ep, d, family, &clear);
            }
        }
    }
    for (name, chain) in &ir.chains {
        render_policy_chain(&mut out, ir, name, chain, family);
    }
    for (name, (_, d, policies)) in tier_chains(ir) {
        render_tier_chain(&mut out, ir, &name, d, &policies, family);
    }
    for (name, rule) in &ir.admin_rules {
        let cname = chain_name(name);
        let text = labels::admin_rule(rule);
        let c = comment(&text);
        let (verdict, logged) = match rule.action {
            AdminAction::Accept => (
                format!("-j MARK --set-xmark {MARK_ALLOWED:#x}/{MARK_ALLOWED:#x}"),
                FlowVerdict::Allowed,
            ),
            AdminAction::Deny => ("-j DROP".to_string(), FlowVerdict::Denied),
            AdminAction::Pass => ("-j RETURN".to_string(), FlowVerdict::Passed),
        };
        out.push_str(&flow_log(ir, logged, &text, &cname, ""));
        let _ = writeln!(out, "-A {cname} -m comment --comment {c} {verdict}");
    }
    out.push_str("COMMIT\n");
    render_guard(&mut out, ir, family);
    out
}

/// The per-pod source guard, in the `raw` table (before conntrack, like the nft ruleset's
/// `prerouting_guard` at priority raw): `POLICYC-GUARD` sends each pod interface to its
/// `PC-GUARD-<pod>` chain, which RETURNs the pod's own addresses (and, in IPv6, link-local and
/// unspecified sources, for neighbour discovery) and DROPs everything else, counted and
/// commented with the pod. One chain per pod because iptables cannot negate a list of
/// addresses (`! -s a,b`).
fn render_guard(out: &mut String, ir: &Ir, family: Family) {
    out.push_str("*raw\n");
    let guards = guard_chains(ir);
    let _ = writeln!(out, ":{CHAIN_GUARD} - [0:0]");
    for (_, c) in &guards {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(out, "-F {CHAIN_GUARD}");
    for (_, c) in &guards {
        let _ = writeln!(out, "-F {c}");
    }
    for (ep, c) in &guards {
        let _ = writeln!(
            out,
            "-A {CHAIN_GUARD} -i {} -m comment --comment {} -g {c}",
            ep.interface,
            comment(&ep.pod.to_string())
        );
    }
    for (ep, c) in &guards {
        for ip in ep.ips.iter().filter(|ip| Family::of(ip) == family) {
            let _ = writeln!(out, "-A {c} -s {ip}/{} -j RETURN", host_prefix(family));
        }
        if family == Family::V6 {
            let _ = writeln!(out, "-A {c} -s fe80::/10 -j RETURN");
            let _ = writeln!(out, "-A {c} -s ::/128 -j RETURN");
        }
        let text = labels::spoofed(ep);
        out.push_str(&flow_log(ir, FlowVerdict::Denied, &text, c, ""));
        let _ = writeln!(out, "-A {c} -m comment --comment {} -j DROP", comment(&text));
    }
    out.push_str("COMMIT\n");
}

/// The endpoints with a source guard and their guard chains: every pod with an interface (the
/// iptables rendering is the Canal attachment's, see [`unsupported`]).
fn guard_chains(ir: &Ir) -> Vec<(&Endpoint, String)> {
    ir.endpoints
        .iter()
        .filter(|ep| !ep.interface.is_empty())
        .map(|ep| (ep, chain_name(&ep.guard_chain_name())))
        .collect()
}

fn render_endpoint_chain(out: &mut String, ir: &Ir, ep: &Endpoint, d: Direction, f: Family, clear: &str) {
    let name = chain_name(&ep.chain_name(d));
    let _ = writeln!(out, "-A {name} {clear}");
    // A pod reaching itself through its own address (hairpin) is never blocked.
    let other_end = match d {
        Direction::Ingress => "-s",
        Direction::Egress => "-d",
    };
    let c = comment(&format!("{} to itself", ep.pod));
    for ip in ep.ips.iter().filter(|ip| Family::of(ip) == f) {
        let _ = writeln!(
            out,
            "-A {name} {other_end} {ip}/{} -m comment --comment {c} -j RETURN",
            host_prefix(f)
        );
    }
    let iso = ep.isolation(d);
    let mark_return = format!("-A {name} -m mark --mark {MARK_ALLOWED:#x}/{MARK_ALLOWED:#x} -j RETURN");
    if !iso.admin.is_empty() {
        let _ = writeln!(out, "-A {name} -j {}", tier_chain_name(Tier::Admin, d, &iso.admin));
        let _ = writeln!(out, "{mark_return}");
    }
    if iso.isolated() {
        for chain in &iso.chains {
            let _ = writeln!(out, "-A {name} -j {}", chain_name(chain));
            let _ = writeln!(out, "{mark_return}");
        }
        let text = labels::endpoint_denied(ep, d);
        out.push_str(&flow_log(ir, FlowVerdict::Denied, &text, &name, ""));
        let _ = writeln!(out, "-A {name} -m comment --comment {} -j DROP", comment(&text));
    } else if !iso.baseline.is_empty() {
        let _ = writeln!(
            out,
            "-A {name} -j {}",
            tier_chain_name(Tier::Baseline, d, &iso.baseline)
        );
    }
}

/// A tier's rules for one ordered list of admin policies: each peer × port match of each rule,
/// in evaluation order, goes to the rule's chain.
fn render_tier_chain(out: &mut String, ir: &Ir, name: &str, d: Direction, policies: &[AdminRef], f: Family) {
    let other_end = match d {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    };
    let mut rules: Vec<(&String, &AdminRuleIr)> = ir
        .admin_rules
        .iter()
        .filter(|(_, r)| r.direction == d && policies.contains(&r.policy))
        .collect();
    rules.sort_by_key(|(_, r)| (policies.iter().position(|p| *p == r.policy), r.rule));
    for (rule_chain, r) in rules {
        for peer in &r.peers {
            let peer = match peer {
                PeerMatch::Any => String::new(),
                PeerMatch::Set(s) => {
                    if !ir.tier_sets[s].families.contains(&f) {
                        continue;
                    }
                    format!("-m set --match-set {} {other_end} ", ipset_name(s, f))
                }
            };
            for pm in &r.ports {
                for ports in port_matches(pm, f) {
                    let (proto, rest) = split_protocol(&ports);
                    let _ = writeln!(out, "-A {name} {proto}{peer}{rest}-g {}", chain_name(rule_chain));
                }
            }
        }
    }
}

/// `-m multiport --dports` items, at most 15 ports (a range counts as two) per list.
fn multiport_chunks(items: &[(u16, u16)]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut weight = 0;
    for &(first, last) in items {
        let (s, w) = if first == last {
            (first.to_string(), 1)
        } else {
            (format!("{first}:{last}"), 2)
        };
        if weight + w > MULTIPORT_MAX {
            chunks.push(cur.join(","));
            cur.clear();
            weight = 0;
        }
        cur.push(s);
        weight += w;
    }
    if !cur.is_empty() {
        chunks.push(cur.join(","));
    }
    chunks
}

/// The protocol and port part of a rule, one entry per rule needed.
fn port_matches(m: &PortMatch, f: Family) -> Vec<String> {
    match m {
        PortMatch::Any => vec![String::new()],
        PortMatch::Named { set, protocol } => vec![format!(
            "-p {} -m set --match-set {} dst,dst ",
            protocol_name(*protocol),
            ipset_name(set, f)
        )],
        PortMatch::Ports(ranges) => {
            let mut out = Vec::new();
            for p in Protocol::ALL {
                let rs: Vec<&PortRange> = ranges.iter().filter(|r| r.protocol == p).collect();
                if rs.is_empty() {
                    continue;
                }
                let proto = protocol_name(p);
                if rs.iter().any(|r| r.is_whole_protocol()) {
                    out.push(format!("-p {proto} "));
                    continue;
                }
                if let [r] = rs[..] {
                    let port = if r.first == r.last {
                        r.first.to_string()
                    } else {
                        format!("{}:{}", r.first, r.last)
                    };
                    out.push(format!("-p {proto} -m {proto} --dport {port} "));
                    continue;
                }
                let items: Vec<(u16, u16)> = rs.iter().map(|r| (r.first, r.last)).collect();
                for chunk in multiport_chunks(&items) {
                    out.push(format!("-p {proto} -m multiport --dports {chunk} "));
                }
            }
            out
        }
    }
}

fn render_policy_chain(out: &mut String, ir: &Ir, name: &str, chain: &PolicyChain, f: Family) {
    let cname = chain_name(name);
    let other_end = match chain.direction {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    };
    for r in &chain.rules {
        let peer = match &r.peer {
            PeerMatch::Any => String::new(),
            PeerMatch::Set(s) => {
                if !ir.sets.get(s).is_some_and(|set| set.families.contains(&f)) {
                    // An ipBlock of the other family: nothing of this family matches.
                    continue;
                }
                format!("-m set --match-set {} {other_end} ", ipset_name(s, f))
            }
        };
        let text = labels::policy_rule(chain, r);
        let c = comment(&text);
        for ports in port_matches(&r.ports, f) {
            // iptables-save order: protocol, then the matches as given.
            let (proto, rest) = split_protocol(&ports);
            out.push_str(&flow_log(
                ir,
                FlowVerdict::Allowed,
                &text,
                &cname,
                &format!("{proto}{peer}{rest}"),
            ));
            let _ = writeln!(
                out,
                "-A {cname} {proto}{peer}{rest}-m comment --comment {c} -g {CHAIN_ALLOWED}"
            );
        }
    }
}

/// The NFLOG rule of a verdict point, right before its verdict rule and with its matches (a
/// `limit` match stops the rest of its rule, so it cannot share the verdict's): rate-limited
/// and prefixed as the nft ruleset's log rule, so the agent reads both backends alike. Nothing
/// when the IR's flow log does not cover the verdict.
fn flow_log(ir: &Ir, v: FlowVerdict, text: &str, chain: &str, matches: &str) -> String {
    match &ir.flow_log {
        Some(fl) if fl.logs(v) => format!(
            "-A {chain} {matches}-m limit --limit {}/sec --limit-burst {} -j NFLOG --nflog-prefix {}{} --nflog-group {}\n",
            fl.rate.max(1),
            fl.burst.max(1),
            crate::flows::PREFIX,
            crate::flows::id(text),
            fl.group
        ),
        _ => String::new(),
    }
}

/// Splits a leading `-p proto ` off a port match.
fn split_protocol(m: &str) -> (&str, &str) {
    if let Some(rest) = m.strip_prefix("-p ") {
        let end = rest.find(' ').map_or(m.len(), |i| i + 4);
        (&m[..end], &m[end..])
    } else {
        ("", m)
    }
}

/// The jumps from built-in chains to policyc's: (table, built-in chain, policyc's chain).
const HOOKS: [(&str, &str, &str); 3] = [
    ("filter", "FORWARD", CHAIN_FORWARD),
    ("filter", "INPUT", CHAIN_INPUT),
    ("raw", "PREROUTING", CHAIN_GUARD),
];

/// A shell script that makes `FORWARD` and `INPUT` of the `filter` table, and `PREROUTING` of the
/// `raw` table (the source guard), jump to policyc's chains, inserted at position 1, each only if the jump is not there yet: safe to run any
/// number of times. Run it after loading [`render_iptables`] (the chains must exist).
pub fn render_iptables_hooks(family: Family) -> String {
    let cmd = restore_cmd(family);
    let mut out = String::new();
    out.push_str("#!/bin/sh\n");
    let _ = writeln!(
        out,
        "# policyc: jump from the {cmd} filter table's FORWARD and INPUT chains and the raw table's PREROUTING chain to policyc's chains, once."
    );
    out.push_str("set -e\n");
    for (table, builtin, ours) in HOOKS {
        let _ = writeln!(
            out,
            "{cmd} -w -t {table} -C {builtin} -j {ours} 2>/dev/null || {cmd} -w -t {table} -I {builtin} 1 -j {ours}"
        );
    }
    out
}

/// `iptables-restore --noflush` input deleting policyc's chains (those named `PC-…`) that
/// `saved` (the output of `iptables-save` for the family: the `filter` and `raw` tables, or
/// either) holds and this IR no longer renders. Load it after the new ruleset: nothing of the new
/// ruleset refers to those chains, so flushing them all and then deleting them succeeds. Empty
/// when nothing is stale.
pub fn render_iptables_prune(ir: &Ir, saved: &str) -> String {
    let filter: BTreeSet<String> = chains(ir).into_iter().collect();
    let raw: BTreeSet<String> = guard_chains(ir).into_iter().map(|(_, c)| c).collect();
    delete_chains(saved, |table, name| {
        let keep = match table {
            "filter" => &filter,
            "raw" => &raw,
            _ => return false,
        };
        name.starts_with(CHAIN_PREFIX) && !keep.contains(name)
    })
}

/// Shell script deleting the jumps [`render_iptables_hooks`] inserts (every copy of them); it
/// succeeds when there are none. Run it before [`render_iptables_remove`].
pub fn render_iptables_unhook(family: Family) -> String {
    let cmd = restore_cmd(family);
    let mut out = String::new();
    out.push_str(
        "#!/bin/sh
",
    );
    let _ = writeln!(
        out,
        "# policyc: delete the jumps from the {cmd} filter table's FORWARD and INPUT chains and the raw table's PREROUTING chain to policyc's chains."
    );
    for (table, builtin, ours) in HOOKS {
        let _ = writeln!(
            out,
            "while {cmd} -w -t {table} -D {builtin} -j {ours} 2>/dev/null; do :; done"
        );
    }
    out
}

/// `iptables-restore --noflush` input deleting every chain policyc owns (its base chains and
/// those named `PC-…`) that `saved` (`iptables-save` of the `filter` and `raw` tables) holds:
/// with [`render_iptables_unhook`] before it and [`render_ipset_prune`] of an empty IR after it,
/// it leaves nothing of policyc in the family's tables. Empty when nothing is there.
pub fn render_iptables_remove(saved: &str) -> String {
    delete_chains(saved, |table, name| {
        matches!(table, "filter" | "raw")
            && (name.starts_with(CHAIN_PREFIX) || [CHAIN_FORWARD, CHAIN_INPUT, CHAIN_GUARD].contains(&name))
    })
}

/// `iptables-restore --noflush` input flushing, then deleting, the chains of `saved` for which
/// `delete(table, chain)` holds (flushed first: rules of one may jump to another).
fn delete_chains(saved: &str, delete: impl Fn(&str, &str) -> bool) -> String {
    let mut table = String::new();
    let mut stale: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if delete(&table, name) {
                match stale.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, names)) => {
                        names.insert(name.to_string());
                    }
                    None => stale.push((table.clone(), BTreeSet::from([name.to_string()]))),
                }
            }
        }
    }
    let mut out = String::new();
    for (table, names) in &stale {
        let _ = writeln!(out, "*{table}");
        for c in names {
            let _ = writeln!(out, "-F {c}");
        }
        for c in names {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, CompileOptions, Loader};

    fn ir_of(yaml: &str) -> Ir {
        let mut l = Loader::new();
        l.add_text("test.yaml", yaml);
        let (snap, diags) = l.finish();
        assert!(diags.is_empty(), "{diags:?}");
        compile(&snap, &CompileOptions::default())
    }

    const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.0.0.3}]}
";

    const POLICIES: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: http}, {port: 9000, endPort: 9010}, {protocol: UDP}]
  - from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25]}}, {ipBlock: {cidr: 'fd00::/64', except: ['fd00::/120']}}]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: 1}, {port: 3}, {port: 5}, {port: 7}, {port: 9}, {port: 11}, {port: 13}, {port: 15},
            {port: 17}, {port: 19}, {port: 21}, {port: 23}, {port: 25}, {port: 27, endPort: 28}, {port: 31},
            {port: 33, protocol: SCTP}]
";

    fn full() -> Ir {
        ir_of(&format!("{PODS}{POLICIES}"))
    }

    #[test]
    fn names_fit_the_limits() {
        let ir = full();
        for n in ipset_names(&ir) {
            assert!(n.len() + TMP_SUFFIX.len() <= MAX_SET, "{n}");
        }
        for c in chains(&ir) {
            assert!(c.len() <= MAX_CHAIN, "{c}");
        }
        assert_eq!(chain_name("np_0123456789ab_in"), "PC-NP-0123456789AB-IN");
        assert_eq!(ipset_name("sel_0123456789ab", Family::V6), "pc-sel_0123456789ab-6");
        let long = "x".repeat(40);
        assert!(chain_name(&long).len() <= MAX_CHAIN);
        assert!(ipset_name(&long, Family::V4).len() + TMP_SUFFIX.len() <= MAX_SET);
        assert_ne!(chain_name(&long), chain_name(&"y".repeat(40)));
    }

    #[test]
    fn ranges_become_exact_cidrs() {
        let r = |s: &str| s.parse::<Cidr>().unwrap();
        let strs = |v: Vec<Cidr>| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        // 10.0.0.0/24 except 10.0.0.7/32
        let parts = cidr::subtract(&r("10.0.0.0/24"), &[r("10.0.0.7/32")]);
        let got: Vec<String> = parts.iter().flat_map(|p| strs(range_to_cidrs(p))).collect();
        assert_eq!(
            got,
            [
                "10.0.0.0/30",
                "10.0.0.4/31",
                "10.0.0.6/32",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "10.0.0.128/25"
            ]
        );
        assert_eq!(
            strs(range_to_cidrs(&r("0.0.0.0/0").range())),
            ["0.0.0.0/1", "128.0.0.0/1"]
        );
        assert_eq!(strs(range_to_cidrs(&r("::/0").range())), ["::/1", "8000::/1"]);
        assert_eq!(strs(range_to_cidrs(&r("10.1.2.3/32").range())), ["10.1.2.3/32"]);
        // Covering is exact: every address of the range and nothing else.
        let rg = IpRange {
            family: Family::V4,
            start: 5,
            end: 1000,
        };
        let cs = range_to_cidrs(&rg);
        let total: u128 = cs.iter().map(|c| c.range().end - c.range().start + 1).sum();
        assert_eq!(total, 996);
        assert!(cs.windows(2).all(|w| w[0].range().end + 1 == w[1].range().start));
        assert_eq!(cs[0].range().start, 5);
        assert_eq!(cs.last().unwrap().range().end, 1000);
        // Excepts of the whole IPv6 space.
        let parts = cidr::subtract(&r("::/0"), &[r("fd00::/8")]);
        let got: Vec<String> = parts.iter().flat_map(|p| strs(range_to_cidrs(p))).collect();
        assert!(
            got.contains(&"fe00::/7".to_string()) && got.contains(&"fc00::/8".to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|c| c.starts_with("fd")), "{got:?}");
    }

    #[test]
    fn ipset_text() {
        let ir = full();
        let text = render_ipset(&ir);
        assert!(text.contains(" hash:ip family inet maxelem 1048576 -exist\n"), "{text}");
        assert!(text.contains(" hash:ip family inet6 maxelem 1048576 -exist\n"));
        assert!(text.contains(" hash:net family inet maxelem 1048576 -exist\n"));
        assert!(text.contains(" hash:net family inet6 maxelem 1048576 -exist\n"));
        assert!(text.contains(" hash:ip,port family inet maxelem 1048576 -exist\n"));
        // Named port http: pod a's addresses, both families.
        assert!(text.contains("-4-tmp 10.0.0.1,tcp:8080\n"), "{text}");
        assert!(text.contains("-6-tmp fd00::1,tcp:8080\n"));
        // ipBlock 10.0.0.0/24 except 10.0.0.128/25 is exactly 10.0.0.0/25.
        assert!(text.contains("-4-tmp 10.0.0.0/25\n"));
        assert!(!text.contains("-tmp 10.0.0.128"));
        assert!(text.contains("ipBlock 10.0.0.0/24 except 10.0.0.128/25\n"));
        // fd00::/64 except fd00::/120 starts at fd00::100.
        assert!(text.contains("-6-tmp fd00::100/120\n"), "{text}");
        // Selector sets list single addresses: all pods in all namespaces.
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2"] {
            assert!(text.contains(&format!("-tmp {ip}\n")), "{ip}");
        }
        // Every created set is swapped into place; nothing but sets of the IR.
        for name in ipset_names(&ir) {
            assert!(text.contains(&format!("create {name} ")));
            assert!(text.contains(&format!("swap {name}-tmp {name}\n")));
        }
        assert_eq!(text.matches("\nswap ").count(), ipset_names(&ir).len());
        assert_eq!(text, render_ipset(&full()), "deterministic");
    }

    #[test]
    fn iptables_text() {
        let ir = full();
        let v4 = render_iptables(&ir, Family::V4);
        let a = ir.endpoints.iter().find(|e| e.pod.name == "a").unwrap();
        let a_in = chain_name(&a.chain_name(Direction::Ingress));
        let a_out = chain_name(&a.chain_name(Direction::Egress));
        assert!(v4.starts_with("# policyc iptables ruleset for all endpoints"));
        assert!(v4.contains("\n*filter\n:POLICYC-FORWARD - [0:0]\n:POLICYC-INPUT - [0:0]\n"));
        assert!(v4.ends_with("\nCOMMIT\n"));
        assert!(v4.contains("-A POLICYC-FORWARD -m connmark --mark 0x400000/0x400000 -m comment --comment \"flow cut: a policy change denies it\" -j DROP\n-A POLICYC-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n-A POLICYC-FORWARD -j PC-EGRESS\n-A POLICYC-FORWARD -j PC-INGRESS\n"));
        assert!(v4.contains("-A POLICYC-INPUT -j PC-EGRESS\n"));
        assert!(v4.contains(&format!(
            "-A PC-EGRESS -i {} -m comment --comment \"x/a\" -g {a_out}\n",
            a.interface
        )));
        assert!(v4.contains(&format!(
            "-A PC-INGRESS -o {} -m comment --comment \"x/a\" -g {a_in}\n",
            a.interface
        )));
        // Only pod a is isolated.
        assert_eq!(v4.matches("\n-A PC-EGRESS ").count(), 1);
        assert_eq!(v4.matches("\n-A PC-INGRESS ").count(), 1);
        assert!(v4.contains(&format!(
            "-A {a_in} -s 10.0.0.1/32 -m comment --comment \"x/a to itself\" -j RETURN\n"
        )));
        assert!(v4.contains(&format!("-A {a_out} -d 10.0.0.1/32 ")));
        assert!(!v4.contains("fd00::"));
        assert!(v4.contains(&format!("-A {a_in} -m mark --mark 0x10000/0x10000 -j RETURN\n")));
        assert!(v4.contains(&format!(
            "-A {a_in} -m comment --comment \"x/a ingress denied: selected by x/web\" -j DROP\n"
        )));
        assert!(!v4.contains("ACCEPT") && !v4.contains("REJECT"));

        let np_in = chain_name(&a.ingress.chains[0]);
        let np_out = chain_name(&a.egress.chains[0]);
        let rules = |chain: &str, text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
                .map(str::to_string)
                .collect()
        };
        let ing = rules(&np_in, &v4);
        // from b: named port http, 9000-9010/TCP, all UDP; ipBlock v4 (the v6 one is not here).
        assert_eq!(ing.len(), 4, "{ing:#?}");
        assert!(ing.iter().all(|r| r.ends_with(" -g PC-ALLOWED")));
        assert!(ing[..3]
            .iter()
            .all(|r| r.contains("-m comment --comment \"x/web ingress[0]\"")));
        assert!(ing[3].contains("-m comment --comment \"x/web ingress[1]\""));
        assert!(ing.iter().any(|r| r.starts_with("-p tcp -m set --match-set pc-sel_")
            && r.contains("-4 src -m set --match-set pc-port_")
            && r.contains("-4 dst,dst ")));
        assert!(ing
            .iter()
            .any(|r| r.contains("-p tcp -m set") && r.contains(" -m tcp --dport 9000:9010 ")));
        assert!(ing
            .iter()
            .any(|r| r.starts_with("-p udp -m set --match-set pc-sel_") && r.contains("-4 src -m comment")));
        assert!(ing[3].starts_with("-m set --match-set pc-cidr_"));
        let eg = rules(&np_out, &v4);
        // 15 TCP port entries weigh 16: two multiport rules; one SCTP port.
        assert_eq!(eg.len(), 3, "{eg:#?}");
        assert!(
            eg[0].contains(" -m multiport --dports 1,3,5,7,9,11,13,15,17,19,21,23,25,27:28 "),
            "{eg:#?}"
        );
        assert!(eg[1].contains(" -m multiport --dports 31 "));
        assert!(
            eg[2].starts_with("-p sctp -m set --match-set pc-sel_") && eg[2].contains("-4 dst -m sctp --dport 33 ")
        );

        let v6 = render_iptables(&ir, Family::V6);
        assert!(v6.starts_with("# policyc ip6tables ruleset"));
        assert!(v6.contains(&format!("-A {a_in} -s fd00::1/128 ")));
        assert!(!v6.contains("10.0.0."));
        let ing6 = rules(&np_in, &v6);
        assert_eq!(ing6.len(), 4);
        assert!(ing6.iter().all(|r| !r.contains("-4 ")));
        assert_eq!(v4, render_iptables(&full(), Family::V4), "deterministic");
    }

    #[test]
    fn every_policy_rule_carries_its_comment() {
        let ir = full();
        for f in [Family::V4, Family::V6] {
            let text = render_iptables(&ir, f);
            for (name, chain) in &ir.chains {
                let prefix = format!("-A {} ", chain_name(name));
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
                assert!(!lines.is_empty());
                for l in lines {
                    assert!(
                        l.contains(&format!("--comment \"{} {}[", chain.policy, chain.direction)),
                        "{l}"
                    );
                }
            }
        }
    }

    #[test]
    fn whole_protocol_and_default_deny() {
        let ir = ir_of(&format!(
            "{PODS}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny, namespace: y}}
spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: udp, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  egress: [{{ports: [{{protocol: UDP}}, {{protocol: UDP, port: 53}}, {{port: 80}}]}}]
"
        ));
        let v4 = render_iptables(&ir, Family::V4);
        let c = ir.endpoints.iter().find(|e| e.pod.name == "c").unwrap();
        let c_in = chain_name(&c.chain_name(Direction::Ingress));
        // No policy chain for a policy without rules: loopback, then drop.
        let lines: Vec<&str> = v4.lines().filter(|l| l.starts_with(&format!("-A {c_in} "))).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[2].ends_with("-j DROP"));
        assert!(
            v4.contains("-A PC-NP-") && v4.contains(" -p udp -m comment --comment \"x/udp egress[0]\" -g PC-ALLOWED\n")
        );
        assert!(v4.contains(" -p tcp -m tcp --dport 80 -m comment --comment \"x/udp egress[0]\" -g PC-ALLOWED\n"));
        assert!(!v4.contains("--dport 53"));
    }

    #[test]
    fn hooks_and_prune() {
        let h = render_iptables_hooks(Family::V6);
        assert!(h.contains(
            "ip6tables -w -t filter -C FORWARD -j POLICYC-FORWARD 2>/dev/null || ip6tables -w -t filter -I FORWARD 1 -j POLICYC-FORWARD\n"
        ));
        assert!(h.contains("-I INPUT 1 -j POLICYC-INPUT\n"));

        let ir = full();
        let current = render_iptables(&ir, Family::V4);
        assert_eq!(render_iptables_prune(&ir, &current), "");
        let saved = format!("*nat\n:PC-OTHER - [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:PC-NP-GONE-IN - [0:0]\n:KUBE-X - [0:0]\n{}", &current[current.find(":POLICYC").unwrap()..]);
        assert_eq!(
            render_iptables_prune(&ir, &saved),
            "*filter\n-F PC-NP-GONE-IN\n-X PC-NP-GONE-IN\nCOMMIT\n"
        );
        let names: Vec<String> = ipset_names(&ir).into_iter().collect();
        let listed = format!("{}\npc-sel_gone-4\nother\n", names.join("\n"));
        assert_eq!(render_ipset_prune(&ir, &listed), "destroy pc-sel_gone-4\n");
    }

    /// Removal: every jump, every chain of policyc's (base chains too) in filter and raw, no
    /// other chain.
    #[test]
    fn remove_everything() {
        let u = render_iptables_unhook(Family::V4);
        assert!(u.contains("while iptables -w -t filter -D FORWARD -j POLICYC-FORWARD 2>/dev/null; do :; done\n"));
        assert!(u.contains("-t raw -D PREROUTING -j POLICYC-GUARD "));
        let ir = full();
        let current = render_iptables(&ir, Family::V4);
        let saved =
            format!("*nat\n:PC-OTHER - [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-X - [0:0]\n{current}");
        let remove = render_iptables_remove(&saved);
        for line in remove.lines().filter(|l| l.starts_with("-X ")) {
            let name = &line[3..];
            assert!(name.starts_with("PC-") || name.starts_with("POLICYC-"), "{line}");
            assert!(remove.contains(&format!("-F {name}\n")), "{name} flushed first");
        }
        for c in [CHAIN_FORWARD, CHAIN_INPUT, CHAIN_GUARD, "PC-ALLOWED"] {
            assert!(remove.contains(&format!("-X {c}\n")), "{c}: {remove}");
        }
        assert!(!remove.contains("KUBE-X") && !remove.contains("PC-OTHER") && !remove.contains("*nat"));
        assert_eq!(render_iptables_remove("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"), "");
    }

    /// Canal's per-pod source guard in the raw table, and its stale chains pruned.
    #[test]
    fn source_guard() {
        let ir = full();
        let ep = ir.endpoints.iter().find(|e| e.pod.name == "a").expect("pod a");
        let c = chain_name(&ep.guard_chain_name());
        let v6 = render_iptables(&ir, Family::V6);
        let raw = &v6[v6.find("*raw\n").expect("a raw section")..];
        assert!(raw.contains(&format!(
            "-A {CHAIN_GUARD} -i {} -m comment --comment \"x/a\" -g {c}\n",
            ep.interface
        )));
        for rule in [
            "-s fd00::1/128 -j RETURN",
            "-s fe80::/10 -j RETURN",
            "-s ::/128 -j RETURN",
        ] {
            assert!(raw.contains(&format!("-A {c} {rule}\n")), "{rule}: {raw}");
        }
        assert!(raw.contains(&format!(
            "-A {c} -m comment --comment \"x/a: source address not the pod's: spoofed, dropped\" -j DROP\n"
        )));
        let v4 = render_iptables(&ir, Family::V4);
        assert!(v4.contains(&format!("-A {c} -s 10.0.0.1/32 -j RETURN\n")));
        assert!(!v4.contains("fe80::/10"));
        assert!(render_iptables_hooks(Family::V4)
            .contains("iptables -w -t raw -C PREROUTING -j POLICYC-GUARD 2>/dev/null || iptables -w -t raw -I PREROUTING 1 -j POLICYC-GUARD\n"));

        let saved = format!("{v4}*raw\n:PC-GUARD-0123456789AB - [0:0]\nCOMMIT\n");
        assert_eq!(
            render_iptables_prune(&ir, &saved),
            "*raw\n-F PC-GUARD-0123456789AB\n-X PC-GUARD-0123456789AB\nCOMMIT\n"
        );
    }

    #[test]
    fn comments_are_safe() {
        assert_eq!(comment("a\"b\\c\nd"), "\"a'b'c d\"");
        let long = comment(&"é".repeat(200));
        assert!(long.len() <= MAX_COMMENT + 2);
        assert!(long.ends_with("...\""));
    }
}
