//! Content-derived names: stable across runs and nodes, short enough for the kernel's limits.

use sha1::Digest as _;

use crate::model::*;

/// First 12 hex digits of the SHA-256 of `s`: stable, content-derived names.
pub fn short_hash(s: &str) -> String {
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The host-side veth name Calico's CNI plugin gives a pod: prefix + 11 hex digits of
/// SHA-1(`namespace.name`).
pub fn interface_name(prefix: &str, pod: &ObjectRef) -> String {
    let d = sha1::Sha1::digest(format!("{}.{}", pod.namespace, pod.name).as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("{prefix}{}", &hex[..11]);
    name.truncate(15);
    name
}

/// Name of a policy's chain for a direction.
pub fn policy_chain_name(policy: &ObjectRef, d: Direction) -> String {
    format!("np_{}_{}", short_hash(&policy.to_string()), d.suffix())
}

#[cfg(test)]
mod tests {
    use sha1::Digest as _;

    use super::*;

    #[test]
    fn calico_interface_names() {
        // Calico's CNI plugin: "cali" + first 11 hex digits of sha1("<namespace>.<pod>").
        let name = interface_name("cali", &ObjectRef::new("default", "nginx"));
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        let d = sha1::Sha1::digest(b"default.nginx");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&name[4..], &hex[..11]);
    }
}
