//! The lab: a Canal-style cluster made of network namespaces, with policyc's rules loaded on
//! every node.
//!
//! ```text
//!  <run>-underlay   br0 ── ul1 ─┐  ── ul2 ─┐ ...          (no address, no forwarding)
//!                              │          │
//!  <run>-node-N     eth0 (underlay IP/32, MTU 1500)
//!                   flannel.1  VXLAN VNI 1, port 8472, nolearning, MTU 1450, local = node IP, txqueuelen 0
//!                     per other node M: route <M prefix> via <M VTEP address> dev flannel.1 onlink
//!                                       neigh <M VTEP address> lladdr <M VTEP MAC> permanent
//!                                       fdb   <M VTEP MAC> dst <M node IP>
//!                   cali…      host side of each local pod's veth, proxy_arp, route <pod IP>/32
//!                   table inet policyc  (compile(node) loaded with `nft -f`, atomically)
//!  <run>-pod-NS.P   eth0 (pod IPs /32 and /128, MTU 1450), default via 169.254.1.1 / fe80::ecee:eeff:feee:eeee
//!                   listeners on every container port (one thread per pod)
//! ```
//!
//! Nothing is linked to the host's namespace: the lab's traffic can only reach the lab's pods.
//! `<run>` is `pclab-<pid>-<n>`; everything is removed on [`Lab::teardown`], on drop, and on
//! Ctrl-C ([`crate::cleanup`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use policyc_compiler::cidr::Cidr;
use policyc_compiler::ir::{AttachmentKind, Ir};
use policyc_compiler::render::nft::TABLE;
use policyc_compiler::{CompileOptions, Compiler, Matrix, ObjectRef, Protocol, Snapshot};
use serde::Serialize;

use crate::counters::{Counters, RuleHit};
use crate::listen::{Arrivals, Listener};
use crate::probe::{self, Outcome, Probe};
use crate::topo::{self, Assigned, NodePlan, PodPlan, Topology};
use crate::{cleanup, conntrack, sys, Error};

/// How a lab is built and probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabOptions {
    /// How long a probe waits for an answer before calling the packet dropped.
    pub timeout: Duration,
    /// Host-side interface name prefix of pod veths (what the rules match on).
    pub interface_prefix: String,
    /// Who programs the VXLAN overlay (`flannel.1`, its routes, neighbours and fdb entries).
    pub overlay: Overlay,
    /// How pods are attached to their node.
    pub attachment: Attachment,
    /// Compile the nodes' rules fail-closed (as the agent does): traffic of pods the ruleset
    /// does not know yet is dropped.
    pub fail_closed: bool,
    /// Flow events (NFLOG) in the nodes' rulesets; `None`: none, as `render` without
    /// `--flow-log`.
    pub flow_log: Option<policyc_compiler::flows::FlowLog>,
}

/// How the lab attaches pods to their node, and so which attachment the rules are compiled for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Attachment {
    /// Canal: a routed veth per pod named `cali…`, /32 routes, proxy ARP, gateway 169.254.1.1.
    #[default]
    Canal,
    /// Plain Flannel: Flannel's CNI plugin's delegate config run through the real `bridge` and
    /// `host-local` plugins ([`crate::cni`]): veths on `cni0`, which is the pods' gateway;
    /// `br_netfilter` on in every node.
    Flannel,
}

impl Attachment {
    pub fn name(self) -> &'static str {
        match self {
            Attachment::Canal => "canal",
            Attachment::Flannel => "flannel",
        }
    }
}

/// Who programs the nodes' VXLAN overlay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlay {
    /// The lab itself, from its plan, the way flannel's vxlan backend does (no API server
    /// needed: `probe`, `verify`).
    #[default]
    Lab,
    /// Something else, in each node's namespace: the lab only makes the underlay (`eth0`).
    /// The agents' tier runs the real flanneld ([`crate::flannel`]).
    External,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(1000),
            interface_prefix: "cali".into(),
            overlay: Overlay::Lab,
            attachment: Attachment::Canal,
            fail_closed: false,
            flow_log: None,
        }
    }
}

#[derive(Debug)]
struct NodeState {
    netns: String,
    /// The IR the kernel holds.
    applied: Option<Ir>,
}

#[derive(Debug)]
struct PodState {
    netns: String,
    /// Flannel attachment: the pod's bridge port (host-side veth the bridge plugin made).
    port: Option<String>,
    _listener: Listener,
}

/// A running lab. Dropping it removes everything it created.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    opts: LabOptions,
    assigned: Assigned,
    topology: Topology,
    snapshot: Snapshot,
    nodes: BTreeMap<String, NodeState>,
    pods: BTreeMap<ObjectRef, PodState>,
    arrivals: Arc<Arrivals>,
    alive: bool,
}

/// What a batch of probes saw for one port: `outcomes[src][dst]`, pods in the IR's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeMatrix {
    pub protocol: Protocol,
    pub port: u16,
    pub pods: Vec<String>,
    pub outcomes: Vec<Vec<Outcome>>,
}

impl ProbeMatrix {
    /// The truth table observed: a cell is allowed when the packet reached the destination.
    pub fn matrix(&self) -> Matrix {
        Matrix {
            pods: self.pods.clone(),
            allowed: self
                .outcomes
                .iter()
                .map(|row| row.iter().map(Outcome::reached).collect())
                .collect(),
        }
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// How long a re-probe that traces a cell's rule waits: the first packet is counted at once.
const TRACE_TIMEOUT: Duration = Duration::from_millis(300);

/// At most this many probe threads at once.
const MAX_PARALLEL_PROBES: usize = 512;

/// Source and destination addresses of a probe: IPv4 when both pods have one, else IPv6 (as
/// `policyc_compiler::eval::flow_addresses` picks them for the IR).
fn addresses(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    for v4 in [true, false] {
        let s = src.iter().find(|ip| ip.is_ipv4() == v4);
        let d = dst.iter().find(|ip| ip.is_ipv4() == v4);
        if let (Some(s), Some(d)) = (s, d) {
            return Some((*s, *d));
        }
    }
    None
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

impl Lab {
    /// Builds the lab for a snapshot and loads every node's rules. Fails with a one-line reason
    /// when the host cannot run it (not root, no nftables).
    pub fn new(snapshot: &Snapshot, opts: LabOptions) -> Result<Lab, Error> {
        let mut lab = Lab::empty(opts)?;
        lab.update(snapshot)?;
        Ok(lab)
    }

    /// Builds the lab's namespaces, links and pods for a snapshot without loading any rules:
    /// for when something else programs the nodes (one agent per node, see [`crate::cluster`]).
    pub fn without_rules(snapshot: &Snapshot, opts: LabOptions) -> Result<Lab, Error> {
        let mut lab = Lab::empty(opts)?;
        lab.update_topology(snapshot)?;
        Ok(lab)
    }

    fn empty(opts: LabOptions) -> Result<Lab, Error> {
        sys::check_environment()?;
        if opts.attachment == Attachment::Flannel {
            crate::cni::check()?;
        }
        raise_fd_limit();
        let prefix = format!(
            "{}{}-{}",
            cleanup::NAME_PREFIX,
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        cleanup::register(&prefix);
        let mut lab = Lab {
            prefix,
            opts,
            assigned: Assigned::new(),
            topology: Topology::default(),
            snapshot: Snapshot::default(),
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            arrivals: Arc::new(Arrivals::default()),
            alive: true,
        };
        lab.create_underlay()?;
        Ok(lab)
    }

    /// The run prefix every namespace of this lab starts with (`pclab-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.opts.timeout = timeout;
    }

    /// The flow log the nodes' rules are compiled with from the next reload on.
    pub fn set_flow_log(&mut self, flow_log: Option<policyc_compiler::flows::FlowLog>) {
        self.opts.flow_log = flow_log;
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn underlay_netns(&self) -> String {
        format!("{}-underlay", self.prefix)
    }

    fn node_netns_name(&self, node: &str) -> String {
        format!("{}-node-{node}", self.prefix)
    }

    fn pod_netns_name(&self, pod: &ObjectRef) -> String {
        format!("{}-pod-{}.{}", self.prefix, pod.namespace, pod.name)
    }

    /// Name of a node's network namespace (for `ip netns exec`).
    pub fn node_netns(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(|n| n.netns.as_str())
    }

    /// Name of a pod's network namespace (for `ip netns exec`).
    pub fn pod_netns(&self, pod: &ObjectRef) -> Option<&str> {
        self.pods.get(pod).map(|p| p.netns.as_str())
    }

    /// The IR loaded on a node.
    pub fn node_ir(&self, node: &str) -> Option<&Ir> {
        self.nodes.get(node).and_then(|n| n.applied.as_ref())
    }

    /// The whole-cluster IR of the current snapshot: what `policyc matrix` evaluates.
    pub fn cluster_ir(&self) -> Ir {
        policyc_compiler::compile(&self.snapshot, &self.compile_options(None))
    }

    /// What the rules of a node (or of the whole cluster) are compiled with: the lab's
    /// attachment, and for the flannel attachment every pod's bridge port.
    pub fn compile_options(&self, node: Option<String>) -> CompileOptions {
        let attachment = match self.opts.attachment {
            Attachment::Canal => AttachmentKind::Canal,
            Attachment::Flannel => AttachmentKind::Bridge {
                bridge: crate::cni::BRIDGE.into(),
            },
        };
        CompileOptions {
            node,
            interface_prefix: self.opts.interface_prefix.clone(),
            fail_closed: self.opts.fail_closed,
            flow_log: self.opts.flow_log,
            attachment,
            ports: self
                .pods
                .iter()
                .filter_map(|(id, p)| Some((id.clone(), p.port.clone()?)))
                .collect(),
        }
    }

    /// A pod's bridge port (flannel attachment), or its routed `cali…` veth (Canal).
    pub fn pod_port(&self, pod: &ObjectRef) -> Option<String> {
        match self.opts.attachment {
            Attachment::Canal => self.topology.pods.get(pod).map(|p| p.interface.clone()),
            Attachment::Flannel => self.pods.get(pod).and_then(|p| p.port.clone()),
        }
    }

    /// The lab's own directory (host-local's leases of the flannel attachment).
    fn dir(&self) -> std::path::PathBuf {
        cleanup::run_dir(&self.prefix)
    }

    fn ipam_dir(&self, node: &str) -> std::path::PathBuf {
        self.dir().join("ipam").join(node)
    }

    /// The subnet.env a node's flanneld would write, for the families of `ips`: each address's
    /// subnet on its node, the bridge's address when not host-local's default, and the network
    /// covering every node's subnet of that family.
    fn subnet_envs(&self, plan: &PodPlan) -> Result<Vec<crate::cni::SubnetEnv>, Error> {
        use policyc_compiler::cidr::Family;
        let node = self
            .topology
            .nodes
            .get(&plan.node)
            .ok_or_else(|| Error::new(format!("node {} is missing", plan.node)))?;
        let mut envs = Vec::new();
        for f in [Family::V4, Family::V6] {
            let Some(ip) = plan.ips.iter().find(|ip| Family::of(ip) == f) else {
                continue;
            };
            let subnet = topo::bridge_subnet(&node.prefixes, f)
                .filter(|c| c.contains(ip))
                .ok_or_else(|| {
                    Error::new(format!(
                        "the flannel attachment needs a pod subnet on node {} holding {} ({ip}); it has {:?}",
                        plan.node,
                        plan.id,
                        node.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>()
                    ))
                })?;
            let gateway = match f {
                Family::V4 => node.bridge_gateway_v4.map(IpAddr::V4),
                Family::V6 => node.bridge_gateway_v6.map(IpAddr::V6),
            };
            let first_host = match subnet.addr() {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
            };
            let subnets: Vec<Cidr> = self
                .topology
                .nodes
                .values()
                .filter_map(|n| topo::bridge_subnet(&n.prefixes, f))
                .collect();
            envs.push(crate::cni::SubnetEnv {
                subnet,
                gateway: gateway.filter(|g| *g != first_host),
                network: topo::covering(&subnets, if f == Family::V4 { 16 } else { 48 }),
            });
        }
        Ok(envs)
    }

    fn cni_config(&self, plan: &PodPlan) -> Result<serde_json::Value, Error> {
        Ok(crate::cni::delegate_config(
            &self.subnet_envs(plan)?,
            topo::POD_MTU,
            &self.ipam_dir(&plan.node),
            &plan.ips,
        ))
    }

    fn container_id(&self, pod: &ObjectRef) -> String {
        format!("{}-{}.{}", self.prefix, pod.namespace, pod.name)
    }

    fn create_underlay(&mut self) -> Result<(), Error> {
        let ul = self.underlay_netns();
        sys::batch("ip", None, &[format!("netns add {ul}")])?;
        sys::batch(
            "ip",
            Some(&ul),
            &[
                "link set lo up".into(),
                "link add br0 type bridge".into(),
                "link set br0 up".into(),
            ],
        )
    }

    /// Brings the lab to a new snapshot: removes, adds and rebuilds pods and nodes whose
    /// placement, addresses or ports changed, then reloads every node's rules. Label and policy
    /// changes only reload rules.
    pub fn update(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        self.update_topology(snapshot)?;
        self.reload()
    }

    /// Like [`Lab::update`], without reloading the rules: the nodes keep what they hold (pods
    /// new to a node are not in its ruleset yet).
    pub fn update_topology(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let plan = Topology::plan(snapshot, &self.opts.interface_prefix, &mut self.assigned)?;

        let gone_nodes: BTreeSet<String> = self
            .nodes
            .keys()
            .filter(|n| plan.nodes.get(*n) != self.topology.nodes.get(*n))
            .cloned()
            .collect();
        let gone_pods: Vec<ObjectRef> = self
            .pods
            .keys()
            .filter(|p| {
                plan.pods.get(*p) != self.topology.pods.get(*p)
                    || self
                        .topology
                        .pods
                        .get(*p)
                        .is_some_and(|pp| gone_nodes.contains(&pp.node))
            })
            .cloned()
            .collect();
        self.remove_pods(&gone_pods)?;
        self.remove_nodes(&gone_nodes)?;

        let new_nodes: Vec<NodePlan> = plan
            .nodes
            .values()
            .filter(|n| !self.nodes.contains_key(&n.name))
            .cloned()
            .collect();
        let new_pods: Vec<PodPlan> = plan
            .pods
            .values()
            .filter(|p| !self.pods.contains_key(&p.id))
            .cloned()
            .collect();
        self.topology = plan;
        self.snapshot = snapshot.clone();
        self.add_nodes(&new_nodes)?;
        self.add_pods(&new_pods)
    }

    fn remove_pods(&mut self, pods: &[ObjectRef]) -> Result<(), Error> {
        let mut names = Vec::new();
        let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods {
            if self.opts.attachment == Attachment::Flannel {
                // CNI DEL, as the kubelet does: host-local releases the address, the veth goes.
                if let (Some(state), Some(plan)) = (self.pods.get(p), self.topology.pods.get(p)) {
                    if let (Some(node), Ok(conf)) = (self.nodes.get(&plan.node), self.cni_config(plan)) {
                        let netns = sys::netns_path(&state.netns);
                        if let Err(e) = crate::cni::del(&node.netns, &netns, &self.container_id(p), &conf) {
                            eprintln!("lab {}: {e}", self.prefix);
                        }
                    }
                }
                if let Some(state) = self.pods.remove(p) {
                    names.push(state.netns.clone());
                }
                continue;
            }
            if let Some(state) = self.pods.remove(p) {
                // Dropping the state stops the listener thread and closes its sockets.
                names.push(state.netns.clone());
            }
            if let Some(plan) = self.topology.pods.get(p) {
                per_node
                    .entry(plan.node.clone())
                    .or_default()
                    .push(format!("link del {}", plan.interface));
            }
        }
        // Deleting the host-side veth now (its route goes with it) frees its name at once; a
        // deleted namespace's links only go when the kernel gets round to it.
        for (node, cmds) in &per_node {
            if let Some(state) = self.nodes.get(node) {
                sys::batch_force("ip", Some(&state.netns), cmds)?;
            }
        }
        cleanup::delete_namespaces(&names).map(|_| ())
    }

    fn remove_nodes(&mut self, gone: &BTreeSet<String>) -> Result<(), Error> {
        if gone.is_empty() {
            return Ok(());
        }
        let old: Vec<NodePlan> = gone
            .iter()
            .filter_map(|n| self.topology.nodes.get(n).cloned())
            .collect();
        let mut names = Vec::new();
        let mut ports = Vec::new();
        for n in gone {
            if let Some(state) = self.nodes.remove(n) {
                names.push(state.netns);
            }
            let _ = std::fs::remove_dir_all(self.ipam_dir(n));
            if let Some(plan) = self.topology.nodes.get(n) {
                ports.push(format!("link del ul{}", plan.index));
            }
        }
        // As for pods: free the underlay port's name now.
        sys::batch_force("ip", Some(&self.underlay_netns()), &ports)?;
        // Remaining nodes forget the overlay entries of the removed ones.
        let lab_overlay = self.opts.overlay == Overlay::Lab;
        for (name, state) in self.nodes.iter().filter(|_| lab_overlay) {
            let (ip_cmds, fdb_cmds) = overlay_commands(&old, name, false);
            sys::batch_force("ip", Some(&state.netns), &ip_cmds)?;
            sys::batch_force("bridge", Some(&state.netns), &fdb_cmds)?;
        }
        cleanup::delete_namespaces(&names).map(|_| ())
    }

    fn add_nodes(&mut self, new: &[NodePlan]) -> Result<(), Error> {
        if new.is_empty() {
            return Ok(());
        }
        let ul = self.underlay_netns();
        let names: Vec<String> = new.iter().map(|n| self.node_netns_name(&n.name)).collect();
        sys::batch(
            "ip",
            None,
            &names.iter().map(|n| format!("netns add {n}")).collect::<Vec<_>>(),
        )?;
        for (n, ns) in new.iter().zip(&names) {
            self.nodes.insert(
                n.name.clone(),
                NodeState {
                    netns: ns.clone(),
                    applied: None,
                },
            );
        }
        let mut ul_cmds = Vec::new();
        for (n, ns) in new.iter().zip(&names) {
            sys::sysctls(
                ns,
                &[
                    ("net.ipv4.ip_forward".into(), "1"),
                    ("net.ipv6.conf.all.forwarding".into(), "1"),
                    ("net.ipv6.conf.all.accept_dad".into(), "0"),
                    ("net.ipv6.conf.default.accept_dad".into(), "0"),
                    ("net.ipv4.icmp_ratelimit".into(), "0"),
                    ("net.ipv6.icmp.ratelimit".into(), "0"),
                ],
            )?;
            if self.opts.attachment == Attachment::Flannel {
                // br_netfilter: bridged (same-node) pod traffic goes through the inet hooks.
                sys::sysctls(
                    ns,
                    &[
                        ("net.bridge.bridge-nf-call-iptables".into(), "1"),
                        ("net.bridge.bridge-nf-call-ip6tables".into(), "1"),
                    ],
                )?;
            }
            let port = format!("ul{}", n.index);
            let mut cmds = vec![
                "link set lo up".to_string(),
                // A fixed MAC: a node rebuilt with the same address is not hidden behind the
                // other nodes' ARP entries for its old one.
                format!(
                    "link add eth0 address {} mtu {} type veth peer name {port} netns {ul}",
                    n.underlay_mac(),
                    topo::UNDERLAY_MTU
                ),
                format!("addr add {}/32 dev eth0", n.ip),
                "link set eth0 up".into(),
                // Every node address is on the underlay segment. (The default route also lets
                // the node answer proxy ARP for the pods' gateway, as a real node's does.)
                "route add default dev eth0".into(),
            ];
            if self.opts.overlay == Overlay::External {
                sys::batch("ip", Some(ns), &cmds)?;
                ul_cmds.push(format!("link set {port} master br0"));
                ul_cmds.push(format!("link set {port} up"));
                continue;
            }
            // As flanneld makes it (github.com/vishvananda/netlink sends a zero txqueuelen),
            // so that tests can compare the two line by line.
            cmds.extend([format!(
                    "link add {dev} address {mac} mtu {mtu} txqueuelen 0 type vxlan id {id} local {ip} dev eth0 dstport {port} nolearning",
                    dev = topo::VXLAN_DEVICE,
                    mac = n.vtep_mac,
                    mtu = topo::POD_MTU,
                    id = topo::VXLAN_ID,
                    ip = n.ip,
                    port = topo::VXLAN_PORT,
                ),
            ]);
            if let Some(gw) = n.gateway_v4 {
                cmds.push(format!("addr add {gw}/32 dev {}", topo::VXLAN_DEVICE));
            }
            cmds.push(format!("link set {} up", topo::VXLAN_DEVICE));
            sys::batch("ip", Some(ns), &cmds)?;
            ul_cmds.push(format!("link set {port} master br0"));
            ul_cmds.push(format!("link set {port} up"));
        }
        sys::batch("ip", Some(&ul), &ul_cmds)?;

        if self.opts.overlay == Overlay::External {
            return Ok(());
        }
        // Overlay entries: every node learns every other node that is new, and new nodes learn
        // all others.
        let all: Vec<NodePlan> = self.topology.nodes.values().cloned().collect();
        let new_names: BTreeSet<&str> = new.iter().map(|n| n.name.as_str()).collect();
        for (name, state) in &self.nodes {
            let peers: Vec<NodePlan> = if new_names.contains(name.as_str()) {
                all.clone()
            } else {
                new.to_vec()
            };
            let (ip_cmds, fdb_cmds) = overlay_commands(&peers, name, true);
            sys::batch("ip", Some(&state.netns), &ip_cmds)?;
            sys::batch("bridge", Some(&state.netns), &fdb_cmds)?;
        }
        Ok(())
    }

    fn add_pods(&mut self, new: &[PodPlan]) -> Result<(), Error> {
        if new.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = new.iter().map(|p| self.pod_netns_name(&p.id)).collect();
        sys::batch(
            "ip",
            None,
            &names.iter().map(|n| format!("netns add {n}")).collect::<Vec<_>>(),
        )?;
        // Should anything below fail, teardown still finds these namespaces by prefix.
        let mut per_node_links: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut per_node_routes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (p, ns) in new.iter().zip(&names) {
            sys::sysctls(
                ns,
                &[
                    ("net.ipv6.conf.all.accept_dad".into(), "0"),
                    ("net.ipv6.conf.default.accept_dad".into(), "0"),
                    ("net.ipv4.icmp_ratelimit".into(), "0"),
                    ("net.ipv6.icmp.ratelimit".into(), "0"),
                ],
            )?;
            if self.opts.attachment == Attachment::Flannel {
                continue;
            }
            let links = per_node_links.entry(p.node.as_str()).or_default();
            links.push(format!(
                "link add {} address {} type veth peer name eth0 netns {ns}",
                p.interface,
                topo::HOST_VETH_MAC
            ));
            links.push(format!("link set {} up", p.interface));
            let routes = per_node_routes.entry(p.node.as_str()).or_default();
            for ip in &p.ips {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                routes.push(format!("route add {ip}/{len} dev {}", p.interface));
            }
        }
        for (node, cmds) in &per_node_links {
            let state = self
                .nodes
                .get(*node)
                .ok_or_else(|| Error::new(format!("node {node} is missing")))?;
            sys::batch("ip", Some(&state.netns), cmds)?;
        }
        let mut ports: BTreeMap<ObjectRef, String> = BTreeMap::new();
        if self.opts.attachment == Attachment::Flannel {
            for (p, ns) in new.iter().zip(&names) {
                sys::batch("ip", Some(ns), &["link set lo up".to_string()])?;
                let node = self
                    .nodes
                    .get(&p.node)
                    .ok_or_else(|| Error::new(format!("node {} is missing", p.node)))?;
                let conf = self.cni_config(p)?;
                let port = crate::cni::add(&node.netns, &sys::netns_path(ns), &self.container_id(&p.id), &conf)?;
                ports.insert(p.id.clone(), port);
            }
            self.forget_neighbours(new)?;
        }
        for (p, ns) in new.iter().zip(&names) {
            if self.opts.attachment == Attachment::Flannel {
                break;
            }
            let mut cmds = vec![
                "link set lo up".to_string(),
                format!("link set eth0 mtu {}", topo::POD_MTU),
                "link set eth0 up".into(),
            ];
            for ip in &p.ips {
                match ip {
                    IpAddr::V4(_) => cmds.push(format!("addr add {ip}/32 dev eth0")),
                    IpAddr::V6(_) => cmds.push(format!("addr add {ip}/128 dev eth0 nodad")),
                }
            }
            if p.has_family(policyc_compiler::cidr::Family::V4) {
                cmds.push(format!(
                    "route add 0.0.0.0/0 via {} dev eth0 onlink",
                    topo::POD_GATEWAY_V4
                ));
            }
            if p.has_family(policyc_compiler::cidr::Family::V6) {
                cmds.push(format!("route add ::/0 via {} dev eth0", topo::POD_GATEWAY_V6));
            }
            sys::batch("ip", Some(ns), &cmds)?;
        }
        for (node, cmds) in &per_node_routes {
            let netns = self.nodes[*node].netns.clone();
            sys::batch("ip", Some(&netns), cmds)?;
            let mut settings = Vec::new();
            for p in new.iter().filter(|p| p.node == *node) {
                settings.push((format!("net.ipv4.conf.{}.proxy_arp", p.interface), "1"));
                settings.push((format!("net.ipv4.neigh.{}.proxy_delay", p.interface), "0"));
            }
            sys::sysctls(&netns, &settings)?;
        }
        for (p, ns) in new.iter().zip(names) {
            let listener = Listener::start(p, sys::netns_path(&ns), self.arrivals.clone())?;
            self.pods.insert(
                p.id.clone(),
                PodState {
                    netns: ns,
                    port: ports.remove(&p.id),
                    _listener: listener,
                },
            );
        }
        Ok(())
    }

    /// A new pod on a bridge may have the address of a pod just deleted: its node and the other
    /// pods on its bridge would keep the old MAC (the bridge plugin sends no gratuitous ARP)
    /// until the neighbour entry times out. A kubelet would not help either; the lab forgets
    /// those entries so that probes right after the change judge the rules, not ARP.
    fn forget_neighbours(&self, new: &[PodPlan]) -> Result<(), Error> {
        let mut per_netns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in new {
            let cmds: Vec<String> = p.ips.iter().map(|ip| format!("neigh flush to {ip}")).collect();
            if let Some(node) = self.nodes.get(&p.node) {
                per_netns.entry(node.netns.clone()).or_default().extend(cmds.clone());
            }
            for other in self.topology.pods_of(&p.node).filter(|o| o.id != p.id) {
                if let Some(state) = self.pods.get(&other.id) {
                    per_netns.entry(state.netns.clone()).or_default().extend(cmds.clone());
                }
            }
        }
        for (ns, cmds) in &per_netns {
            let _ = sys::batch_force("ip", Some(ns), cmds);
        }
        Ok(())
    }

    /// Compiles the current snapshot for every node and loads each ruleset into its node with
    /// `nft -f` (one atomic transaction per node), then empties the nodes' connection tracking so
    /// that every later probe is judged by the new rules.
    ///
    /// The lab loads the printed text rather than going through the agent's netlink writer, so
    /// that `policyc probe` and `verify` need no netlink C libraries: the writer is proven equal
    /// to `nft -f` of the same text in the kernel (`dataplane/tests/netlink.rs`), and the agents'
    /// tier runs it for real.
    pub fn reload(&mut self) -> Result<(), Error> {
        let mut compiler = Compiler::new(&self.snapshot);
        let options: BTreeMap<String, CompileOptions> = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.compile_options(Some(n.clone()))))
            .collect();
        for (name, state) in self.nodes.iter_mut() {
            let ir = compiler.compile(&options[name]);
            let text = policyc_compiler::render::nft::render(&ir, true)
                .map_err(|e| Error::new(format!("rendering the rules of {name}: {e}")))?;
            sys::netns_exec_stdin(&state.netns, &["nft", "-f", "-"], &text)
                .map_err(|e| Error::new(format!("loading the rules of {name}: {e}")))?;
            state.applied = Some(ir);
            conntrack::flush(&sys::netns_path(&state.netns))?;
        }
        Ok(())
    }

    /// Removes policyc's table from every node (no rules at all), and empties conntrack.
    pub fn clear_rules(&mut self) -> Result<(), Error> {
        for (name, state) in self.nodes.iter_mut() {
            let script = format!(
                "table inet {TABLE}\ndelete table inet {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n"
            );
            sys::netns_exec_stdin(&state.netns, &["nft", "-f", "-"], &script)
                .map_err(|e| Error::new(format!("removing the rules of {name}: {e}")))?;
            state.applied = None;
            conntrack::flush(&sys::netns_path(&state.netns))?;
        }
        Ok(())
    }

    /// Replaces every node's rules with connection tracking alone: `table inet policyc` holding
    /// one forward rule, `ct state established,related accept`, which turns conntrack on in the
    /// node's namespace as every stateful firewall does (and kube-proxy or flannel's masquerade
    /// rules on a real node). The bench's baseline for what enforcing costs beyond that.
    pub fn conntrack_only(&mut self) -> Result<(), Error> {
        self.clear_rules()?;
        for (name, state) in self.nodes.iter_mut() {
            let script = format!(
                "table inet {TABLE} {{\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept\n\t}}\n}}\n"
            );
            sys::netns_exec_stdin(&state.netns, &["nft", "-f", "-"], &script)
                .map_err(|e| Error::new(format!("loading conntrack alone on {name}: {e}")))?;
        }
        Ok(())
    }

    /// Loads the iptables rendering of every node's IR instead of the nft table: `ipset
    /// restore`, `iptables-restore --noflush` / `ip6tables-restore --noflush`, then the hooks
    /// script. Removes the nft table first. Needs ipset and iptables.
    pub fn load_iptables(&mut self) -> Result<(), Error> {
        use policyc_compiler::cidr::Family;
        use policyc_compiler::render::iptables as ipt;
        self.clear_rules()?;
        let mut compiler = Compiler::new(&self.snapshot);
        for (name, state) in &self.nodes {
            let ir = compiler.compile(&self.compile_options(Some(name.clone())));
            let ns = &state.netns;
            let feed = |args: &[&str], input: String| sys::netns_exec_stdin(ns, args, &input);
            feed(&["ipset", "restore", "-exist"], ipt::render_ipset(&ir))?;
            feed(
                &["iptables-restore", "--noflush"],
                ipt::render_iptables(&ir, Family::V4),
            )?;
            feed(
                &["ip6tables-restore", "--noflush"],
                ipt::render_iptables(&ir, Family::V6),
            )?;
            for f in [Family::V4, Family::V6] {
                feed(&["sh", "-s"], ipt::render_iptables_hooks(f))?;
            }
            conntrack::flush(&sys::netns_path(ns))?;
        }
        Ok(())
    }

    /// A pod's addresses.
    pub fn pod_ips(&self, pod: &ObjectRef) -> Option<&[IpAddr]> {
        self.topology.pods.get(pod).map(|p| p.ips.as_slice())
    }

    /// Pods of the lab, in the IR's order (`namespace/name`).
    pub fn pods(&self) -> Vec<ObjectRef> {
        self.topology.pods.keys().cloned().collect()
    }

    fn probe_for(&self, src: &PodPlan, dst: &PodPlan, protocol: Protocol, port: u16) -> Option<Probe> {
        let (s, d) = addresses(&src.ips, &dst.ips)?;
        Some(Probe {
            src_pod: src.id.clone(),
            dst_pod: dst.id.clone(),
            src_netns: sys::netns_path(&self.pods[&src.id].netns),
            src: s,
            dst: d,
            protocol,
            port,
        })
    }

    /// Probes every ordered pair of pods on every given port, all in parallel.
    pub fn probe_ports(&self, ports: &[(u16, Protocol)]) -> Vec<ProbeMatrix> {
        let pods: Vec<&PodPlan> = self.topology.pods.values().collect();
        let mut probes = Vec::new();
        let mut slots = Vec::new(); // (port index, src, dst) per probe
        let mut result: Vec<ProbeMatrix> = ports
            .iter()
            .map(|&(port, protocol)| ProbeMatrix {
                protocol,
                port,
                pods: pods.iter().map(|p| p.id.to_string()).collect(),
                outcomes: vec![vec![Outcome::NoCommonFamily; pods.len()]; pods.len()],
            })
            .collect();
        for (k, &(port, protocol)) in ports.iter().enumerate() {
            for (i, s) in pods.iter().enumerate() {
                for (j, d) in pods.iter().enumerate() {
                    if let Some(p) = self.probe_for(s, d, protocol, port) {
                        probes.push(p);
                        slots.push((k, i, j));
                    }
                }
            }
        }
        let mut outcomes = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(MAX_PARALLEL_PROBES) {
            outcomes.extend(probe::run_all(chunk, self.opts.timeout, &self.arrivals));
        }
        for ((k, i, j), o) in slots.into_iter().zip(outcomes) {
            result[k].outcomes[i][j] = o;
        }
        result
    }

    /// Probes every ordered pair of pods on one port.
    pub fn probe_matrix(&self, protocol: Protocol, port: u16) -> ProbeMatrix {
        self.probe_ports(&[(port, protocol)]).remove(0)
    }

    /// Probes one pair.
    pub fn probe_cell(
        &self,
        src: &ObjectRef,
        dst: &ObjectRef,
        protocol: Protocol,
        port: u16,
    ) -> Result<Outcome, Error> {
        self.probe_cell_with(src, dst, protocol, port, self.opts.timeout)
    }

    fn probe_cell_with(
        &self,
        src: &ObjectRef,
        dst: &ObjectRef,
        protocol: Protocol,
        port: u16,
        timeout: Duration,
    ) -> Result<Outcome, Error> {
        let s = self
            .topology
            .pods
            .get(src)
            .ok_or_else(|| Error::new(format!("no pod {src} in the lab")))?;
        let d = self
            .topology
            .pods
            .get(dst)
            .ok_or_else(|| Error::new(format!("no pod {dst} in the lab")))?;
        Ok(match self.probe_for(s, d, protocol, port) {
            Some(p) => probe::run_all(std::slice::from_ref(&p), timeout, &self.arrivals).remove(0),
            None => Outcome::NoCommonFamily,
        })
    }

    /// Counters of every node's ruleset.
    pub fn counters(&self) -> Result<Counters, Error> {
        let nodes: Vec<(String, String)> = self.nodes.iter().map(|(n, s)| (n.clone(), s.netns.clone())).collect();
        Counters::read(&nodes)
    }

    /// Probes one pair alone and reports the rules whose counters the probe moved: which rule
    /// accepted or dropped the packet, on which node.
    pub fn trace_cell(
        &self,
        src: &ObjectRef,
        dst: &ObjectRef,
        protocol: Protocol,
        port: u16,
    ) -> Result<(Outcome, Vec<RuleHit>), Error> {
        let before = self.counters()?;
        // The first packet decides; a blocked one is counted long before a full timeout.
        let outcome = self.probe_cell_with(src, dst, protocol, port, self.opts.timeout.min(TRACE_TIMEOUT))?;
        let after = self.counters()?;
        Ok((outcome, before.diff(&after)))
    }

    /// Removes everything the lab created.
    pub fn teardown(mut self) -> Result<(), Error> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), Error> {
        if !self.alive {
            return Ok(());
        }
        self.alive = false;
        // Stop the listeners first: their threads hold sockets in the pods' namespaces.
        self.pods.clear();
        self.nodes.clear();
        let r = cleanup::remove_prefix(&self.prefix);
        cleanup::unregister(&self.prefix);
        r.map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("lab {}: {e}", self.prefix);
        }
    }
}

/// `ip` and `bridge` commands, run on node `on`, that add or delete the overlay entries of
/// `peers` (flannel's vxlan backend: route, permanent neighbour, fdb entry per remote node).
fn overlay_commands(peers: &[NodePlan], on: &str, add: bool) -> (Vec<String>, Vec<String>) {
    let dev = topo::VXLAN_DEVICE;
    let mut ip_cmds = Vec::new();
    let mut fdb_cmds = Vec::new();
    let (route_op, neigh_op, fdb_op) = if add {
        ("replace", "replace", "append")
    } else {
        ("del", "del", "del")
    };
    for m in peers.iter().filter(|m| m.name != on) {
        for prefix in &m.prefixes {
            let gw: Option<IpAddr> = match prefix.addr() {
                IpAddr::V4(_) => m.gateway_v4.map(IpAddr::V4),
                IpAddr::V6(_) => m.gateway_v6.map(IpAddr::V6),
            };
            if let Some(gw) = gw {
                if route_op == "del" {
                    ip_cmds.push(format!("route del {prefix} dev {dev}"));
                } else {
                    ip_cmds.push(format!("route {route_op} {prefix} via {gw} dev {dev} onlink"));
                }
            }
        }
        for gw in [m.gateway_v4.map(IpAddr::V4), m.gateway_v6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            if neigh_op == "del" {
                ip_cmds.push(format!("neigh del {gw} dev {dev}"));
            } else {
                ip_cmds.push(format!(
                    "neigh {neigh_op} {gw} lladdr {} dev {dev} nud permanent",
                    m.vtep_mac
                ));
            }
        }
        fdb_cmds.push(format!("fdb {fdb_op} {} dev {dev} dst {}", m.vtep_mac, m.ip));
    }
    (ip_cmds, fdb_cmds)
}
