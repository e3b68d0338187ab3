//! The [`Compiler`]: which policies select which local endpoints, the endpoints and the
//! NetworkPolicy chains, and [`compile()`] and [`compile_all_nodes`].

use std::collections::{BTreeMap, BTreeSet};

use super::admin::TableKey;
use super::naming::{interface_name, policy_chain_name};
use super::selector_cache::{Cache, LocalEndpoints, SelectorCache, SetKey};
use super::sets::{NamedPorts, PodIndex};
use super::*;

/// What to compile for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Compile for the endpoints of this node only; `None` = every endpoint in the snapshot.
    pub node: Option<String>,
    /// Prefix of host-side pod interface names (Calico, and so Canal, uses `cali`).
    pub interface_prefix: String,
    /// Drop traffic of pod interfaces (by prefix) that the ruleset does not know yet: a new pod is
    /// denied until a sync includes it, rather than allowed.
    pub fail_closed: bool,
    /// Flow events: which verdict points log (NFLOG), and how many; `None`: none.
    pub flow_log: Option<crate::flows::FlowLog>,
    /// How pods are attached to the node: routed veths (Canal) or a bridge (plain Flannel).
    pub attachment: AttachmentKind,
    /// Bridge attachment: each local pod's bridge port (host-side veth), as discovered on the
    /// node. A pod without one gets no per-port source guard yet (see [`Attachment`]).
    pub ports: BTreeMap<ObjectRef, String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            node: None,
            interface_prefix: "cali".into(),
            fail_closed: false,
            flow_log: None,
            attachment: AttachmentKind::Canal,
            ports: BTreeMap::new(),
        }
    }
}

// === impl Compiler ===

/// Compiles snapshots. Keeps a cache of set contents so that compiling many nodes of one
/// snapshot computes every selector's members once (the selector cache); with
/// [`Compiler::with_cache`], across snapshots too.
#[derive(Debug)]
pub struct Compiler<'a> {
    pub(super) snapshot: &'a Snapshot,
    /// Built on first use: a compilation whose sets are all cached never walks every pod.
    pub(super) index: Option<PodIndex<'a>>,
    pub(super) named_ports: Option<NamedPorts<'a>>,
    pub(super) cache: Cache<'a>,
    pub(super) set_names: BTreeMap<SetKey, String>,
    /// Name → key of every set named so far.
    pub(super) set_keys: BTreeMap<String, SetKey>,
    pub(super) port_set_names: BTreeMap<(String, Protocol), String>,
    pub(super) port_set_keys: BTreeMap<String, (String, Protocol)>,
    pub(super) chains: BTreeMap<(ObjectRef, Direction), PolicyChain>,
    /// Compiled admin rules of each (policy, direction): chain names and rules, in order.
    pub(super) admin_rules: BTreeMap<(AdminRef, Direction), Vec<(String, AdminRuleIr)>>,
    /// Tier tables by what determines them.
    pub(super) tables: BTreeMap<TableKey, (String, TierTable)>,
    pub(super) port_classes: BTreeMap<String, PortClass>,
}

impl<'a> Compiler<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        Self::with(snapshot, Cache::Own(SelectorCache::new()))
    }

    /// A compiler that takes set members from `cache` and adds those it computes. The cache
    /// must have been told of every pod, namespace and node change since it was filled
    /// ([`SelectorCache::pod_removed`], [`SelectorCache::pod_added`],
    /// [`SelectorCache::namespace_changed`], [`SelectorCache::node_changed`]).
    pub fn with_cache(snapshot: &'a Snapshot, cache: &'a mut SelectorCache) -> Self {
        Self::with(snapshot, Cache::Kept(cache))
    }

    fn with(snapshot: &'a Snapshot, cache: Cache<'a>) -> Self {
        Self {
            snapshot,
            index: None,
            named_ports: None,
            cache,
            set_names: BTreeMap::new(),
            set_keys: BTreeMap::new(),
            port_set_names: BTreeMap::new(),
            port_set_keys: BTreeMap::new(),
            chains: BTreeMap::new(),
            admin_rules: BTreeMap::new(),
            tables: BTreeMap::new(),
            port_classes: BTreeMap::new(),
        }
    }

    /// Nodes that host at least one endpoint, or are listed as Node objects.
    pub fn nodes(&self) -> BTreeSet<String> {
        let mut nodes: BTreeSet<String> = self.snapshot.nodes.keys().cloned().collect();
        nodes.extend(self.snapshot.endpoints().filter_map(|p| p.node.clone()));
        nodes
    }

    /// This scope's endpoints, sorted: from the cache when it knows them, else by a walk over
    /// every pod (which the cache then remembers).
    fn local_endpoints(&mut self, node: Option<&String>) -> Vec<&'a Pod> {
        let snapshot = self.snapshot;
        let in_scope = |p: &Pod| p.is_endpoint() && (node.is_none() || p.node.as_ref() == node);
        if let Some(known) = self.cache.local.as_ref().filter(|l| l.node.as_ref() == node) {
            let pods: Vec<&Pod> = known.pods.iter().filter_map(|id| snapshot.pods.get(id)).collect();
            // Not told of some change after all: walk.
            if pods.len() == known.pods.len() && pods.iter().all(|p| in_scope(p)) {
                return pods;
            }
        }
        let pods: Vec<&Pod> = snapshot.pods.values().filter(|p| in_scope(p)).collect();
        self.cache.local = Some(LocalEndpoints {
            node: node.cloned(),
            pods: pods.iter().map(|p| p.id()).collect(),
        });
        pods
    }

    pub fn compile(&mut self, opts: &CompileOptions) -> Ir {
        let snapshot = self.snapshot;
        let local = self.local_endpoints(opts.node.as_ref());

        // Which policies select which local endpoints. A policy selects pods of its own
        // namespace only, so only those are matched against its selector.
        let mut local_by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in local.iter().enumerate() {
            local_by_namespace.entry(p.namespace.as_str()).or_default().push(i);
        }
        let mut selected: Vec<(Isolation, Isolation)> = vec![Default::default(); local.len()];
        let mut policies = Vec::with_capacity(snapshot.policies.len());
        let mut used_chains: BTreeSet<(ObjectRef, Direction)> = BTreeSet::new();
        for policy in snapshot.policies.values() {
            let pid = policy.id();
            let mut count = 0;
            let candidates = local_by_namespace.get(policy.namespace.as_str()).into_iter().flatten();
            // Computed once per policy and direction, not per selected pod.
            let mut chain_names: [Option<String>; 2] = [None, None];
            for &i in candidates.filter(|&&i| policy.selects(local[i])) {
                count += 1;
                let iso = &mut selected[i];
                for d in &policy.policy_types {
                    let (iso, name) = match d {
                        Direction::Ingress => (&mut iso.0, &mut chain_names[0]),
                        Direction::Egress => (&mut iso.1, &mut chain_names[1]),
                    };
                    iso.policies.push(pid.clone());
                    if !policy.rules(*d).is_empty() {
                        let name = name.get_or_insert_with(|| {
                            used_chains.insert((pid.clone(), *d));
                            policy_chain_name(&pid, *d)
                        });
                        iso.chains.push(name.clone());
                    }
                }
            }
            policies.push(PolicyInfo {
                policy: pid,
                generation: policy.generation,
                policy_types: policy.policy_types.clone(),
                selected_endpoints: count,
            });
        }

        // Admin policies, in evaluation order.
        let mut admin: Vec<&AdminPolicy> = snapshot.admin_policies.values().collect();
        admin.sort_by(|a, b| (a.tier, a.order_key()).cmp(&(b.tier, b.order_key())));
        let mut admin_policies = Vec::with_capacity(admin.len());
        // Namespace labels are needed only when admin policies pick their subjects.
        let index = if admin.is_empty() { None } else { Some(self.index()) };
        for policy in &admin {
            let ns_labels = &index.as_ref().expect("built for admin policies").namespace_labels;
            let count = local
                .iter()
                .filter(|p| policy.subject.matches(&ns_labels[p.namespace.as_str()], &p.labels))
                .count();
            admin_policies.push(AdminPolicyInfo {
                policy: policy.id(),
                generation: policy.generation,
                tier: policy.tier,
                priority: policy.priority,
                selected_endpoints: count,
            });
        }

        let mut ir = Ir {
            node: opts.node.clone(),
            fail_closed: opts.fail_closed,
            flow_log: opts.flow_log,
            attachment: match &opts.attachment {
                AttachmentKind::Canal => Attachment::Canal {
                    prefix: opts.interface_prefix.clone(),
                },
                AttachmentKind::Bridge { bridge } => Attachment::Bridge { bridge: bridge.clone() },
            },
            endpoints: Vec::with_capacity(local.len()),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            port_sets: BTreeMap::new(),
            policies,
            admin_policies,
            admin_rules: BTreeMap::new(),
            tier_tables: BTreeMap::new(),
            port_classes: BTreeMap::new(),
            tier_sets: BTreeMap::new(),
        };
        for (pod, (mut ingress, mut egress)) in local.iter().zip(selected) {
            let id = pod.id();
            if !admin.is_empty() {
                let ns_labels = &self.index().namespace_labels[pod.namespace.as_str()];
                let subject_of: Vec<&AdminPolicy> = admin
                    .iter()
                    .copied()
                    .filter(|p| p.subject.matches(ns_labels, &pod.labels))
                    .collect();
                for (d, iso) in [(Direction::Ingress, &mut ingress), (Direction::Egress, &mut egress)] {
                    for tier in [Tier::Admin, Tier::Baseline] {
                        let policies: Vec<AdminRef> = subject_of
                            .iter()
                            .filter(|p| p.tier == tier && !p.rules(d).is_empty())
                            .map(|p| p.id())
                            .collect();
                        if policies.is_empty() {
                            continue;
                        }
                        let table = self.tier_table(&mut ir, tier, d, &policies, pod);
                        match tier {
                            Tier::Admin => {
                                iso.admin = policies;
                                iso.admin_table = Some(table);
                            }
                            Tier::Baseline => {
                                iso.baseline = policies;
                                iso.baseline_table = Some(table);
                            }
                        }
                    }
                }
            }
            ir.endpoints.push(Endpoint {
                interface: match &opts.attachment {
                    AttachmentKind::Canal => interface_name(&opts.interface_prefix, &id),
                    AttachmentKind::Bridge { .. } => opts.ports.get(&id).cloned().unwrap_or_default(),
                },
                pod: id,
                node: pod.node.clone(),
                ips: pod.ips.clone(),
                ingress,
                egress,
            });
        }

        for (pid, d) in used_chains {
            let chain = self.chain(&pid, d);
            for r in &chain.rules {
                if let PeerMatch::Set(name) = &r.peer {
                    if !ir.sets.contains_key(name) {
                        ir.sets.insert(name.clone(), self.addr_set(name).clone());
                    }
                }
                if let PortMatch::Named { set, .. } = &r.ports {
                    if !ir.port_sets.contains_key(set) {
                        ir.port_sets.insert(set.clone(), self.port_set_ir(set));
                    }
                }
            }
            ir.chains.insert(policy_chain_name(&pid, d), chain);
        }
        ir
    }

    /// Port matches of a rule: named ports one by one, numbers and ranges merged; no ports =
    /// `Any`.
    pub(super) fn port_matches(&mut self, specs: &[PortSpec]) -> Vec<PortMatch> {
        let mut ports: Vec<PortMatch> = Vec::new();
        let mut numeric: Vec<PortRange> = Vec::new();
        for spec in specs {
            match &spec.port {
                PortRef::All => numeric.push(PortRange {
                    protocol: spec.protocol,
                    first: 0,
                    last: u16::MAX,
                }),
                PortRef::Range { first, last } => numeric.push(PortRange {
                    protocol: spec.protocol,
                    first: *first,
                    last: *last,
                }),
                PortRef::Named(name) => ports.push(PortMatch::Named {
                    set: self.port_set(name, spec.protocol),
                    protocol: spec.protocol,
                }),
            }
        }
        if !numeric.is_empty() {
            ports.push(PortMatch::Ports(merge_ports(numeric)));
        }
        if specs.is_empty() {
            ports.push(PortMatch::Any);
        }
        ports.sort();
        ports.dedup();
        ports
    }

    /// The chain of one policy and direction (cached: identical on every node).
    fn chain(&mut self, pid: &ObjectRef, d: Direction) -> PolicyChain {
        if let Some(c) = self.chains.get(&(pid.clone(), d)) {
            return c.clone();
        }
        let policy = &self.snapshot.policies[pid];
        let mut rules = Vec::new();
        for (index, rule) in policy.rules(d).iter().enumerate() {
            let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
                vec![PeerMatch::Any]
            } else {
                let mut v: Vec<PeerMatch> = rule
                    .peers
                    .iter()
                    .map(|p| PeerMatch::Set(self.peer_set(&policy.namespace, p)))
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let ports = self.port_matches(&rule.ports);
            for peer in &peers {
                for pm in &ports {
                    rules.push(IrRule {
                        rule: index,
                        peer: peer.clone(),
                        ports: pm.clone(),
                    });
                }
            }
        }
        let chain = PolicyChain {
            policy: pid.clone(),
            direction: d,
            rules,
        };
        self.chains.insert((pid.clone(), d), chain.clone());
        chain
    }
}

/// Sorts port ranges and merges overlapping or adjacent ranges of the same protocol.
fn merge_ports(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        if let Some(last) = out.last_mut() {
            if last.protocol == r.protocol && r.first as u32 <= last.last as u32 + 1 {
                last.last = last.last.max(r.last);
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Compiles one snapshot for one scope.
pub fn compile(snapshot: &Snapshot, opts: &CompileOptions) -> Ir {
    Compiler::new(snapshot).compile(opts)
}

/// Compiles one IR per node, sharing selector work across nodes.
pub fn compile_all_nodes(snapshot: &Snapshot, opts: &CompileOptions) -> BTreeMap<String, Ir> {
    let mut c = Compiler::new(snapshot);
    c.nodes()
        .into_iter()
        .map(|n| {
            let o = CompileOptions {
                node: Some(n.clone()),
                ..opts.clone()
            };
            (n, c.compile(&o))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_merge() {
        let r = |p, a, b| PortRange {
            protocol: p,
            first: a,
            last: b,
        };
        let merged = merge_ports(vec![
            r(Protocol::Tcp, 90, 100),
            r(Protocol::Tcp, 80, 89),
            r(Protocol::Udp, 80, 80),
            r(Protocol::Tcp, 200, 200),
        ]);
        assert_eq!(
            merged,
            vec![
                r(Protocol::Tcp, 80, 100),
                r(Protocol::Tcp, 200, 200),
                r(Protocol::Udp, 80, 80)
            ]
        );
    }
}
