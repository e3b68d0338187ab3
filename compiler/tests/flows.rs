//! Flow events: every log statement a ruleset holds names a verdict point `points()` knows, sits
//! right before its verdict rule with the same matches, and logs only the verdicts asked for.

use std::path::Path;

use policyc_compiler::flows::{self, FlowLog, FlowTier, FlowVerdict};
use policyc_compiler::ir::AttachmentKind;
use policyc_compiler::nft::model::{Action, Rule, Table, Verdict};
use policyc_compiler::{compile_all_nodes, CompileOptions, Loader, Snapshot};

fn example(dir: &str) -> Snapshot {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut loader = Loader::new();
    let mut files: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        loader.add_text(&f.display().to_string(), &std::fs::read_to_string(&f).unwrap());
    }
    loader.finish().0
}

/// (log rule, the rule after it) pairs of every chain.
fn logged_pairs(t: &Table) -> Vec<(Rule, Rule)> {
    let mut out = Vec::new();
    for c in &t.chains {
        for (i, r) in c.rules.iter().enumerate() {
            if r.log.is_some() {
                let next = c
                    .rules
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("{}: a log rule ends the chain", c.name));
                out.push((r.clone(), next.clone()));
            }
        }
    }
    out
}

fn check(snap: &Snapshot, attachment: AttachmentKind, fl: FlowLog) -> (usize, Vec<FlowTier>) {
    let opts = CompileOptions {
        fail_closed: true,
        flow_log: Some(fl),
        attachment,
        ..CompileOptions::default()
    };
    let mut logged = 0;
    let mut tiers = Vec::new();
    for (node, ir) in compile_all_nodes(snap, &opts) {
        let points = flows::points(&ir);
        let mut tables = vec![policyc_compiler::nft::lower(&ir).unwrap()];
        tables.extend(policyc_compiler::nft::lower_bridge(&ir).unwrap());
        for t in &tables {
            for (log, verdict) in logged_pairs(t) {
                let l = log.log.as_ref().unwrap();
                let id = flows::id_of_prefix(l.prefix.as_deref().unwrap()).expect("a policyc prefix");
                let p = points
                    .iter()
                    .find(|p| p.id == id)
                    .unwrap_or_else(|| panic!("node {node}: {id} is no verdict point"));
                assert_eq!(log.matches, verdict.matches, "node {node}: {}", p.comment);
                assert_eq!(log.action, Action::Continue);
                assert_eq!(verdict.comment.as_deref(), Some(p.comment.as_str()), "node {node}");
                assert!(
                    log.comment.is_none() && !log.counter,
                    "the verdict rule counts and names"
                );
                assert_eq!(l.group, fl.group);
                let v = match &verdict.action {
                    Action::Verdict(Verdict::Accept) => FlowVerdict::Allowed,
                    Action::Verdict(Verdict::Drop) => FlowVerdict::Denied,
                    Action::Verdict(Verdict::Return) => FlowVerdict::Passed,
                    a => panic!("logged {a:?}"),
                };
                assert_eq!(v, p.verdict, "{}", p.comment);
                assert!(fl.logs(v), "{v:?} logged although off");
                logged += 1;
                tiers.push(p.tier);
            }
        }
        // Every point of a verdict that is logged has a log rule somewhere.
        let ids: Vec<String> = tables
            .iter()
            .flat_map(logged_pairs)
            .map(|(l, _)| {
                flows::id_of_prefix(l.log.unwrap().prefix.as_deref().unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        for p in &points {
            if fl.logs(p.verdict) && p.tier != FlowTier::Guard || fl.denied && p.tier == FlowTier::Guard {
                assert!(
                    ids.contains(&p.id),
                    "node {node}: {} ({:?}) has no log rule",
                    p.comment,
                    p.tier
                );
            }
        }
    }
    tiers.sort();
    tiers.dedup();
    (logged, tiers)
}

#[test]
fn every_log_names_a_verdict_point_before_its_verdict() {
    let bridge = AttachmentKind::Bridge { bridge: "cni0".into() };
    for dir in ["examples/three-tier", "examples/admin-tiers"] {
        let snap = example(dir);
        for attachment in [AttachmentKind::Canal, bridge.clone()] {
            let (all, tiers) = check(&snap, attachment.clone(), FlowLog::default());
            assert!(all > 0, "{dir}: nothing logged");
            assert!(
                tiers.contains(&FlowTier::Cut) && tiers.contains(&FlowTier::Default),
                "{dir}: {tiers:?}"
            );
            let denied_only = FlowLog {
                allowed: false,
                ..FlowLog::default()
            };
            let (denied, _) = check(&snap, attachment.clone(), denied_only);
            assert!(denied > 0 && denied < all, "{dir}: {denied} of {all}");
        }
    }
    let (_, tiers) = check(
        &example("examples/admin-tiers"),
        AttachmentKind::Canal,
        FlowLog::default(),
    );
    for t in [FlowTier::Admin, FlowTier::Baseline, FlowTier::NetworkPolicy] {
        assert!(tiers.contains(&t), "admin-tiers logs no {t:?} point: {tiers:?}");
    }
}

#[test]
fn ids_are_stable_and_distinct() {
    let snap = example("examples/admin-tiers");
    let opts = CompileOptions {
        flow_log: Some(FlowLog::default()),
        ..CompileOptions::default()
    };
    let a = flows::points(&policyc_compiler::compile(&snap, &opts));
    let b = flows::points(&policyc_compiler::compile(&snap, &opts));
    assert_eq!(a, b);
    let mut comments: Vec<&str> = a.iter().map(|p| p.comment.as_str()).collect();
    comments.sort_unstable();
    comments.dedup();
    assert_eq!(comments.len(), a.len(), "one id per comment");
    assert_eq!(flows::id("x/a ingress[0]"), flows::id("x/a ingress[0]"));
    assert_ne!(flows::id("x/a ingress[0]"), flows::id("x/a ingress[1]"));
    assert_eq!(
        flows::id_of_prefix(&format!("pc:{}", flows::id("y"))),
        Some(flows::id("y").as_str())
    );
    assert_eq!(flows::id_of_prefix("pc:zz"), None);
}
