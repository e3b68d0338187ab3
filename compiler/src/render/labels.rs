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

/// The bridge attachment's fail-closed drop: `cni0 egress: pod address not programmed yet: fail closed`.
pub fn fail_closed_bridge(bridge: &str, d: Direction) -> String {
    format!("{bridge} {d}: pod address not programmed yet: fail closed")
}

/// A pod's source guard: `ns/pod: source address not the pod's: spoofed, dropped`.
pub fn spoofed(ep: &Endpoint) -> String {
    format!("{}: source address not the pod's: spoofed, dropped", ep.pod)
}

/// An unknown bridge port sending with a known pod's address.
pub const SPOOFED_UNKNOWN_PORT: &str = "bridge port not programmed yet sends as a local pod: spoofed, dropped";

/// IPv6 link-local traffic between pods on one bridge: it carries no pod address to dispatch on.
pub fn link_local_bridged(bridge: &str) -> String {
    format!("{bridge}: link-local traffic between pods has no pod address: dropped")
}

/// Bridged pod traffic that the `inet` hooks did not see.
pub const UNSEEN_BRIDGED: &str = "bridged pod traffic not seen by policyc (br_netfilter off): fail closed";

/// Bridged traffic to an address no local pod has (broadcast, multicast), without fail-closed.
pub fn bridged_to_no_pod(bridge: &str) -> String {
    format!("{bridge}: bridged traffic to no pod of this node (broadcast, multicast): dropped")
}
