//! Runs every scenario under `e2e/scenarios/` through the compiler.
//!
//! ```text
//!  e2e/scenarios/**/*.yaml (not cluster*.yaml)
//!   └─ include files ──Loader──► Snapshot ◄── inline objects
//!        └─ for each step: apply ─► compile (all endpoints) ─► Matrix per port ═? expectations
//! ```
//!
//! Every mismatch of every file is collected and reported once, with both truth tables and the
//! differing cells. A second test checks that compiling per node gives the same verdicts as
//! compiling for the whole cluster: the source's node decides egress, the destination's node
//! decides ingress, and together they must agree with the single cluster-wide IR.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use policyc_compiler::eval::flow_addresses;
use policyc_compiler::scenario::{apply_object, Scenario, Step};
use policyc_compiler::{
    compile, compile_all_nodes, CompileOptions, Evaluator, Flow, Loader, Matrix, Protocol, Severity, Snapshot,
};

/// Number of `It` blocks in the upstream suite (test/e2e/network/netpol/network_policy.go).
const UPSTREAM_TESTS: usize = 48;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent")
        .to_path_buf()
}

fn scenarios_dir() -> PathBuf {
    repo_root().join("e2e").join("scenarios")
}

/// Path relative to the repository root, for messages.
fn display(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

/// Every scenario file below `dir`, sorted; cluster files (included by scenarios) are skipped.
fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".yaml") && !name.starts_with("cluster") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn load_scenario(path: &Path) -> Result<Scenario, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    Scenario::parse(&text).map_err(|e| format!("parsing: {e}"))
}

/// The snapshot before the first step: include files through the loader (any error diagnostic
/// fails the scenario), then the inline objects.
fn initial_snapshot(path: &Path, scenario: &Scenario) -> Result<Snapshot, String> {
    let base = path.parent().expect("scenario file has a directory");
    let mut loader = Loader::new();
    for inc in &scenario.include {
        let p = base.join(inc);
        let text = fs::read_to_string(&p).map_err(|e| format!("include {}: {e}", display(&p)))?;
        loader.add_text(&display(&p), &text);
    }
    let (mut snapshot, diagnostics) = loader.finish();
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    if !errors.is_empty() {
        return Err(format!("include errors:\n  {}", errors.join("\n  ")));
    }
    for (i, obj) in scenario.objects.iter().enumerate() {
        apply_object(&mut snapshot, obj).map_err(|e| format!("objects[{i}]: {e}"))?;
    }
    Ok(snapshot)
}

fn step_label(index: usize, step: &Step) -> String {
    match &step.name {
        Some(n) => format!("step {} ({n})", index + 1),
        None => format!("step {}", index + 1),
    }
}

/// Pod patterns in expectations that name a namespace or pod the snapshot does not have: a typo
/// there would silently match nothing.
fn unknown_patterns(snapshot: &Snapshot, reachability: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let is_table = reachability
        .lines()
        .any(|l| l.trim_start().starts_with("-\t") || l.trim() == "-");
    if is_table {
        return bad;
    }
    for line in reachability.lines() {
        let content = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = content.split_whitespace().collect();
        if words.len() < 4 || words[1] != "->" {
            continue;
        }
        for pattern in [words[0], words[2]] {
            let Some((ns, pod)) = pattern.split_once('/') else {
                continue;
            };
            let known = match (ns, pod) {
                ("*", "*") => true,
                ("*", pod) => snapshot.pods.keys().any(|p| p.name == pod),
                (ns, "*") => snapshot.pods.keys().any(|p| p.namespace == ns),
                (ns, pod) => snapshot.pods.keys().any(|p| p.namespace == ns && p.name == pod),
            };
            if !known {
                bad.push(pattern.to_string());
            }
        }
    }
    bad
}

fn port_label(port: u16, protocol: Protocol) -> String {
    format!("{port}/{protocol}")
}

#[test]
fn scenarios_match_expected_reachability() {
    let files = scenario_files(&scenarios_dir());
    assert!(
        !files.is_empty(),
        "no scenario files under {}",
        display(&scenarios_dir())
    );
    let mut report = String::new();
    let mut failures = 0usize;
    let mut checked = 0usize;

    for path in &files {
        let file = display(path);
        let mut fail = |msg: String| {
            failures += 1;
            let _ = writeln!(report, "\n=== {file}: {msg}");
        };
        let scenario = match load_scenario(path) {
            Ok(s) => s,
            Err(e) => {
                fail(e);
                continue;
            }
        };
        let mut snapshot = match initial_snapshot(path, &scenario) {
            Ok(s) => s,
            Err(e) => {
                fail(e);
                continue;
            }
        };
        if scenario.steps.iter().all(|s| s.expect.is_empty()) {
            fail("no step has an `expect` block".into());
            continue;
        }
        for (si, step) in scenario.steps.iter().enumerate() {
            let label = step_label(si, step);
            if let Err(e) = step.apply_to(&mut snapshot) {
                fail(format!("{label}: {e}"));
                break;
            }
            let expectations = match step.expectations() {
                Ok(e) => e,
                Err(e) => {
                    fail(format!("{label}: bad expectations: {e}"));
                    break;
                }
            };
            for block in &step.expect {
                let bad = unknown_patterns(&snapshot, &block.reachability);
                if !bad.is_empty() {
                    fail(format!("{label}: expectations name unknown pods: {}", bad.join(", ")));
                }
            }
            let ir = compile(&snapshot, &CompileOptions::default());
            for block in &expectations {
                if block.ports.is_empty() {
                    fail(format!("{label}: an expect block lists no ports"));
                }
                for &(port, protocol) in &block.ports {
                    checked += 1;
                    let actual = Matrix::evaluate(&ir, protocol, port);
                    let expected = block.expectations.matrix(&actual.pods, protocol, port);
                    let mut diff = String::new();
                    for (s, src) in actual.pods.iter().enumerate() {
                        for (d, dst) in actual.pods.iter().enumerate() {
                            let Some((want, line)) = block.expectations.check(src, dst, protocol, port) else {
                                continue;
                            };
                            let got = actual.allowed[s][d];
                            if want != got {
                                let why = match line {
                                    Some(l) => format!("reachability line {l}"),
                                    None => "default".to_string(),
                                };
                                let _ = writeln!(
                                    diff,
                                    "  {src} -> {dst}: expected {}, compiled {} ({why})",
                                    if want { "allow" } else { "deny" },
                                    if got { "allow" } else { "deny" },
                                );
                            }
                        }
                    }
                    if diff.is_empty() {
                        continue;
                    }
                    fail(format!(
                        "{label}, {}\nexpected:\n{}compiled:\n{}differences:\n{diff}",
                        port_label(port, protocol),
                        expected.to_table(),
                        actual.to_table(),
                    ));
                }
            }
        }
    }
    assert!(checked > 0, "no port was checked");
    assert!(
        failures == 0,
        "{failures} scenario failure(s) in {} files ({checked} port checks):\n{report}",
        files.len()
    );
}

#[test]
fn upstream_suite_is_complete() {
    let dir = scenarios_dir().join("upstream");
    let files = scenario_files(&dir);
    let mut titles: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for path in &files {
        let file = display(path);
        match load_scenario(path) {
            Ok(s) => match s.upstream {
                Some(title) if !title.trim().is_empty() => {
                    if let Some(other) = titles.insert(title.clone(), file.clone()) {
                        problems.push(format!("{file}: upstream title {title:?} also used by {other}"));
                    }
                }
                _ => problems.push(format!("{file}: no `upstream` title")),
            },
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    assert_eq!(
        files.len(),
        UPSTREAM_TESTS,
        "expected one scenario per upstream test in {}",
        display(&dir)
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Ports probed by a step: every port of its expect blocks, or 80/TCP when it has none.
fn step_ports(step: &Step) -> Result<Vec<(u16, Protocol)>, String> {
    let mut ports: BTreeSet<(u16, Protocol)> = BTreeSet::new();
    for block in step.expectations()? {
        ports.extend(block.ports);
    }
    if ports.is_empty() {
        ports.insert((80, Protocol::Tcp));
    }
    Ok(ports.into_iter().collect())
}

#[test]
fn per_node_split_agrees_with_whole_cluster() {
    let files = scenario_files(&scenarios_dir());
    let mut problems: Vec<String> = Vec::new();
    let mut checked = 0usize;

    for path in &files {
        let file = display(path);
        let Ok(scenario) = load_scenario(path) else {
            problems.push(format!("{file}: does not parse"));
            continue;
        };
        let mut snapshot = match initial_snapshot(path, &scenario) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        for (si, step) in scenario.steps.iter().enumerate() {
            let label = step_label(si, step);
            if let Err(e) = step.apply_to(&mut snapshot) {
                problems.push(format!("{file}: {label}: {e}"));
                break;
            }
            let ports = match step_ports(step) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{file}: {label}: {e}"));
                    break;
                }
            };
            let opts = CompileOptions::default();
            let all = compile(&snapshot, &opts);
            let per_node = compile_all_nodes(&snapshot, &opts);

            // Each endpoint must be enforced on exactly one node.
            let mut home: BTreeMap<String, &str> = BTreeMap::new();
            for (node, ir) in &per_node {
                for ep in &ir.endpoints {
                    if let Some(prev) = home.insert(ep.pod.to_string(), node.as_str()) {
                        problems.push(format!(
                            "{file}: {label}: {} is an endpoint on both {prev} and {node}",
                            ep.pod
                        ));
                    }
                }
            }
            let missing: Vec<String> = all
                .endpoints
                .iter()
                .map(|e| e.pod.to_string())
                .filter(|p| !home.contains_key(p))
                .collect();
            if !missing.is_empty() {
                problems.push(format!("{file}: {label}: endpoints on no node: {}", missing.join(", ")));
                continue;
            }

            let whole = Evaluator::new(&all);
            let nodes: BTreeMap<&str, Evaluator> = per_node
                .iter()
                .map(|(n, ir)| (n.as_str(), Evaluator::new(ir)))
                .collect();
            for &(port, protocol) in &ports {
                for src in &all.endpoints {
                    for dst in &all.endpoints {
                        let Some((s, d)) = flow_addresses(src, dst) else {
                            continue;
                        };
                        checked += 1;
                        let flow = Flow {
                            src: s,
                            dst: d,
                            protocol,
                            port,
                        };
                        let want = whole.evaluate(&flow).allowed;
                        let src_node = home[&src.pod.to_string()];
                        let dst_node = home[&dst.pod.to_string()];
                        let out = nodes[src_node].evaluate(&flow);
                        let inn = nodes[dst_node].evaluate(&flow);
                        let what = format!(
                            "{file}: {label}, {}: {} -> {}",
                            port_label(port, protocol),
                            src.pod,
                            dst.pod
                        );
                        if out.egress.endpoint.as_ref() != Some(&src.pod) {
                            problems.push(format!("{what}: {src_node} does not judge the source's egress"));
                        }
                        if inn.ingress.endpoint.as_ref() != Some(&dst.pod) {
                            problems.push(format!("{what}: {dst_node} does not judge the destination's ingress"));
                        }
                        let got = out.egress.allowed && inn.ingress.allowed;
                        if got != want {
                            problems.push(format!(
                                "{what}: whole cluster says {}, nodes say {} (egress on {src_node}: {}, ingress on {dst_node}: {})",
                                if want { "allow" } else { "deny" },
                                if got { "allow" } else { "deny" },
                                out.egress.allowed,
                                inn.ingress.allowed,
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no flow was checked");
    assert!(
        problems.is_empty(),
        "{} per-node disagreement(s) ({checked} flows checked):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
