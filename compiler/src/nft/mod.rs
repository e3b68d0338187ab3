//! The nftables ruleset as one typed model, lowered once from the IR.
//!
//! ```text
//!                       ┌─► print  ─► `nft -f` text           (render, the lab, goldens)
//!  Ir ──lower──► Table ─┤
//!   (every name,        └─► policyc-dataplane: nf_tables netlink batches; in-place updates
//!    order, comment,        are diffs of two Tables (elements, rewritten chains)
//!    verdict)
//! ```
//!
//! `lower` is the only place that decides the layout; the printer and the netlink encoder
//! spell out the same objects, so `nft list` after either is byte-identical (checked in the
//! kernel by `dataplane/tests/netlink.rs`).

mod lower;
pub mod model;
mod np;
mod print;

pub use self::lower::{
    class_map_name, dispatch_map_name, lower, lower_after, lower_bridge, peer_end, set_name, table_map_name,
};
pub use self::model::*;
pub use self::np::{rule_chain_name, MAX_LISTED};
pub use self::print::print;

/// Name of the table policyc owns (in the `inet` family).
pub const TABLE: &str = "policyc";

/// nft accepts 128 bytes, but libnftnl's userdata buffer (what the netlink writer builds with)
/// holds 125: stay within both.
pub const MAX_COMMENT: usize = 125;

/// The longest log prefix: the kernel's `NF_LOG_PREFIXLEN` (128) with its NUL.
pub const MAX_LOG_PREFIX: usize = 127;

/// A comment as the model stores it: sanitized and cut to [`MAX_COMMENT`].
pub fn comment(s: &str) -> String {
    crate::render::sanitize_comment(s, MAX_COMMENT)
}

pub(crate) use crate::render::labels;
