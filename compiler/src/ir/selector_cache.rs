//! What a set is ([`SetKey`]: a selector pair, an ipBlock, a node selector, admin networks) and the
//! [`SelectorCache`], which keeps set members across compilations and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::naming::short_hash;
use super::AddrSet;
use crate::cidr::{self, IpRange};
use crate::model::*;

/// Which namespaces a selector-pair peer covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum NamespaceScope {
    /// The policy's own namespace (no namespaceSelector).
    Named(String),
    Selector(LabelSelector),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetKey {
    Pods {
        namespaces: NamespaceScope,
        pods: Option<LabelSelector>,
    },
    Block(IpBlock),
    /// Addresses of the nodes a selector matches.
    Nodes(LabelSelector),
    /// CIDRs of an admin rule's `networks` peer.
    Networks(Vec<cidr::Cidr>),
}

impl SetKey {
    pub(super) fn name(&self) -> String {
        match self {
            SetKey::Pods { .. } => format!("sel_{}", short_hash(&format!("{self:?}"))),
            SetKey::Block(b) => format!("cidr_{}", short_hash(&format!("{b:?}"))),
            SetKey::Nodes(_) => format!("node_{}", short_hash(&format!("{self:?}"))),
            SetKey::Networks(_) => format!("net_{}", short_hash(&format!("{self:?}"))),
        }
    }

    pub(super) fn description(&self) -> String {
        match self {
            SetKey::Pods { namespaces, pods } => {
                let pods = match pods {
                    None => "all pods".to_string(),
                    Some(s) if s.is_empty() => "all pods".to_string(),
                    Some(s) => format!("pods {s}"),
                };
                match namespaces {
                    NamespaceScope::Named(n) => format!("{pods} in namespace {n}"),
                    NamespaceScope::Selector(s) if s.is_empty() => format!("{pods} in all namespaces"),
                    NamespaceScope::Selector(s) => format!("{pods} in namespaces {s}"),
                }
            }
            SetKey::Block(b) => b.to_string(),
            SetKey::Nodes(s) if s.is_empty() => "all nodes".to_string(),
            SetKey::Nodes(s) => format!("nodes {s}"),
            SetKey::Networks(c) => {
                let v: Vec<String> = c.iter().map(|c| c.to_string()).collect();
                format!("networks {}", v.join(","))
            }
        }
    }
}

impl SetKey {
    /// Whether `pod`, in a namespace labelled `namespace_labels`, is a member when it is an
    /// endpoint: its namespace is in scope and its labels match.
    pub(super) fn selects(&self, pod: &Pod, namespace_labels: &Labels) -> bool {
        match self {
            SetKey::Block(_) | SetKey::Networks(_) | SetKey::Nodes(_) => false,
            SetKey::Pods { namespaces, pods } => {
                let in_scope = match namespaces {
                    NamespaceScope::Named(n) => *n == pod.namespace,
                    NamespaceScope::Selector(s) => s.matches(namespace_labels),
                };
                in_scope && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
        }
    }
}

/// Sorted members and, per member, how many endpoints contribute it, so that one endpoint's
/// change updates the members in place.
#[derive(Clone, Debug, Default)]
pub(super) struct Counted<T: Ord> {
    pub(super) members: Vec<T>,
    counts: BTreeMap<T, u32>,
}

impl<T: Ord + Copy> Counted<T> {
    pub(super) fn new(items: impl IntoIterator<Item = T>) -> Self {
        let mut counts: BTreeMap<T, u32> = BTreeMap::new();
        for i in items {
            *counts.entry(i).or_default() += 1;
        }
        Counted {
            members: counts.keys().copied().collect(),
            counts,
        }
    }

    pub(super) fn add(&mut self, item: T) {
        let n = self.counts.entry(item).or_default();
        *n += 1;
        if *n == 1 {
            let i = self.members.partition_point(|m| *m < item);
            self.members.insert(i, item);
        }
    }

    /// `false` when `item` was not a member: the members were not what they should be.
    pub(super) fn remove(&mut self, item: T) -> bool {
        let Some(n) = self.counts.get_mut(&item) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&item);
            if let Ok(i) = self.members.binary_search(&item) {
                self.members.remove(i);
            }
        }
        true
    }
}

/// Set members that outlive one snapshot (the selector cache across snapshots). A long-running
/// compiler, the agent, keeps one across syncs and reports every pod, namespace and node
/// change: pod changes update the cached members in place (in the sets of NetworkPolicy and
/// admin policy peers and in named-port sets alike), namespace and node changes drop the sets
/// they can touch, so a sync computes only sets it has not seen. CIDR sets never change.
#[derive(Clone, Debug, Default)]
pub struct SelectorCache {
    pub(super) sets: BTreeMap<SetKey, CachedSet>,
    pub(super) port_sets: BTreeMap<(String, Protocol), Counted<(IpAddr, u16)>>,
    /// The local endpoints of the last compilation's scope, so that the next one need not walk
    /// every pod to find them.
    pub(super) local: Option<LocalEndpoints>,
}

#[derive(Clone, Debug)]
pub(super) struct LocalEndpoints {
    /// `CompileOptions::node`.
    pub(super) node: Option<String>,
    pub(super) pods: BTreeSet<ObjectRef>,
}

#[derive(Clone, Debug)]
pub(super) struct CachedSet {
    pub(super) set: AddrSet,
    /// Pod sets: the addresses of `set.members`, counted.
    pub(super) pods: Option<Counted<IpAddr>>,
}

impl SelectorCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pod is about to change or be removed: call with its stored version and the labels of
    /// its namespace.
    pub fn pod_removed(&mut self, pod: &Pod, namespace_labels: &Labels) {
        self.update(pod, namespace_labels, false);
    }

    /// A pod was added or changed: call with its new version and the labels of its namespace.
    pub fn pod_added(&mut self, pod: &Pod, namespace_labels: &Labels) {
        self.update(pod, namespace_labels, true);
    }

    fn update(&mut self, pod: &Pod, namespace_labels: &Labels, add: bool) {
        if !pod.is_endpoint() {
            return;
        }
        if let Some(local) = self.local.as_mut().filter(|l| l.node.is_none() || l.node == pod.node) {
            if add {
                local.pods.insert(pod.id());
            } else {
                local.pods.remove(&pod.id());
            }
        }
        self.sets.retain(|key, cached| {
            let Some(counted) = cached.pods.as_mut().filter(|_| key.selects(pod, namespace_labels)) else {
                return true;
            };
            for ip in &pod.ips {
                if add {
                    counted.add(*ip);
                } else if !counted.remove(*ip) {
                    // Not what the set was built from: compute it again.
                    return false;
                }
            }
            cached.set.members = counted.members.iter().map(|ip| IpRange::single(*ip)).collect();
            true
        });
        self.port_sets.retain(|(name, protocol), counted| {
            let Some(port) = pod.named_port(name, *protocol) else {
                return true;
            };
            pod.ips.iter().all(|ip| {
                if add {
                    counted.add((*ip, port));
                    true
                } else {
                    counted.remove((*ip, port))
                }
            })
        });
    }

    /// A namespace is added, relabelled or removed: every pod set may change.
    pub fn namespace_changed(&mut self) {
        self.sets.retain(|k, _| !matches!(k, SetKey::Pods { .. }));
    }

    /// A node is added, relabelled, readdressed or removed: every node set (an admin policy's
    /// `nodes` peer) may change.
    pub fn node_changed(&mut self) {
        self.sets.retain(|k, _| !matches!(k, SetKey::Nodes(_)));
    }

    pub fn clear(&mut self) {
        self.sets.clear();
        self.port_sets.clear();
        self.local = None;
    }

    /// Cached sets (address sets and named-port sets).
    pub fn len(&self) -> usize {
        self.sets.len() + self.port_sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compiler's selector cache: its own, or one kept across snapshots.
#[derive(Debug)]
pub(super) enum Cache<'a> {
    Own(SelectorCache),
    Kept(&'a mut SelectorCache),
}

impl std::ops::Deref for Cache<'_> {
    type Target = SelectorCache;
    fn deref(&self) -> &SelectorCache {
        match self {
            Cache::Own(c) => c,
            Cache::Kept(c) => c,
        }
    }
}

impl std::ops::DerefMut for Cache<'_> {
    fn deref_mut(&mut self) -> &mut SelectorCache {
        match self {
            Cache::Own(c) => c,
            Cache::Kept(c) => c,
        }
    }
}
