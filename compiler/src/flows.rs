//! Flow events: which verdict points of a ruleset send an NFLOG event, and what each event's id
//! means.
//!
//! ```text
//!  verdict point (a rule's comment, e.g. "x/web ingress[0]")
//!     ├─ lowering: a log rule before the verdict, `limit rate R/second burst B packets
//!     │            log prefix "pc:<id>" group G` (the verdict rule after it is unchanged)
//!     └─ points(): <id> → kind, namespace, name, direction, tier, rule, verdict
//!  <id> = the first 12 hex digits of SHA-1(comment): stable while the rule exists (across syncs
//!         and agent restarts), the same on every node, and it needs no state.
//! ```
//!
//! The points: every NetworkPolicy rule's accept and every admin rule's action (Accept, Deny,
//! Pass) when its traffic is logged, each endpoint's final drop (with the policies that isolate
//! the pod), the source guard's drop and the cut-flow drop. Only packets that are not part of an
//! established flow reach them, so an accepted connection is logged by its first packets only.

use serde::Serialize;
use sha1::Digest as _;

use crate::ir::{Attachment, Endpoint, Ir};
use crate::model::{AdminAction, Direction, ObjectRef};
use crate::nft::comment;
use crate::nft::model::{Limit, Log, RateUnit};
use crate::render::{labels, CUT_COMMENT};

/// What a ruleset logs, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FlowLog {
    /// The nfnetlink_log group the events go to.
    pub group: u16,
    /// Log drops (endpoint default drops, admin Deny, spoofed sources, cut flows).
    pub denied: bool,
    /// Log accepts by a rule (NetworkPolicy rules, admin Accept) and admin Pass.
    pub allowed: bool,
    /// Events per second each verdict point may send; the rest are counted, not sent.
    pub rate: u32,
    /// Events a verdict point may send at once after a quiet spell.
    pub burst: u32,
}

impl Default for FlowLog {
    /// Denies and allowed new connections on, 100 events/s per verdict point with a burst of 200:
    /// the agent merges identical flows over a second, so more adds little but cost.
    fn default() -> Self {
        Self {
            group: 7,
            denied: true,
            allowed: true,
            rate: 100,
            burst: 200,
        }
    }
}

/// The prefix every event of a policyc ruleset carries before its id.
pub const PREFIX: &str = "pc:";

/// The id of the verdict point whose rule carries `text` as its comment (before sanitizing).
pub fn id(text: &str) -> String {
    let digest = sha1::Sha1::digest(comment(text).as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id in an event's prefix, if the event is policyc's.
pub fn id_of_prefix(prefix: &str) -> Option<&str> {
    let id = prefix.strip_prefix(PREFIX)?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

impl FlowLog {
    /// The log statement of a verdict point.
    pub fn log(&self, text: &str) -> Log {
        Log {
            limit: Some(Limit {
                rate: u64::from(self.rate.max(1)),
                unit: RateUnit::Second,
                burst: self.burst.max(1),
            }),
            prefix: Some(format!("{PREFIX}{}", id(text))),
            group: self.group,
            snaplen: None,
            queue_threshold: None,
        }
    }

    /// Whether points of this verdict are logged.
    pub fn logs(&self, v: FlowVerdict) -> bool {
        match v {
            FlowVerdict::Denied => self.denied,
            FlowVerdict::Allowed | FlowVerdict::Passed => self.allowed,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    Allowed,
    Denied,
    /// An admin Pass: on to the NetworkPolicy tier (not a final verdict).
    Passed,
}

impl FlowVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowVerdict::Allowed => "allowed",
            FlowVerdict::Denied => "denied",
            FlowVerdict::Passed => "passed",
        }
    }
}

/// Which part of the ruleset decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FlowTier {
    Admin,
    NetworkPolicy,
    Baseline,
    /// The endpoint's final drop: NetworkPolicies isolate the pod and none allows the flow.
    Default,
    /// The source guard: the packet's source address is not its pod's.
    Guard,
    /// A flow a policy change denied after it was established.
    Cut,
}

impl FlowTier {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowTier::Admin => "Admin",
            FlowTier::NetworkPolicy => "NetworkPolicy",
            FlowTier::Baseline => "Baseline",
            FlowTier::Default => "Default",
            FlowTier::Guard => "Guard",
            FlowTier::Cut => "Cut",
        }
    }
}

/// A policy of any kind, as flow records name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct PolicyName {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

fn network_policy(r: &ObjectRef) -> PolicyName {
    PolicyName {
        kind: "NetworkPolicy".into(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

/// What one verdict point decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowPoint {
    pub id: String,
    pub verdict: FlowVerdict,
    pub tier: FlowTier,
    /// The deciding policy; none for the default drop, the guard and the cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// `ingress[0]`, `egress[2] (name)`, `default deny: isolated by ns/p1, ns/p2`, ...
    pub rule: String,
    /// The pod whose chain holds the point (default drop, guard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<ObjectRef>,
    /// Default drop: the NetworkPolicies isolating the endpoint in that direction.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<ObjectRef>,
    /// The comment of the rule in the ruleset.
    pub comment: String,
}

/// Every verdict point of an IR's rulesets (both tables), logged or not, by id.
pub fn points(ir: &Ir) -> Vec<FlowPoint> {
    let mut out: Vec<FlowPoint> = Vec::new();
    let mut push = |text: String, p: FlowPoint| {
        out.push(FlowPoint {
            id: id(&text),
            comment: comment(&text),
            ..p
        });
    };
    let blank = |verdict, tier, rule: String| FlowPoint {
        id: String::new(),
        verdict,
        tier,
        policy: None,
        direction: None,
        rule,
        endpoint: None,
        isolated_by: Vec::new(),
        comment: String::new(),
    };
    push(
        CUT_COMMENT.to_string(),
        blank(
            FlowVerdict::Denied,
            FlowTier::Cut,
            "flow cut: a policy change denies it".into(),
        ),
    );
    if matches!(ir.attachment, Attachment::Bridge { .. }) {
        push(
            labels::SPOOFED_UNKNOWN_PORT.to_string(),
            blank(
                FlowVerdict::Denied,
                FlowTier::Guard,
                "spoofed source: a bridge port not programmed yet sends as a local pod".into(),
            ),
        );
    }
    for chain in ir.chains.values() {
        for r in &chain.rules {
            push(
                labels::policy_rule(chain, r),
                FlowPoint {
                    policy: Some(network_policy(&chain.policy)),
                    direction: Some(chain.direction),
                    ..blank(
                        FlowVerdict::Allowed,
                        FlowTier::NetworkPolicy,
                        format!("{}[{}]", chain.direction, r.rule),
                    )
                },
            );
        }
    }
    for rule in ir.admin_rules.values() {
        let verdict = match rule.action {
            AdminAction::Accept => FlowVerdict::Allowed,
            AdminAction::Deny => FlowVerdict::Denied,
            AdminAction::Pass => FlowVerdict::Passed,
        };
        let tier = match rule.tier {
            crate::model::Tier::Admin => FlowTier::Admin,
            crate::model::Tier::Baseline => FlowTier::Baseline,
        };
        let rule_text = match &rule.name {
            Some(n) => format!("{}[{}] ({n}): {}", rule.direction, rule.rule, rule.action),
            None => format!("{}[{}]: {}", rule.direction, rule.rule, rule.action),
        };
        push(
            labels::admin_rule(rule),
            FlowPoint {
                policy: Some(PolicyName {
                    kind: rule.policy.kind.as_str().into(),
                    namespace: String::new(),
                    name: rule.policy.name.clone(),
                }),
                direction: Some(rule.direction),
                ..blank(verdict, tier, rule_text)
            },
        );
    }
    for ep in &ir.endpoints {
        push_endpoint(&mut push, &blank, ep);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

fn push_endpoint(
    push: &mut impl FnMut(String, FlowPoint),
    blank: &impl Fn(FlowVerdict, FlowTier, String) -> FlowPoint,
    ep: &Endpoint,
) {
    // Both attachments guard the sources of pods whose interface (veth, bridge port) is known.
    if !ep.interface.is_empty() {
        push(
            labels::spoofed(ep),
            FlowPoint {
                endpoint: Some(ep.pod.clone()),
                ..blank(
                    FlowVerdict::Denied,
                    FlowTier::Guard,
                    format!("spoofed source: sent by {} with an address not its own", ep.pod),
                )
            },
        );
    }
    for d in [Direction::Ingress, Direction::Egress] {
        let iso = ep.isolation(d);
        if !iso.isolated() {
            continue;
        }
        let names: Vec<String> = iso.policies.iter().map(ToString::to_string).collect();
        push(
            labels::endpoint_denied(ep, d),
            FlowPoint {
                direction: Some(d),
                endpoint: Some(ep.pod.clone()),
                isolated_by: iso.policies.clone(),
                ..blank(
                    FlowVerdict::Denied,
                    FlowTier::Default,
                    format!("default deny: isolated by {}", names.join(", ")),
                )
            },
        );
    }
}

/// One end of a flow, resolved from its address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FlowPeer {
    pub ip: String,
    /// The destination port (TCP, UDP, SCTP); the source's is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `pod`, `node` (a Node's address), or `world` (anything else: an ipBlock's network).
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl FlowPeer {
    /// `ns/pod`, the node's name, or the address.
    pub fn name(&self) -> String {
        match self.kind.as_str() {
            "pod" => format!("{}/{}", self.namespace, self.pod),
            "node" if !self.node.is_empty() => format!("node {}", self.node),
            _ => self.ip.clone(),
        }
    }
}

/// One flow record: identical events (same verdict point, ends, protocol and port) within an
/// interval, merged, with their counts. What `--flow-log`, `GET /flows` and `policyc observe`
/// carry, one JSON object per line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FlowRecord {
    /// The first event's time, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The last event's time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last: String,
    pub node: String,
    /// `allowed`, `denied` or `passed` (an admin Pass).
    pub verdict: String,
    /// `ingress`, `egress`, or empty (guard, cut).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub direction: String,
    /// `Admin`, `NetworkPolicy`, `Baseline`, `Default`, `Guard`, `Cut`; empty for an id this
    /// agent does not know (an event of a ruleset it no longer has).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyName>,
    /// `ingress[0]`, `default deny: isolated by ns/p1, ns/p2`, ...
    pub rule: String,
    /// Default deny: the policies isolating the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or the protocol number.
    pub protocol: String,
    /// Events merged (each one packet the kernel logged).
    pub packets: u64,
    /// Their bytes (IP length).
    pub bytes: u64,
    /// Packets of this verdict point the rate limit kept from sending events in the interval
    /// (counted by the rule's counter, not merged into this record's ends: they may be other
    /// flows).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
    /// The verdict point's id (the NFLOG prefix `pc:<id>`).
    pub id: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
