//! Cutting flows a policy change no longer allows.
//!
//! The ruleset accepts packets of established connections before any policy check, so tightening
//! a policy would leave open connections running. After a ruleset change the agent lists the
//! node's conntrack table, judges each flow with the new IR, and deletes exactly the entries of
//! flows it now denies (`conntrack -D` with the full original tuple); allowed flows are untouched.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use policyc_compiler::{Evaluator, Flow, Ir, Protocol};

/// One conntrack entry's original direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub protocol: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Parses `conntrack -L` lines; entries of other protocols (ICMP, ...) are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let protocol = Protocol::parse(words.next()?)?;
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            Some(Entry {
                protocol,
                src: field("src")?.parse().ok()?,
                dst: field("dst")?.parse().ok()?,
                sport: field("sport")?.parse().ok()?,
                dport: field("dport")?.parse().ok()?,
            })
        })
        .collect()
}

/// Entries whose flow `ir` denies.
pub fn denied<'a>(ir: &Ir, entries: &'a [Entry]) -> Vec<&'a Entry> {
    let ev = Evaluator::new(ir);
    entries
        .iter()
        .filter(|e| {
            !ev.evaluate(&Flow {
                src: e.src,
                dst: e.dst,
                protocol: e.protocol,
                port: e.dport,
            })
            .allowed
        })
        .collect()
}

fn conntrack(netns: Option<&Path>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("conntrack");
            c
        }
        None => Command::new("conntrack"),
    }
}

/// Deletes the conntrack entries of every flow `ir` denies; returns how many were deleted.
pub fn cut_denied(ir: &Ir, netns: Option<&Path>) -> Result<usize, String> {
    let mut deleted = 0;
    for family in ["ipv4", "ipv6"] {
        let out = conntrack(netns)
            .args(["-L", "-f", family])
            .output()
            .map_err(|e| format!("running conntrack: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let entries = parse(&String::from_utf8_lossy(&out.stdout));
        for e in denied(ir, &entries) {
            let status = conntrack(netns)
                .args(["-D", "-f", family, "-p", e.protocol.as_str(), "-s"])
                .arg(e.src.to_string())
                .arg("-d")
                .arg(e.dst.to_string())
                .args(["--sport", &e.sport.to_string(), "--dport", &e.dport.to_string()])
                .output()
                .map_err(|e| format!("running conntrack: {e}"))?;
            // Exit status 1 with "0 flow entries" means it expired meanwhile: nothing to cut.
            if status.status.success() {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let text = "\
tcp      6 431998 ESTABLISHED src=10.244.1.10 dst=10.244.1.30 sport=40000 dport=5432 src=10.244.1.30 dst=10.244.1.10 sport=5432 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.10 dst=10.244.1.2 sport=5353 dport=53 [UNREPLIED] src=10.244.1.2 dst=10.244.1.10 sport=53 dport=5353 mark=0 use=1
icmp     1 29 src=10.244.1.10 dst=10.244.1.2 type=8 code=0 id=7 src=10.244.1.2 dst=10.244.1.10 type=0 code=0 id=7 mark=0 use=1
";
        let e = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].dport, 5432);
        assert_eq!(e[0].src.to_string(), "10.244.1.10");
        assert_eq!(e[1].protocol, Protocol::Udp);
    }
}
