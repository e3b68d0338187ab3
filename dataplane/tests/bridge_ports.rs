//! Port discovery against the kernel, as root: a throwaway node namespace with pods attached to
//! its `cni0` by the real CNI plugins plain Flannel delegates to (Debian's `bridge` and
//! `host-local`, with the configuration flannel's CNI plugin hands them), and discovery must
//! name each pod's host-side veth and its addresses, read without entering any pod namespace.
//! Nothing outside these namespaces is touched (the plugins run inside the node namespace).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use policyc_dataplane::links::{br_netfilter, bridge_ports, links, LinkEvents};
use policyc_testhost::Netns;

const CNI: &str = "/usr/lib/cni";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ready() -> bool {
    if !policyc_testhost::needs_root(&["ip"]) {
        return false;
    }
    if !Path::new(CNI).join("bridge").exists() || !Path::new(CNI).join("host-local").exists() {
        policyc_testhost::skip(format!(
            "{CNI}/bridge and host-local missing (apt-get install containernetworking-plugins)"
        ));
        return false;
    }
    true
}

/// The configuration flannel's CNI plugin delegates to `bridge` with (from the node's
/// `subnet.env`), dual-stack here.
fn conf(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "ipMasq": false, "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
            "routes": [{"dst": "10.244.0.0/16"}],
        },
    })
    .to_string()
}

/// Runs `bridge` ADD in the node namespace for the pod namespace; returns the host-side veth
/// and the pod's addresses, as the plugin's result names them.
fn cni_add(node: &Netns, pod: &Netns, conf: &str, id: &str) -> (String, Vec<IpAddr>) {
    let mut child = node
        .exec(&format!("{CNI}/bridge"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI)
        .env("CNI_CONTAINERID", id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bridge ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let veth = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != "cni0")
        .expect("host-side interface in the result")["name"]
        .as_str()
        .unwrap()
        .to_string();
    let ips = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    (veth, ips)
}

struct Node {
    node: Netns,
    pods: Vec<Netns>,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node(tag: &str) -> Node {
    let node = Netns::new(tag);
    run(node.exec("ip").args(["link", "set", "lo", "up"]));
    let dir = std::env::temp_dir().join(format!("policyc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Node {
        node,
        pods: Vec::new(),
        dir,
    }
}

#[test]
fn discovers_each_pods_port_and_addresses() {
    if !ready() {
        return;
    }
    let mut n = node("ports");
    let path = n.node.path();
    // No bridge yet: discovery says so (the agent then does not claim the flannel attachment).
    assert_eq!(bridge_ports(Some(&path), "cni0").unwrap(), None);

    let mut events = LinkEvents::open(Some(&path)).unwrap();
    assert!(!events.wait(Duration::from_millis(50)).unwrap(), "no link changed yet");
    let conf = conf(&n.dir.join("ipam"));
    let mut expected = Vec::new();
    for i in 0..3 {
        let pod = Netns::new(&format!("ports-pod{i}"));
        expected.push(cni_add(&n.node, &pod, &conf, &format!("c{i}")));
        n.pods.push(pod);
    }
    assert!(
        events.wait(Duration::from_secs(1)).unwrap(),
        "veths appeared and joined cni0"
    );
    expected.sort();
    for (veth, ips) in &expected {
        assert!(veth.starts_with("veth"), "{veth}");
        assert_eq!(ips.len(), 2, "dual-stack: {ips:?}");
    }

    let ports = bridge_ports(Some(&path), "cni0").unwrap().expect("cni0 exists");
    let found: Vec<(String, Vec<IpAddr>)> = ports.iter().map(|p| (p.name.clone(), p.addresses.clone())).collect();
    assert_eq!(found, expected, "{ports:#?}");
    for p in &ports {
        assert!(p.error.is_none() && p.peer_netnsid.is_some(), "{p:?}");
    }
    // Another bridge name, or a link that is no bridge, is no bridge.
    assert_eq!(bridge_ports(Some(&path), "cbr9").unwrap(), None);
    assert_eq!(bridge_ports(Some(&path), "lo").unwrap(), None);

    // What the node's links look like to the attachment detection.
    let all = links(Some(&path)).unwrap();
    let cni0 = all.iter().find(|l| l.name == "cni0").unwrap();
    assert_eq!(cni0.kind.as_deref(), Some("bridge"));
    assert_eq!(all.iter().filter(|l| l.master == Some(cni0.index)).count(), 3);

    // A pod that adds another pod's address to its interface shows it too: discovery reports
    // what the namespaces hold, and the agent treats an address on two ports as nobody's.
    let victim = expected[0].1[0].to_string();
    let liar = n
        .pods
        .iter()
        .position(|p| {
            let out = run(p.exec("ip").args(["-o", "addr", "show", "dev", "eth0"]));
            !out.contains(&format!(" {victim}/"))
        })
        .unwrap();
    run(n.pods[liar]
        .exec("ip")
        .args(["addr", "add", &format!("{victim}/32"), "dev", "eth0"]));
    let ports = bridge_ports(Some(&path), "cni0").unwrap().unwrap();
    let holders = ports
        .iter()
        .filter(|p| p.addresses.contains(&victim.parse().unwrap()))
        .count();
    assert_eq!(holders, 2, "{ports:#?}");

    // A pod going away takes its port with it, and the subscription hears of it.
    let (gone, _) = &expected[1];
    let gone_pod = n
        .pods
        .iter()
        .position(|p| {
            let out = run(p.exec("ip").args(["-o", "addr", "show", "dev", "eth0"]));
            out.contains(&format!(" {}/", expected[1].1[0]))
        })
        .unwrap();
    events.wait(Duration::from_millis(10)).unwrap();
    drop(n.pods.remove(gone_pod));
    let mut heard = false;
    for _ in 0..20 {
        if events.wait(Duration::from_millis(100)).unwrap() {
            heard = true;
            break;
        }
    }
    assert!(heard, "RTM_DELLINK of the deleted pod's veth");
    let ports = bridge_ports(Some(&path), "cni0").unwrap().unwrap();
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| &p.name != gone));

    // A veth whose peer stays in the node's namespace is no pod's, whatever its peer holds.
    run(n
        .node
        .exec("ip")
        .args(["link", "add", "vethhost0", "type", "veth", "peer", "name", "hostpeer0"]));
    run(n
        .node
        .exec("ip")
        .args(["addr", "add", "10.244.1.200/32", "dev", "hostpeer0"]));
    run(n.node.exec("ip").args(["link", "set", "vethhost0", "master", "cni0"]));
    let ports = bridge_ports(Some(&path), "cni0").unwrap().unwrap();
    let host = ports.iter().find(|p| p.name == "vethhost0").expect("a port");
    assert!(host.addresses.is_empty(), "{host:?}");
    assert!(
        host.error.as_deref().is_some_and(|e| e.contains("own namespace")),
        "{host:?}"
    );
}

#[test]
fn br_netfilter_switches_are_per_namespace() {
    if !policyc_testhost::needs_root(&["ip", "sysctl"]) {
        return;
    }
    let host_before = br_netfilter(None, false).unwrap();
    if host_before.iptables.is_none() {
        policyc_testhost::skip("br_netfilter is not loaded on this host");
        return;
    }
    let n = node("brnf");
    let path = n.node.path();
    run(n
        .node
        .exec("sysctl")
        .args(["-qw", "net.bridge.bridge-nf-call-iptables=0"]));
    run(n
        .node
        .exec("sysctl")
        .args(["-qw", "net.bridge.bridge-nf-call-ip6tables=0"]));
    let off = br_netfilter(Some(&path), false).unwrap();
    assert_eq!(
        (off.iptables, off.ip6tables, off.on()),
        (Some(false), Some(false), false)
    );
    let on = br_netfilter(Some(&path), true).unwrap();
    assert!(on.on() && on.error.is_none(), "{on:?}");
    let shown = run(n.node.exec("sysctl").args(["-n", "net.bridge.bridge-nf-call-iptables"]));
    assert_eq!(shown.trim(), "1");
    // The host's own switches were only read.
    assert_eq!(br_netfilter(None, false).unwrap(), host_before);
}
