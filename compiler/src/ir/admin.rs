//! Admin policies in the IR: each rule compiled once into an `ar_*` chain, and per endpoint the
//! decision table of each tier ([`TierTable`]), flattened by `crate::tiers`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::compile::Compiler;
use super::naming::short_hash;
use super::selector_cache::{NamespaceScope, SetKey};
use super::*;
use crate::tiers::{admin_rule_chain_name, flatten, FlattenCtx};

/// What a tier table depends on: the ordered policies, and for ingress named ports the
/// endpoint's own addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TableKey {
    tier: Tier,
    direction: Direction,
    policies: Vec<AdminRef>,
    dst_ips: Option<Vec<IpAddr>>,
}

impl Compiler<'_> {
    /// The compiled rules of one admin policy and direction (cached: identical on every node).
    pub(super) fn admin_rules(&mut self, pid: &AdminRef, d: Direction) -> Vec<(String, AdminRuleIr)> {
        if let Some(r) = self.admin_rules.get(&(pid.clone(), d)) {
            return r.clone();
        }
        let policy = &self.snapshot.admin_policies[pid];
        let mut out = Vec::new();
        for (index, rule) in policy.rules(d).iter().enumerate() {
            let mut peers: Vec<PeerMatch> = Vec::new();
            for p in &rule.peers {
                let key = match p {
                    AdminPeer::Everything => {
                        peers.push(PeerMatch::Any);
                        continue;
                    }
                    AdminPeer::Nothing => continue,
                    AdminPeer::Namespaces(ns) => SetKey::Pods {
                        namespaces: NamespaceScope::Selector(ns.clone()),
                        pods: None,
                    },
                    AdminPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => SetKey::Pods {
                        namespaces: NamespaceScope::Selector(namespace_selector.clone()),
                        pods: Some(pod_selector.clone()).filter(|s| !s.is_empty()),
                    },
                    AdminPeer::Nodes(s) => SetKey::Nodes(s.clone()),
                    AdminPeer::Networks(c) => SetKey::Networks(c.clone()),
                };
                peers.push(PeerMatch::Set(self.set_for(key)));
            }
            peers.sort();
            peers.dedup();
            let ports = self.port_matches(&rule.ports);
            out.push((
                admin_rule_chain_name(pid, d, index),
                AdminRuleIr {
                    policy: pid.clone(),
                    tier: policy.tier,
                    priority: policy.priority,
                    direction: d,
                    rule: index,
                    name: rule.name.clone(),
                    action: rule.action,
                    peers,
                    ports,
                },
            ));
        }
        self.admin_rules.insert((pid.clone(), d), out.clone());
        out
    }

    /// The decision table of one tier for an endpoint, added to `ir` with everything it uses;
    /// returns its name.
    pub(super) fn tier_table(
        &mut self,
        ir: &mut Ir,
        tier: Tier,
        d: Direction,
        policies: &[AdminRef],
        pod: &Pod,
    ) -> String {
        let mut rules: Vec<(String, AdminRuleIr)> = Vec::new();
        for pid in policies {
            rules.extend(self.admin_rules(pid, d));
        }
        let named = rules
            .iter()
            .any(|(_, r)| r.ports.iter().any(|p| matches!(p, PortMatch::Named { .. })));
        let key = TableKey {
            tier,
            direction: d,
            policies: policies.to_vec(),
            dst_ips: (named && d == Direction::Ingress).then(|| pod.ips.clone()),
        };
        if !self.tables.contains_key(&key) {
            let refs: Vec<(&str, &AdminRuleIr)> = rules.iter().map(|(n, r)| (n.as_str(), r)).collect();
            let mut ctx = FlattenCtx {
                sets: BTreeMap::new(),
                port_sets: BTreeMap::new(),
                dst_ips: key.dst_ips.as_deref(),
            };
            for (_, r) in &rules {
                for p in &r.peers {
                    if let PeerMatch::Set(s) = p {
                        ctx.sets.insert(s.as_str(), self.addr_set(s));
                    }
                }
                for p in &r.ports {
                    if let PortMatch::Named { set, .. } = p {
                        ctx.port_sets.insert(set.as_str(), self.port_set_members(set));
                    }
                }
            }
            let mut classes = BTreeMap::new();
            let table = TierTable {
                tier,
                direction: d,
                v4: flatten(&refs, &ctx, Family::V4, &mut classes),
                v6: flatten(&refs, &ctx, Family::V6, &mut classes),
            };
            let name = format!(
                "{}_{}_{}",
                tier.prefix(),
                short_hash(&format!("{:?}{:?}", table.v4, table.v6)),
                d.suffix()
            );
            self.port_classes.extend(classes);
            self.tables.insert(key.clone(), (name, table));
        }
        let (name, table) = &self.tables[&key];
        if !ir.tier_tables.contains_key(name) {
            for (_, target) in table.v4.iter().chain(&table.v6) {
                if let Target::Class(c) = target {
                    ir.port_classes
                        .entry(c.clone())
                        .or_insert_with(|| self.port_classes[c].clone());
                }
            }
            ir.tier_tables.insert(name.clone(), table.clone());
        }
        for (chain, r) in rules {
            for p in &r.peers {
                if let PeerMatch::Set(s) = p {
                    if !ir.tier_sets.contains_key(s) {
                        ir.tier_sets.insert(s.clone(), self.addr_set(s).clone());
                    }
                }
            }
            for p in &r.ports {
                if let PortMatch::Named { set, .. } = p {
                    if !ir.port_sets.contains_key(set) {
                        ir.port_sets.insert(set.clone(), self.port_set_ir(set));
                    }
                }
            }
            ir.admin_rules.entry(chain).or_insert(r);
        }
        name.clone()
    }
}
