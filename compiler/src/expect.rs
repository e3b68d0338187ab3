//! Reachability expectations, as users write them for `policyc verify --expect` and as scenario
//! files hold them.
//!
//! ```text
//! # later lines override earlier ones; cells start as allowed unless `default deny` is given,
//! # and with `default unchecked` only the cells some line covers are checked
//! default deny
//! x/* -> x/*            allow          # every port and protocol
//! *   -> x/a  80/TCP    deny
//! y/b -> */c  81/UDP,81/SCTP allow
//! ```
//!
//! A pattern is `*`, `NAMESPACE/*`, `*/POD` or `NAMESPACE/POD`. A truth table in the upstream e2e
//! look (`-` header row, `.` allowed, `X` denied) is accepted too and applies to every port.

use crate::eval::Matrix;
use crate::model::Protocol;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectations {
    /// `None`: cells no line covers are not checked.
    default: Option<bool>,
    rules: Vec<ExpectRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ExpectRule {
    line: usize,
    from: Pattern,
    to: Pattern,
    /// Empty = every port.
    ports: Vec<(u16, Protocol)>,
    allow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    namespace: Option<String>,
    pod: Option<String>,
}

impl Pattern {
    fn parse(s: &str) -> Option<Pattern> {
        if s == "*" {
            return Some(Pattern {
                namespace: None,
                pod: None,
            });
        }
        let (ns, pod) = s.split_once('/')?;
        if ns.is_empty() || pod.is_empty() || pod.contains('/') {
            return None;
        }
        let wild = |v: &str| (v != "*").then(|| v.to_string());
        Some(Pattern {
            namespace: wild(ns),
            pod: wild(pod),
        })
    }

    fn matches(&self, pod: &str) -> bool {
        let (ns, name) = pod.split_once('/').unwrap_or(("", pod));
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.pod.as_deref().is_none_or(|p| p == name)
    }
}

/// Parses `80/TCP`; the protocol defaults to TCP.
pub fn parse_port(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {port:?}"))?;
    let proto = Protocol::parse(proto).ok_or_else(|| format!("invalid protocol {proto:?}"))?;
    Ok((port, proto))
}

impl Expectations {
    /// Everything allowed (or denied), no exceptions.
    pub fn all(allow: bool) -> Self {
        Self {
            default: Some(allow),
            rules: Vec::new(),
        }
    }

    pub fn parse(text: &str) -> Result<Expectations, String> {
        if text
            .lines()
            .any(|l| l.trim_start().starts_with("-\t") || l.trim() == "-")
        {
            return Self::parse_table(text);
        }
        let mut default = Some(true);
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            if words[0] == "default" {
                default = match words.get(1..) {
                    Some(["allow"]) => Some(true),
                    Some(["deny"]) => Some(false),
                    Some(["unchecked"]) => None,
                    _ => {
                        return Err(format!(
                            "line {line}: expected `default allow`, `default deny` or `default unchecked`"
                        ))
                    }
                };
                continue;
            }
            let err =
                |m: &str| format!("line {line}: {m}: {raw:?} (expected `FROM -> TO [PORT/PROTO,...] allow|deny`)");
            if words.len() < 4 || words[1] != "->" {
                return Err(err("syntax"));
            }
            let from = Pattern::parse(words[0]).ok_or_else(|| err("bad FROM pattern"))?;
            let to = Pattern::parse(words[2]).ok_or_else(|| err("bad TO pattern"))?;
            let allow = match *words.last().expect("len >= 4") {
                "allow" => true,
                "deny" => false,
                _ => return Err(err("last word must be allow or deny")),
            };
            let mut ports = Vec::new();
            for w in &words[3..words.len() - 1] {
                for p in w.split(',').filter(|p| !p.is_empty()) {
                    ports.push(parse_port(p).map_err(|e| err(&e))?);
                }
            }
            rules.push(ExpectRule {
                line,
                from,
                to,
                ports,
                allow,
            });
        }
        Ok(Expectations { default, rules })
    }

    fn parse_table(text: &str) -> Result<Expectations, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let (_, header) = lines.next().ok_or("empty truth table")?;
        let cols: Vec<&str> = header.split_whitespace().skip(1).collect();
        let mut rules = Vec::new();
        for (i, l) in lines {
            let cells: Vec<&str> = l.split_whitespace().collect();
            if cells.len() != cols.len() + 1 {
                return Err(format!(
                    "line {}: expected {} cells, found {}",
                    i + 1,
                    cols.len(),
                    cells.len() - 1
                ));
            }
            let from = Pattern::parse(cells[0]).ok_or_else(|| format!("line {}: bad pod {:?}", i + 1, cells[0]))?;
            for (c, v) in cols.iter().zip(&cells[1..]) {
                let to = Pattern::parse(c).ok_or_else(|| format!("line 1: bad pod {c:?}"))?;
                let allow = match *v {
                    "." => true,
                    "X" | "x" => false,
                    _ => return Err(format!("line {}: cell {v:?} must be . or X", i + 1)),
                };
                rules.push(ExpectRule {
                    line: i + 1,
                    from: from.clone(),
                    to,
                    ports: Vec::new(),
                    allow,
                });
            }
        }
        Ok(Expectations {
            default: Some(true),
            rules,
        })
    }

    /// Whether `src` may reach `dst` (both `ns/name`) on a port, and the line that says so
    /// (`None` for the default); `None` when the cell is unchecked.
    pub fn check(&self, src: &str, dst: &str, protocol: Protocol, port: u16) -> Option<(bool, Option<usize>)> {
        let hit = self.rules.iter().rev().find(|r| {
            r.from.matches(src) && r.to.matches(dst) && (r.ports.is_empty() || r.ports.contains(&(port, protocol)))
        });
        match hit {
            Some(r) => Some((r.allow, Some(r.line))),
            None => self.default.map(|d| (d, None)),
        }
    }

    /// Whether `src` may reach `dst` (both `ns/name`) on a port; also the line that decided it.
    /// An unchecked cell reads as allowed: use [`Expectations::check`] to tell.
    pub fn expected(&self, src: &str, dst: &str, protocol: Protocol, port: u16) -> (bool, Option<usize>) {
        self.check(src, dst, protocol, port).unwrap_or((true, None))
    }

    /// Whether every cell is checked (no `default unchecked`).
    pub fn complete(&self) -> bool {
        self.default.is_some()
    }

    /// The expected truth table among `pods` for one port (unchecked cells read as allowed).
    pub fn matrix(&self, pods: &[String], protocol: Protocol, port: u16) -> Matrix {
        Matrix {
            pods: pods.to_vec(),
            allowed: pods
                .iter()
                .map(|s| pods.iter().map(|d| self.expected(s, d, protocol, port).0).collect())
                .collect(),
        }
    }

    /// Whether some line names `pod` (`ns/name`) as a source or a destination.
    pub fn mentions(&self, pod: &str) -> bool {
        self.rules.iter().any(|r| r.from.matches(pod) || r.to.matches(pod))
    }

    /// Every port named explicitly in a rule.
    pub fn ports(&self) -> Vec<(u16, Protocol)> {
        let mut v: Vec<_> = self.rules.iter().flat_map(|r| r.ports.iter().copied()).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_override() {
        let e = Expectations::parse("default allow\n* -> x/a deny\nx/a -> x/a allow\n* -> */b 81/UDP deny # comment\n")
            .unwrap();
        assert!(!e.expected("y/b", "x/a", Protocol::Tcp, 80).0);
        assert!(e.expected("x/a", "x/a", Protocol::Tcp, 80).0);
        assert!(e.expected("x/a", "y/b", Protocol::Tcp, 81).0);
        assert!(!e.expected("x/a", "y/b", Protocol::Udp, 81).0);
        assert!(Expectations::parse("x/a -> y 80 allow").is_err());
        assert!(Expectations::parse("x/a -> y/b 80/ICMP allow").is_err());
    }

    #[test]
    fn unchecked_default() {
        let e = Expectations::parse("default unchecked\nx/a -> y/b 80/TCP deny\n").unwrap();
        assert!(!e.complete());
        assert_eq!(e.check("x/a", "y/b", Protocol::Tcp, 80), Some((false, Some(2))));
        assert_eq!(e.check("x/a", "y/b", Protocol::Tcp, 81), None);
        assert_eq!(e.check("y/b", "x/a", Protocol::Tcp, 80), None);
    }

    #[test]
    fn truth_table() {
        let e = Expectations::parse("-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n").unwrap();
        assert!(!e.expected("x/a", "x/b", Protocol::Udp, 53).0);
        assert!(e.expected("x/b", "x/a", Protocol::Tcp, 80).0);
        let m = e.matrix(&["x/a".into(), "x/b".into()], Protocol::Tcp, 80);
        assert_eq!(Expectations::parse(&m.to_table()).unwrap(), e);
    }
}
