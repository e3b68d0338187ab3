//! The lab's network itself: the VXLAN overlay's MTU, DROP semantics, topology changes, and
//! leaving nothing behind.
//!
//! Needs root (and `ping` from iputils-ping for the MTU test); see `common::lab_available`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use policyc_compiler::{Loader, ObjectRef, Protocol, Snapshot};
use policyc_lab::{cleanup, topo, Attachment, Lab, LabOptions, Outcome};

/// Two nodes, three pods: x/a and x/c on node-1, x/b on node-2.
const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}, {containerPort: 9, protocol: SCTP}]}]}
status: {phase: Running, podIPs: [{ip: 10.60.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}, {containerPort: 9, protocol: SCTP}]}]}
status: {phase: Running, podIPs: [{ip: 10.60.2.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.60.1.2}]}
";

const DENY_B: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
";

fn snapshot(docs: &[&str]) -> Snapshot {
    let mut l = Loader::new();
    for (i, d) in docs.iter().enumerate() {
        l.add_text(&format!("doc{i}"), d);
    }
    let (s, diags) = l.finish();
    assert!(
        diags.iter().all(|d| d.severity != policyc_compiler::Severity::Error),
        "{diags:?}"
    );
    s
}

fn pod(ns: &str, name: &str) -> ObjectRef {
    ObjectRef::new(ns, name)
}

fn ping(lab: &Lab, from: &ObjectRef, to: &str, payload: usize) -> bool {
    Command::new("ip")
        .args(["netns", "exec", lab.pod_netns(from).expect("pod netns")])
        .args(["ping", "-M", "do", "-s", &payload.to_string(), "-c1", "-W1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A lab of `docs` with `attachment`; `None` (skipped) when the flannel attachment cannot run.
fn lab_with(attachment: Attachment, docs: &[&str]) -> Option<Lab> {
    if attachment == Attachment::Flannel && !policyc_testhost::require(policyc_lab::cni::check()) {
        return None;
    }
    let opts = LabOptions {
        attachment,
        ..LabOptions::default()
    };
    Some(Lab::new(&snapshot(docs), opts).unwrap())
}

#[test]
fn overlay_mtu_is_underlay_minus_vxlan_canal() {
    require_lab!();
    overlay_mtu(Attachment::Canal);
}

/// Also across the bridge: the bridge plugin gives pods, their veths and cni0 FLANNEL_MTU.
#[test]
fn overlay_mtu_is_underlay_minus_vxlan_flannel() {
    require_lab!();
    overlay_mtu(Attachment::Flannel);
}

fn overlay_mtu(attachment: Attachment) {
    if policyc_testhost::on_path(&["ping"]).is_err() {
        policyc_testhost::skip("ping is not installed (apt-get install iputils-ping)");
        return;
    }
    let Some(lab) = lab_with(attachment, &[CLUSTER]) else {
        return;
    };
    let a = pod("x", "a");
    // 1422 bytes of ICMP payload + 8 (ICMP) + 20 (IPv4) = 1450 = the pod MTU; with VXLAN's 50
    // bytes that is exactly the underlay's 1500.
    let fits = topo::POD_MTU as usize - 28;
    assert_eq!(fits, 1422);
    assert!(
        ping(&lab, &a, "10.60.2.1", fits),
        "1422-byte DF ping across nodes must pass"
    );
    assert!(
        !ping(&lab, &a, "10.60.2.1", fits + 1),
        "1423-byte DF ping must not pass"
    );
    // The same on one node (no overlay): the pod's eth0 is the limit.
    assert!(ping(&lab, &a, "10.60.1.2", fits));
    assert!(!ping(&lab, &a, "10.60.1.2", fits + 1));
    lab.teardown().unwrap();
}

#[test]
fn blocked_connections_time_out_and_never_get_rst_canal() {
    require_lab!();
    blocked_connections(Attachment::Canal);
}

#[test]
fn blocked_connections_time_out_and_never_get_rst_flannel() {
    require_lab!();
    blocked_connections(Attachment::Flannel);
}

fn blocked_connections(attachment: Attachment) {
    let Some(mut lab) = lab_with(attachment, &[CLUSTER]) else {
        return;
    };
    let (a, b, c) = (pod("x", "a"), pod("x", "b"), pod("x", "c"));

    // Without rules: connected on a listening port, refused (RST) on another one.
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Tcp, 80).unwrap(), Outcome::Connected);
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Tcp, 81).unwrap(), Outcome::Refused);
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Udp, 53).unwrap(), Outcome::Answered);
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Sctp, 9).unwrap(), Outcome::Arrived);

    lab.update(&snapshot(&[CLUSTER, DENY_B])).unwrap();
    for port in [80, 81] {
        let t = Instant::now();
        let o = lab.probe_cell(&a, &b, Protocol::Tcp, port).unwrap();
        assert_eq!(o, Outcome::Timeout, "port {port}: blocked means dropped, never refused");
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "a timeout takes the whole timeout"
        );
    }
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Udp, 53).unwrap(), Outcome::Timeout);
    assert_eq!(lab.probe_cell(&a, &b, Protocol::Sctp, 9).unwrap(), Outcome::Timeout);
    // Other pods are untouched; a pod reaches itself.
    assert_eq!(lab.probe_cell(&a, &c, Protocol::Tcp, 80).unwrap(), Outcome::Connected);
    assert_eq!(lab.probe_cell(&b, &b, Protocol::Tcp, 80).unwrap(), Outcome::Connected);

    // The drop rule of x/b on node-2 counted the packet.
    let (o, rules) = lab.trace_cell(&a, &b, Protocol::Tcp, 80).unwrap();
    assert_eq!(o, Outcome::Timeout);
    let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    assert!(
        text.iter()
            .any(|r| r == "dropped by \"x/b ingress denied: selected by x/deny-b\" on node-2"),
        "{text:?}"
    );
    lab.teardown().unwrap();
}

#[test]
fn pods_and_nodes_come_and_go_canal() {
    require_lab!();
    pods_and_nodes_come_and_go(Attachment::Canal);
}

/// With CNI DEL and ADD on the nodes' bridges.
#[test]
fn pods_and_nodes_come_and_go_flannel() {
    require_lab!();
    pods_and_nodes_come_and_go(Attachment::Flannel);
}

fn pods_and_nodes_come_and_go(attachment: Attachment) {
    let Some(mut lab) = lab_with(attachment, &[CLUSTER]) else {
        return;
    };
    let prefix = lab.prefix().to_string();
    assert_eq!(lab.topology().nodes.len(), 2);

    // A pod on a new node: the node joins the overlay, everyone reaches it.
    let d = "
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y}
spec: {nodeName: node-3, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.60.3.1}]}
";
    lab.update(&snapshot(&[CLUSTER, d])).unwrap();
    assert_eq!(lab.topology().nodes.len(), 3);
    let m = lab.probe_matrix(Protocol::Tcp, 80).matrix();
    assert!(m.allowed.iter().flatten().all(|v| *v), "{}", m.to_table());

    // x/b moves to node-3 with a new address; x/c goes away; node-2 is left without pods.
    let moved = CLUSTER
        .replace("nodeName: node-2", "nodeName: node-3")
        .replace("10.60.2.1", "10.60.3.2");
    let without_c = moved.split("---").take(2).collect::<Vec<_>>().join("---");
    lab.update(&snapshot(&[&without_c, d])).unwrap();
    assert_eq!(lab.pods().len(), 3);
    assert!(lab.pod_netns(&pod("x", "c")).is_none());
    let m = lab.probe_matrix(Protocol::Tcp, 80).matrix();
    assert_eq!(m.pods, vec!["x/a", "x/b", "y/d"]);
    assert!(m.allowed.iter().flatten().all(|v| *v), "{}", m.to_table());
    assert_eq!(
        cleanup::namespaces_with_prefix(&format!("{prefix}-pod-")).len(),
        3,
        "removed pods' namespaces are gone"
    );

    drop(lab);
    assert!(
        cleanup::namespaces_with_prefix(&format!("{prefix}-")).is_empty(),
        "dropping the lab removes every namespace"
    );
}

fn host_links() -> Vec<String> {
    let out = Command::new("ip").args(["-j", "link", "show"]).output().unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut v: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn no_lab_namespace_reaches_the_host_canal() {
    require_lab!();
    no_lab_namespace_reaches_the_host(Attachment::Canal);
}

#[test]
fn no_lab_namespace_reaches_the_host_flannel() {
    require_lab!();
    no_lab_namespace_reaches_the_host(Attachment::Flannel);
}

fn no_lab_namespace_reaches_the_host(attachment: Attachment) {
    let host_before = host_links();
    let Some(lab) = lab_with(attachment, &[CLUSTER]) else {
        return;
    };
    let prefix = lab.prefix().to_string();
    let names = cleanup::namespaces_with_prefix(&format!("{prefix}-"));
    assert_eq!(names.len(), 1 + 2 + 3, "underlay, two nodes, three pods: {names:?}");
    // The lab adds no link to the host's namespace: its veths have both ends in lab namespaces.
    assert_eq!(host_links(), host_before, "the host's links changed");
    // Only veths, the underlay bridge and the VXLAN devices exist in the lab.
    for ns in &names {
        let out = Command::new("ip")
            .args(["-n", ns, "-d", "-j", "link", "show"])
            .output()
            .unwrap();
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for l in links.as_array().unwrap() {
            let name = l["ifname"].as_str().unwrap_or("");
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
            assert!(
                name == "lo" || matches!(kind, "veth" | "bridge" | "vxlan"),
                "{ns}: unexpected link {name} ({kind})"
            );
        }
    }
    lab.teardown().unwrap();
    assert!(cleanup::namespaces_with_prefix(&format!("{prefix}-")).is_empty());
}
