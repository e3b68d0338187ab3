//! The admin policy kinds: ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) and
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`v1alpha1`), read into one [`AdminPolicy`]
//! model. [`AdminApi`] holds where the two API versions differ.

use serde_json::{Map, Value};

use super::core::Meta;
use super::diagnostic::{ferr, FResult, FieldError};
use super::field::{
    join, known_fields, opt_list, opt_selector, opt_str, port_number, protocol, req_map, req_str, validate_port_name,
};
use crate::cidr::Cidr;
use crate::model::*;

const CNP_SPEC_FIELDS: &[&str] = &["tier", "priority", "subject", "ingress", "egress"];
const ANP_SPEC_FIELDS: &[&str] = &["priority", "subject", "ingress", "egress"];
const BANP_SPEC_FIELDS: &[&str] = &["subject", "ingress", "egress"];
const ADMIN_SUBJECT_FIELDS: &[&str] = &["namespaces", "pods"];
const NAMESPACED_POD_FIELDS: &[&str] = &["namespaceSelector", "podSelector"];
const CNP_INGRESS_FIELDS: &[&str] = &["name", "action", "from", "protocols"];
const CNP_EGRESS_FIELDS: &[&str] = &["name", "action", "to", "protocols"];
const ANP_INGRESS_FIELDS: &[&str] = &["name", "action", "from", "ports"];
const ANP_EGRESS_FIELDS: &[&str] = &["name", "action", "to", "ports"];
const ADMIN_INGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods"];
const CNP_EGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods", "nodes", "networks", "domainNames"];
const ANP_EGRESS_PEER_FIELDS: &[&str] = &["namespaces", "pods", "nodes", "networks"];
/// Egress peers that are addresses rather than pods: no named ports, and no place in ingress.
const ADDRESS_PEER_FIELDS: &[&str] = &["nodes", "networks", "domainNames"];
const CNP_PROTOCOL_FIELDS: &[&str] = &["tcp", "udp", "sctp", "destinationNamedPort"];
const CNP_PROTOCOL_MATCH_FIELDS: &[&str] = &["destinationPort"];
const CNP_PORT_FIELDS: &[&str] = &["number", "range"];
const CNP_RANGE_FIELDS: &[&str] = &["start", "end"];
const ANP_PORT_FIELDS: &[&str] = &["portNumber", "namedPort", "portRange"];
const ANP_PORT_NUMBER_FIELDS: &[&str] = &["protocol", "port"];
const ANP_PORT_RANGE_FIELDS: &[&str] = &["protocol", "start", "end"];

/// Most CIDRs (and domain names) one `networks` (`domainNames`) peer may list.
const MAX_ADDRESS_ITEMS: usize = 25;
/// Longest rule name the API accepts, in characters.
const MAX_RULE_NAME: usize = 100;
/// Highest (least important) priority of the admin APIs.
const MAX_ADMIN_PRIORITY: i64 = 1000;

/// The shape of one admin API: ClusterNetworkPolicy (v1alpha2) differs from the v1alpha1 kinds in
/// its action spelling, its port syntax and its list limits.
struct AdminApi {
    kind: AdminKind,
    /// Most rules per direction; also the most peers per rule and port entries per rule.
    max_items: usize,
    /// Name of the port list of a rule: `protocols` (v1alpha2) or `ports` (v1alpha1).
    ports_key: &'static str,
}

impl AdminApi {
    fn of(kind: AdminKind) -> AdminApi {
        match kind {
            AdminKind::ClusterNetworkPolicy => AdminApi {
                kind,
                max_items: 25,
                ports_key: "protocols",
            },
            AdminKind::AdminNetworkPolicy | AdminKind::BaselineAdminNetworkPolicy => AdminApi {
                kind,
                max_items: 100,
                ports_key: "ports",
            },
        }
    }

    fn is_cnp(&self) -> bool {
        self.kind == AdminKind::ClusterNetworkPolicy
    }

    fn rule_fields(&self, d: Direction) -> &'static [&'static str] {
        match (self.is_cnp(), d) {
            (true, Direction::Ingress) => CNP_INGRESS_FIELDS,
            (true, Direction::Egress) => CNP_EGRESS_FIELDS,
            (false, Direction::Ingress) => ANP_INGRESS_FIELDS,
            (false, Direction::Egress) => ANP_EGRESS_FIELDS,
        }
    }

    fn peer_fields(&self, d: Direction) -> &'static [&'static str] {
        match (self.is_cnp(), d) {
            (_, Direction::Ingress) => ADMIN_INGRESS_PEER_FIELDS,
            (true, Direction::Egress) => CNP_EGRESS_PEER_FIELDS,
            (false, Direction::Egress) => ANP_EGRESS_PEER_FIELDS,
        }
    }

    fn action(&self, s: &str, f: &str) -> FResult<AdminAction> {
        let action = match (self.kind, s) {
            (AdminKind::ClusterNetworkPolicy, "Accept") => Some(AdminAction::Accept),
            (AdminKind::AdminNetworkPolicy | AdminKind::BaselineAdminNetworkPolicy, "Allow") => {
                Some(AdminAction::Accept)
            }
            (_, "Deny") => Some(AdminAction::Deny),
            (AdminKind::ClusterNetworkPolicy | AdminKind::AdminNetworkPolicy, "Pass") => Some(AdminAction::Pass),
            _ => None,
        };
        action.ok_or_else(|| {
            let (expected, hint) = match self.kind {
                AdminKind::ClusterNetworkPolicy => (
                    "Accept, Deny or Pass",
                    if s == "Allow" {
                        "; v1alpha2 spells Allow as Accept"
                    } else {
                        ""
                    },
                ),
                AdminKind::AdminNetworkPolicy => (
                    "Allow, Deny or Pass",
                    if s == "Accept" {
                        "; v1alpha1 spells Accept as Allow"
                    } else {
                        ""
                    },
                ),
                AdminKind::BaselineAdminNetworkPolicy => (
                    "Allow or Deny",
                    match s {
                        "Pass" => "; the baseline is the last tier, there is nothing to pass to",
                        "Accept" => "; v1alpha1 spells Accept as Allow",
                        _ => "",
                    },
                ),
            };
            ferr(
                f,
                format!("invalid action {s:?} for {} (expected {expected}){hint}", self.kind),
            )
        })
    }
}

/// Parses a ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy.
pub(super) fn parse_admin_policy(
    obj: &Map<String, Value>,
    meta: Meta,
    kind: AdminKind,
    warnings: &mut Vec<FieldError>,
) -> FResult<AdminPolicy> {
    let api = AdminApi::of(kind);
    let spec = req_map(obj, "spec", "")?;
    let (tier, priority) = match kind {
        AdminKind::ClusterNetworkPolicy => {
            known_fields(spec, CNP_SPEC_FIELDS, "spec")?;
            let tier = match req_str(spec, "tier", "spec")? {
                "Admin" => Tier::Admin,
                "Baseline" => Tier::Baseline,
                t => {
                    return Err(ferr(
                        "spec.tier",
                        format!("invalid tier {t:?} (expected Admin or Baseline)"),
                    ))
                }
            };
            (tier, admin_priority(spec)?)
        }
        AdminKind::AdminNetworkPolicy => {
            known_fields(spec, ANP_SPEC_FIELDS, "spec")?;
            (Tier::Admin, admin_priority(spec)?)
        }
        AdminKind::BaselineAdminNetworkPolicy => {
            known_fields(spec, BANP_SPEC_FIELDS, "spec")?;
            if meta.name != "default" {
                return Err(ferr(
                    "metadata.name",
                    format!(
                        "a BaselineAdminNetworkPolicy must be named \"default\" (one per cluster), not {:?}",
                        meta.name
                    ),
                ));
            }
            // A BaselineAdminNetworkPolicy has no priority: it is the whole v1alpha1 baseline. The
            // highest priority the API allows puts it after every baseline-tier
            // ClusterNetworkPolicy, and `order_key` puts it after one of equal priority, so
            // ClusterNetworkPolicies always take precedence over it within the Baseline tier.
            (Tier::Baseline, MAX_ADMIN_PRIORITY as i32)
        }
    };
    let subject = admin_subject(spec)?;
    let ingress = admin_rules(&api, spec, Direction::Ingress, warnings)?;
    let egress = admin_rules(&api, spec, Direction::Egress, warnings)?;
    Ok(AdminPolicy {
        kind,
        name: meta.name,
        generation: meta.generation,
        tier,
        priority,
        subject,
        ingress,
        egress,
    })
}

fn admin_priority(spec: &Map<String, Value>) -> FResult<i32> {
    let f = "spec.priority";
    match spec.get("priority") {
        None | Some(Value::Null) => Err(ferr(f, "required")),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_ADMIN_PRIORITY).contains(&n) => Ok(n as i32),
            Some(n) => Err(ferr(f, format!("priority {n} is out of range 0-{MAX_ADMIN_PRIORITY}"))),
            None => Err(ferr(f, format!("must be an integer, got {v}"))),
        },
    }
}

/// The one field of `m` (among `allowed`, whose other keys are already rejected) that is set.
fn exactly_one<'a>(m: &'a Map<String, Value>, allowed: &[&str], f: &str) -> FResult<(&'a str, &'a Value)> {
    let set: Vec<(&str, &Value)> = m
        .iter()
        .filter(|(k, v)| !v.is_null() && allowed.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    match set.as_slice() {
        [one] => Ok(*one),
        [] => Err(ferr(f, format!("exactly one of {} must be set", allowed.join(", ")))),
        [a, b, ..] => Err(ferr(
            f,
            format!(
                "exactly one of {} must be set, found {} and {}",
                allowed.join(", "),
                a.0,
                b.0
            ),
        )),
    }
}

fn admin_subject(spec: &Map<String, Value>) -> FResult<AdminSubject> {
    let f = "spec.subject";
    let m = req_map(spec, "subject", "spec")?;
    known_fields(m, ADMIN_SUBJECT_FIELDS, f)?;
    match exactly_one(m, ADMIN_SUBJECT_FIELDS, f)? {
        ("namespaces", v) => Ok(AdminSubject::Namespaces(selector(v, &format!("{f}.namespaces"))?)),
        (_, v) => {
            let (namespace_selector, pod_selector) = namespaced_pod(v, &format!("{f}.pods"))?;
            Ok(AdminSubject::Pods {
                namespace_selector,
                pod_selector,
            })
        }
    }
}

/// A label selector that is set (not null).
fn selector(v: &Value, f: &str) -> FResult<LabelSelector> {
    Ok(opt_selector(Some(v), f)?.unwrap_or_default())
}

/// `{namespaceSelector, podSelector}`: a missing namespace selector is the empty one (every
/// namespace, the Go zero value); the pod selector is required, `{}` being every pod.
fn namespaced_pod(v: &Value, f: &str) -> FResult<(LabelSelector, LabelSelector)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, NAMESPACED_POD_FIELDS, f)?;
    let namespace_selector = opt_selector(m.get("namespaceSelector"), &format!("{f}.namespaceSelector"))?;
    let pod_selector = opt_selector(m.get("podSelector"), &format!("{f}.podSelector"))?.ok_or_else(|| {
        ferr(
            format!("{f}.podSelector"),
            "required (use {} for every pod of the selected namespaces)",
        )
    })?;
    Ok((namespace_selector.unwrap_or_default(), pod_selector))
}

fn admin_rules(
    api: &AdminApi,
    spec: &Map<String, Value>,
    d: Direction,
    warnings: &mut Vec<FieldError>,
) -> FResult<Vec<AdminRule>> {
    let key = d.as_str();
    let list = opt_list(spec, key, "spec")?;
    if list.len() > api.max_items {
        return Err(ferr(
            format!("spec.{key}"),
            format!("at most {} rules are allowed, found {}", api.max_items, list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| admin_rule(api, r, d, &format!("spec.{key}[{i}]"), warnings))
        .collect()
}

/// How one peer of an admin rule reads.
enum PeerRead {
    /// A peer with its one field (`namespaces`, `pods`, ...).
    Peer(AdminPeer, &'static str),
    /// No field policyc knows is set: a newer API version's peer, handled by failing closed.
    Unreadable(String),
}

fn admin_rule(api: &AdminApi, v: &Value, d: Direction, rf: &str, warnings: &mut Vec<FieldError>) -> FResult<AdminRule> {
    let r = v.as_object().ok_or_else(|| ferr(rf, "must be a mapping"))?;
    known_fields(r, api.rule_fields(d), rf)?;
    let name = match opt_str(r, "name", rf)? {
        Some(n) if n.chars().count() > MAX_RULE_NAME => {
            return Err(ferr(
                format!("{rf}.name"),
                format!("must be at most {MAX_RULE_NAME} characters long"),
            ))
        }
        Some("") | None => None,
        Some(n) => Some(n.to_string()),
    };
    let action = api.action(req_str(r, "action", rf)?, &format!("{rf}.action"))?;

    let peers_key = match d {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let pf = format!("{rf}.{peers_key}");
    let raw_peers = opt_list(r, peers_key, rf)?;
    if raw_peers.is_empty() {
        return Err(ferr(&pf, "required: list at least one peer"));
    }
    if raw_peers.len() > api.max_items {
        return Err(ferr(
            &pf,
            format!("at most {} peers are allowed, found {}", api.max_items, raw_peers.len()),
        ));
    }
    let mut peers = Vec::new();
    let mut unreadable = Vec::new();
    let mut address_peer = None;
    for (i, p) in raw_peers.iter().enumerate() {
        let f = format!("{pf}[{i}]");
        match admin_peer(api, p, d, action, &f, warnings)? {
            PeerRead::Peer(peer, field) => {
                if address_peer.is_none() && ADDRESS_PEER_FIELDS.contains(&field) {
                    address_peer = Some(format!("{f}.{field}"));
                }
                peers.push(peer);
            }
            PeerRead::Unreadable(found) => {
                unreadable.push((f, found));
                peers.push(AdminPeer::Nothing);
            }
        }
    }

    let mut ports = Vec::new();
    let mut named_port = None;
    let ports_key = api.ports_key;
    let portsf = format!("{rf}.{ports_key}");
    match r.get(ports_key) {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(ferr(
                &portsf,
                "must list at least one entry (leave the field out to match every port and protocol)",
            ))
        }
        Some(Value::Array(list)) if list.len() > api.max_items => {
            return Err(ferr(
                &portsf,
                format!("at most {} entries are allowed, found {}", api.max_items, list.len()),
            ))
        }
        Some(Value::Array(list)) => {
            for (i, p) in list.iter().enumerate() {
                let f = format!("{portsf}[{i}]");
                let (specs, named) = if api.is_cnp() {
                    cnp_protocol(p, &f)?
                } else {
                    anp_port(p, &f, warnings)?
                };
                if named.is_some() && named_port.is_none() {
                    named_port = named;
                }
                ports.extend(specs);
            }
        }
        Some(_) => return Err(ferr(&portsf, "must be a list")),
    }
    // Every entry was an empty v1alpha1 range: the rule matches no port at all (an empty `ports`
    // would mean every port).
    let matches_no_port = ports.is_empty() && r.get(ports_key).is_some_and(|v| !v.is_null());
    // The API's CEL rule on egress rules: nodes, networks and domain names have no named ports.
    if let (Some(port_field), Some(peer_field)) = (&named_port, &address_peer) {
        return Err(ferr(
            port_field,
            format!("a named port cannot be used in a rule with the peer {peer_field}: only pods have named ports"),
        ));
    }

    // A peer this version of the API does not describe must fail closed (as the API requires of
    // implementations): it matches nothing in an Accept rule, and turns a Deny or Pass rule into
    // "deny everything".
    if !unreadable.is_empty() {
        let consequence = match action {
            AdminAction::Accept => "this peer matches nothing".to_string(),
            a => format!("this {a} rule denies all traffic instead"),
        };
        for (f, found) in unreadable {
            warnings.push(ferr(
                f,
                format!(
                    "{found}: not a peer policyc can read (expected one of {}); failing closed: {consequence}",
                    api.peer_fields(d).join(", ")
                ),
            ));
        }
        if action != AdminAction::Accept {
            return Ok(AdminRule {
                name,
                action: AdminAction::Deny,
                peers: vec![AdminPeer::Everything],
                ports: Vec::new(),
            });
        }
    }
    Ok(AdminRule {
        name,
        action,
        // A rule that can match no port matches no traffic: no peer.
        peers: if matches_no_port { Vec::new() } else { peers },
        ports,
    })
}

fn admin_peer(
    api: &AdminApi,
    v: &Value,
    d: Direction,
    action: AdminAction,
    f: &str,
    warnings: &mut Vec<FieldError>,
) -> FResult<PeerRead> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    let allowed = api.peer_fields(d);
    if d == Direction::Ingress {
        let egress_only = api
            .peer_fields(Direction::Egress)
            .iter()
            .filter(|k| !allowed.contains(k));
        for k in egress_only {
            if m.get(*k).is_some_and(|v| !v.is_null()) {
                return Err(ferr(
                    join(f, k),
                    format!(
                        "{k} is only allowed in egress peers (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    let any_known = m.iter().any(|(k, v)| !v.is_null() && allowed.contains(&k.as_str()));
    let unknown: Vec<String> = m
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("{k:?}"))
        .collect();
    if !any_known {
        return Ok(PeerRead::Unreadable(if unknown.is_empty() {
            "no field is set".to_string()
        } else {
            format!("only unknown fields ({})", unknown.join(", "))
        }));
    }
    // Next to a known field, an unknown one cannot come from a newer API version (which also
    // allows one field per peer): it is a mistake, rejected like any other unknown field.
    known_fields(m, allowed, f)?;
    let (field, v) = exactly_one(m, allowed, f)?;
    let vf = format!("{f}.{field}");
    let peer = match field {
        "namespaces" => PeerRead::Peer(AdminPeer::Namespaces(selector(v, &vf)?), "namespaces"),
        "pods" => {
            let (namespace_selector, pod_selector) = namespaced_pod(v, &vf)?;
            let pods = AdminPeer::Pods {
                namespace_selector,
                pod_selector,
            };
            PeerRead::Peer(pods, "pods")
        }
        "nodes" => PeerRead::Peer(AdminPeer::Nodes(selector(v, &vf)?), "nodes"),
        "networks" => PeerRead::Peer(AdminPeer::Networks(networks(v, &vf, warnings)?), "networks"),
        _ => {
            domain_names(v, &vf)?;
            let mut msg = "domain names are not resolved by policyc; this peer matches nothing".to_string();
            if action != AdminAction::Accept {
                msg.push_str(&format!(
                    " (the API supports domainNames in Accept rules only, not in {action} rules)"
                ));
            }
            warnings.push(ferr(&vf, msg));
            PeerRead::Peer(AdminPeer::Nothing, "domainNames")
        }
    };
    Ok(peer)
}

/// The list of an address peer (`networks`, `domainNames`): 1 to 25 strings.
fn address_list<'a>(v: &'a Value, f: &str) -> FResult<Vec<(String, &'a str)>> {
    let list = v.as_array().ok_or_else(|| ferr(f, "must be a list"))?;
    if list.is_empty() {
        return Err(ferr(f, "must list at least one entry"));
    }
    if list.len() > MAX_ADDRESS_ITEMS {
        return Err(ferr(
            f,
            format!("at most {MAX_ADDRESS_ITEMS} entries are allowed, found {}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let ef = format!("{f}[{i}]");
            let s = e.as_str().ok_or_else(|| ferr(&ef, "must be a string"))?;
            Ok((ef, s))
        })
        .collect()
}

fn networks(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<Vec<Cidr>> {
    let mut out = Vec::new();
    for (ef, s) in address_list(v, f)? {
        // Both API versions reject IPv4 addresses written inside IPv6 ones (`::ffff:10.0.0.0/104`).
        if s.contains(':') && s.contains('.') {
            return Err(ferr(
                ef,
                format!("invalid CIDR {s:?}: IPv4 addresses embedded in IPv6 ones are not supported"),
            ));
        }
        let (c, fixed) = Cidr::parse_lenient(s).map_err(|e| ferr(&ef, e.to_string()))?;
        if fixed {
            warnings.push(ferr(&ef, format!("{s:?} has host bits set; using {c}")));
        }
        out.push(c);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks domain names against the API's pattern: an optional `*.` prefix, then at least two
/// labels of letters, digits, `-` and `_` (not at either end of a label), and an optional final dot.
fn domain_names(v: &Value, f: &str) -> FResult<()> {
    for (ef, s) in address_list(v, f)? {
        let name = s.strip_prefix("*.").unwrap_or(s);
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&str> = name.split('.').collect();
        let label_ok = |l: &&str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(ferr(
                ef,
                format!("invalid domain name {s:?}: expected a name like example.com or *.example.com"),
            ));
        }
    }
    Ok(())
}

/// A named port carries no protocol in the admin APIs: it matches a container port of that name
/// whatever its protocol, so it stands for the name under each protocol.
fn named_port_specs(v: &Value, f: &str) -> FResult<Vec<PortSpec>> {
    let name = v.as_str().ok_or_else(|| ferr(f, "must be a string"))?;
    validate_port_name(name).map_err(|m| ferr(f, m))?;
    Ok(Protocol::ALL
        .iter()
        .map(|&protocol| PortSpec {
            protocol,
            port: PortRef::Named(name.to_string()),
        })
        .collect())
}

/// A required port number field.
fn req_port(m: &Map<String, Value>, key: &str, f: &str) -> FResult<u16> {
    let kf = join(f, key);
    port_number(m.get(key), &kf)?.ok_or_else(|| ferr(kf, "required"))
}

/// `start`/`end` of a port range: both required, start below end.
fn port_range(m: &Map<String, Value>, f: &str) -> FResult<PortRef> {
    let first = req_port(m, "start", f)?;
    let last = req_port(m, "end", f)?;
    if first >= last {
        return Err(ferr(
            join(f, "end"),
            format!("end {last} must be greater than start {first}"),
        ));
    }
    Ok(PortRef::Range { first, last })
}

/// One v1alpha2 `protocols` entry. Also returns the field path of a named port, if it is one.
fn cnp_protocol(v: &Value, f: &str) -> FResult<(Vec<PortSpec>, Option<String>)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, CNP_PROTOCOL_FIELDS, f)?;
    let (key, v) = exactly_one(m, CNP_PROTOCOL_FIELDS, f)?;
    let kf = format!("{f}.{key}");
    let protocol = match key {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return Ok((named_port_specs(v, &kf)?, Some(kf))),
    };
    let pm = v.as_object().ok_or_else(|| ferr(&kf, "must be a mapping"))?;
    known_fields(pm, CNP_PROTOCOL_MATCH_FIELDS, &kf)?;
    let df = format!("{kf}.destinationPort");
    let dm = req_map(pm, "destinationPort", &kf)?;
    known_fields(dm, CNP_PORT_FIELDS, &df)?;
    let port = match exactly_one(dm, CNP_PORT_FIELDS, &df)? {
        ("number", _) => {
            let n = req_port(dm, "number", &df)?;
            PortRef::Range { first: n, last: n }
        }
        (_, rv) => {
            let rf = format!("{df}.range");
            let rm = rv.as_object().ok_or_else(|| ferr(&rf, "must be a mapping"))?;
            known_fields(rm, CNP_RANGE_FIELDS, &rf)?;
            port_range(rm, &rf)?
        }
    };
    Ok((vec![PortSpec { protocol, port }], None))
}

/// One v1alpha1 `ports` entry. Also returns the field path of a named port, if it is one.
fn anp_port(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<(Vec<PortSpec>, Option<String>)> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, ANP_PORT_FIELDS, f)?;
    let (key, v) = exactly_one(m, ANP_PORT_FIELDS, f)?;
    let kf = format!("{f}.{key}");
    if key == "namedPort" {
        return Ok((named_port_specs(v, &kf)?, Some(kf)));
    }
    let pm = v.as_object().ok_or_else(|| ferr(&kf, "must be a mapping"))?;
    let spec = if key == "portNumber" {
        known_fields(pm, ANP_PORT_NUMBER_FIELDS, &kf)?;
        let n = req_port(pm, "port", &kf)?;
        PortSpec {
            protocol: protocol(pm, &kf)?,
            port: PortRef::Range { first: n, last: n },
        }
    } else {
        known_fields(pm, ANP_PORT_RANGE_FIELDS, &kf)?;
        // v1alpha1 does not require start < end (the API server stores such ranges): start = end
        // is that one port, and start > end is empty.
        let first = req_port(pm, "start", &kf)?;
        let last = req_port(pm, "end", &kf)?;
        let protocol = protocol(pm, &kf)?;
        if first > last {
            warnings.push(ferr(
                join(&kf, "end"),
                format!("end {last} is below start {first}: this range matches no port"),
            ));
            return Ok((Vec::new(), None));
        }
        PortSpec {
            protocol,
            port: PortRef::Range { first, last },
        }
    };
    Ok((vec![spec], None))
}
