//! Every scenario under `e2e/scenarios/` with real packets: for every step and every port of its
//! `expect` blocks, what the packets did must equal both the IR's verdict and the expectations,
//! cell by cell.
//!
//! ```text
//!  scenarios, grouped by the cluster they include
//!   └─ one Lab for the whole suite: Lab::update rebuilds only pods and nodes that differ
//!        (scenarios sharing upstream/cluster.yaml reuse all namespaces; only rules reload)
//!        └─ verify::run_scenario: per step apply ─► reload every node ─► probe ─► compare
//! ```
//!
//! Needs root; see `common::lab_available`.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use policyc_lab::verify::{self, Report, VerifyOptions};
use policyc_lab::{Attachment, Lab, LabOptions};

/// Number of `It` blocks in the upstream suite (test/e2e/network/netpol/network_policy.go).
const UPSTREAM_TESTS: usize = 48;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Path relative to the e2e crate, for messages.
fn display(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
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

#[test]
fn every_scenario_with_real_packets_canal() {
    require_lab!();
    every_scenario(Attachment::Canal);
}

/// The same scenarios with pods attached as plain Flannel attaches them (the real bridge and
/// host-local CNI plugins, br_netfilter on): the rules dispatch by pod address behind the bridge
/// table's per-port source guard.
#[test]
fn every_scenario_with_real_packets_flannel() {
    require_lab!();
    if !policyc_testhost::require(policyc_lab::cni::check()) {
        return;
    }
    every_scenario(Attachment::Flannel);
}

fn every_scenario(attachment: Attachment) {
    let started = Instant::now();
    let files = scenario_files(&scenarios_dir());
    let upstream = files
        .iter()
        .filter(|f| f.parent().is_some_and(|p| p.ends_with("upstream")))
        .count();
    assert_eq!(upstream, UPSTREAM_TESTS, "upstream scenarios found");

    // Group by the cluster they start from, so the lab changes topology as rarely as possible.
    let mut loaded = Vec::new();
    let mut failures = String::new();
    let mut failed = 0usize;
    for f in &files {
        match verify::load_scenario(f, Default::default()) {
            Ok((s, initial)) => loaded.push((f.clone(), s, initial)),
            Err(e) => {
                failed += 1;
                let _ = writeln!(failures, "\n=== {}: {e}", display(f));
            }
        }
    }
    loaded.sort_by_key(|(f, s, _)| {
        let mut inc = s.include.clone();
        inc.iter_mut()
            .for_each(|i| *i = i.trim_start_matches("../").to_string());
        (inc, f.clone())
    });

    let opts = LabOptions {
        attachment,
        ..LabOptions::default()
    };
    let vopts = VerifyOptions::default();
    let mut lab: Option<Lab> = None;
    let (mut steps, mut ports) = (0usize, 0usize);
    for (path, scenario, initial) in &loaded {
        let t = Instant::now();
        let lab = match &mut lab {
            Some(l) => l,
            None => lab.insert(Lab::new(initial, opts.clone()).expect("building the lab")),
        };
        let results = verify::run_scenario(lab, scenario, initial, &vopts);
        steps += results.len();
        ports += results.iter().map(|s| s.ports.len()).sum::<usize>();
        let report = Report {
            name: format!("{} ({})", scenario.name, display(path)),
            lab: lab.prefix().to_string(),
            cluster: false,
            timeout_ms: opts.timeout.as_millis() as u64,
            steps: results,
        };
        eprintln!(
            "{:<70} {} steps  {:>5.1} s  {}",
            display(path),
            report.steps.len(),
            t.elapsed().as_secs_f64(),
            if report.ok() { "ok" } else { "FAILED" }
        );
        if report.steps.len() != scenario.steps.len() || !report.ok() {
            failed += 1;
            let _ = writeln!(failures, "\n=== {}", report.to_text());
        }
    }
    if let Some(l) = lab {
        let prefix = l.prefix().to_string();
        l.teardown().expect("teardown");
        assert!(
            policyc_lab::cleanup::namespaces_with_prefix(&format!("{prefix}-")).is_empty(),
            "namespaces left behind"
        );
    }
    eprintln!(
        "{} attachment: {} scenarios, {steps} steps, {ports} port checks in {:.1} s",
        attachment.name(),
        loaded.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(ports > 0, "no port was checked");
    assert!(
        failed == 0,
        "{failed} scenario(s) failed with real packets:\n{failures}"
    );
}
