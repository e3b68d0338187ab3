//! The lab's plan: which nodes and pods a snapshot asks for, with every address, prefix and name
//! decided. Pure: no I/O, so that the same snapshot always gives the same lab.
//!
//! ```text
//!  Snapshot ──plan──► Topology
//!                      ├── nodes  name → underlay IP, VTEP MAC, pod prefixes routed to it, VTEP gateways
//!                      └── pods   ns/name → node, IPs, host-side interface (cali…), container ports
//! ```
//!
//! Node addresses come from Node objects (InternalIP, podCIDRs) when the snapshot has them;
//! otherwise node `i` (1-based, in name order) gets `192.168.100.(10+i)` and the /24 (IPv4) or
//! /64 (IPv6) around its pods' addresses. A derived prefix that two nodes would share is replaced
//! by host routes for the pods of each.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policyc_compiler::cidr::{Cidr, Family};
use policyc_compiler::ir::interface_name;
use policyc_compiler::{ObjectRef, Protocol, Snapshot};

use crate::Error;

/// MTU of the underlay (node `eth0`).
pub const UNDERLAY_MTU: u32 = 1500;
/// VXLAN's overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// MTU of `flannel.1` and of every pod's `eth0`.
pub const POD_MTU: u32 = UNDERLAY_MTU - VXLAN_OVERHEAD;
/// Flannel's VXLAN device, VNI and UDP port.
pub const VXLAN_DEVICE: &str = "flannel.1";
pub const VXLAN_ID: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// Calico's pod default gateways: a link-local IPv4 address answered by proxy ARP, and the
/// link-local address the host-side veth gets from its fixed MAC.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// MAC of every host-side pod veth (Calico's).
pub const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// One node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    /// Stable per node name for the lab's lifetime: names the underlay port.
    pub index: usize,
    /// Underlay address (`eth0`, VXLAN local address).
    pub ip: Ipv4Addr,
    /// MAC of its `flannel.1`.
    pub vtep_mac: String,
    /// Pod prefixes the other nodes route to this node over the overlay.
    pub prefixes: Vec<Cidr>,
    /// Next hops other nodes use for this node's prefixes (flannel: the subnet's first address).
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// The flannel attachment's `cni0` address per family (the pods' gateway): host-local's
    /// default, the subnet's first host, unless a pod of the snapshot has that address; then
    /// the highest free address of the subnet. `None` without a subnet of that family.
    pub bridge_gateway_v4: Option<Ipv4Addr>,
    pub bridge_gateway_v6: Option<Ipv6Addr>,
}

/// One pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub id: ObjectRef,
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// Host-side veth name, as the IR names the endpoint's interface.
    pub interface: String,
    /// Distinct container ports, sorted.
    pub ports: Vec<(u16, Protocol)>,
}

impl NodePlan {
    /// MAC of the node's `eth0`, derived from its address.
    pub fn underlay_mac(&self) -> String {
        let o = self.ip.octets();
        format!("0e:01:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    }
}

impl PodPlan {
    pub fn has_family(&self, f: Family) -> bool {
        self.ips.iter().any(|ip| Family::of(ip) == f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub nodes: BTreeMap<String, NodePlan>,
    pub pods: BTreeMap<ObjectRef, PodPlan>,
}

/// Assignments that must not change while a lab runs: node name → (index, derived IP).
pub type Assigned = BTreeMap<String, (usize, Ipv4Addr)>;

fn derived_ip(i: usize) -> Option<Ipv4Addr> {
    u8::try_from(10 + i).ok().map(|o| Ipv4Addr::new(192, 168, 100, o))
}

/// The default prefix around a pod address: /24 for IPv4, /64 for IPv6.
fn default_prefix(ip: &IpAddr) -> Cidr {
    let len = match ip {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 64,
    };
    Cidr::new(*ip, len).expect("valid prefix length")
}

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    a.family() == b.family() && (a.contains(&b.addr()) || b.contains(&a.addr()))
}

impl Topology {
    /// Plans the lab for a snapshot. `assigned` keeps the indices and derived addresses of nodes
    /// a running lab already has, and receives those of new nodes.
    pub fn plan(snapshot: &Snapshot, interface_prefix: &str, assigned: &mut Assigned) -> Result<Topology, Error> {
        // Pods: every endpoint; each needs a node.
        let mut pods = BTreeMap::new();
        for pod in snapshot.endpoints() {
            let id = pod.id();
            let node = match &pod.node {
                Some(n) => n.clone(),
                None => {
                    let by_cidr = snapshot
                        .nodes
                        .values()
                        .find(|n| n.pod_cidrs.iter().any(|c| pod.ips.iter().any(|ip| c.contains(ip))));
                    match by_cidr {
                        Some(n) => n.name.clone(),
                        None => {
                            return Err(Error::new(format!(
                                "pod {id} has no spec.nodeName and no Node's podCIDRs hold its IPs: the lab cannot place it"
                            )))
                        }
                    }
                }
            };
            let mut ports: Vec<(u16, Protocol)> = pod.ports.iter().map(|p| (p.port, p.protocol)).collect();
            ports.sort();
            ports.dedup();
            pods.insert(
                id.clone(),
                PodPlan {
                    interface: interface_name(interface_prefix, &id),
                    id,
                    node,
                    ips: pod.ips.clone(),
                    ports,
                },
            );
        }
        // Two lab pods with one address would make probes ambiguous.
        let mut owners: BTreeMap<IpAddr, &ObjectRef> = BTreeMap::new();
        for p in pods.values() {
            for ip in &p.ips {
                if let Some(other) = owners.insert(*ip, &p.id) {
                    return Err(Error::new(format!("pods {other} and {} both have IP {ip}", p.id)));
                }
            }
        }

        // Nodes: Node objects and every node a pod names.
        let mut names: BTreeSet<String> = snapshot.nodes.keys().cloned().collect();
        names.extend(pods.values().map(|p| p.node.clone()));

        let declared_ips: BTreeSet<Ipv4Addr> = names
            .iter()
            .filter_map(|n| snapshot.nodes.get(n))
            .filter_map(|n| {
                n.internal_ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            })
            .collect();
        let mut used_ips: BTreeSet<Ipv4Addr> = declared_ips.clone();
        let mut next_index = assigned.values().map(|(i, _)| *i).max().unwrap_or(0) + 1;
        let mut nodes = BTreeMap::new();
        for name in &names {
            let node = snapshot.nodes.get(name);
            let declared = node.and_then(|n| {
                n.internal_ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            });
            let index = match assigned.get(name) {
                Some((i, _)) => *i,
                None => {
                    let i = next_index;
                    next_index += 1;
                    i
                }
            };
            let ip = match declared {
                Some(ip) => ip,
                None => {
                    let keep = assigned
                        .get(name)
                        .map(|(_, ip)| *ip)
                        .filter(|ip| !used_ips.contains(ip));
                    match keep {
                        Some(ip) => ip,
                        // Preferably an address no other node ever had in this lab.
                        None => {
                            let free = |ip: &Ipv4Addr| !used_ips.contains(ip);
                            let fresh = |ip: &Ipv4Addr| free(ip) && !assigned.values().any(|(_, a)| a == ip);
                            let candidates = || (1..=240).filter_map(derived_ip);
                            candidates()
                                .find(fresh)
                                .or_else(|| candidates().find(free))
                                .ok_or_else(|| Error::new("too many nodes for 192.168.100.0/24"))?
                        }
                    }
                }
            };
            if !used_ips.insert(ip) && !declared_ips.contains(&ip) {
                return Err(Error::new(format!("node {name}: underlay address {ip} is taken")));
            }
            assigned.insert(name.clone(), (index, ip));
            let o = ip.octets();
            nodes.insert(
                name.clone(),
                NodePlan {
                    name: name.clone(),
                    index,
                    ip,
                    vtep_mac: format!("0e:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
                    prefixes: node.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
                    gateway_v4: None,
                    gateway_v6: None,
                    bridge_gateway_v4: None,
                    bridge_gateway_v6: None,
                },
            );
        }
        // Two Node objects with one InternalIP.
        let mut seen = BTreeMap::new();
        for n in nodes.values() {
            if let Some(other) = seen.insert(n.ip, &n.name) {
                return Err(Error::new(format!(
                    "nodes {other} and {} both have InternalIP {}",
                    n.name, n.ip
                )));
            }
        }

        // Derived prefixes for pod addresses no declared prefix of their node covers.
        let mut derived: BTreeMap<String, BTreeSet<Cidr>> = BTreeMap::new();
        for p in pods.values() {
            let declared = &nodes[&p.node].prefixes;
            for ip in &p.ips {
                if !declared.iter().any(|c| c.contains(ip)) {
                    derived.entry(p.node.clone()).or_default().insert(default_prefix(ip));
                }
            }
        }
        let all: Vec<(String, Cidr)> = nodes
            .values()
            .flat_map(|n| n.prefixes.iter().map(|c| (n.name.clone(), *c)))
            .chain(derived.iter().flat_map(|(n, cs)| cs.iter().map(|c| (n.clone(), *c))))
            .collect();
        let conflicts = |node: &str, c: &Cidr| all.iter().any(|(n, o)| n != node && overlaps(c, o));
        for (name, cs) in &derived {
            for c in cs {
                if conflicts(name, c) {
                    // Shared with another node: route this node's pods in it one by one.
                    for p in pods.values().filter(|p| &p.node == name) {
                        for ip in p.ips.iter().filter(|ip| c.contains(ip)) {
                            nodes.get_mut(name).expect("node").prefixes.push(Cidr::host(*ip));
                        }
                    }
                } else {
                    nodes.get_mut(name).expect("node").prefixes.push(*c);
                }
            }
        }
        for n in nodes.values_mut() {
            n.prefixes.sort();
            n.prefixes.dedup();
            n.gateway_v4 = gateway(&n.prefixes, Family::V4).map(|ip| match ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => unreachable!("IPv4 gateway"),
            });
            n.gateway_v6 = gateway(&n.prefixes, Family::V6).map(|ip| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => unreachable!("IPv6 gateway"),
            });
        }
        let taken: BTreeSet<IpAddr> = pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        for n in nodes.values_mut() {
            n.bridge_gateway_v4 = bridge_gateway(&n.prefixes, Family::V4, &taken).map(|ip| match ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => unreachable!("IPv4 gateway"),
            });
            n.bridge_gateway_v6 = bridge_gateway(&n.prefixes, Family::V6, &taken).map(|ip| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => unreachable!("IPv6 gateway"),
            });
        }
        Ok(Topology { nodes, pods })
    }

    /// Pods of one node.
    pub fn pods_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodPlan> + 'a {
        self.pods.values().filter(move |p| p.node == node)
    }
}

/// A node's pod subnet of a family for the flannel attachment: its first prefix of that family
/// that is a subnet (not a host route).
pub fn bridge_subnet(prefixes: &[Cidr], f: Family) -> Option<Cidr> {
    prefixes
        .iter()
        .find(|c| c.family() == f && c.prefix() < f.bits())
        .copied()
}

/// The smallest prefix (at most a /`max_len`) covering every subnet: flannel's Network.
pub fn covering(subnets: &[Cidr], max_len: u8) -> Cidr {
    let bits = |c: &Cidr| match c.addr() {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    };
    let Some(first) = subnets.first() else {
        return Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid prefix");
    };
    let width = first.family().bits();
    let mut len = subnets.iter().map(Cidr::prefix).min().unwrap_or(max_len).min(max_len);
    for c in subnets.iter().filter(|c| c.family() == first.family()) {
        len = len.min((bits(first) ^ bits(c)).leading_zeros().min(u32::from(width)) as u8);
    }
    let keep = bits(first) & !(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0));
    let addr = match first.addr() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((keep >> 96) as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(keep)),
    };
    Cidr::new(addr, len).expect("valid prefix")
}

/// The bridge's address in a node's subnet (see [`NodePlan::bridge_gateway_v4`]).
fn bridge_gateway(prefixes: &[Cidr], f: Family, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let subnet = bridge_subnet(prefixes, f)?;
    let (base, host_bits) = match subnet.addr() {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32 - u32::from(subnet.prefix())),
        IpAddr::V6(a) => (u128::from(a), 128 - u32::from(subnet.prefix())),
    };
    let at = |offset: u128| -> IpAddr {
        match subnet.addr() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((base + offset) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(base + offset)),
        }
    };
    if host_bits < 2 {
        return None;
    }
    // The last address of an IPv4 subnet is its broadcast address.
    let last = if host_bits >= 64 {
        u64::MAX as u128
    } else {
        (1u128 << host_bits) - 2
    };
    std::iter::once(1u128)
        .chain((1..=last).rev().take(4096))
        .map(at)
        .find(|ip| !taken.contains(ip))
}

/// Flannel's VTEP address: the first address of the node's first subnet of that family. A node
/// that only has host routes gets an address of its own no pod can have.
fn gateway(prefixes: &[Cidr], f: Family) -> Option<IpAddr> {
    let of_family: Vec<&Cidr> = prefixes.iter().filter(|c| c.family() == f).collect();
    let first = of_family.first()?;
    if let Some(subnet) = of_family.iter().find(|c| c.prefix() < f.bits()) {
        return Some(subnet.addr());
    }
    // Host routes only: a reserved address derived from the first pod address.
    Some(match first.addr() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::new(169, 254, 200, a.octets()[3])),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, a.segments()[7])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_compiler::Loader;

    fn snapshot(yaml: &str) -> Snapshot {
        let mut l = Loader::new();
        l.add_text("test", yaml);
        let (s, d) = l.finish();
        assert!(
            d.iter().all(|d| d.severity != policyc_compiler::Severity::Error),
            "{d:?}"
        );
        s
    }

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> String {
        let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: '{ip}'}}")).collect();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}, {{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]}}]}}\nstatus: {{phase: Running, podIPs: [{}]}}\n",
            ips.join(", ")
        )
    }

    #[test]
    fn covering_and_bridge_gateway() {
        let c = |s: &str| -> Cidr { s.parse().unwrap() };
        assert_eq!(
            covering(&[c("10.244.1.0/24"), c("10.244.2.0/24")], 16),
            c("10.244.0.0/16")
        );
        assert_eq!(
            covering(&[c("10.244.1.0/24"), c("10.245.0.0/24")], 16),
            c("10.244.0.0/15")
        );
        assert_eq!(
            covering(&[c("fd00:40:1::/64"), c("fd00:40:2::/64")], 48),
            c("fd00:40::/46")
        );
        let none = BTreeSet::new();
        let p = [c("10.30.1.0/24")];
        assert_eq!(
            bridge_gateway(&p, Family::V4, &none),
            Some("10.30.1.1".parse().unwrap())
        );
        let taken: BTreeSet<IpAddr> = ["10.30.1.1".parse().unwrap(), "10.30.1.254".parse().unwrap()].into();
        assert_eq!(
            bridge_gateway(&p, Family::V4, &taken),
            Some("10.30.1.253".parse().unwrap())
        );
        assert_eq!(bridge_gateway(&[c("10.30.1.5/32")], Family::V4, &none), None);
    }

    #[test]
    fn derives_nodes_from_pods() {
        let s = snapshot(
            &[
                pod("x", "a", "node-2", &["10.20.2.5", "fd00:2::5"]),
                pod("x", "b", "node-1", &["10.20.1.5"]),
            ]
            .concat(),
        );
        let mut assigned = Assigned::new();
        let t = Topology::plan(&s, "cali", &mut assigned).unwrap();
        let n1 = &t.nodes["node-1"];
        let n2 = &t.nodes["node-2"];
        assert_eq!(n1.ip, Ipv4Addr::new(192, 168, 100, 11));
        assert_eq!(n2.ip, Ipv4Addr::new(192, 168, 100, 12));
        assert_eq!(n1.prefixes, vec!["10.20.1.0/24".parse().unwrap()]);
        assert_eq!(
            n2.prefixes,
            vec!["10.20.2.0/24".parse().unwrap(), "fd00:2::/64".parse().unwrap()]
        );
        assert_eq!(n2.gateway_v4, Some(Ipv4Addr::new(10, 20, 2, 0)));
        assert_eq!(n2.gateway_v6, Some("fd00:2::".parse().unwrap()));
        assert_eq!(n1.gateway_v6, None);
        assert_eq!(n2.vtep_mac, "0e:00:c0:a8:64:0c");
        let a = &t.pods[&ObjectRef::new("x", "a")];
        assert_eq!(a.ports, vec![(53, Protocol::Udp), (80, Protocol::Tcp)]);
        assert_eq!(a.interface, interface_name("cali", &a.id));

        // A later plan keeps the addresses of known nodes, even when a new node sorts first.
        let s2 = snapshot(
            &[
                pod("x", "a", "node-2", &["10.20.2.5"]),
                pod("x", "c", "node-0", &["10.20.0.5"]),
            ]
            .concat(),
        );
        let t2 = Topology::plan(&s2, "cali", &mut assigned).unwrap();
        assert_eq!(t2.nodes["node-2"].ip, Ipv4Addr::new(192, 168, 100, 12));
        assert_eq!(t2.nodes["node-2"].index, 2);
        assert_eq!(t2.nodes["node-0"].ip, Ipv4Addr::new(192, 168, 100, 13));
        assert_eq!(t2.nodes["node-0"].index, 3);
    }

    #[test]
    fn shared_subnets_become_host_routes() {
        let s = snapshot(
            &[
                pod("x", "a", "node-1", &["10.9.0.1"]),
                pod("x", "b", "node-2", &["10.9.0.2"]),
            ]
            .concat(),
        );
        let t = Topology::plan(&s, "cali", &mut Assigned::new()).unwrap();
        assert_eq!(t.nodes["node-1"].prefixes, vec!["10.9.0.1/32".parse().unwrap()]);
        assert_eq!(t.nodes["node-2"].prefixes, vec!["10.9.0.2/32".parse().unwrap()]);
        assert_eq!(t.nodes["node-2"].gateway_v4, Some(Ipv4Addr::new(169, 254, 200, 2)));
    }

    #[test]
    fn duplicate_pod_ips_are_refused() {
        let s = snapshot(
            &[
                pod("x", "a", "node-1", &["10.9.0.1"]),
                pod("y", "a", "node-1", &["10.9.0.1"]),
            ]
            .concat(),
        );
        let e = Topology::plan(&s, "cali", &mut Assigned::new()).unwrap_err();
        assert!(e.to_string().contains("both have IP 10.9.0.1"), "{e}");
    }
}
