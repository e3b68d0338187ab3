//! policyc's node agent: keeps the kernel's nftables ruleset equal to what the cluster's policies
//! say, on one node.
//!
//! ```text
//!  kube watchers ─► index ─► agent (debounce, compile, apply) ─► policyc_dataplane (nftnl, one batch)
//!                                   ├─► policyc_dataplane::conntrack (cut flows now denied)
//!                                   ├─► status (NodePolicyStatus)
//!                                   └─► metrics + health (HTTP)
//!  policyc_dataplane::nflog ─► flows (verdict points, merged records) ─► /flows, --flow-log, metrics
//!  own Pod ─► its DaemonSet (watched) ─► uninstall: on SIGTERM, remove the ruleset if it is deleted
//! ```

pub mod agent;
pub mod attach;
pub mod flows;
pub mod http;
pub mod index;
pub mod metrics;
pub mod status;
pub mod uninstall;
