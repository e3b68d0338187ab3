//! Cutting flows a policy change no longer allows.
//!
//! The ruleset accepts packets of established connections before any policy check, so
//! tightening a policy would leave open connections running. After every ruleset change the
//! agent lists the node's conntrack table, judges each entry's original direction with the new
//! IR, and sets [`CUT_MARK`] on the entries of flows it now denies; the ruleset drops the
//! packets of marked entries, both directions, before it accepts anything as established.
//! Entries of flows the IR allows again lose the mark. No other entry is touched. It talks to
//! the kernel over ctnetlink ([`crate::ctnetlink`]), in the node's network namespace when one is
//! given: one dump, then one request and one acknowledgement per changed entry, so that each
//! entry gets exactly its own mark (a `conntrack -R` batch applied its last line's mark to every
//! line, and stopped at the first failing line).
//!
//! ```text
//!  ctnetlink dump ─► Evaluator(new IR) ─┬─ denied, unmarked ─► mark CUT (mask CUT)  ┐ one request and
//!                                       ├─ allowed, marked ─► mark 0 (mask CUT)     ├─ one ack each: done,
//!                                       └─ anything else: untouched                  ┘ vanished or failed
//! ```
//!
//! An entry that disappears meanwhile (expired, closed) is counted as vanished, which is fine.
//! Any other failure is counted and returned, and the caller retries the whole cut (a dump
//! and the changes still needed) with backoff: updates only set or clear the one bit, so
//! repeating them is harmless.
//!
//! Why mark rather than delete: deleting frees the flow's 5-tuple, and the next packet of the
//! old flow creates a fresh entry. From the client that packet is judged and dropped; but a
//! reply still in flight (a UDP echo, a TCP ACK — conntrack picks up TCP mid-stream) or a server
//! that keeps sending creates the entry the other way round, server → client, which the policy
//! may allow, and the client's packets then pass as its replies. A marked entry keeps the tuple
//! taken until it expires, and every packet of it is dropped.

use std::path::Path;

use policyc_compiler::render::CUT_MARK;
use policyc_compiler::{Evaluator, Flow, Ir, Protocol};

use crate::ctnetlink::{Conntrack, CtError, Entry, MarkChange, Update};

/// What one cut did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Entries now judged: those of TCP, UDP and SCTP flows.
    pub judged: usize,
    /// Entries marked: flows the IR denies.
    pub marked: usize,
    /// Entries whose mark was cleared: flows the IR allows again.
    pub released: usize,
    /// Entries that went away before their update (ENOENT): nothing left to cut.
    pub vanished: usize,
    /// Updates that failed: those flows are not cut (or not released) yet.
    pub failed: usize,
}

impl Cut {
    /// Whether every entry that needed a change got it (or went away).
    pub fn complete(&self) -> bool {
        self.failed == 0
    }
}

/// The flow an entry's original direction is, for the protocols policies judge.
fn flow(e: &Entry) -> Option<Flow> {
    let protocol = match e.protocol() {
        crate::ctnetlink::IPPROTO_TCP => Protocol::Tcp,
        crate::ctnetlink::IPPROTO_UDP => Protocol::Udp,
        crate::ctnetlink::IPPROTO_SCTP => Protocol::Sctp,
        _ => return None,
    };
    let (_, port) = e.ports()?;
    Some(Flow {
        src: e.orig.src,
        dst: e.orig.dst,
        protocol,
        port,
    })
}

/// The mark changes that bring `entries` in line with `ir` (`true`: mark, `false`: release),
/// and how many entries were judged.
pub fn changes<'a>(ir: &Ir, entries: &'a [Entry]) -> (Vec<(&'a Entry, bool)>, usize) {
    let ev = Evaluator::new(ir);
    let mut judged = 0;
    let mut out = Vec::new();
    for e in entries {
        let Some(f) = flow(e) else { continue };
        judged += 1;
        let allowed = ev.evaluate(&f).allowed;
        if allowed == (e.mark & CUT_MARK != 0) {
            out.push((e, !allowed));
        }
    }
    (out, judged)
}

/// Marks the conntrack entries of every flow `ir` denies and releases those it allows again
/// (see the module documentation), in the network namespace at `netns` or the caller's.
/// `Err` when the table could not be read at all; failed updates are counted in the result.
pub fn cut_denied(ir: &Ir, netns: Option<&Path>) -> Result<Cut, CtError> {
    let ct = Conntrack::open(netns)?;
    let entries = ct.dump()?;
    let (todo, judged) = changes(ir, &entries);
    let requests: Vec<MarkChange<'_>> = todo
        .iter()
        .map(|(entry, mark)| MarkChange {
            entry,
            value: if *mark { CUT_MARK } else { 0 },
            mask: CUT_MARK,
        })
        .collect();
    let mut cut = Cut {
        judged,
        ..Cut::default()
    };
    for ((_, mark), result) in todo.iter().zip(ct.set_marks(&requests)) {
        match result {
            Ok(Update::Done) if *mark => cut.marked += 1,
            Ok(Update::Done) => cut.released += 1,
            Ok(Update::Vanished) => cut.vanished += 1,
            Err(_) => cut.failed += 1,
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctnetlink::{Tuple, L4};
    use policyc_compiler::{compile, CompileOptions, Loader};

    fn entry(proto: u8, src: &str, dst: &str, sport: u16, dport: u16, mark: u32) -> Entry {
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        let tuple = |src, dst, sport, dport| Tuple {
            src,
            dst,
            protocol: proto,
            l4: L4::Ports { src: sport, dst: dport },
            zone: None,
        };
        Entry {
            orig: tuple(src, dst, sport, dport),
            reply: tuple(dst, src, dport, sport),
            id: 1,
            mark,
            status: 0,
            zone: None,
            timeout: None,
        }
    }

    /// db accepts 5432/TCP from app only: app's connection stays unmarked, other's new one is
    /// marked, other's marked one stays marked; the marked UDP flow to other (which no policy
    /// isolates) is released; ICMP is not judged.
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
        let mut icmp = entry(1, "10.244.1.11", "10.244.1.30", 0, 0, 0);
        icmp.orig.l4 = L4::Icmp {
            id: 7,
            kind: 8,
            code: 0,
        };
        let entries = vec![
            entry(6, "10.244.1.10", "10.244.1.30", 40000, 5432, 0),
            entry(17, "10.244.1.10", "10.244.1.11", 5353, 53, CUT_MARK | 1),
            icmp,
            entry(6, "10.244.1.11", "10.244.1.30", 40001, 5432, CUT_MARK),
            entry(6, "10.244.1.11", "10.244.1.30", 40002, 5432, 0),
        ];
        let (todo, judged) = changes(&ir, &entries);
        assert_eq!(judged, 4);
        let got: Vec<(u16, bool)> = todo.iter().map(|(e, m)| (e.ports().unwrap().0, *m)).collect();
        assert_eq!(got, [(5353, false), (40002, true)]);
    }
}
