//! nftables text: one `table inet policyc`, loadable with `nft -f`: the printer of the model
//! [`crate::nft`] lowers the IR into.
//!
//! ```text
//! table inet policyc
//!  ├── sets        sel_* (pods of a selector pair), cidr_* (ipBlock intervals), port_* (named ports)
//!  ├── maps        ingress_dispatch / egress_dispatch: pod interface → jump ep_<pod>_{in,out}
//!  ├── base chains forward_egress  (forward, filter - 1): cut flow → drop; ct established → accept; iifname vmap
//!  │               forward_ingress (forward, filter):     cut flow → drop; ct established → accept; oifname vmap
//!  │               input_egress    (input,   filter - 1): pod → its own node, egress policy too
//!  ├── ep_<pod>_*  loopback accept; jump adm_* (Admin tier); jump np_* of each selecting
//!  │               NetworkPolicy + counter drop, or else jump bl_* (Baseline tier)
//!  ├── np_<pol>_*  one accept rule per peer × port match, counter + comment "ns/name ingress[i]"
//!  ├── adm_*, bl_* a tier table: `ip saddr vmap @adm_*_v4` (peer address → goto ar_* or pc_*)
//!  ├── pc_*        a port class: `tcp dport vmap @pc_*_tcp` ... (port → goto ar_*)
//!  └── ar_*        one admin rule: counter accept | drop | return (Pass), comment "cnp/x ingress[i]"
//! ```
//!
//! Admin tiers cost a fixed number of lookups per packet however many rules they have: see
//! [`crate::tiers`]. Falling off a tier table (no rule matches, or Pass) returns to the endpoint
//! chain, which goes on with the next tier.
//!
//! An accept in one base chain does not skip the other, and a drop is final: a flow needs both
//! the source's egress and the destination's ingress. Interfaces not in a dispatch map (pods not
//! isolated in that direction, anything else) fall through to `policy accept`.

use crate::ir::{Ir, IrError};

pub use crate::nft::TABLE;

/// Renders the IR as an nft script that creates (or, with `replace`, atomically replaces) the
/// table: [`crate::nft::print`] of [`crate::nft::lower`]. Fails, naming the reference, on an IR
/// whose parts name something it does not hold.
///
/// With the bridge attachment the script also holds `table bridge policyc`
/// ([`crate::nft::lower_bridge`]): the per-port source guard and the drop of bridged pod traffic
/// the `inet` hooks did not see.
pub fn render(ir: &Ir, replace: bool) -> Result<String, IrError> {
    let mut out = crate::nft::print(&crate::nft::lower(ir)?, replace);
    if let Some(bridge) = crate::nft::lower_bridge(ir)? {
        out.push_str(&crate::nft::print(&bridge, replace));
    }
    Ok(out)
}
