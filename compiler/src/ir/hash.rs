//! [`Ir::ruleset_hash`]: one digest of what the kernel holds for an IR.

use sha1::Digest as _;

use super::Ir;

impl Ir {
    /// SHA-256 (hex) of what the kernel holds for this IR: the fail-closed prefix, the
    /// endpoints (with their Admin and Baseline tables), policy chains, sets, admin rules, tier
    /// tables and port classes, in a fixed binary encoding (every field in declaration order,
    /// integers little-endian, lengths before sequences), after the conntrack cut mark and
    /// comment that every ruleset's base chains begin with. Equal hashes mean identical
    /// rulesets; the node name, `policies` and `admin_policies` (generations, selection counts)
    /// are left out, as no rule depends on them. Far cheaper than hashing the rendered text:
    /// nothing is formatted.
    pub fn ruleset_hash(&self) -> String {
        use std::hash::Hash as _;
        let mut h = RulesetHasher(sha2::Sha256::new());
        crate::render::CUT_MARK.hash(&mut h);
        crate::render::CUT_COMMENT.hash(&mut h);
        self.fail_closed.hash(&mut h);
        self.flow_log.hash(&mut h);
        self.attachment.hash(&mut h);
        self.endpoints.hash(&mut h);
        self.chains.hash(&mut h);
        self.sets.hash(&mut h);
        self.port_sets.hash(&mut h);
        self.admin_rules.hash(&mut h);
        self.tier_tables.hash(&mut h);
        self.port_classes.hash(&mut h);
        // The iptables backend loads them as ipsets.
        self.tier_sets.hash(&mut h);
        h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Feeds `Hash` implementations into SHA-256 with a platform-independent encoding.
struct RulesetHasher(sha2::Sha256);

impl std::hash::Hasher for RulesetHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn write_u16(&mut self, v: u16) {
        self.write(&v.to_le_bytes());
    }
    fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    fn write_u128(&mut self, v: u128) {
        self.write(&v.to_le_bytes());
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as i64 as u64);
    }
    /// Not used: the digest is read from the SHA-256 state.
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }
}
