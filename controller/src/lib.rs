//! policyc's node agent library: keeps the kernel's nftables ruleset in line with the compiled
//! policy IR.

pub mod dataplane;
