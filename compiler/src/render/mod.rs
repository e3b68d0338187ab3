//! Backends: the IR as text a kernel tool loads.

pub mod iptables;
pub mod nft;
