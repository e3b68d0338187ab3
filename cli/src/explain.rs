//! `policyc explain`: one flow, its verdict, and the rules that decided it.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use policyc_compiler::eval::{flow_addresses, AdminMatch, DecidedBy, SideVerdict};
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
