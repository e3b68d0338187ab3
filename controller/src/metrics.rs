//! Prometheus metrics (OpenMetrics text via `prometheus-client`).
//!
//! Gauges and histograms are updated by the sync loop. Packet counters come from the kernel: every
//! accept rule and every final drop in the ruleset carries a counter and a comment naming the
//! policy rule or the pod, and each scrape reads them with one nf_tables rule dump over netlink
//! (`policyc_dataplane::counters`; no `nft` process).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: ErrorKind,
}

/// What failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    /// An object was invalid and skipped.
    InvalidObject,
    /// A watch stream failed (it reconnects with backoff).
    Watch,
    /// The kernel rejected a ruleset; the previous one stays.
    Apply,
    /// Writing the NodePolicyStatus failed.
    Status,
    /// Cutting conntrack entries failed.
    Conntrack,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConntrackLabels {
    /// `marked` (a flow the ruleset denies, cut), `released` (allowed again), `vanished` (gone
    /// before its update) or `failed` (not updated; the cut is retried).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    /// `replace` (whole table), `chains` (in place: sets, maps and chains added, rewritten or
    /// deleted, with set members), `elements` (set members only) or `unchanged` (nothing sent).
    pub mode: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Histogram,
    pub apply_duration: Histogram,
    pub conntrack_duration: Histogram,
    pub applies: Family<ApplyLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub rules: Gauge,
    pub sets: Gauge,
    pub set_elements: Gauge,
    pub endpoints: Gauge,
    pub policies: Gauge,
    pub invalid_objects: Gauge,
    /// Flannel attachment: local pods whose bridge port is not known (fail closed).
    pub pods_without_port: Gauge,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub conntrack_cut: Counter,
    pub conntrack_updates: Family<ConntrackLabels, Counter>,
    pub kernel: Arc<KernelCounters>,
    /// Flow events by verdict point's policy (never by pod or address: bounded).
    pub flow_events: Family<crate::flows::FlowLabels, Counter>,
    /// Packets of verdict points at their rate limit that sent no event.
    pub flow_suppressed: Family<crate::flows::FlowLabels, Counter>,
    /// Flow events lost between the kernel and the records.
    pub flow_lost: Counter,
}

impl Metrics {
    pub fn new(netns: Option<PathBuf>) -> Metrics {
        let mut registry = Registry::with_prefix("policyc");
        let sync_duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let apply_duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let conntrack_duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let m = Metrics {
            sync_duration,
            apply_duration,
            conntrack_duration,
            applies: Family::default(),
            errors: Family::default(),
            rules: Gauge::default(),
            sets: Gauge::default(),
            set_elements: Gauge::default(),
            endpoints: Gauge::default(),
            policies: Gauge::default(),
            invalid_objects: Gauge::default(),
            pods_without_port: Gauge::default(),
            last_sync: Gauge::default(),
            conntrack_cut: Counter::default(),
            conntrack_updates: Family::default(),
            kernel: Arc::new(KernelCounters::new(netns)),
            flow_events: Family::default(),
            flow_suppressed: Family::default(),
            flow_lost: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_duration_seconds",
            "Time from the end of the debounce to the kernel holding the new ruleset (compile, compare, plan, commit)",
            m.sync_duration.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time of one kernel update: planning the batch and the transaction",
            m.apply_duration.clone(),
        );
        registry.register(
            "conntrack_duration_seconds",
            "Time of marking the conntrack entries of flows a change denies (and releasing those it allows again), after the sync",
            m.conntrack_duration.clone(),
        );
        registry.register("applies", "Syncs by what was sent to the kernel", m.applies.clone());
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register("rules", "Rules in this node's ruleset", m.rules.clone());
        registry.register("sets", "Named sets in this node's ruleset", m.sets.clone());
        registry.register("set_elements", "Elements over all sets", m.set_elements.clone());
        registry.register(
            "endpoints",
            "Pods on this node under policy enforcement",
            m.endpoints.clone(),
        );
        registry.register("policies", "Valid NetworkPolicies in the cluster", m.policies.clone());
        registry.register(
            "invalid_objects",
            "Objects skipped as invalid",
            m.invalid_objects.clone(),
        );
        registry.register(
            "pods_without_bridge_port",
            "Flannel attachment: pods on this node whose bridge port is not known, so their traffic is dropped (fail closed)",
            m.pods_without_port.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time when the kernel last matched the cluster's policies",
            m.last_sync.clone(),
        );
        registry.register(
            "conntrack_cut",
            "Conntrack entries marked cut (packets dropped) because a policy change denies their flow",
            m.conntrack_cut.clone(),
        );
        registry.register(
            "conntrack_updates",
            "Conntrack entry updates of the cut, one request and acknowledgement each, by result",
            m.conntrack_updates.clone(),
        );
        registry.register(
            "flow_events",
            "Flow events (packets logged by a verdict point) by verdict, tier, deciding policy (kind, namespace, name) and direction; a default deny has no policy",
            m.flow_events.clone(),
        );
        registry.register(
            "flow_events_suppressed",
            "Packets of verdict points at their rate limit that sent no event (from the verdict rule's kernel counter)",
            m.flow_suppressed.clone(),
        );
        registry.register(
            "flow_events_lost",
            "Flow events lost on the way from the kernel (socket overruns, a reader behind)",
            m.flow_lost.clone(),
        );
        registry.register_collector(Box::new(m.kernel.clone()));
        Metrics { registry, ..m }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// The OpenMetrics text of every metric, with fresh kernel counters.
    pub fn encode(&self) -> String {
        self.kernel.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

// === Kernel counters ===

/// Counters the kernel keeps for one policy rule, or for one pod's final drop.
/// The `direction` of a source guard's drop ([`RuleCounter`]): packets a pod sent with an
/// address not its own.
pub const SPOOFED: &str = "spoofed";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    pub namespace: String,
    /// Policy name (accept rules) or pod name (drops).
    pub name: String,
    pub direction: String,
    /// Index of the rule in the policy, for accept rules.
    pub rule: Option<usize>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyRuleLabels {
    namespace: String,
    policy: String,
    direction: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    namespace: String,
    pod: String,
}

/// Reads the ruleset's counters on each scrape.
#[derive(Debug)]
pub struct KernelCounters {
    netns: Option<PathBuf>,
    last: Mutex<Vec<RuleCounter>>,
}

impl KernelCounters {
    fn new(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            last: Mutex::new(Vec::new()),
        }
    }

    fn refresh(&self) {
        match read_counters(self.netns.as_deref()) {
            Ok(c) => *self.last.lock().expect("not poisoned") = c,
            Err(e) => tracing::debug!("{e}"),
        }
    }
}

impl prometheus_client::collector::Collector for KernelCounters {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.last.lock().expect("not poisoned").clone();
        let (rules, drops): (Vec<_>, Vec<_>) = counters.into_iter().partition(|c| c.rule.is_some());
        let (spoofed, drops): (Vec<_>, Vec<_>) = drops.into_iter().partition(|c| c.direction == SPOOFED);
        for (name, help, bytes) in [
            (
                "policy_rule_packets",
                "Packets accepted by a policy rule (kernel counter)",
                false,
            ),
            (
                "policy_rule_bytes",
                "Bytes accepted by a policy rule (kernel counter)",
                true,
            ),
        ] {
            let mut fam =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for c in &rules {
                let labels = PolicyRuleLabels {
                    namespace: c.namespace.clone(),
                    policy: c.name.clone(),
                    direction: c.direction.clone(),
                    rule: c.rule.unwrap_or_default().to_string(),
                };
                ConstCounter::new(if bytes { c.bytes } else { c.packets }).encode(fam.encode_family(&labels)?)?;
            }
        }
        let mut fam = encoder.encode_descriptor(
            "denied_packets",
            "Packets dropped because no rule allowed them, per isolated pod and direction",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for c in &drops {
            let labels = PodLabels {
                namespace: c.namespace.clone(),
                pod: c.name.clone(),
                direction: c.direction.clone(),
            };
            ConstCounter::new(c.packets).encode(fam.encode_family(&labels)?)?;
        }
        let mut fam = encoder.encode_descriptor(
            "spoofed_packets",
            "Packets a pod sent with a source address not its own, dropped by its source guard",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for c in &spoofed {
            let labels = GuardLabels {
                namespace: c.namespace.clone(),
                pod: c.name.clone(),
            };
            ConstCounter::new(c.packets).encode(fam.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Dumps the rules of `table inet policyc` and, with the bridge attachment, `table bridge
/// policyc` (in `netns` when given) over netlink and sums their counters per policy rule, per pod
/// drop and per pod source guard drop, by the comments the renderer writes.
pub fn read_counters(netns: Option<&Path>) -> Result<Vec<RuleCounter>, String> {
    Ok(parse_counters(&read_rule_counters(netns)?))
}

/// Every rule of both tables with its counters, as dumped.
pub fn read_rule_counters(netns: Option<&Path>) -> Result<Vec<policyc_dataplane::counters::RuleCounters>, String> {
    use policyc_dataplane::counters::{rule_counters, rule_counters_of, CountersError, TableFamily};
    let table = policyc_compiler::render::nft::TABLE;
    let mut rules = rule_counters(netns, table).map_err(|e| error_chain(&e))?;
    match rule_counters_of(netns, TableFamily::Bridge, table) {
        Ok(bridge) => rules.extend(bridge),
        // The Canal attachment has no bridge table.
        Err(CountersError::NoTable(_)) => {}
        Err(e) => return Err(error_chain(&e)),
    }
    Ok(rules)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// Sums the counters of the dumped rules per policy rule (chains `np_*`, comments
/// `ns/policy direction[index]`), per pod drop (chains `ep_*`, comments
/// `ns/pod direction denied: …`) and per pod source guard drop (chains `guard_*`, comments
/// `ns/pod: source address not the pod's: …`, direction [`SPOOFED`]); other rules are left out.
pub fn parse_counters(rules: &[policyc_dataplane::counters::RuleCounters]) -> Vec<RuleCounter> {
    /// (namespace, policy or pod, direction, rule index) → (packets, bytes)
    type Key = (String, String, String, Option<usize>);
    let mut sums: std::collections::BTreeMap<Key, (u64, u64)> = Default::default();
    for rule in rules {
        let (chain, Some(comment)) = (rule.chain.as_str(), rule.comment.as_deref()) else {
            continue;
        };
        let (packets, bytes) = (rule.packets, rule.bytes);
        let key = if chain.starts_with("np_") {
            // "ns/policy ingress[3]"
            let Some((id, rest)) = comment.split_once(' ') else {
                continue;
            };
            let Some((direction, idx)) = rest.trim_end_matches(']').split_once('[') else {
                continue;
            };
            let Some((ns, name)) = id.split_once('/') else { continue };
            (
                ns.to_string(),
                name.to_string(),
                direction.to_string(),
                idx.parse().ok(),
            )
        } else if chain.starts_with("guard_") {
            // "ns/pod: source address not the pod's: spoofed, dropped"
            let Some((id, _)) = comment.split_once(": ") else {
                continue;
            };
            let Some((ns, name)) = id.split_once('/') else { continue };
            (ns.to_string(), name.to_string(), SPOOFED.to_string(), None)
        } else if chain.starts_with("ep_") && comment.contains(" denied") {
            // "ns/pod ingress denied: selected by ..."
            let mut words = comment.split(' ');
            let (Some(id), Some(direction)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((ns, name)) = id.split_once('/') else { continue };
            (ns.to_string(), name.to_string(), direction.to_string(), None)
        } else {
            continue;
        };
        let e = sums.entry(key).or_default();
        e.0 += packets;
        e.1 += bytes;
    }
    sums.into_iter()
        .map(|((namespace, name, direction, rule), (packets, bytes))| RuleCounter {
            namespace,
            name,
            direction,
            rule,
            packets,
            bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_dataplane::counters::RuleCounters;

    #[test]
    fn counters_from_dumped_rules() {
        let rule = |chain: &str, handle, comment: Option<&str>, packets, bytes| RuleCounters {
            chain: chain.into(),
            handle,
            comment: comment.map(str::to_string),
            packets,
            bytes,
        };
        let rules = [
            rule("np_abc_in", 4, Some("x/allow ingress[1]"), 3, 180),
            rule("np_abc_in", 5, Some("x/allow ingress[1]"), 2, 120),
            rule("ep_def_in", 9, Some("x/a ingress denied: selected by x/allow"), 7, 420),
            rule("ep_def_in", 10, None, 1, 60),
            rule("ep_def_in", 11, Some("x/a to itself"), 1, 60),
            rule("np_abc_in", 12, Some("no brackets"), 1, 60),
            rule(
                "guard_0123",
                13,
                Some("x/a: source address not the pod's: spoofed, dropped"),
                4,
                240,
            ),
            rule("prerouting_guard", 14, Some("bridge port not programmed yet"), 1, 60),
        ];
        let c = parse_counters(&rules);
        assert_eq!(c.len(), 3);
        let spoofed = c.iter().find(|c| c.direction == SPOOFED).unwrap();
        assert_eq!(
            (spoofed.namespace.as_str(), spoofed.name.as_str(), spoofed.packets),
            ("x", "a", 4)
        );
        let rule = c.iter().find(|c| c.rule == Some(1)).unwrap();
        assert_eq!((rule.name.as_str(), rule.packets, rule.bytes), ("allow", 5, 300));
        let drop = c.iter().find(|c| c.rule.is_none() && c.direction != SPOOFED).unwrap();
        assert_eq!(
            (drop.name.as_str(), drop.direction.as_str(), drop.packets),
            ("a", "ingress", 7)
        );
    }

    #[test]
    fn encodes_openmetrics() {
        let m = Metrics::new(Some("/nonexistent/netns".into()));
        m.error(ErrorKind::Apply);
        m.rules.set(12);
        let text = m.encode();
        assert!(text.contains("policyc_errors_total{kind=\"Apply\"} 1"), "{text}");
        assert!(text.contains("policyc_rules 12"), "{text}");
        assert!(
            text.contains("# TYPE policyc_sync_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
