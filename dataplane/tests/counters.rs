//! `counters::rule_counters` (the nf_tables rule dump over netlink) against `nft -j list table
//! inet policyc`, as root, in throwaway network namespaces: every counted rule's chain, handle,
//! comment, packets and bytes must be equal, rule by rule.
//!
//! * Rendered rulesets (`render::nft::render(&ir, true)` through `nft -f`) of synthetic clusters
//!   with NetworkPolicies and admin tiers, every `counter` preset to its own packet and byte
//!   counts (above 2^32, so that 64-bit values and the rule ↔ counter pairing are checked).
//! * Real packets: UDP on the namespace's loopback through an output chain, with exact counts.
//! * Dumps while the table is replaced over and over each return one whole generation.
//! * A missing table is an error, as for `nft`.
//!
//! `examples/scrape_bench.rs` times one read of the 10,000-pod synthetic node ruleset both ways.
//!
//! Without root, `ip` or `nft` the tests print `skipped: <test>: <reason>` and pass, unless `CI` is
//! set: then they fail.

use std::fs::File;
use std::io::Write as _;
use std::net::UdpSocket;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nix::sched::{setns, CloneFlags};
use policyc_compiler::ir::{compile, CompileOptions, Ir};
use policyc_compiler::render::nft::render;
use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
use policyc_dataplane::counters::{rule_counters, CountersError, RuleCounters};
use policyc_dataplane::TABLE;

fn available() -> bool {
    policyc_testhost::needs_root(&["ip", "nft"])
}

struct Netns(policyc_testhost::Netns);

impl Netns {
    fn new(tag: &str) -> Netns {
        Netns(policyc_testhost::Netns::new(&format!("cnt-{tag}")))
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = self
            .0
            .exec("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft");
        let mut input = child.stdin.take().expect("piped");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("writing to nft");
        }
        drop(input);
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    fn dump(&self) -> Result<Vec<RuleCounters>, CountersError> {
        rule_counters(Some(&self.0.path()), TABLE)
    }

    /// What `nft -j list table inet policyc` reports of every counted rule: its first counter.
    fn nft_json(&self) -> Vec<RuleCounters> {
        let text = self.nft(&["-j", "list", "table", "inet", TABLE], None);
        let v: serde_json::Value = serde_json::from_str(&text).expect("nft -j output is JSON");
        let mut out = Vec::new();
        for item in v["nftables"].as_array().expect("nftables array") {
            let Some(rule) = item.get("rule") else { continue };
            assert_eq!(
                (rule["family"].as_str(), rule["table"].as_str()),
                (Some("inet"), Some(TABLE))
            );
            let Some(counter) = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e.get("counter"))
            else {
                continue;
            };
            out.push(RuleCounters {
                chain: rule["chain"].as_str().expect("chain").to_string(),
                handle: rule["handle"].as_u64().expect("handle"),
                comment: rule["comment"].as_str().map(str::to_string),
                packets: counter["packets"].as_u64().expect("packets"),
                bytes: counter["bytes"].as_u64().expect("bytes"),
            });
        }
        out
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates belong to the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.0.path()).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap()
        })
    }
}

fn sorted(mut v: Vec<RuleCounters>) -> Vec<RuleCounters> {
    v.sort_by_key(|r| (r.chain.clone(), r.handle));
    v
}

/// The netlink dump and `nft -j` agree rule by rule; returns the rules.
fn assert_same_as_nft(ns: &Netns, what: &str) -> Vec<RuleCounters> {
    let netlink = sorted(ns.dump().unwrap_or_else(|e| panic!("{what}: {e}")));
    let nft = sorted(ns.nft_json());
    assert_eq!(netlink.len(), nft.len(), "{what}: counted rules");
    for (a, b) in netlink.iter().zip(&nft) {
        assert_eq!(a, b, "{what}: netlink dump vs nft -j");
    }
    netlink
}

/// `text` with the `n`-th `counter` statement (outside quoted comments) made
/// `counter packets P bytes B`, P and B distinct for every rule and above 2^32.
fn preset_counters(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len() * 2);
    let mut n = 0;
    for line in text.lines() {
        let mut in_quotes = false;
        let mut rest = line;
        while !rest.is_empty() {
            if !in_quotes && rest.starts_with("counter") && rest[7..].chars().next().is_none_or(|c| c == ' ') {
                n += 1;
                let (p, b) = preset(n);
                out.push_str(&format!("counter packets {p} bytes {b}"));
                rest = &rest[7..];
                continue;
            }
            let c = rest.chars().next().expect("not empty");
            if c == '"' {
                in_quotes = !in_quotes;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out.push('\n');
    }
    (out, n)
}

fn preset(n: usize) -> (u64, u64) {
    let n = n as u64;
    ((1 << 33) + n, (1 << 41) + 1500 * n + 7)
}

fn synthetic_ir(seed: u64, node: Option<&str>, admin: usize) -> Ir {
    let shape = Shape {
        pods: 300,
        namespaces: 8,
        policies: 60,
        nodes: 3,
        dual_stack_every: 4,
    };
    let mut snapshot = cluster(shape, seed);
    add_admin_policies(&mut snapshot, admin, seed);
    let opts = CompileOptions {
        node: node.map(str::to_string),
        ..CompileOptions::default()
    };
    compile(&snapshot, &opts)
}

#[test]
fn rendered_rulesets_match_nft_json() {
    if !available() {
        return;
    }
    for (seed, node, admin) in [(1, None, 0), (2, Some("node-1"), 12), (3, Some("node-2"), 30)] {
        let what = format!("seed {seed} node {node:?} admin {admin}");
        let ir = synthetic_ir(seed, node, admin);
        let (text, presets) = preset_counters(&render(&ir, true).expect("valid IR"));
        let ns = Netns::new("synth");
        ns.nft(&["-f", "-"], Some(&text));
        let rules = assert_same_as_nft(&ns, &what);
        assert_eq!(
            rules.len(),
            presets,
            "{what}: every counter statement is a counted rule"
        );
        assert!(rules.len() > 50, "{what}: {} counted rules", rules.len());
        // Every preset came back, each on one rule.
        let mut got: Vec<(u64, u64)> = rules.iter().map(|r| (r.packets, r.bytes)).collect();
        got.sort();
        assert_eq!(got, (1..=presets).map(preset).collect::<Vec<_>>(), "{what}");
        // Policy rules and pod drops carry their comments.
        assert!(
            rules
                .iter()
                .any(|r| r.chain.starts_with("np_") && r.comment.as_deref().is_some_and(|c| c.ends_with(']'))),
            "{what}"
        );
        assert!(
            rules
                .iter()
                .any(|r| r.chain.starts_with("ep_") && r.comment.as_deref().is_some_and(|c| c.contains(" denied"))),
            "{what}"
        );
        if admin > 0 {
            assert!(rules.iter().any(|r| r.chain.starts_with("ar_")), "{what}");
        }
    }
}

#[test]
fn real_packets() {
    if !available() {
        return;
    }
    let ns = Netns::new("packets");
    ns.0.exec("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip link");
    ns.nft(
        &["-f", "-"],
        Some(
            "table inet policyc {
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 9 counter accept comment \"ns/client egress[0]\"
    udp dport 10 counter accept
    meta l4proto udp accept
    counter comment \"everything else\"
  }
}
",
        ),
    );
    let before = ns.dump().expect("dump");
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|r| r.packets == 0 && r.bytes == 0), "{before:?}");

    ns.enter(|| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..5 {
            s.send_to(&[7; 100], "127.0.0.1:9").expect("send");
        }
        for _ in 0..3 {
            s.send_to(&[7; 10], "127.0.0.1:10").expect("send");
        }
    });
    let rules = assert_same_as_nft(&ns, "real packets");
    let by_comment = |c: Option<&str>| {
        rules
            .iter()
            .find(|r| r.comment.as_deref() == c)
            .unwrap_or_else(|| panic!("{c:?} in {rules:?}"))
    };
    // IPv4 header 20 + UDP header 8 + payload.
    let port9 = by_comment(Some("ns/client egress[0]"));
    assert_eq!((port9.chain.as_str(), port9.packets, port9.bytes), ("out", 5, 5 * 128));
    let port10 = by_comment(None);
    assert_eq!((port10.packets, port10.bytes), (3, 3 * 38));
    // The ICMP port unreachable answers (nothing listens).
    assert!(by_comment(Some("everything else")).packets >= 1);
    assert!(port9.handle < port10.handle);
}

#[test]
fn missing_table_is_an_error() {
    if !available() {
        return;
    }
    let ns = Netns::new("none");
    match ns.dump() {
        Err(CountersError::NoTable(t)) => assert_eq!(t, format!("inet {TABLE}")),
        other => panic!("{other:?}"),
    }
    // Another table of that name in another family is not it.
    ns.nft(&["add", "table", "ip", TABLE], None);
    ns.nft(&["add", "chain", "ip", TABLE, "c"], None);
    ns.nft(&["add", "rule", "ip", TABLE, "c", "counter"], None);
    assert!(matches!(ns.dump(), Err(CountersError::NoTable(_))));
    // An empty table: no rules.
    ns.nft(&["add", "table", "inet", TABLE], None);
    assert_eq!(ns.dump().expect("dump"), []);
    match rule_counters(Some("/nonexistent/netns".as_ref()), TABLE) {
        Err(CountersError::Netns { path, .. }) => assert_eq!(path, std::path::Path::new("/nonexistent/netns")),
        other => panic!("{other:?}"),
    }
}

/// Dumps while the table is replaced over and over: each dump must be one generation of the
/// ruleset, whole (a dump the kernel flags `NLM_F_DUMP_INTR` is read again).
#[test]
fn dumps_during_commits_are_consistent() {
    if !available() {
        return;
    }
    const RULES: usize = 2000;
    let ns = Netns::new("commits");
    let table = |generation: usize| {
        let mut t = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n chain c {{\n");
        for i in 0..RULES {
            t.push_str(&format!(
                "  tcp dport {} counter accept comment \"gen {generation}\"\n",
                1 + i
            ));
        }
        t.push_str(" }\n}\n");
        t
    };
    ns.nft(&["-f", "-"], Some(&table(0)));
    let stop = AtomicBool::new(false);
    let (dumps, generations) = std::thread::scope(|s| {
        let committer = s.spawn(|| {
            let mut generation = 0;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                ns.nft(&["-f", "-"], Some(&table(generation)));
            }
            generation
        });
        // Stops the committer however this thread leaves the scope, a failed assertion too.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = Stop(&stop);
        let deadline = Instant::now() + std::time::Duration::from_secs(4);
        let mut dumps = 0;
        while Instant::now() < deadline {
            match ns.dump() {
                Ok(rules) => {
                    assert_eq!(rules.len(), RULES, "a whole generation");
                    let first = rules[0].comment.clone();
                    assert!(rules.iter().all(|r| r.comment == first), "one generation");
                    dumps += 1;
                }
                // The delete and the add are one transaction: the table is never missing.
                Err(e) => panic!("{e}"),
            }
        }
        drop(stop);
        (dumps, committer.join().unwrap())
    });
    eprintln!("{dumps} consistent dumps during {generations} commits");
    assert!(dumps > 10 && generations > 10, "{dumps} dumps, {generations} commits");
}
