//! The core API's objects: the metadata every kind carries, Nodes and Pods. (A Namespace is its
//! metadata; [`parse_object`](super::parse_object) builds it directly.)

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::diagnostic::{ferr, FResult};
use super::field::{opt_list, opt_map, opt_str, port_number, protocol, req_map, req_str, string_map};
use super::object::Kind;
use crate::cidr::Cidr;
use crate::model::*;

/// `metadata`: what the loader reads of it.
pub(super) struct Meta {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) labels: Labels,
    pub(super) generation: Option<i64>,
}

impl Meta {
    pub(super) fn parse(obj: &Map<String, Value>, kind: Kind) -> FResult<Meta> {
        let m = req_map(obj, "metadata", "")?;
        let name = req_str(m, "name", "metadata")?;
        if name.is_empty() {
            return Err(ferr("metadata.name", "must not be empty"));
        }
        let namespace = match opt_str(m, "namespace", "metadata")? {
            Some(ns) if kind.namespaced() => ns.to_string(),
            _ if kind.namespaced() => "default".to_string(),
            _ => String::new(),
        };
        let labels = match m.get("labels") {
            None | Some(Value::Null) => Labels::new(),
            Some(v) => string_map(v, "metadata.labels")?,
        };
        let generation = match m.get("generation") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| ferr("metadata.generation", "must be an integer"))?,
            ),
        };
        Ok(Meta {
            name: name.to_string(),
            namespace,
            labels,
            generation,
        })
    }
}

pub(super) fn parse_node(obj: &Map<String, Value>, meta: Meta) -> FResult<Node> {
    let mut internal_ips = Vec::new();
    let mut addresses = Vec::new();
    let mut pod_cidrs = Vec::new();
    if let Some(spec) = opt_map(obj, "spec", "")? {
        let mut cidrs: Vec<(String, &Value)> = Vec::new();
        if let Some(v) = spec.get("podCIDR").filter(|v| !v.is_null()) {
            cidrs.push(("spec.podCIDR".into(), v));
        }
        for (i, v) in opt_list(spec, "podCIDRs", "spec")?.iter().enumerate() {
            cidrs.push((format!("spec.podCIDRs[{i}]"), v));
        }
        for (field, v) in cidrs {
            let s = v.as_str().ok_or_else(|| ferr(&field, "must be a string"))?;
            let c: Cidr = s.parse().map_err(|e| ferr(&field, format!("{e}")))?;
            if !pod_cidrs.contains(&c) {
                pod_cidrs.push(c);
            }
        }
    }
    if let Some(status) = opt_map(obj, "status", "")? {
        for (i, a) in opt_list(status, "addresses", "status")?.iter().enumerate() {
            let f = format!("status.addresses[{i}]");
            let a = a.as_object().ok_or_else(|| ferr(&f, "must be a mapping"))?;
            let internal = opt_str(a, "type", &f)? == Some("InternalIP");
            let addr = match opt_str(a, "address", &f)? {
                Some(addr) => addr,
                None if internal => return Err(ferr(format!("{f}.address"), "required")),
                None => continue,
            };
            let ip = match addr.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) if internal => {
                    return Err(ferr(format!("{f}.address"), format!("invalid IP address {addr:?}")));
                }
                // Hostname, InternalDNS, ExternalDNS: names, not addresses.
                Err(_) => continue,
            };
            if internal && !internal_ips.contains(&ip) {
                internal_ips.push(ip);
            }
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(Node {
        name: meta.name,
        labels: meta.labels,
        addresses,
        internal_ips,
        pod_cidrs,
    })
}

pub(super) fn parse_pod(obj: &Map<String, Value>, meta: Meta) -> FResult<Pod> {
    let mut node = None;
    let mut host_network = false;
    let mut ports = Vec::new();
    if let Some(spec) = opt_map(obj, "spec", "")? {
        node = opt_str(spec, "nodeName", "spec")?.map(str::to_string);
        host_network = match spec.get("hostNetwork") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ferr("spec.hostNetwork", "must be true or false"))?,
        };
        let mut names = BTreeSet::new();
        for (ci, c) in opt_list(spec, "containers", "spec")?.iter().enumerate() {
            let cf = format!("spec.containers[{ci}]");
            let c = c.as_object().ok_or_else(|| ferr(&cf, "must be a mapping"))?;
            for (pi, p) in opt_list(c, "ports", &cf)?.iter().enumerate() {
                let pf = format!("{cf}.ports[{pi}]");
                let p = p.as_object().ok_or_else(|| ferr(&pf, "must be a mapping"))?;
                let port = port_number(p.get("containerPort"), &format!("{pf}.containerPort"))?
                    .ok_or_else(|| ferr(format!("{pf}.containerPort"), "required"))?;
                let protocol = protocol(p, &pf)?;
                let name = opt_str(p, "name", &pf)?.map(str::to_string);
                if let Some(n) = &name {
                    if !names.insert(n.clone()) {
                        return Err(ferr(
                            format!("{pf}.name"),
                            format!("duplicate port name {n:?} in this pod"),
                        ));
                    }
                }
                ports.push(ContainerPort { name, port, protocol });
            }
        }
    }
    let mut phase = None;
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = opt_map(obj, "status", "")? {
        phase = opt_str(status, "phase", "status")?.map(str::to_string);
        let mut raw: Vec<(String, &str)> = Vec::new();
        for (i, v) in opt_list(status, "podIPs", "status")?.iter().enumerate() {
            let f = format!("status.podIPs[{i}]");
            let v = v.as_object().ok_or_else(|| ferr(&f, "must be a mapping with an ip"))?;
            raw.push((format!("{f}.ip"), req_str(v, "ip", &f)?));
        }
        if raw.is_empty() {
            if let Some(ip) = opt_str(status, "podIP", "status")? {
                raw.push(("status.podIP".into(), ip));
            }
        }
        for (f, s) in raw {
            let ip: IpAddr = s.parse().map_err(|_| ferr(f, format!("invalid IP address {s:?}")))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Ok(Pod {
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        node,
        host_network,
        phase,
        ips,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use crate::model::*;

    #[test]
    fn pod_fields() {
        let (snap, diags) = load(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: web}}\n\
             spec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n    - {name: dns, containerPort: 53, protocol: UDP}\n\
             status:\n  phase: Running\n  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let p = &snap.pods[&ObjectRef::new("x", "p")];
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(p.named_port("dns", Protocol::Tcp), None);
        assert_eq!(p.named_port("dns", Protocol::Udp), Some(53));
        assert!(p.is_endpoint());
    }
}
