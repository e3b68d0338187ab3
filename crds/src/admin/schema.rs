//! Schema pieces the derive cannot produce from the Rust types alone: the apiserver's own shapes
//! (label selectors, conditions), which k8s-openapi carries without their list and map types, and
//! string lists whose items are validated one by one.

use schemars::{json_schema, Schema, SchemaGenerator};

/// A `metav1.LabelSelector`, atomic as the apiserver declares it: server-side apply replaces a
/// selector whole instead of merging two owners' terms into one that neither wrote.
pub fn label_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "properties": {
            "matchExpressions": {
                "description": "Requirements on labels, ANDed.",
                "type": "array",
                "items": {
                    "description": "One requirement: a key, an operator and the values it relates them to.",
                    "type": "object",
                    "properties": {
                        "key": {
                            "description": "The label key the requirement applies to.",
                            "type": "string",
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                        },
                        "values": {
                            "description": "Non-empty for In and NotIn, empty for Exists and DoesNotExist.",
                            "type": "array",
                            "items": { "type": "string" },
                            "x-kubernetes-list-type": "atomic",
                        },
                    },
                    "required": ["key", "operator"],
                },
                "x-kubernetes-list-type": "atomic",
            },
            "matchLabels": {
                "description": "Labels that must all be present with these values; ANDed with matchExpressions.",
                "type": "object",
                "additionalProperties": { "type": "string" },
            },
        },
        "x-kubernetes-map-type": "atomic",
    })
}

/// `status.conditions`: a list of `metav1.Condition` keyed by type, validated as the apiserver
/// validates its own conditions.
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "description": "One aspect of the policy's state, as an implementation reports it.",
            "type": "object",
            "properties": {
                "lastTransitionTime": {
                    "description": "When the status last changed.",
                    "type": "string",
                    "format": "date-time",
                },
                "message": {
                    "description": "Human-readable details; may be empty.",
                    "type": "string",
                    "maxLength": 32768,
                },
                "observedGeneration": {
                    "description": "The metadata.generation the condition was computed from.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                },
                "reason": {
                    "description": "Why the status last changed, in CamelCase.",
                    "type": "string",
                    "maxLength": 1024,
                    "minLength": 1,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                },
                "type": {
                    "description": "The condition's type, in CamelCase or as foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                },
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        },
        "x-kubernetes-list-map-keys": ["type"],
        "x-kubernetes-list-type": "map",
    })
}

/// Marks `protocol` required, as upstream does for a port number's protocol. The apiserver defaults
/// it before checking, so only the stored form changes; the Rust type still defaults a missing
/// protocol to TCP, so that files written by hand parse as the apiserver would store them.
pub fn require_protocol(schema: &mut Schema) {
    if let Some(serde_json::Value::Array(required)) = schema.get_mut("required") {
        if !required.iter().any(|r| r == "protocol") {
            required.push("protocol".into());
        }
    }
}

/// `networks`: 1 to 25 distinct CIDRs, IPv4 or IPv6, each checked by the apiserver's `isCIDR`.
pub fn networks(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "description": "An address range in CIDR notation, such as 10.0.0.0/8 or fd00::/8.",
            "type": "string",
            "maxLength": 43,
            "x-kubernetes-validations": [
                { "message": "Invalid CIDR format provided", "rule": "isCIDR(self)" },
            ],
        },
        "maxItems": 25,
        "minItems": 1,
        "x-kubernetes-list-type": "set",
    })
}

/// The domain-name pattern of `v1alpha1`, kept byte for byte: its `A-z` ranges (where `A-Z` was
/// meant) also admit `[`, `\`, `]`, `^`, `_` and `` ` `` as the first or last character of a label.
const DOMAIN_NAME_V1ALPHA1: &str =
    r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$";

/// The domain-name pattern of `v1alpha2`.
const DOMAIN_NAME_V1ALPHA2: &str =
    r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$";

fn domain_names(pattern: &str) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "description": "A domain name, matched exactly (kubernetes.io) or, with a leading `*.`, any name \
                            one or more labels below it (*.kubernetes.io matches www.kubernetes.io and \
                            a.b.kubernetes.io, not kubernetes.io).",
            "type": "string",
            "pattern": pattern,
        },
        "maxItems": 25,
        "minItems": 1,
        "x-kubernetes-list-type": "set",
    })
}

/// `domainNames` of `v1alpha1`: 1 to 25 distinct names.
pub fn domain_names_v1alpha1(_: &mut SchemaGenerator) -> Schema {
    domain_names(DOMAIN_NAME_V1ALPHA1)
}

/// `domainNames` of `v1alpha2`: 1 to 25 distinct names.
pub fn domain_names_v1alpha2(_: &mut SchemaGenerator) -> Schema {
    domain_names(DOMAIN_NAME_V1ALPHA2)
}
