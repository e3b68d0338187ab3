//! Which rule took a packet: snapshot the counters of every node's policyc tables
//! (`nft -j list ruleset` in the node's namespace), send the packet, snapshot again,
//! and report the rules whose counters moved, with their comments.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::{sys, Error};

/// One counted rule of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    pub node: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// `accept`, `drop`, `jump …` or empty.
    pub verdict: String,
    pub packets: u64,
}

/// Counters of every counted rule, keyed by (node, chain, handle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<(String, String, u64), RuleCounter>);

/// A rule whose counter moved between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleHit {
    pub node: String,
    pub chain: String,
    pub comment: Option<String>,
    pub verdict: String,
    pub packets: u64,
}

impl std::fmt::Display for RuleHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.verdict.as_str() {
            "accept" => "accepted by",
            "drop" => "dropped by",
            _ => "counted by",
        };
        match &self.comment {
            Some(c) => write!(f, "{what} \"{c}\" on {}", self.node),
            None => write!(f, "{what} a rule of chain {} on {}", self.chain, self.node),
        }
    }
}

fn verdict_of(exprs: &[Value]) -> String {
    for e in exprs.iter().rev() {
        let Some(o) = e.as_object() else { continue };
        for (k, v) in o {
            match k.as_str() {
                "accept" | "drop" | "return" => return k.clone(),
                "jump" | "goto" => {
                    let target = v.get("target").and_then(Value::as_str).unwrap_or("?");
                    return format!("{k} {target}");
                }
                _ => {}
            }
        }
    }
    String::new()
}

/// Parses `nft -j list …` output into the counted rules of policyc's tables. Chains of the
/// bridge table (the flannel attachment's source guard) are named `bridge <chain>`.
pub fn parse(node: &str, json: &str) -> Result<Vec<RuleCounter>, Error> {
    let v: Value = serde_json::from_str(json).map_err(|e| Error::new(format!("nft -j output on {node}: {e}")))?;
    let mut out = Vec::new();
    for item in v.get("nftables").and_then(Value::as_array).into_iter().flatten() {
        let Some(rule) = item.get("rule") else { continue };
        if rule
            .get("table")
            .and_then(Value::as_str)
            .is_some_and(|t| t != policyc_compiler::render::nft::TABLE)
        {
            continue;
        }
        let exprs = rule.get("expr").and_then(Value::as_array).cloned().unwrap_or_default();
        let Some(packets) = exprs
            .iter()
            .find_map(|e| e.get("counter").and_then(|c| c.get("packets")).and_then(Value::as_u64))
        else {
            continue;
        };
        let chain = rule.get("chain").and_then(Value::as_str).unwrap_or("");
        let chain = match rule.get("family").and_then(Value::as_str) {
            Some("bridge") => format!("bridge {chain}"),
            _ => chain.to_string(),
        };
        out.push(RuleCounter {
            node: node.to_string(),
            chain,
            handle: rule.get("handle").and_then(Value::as_u64).unwrap_or(0),
            comment: rule.get("comment").and_then(Value::as_str).map(str::to_string),
            verdict: verdict_of(&exprs),
            packets,
        });
    }
    Ok(out)
}

/// Reads the counters of one node's tables (`table inet policyc`, and `table bridge policyc`
/// when the node has one).
pub fn read_node(node: &str, netns: &str) -> Result<Vec<RuleCounter>, Error> {
    let json = sys::netns_exec(netns, &["nft", "-j", "list", "ruleset"])?;
    parse(node, &json)
}

impl Counters {
    pub fn read(nodes: &[(String, String)]) -> Result<Counters, Error> {
        let mut c = Counters::default();
        for (node, netns) in nodes {
            for r in read_node(node, netns)? {
                c.0.insert((r.node.clone(), r.chain.clone(), r.handle), r);
            }
        }
        Ok(c)
    }

    /// Rules counted more often in `after` than in `self`, drops last (a drop ends the path).
    pub fn diff(&self, after: &Counters) -> Vec<RuleHit> {
        let mut hits: Vec<RuleHit> = after
            .0
            .iter()
            .filter_map(|(k, r)| {
                let before = self.0.get(k).map_or(0, |b| b.packets);
                (r.packets > before).then(|| RuleHit {
                    node: r.node.clone(),
                    chain: r.chain.clone(),
                    comment: r.comment.clone(),
                    verdict: r.verdict.clone(),
                    packets: r.packets - before,
                })
            })
            .collect();
        hits.sort_by_key(|h| (h.verdict == "drop", h.node.clone(), h.chain.clone()));
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_with_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "policyc", "handle": 1}},
          {"rule": {"family": "inet", "table": "policyc", "chain": "forward_ingress", "handle": 4,
                    "expr": [{"match": {}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "policyc", "chain": "ep_x_in", "handle": 9,
                    "comment": "x/a ingress denied: selected by x/deny",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
          {"rule": {"family": "inet", "table": "policyc", "chain": "np_y_in", "handle": 11,
                    "comment": "x/allow ingress[0]",
                    "expr": [{"match": {}}, {"counter": {"packets": 1, "bytes": 60}}, {"accept": null}]}}]}"#;
        let rules = parse("node-1", json).unwrap();
        assert_eq!(rules.len(), 2);
        let before = Counters(
            rules
                .iter()
                .map(|r| ((r.node.clone(), r.chain.clone(), r.handle), r.clone()))
                .collect(),
        );
        let mut after = before.clone();
        after
            .0
            .get_mut(&("node-1".into(), "ep_x_in".into(), 9))
            .unwrap()
            .packets = 5;
        let hits = before.diff(&after);
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0].to_string(),
            "dropped by \"x/a ingress denied: selected by x/deny\" on node-1"
        );
    }
}
