//! Every rendering must load into the kernel. Renders many inputs (the golden cases, every step of
//! every scenario, synthetic clusters of several seeds; the whole cluster and each node) and loads
//! each with `nft -f` into a throwaway network namespace, then reads the table back and checks
//! that the kernel holds as many counters as the text has.
//!
//! Needs root and nft. Without them the test is skipped with the reason, except under CI (env
//! `CI` set), where it fails: CI runs as root and must exercise the kernel.

use std::path::Path;
use std::process::Stdio;

use policyc_compiler::render::nft;
use policyc_compiler::scenario::{apply_object, Scenario};
use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions, Loader, Snapshot};

/// A throwaway network namespace, deleted on drop.
struct Netns(policyc_testhost::Netns);

impl Netns {
    fn new(tag: &str) -> Netns {
        Netns(policyc_testhost::Netns::new(&format!("load-{tag}")))
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = self
            .0
            .exec("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn load_and_check(ns: &Netns, label: &str, snap: &Snapshot, failures: &mut Vec<String>) -> usize {
    let fail_closed = CompileOptions {
        fail_closed: true,
        ..CompileOptions::default()
    };
    let flow_events = CompileOptions {
        flow_log: Some(policyc_compiler::flows::FlowLog::default()),
        ..fail_closed.clone()
    };
    let mut rendered = vec![
        (
            format!("{label} (all)"),
            nft::render(&compile(snap, &CompileOptions::default()), true).expect("a compiled IR is valid"),
        ),
        (
            format!("{label} (all, fail closed)"),
            nft::render(&compile(snap, &fail_closed), true).expect("a compiled IR is valid"),
        ),
        (
            format!("{label} (all, flow events)"),
            nft::render(&compile(snap, &flow_events), true).expect("a compiled IR is valid"),
        ),
    ];
    for (node, ir) in compile_all_nodes(snap, &fail_closed) {
        rendered.push((
            format!("{label} node {node}"),
            nft::render(&ir, true).expect("a compiled IR is valid"),
        ));
    }
    let n = rendered.len();
    for (what, text) in rendered {
        if let Err(e) = ns.nft(&["-f", "-"], Some(&text)) {
            failures.push(format!("{what}: nft -f failed: {e}"));
            continue;
        }
        match ns.nft(&["list", "table", "inet", "policyc"], None) {
            Ok(listed) => {
                let want = text.matches(" counter ").count();
                let got = listed.matches(" counter packets ").count();
                if want != got {
                    failures.push(format!("{what}: {want} counters rendered, kernel holds {got}"));
                }
            }
            Err(e) => failures.push(format!("{what}: nft list failed: {e}")),
        }
    }
    n
}

fn scenario_snapshots() -> Vec<(String, Snapshot)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/scenarios");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml")
                && !p.file_name().unwrap().to_string_lossy().starts_with("cluster")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(sc) = Scenario::parse(&std::fs::read_to_string(&f).unwrap()) else {
            continue;
        };
        let mut loader = Loader::new();
        for inc in &sc.include {
            let p = f.parent().unwrap().join(inc);
            loader.add_text(&p.display().to_string(), &std::fs::read_to_string(&p).unwrap());
        }
        let (mut snap, _) = loader.finish();
        for o in &sc.objects {
            let _ = apply_object(&mut snap, o);
        }
        for (i, step) in sc.steps.iter().enumerate() {
            if step.apply_to(&mut snap).is_ok() {
                out.push((format!("{} step {}", f.display(), i + 1), snap.clone()));
            }
        }
    }
    out
}

#[test]
fn renderings_load_into_the_kernel() {
    if !policyc_testhost::needs_root(&["nft", "ip"]) {
        return;
    }
    let ns = Netns::new("nft");
    let mut failures = Vec::new();
    let mut loaded = 0;

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/edge-cases/input.yaml");
    let mut l = Loader::new();
    l.add_text("edge-cases", &std::fs::read_to_string(golden).unwrap());
    loaded += load_and_check(&ns, "edge-cases", &l.finish().0, &mut failures);

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/three-tier");
    let mut l = Loader::new();
    for f in ["cluster.yaml", "policies.yaml"] {
        l.add_text(f, &std::fs::read_to_string(example.join(f)).unwrap());
    }
    loaded += load_and_check(&ns, "three-tier", &l.finish().0, &mut failures);

    for (label, snap) in scenario_snapshots() {
        // Per-node renderings of every scenario step would be slow; the whole cluster covers
        // every rule shape the scenario has.
        let text = nft::render(&compile(&snap, &CompileOptions::default()), true).expect("a compiled IR is valid");
        if let Err(e) = ns.nft(&["-f", "-"], Some(&text)) {
            failures.push(format!("{label}: nft -f failed: {e}"));
        }
        loaded += 1;
    }

    for seed in 1..=6 {
        let shape = Shape {
            pods: 300,
            namespaces: 12,
            policies: 80,
            nodes: 3,
            dual_stack_every: 3,
        };
        // Half of them with admin tiers (ClusterNetworkPolicy, AdminNetworkPolicy, Baseline).
        let mut snap = cluster(shape, seed);
        if seed % 2 == 0 {
            add_admin_policies(&mut snap, 12, seed);
        }
        loaded += load_and_check(&ns, &format!("synthetic seed {seed}"), &snap, &mut failures);
    }
    // An empty cluster still yields a loadable table.
    loaded += load_and_check(&ns, "empty", &Snapshot::default(), &mut failures);

    eprintln!("loaded {loaded} rulesets into the kernel");
    assert!(
        failures.is_empty(),
        "{} of {loaded} rulesets failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
