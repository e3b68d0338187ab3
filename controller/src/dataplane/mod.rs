//! The dataplane writer: programs the kernel's `table inet policyc` for an [`Ir`].
//!
//! ```text
//!  Ir ──plan──► Ruleset (objects in nft's creation order) ──nl──► one netlink batch ──socket──► kernel
//!                                                                  (table, chains, sets,
//!                                                                   elements, rules)
//! ```
//!
//! [`NetlinkWriter`] talks to nf_tables directly (libnftnl through the `nftnl` crate), without
//! running `nft`. Its result is the ruleset that loading
//! `policyc_compiler::render::nft::render(&ir, true)` with `nft -f` gives: same table, sets,
//! maps, chains, hooks, priorities, rules, expressions, counters, comments, set userdata and
//! element order, so `nft list table inet policyc` prints the same text either way.
//!
//! * [`Dataplane::replace`] sends one batch: add the table (so that deleting it cannot fail),
//!   delete it, then create everything anew. The kernel commits the batch as one transaction:
//!   packets see the old ruleset or the new one, never a mix, and a rejected batch leaves the
//!   old ruleset in place.
//! * [`Dataplane::update_elements`] sends only set and map element deletions and additions when
//!   two IRs differ in nothing else (the usual case when pods come and go), also as one batch.
//!   Interval sets and maps (ipBlock sets, the admin tiers' verdict maps) are never updated
//!   element by element: a change in them takes a replace (see `plan::element_deltas`).
//! * [`Dataplane::remove`] deletes the table.
//!
//! The kernel acknowledges every message; an error names the first rejected object and the
//! kernel's errno ([`DataplaneError::Rejected`]).
//!
//! # Unsafe code
//!
//! The workspace denies `unsafe`. Only the `nl` submodule (the netlink encoding) allows it, for the few
//! libnftnl calls the `nftnl` crate does not wrap; its module documentation states the safety
//! contract and every unsafe block carries a `SAFETY` comment. Everything else here is safe Rust:
//! the socket goes through `nix`, and answers are parsed from bytes.

mod iptables;
mod nl;
mod plan;
mod socket;

pub use self::iptables::IptablesRestore;

use std::io;
use std::path::{Path, PathBuf};

use policyc_compiler::Ir;

use self::plan::Ruleset;
use self::socket::NlSocket;

/// Name of the table the writer owns (in the `inet` family).
pub use policyc_compiler::render::nft::TABLE;

/// What one transaction sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Netlink messages in the batch, not counting its begin and end markers.
    pub messages: usize,
    /// Bytes written to the kernel.
    pub bytes: usize,
    /// Chains created.
    pub chains: usize,
    /// Rules created.
    pub rules: usize,
    /// Named sets and maps created, plus anonymous sets.
    pub sets: usize,
    /// Set and map elements added.
    pub elements_added: usize,
    /// Set and map elements deleted.
    pub elements_removed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot enter network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("netlink socket: {op} failed")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("kernel rejected {object} (errno {errno}){}", more(*more_errors))]
    Rejected {
        /// The first rejected message, e.g. `rule 3 of chain np_0123456789ab_in`.
        object: String,
        /// Positive errno.
        errno: i32,
        /// Further messages the kernel rejected in the same batch (often consequences of the
        /// first).
        more_errors: usize,
        #[source]
        source: io::Error,
    },
    #[error("kernel answered only {} of {messages} messages", messages - missing)]
    Unanswered { missing: usize, messages: usize },
    #[error("cannot express in nf_tables: {0}")]
    Unrepresentable(String),
}

fn more(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" and {n} more message(s)"),
    }
}

impl DataplaneError {
    /// The kernel's errno when the kernel rejected the batch.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Rejected { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Something that makes the kernel's ruleset match an IR.
pub trait Dataplane {
    /// Atomically replaces the whole ruleset with the one for `ir`.
    fn replace(&mut self, ir: &Ir) -> Result<ApplyStats, DataplaneError>;

    /// Atomically turns the ruleset for `old` (which the kernel must hold) into the one for `new`
    /// by adding and deleting set and map elements only. Returns `Ok(None)`, sending nothing,
    /// when the two differ in anything else (chains, rules, sets themselves, elements of an
    /// interval set or map): use [`Dataplane::replace`] then. Fails, changing nothing, when the
    /// kernel's elements are not those of `old`.
    fn update_elements(&mut self, old: &Ir, new: &Ir) -> Result<Option<ApplyStats>, DataplaneError>;

    /// Deletes the ruleset; succeeds when there is none.
    fn remove(&mut self) -> Result<(), DataplaneError>;

    /// Brings the kernel from `current` (what was last applied, if known) to `new`: element
    /// updates when they suffice, otherwise (or if they fail) a full replace.
    fn apply(&mut self, current: Option<&Ir>, new: &Ir) -> Result<ApplyStats, DataplaneError> {
        if let Some(old) = current {
            if let Ok(Some(stats)) = self.update_elements(old, new) {
                return Ok(stats);
            }
        }
        self.replace(new)
    }
}

/// Programs nf_tables over netlink, in the current network namespace or in another one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetlinkWriter {
    netns: Option<PathBuf>,
}

impl NetlinkWriter {
    /// A writer for the caller's network namespace.
    pub fn new() -> NetlinkWriter {
        NetlinkWriter { netns: None }
    }

    /// A writer for the network namespace at `path`, e.g. `/run/netns/NAME` or
    /// `/proc/PID/ns/net`. Each transaction opens its socket from a short-lived thread that
    /// enters the namespace; the calling thread never changes namespace.
    pub fn in_netns(path: impl Into<PathBuf>) -> NetlinkWriter {
        NetlinkWriter {
            netns: Some(path.into()),
        }
    }

    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn send(&self, enc: &nl::Encoded) -> Result<(), DataplaneError> {
        NlSocket::open(self.netns.as_deref())?.transact(enc)
    }
}

impl Dataplane for NetlinkWriter {
    fn replace(&mut self, ir: &Ir) -> Result<ApplyStats, DataplaneError> {
        let rs = Ruleset::from_ir(ir)?;
        let enc = nl::encode_replace(&rs)?;
        self.send(&enc)?;
        Ok(ApplyStats {
            messages: enc.what.len(),
            bytes: enc.len(),
            chains: rs.chains.len(),
            rules: rs.rule_count(),
            sets: rs.sets.len() + rs.anon_set_count(),
            elements_added: rs.element_count(),
            elements_removed: 0,
        })
    }

    fn update_elements(&mut self, old: &Ir, new: &Ir) -> Result<Option<ApplyStats>, DataplaneError> {
        let (old, new) = (Ruleset::from_ir(old)?, Ruleset::from_ir(new)?);
        let Some(deltas) = plan::element_deltas(&old, &new) else {
            return Ok(None);
        };
        let mut stats = ApplyStats {
            elements_added: deltas.iter().map(|d| d.add.len()).sum(),
            elements_removed: deltas.iter().map(|d| d.remove.len()).sum(),
            ..ApplyStats::default()
        };
        if deltas.is_empty() {
            return Ok(Some(stats));
        }
        let enc = nl::encode_elements(&deltas)?;
        self.send(&enc)?;
        stats.messages = enc.what.len();
        stats.bytes = enc.len();
        Ok(Some(stats))
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.send(&nl::encode_remove())
    }
}
