//! Cutting flows a policy change no longer allows.
//!
//! The ruleset accepts packets of established connections before any policy check, so
//! tightening a policy would leave open connections running. After every ruleset change the
//! agent lists the node's conntrack table, judges each entry's original direction with the new
//! IR, and sets [`CUT_MARK`] on the entries of flows it now denies; the ruleset drops the
//! packets of marked entries, both directions, before it accepts anything as established.
//! Entries of flows the IR allows again lose the mark. No other entry is touched. The updates
//! go to one `conntrack -R -` batch, in the node's network namespace when one is given.
//!
//! ```text
//!  conntrack -L ─► parse ─► Evaluator(new IR) ─┬─ denied, unmarked ─► -U … --mark CUT/CUT ┐
//!                                              ├─ allowed, marked ─► -U … --mark 0/CUT    ├─► conntrack -R -
//!                                              └─ anything else: untouched                 ┘
//! ```
//!
//! Why mark rather than delete: deleting frees the flow's 5-tuple, and the next packet of the
//! old flow creates a fresh entry. From the client that packet is judged and dropped; but a
//! reply still in flight (a UDP echo, a TCP ACK — conntrack picks up TCP mid-stream) or a server
//! that keeps sending creates the entry the other way round, server → client, which the policy
//! may allow, and the client's packets then pass as its replies. A marked entry keeps the tuple
//! taken until it expires, and every packet of it is dropped.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use policyc_compiler::render::CUT_MARK;
use policyc_compiler::{Evaluator, Flow, Ir, Protocol};

/// One conntrack entry: its original direction and its mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub protocol: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub mark: u32,
}

impl Entry {
    fn is_cut(&self) -> bool {
        self.mark & CUT_MARK != 0
    }

    /// The `conntrack -R` line that sets the cut bit (`cut`) or clears it, leaving other bits.
    fn update_line(&self, cut: bool) -> String {
        let family = match self.src {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        };
        let value = if cut { CUT_MARK } else { 0 };
        format!(
            "-U -f {family} -p {} -s {} -d {} --sport {} --dport {} --mark {value:#x}/{CUT_MARK:#x}",
            self.protocol.as_str().to_ascii_lowercase(),
            self.src,
            self.dst,
            self.sport,
            self.dport
        )
    }
}

/// What one cut changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Entries marked: flows the IR denies.
    pub marked: usize,
    /// Entries whose mark was cleared: flows the IR allows again.
    pub released: usize,
}

/// Parses `conntrack -L` lines; entries of other protocols (ICMP, ...) are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let protocol = Protocol::parse(words.next()?)?;
            // The first occurrence is the original direction's.
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
                mark: field("mark").and_then(|m| m.parse().ok()).unwrap_or(0),
            })
        })
        .collect()
}

/// The `conntrack -R` lines that bring `entries` in line with `ir`, and what they change.
pub fn updates(ir: &Ir, entries: &[Entry]) -> (Vec<String>, Cut) {
    let ev = Evaluator::new(ir);
    let mut lines = Vec::new();
    let mut cut = Cut::default();
    for e in entries {
        let allowed = ev
            .evaluate(&Flow {
                src: e.src,
                dst: e.dst,
                protocol: e.protocol,
                port: e.dport,
            })
            .allowed;
        if allowed == e.is_cut() {
            lines.push(e.update_line(!allowed));
            match allowed {
                true => cut.released += 1,
                false => cut.marked += 1,
            }
        }
    }
    (lines, cut)
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

/// Marks the conntrack entries of every flow `ir` denies and releases those it allows again
/// (see the module documentation). An entry that expires meanwhile is simply not updated.
pub fn cut_denied(ir: &Ir, netns: Option<&Path>) -> Result<Cut, String> {
    let mut entries = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let out = conntrack(netns)
            .args(["-L", "-f", family])
            .output()
            .map_err(|e| format!("running conntrack: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        entries.extend(parse(&String::from_utf8_lossy(&out.stdout)));
    }
    let (lines, cut) = updates(ir, &entries);
    if lines.is_empty() {
        return Ok(cut);
    }
    let mut child = conntrack(netns)
        .args(["-R", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running conntrack: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all((lines.join("\n") + "\n").as_bytes())
        .map_err(|e| format!("writing to conntrack: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running conntrack: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_compiler::{compile, CompileOptions, Loader};

    const LIST: &str = "\
tcp      6 431998 ESTABLISHED src=10.244.1.10 dst=10.244.1.30 sport=40000 dport=5432 src=10.244.1.30 dst=10.244.1.10 sport=5432 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.10 dst=10.244.1.11 sport=5353 dport=53 [UNREPLIED] src=10.244.1.11 dst=10.244.1.10 sport=53 dport=5353 mark=4194305 use=1
icmp     1 29 src=10.244.1.10 dst=10.244.1.30 type=8 code=0 id=7 src=10.244.1.30 dst=10.244.1.10 type=0 code=0 id=7 mark=0 use=1
tcp      6 431998 ESTABLISHED src=10.244.1.11 dst=10.244.1.30 sport=40001 dport=5432 src=10.244.1.30 dst=10.244.1.11 sport=5432 dport=40001 [ASSURED] mark=4194304 use=1
";

    #[test]
    fn parses_conntrack_lines() {
        let e = parse(LIST);
        assert_eq!(e.len(), 3, "ICMP is skipped");
        assert_eq!(e[0].dport, 5432);
        assert_eq!(e[0].src.to_string(), "10.244.1.10");
        assert_eq!(e[0].mark, 0);
        assert_eq!(e[1].protocol, Protocol::Udp);
        assert_eq!(e[1].mark, 0x0040_0001);
    }

    /// db accepts 5432/TCP from app only: app's connection stays unmarked, other's new one is
    /// marked, other's marked one stays marked; the marked UDP flow to other (which no policy
    /// isolates) is released, keeping its other mark bits.
    #[test]
    fn marks_denied_and_releases_allowed_entries() {
        let mut l = Loader::new();
        l.add_text(
            "t",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: x, labels: {app: app}}\n\
             spec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.244.1.10}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: x, labels: {app: other}}\n\
             spec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.244.1.11}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: x, labels: {app: db}}\n\
             spec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.244.1.30}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress],\n\
               ingress: [{from: [{podSelector: {matchLabels: {app: app}}}], ports: [{port: 5432}]}]}\n",
        );
        let (snap, _) = l.finish();
        let ir = compile(
            &snap,
            &CompileOptions {
                node: Some("n1".into()),
                ..Default::default()
            },
        );
        let mut entries = parse(LIST);
        // other → db:5432, not marked yet.
        entries.push(Entry {
            mark: 0,
            sport: 40002,
            ..entries[2].clone()
        });
        let (lines, cut) = updates(&ir, &entries);
        assert_eq!(cut, Cut { marked: 1, released: 1 });
        assert_eq!(
            lines,
            vec![
                "-U -f ipv4 -p udp -s 10.244.1.10 -d 10.244.1.11 --sport 5353 --dport 53 --mark 0x0/0x400000",
                "-U -f ipv4 -p tcp -s 10.244.1.11 -d 10.244.1.30 --sport 40002 --dport 5432 --mark 0x400000/0x400000",
            ]
        );
    }
}
