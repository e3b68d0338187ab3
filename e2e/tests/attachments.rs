//! Both attachments with real packets where they differ: the per-pod source guard against forged
//! source addresses, the flannel attachment's fail-closed drop when br_netfilter is off, and the
//! node reaching its pods (kubelet probes) whatever the policies.
//!
//! ```text
//!  node-1: x/a 10.70.1.2, x/c 10.70.1.3 (ingress: only from x/a), x/b2 10.70.1.4
//!  node-2: x/b 10.70.2.2
//!  x/b and x/b2 send UDP datagrams to x/c with x/a's address as their source (raw IP socket):
//!  cross-node from x/b, same-node from x/b2.
//! ```
//!
//! Needs root; the flannel tests also Debian's containernetworking-plugins and br_netfilter.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use policyc_compiler::{Loader, ObjectRef, Protocol, Snapshot};
use policyc_lab::counters::RuleHit;
use policyc_lab::spoof::{self, Receiver};
use policyc_lab::{sys, Attachment, Lab, LabOptions, Outcome};

const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.1.3}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b2, namespace: x, labels: {pod: b2}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.1.4}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.70.2.2}]}
";

const ONLY_A_TO_C: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
";

const DENY_ALL_INGRESS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

const A: Ipv4Addr = Ipv4Addr::new(10, 70, 1, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 70, 1, 3);
const UDP_PORT: u16 = 7777;
const COUNT: usize = 5;

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

fn pod(name: &str) -> ObjectRef {
    ObjectRef::new("x", name)
}

fn lab(attachment: Attachment, fail_closed: bool, docs: &[&str]) -> Option<Lab> {
    if attachment == Attachment::Flannel && !policyc_testhost::require(policyc_lab::cni::check()) {
        return None;
    }
    let opts = LabOptions {
        attachment,
        fail_closed,
        ..LabOptions::default()
    };
    Some(Lab::new(&snapshot(docs), opts).expect("building the lab"))
}

fn pod_netns(lab: &Lab, name: &str) -> std::path::PathBuf {
    sys::netns_path(lab.pod_netns(&pod(name)).expect("pod netns"))
}

fn hit_packets(hits: &[RuleHit], node: &str, comment: &str) -> u64 {
    hits.iter()
        .filter(|h| h.node == node && h.comment.as_deref() == Some(comment))
        .map(|h| h.packets)
        .sum()
}

fn anti_spoofing(attachment: Attachment) {
    let Some(mut lab) = lab(attachment, false, &[CLUSTER]) else {
        return;
    };
    let rx = Receiver::start(&pod_netns(&lab, "c"), UDP_PORT).unwrap();
    let (b, b2) = (pod_netns(&lab, "b"), pod_netns(&lab, "b2"));

    // Without any rules forged datagrams arrive: the sender works, and only the guard stops them.
    lab.clear_rules().unwrap();
    spoof::send_udp_as(&b, A, C, UDP_PORT, b"bare-cross", COUNT).unwrap();
    spoof::send_udp_as(&b2, A, C, UDP_PORT, b"bare-same", COUNT).unwrap();
    assert_eq!(rx.arrived(b"bare-cross", COUNT), COUNT, "cross-node, no rules");
    assert_eq!(rx.arrived(b"bare-same", COUNT), COUNT, "same-node, no rules");
    assert!(
        rx.sources(b"bare-same").iter().all(|s| s.ip() == IpAddr::V4(A)),
        "the forged datagrams carry x/a's address"
    );

    // x/c admits only x/a: x/a's datagrams arrive, the forged ones do not.
    lab.update(&snapshot(&[CLUSTER, ONLY_A_TO_C])).unwrap();
    let before = lab.counters().unwrap();
    spoof::send_udp(&pod_netns(&lab, "a"), C, UDP_PORT, b"real-a", COUNT).unwrap();
    spoof::send_udp_as(&b, A, C, UDP_PORT, b"forged-cross", COUNT).unwrap();
    spoof::send_udp_as(&b2, A, C, UDP_PORT, b"forged-same", COUNT).unwrap();
    assert_eq!(rx.arrived(b"real-a", COUNT), COUNT, "x/a's own datagrams");
    assert_eq!(rx.arrived(b"forged-cross", 1), 0, "forged by x/b on node-2");
    assert_eq!(rx.arrived(b"forged-same", 1), 0, "forged by x/b2 on node-1");

    // The guard of the sender's port counted them, by name.
    let hits = before.diff(&lab.counters().unwrap());
    let text: Vec<String> = hits.iter().map(|h| format!("{h} ({} packets)", h.packets)).collect();
    for h in hits.iter().filter(|h| h.verdict == "drop") {
        eprintln!("{}: {h} ({} packets)", attachment.name(), h.packets);
    }
    let b_guard = "x/b: source address not the pod's: spoofed, dropped";
    let b2_guard = "x/b2: source address not the pod's: spoofed, dropped";
    assert!(
        hit_packets(&hits, "node-2", b_guard) >= COUNT as u64,
        "{attachment:?}: {text:#?}"
    );
    assert!(
        hit_packets(&hits, "node-1", b2_guard) >= COUNT as u64,
        "{attachment:?}: {text:#?}"
    );
    // And x/b's own address is still judged by the policy: denied.
    assert_eq!(
        lab.probe_cell(&pod("b"), &pod("c"), Protocol::Tcp, 80).unwrap(),
        Outcome::Timeout
    );
    drop(rx);
    lab.teardown().unwrap();
}

#[test]
fn forged_sources_are_dropped_by_the_guard_canal() {
    require_lab!();
    anti_spoofing(Attachment::Canal);
}

#[test]
fn forged_sources_are_dropped_by_the_guard_flannel() {
    require_lab!();
    anti_spoofing(Attachment::Flannel);
}

fn node_connects(lab: &Lab, node: &str, to: Ipv4Addr, port: u16) -> bool {
    let ns = sys::netns_path(lab.node_netns(node).expect("node netns"));
    sys::in_netns(&ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(1)).is_ok()
    })
    .unwrap()
}

/// The node reaches its pods (kubelet probes), fail-closed and with every pod's ingress denied.
fn host_reaches_pods(attachment: Attachment) {
    let Some(lab) = lab(attachment, true, &[CLUSTER, DENY_ALL_INGRESS]) else {
        return;
    };
    // Policy is in force: pods do not reach each other.
    assert_eq!(
        lab.probe_cell(&pod("a"), &pod("c"), Protocol::Tcp, 80).unwrap(),
        Outcome::Timeout
    );
    assert_eq!(
        lab.probe_cell(&pod("b"), &pod("a"), Protocol::Tcp, 80).unwrap(),
        Outcome::Timeout
    );
    // Each node reaches its own pods.
    for (node, ip) in [("node-1", A), ("node-1", C), ("node-2", Ipv4Addr::new(10, 70, 2, 2))] {
        assert!(
            node_connects(&lab, node, ip, 80),
            "{attachment:?}: {node} cannot connect to {ip}:80"
        );
    }
    lab.teardown().unwrap();
}

#[test]
fn the_node_reaches_its_pods_canal() {
    require_lab!();
    host_reaches_pods(Attachment::Canal);
}

#[test]
fn the_node_reaches_its_pods_flannel() {
    require_lab!();
    host_reaches_pods(Attachment::Flannel);
}

/// br_netfilter off on a node: bridged pod traffic bypasses the inet hooks, so the bridge table
/// drops it (fail closed) even where policy would allow it; routed traffic is still judged.
#[test]
fn flannel_without_br_netfilter_fails_closed() {
    require_lab!();
    let Some(lab) = lab(Attachment::Flannel, false, &[CLUSTER]) else {
        return;
    };
    let (a, b, c) = (pod("a"), pod("b"), pod("c"));
    assert_eq!(lab.probe_cell(&a, &c, Protocol::Tcp, 80).unwrap(), Outcome::Connected);
    let node = lab.node_netns("node-1").unwrap().to_string();
    let set = |v: &str| {
        sys::sysctls(
            &node,
            &[
                ("net.bridge.bridge-nf-call-iptables".into(), v),
                ("net.bridge.bridge-nf-call-ip6tables".into(), v),
            ],
        )
        .unwrap()
    };
    set("0");
    let (o, hits) = lab.trace_cell(&a, &c, Protocol::Tcp, 80).unwrap();
    let restored = {
        set("1");
        lab.probe_cell(&a, &c, Protocol::Tcp, 80).unwrap()
    };
    assert_eq!(
        o,
        Outcome::Timeout,
        "allowed but unseen: dropped, not passed unenforced"
    );
    for h in &hits {
        eprintln!("br_netfilter off: {h} ({} packets)", h.packets);
    }
    let unseen = "bridged pod traffic not seen by policyc (br_netfilter off): fail closed";
    assert!(
        hit_packets(&hits, "node-1", unseen) >= 1,
        "{:#?}",
        hits.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert_eq!(restored, Outcome::Connected, "br_netfilter back on");

    // Routed (cross-node) traffic goes through the inet hooks without br_netfilter too.
    set("0");
    let cross = lab.probe_cell(&a, &b, Protocol::Tcp, 80).unwrap();
    set("1");
    assert_eq!(cross, Outcome::Connected);
    lab.teardown().unwrap();
}

/// The IPv6 link-local address of a pod's eth0 and the interface index, in its namespace.
fn link_local(netns: &std::path::Path) -> (std::net::Ipv6Addr, u32) {
    let name = netns.file_name().unwrap().to_str().unwrap().to_string();
    let out = sys::netns_exec(
        &name,
        &["ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ll = v[0]["addr_info"][0]["local"].as_str().unwrap().parse().unwrap();
    let index = v[0]["ifindex"].as_u64().unwrap() as u32;
    (ll, index)
}

/// Pods on one bridge share a link: a pod reaching another by its IPv6 link-local address must
/// be judged too (x/c's ingress is denied to everyone). Whether x/a connected, and the rules
/// that counted the attempt.
fn link_local_between_pods(attachment: Attachment, fail_closed: bool) -> Option<(bool, Vec<RuleHit>)> {
    let lab = lab(attachment, fail_closed, &[CLUSTER, DENY_ALL_INGRESS])?;
    let c = pod_netns(&lab, "c");
    let listener = sys::in_netns(&c, || std::net::TcpListener::bind("[::]:8081"))
        .unwrap()
        .unwrap();
    let (ll, _) = link_local(&c);
    let a = pod_netns(&lab, "a");
    let (_, a_index) = link_local(&a);
    let to = std::net::SocketAddrV6::new(ll, 8081, 0, a_index);
    let before = lab.counters().unwrap();
    let connected = sys::in_netns(&a, || {
        TcpStream::connect_timeout(&to.into(), Duration::from_millis(500)).is_ok()
    })
    .unwrap();
    let hits = before.diff(&lab.counters().unwrap());
    drop(listener);
    lab.teardown().unwrap();
    Some((connected, hits))
}

#[test]
fn link_local_between_pods_is_judged() {
    require_lab!();
    let (connected, _) = link_local_between_pods(Attachment::Canal, false).unwrap();
    assert!(!connected, "canal: pods are on different links");
    for fail_closed in [false, true] {
        let Some((connected, hits)) = link_local_between_pods(Attachment::Flannel, fail_closed) else {
            return;
        };
        let text: Vec<String> = hits.iter().map(ToString::to_string).collect();
        assert!(!connected, "flannel, fail-closed {fail_closed}: {text:?}");
        assert!(
            text.iter()
                .any(|t| t
                    == "dropped by \"cni0: link-local traffic between pods has no pod address: dropped\" on node-1"),
            "{text:?}"
        );
    }
}

/// Without fail-closed, a broadcast from one pod must not reach a pod whose ingress denies
/// everyone: no dispatch map holds a broadcast address, so the bridge attachment drops bridged
/// traffic to no pod of the node.
#[test]
fn flannel_broadcasts_do_not_bypass_ingress() {
    let Some(mut lab) = lab(Attachment::Flannel, false, &[CLUSTER]) else {
        return;
    };
    let rx = Receiver::start(&pod_netns(&lab, "c"), UDP_PORT).unwrap();
    let a = pod_netns(&lab, "a");
    let subnet = Ipv4Addr::new(10, 70, 1, 255);

    // Without rules the broadcasts arrive: the path works, only the rules stop them.
    lab.clear_rules().unwrap();
    spoof::send_udp_broadcast(&a, subnet, UDP_PORT, b"bare-subnet", COUNT).unwrap();
    assert_eq!(rx.arrived(b"bare-subnet", COUNT), COUNT, "subnet broadcast, no rules");

    lab.update(&snapshot(&[CLUSTER, DENY_ALL_INGRESS])).unwrap();
    let before = lab.counters().unwrap();
    spoof::send_udp_broadcast(&a, subnet, UDP_PORT, b"denied-subnet", COUNT).unwrap();
    spoof::send_udp_broadcast(&a, Ipv4Addr::BROADCAST, UDP_PORT, b"denied-limited", COUNT).unwrap();
    assert_eq!(rx.arrived(b"denied-subnet", 1), 0, "subnet broadcast through deny-all");
    assert_eq!(
        rx.arrived(b"denied-limited", 1),
        0,
        "limited broadcast through deny-all"
    );
    let hits = before.diff(&lab.counters().unwrap());
    let comment = policyc_compiler::render::labels::bridged_to_no_pod(policyc_lab::cni::BRIDGE);
    assert!(
        hit_packets(&hits, "node-1", &comment) >= COUNT as u64,
        "{:#?}",
        hits.iter()
            .map(|h| format!("{h} ({} packets)", h.packets))
            .collect::<Vec<_>>()
    );
    drop(rx);
    lab.teardown().unwrap();
}
