//! Nothing is left behind: Ctrl-C removes a running lab, and `policyc lab down`
//! ([`cleanup::down`]) removes what a killed run left.
//!
//! The lab under test runs in a child process: this test binary again, running only the
//! ignored `hold_a_lab` test, which builds a lab, prints its prefix and waits to be signalled.
//!
//! Needs root; see `common::lab_available`.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use policyc_compiler::Loader;
use policyc_lab::{cleanup, Lab, LabOptions};

const CHILD_ENV: &str = "POLICYC_LAB_HOLD";

const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.2.1}]}
";

/// Runs only as the child of the tests below.
#[test]
#[ignore = "run by the cleanup tests in a child process"]
fn hold_a_lab() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut l = Loader::new();
    l.add_text("cluster", CLUSTER);
    let (snapshot, _) = l.finish();
    let lab = Lab::new(&snapshot, LabOptions::default()).expect("lab");
    println!("PREFIX {}", lab.prefix());
    std::thread::sleep(Duration::from_secs(60));
    drop(lab);
}

/// Starts the child and returns it with its lab's prefix once the lab is up.
fn start_child() -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_a_lab", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness prints `test hold_a_lab ... ` on the same line first.
        if let Some(p) = line.split("PREFIX ").nth(1) {
            return (child, p.trim().to_string());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the child printed no lab prefix");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

fn namespaces(prefix: &str) -> Vec<String> {
    cleanup::namespaces_with_prefix(&format!("{prefix}-"))
}

#[test]
fn interrupt_removes_the_lab_and_down_removes_leftovers() {
    require_lab!();

    // Ctrl-C: the handler removes every namespace before the process exits.
    let (mut child, prefix) = start_child();
    assert_eq!(namespaces(&prefix).len(), 1 + 2 + 2, "underlay, two nodes, two pods");
    signal(&child, "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    assert!(namespaces(&prefix).is_empty(), "left behind: {:?}", namespaces(&prefix));

    // SIGKILL leaves everything; `lab down` removes it.
    let (mut child, prefix) = start_child();
    signal(&child, "KILL");
    let _ = child.wait();
    let left = namespaces(&prefix);
    assert_eq!(left.len(), 5, "a killed run leaves its namespaces: {left:?}");
    let t = Instant::now();
    let removed = cleanup::down(false).unwrap();
    for n in &left {
        assert!(removed.contains(n), "{n} not removed");
    }
    assert!(namespaces(&prefix).is_empty());
    assert!(t.elapsed() < Duration::from_secs(10));
}
