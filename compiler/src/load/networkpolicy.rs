//! NetworkPolicy (`networking.k8s.io/v1`): its spec, rules, peers, ipBlocks and ports, validated as
//! strictly as the API server does.

use serde_json::{Map, Value};

use super::core::Meta;
use super::diagnostic::{ferr, FResult, FieldError};
use super::field::{known_fields, opt_list, opt_selector, port_number, protocol, req_map, req_str, validate_port_name};
use crate::cidr::Cidr;
use crate::model::*;

const SPEC_FIELDS: &[&str] = &["podSelector", "policyTypes", "ingress", "egress"];
const INGRESS_FIELDS: &[&str] = &["from", "ports"];
const EGRESS_FIELDS: &[&str] = &["to", "ports"];
const PEER_FIELDS: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];
const IPBLOCK_FIELDS: &[&str] = &["cidr", "except"];

pub(super) fn parse_policy(
    obj: &Map<String, Value>,
    meta: Meta,
    warnings: &mut Vec<FieldError>,
) -> FResult<NetworkPolicy> {
    let spec = req_map(obj, "spec", "")?;
    known_fields(spec, SPEC_FIELDS, "spec")?;
    // A missing podSelector decodes to the empty selector in the API server: all pods.
    let pod_selector = opt_selector(spec.get("podSelector"), "spec.podSelector")?.unwrap_or_default();
    let ingress = rules(spec, Direction::Ingress, warnings)?;
    let egress = rules(spec, Direction::Egress, warnings)?;
    let mut policy_types = Vec::new();
    let types = opt_list(spec, "policyTypes", "spec")?;
    for (i, t) in types.iter().enumerate() {
        let f = format!("spec.policyTypes[{i}]");
        policy_types.push(match t.as_str() {
            Some("Ingress") => Direction::Ingress,
            Some("Egress") => Direction::Egress,
            _ => {
                return Err(ferr(
                    f,
                    format!("invalid policy type {t} (expected \"Ingress\" or \"Egress\")"),
                ))
            }
        });
    }
    if types.is_empty() {
        // The API's default: Ingress always, Egress when egress rules are present.
        policy_types.push(Direction::Ingress);
        if !egress.is_empty() {
            policy_types.push(Direction::Egress);
        }
    }
    policy_types.sort();
    policy_types.dedup();
    for d in [Direction::Ingress, Direction::Egress] {
        let present = match d {
            Direction::Ingress => !ingress.is_empty(),
            Direction::Egress => !egress.is_empty(),
        };
        if present && !policy_types.contains(&d) {
            warnings.push(ferr(
                format!("spec.{d}"),
                format!("has rules but policyTypes does not list {d:?}; these rules have no effect"),
            ));
        }
    }
    Ok(NetworkPolicy {
        namespace: meta.namespace,
        name: meta.name,
        generation: meta.generation,
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn rules(spec: &Map<String, Value>, d: Direction, warnings: &mut Vec<FieldError>) -> FResult<Vec<Rule>> {
    let (key, peers_key, fields) = match d {
        Direction::Ingress => ("ingress", "from", INGRESS_FIELDS),
        Direction::Egress => ("egress", "to", EGRESS_FIELDS),
    };
    let mut out = Vec::new();
    for (i, r) in opt_list(spec, key, "spec")?.iter().enumerate() {
        let rf = format!("spec.{key}[{i}]");
        let r = match r {
            Value::Null => {
                out.push(Rule::default());
                continue;
            }
            Value::Object(m) => m,
            _ => return Err(ferr(rf, "must be a mapping")),
        };
        known_fields(r, fields, &rf)?;
        let mut peers = Vec::new();
        for (pi, p) in opt_list(r, peers_key, &rf)?.iter().enumerate() {
            peers.push(peer(p, &format!("{rf}.{peers_key}[{pi}]"), warnings)?);
        }
        let mut ports = Vec::new();
        for (pi, p) in opt_list(r, "ports", &rf)?.iter().enumerate() {
            ports.push(port_spec(p, &format!("{rf}.ports[{pi}]"))?);
        }
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

fn peer(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<Peer> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, PEER_FIELDS, f)?;
    let pod_selector = opt_selector(m.get("podSelector"), &format!("{f}.podSelector"))?;
    let namespace_selector = opt_selector(m.get("namespaceSelector"), &format!("{f}.namespaceSelector"))?;
    match m.get("ipBlock").filter(|v| !v.is_null()) {
        Some(b) => {
            if pod_selector.is_some() || namespace_selector.is_some() {
                return Err(ferr(
                    f,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            Ok(Peer::IpBlock(ip_block(b, &format!("{f}.ipBlock"), warnings)?))
        }
        None if pod_selector.is_none() && namespace_selector.is_none() => Err(ferr(
            f,
            "a peer must set at least one of podSelector, namespaceSelector or ipBlock",
        )),
        None => Ok(Peer::Pods {
            namespace_selector,
            pod_selector,
        }),
    }
}

fn ip_block(v: &Value, f: &str, warnings: &mut Vec<FieldError>) -> FResult<IpBlock> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, IPBLOCK_FIELDS, f)?;
    let cidr_s = req_str(m, "cidr", f)?;
    let cf = format!("{f}.cidr");
    let (cidr, fixed) = Cidr::parse_lenient(cidr_s).map_err(|e| ferr(&cf, e.to_string()))?;
    if fixed {
        warnings.push(ferr(&cf, format!("{cidr_s:?} has host bits set; using {cidr}")));
    }
    let mut except = Vec::new();
    for (i, e) in opt_list(m, "except", f)?.iter().enumerate() {
        let ef = format!("{f}.except[{i}]");
        let s = e.as_str().ok_or_else(|| ferr(&ef, "must be a string"))?;
        let (c, fixed) = Cidr::parse_lenient(s).map_err(|e| ferr(&ef, e.to_string()))?;
        if fixed {
            warnings.push(ferr(&ef, format!("{s:?} has host bits set; using {c}")));
        }
        if !cidr.strictly_contains(&c) {
            return Err(ferr(ef, format!("{c} must be a strict subset of cidr {cidr}")));
        }
        except.push(c);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr, except })
}

fn port_spec(v: &Value, f: &str) -> FResult<PortSpec> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping"))?;
    known_fields(m, PORT_FIELDS, f)?;
    let protocol = protocol(m, f)?;
    let pf = format!("{f}.port");
    let end_port = port_number(m.get("endPort"), &format!("{f}.endPort"))?;
    let port = match m.get("port") {
        None | Some(Value::Null) => {
            if end_port.is_some() {
                return Err(ferr(format!("{f}.endPort"), "endPort requires a numeric port"));
            }
            PortRef::All
        }
        Some(Value::String(s)) => {
            if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
                return Err(ferr(
                    pf,
                    format!("{s:?} is a string: write the number without quotes, or use a port name"),
                ));
            }
            validate_port_name(s).map_err(|m| ferr(&pf, m))?;
            if end_port.is_some() {
                return Err(ferr(
                    format!("{f}.endPort"),
                    format!("endPort cannot be used with the named port {s:?}"),
                ));
            }
            PortRef::Named(s.clone())
        }
        Some(v) => {
            let first = port_number(Some(v), &pf)?.unwrap_or(0);
            let last = end_port.unwrap_or(first);
            if last < first {
                return Err(ferr(
                    format!("{f}.endPort"),
                    format!("endPort {last} is below port {first}"),
                ));
            }
            PortRef::Range { first, last }
        }
    };
    Ok(PortSpec { protocol, port })
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use crate::load::Severity;
    use crate::model::*;

    fn policy_error(spec: &str) -> String {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}"
        );
        let (snap, diags) = load(&text);
        assert!(snap.policies.is_empty(), "policy should be rejected: {spec}");
        let errors: Vec<_> = diags.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{diags:?}");
        errors[0].to_string()
    }

    #[test]
    fn bad_policies_name_object_and_field() {
        let cases = [
            (
                "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0/8}\n",
                "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR",
            ),
            (
                "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n",
                "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 must be a strict subset",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n",
                "spec.podSelector.matchExpressions[0].operator: unknown operator \"Equals\"",
            ),
            (
                "  egress:\n  - ports: [{port: 90, endPort: 80}]\n",
                "spec.egress[0].ports[0].endPort: endPort 80 is below port 90",
            ),
            (
                "  egress:\n  - ports: [{port: http, endPort: 80}]\n",
                "spec.egress[0].ports[0].endPort: endPort cannot be used with the named port",
            ),
            (
                "  ingress:\n  - form: [{podSelector: {}}]\n",
                "spec.ingress[0].form: unknown field",
            ),
            (
                "  ingress:\n  - ports: [{port: 80, protocol: ICMP}]\n",
                "spec.ingress[0].ports[0].protocol: unsupported protocol",
            ),
            ("  policyTypes: [ingress]\n", "spec.policyTypes[0]: invalid policy type"),
            (
                "  ingress:\n  - from: [{}]\n",
                "spec.ingress[0].from[0]: a peer must set at least one",
            ),
        ];
        for (spec, want) in cases {
            let got = policy_error(spec);
            assert!(got.contains("NetworkPolicy x/p"), "{got}");
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn policy_types_default() {
        let (snap, _) = load(
            "kind: List\napiVersion: v1\nitems:\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a}, spec: {podSelector: {}}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: b}, spec: {egress: [{}]}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: c}, spec: {egress: []}}\n\
             - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: d}, spec: {policyTypes: [Egress, Ingress, Egress]}}\n",
        );
        let types = |n: &str| snap.policies[&ObjectRef::new("default", n)].policy_types.clone();
        assert_eq!(types("a"), vec![Direction::Ingress]);
        assert_eq!(types("b"), vec![Direction::Ingress, Direction::Egress]);
        assert_eq!(types("c"), vec![Direction::Ingress]);
        assert_eq!(types("d"), vec![Direction::Ingress, Direction::Egress]);
    }
}
