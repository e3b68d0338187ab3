//! The words both backends write into their rules' comments, in one place: what `nft list` and
//! `iptables -L` say about a rule must name the same policy and rule, and `verify`, `explain` and
//! the metrics find rules by these texts.

use crate::ir::{Endpoint, IrRule, PolicyChain, PortSet};
use crate::model::Direction;
use crate::tiers::AdminRuleIr;

/// A NetworkPolicy rule: `ns/name ingress[0]`.
pub fn policy_rule(chain: &PolicyChain, rule: &IrRule) -> String {
    format!("{} {}[{}]", chain.policy, chain.direction, rule.rule)
}

/// An endpoint's final drop: `ns/pod ingress denied: selected by ns/p1, ns/p2`.
pub fn endpoint_denied(ep: &Endpoint, d: Direction) -> String {
    let policies: Vec<String> = ep.isolation(d).policies.iter().map(|p| p.to_string()).collect();
    format!("{} {d} denied: selected by {}", ep.pod, policies.join(", "))
}

/// The end of an endpoint chain that no NetworkPolicy isolates: `ns/pod egress: no tier decided, allowed`.
pub fn not_isolated(ep: &Endpoint, d: Direction) -> String {
    format!("{} {d}: no tier decided, allowed", ep.pod)
}

/// An admin rule: `Admin tier: cnp/x ingress[0] (name): Deny`.
pub fn admin_rule(rule: &AdminRuleIr) -> String {
    format!("{} tier: {}: {}", rule.tier, rule.comment_label(), rule.action)
}

/// The jump from an endpoint into a tier: `Admin tier: cnp/a, anp/b`.
pub fn tier_jump<P: std::fmt::Display>(tier: &str, policies: &[P]) -> String {
    let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
    format!("{tier} tier: {}", names.join(", "))
}

/// The fail-closed drop of interfaces the ruleset does not know yet.
pub fn fail_closed(prefix: &str) -> String {
    format!("{prefix}* interface not programmed yet: fail closed")
}

/// A named port's set: `named port http/TCP`.
pub fn named_port(set: &PortSet) -> String {
    format!("named port {}/{}", set.port_name, set.protocol)
}
