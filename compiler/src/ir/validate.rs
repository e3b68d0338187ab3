//! The references inside an IR, checked: every chain, set, tier table, port class and admin rule
//! a part names exists. The compiler only builds IRs that pass; an IR from elsewhere (IR-JSON,
//! hand-made in a test) is checked before anything is rendered from it, so no backend ever
//! indexes a name that is not there.

use crate::model::Direction;

use super::{Ir, PeerMatch, PortMatch};

/// A reference inside an IR to something the IR does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IrError {
    #[error("endpoint {endpoint} {direction}: jumps to unknown policy chain {chain}")]
    UnknownChain {
        endpoint: String,
        direction: Direction,
        chain: String,
    },
    #[error("endpoint {endpoint} {direction}: jumps to unknown tier table {table}")]
    UnknownTierTable {
        endpoint: String,
        direction: Direction,
        table: String,
    },
    #[error("policy chain {chain}: rule {rule} matches unknown set {set}")]
    UnknownSet { chain: String, rule: usize, set: String },
    #[error("policy chain {chain}: rule {rule} matches unknown named-port set {set}")]
    UnknownPortSet { chain: String, rule: usize, set: String },
    #[error("tier table {table}: goes to unknown {what} {target}")]
    UnknownTarget {
        table: String,
        what: &'static str,
        target: String,
    },
    #[error("port class {class}: goes to unknown admin rule {rule}")]
    UnknownRule { class: String, rule: String },
}

impl Ir {
    /// Checks every reference between the IR's parts (see the module documentation).
    pub fn validate(&self) -> Result<(), IrError> {
        for ep in &self.endpoints {
            for d in [Direction::Ingress, Direction::Egress] {
                let iso = ep.isolation(d);
                if let Some(chain) = iso.chains.iter().find(|c| !self.chains.contains_key(*c)) {
                    return Err(IrError::UnknownChain {
                        endpoint: ep.pod.to_string(),
                        direction: d,
                        chain: chain.clone(),
                    });
                }
                for table in iso.admin_table.iter().chain(&iso.baseline_table) {
                    if !self.tier_tables.contains_key(table) {
                        return Err(IrError::UnknownTierTable {
                            endpoint: ep.pod.to_string(),
                            direction: d,
                            table: table.clone(),
                        });
                    }
                }
            }
        }
        for (name, chain) in &self.chains {
            for r in &chain.rules {
                if let PeerMatch::Set(s) = &r.peer {
                    if !self.sets.contains_key(s) {
                        return Err(IrError::UnknownSet {
                            chain: name.clone(),
                            rule: r.rule,
                            set: s.clone(),
                        });
                    }
                }
                if let PortMatch::Named { set, .. } = &r.ports {
                    if !self.port_sets.contains_key(set) {
                        return Err(IrError::UnknownPortSet {
                            chain: name.clone(),
                            rule: r.rule,
                            set: set.clone(),
                        });
                    }
                }
            }
        }
        for (name, table) in &self.tier_tables {
            for (_, target) in table.v4.iter().chain(&table.v6) {
                let (what, known) = match target {
                    crate::tiers::Target::Rule(r) => ("admin rule", self.admin_rules.contains_key(r)),
                    crate::tiers::Target::Class(c) => ("port class", self.port_classes.contains_key(c)),
                };
                if !known {
                    return Err(IrError::UnknownTarget {
                        table: name.clone(),
                        what,
                        target: target.chain().to_string(),
                    });
                }
            }
        }
        for (name, class) in &self.port_classes {
            let rules = class.tcp.iter().chain(&class.udp).chain(&class.sctp).map(|o| &o.rule);
            if let Some(rule) = rules.chain(&class.other).find(|r| !self.admin_rules.contains_key(*r)) {
                return Err(IrError::UnknownRule {
                    class: name.clone(),
                    rule: rule.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{add_admin_policies, cluster, Shape};
    use crate::{compile, CompileOptions};

    #[test]
    fn compiled_irs_are_valid_and_broken_references_are_named() {
        let shape = Shape {
            pods: 80,
            namespaces: 4,
            policies: 20,
            nodes: 2,
            dual_stack_every: 3,
        };
        let mut snap = cluster(shape, 2);
        add_admin_policies(&mut snap, 6, 2);
        let ir = compile(&snap, &CompileOptions::default());
        assert_eq!(ir.validate(), Ok(()));

        let mut broken = ir.clone();
        let (name, _) = broken.sets.pop_first().expect("a set");
        let err = broken.validate().expect_err("a chain uses the removed set");
        assert!(matches!(&err, IrError::UnknownSet { set, .. } if *set == name), "{err}");

        let mut broken = ir.clone();
        let chain = broken.chains.keys().next().expect("a chain").clone();
        broken.chains.remove(&chain);
        let err = broken.validate().expect_err("an endpoint jumps to the removed chain");
        assert!(err.to_string().contains(&chain), "{err}");

        let mut broken = ir;
        let rule = broken.admin_rules.keys().next().expect("an admin rule").clone();
        broken.admin_rules.remove(&rule);
        assert!(broken.validate().is_err());
    }
}
