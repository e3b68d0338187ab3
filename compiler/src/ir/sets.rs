//! Building sets: the members of address sets (selected pods, ipBlocks, nodes, networks) and of
//! named-port sets, computed once per compiler or taken from the [`SelectorCache`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::compile::Compiler;
use super::naming::short_hash;
use super::selector_cache::{CachedSet, Counted, NamespaceScope, SetKey};
use super::*;
use crate::cidr::{self, Family, IpRange};

/// Namespace labels: what computing a namespace selector's members needs, built when the first
/// such set is computed.
#[derive(Debug)]
pub(super) struct PodIndex<'a> {
    /// Every namespace, with or without a Namespace object, and its labels.
    pub(super) namespace_labels: BTreeMap<&'a str, Labels>,
}

impl<'a> PodIndex<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        let mut namespace_labels = BTreeMap::new();
        for ns in pod_namespaces(snapshot).chain(snapshot.namespaces.keys().map(String::as_str)) {
            namespace_labels
                .entry(ns)
                .or_insert_with(|| snapshot.namespace_labels(ns));
        }
        Self { namespace_labels }
    }
}

/// The namespaces that have pods, each found with one lookup in the pods, sorted by
/// namespace, rather than a walk over every pod.
fn pod_namespaces(snapshot: &Snapshot) -> impl Iterator<Item = &str> {
    let mut next = snapshot.pods.keys().next();
    std::iter::from_fn(move || {
        let ns = next?.namespace.as_str();
        // The first key after every key of `ns`: no namespace lies between `ns` and `ns\0`.
        let after = ObjectRef::new(format!("{ns}\0"), "");
        next = snapshot.pods.range(after..).next().map(|(k, _)| k);
        Some(ns)
    })
}

/// The endpoints of one namespace, sorted by name.
fn endpoints_of<'a>(snapshot: &'a Snapshot, ns: &str) -> impl Iterator<Item = &'a Pod> + 'a {
    let ns = ns.to_string();
    snapshot
        .pods
        .range(ObjectRef::new(ns.clone(), "")..)
        .take_while(move |(k, _)| k.namespace == ns)
        .map(|(_, p)| p)
        .filter(|p| p.is_endpoint())
}

/// Every endpoint's named ports: (name, protocol) → (address, port), in one pass instead of one
/// pass over all endpoints per named port.
pub(super) type NamedPorts<'a> = BTreeMap<(&'a str, Protocol), Vec<(IpAddr, u16)>>;

pub(super) fn named_ports(snapshot: &Snapshot) -> NamedPorts<'_> {
    let mut named_ports: NamedPorts<'_> = BTreeMap::new();
    for pod in snapshot.endpoints() {
        for (i, p) in pod.ports.iter().enumerate() {
            let Some(name) = p.name.as_deref() else { continue };
            // The first container port of a name and protocol is the one a name resolves to
            // (`Pod::named_port`).
            let earlier = pod.ports[..i]
                .iter()
                .any(|q| q.protocol == p.protocol && q.name.as_deref() == Some(name));
            if !earlier {
                let v = named_ports.entry((name, p.protocol)).or_default();
                v.extend(pod.ips.iter().map(|ip| (*ip, p.port)));
            }
        }
    }
    named_ports
}

impl<'a> Compiler<'a> {
    /// The members of a set named by [`Compiler::set_for`].
    pub(super) fn addr_set(&self, name: &str) -> &AddrSet {
        &self.cache.sets[&self.set_keys[name]].set
    }

    /// The (address, port) pairs of a set named by [`Compiler::port_set`].
    pub(super) fn port_set_members(&self, name: &str) -> &[(IpAddr, u16)] {
        &self.cache.port_sets[&self.port_set_keys[name]].members
    }

    /// A set named by [`Compiler::port_set`], as the IR holds it.
    pub(super) fn port_set_ir(&self, name: &str) -> PortSet {
        let (port_name, protocol) = &self.port_set_keys[name];
        PortSet {
            port_name: port_name.clone(),
            protocol: *protocol,
            members: self.port_set_members(name).to_vec(),
        }
    }

    pub(super) fn peer_set(&mut self, policy_ns: &str, peer: &Peer) -> String {
        let key: SetKey = match peer {
            Peer::IpBlock(b) => SetKey::Block(b.clone()),
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => SetKey::Pods {
                namespaces: match namespace_selector {
                    None => NamespaceScope::Named(policy_ns.to_string()),
                    Some(s) => NamespaceScope::Selector(s.clone()),
                },
                // An empty pod selector and an absent one both mean every pod.
                pods: pod_selector.clone().filter(|s| !s.is_empty()),
            },
        };
        self.set_for(key)
    }

    /// The name of the set for a key, building the set on first use.
    pub(super) fn set_for(&mut self, key: SetKey) -> String {
        if let Some(name) = self.set_names.get(&key) {
            return name.clone();
        }
        if !self.cache.sets.contains_key(&key) {
            let cached = self.build_set(&key);
            self.cache.sets.insert(key.clone(), cached);
        }
        let name = key.name();
        self.set_keys.insert(name.clone(), key.clone());
        self.set_names.insert(key, name.clone());
        name
    }

    pub(super) fn index(&mut self) -> &PodIndex<'a> {
        let snapshot = self.snapshot;
        self.index.get_or_insert_with(|| PodIndex::new(snapshot))
    }

    fn build_set(&mut self, key: &SetKey) -> CachedSet {
        match key {
            SetKey::Block(b) => CachedSet {
                set: AddrSet {
                    kind: SetKind::IpBlock,
                    description: key.description(),
                    families: vec![b.cidr.family()],
                    members: cidr::subtract(&b.cidr, &b.except),
                },
                pods: None,
            },
            SetKey::Networks(cidrs) => {
                let mut families: Vec<Family> = cidrs.iter().map(|c| c.family()).collect();
                families.sort();
                families.dedup();
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::IpBlock,
                        description: key.description(),
                        families,
                        members: cidr::normalize(cidrs.iter().map(|c| c.range()).collect()),
                    },
                    pods: None,
                }
            }
            SetKey::Nodes(sel) => {
                let mut members: Vec<IpRange> = self
                    .snapshot
                    .nodes
                    .values()
                    .filter(|n| sel.matches(&n.labels))
                    .flat_map(|n| n.addresses.iter().map(|ip| IpRange::single(*ip)))
                    .collect();
                members.sort();
                members.dedup();
                // Not a pod set: pod changes leave it alone, node changes drop it
                // (`SelectorCache::node_changed`).
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::Selector,
                        description: key.description(),
                        families: vec![Family::V4, Family::V6],
                        members,
                    },
                    pods: None,
                }
            }
            SetKey::Pods { namespaces, pods } => {
                let snapshot = self.snapshot;
                let index = self.index();
                let namespaces: Vec<&str> = match namespaces {
                    NamespaceScope::Named(n) => vec![n.as_str()],
                    NamespaceScope::Selector(s) => index
                        .namespace_labels
                        .iter()
                        .filter(|(_, l)| s.matches(l))
                        .map(|(n, _)| *n)
                        .collect(),
                };
                let mut addresses = Vec::new();
                for ns in namespaces {
                    for pod in endpoints_of(snapshot, ns) {
                        if pods.as_ref().is_none_or(|s| s.matches(&pod.labels)) {
                            addresses.extend(pod.ips.iter().copied());
                        }
                    }
                }
                let counted = Counted::new(addresses);
                CachedSet {
                    set: AddrSet {
                        kind: SetKind::Selector,
                        description: key.description(),
                        families: vec![Family::V4, Family::V6],
                        // Single addresses, never merged into prefixes: the set is not an
                        // interval set.
                        members: counted.members.iter().map(|ip| IpRange::single(*ip)).collect(),
                    },
                    pods: Some(counted),
                }
            }
        }
    }

    pub(super) fn port_set(&mut self, name: &str, protocol: Protocol) -> String {
        let key = (name.to_string(), protocol);
        if let Some(n) = self.port_set_names.get(&key) {
            return n.clone();
        }
        if !self.cache.port_sets.contains_key(&key) {
            let snapshot = self.snapshot;
            let named_ports = self.named_ports.get_or_insert_with(|| named_ports(snapshot));
            let members = named_ports.get(&(name, protocol)).cloned().unwrap_or_default();
            self.cache.port_sets.insert(key.clone(), Counted::new(members));
        }
        let set_name = format!("port_{}", short_hash(&format!("{name}/{protocol}")));
        self.port_set_keys.insert(set_name.clone(), key.clone());
        self.port_set_names.insert(key, set_name.clone());
        set_name
    }
}
