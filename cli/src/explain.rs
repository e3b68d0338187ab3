//! `policyc explain`: one flow, its verdict, and the rules that decided it.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use policyc_compiler::eval::{flow_addresses, AdminMatch, DecidedBy, SideVerdict};
use policyc_compiler::flows::{FlowPeer, FlowRecord};
use policyc_compiler::ir::Endpoint;
use policyc_compiler::model::{AdminAction, AdminRef, Pod};
use policyc_compiler::{Direction, Evaluator, Flow, Ir, ObjectRef, Snapshot, Verdict};
use serde::Serialize;

/// One end of a flow as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Pod(ObjectRef),
    Ip(IpAddr),
}

impl std::str::FromStr for End {
    type Err = String;
    fn from_str(s: &str) -> Result<End, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(End::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(End::Pod(ObjectRef::new(ns, name)))
            }
            _ => Err(format!("{s:?} is neither NAMESPACE/POD nor an IP address")),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub from: EndInfo,
    pub to: EndInfo,
    pub protocol: policyc_compiler::Protocol,
    pub port: u16,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Debug, Serialize)]
pub struct EndInfo {
    pub ip: IpAddr,
    pub pod: Option<String>,
    pub node: Option<String>,
}

fn endpoint<'a>(snapshot: &Snapshot, ir: &'a Ir, id: &ObjectRef) -> Result<&'a Endpoint> {
    if let Some(ep) = ir.endpoints.iter().find(|e| &e.pod == id) {
        return Ok(ep);
    }
    match snapshot.pods.get(id) {
        None => bail!("pod {id} not found in the input"),
        Some(p) => bail!("pod {id} is not a policy endpoint: {}", why_not_endpoint(p)),
    }
}

fn why_not_endpoint(p: &Pod) -> &'static str {
    if p.host_network {
        "it uses the host network"
    } else if p.ips.is_empty() {
        "it has no IP (status.podIP / status.podIPs)"
    } else {
        "it has finished (phase Succeeded or Failed)"
    }
}

/// Resolves both ends to addresses of one family.
fn addresses(snapshot: &Snapshot, ir: &Ir, from: &End, to: &End) -> Result<(IpAddr, IpAddr)> {
    let pick = |ep: &Endpoint, other: &IpAddr| {
        ep.ips
            .iter()
            .find(|ip| ip.is_ipv4() == other.is_ipv4())
            .copied()
            .ok_or_else(|| {
                anyhow!(
                    "pod {} has no {} address",
                    ep.pod,
                    if other.is_ipv4() { "IPv4" } else { "IPv6" }
                )
            })
    };
    match (from, to) {
        (End::Ip(a), End::Ip(b)) => {
            if a.is_ipv4() != b.is_ipv4() {
                bail!("{a} and {b} are of different address families");
            }
            Ok((*a, *b))
        }
        (End::Pod(p), End::Ip(b)) => Ok((pick(endpoint(snapshot, ir, p)?, b)?, *b)),
        (End::Ip(a), End::Pod(p)) => Ok((*a, pick(endpoint(snapshot, ir, p)?, a)?)),
        (End::Pod(p), End::Pod(q)) => {
            let (s, d) = (endpoint(snapshot, ir, p)?, endpoint(snapshot, ir, q)?);
            flow_addresses(s, d).ok_or_else(|| anyhow!("{p} and {q} share no address family"))
        }
    }
}

pub fn explain(
    snapshot: &Snapshot,
    ir: &Ir,
    from: &End,
    to: &End,
    protocol: policyc_compiler::Protocol,
    port: u16,
) -> Result<Explanation> {
    let (src, dst) = addresses(snapshot, ir, from, to)?;
    let ev = Evaluator::new(ir);
    let verdict = ev.evaluate(&Flow {
        src,
        dst,
        protocol,
        port,
    });
    let info = |ip: IpAddr| {
        let ep = ev.endpoint(&ip);
        EndInfo {
            ip,
            pod: ep.map(|e| e.pod.to_string()),
            node: ep.and_then(|e| e.node.clone()),
        }
    };
    Ok(Explanation {
        from: info(src),
        to: info(dst),
        protocol,
        port,
        verdict,
    })
}

fn end_text(e: &EndInfo) -> String {
    match (&e.pod, &e.node) {
        (Some(p), Some(n)) => format!("{p} ({}, node {n})", e.ip),
        (Some(p), None) => format!("{p} ({})", e.ip),
        _ => format!("{} (not a pod endpoint)", e.ip),
    }
}

fn side_text(out: &mut String, s: &SideVerdict, ir: &Ir) {
    let what = match s.direction {
        Direction::Egress => "egress of the source",
        Direction::Ingress => "ingress of the destination",
    };
    let word = if s.allowed { "ALLOWED" } else { "DENIED" };
    let Some(ep) = &s.endpoint else {
        let _ = writeln!(out, "{what}: {word} (not a pod endpoint: no policy applies)");
        return;
    };
    let _ = writeln!(out, "{what} {ep}: {word}");
    let _ = writeln!(out, "  tier walk: {}", tier_walk(s));
    let names = |v: &[AdminRef]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    if !s.admin_policies.is_empty() {
        let _ = writeln!(out, "  Admin tier, in order: {}", names(&s.admin_policies));
        match &s.admin {
            Some(m) => admin_match_text(out, m),
            None => {
                let _ = writeln!(out, "    no Admin rule matches this flow");
            }
        }
        if s.decided_by == DecidedBy::Admin {
            return;
        }
    }
    if !s.isolated {
        let _ = writeln!(out, "  no NetworkPolicy selects {ep} for {}: not isolated", s.direction);
    } else {
        let names: Vec<String> = s.policies.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "  NetworkPolicies selecting it for {}: {}",
            s.direction,
            names.join(", ")
        );
        let ep_chain = ir
            .endpoints
            .iter()
            .find(|e| &e.pod == ep)
            .map(|e| e.chain_name(s.direction))
            .unwrap_or_default();
        match &s.allowed_by {
            Some(r) => {
                let _ = writeln!(out, "  allowed by:  {r}");
                let _ = writeln!(
                    out,
                    "               nft chain {} (comment \"{} {}[{}]\")",
                    r.chain, r.policy, r.direction, r.rule
                );
            }
            None if s.allowed => {
                let _ = writeln!(out, "  a pod may always reach itself");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  no rule of these policies allows this flow: dropped by the final rule of nft chain {ep_chain}"
                );
            }
        }
        return;
    }
    if !s.baseline_policies.is_empty() {
        let _ = writeln!(out, "  Baseline tier, in order: {}", names(&s.baseline_policies));
        match &s.baseline {
            Some(m) => admin_match_text(out, m),
            None => {
                let _ = writeln!(out, "    no Baseline rule matches this flow");
            }
        }
    }
    if s.decided_by == DecidedBy::Default {
        let _ = writeln!(
            out,
            "  nothing decides: all {} traffic allowed (Kubernetes default)",
            s.direction
        );
    }
}

fn admin_match_text(out: &mut String, m: &AdminMatch) {
    let _ = writeln!(
        out,
        "    first match: {} (priority {}) -> {}",
        m.rule, m.priority, m.action
    );
    let _ = writeln!(out, "                 {}, {}", m.peer, m.ports);
    let _ = writeln!(out, "                 nft chain {}", m.chain);
}

/// One line: each tier consulted and what it did, e.g.
/// `Admin cnp/x ingress[0] Pass -> NetworkPolicy x/deny denies`.
pub fn tier_walk(s: &SideVerdict) -> String {
    let mut steps = Vec::new();
    if s.decided_by == DecidedBy::Loopback {
        return "a pod reaching itself: allowed".into();
    }
    let verb = |a: AdminAction| match a {
        AdminAction::Accept => "accepts",
        AdminAction::Deny => "denies",
        AdminAction::Pass => "passes",
    };
    if let Some(m) = &s.admin {
        steps.push(format!("Admin {} {}", m.rule, verb(m.action)));
    } else if !s.admin_policies.is_empty() {
        steps.push("Admin: no match".into());
    }
    if s.decided_by == DecidedBy::Admin {
        return steps.join(" -> ");
    }
    if s.isolated {
        match &s.allowed_by {
            Some(r) => steps.push(format!("NetworkPolicy {} allows", r.policy)),
            None => {
                let names: Vec<String> = s.policies.iter().map(|p| p.to_string()).collect();
                steps.push(format!("NetworkPolicy {} denies", names.join(", ")));
            }
        }
        return steps.join(" -> ");
    }
    steps.push("NetworkPolicy: none".into());
    if let Some(m) = &s.baseline {
        steps.push(format!("Baseline {} {}", m.rule, verb(m.action)));
    } else if !s.baseline_policies.is_empty() {
        steps.push("Baseline: no match".into());
    }
    if s.decided_by == DecidedBy::Default {
        steps.push("default allows".into());
    }
    steps.join(" -> ")
}

pub fn to_text(e: &Explanation, ir: &Ir) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {}  {}/{}",
        end_text(&e.from),
        end_text(&e.to),
        e.port,
        e.protocol
    );
    if e.verdict.loopback {
        let _ = writeln!(out, "a pod talking to itself: always allowed");
    } else {
        side_text(&mut out, &e.verdict.egress, ir);
        side_text(&mut out, &e.verdict.ingress, ir);
    }
    let _ = writeln!(out, "verdict: {}", if e.verdict.allowed { "ALLOWED" } else { "DENIED" });
    out
}

// === explain --flow: a flow record of `policyc observe` / `GET /flows` ===

/// Reads one flow record: a JSON object, or the first non-empty line of NDJSON (`-`: stdin).
pub fn read_record(path: &std::path::Path) -> Result<FlowRecord> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| anyhow!("reading stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?
    };
    let shown = path.display();
    // A whole (possibly pretty-printed) object first, else the first line of NDJSON.
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str::<FlowRecord>(&text)
        .or_else(|_| serde_json::from_str::<FlowRecord>(first))
        .map_err(|e| anyhow!("{shown}: not a flow record (a FlowRecord JSON object or NDJSON line): {e}"))
}

/// The flow a record describes: its ends' addresses, destination port and protocol.
pub fn flow_of_record(r: &FlowRecord) -> Result<(End, End, policyc_compiler::Protocol, u16)> {
    let end = |p: &FlowPeer, what: &str| -> Result<End> {
        if let Ok(ip) = p.ip.parse::<IpAddr>() {
            return Ok(End::Ip(ip));
        }
        if p.kind == "pod" && !p.namespace.is_empty() && !p.pod.is_empty() {
            return Ok(End::Pod(ObjectRef::new(&p.namespace, &p.pod)));
        }
        bail!("the record's {what} has neither an IP address nor a pod ({:?})", p.ip)
    };
    let protocol = policyc_compiler::Protocol::parse(&r.protocol).ok_or_else(|| {
        anyhow!(
            "the record's protocol is {:?}: explain models TCP, UDP and SCTP flows (with a port)",
            r.protocol
        )
    })?;
    let port = r
        .destination
        .port
        .ok_or_else(|| anyhow!("the record has no destination port"))?;
    Ok((
        end(&r.source, "source")?,
        end(&r.destination, "destination")?,
        protocol,
        port,
    ))
}

/// How the explanation compares with what a record says.
#[derive(Debug, Serialize)]
pub struct Agreement {
    /// `None`: the record's verdict point is not one explain models (source guard, cut flow, an
    /// id the agent did not know).
    pub agrees: Option<bool>,
    /// What the record says decided, in words.
    pub record: String,
    /// Where the record's verdict point is: its node and direction.
    pub at: String,
    /// What the objects say decided the same direction, in words.
    pub explained: String,
    /// Differences, one sentence each (empty when it agrees).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

/// A decision in the record's vocabulary.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    verdict: &'static str,
    tier: &'static str,
    /// `NetworkPolicy ns/name`, `ClusterNetworkPolicy name`, or empty (default deny/allow).
    policy: String,
    /// `ingress[0]` (the rule's index), or the isolating policies of a default deny.
    rule: String,
}

impl Decision {
    fn text(&self) -> String {
        match self.tier {
            "Default" if self.verdict == "denied" => format!("denied by default deny: isolated by {}", self.rule),
            "Default" => "allowed: nothing decides (Kubernetes default)".into(),
            "Loopback" => "allowed: a pod reaching itself".into(),
            "None" => "allowed: not a pod endpoint, no policy applies".into(),
            tier => format!("{} by {} {} ({tier} tier)", self.verdict, self.policy, self.rule),
        }
    }
}

/// The rule index part of a rule text: `ingress[1] (name): Deny` → `ingress[1]`.
fn rule_index(rule: &str) -> &str {
    rule.find(']').map_or(rule, |i| &rule[..=i])
}

fn admin_decision(m: &AdminMatch) -> Decision {
    let verdict = match m.action {
        AdminAction::Accept => "allowed",
        AdminAction::Deny => "denied",
        AdminAction::Pass => "passed",
    };
    // `cnp/x ingress[0] "name"` → `ingress[0]`
    let rule = m.rule.split_whitespace().nth(1).unwrap_or(&m.rule);
    Decision {
        verdict,
        tier: match m.tier {
            policyc_compiler::model::Tier::Admin => "Admin",
            policyc_compiler::model::Tier::Baseline => "Baseline",
        },
        policy: format!("{} {}", m.policy.kind.as_str(), m.policy.name),
        rule: rule_index(rule).to_string(),
    }
}

/// What decided one direction, as a flow record would name it.
fn side_decision(s: &SideVerdict) -> Decision {
    let plain = |verdict, tier: &'static str| Decision {
        verdict,
        tier,
        policy: String::new(),
        rule: String::new(),
    };
    if s.endpoint.is_none() {
        return plain("allowed", "None");
    }
    match s.decided_by {
        DecidedBy::Loopback => plain("allowed", "Loopback"),
        DecidedBy::Admin => s.admin.as_ref().map_or(plain("allowed", "Default"), admin_decision),
        DecidedBy::Baseline => s.baseline.as_ref().map_or(plain("allowed", "Default"), admin_decision),
        DecidedBy::Default => plain("allowed", "Default"),
        DecidedBy::NetworkPolicy => match &s.allowed_by {
            Some(r) => Decision {
                verdict: "allowed",
                tier: "NetworkPolicy",
                policy: format!("NetworkPolicy {}", r.policy),
                rule: format!("{}[{}]", r.direction, r.rule),
            },
            None if s.allowed => plain("allowed", "Loopback"),
            None => Decision {
                verdict: "denied",
                tier: "Default",
                policy: String::new(),
                rule: sorted_names(s.policies.iter().map(ToString::to_string)),
            },
        },
    }
}

fn sorted_names(names: impl Iterator<Item = String>) -> String {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.join(", ")
}

fn record_decision(r: &FlowRecord) -> Decision {
    let verdict = match r.verdict.as_str() {
        "allowed" => "allowed",
        "denied" => "denied",
        "passed" => "passed",
        _ => "unknown",
    };
    let tier = match r.tier.as_str() {
        "Admin" => "Admin",
        "NetworkPolicy" => "NetworkPolicy",
        "Baseline" => "Baseline",
        "Default" => "Default",
        "Guard" => "Guard",
        "Cut" => "Cut",
        _ => "",
    };
    let isolated = if r.isolated_by.is_empty() {
        // An older record: the names are in the rule text.
        r.rule
            .strip_prefix("default deny: isolated by ")
            .map(|s| sorted_names(s.split(", ").map(str::to_string)))
            .unwrap_or_default()
    } else {
        sorted_names(r.isolated_by.iter().cloned())
    };
    Decision {
        verdict,
        tier,
        policy: r.policy.as_ref().map(ToString::to_string).unwrap_or_default(),
        rule: if tier == "Default" {
            isolated
        } else {
            rule_index(&r.rule).to_string()
        },
    }
}

/// Compares the record's verdict point with the explanation of the same direction.
pub fn agreement(r: &FlowRecord, e: &Explanation) -> Agreement {
    let said = record_decision(r);
    let record_text = match said.tier {
        "Guard" | "Cut" | "" => format!("{} by {}", r.verdict, r.rule),
        _ => said.text(),
    };
    let side = match r.direction.as_str() {
        "ingress" => Some(&e.verdict.ingress),
        "egress" => Some(&e.verdict.egress),
        _ => None,
    };
    let overall = if e.verdict.allowed { "ALLOWED" } else { "DENIED" };
    let (Some(side), true) = (side, !matches!(said.tier, "Guard" | "Cut" | "")) else {
        return Agreement {
            agrees: None,
            record: record_text,
            at: format!("node {}", r.node),
            explained: format!(
                "explain models the policies only, not this verdict point; the objects' verdict is {overall}"
            ),
            differences: Vec::new(),
        };
    };
    // An admin Pass is a step of the walk, not its end: compare it with the Admin tier's match.
    let explained = if said.verdict == "passed" {
        side.admin.as_ref().map_or(side_decision(side), admin_decision)
    } else {
        side_decision(side)
    };
    let whose = side.endpoint.as_ref().map_or(String::new(), |p| format!(" of {p}"));
    let mut differences = Vec::new();
    if said.verdict != explained.verdict {
        differences.push(format!(
            "the record says {}, the objects say {} for {}{whose}",
            said.verdict, explained.verdict, r.direction
        ));
    }
    if said.tier != explained.tier {
        differences.push(format!(
            "the record's tier is {}, the objects decide in {}",
            said.tier,
            match explained.tier {
                "None" => "no tier (not a pod endpoint)",
                "Loopback" => "none (loopback)",
                t => t,
            }
        ));
    } else if said.tier == "Default" && said.rule != explained.rule {
        differences.push(format!(
            "the record's isolating policies are {}, the objects' are {}",
            said.rule, explained.rule
        ));
    } else if said.policy != explained.policy || said.rule != explained.rule {
        differences.push(format!(
            "the record names {} {}, the objects {} {}",
            said.policy, said.rule, explained.policy, explained.rule
        ));
    }
    let names = |p: &FlowPeer| (p.kind == "pod").then(|| format!("{}/{}", p.namespace, p.pod));
    for (what, peer, now) in [
        ("source", &r.source, &e.from.pod),
        ("destination", &r.destination, &e.to.pod),
    ] {
        if let Some(then) = names(peer) {
            if now.as_ref() != Some(&then) {
                differences.push(format!(
                    "the record's {what} {} was {then}; the objects have {} there",
                    peer.ip,
                    now.as_deref().unwrap_or("no pod endpoint")
                ));
            }
        }
    }
    Agreement {
        agrees: Some(differences.is_empty()),
        record: record_text,
        at: format!("node {}, {}{whose}", r.node, r.direction),
        explained: explained.text(),
        differences,
    }
}

/// The lines `explain --flow` adds after the explanation; `objects`: `objects` (-f) or
/// `live objects` (--cluster).
pub fn agreement_text(a: &Agreement, objects: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "the record ({}) says: {}", a.at, a.record);
    match a.agrees {
        Some(true) => {
            let _ = writeln!(out, "the {objects} explain it the same: AGREES");
        }
        Some(false) => {
            let _ = writeln!(out, "the {objects} explain it differently: {}: DIFFERS", a.explained);
            for d in &a.differences {
                let _ = writeln!(out, "  - {d}");
            }
        }
        None => {
            let _ = writeln!(out, "{}", a.explained);
        }
    }
    out
}
