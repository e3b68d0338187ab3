//! Reading fields: typed access by JSON path (every error names the field), strict field sets,
//! and the values several kinds spell alike (label selectors, protocols, port numbers and names).

use serde_json::{Map, Value};

use super::diagnostic::{ferr, FResult};
use crate::model::*;

// === Field access ===

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn req_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a str> {
    opt_str(m, key, path)?.ok_or_else(|| ferr(join(path, key), "required"))
}

pub(super) fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ferr(join(path, key), format!("must be a string, got {v}"))),
    }
}

pub(super) fn req_map<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a Map<String, Value>> {
    opt_map(m, key, path)?.ok_or_else(|| ferr(join(path, key), "required"))
}

pub(super) fn opt_map<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<Option<&'a Map<String, Value>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ferr(join(path, key), "must be a mapping")),
    }
}

pub(super) fn opt_list<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> FResult<&'a [Value]> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ferr(join(path, key), "must be a list")),
    }
}

pub(super) fn string_map(v: &Value, f: &str) -> FResult<Labels> {
    let m = v.as_object().ok_or_else(|| ferr(f, "must be a mapping of strings"))?;
    let mut out = Labels::new();
    for (k, v) in m {
        let s = v.as_str().ok_or_else(|| {
            ferr(
                join(f, k),
                format!("must be a string, got {v} (quote numbers and booleans)"),
            )
        })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

/// Unknown fields in a policy are errors, as `kubectl apply` (strict validation) makes them: a
/// misspelt `from` would otherwise silently become "allow from everywhere".
pub(super) fn known_fields(m: &Map<String, Value>, allowed: &[&str], path: &str) -> FResult<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ferr(
                join(path, k),
                format!("unknown field {k:?} (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

// === Values several kinds share ===

const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];
const REQUIREMENT_FIELDS: &[&str] = &["key", "operator", "values"];

pub(super) fn opt_selector(v: Option<&Value>, f: &str) -> FResult<Option<LabelSelector>> {
    let m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ferr(f, "must be a label selector mapping")),
    };
    known_fields(m, SELECTOR_FIELDS, f)?;
    let match_labels = match m.get("matchLabels") {
        None | Some(Value::Null) => Labels::new(),
        Some(v) => string_map(v, &format!("{f}.matchLabels"))?,
    };
    let mut match_expressions = Vec::new();
    for (i, e) in opt_list(m, "matchExpressions", f)?.iter().enumerate() {
        let ef = format!("{f}.matchExpressions[{i}]");
        let e = e.as_object().ok_or_else(|| ferr(&ef, "must be a mapping"))?;
        known_fields(e, REQUIREMENT_FIELDS, &ef)?;
        let key = req_str(e, "key", &ef)?.to_string();
        let op = req_str(e, "operator", &ef)?;
        let operator = match op {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => {
                return Err(ferr(
                    format!("{ef}.operator"),
                    format!("unknown operator {op:?} (expected In, NotIn, Exists or DoesNotExist)"),
                ))
            }
        };
        let mut values = Vec::new();
        for (vi, v) in opt_list(e, "values", &ef)?.iter().enumerate() {
            let s = v.as_str().ok_or_else(|| {
                ferr(
                    format!("{ef}.values[{vi}]"),
                    "must be a string (quote numbers and booleans)",
                )
            })?;
            values.push(s.to_string());
        }
        values.sort();
        values.dedup();
        match (operator, values.is_empty()) {
            (Operator::In | Operator::NotIn, true) => {
                return Err(ferr(
                    format!("{ef}.values"),
                    format!("operator {op} needs at least one value"),
                ))
            }
            (Operator::Exists | Operator::DoesNotExist, false) => {
                return Err(ferr(format!("{ef}.values"), format!("operator {op} takes no values")))
            }
            _ => {}
        }
        match_expressions.push(Requirement { key, operator, values });
    }
    match_expressions.sort();
    match_expressions.dedup();
    Ok(Some(LabelSelector {
        match_labels,
        match_expressions,
    }))
}

/// IANA service name rules, as the API server validates named ports.
pub(super) fn validate_port_name(s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() || s.len() > 15 || !ok_chars {
        return Err(format!(
            "invalid port name {s:?}: at most 15 lowercase letters, digits and '-'"
        ));
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) || s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err(format!(
            "invalid port name {s:?}: needs a letter, no leading, trailing or double '-'"
        ));
    }
    Ok(())
}

pub(super) fn protocol(m: &Map<String, Value>, f: &str) -> FResult<Protocol> {
    match opt_str(m, "protocol", f)? {
        None => Ok(Protocol::Tcp),
        Some(s @ ("TCP" | "UDP" | "SCTP")) => Ok(Protocol::parse(s).expect("known protocol")),
        Some(s) => Err(ferr(
            join(f, "protocol"),
            format!("unsupported protocol {s:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

pub(super) fn port_number(v: Option<&Value>, f: &str) -> FResult<Option<u16>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=65535).contains(&n) => Ok(Some(n as u16)),
            Some(n) => Err(ferr(f, format!("port {n} is out of range 1-65535"))),
            None => Err(ferr(f, format!("must be a port number, got {v}"))),
        },
    }
}
