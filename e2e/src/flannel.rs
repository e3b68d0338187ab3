//! The real flanneld in the lab's nodes: one `e2e/bin/flanneld` per node network namespace
//! (kube subnet manager, vxlan backend; built by `e2e/apiserver/build.sh flanneld`), for the
//! agents' tier ([`crate::cluster`]), whose lab then leaves the overlay alone
//! ([`crate::lab::Overlay::External`]).
//!
//! ```text
//!  host: kube-lab on 127.0.0.1:P ◄── relay thread (this process) ◄──┐
//!  <run>-node-N: flanneld (ip netns exec: own mount namespace)        │
//!                  --kubeconfig-file → https://127.0.0.1:P ──► relay listener on 127.0.0.1:P
//!                  --iface <node IP on eth0> --subnet-file <dir>/subnet-<node>.env, NODE_NAME=<node>
//!                  programs flannel.1, routes, neigh, fdb; annotates its Node
//! ```
//!
//! A node's namespace has its own loopback, so flanneld cannot reach the API server on the
//! host's. The relay listens on the same address and port inside the node's namespace (the
//! server's certificate and every kubeconfig stay valid) and connects to the server from the
//! host's namespace: a socket belongs to the namespace it was created in. Nothing is added to
//! the host's namespace and no lab traffic leaves the lab's namespaces.
//!
//! The VTEP MAC: flanneld takes the one in its Node's `backend-data` annotation (as it does
//! after a restart) and picks a random one otherwise. The cluster lab writes the lab's MAC
//! ([`crate::topo::NodePlan::vtep_mac`]) there, so flanneld's overlay and the lab's own can be
//! compared entry by entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use policyc_compiler::cidr::{Cidr, Family};
use serde_json::{json, Value};

use crate::topo::{self, NodePlan, Topology};
use crate::{cleanup, sys, Error};

/// flanneld's annotation prefix (its default).
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// Who flanneld is: its ServiceAccount in flannel's manifest, with that manifest's RBAC
/// ([`rbac`]).
pub const USER: &str = "system:serviceaccount:kube-flannel:flannel";
pub const GROUPS: [&str; 2] = ["system:serviceaccounts", "system:authenticated"];

/// flannel's ClusterRole and its binding (kube-flannel.yml): nodes (read, patch, status),
/// pods (get), ClusterCIDRs aside.
pub fn rbac() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "flannel"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "flannel"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
            "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}],
        }),
    ]
}

/// The node's pod subnet flannel leases to it: its one IPv4 subnet. flannel's kube subnet
/// manager knows one podCIDR per family, and this lab's underlay is IPv4 only (flannel's IPv6
/// overlay, `flannel-v6.1`, would need an IPv6 underlay).
pub fn subnet(n: &NodePlan) -> Result<Cidr, Error> {
    let mut v4 = n.prefixes.iter().filter(|c| c.family() == Family::V4);
    match (
        v4.next(),
        v4.next(),
        n.prefixes.iter().any(|c| c.family() == Family::V6),
    ) {
        (Some(c), None, false) if c.prefix() < 32 => Ok(*c),
        _ => Err(Error::new(format!(
            "node {}: flanneld needs exactly one IPv4 pod subnet and no IPv6 one, the lab plans {:?}",
            n.name,
            n.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>()
        ))),
    }
}

/// flannel's `net-conf.json` for a topology: vxlan with the lab's VNI and port, `Network` the
/// smallest prefix (at most a /16) covering every node's subnet.
pub fn net_conf(topology: &Topology) -> Result<Value, Error> {
    let mut subnets = Vec::new();
    for n in topology.nodes.values() {
        subnets.push(subnet(n)?);
    }
    let addr = |c: &Cidr| match c.addr() {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let first = subnets.first().ok_or_else(|| Error::new("no nodes"))?;
    let mut len = subnets.iter().map(Cidr::prefix).min().unwrap_or(16).min(16);
    for c in &subnets {
        len = len.min((addr(first) ^ addr(c)).leading_zeros() as u8);
    }
    let network = Cidr::new(IpAddr::V4(Ipv4Addr::from(addr(first))), len).expect("valid prefix");
    Ok(json!({
        "Network": network.to_string(),
        "EnableIPv4": true,
        "Backend": {"Type": "vxlan", "VNI": topo::VXLAN_ID, "Port": topo::VXLAN_PORT},
    }))
}

/// The Node annotation flanneld reads its VTEP MAC from at start.
pub fn backend_data(n: &NodePlan) -> String {
    json!({"VNI": topo::VXLAN_ID, "VtepMAC": n.vtep_mac}).to_string()
}

/// Relays TCP connections made to `addr` inside a network namespace to the same address in the
/// host's namespace (the calling process's).
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(netns: &Path, addr: std::net::SocketAddr) -> Result<Relay, Error> {
        // The listener is made in the node's namespace; connections to the server from this
        // (the host's) namespace.
        let listener = sys::in_netns(netns, || {
            // The namespace's loopback is down until someone sets it up (the lab does).
            TcpListener::bind(addr)
        })?
        .map_err(|e| Error::new(format!("relay listener on {addr} in {}: {e}", netns.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::new(format!("relay listener: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inner, _)) => {
                        let _ = inner.set_nonblocking(false);
                        if let Ok(outer) = TcpStream::connect(addr) {
                            pipe(inner, outer);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Relay {
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies both ways between two streams until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The listener holds the node's namespace: closing it lets the namespace go.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One node's flanneld and its relay to the API server.
#[derive(Debug)]
pub struct Flanneld {
    child: Option<Child>,
    _relay: Relay,
    pub node: NodePlan,
    pub log: PathBuf,
    pub subnet_file: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl Flanneld {
    /// Starts flanneld for node `n` in the namespace `netns`: `--kube-subnet-mgr`, vxlan over
    /// the node's address on `eth0`, `NODE_NAME`, its subnet file and log in `dir`. `kubeconfig` points at `api`.
    pub fn start(
        binary: &Path,
        n: &NodePlan,
        netns: &str,
        api: std::net::SocketAddr,
        kubeconfig: &Path,
        net_conf: &Path,
        dir: &Path,
    ) -> Result<Flanneld, Error> {
        let relay = Relay::start(&sys::netns_path(netns), api)?;
        let log = dir.join(format!("flanneld-{}.log", n.name));
        let subnet_file = dir.join(format!("subnet-{}.env", n.name));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::new(format!("{}: {e}", log.display())))?;
        // `ip netns exec` enters the namespace in a mount namespace of its own (its /sys is
        // the node's), then execs flanneld: the child is flanneld.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(binary)
            .arg("--kube-subnet-mgr")
            .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
            .arg(format!("--net-config-path={}", net_conf.display()))
            .arg(format!("--subnet-file={}", subnet_file.display()))
            // By address: eth0 may carry other addresses too (a Node's ExternalIP).
            .arg(format!("--iface={}", n.ip))
            .env("NODE_NAME", &n.name)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| Error::new(format!("cannot run {}: {e}", binary.display())))?;
        cleanup::register_process(child.id());
        Ok(Flanneld {
            child: Some(child),
            _relay: relay,
            node: n.clone(),
            log,
            subnet_file,
            started: Instant::now(),
        })
    }

    /// Fails if flanneld exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            return Err(Error::new(format!(
                "flanneld of {} exited ({status}); {}",
                self.node.name,
                self.log_tail()
            )));
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "flanneld log {}: {}",
            self.log.display(),
            lines[lines.len().saturating_sub(5)..].join(" | ")
        )
    }

    /// SIGTERM (flanneld's clean shutdown), then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        cleanup::unregister_process(child.id());
    }
}

impl Drop for Flanneld {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node's VXLAN overlay as the kernel shows it, in `ip`/`bridge` text with what differs
/// between any two namespaces taken out (interface indexes, statistics): what flanneld made
/// can be compared line by line with what the lab makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayView {
    /// `ip -d link show flannel.1`, the index and link-netns id removed.
    pub link: String,
    /// `ip addr show dev flannel.1`, addresses only.
    pub addresses: Vec<String>,
    /// `ip route show dev flannel.1`.
    pub routes: Vec<String>,
    /// `ip neigh show dev flannel.1`.
    pub neigh: Vec<String>,
    /// `bridge fdb show dev flannel.1`.
    pub fdb: Vec<String>,
}

impl OverlayView {
    pub fn read(netns: &str) -> Result<OverlayView, Error> {
        let dev = topo::VXLAN_DEVICE;
        let lines = |args: &[&str]| -> Result<Vec<String>, Error> {
            let mut v: Vec<String> = sys::netns_exec(netns, args)?
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect();
            v.sort();
            Ok(v)
        };
        let link = sys::netns_exec(netns, &["ip", "-d", "link", "show", dev])?;
        let link = link
            .split_whitespace()
            .skip(1) // "N:"
            .collect::<Vec<_>>()
            .join(" ");
        let addresses = lines(&["ip", "-o", "addr", "show", "dev", dev])?
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                let i = w.iter().position(|x| *x == "inet" || *x == "inet6")?;
                Some(format!("{} {}", w[i], w.get(i + 1)?))
            })
            .filter(|a| !a.starts_with("inet6 fe80:"))
            .collect();
        Ok(OverlayView {
            link,
            addresses,
            routes: lines(&["ip", "route", "show", "dev", dev])?,
            neigh: lines(&["ip", "neigh", "show", "dev", dev])?,
            fdb: lines(&["bridge", "fdb", "show", "dev", dev])?,
        })
    }

    /// Side by side with another view, one line per entry that differs (empty: the same).
    pub fn diff(&self, other: &OverlayView, left: &str, right: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.link != other.link {
            out.push(format!("link:\n  {left}: {}\n  {right}: {}", self.link, other.link));
        }
        for (what, a, b) in [
            ("addr", &self.addresses, &other.addresses),
            ("route", &self.routes, &other.routes),
            ("neigh", &self.neigh, &other.neigh),
            ("fdb", &self.fdb, &other.fdb),
        ] {
            for l in a.iter().filter(|l| !b.contains(l)) {
                out.push(format!("{what} only in {left}: {l}"));
            }
            for l in b.iter().filter(|l| !a.contains(l)) {
                out.push(format!("{what} only in {right}: {l}"));
            }
        }
        out
    }
}

/// The subnets a node's `flannel.1` routes (`ip -j route show dev flannel.1`).
pub fn routed_subnets(netns: &str) -> Vec<String> {
    let Ok(text) = sys::netns_exec(netns, &["ip", "-j", "route", "show", "dev", topo::VXLAN_DEVICE]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .collect()
}

/// Every node's flannel.1 routes every other node's subnet: what `expected` lists, by node.
pub fn converged(netns: &BTreeMap<String, String>, expected: &BTreeMap<String, Vec<String>>) -> bool {
    expected.iter().all(|(node, want)| {
        netns.get(node).is_some_and(|ns| {
            let have = routed_subnets(ns);
            want.iter().all(|w| have.contains(w))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, prefixes: &[&str]) -> NodePlan {
        NodePlan {
            name: name.into(),
            index: 1,
            ip: Ipv4Addr::new(192, 168, 100, 11),
            vtep_mac: "0e:00:c0:a8:64:0b".into(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            gateway_v4: None,
            gateway_v6: None,
            bridge_gateway_v4: None,
            bridge_gateway_v6: None,
        }
    }

    #[test]
    fn network_covers_every_subnet_and_is_at_most_a_16() {
        let mut t = Topology::default();
        t.nodes.insert("a".into(), plan("a", &["10.244.1.0/24"]));
        t.nodes.insert("b".into(), plan("b", &["10.244.2.0/24"]));
        assert_eq!(net_conf(&t).unwrap()["Network"], "10.244.0.0/16");
        t.nodes.insert("c".into(), plan("c", &["10.245.0.0/24"]));
        assert_eq!(net_conf(&t).unwrap()["Network"], "10.244.0.0/15");
        assert_eq!(net_conf(&t).unwrap()["Backend"]["Port"], 8472);
    }

    #[test]
    fn flannel_takes_one_ipv4_subnet_per_node() {
        assert!(subnet(&plan("a", &["10.244.1.0/24"])).is_ok());
        assert!(subnet(&plan("a", &["10.244.1.5/32"])).is_err(), "host routes only");
        assert!(subnet(&plan("a", &["10.244.1.0/24", "fd00::/64"])).is_err(), "IPv6");
        assert!(subnet(&plan("a", &["10.244.1.0/24", "10.9.0.0/24"])).is_err());
        assert!(subnet(&plan("a", &[])).is_err());
    }

    #[test]
    fn backend_data_is_what_flanneld_parses() {
        assert_eq!(
            backend_data(&plan("a", &[])),
            r#"{"VNI":1,"VtepMAC":"0e:00:c0:a8:64:0b"}"#
        );
    }
}
