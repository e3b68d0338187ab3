//! policyc's kernel side: programs the kernel's `table inet policyc` for an [`Ir`], loads the
//! iptables rendering instead when asked, cuts the conntrack entries of flows a change denies,
//! reads the rules' counters ([`counters`]), and finds which pod sits behind which port of the
//! node's bridge ([`links`], for the bridge attachment of plain Flannel).
//! No Kubernetes dependency: the agent (`policyc-controller`) drives it, and so can anything that
//! has an [`Ir`].
//!
//! ```text
//!  Ir ──plan──► Ruleset (objects in nft's creation order) ──nl──► one netlink batch ──socket──► kernel
//!                                                                  (table, chains, sets,
//!                                                                   elements, rules)
//! ```
//!
//! [`NetlinkWriter`] talks to nf_tables directly (libnftnl through the `nftnl` crate), without
//! running `nft`. Its result is the ruleset that loading
//! `policyc_compiler::render::nft::render(&ir, true)` with `nft -f` gives, because both spell out
//! the same model (`policyc_compiler::nft::lower`): same table, sets,
//! maps, chains, hooks, priorities, rules, expressions, counters, comments, set userdata and
//! element order, so `nft list table inet policyc` prints the same text either way.
//!
//! * [`Dataplane::replace`] sends one batch: add the table (so that deleting it cannot fail),
//!   delete it, then create everything anew. The kernel commits the batch as one transaction:
//!   packets see the old ruleset or the new one, never a mix, and a rejected batch leaves the
//!   old ruleset in place.
//! * [`Dataplane::update_elements`] sends only set and map element deletions and additions when
//!   two IRs differ in nothing else (the usual case when pods come and go), also as one batch.
//!   Interval sets and maps (ipBlock and `networks` sets, the admin tiers' verdict maps) are
//!   never updated element by element: a change in them takes a replace (see
//!   `plan::in_place_update`).
//! * [`NetlinkWriter`]'s [`Dataplane::apply`] also rewrites changed chains in place (a policy
//!   whose ports or peers change, an admin rule whose action changes) when the table keeps its
//!   chains and sets, so that a change to one policy does not recreate every set element of the
//!   node.
//! * [`Dataplane::remove`] deletes the table.
//!
//! The writer keeps the plan of its last transaction (what the kernel holds), so each sync
//! lowers only the new IR and compares it with that plan, not two IRs.
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

pub mod conntrack;
pub mod counters;
pub mod ctnetlink;
mod iptables;
pub mod links;
mod nl;
mod nla;
mod plan;
mod socket;

pub use self::iptables::IptablesRestore;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use policyc_compiler::Ir;

use policyc_compiler::nft::{lower, lower_after, Table};

use self::plan::{Committed, InPlace, Ruleset};
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
    /// Lowering the IR to nf_tables objects, comparing with what the kernel holds, encoding.
    pub plan_time: Duration,
    /// Sending the batch until the kernel's last answer: the kernel commits in between.
    pub kernel_time: Duration,
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
    #[error("inconsistent IR")]
    Ir(#[from] policyc_compiler::ir::IrError),
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
#[derive(Debug, Default)]
pub struct NetlinkWriter {
    netns: Option<PathBuf>,
    /// Opened on first use and kept across element and in-place batches: closing a netfilter
    /// socket waits for the kernel to free what earlier transactions deleted (an RCU grace
    /// period, about 10 ms), which would otherwise end every batch that deletes a rule.
    socket: Option<NlSocket>,
    /// The plan of this writer's last successful transaction, i.e. what the kernel holds as far
    /// as this writer knows, with the IR parts it came from; forgotten after a failure.
    committed: Option<Committed>,
}

impl NetlinkWriter {
    /// A writer for the caller's network namespace.
    pub fn new() -> NetlinkWriter {
        NetlinkWriter::default()
    }

    /// A writer for the network namespace at `path`, e.g. `/run/netns/NAME` or
    /// `/proc/PID/ns/net`. Each transaction opens its socket from a short-lived thread that
    /// enters the namespace; the calling thread never changes namespace.
    pub fn in_netns(path: impl Into<PathBuf>) -> NetlinkWriter {
        NetlinkWriter {
            netns: Some(path.into()),
            ..NetlinkWriter::default()
        }
    }

    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Sends one batch; returns the time until the kernel's last answer.
    fn send(&mut self, enc: &nl::Encoded) -> Result<Duration, DataplaneError> {
        let t = Instant::now();
        let socket = match self.socket.take() {
            Some(s) => s,
            None => NlSocket::open(self.netns.as_deref())?,
        };
        match socket.transact(enc) {
            Ok(()) => self.socket = Some(socket),
            // The kernel answered: the socket is fine.
            Err(e @ DataplaneError::Rejected { .. }) => {
                self.socket = Some(socket);
                return Err(e);
            }
            // Anything else may leave unread answers behind: the next batch gets a new socket.
            Err(e) => return Err(e),
        }
        Ok(t.elapsed())
    }

    /// Replaces the table with `rs`, the encoding of `table`, planned since `started`.
    fn replace_with(&mut self, table: Table, rs: Ruleset, started: Instant) -> Result<ApplyStats, DataplaneError> {
        self.committed = None;
        let enc = nl::encode_replace(&rs)?;
        let plan_time = started.elapsed();
        let kernel_time = self.send(&enc)?;
        // Closed after a replace, unlike after smaller batches: the close waits for the kernel
        // to free the old table (after the commit, so the new ruleset is in force), and the
        // next replace then commits sooner (measured with agent_bench: p50 3.0 ms instead of
        // 5.3 ms after the debounce, p99 5 ms instead of 14 ms).
        self.socket = None;
        let stats = ApplyStats {
            messages: enc.what.len(),
            bytes: enc.len(),
            chains: rs.chains.len(),
            rules: rs.rule_count(),
            sets: rs.sets.len() + rs.anon_set_count(),
            elements_added: rs.element_count(),
            elements_removed: 0,
            plan_time,
            kernel_time,
        };
        self.committed = Some(Committed { table, plan: rs });
        Ok(stats)
    }

    /// Turns the kernel's `old` into `new` by element updates, or `Ok(None)` when they do not
    /// suffice; planned since `started`.
    fn update_with(
        &mut self,
        old: &Ruleset,
        new_table: Table,
        new: Ruleset,
        started: Instant,
    ) -> Result<Option<ApplyStats>, DataplaneError> {
        self.committed = None;
        let Some(change) = plan::in_place_update(old, &new).filter(|c| c.chains.is_empty()) else {
            return Ok(None);
        };
        let stats = self.send_in_place(&new, &change, started)?;
        self.committed = Some(Committed {
            table: new_table,
            plan: new,
        });
        Ok(Some(stats))
    }

    /// Sends an in-place change of the table holding `rs` (nothing when there is none);
    /// planned since `started`.
    fn send_in_place(
        &mut self,
        rs: &Ruleset,
        change: &InPlace,
        started: Instant,
    ) -> Result<ApplyStats, DataplaneError> {
        let rules = || change.chains.iter().flat_map(|&i| &rs.chains[i].rules);
        let anon = || rules().filter_map(|r| r.anon_set.as_ref());
        let mut stats = ApplyStats {
            rules: rules().count(),
            sets: anon().count(),
            elements_added: change.sets.iter().map(|d| d.add.len()).sum::<usize>()
                + anon().map(|s| s.elements.len()).sum::<usize>(),
            elements_removed: change.sets.iter().map(|d| d.remove.len()).sum(),
            ..ApplyStats::default()
        };
        if change.sets.is_empty() && change.chains.is_empty() {
            stats.plan_time = started.elapsed();
            return Ok(stats);
        }
        let enc = nl::encode_in_place(rs, change)?;
        stats.plan_time = started.elapsed();
        stats.kernel_time = self.send(&enc)?;
        stats.messages = enc.what.len();
        stats.bytes = enc.len();
        Ok(stats)
    }
}

impl Dataplane for NetlinkWriter {
    fn replace(&mut self, ir: &Ir) -> Result<ApplyStats, DataplaneError> {
        let started = Instant::now();
        let table = lower(ir)?;
        let rs = Ruleset::from_table(&table)?;
        self.replace_with(table, rs, started)
    }

    fn update_elements(&mut self, old: &Ir, new: &Ir) -> Result<Option<ApplyStats>, DataplaneError> {
        let started = Instant::now();
        let old = Ruleset::from_table(&lower(old)?)?;
        let table = lower(new)?;
        let plan = Ruleset::from_table(&table)?;
        self.update_with(&old, table, plan, started)
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.committed = None;
        self.send(&nl::encode_remove()).map(drop)
    }

    /// Lowers `new` once, sharing with the model this writer last committed what did not change
    /// since `current`, and compares the two (`current` is lowered only when the writer has none, e.g. a new writer for a kernel programmed
    /// before; `None` means the kernel's state is unknown and forces a replace). When the
    /// table keeps its chains and sets, only what differs is sent: set elements, and the rules
    /// of changed chains (flushed and added again in place; other rules keep their counters).
    /// `nft list` then prints what a replace would have given.
    fn apply(&mut self, current: Option<&Ir>, new: &Ir) -> Result<ApplyStats, DataplaneError> {
        let started = Instant::now();
        // Parts of `new` equal to `current`'s share the committed model's (same Arc): the
        // replan below skips them by pointer. `current` is what this writer last applied.
        let new_table = match (current, &self.committed) {
            (Some(ir), Some(c)) => lower_after(Some((ir, &c.table)), new)?,
            _ => lower(new)?,
        };
        let old = match (current, self.committed.take()) {
            (None, _) => None,
            (Some(_), Some(committed)) => Some(committed),
            (Some(ir), None) => {
                let table = lower(ir).ok();
                table.and_then(|table| Ruleset::from_table(&table).ok().map(|plan| Committed { table, plan }))
            }
        };
        let Some(old) = old else {
            let rs = Ruleset::from_table(&new_table)?;
            return self.replace_with(new_table, rs, started);
        };
        let (plan, change) = plan::replan(old, &new_table)?;
        if let Some(change) = change {
            // A rejected batch (the kernel did not hold `old` after all) changes nothing: fall
            // back to a replace.
            if let Ok(stats) = self.send_in_place(&plan, &change, started) {
                self.committed = Some(Committed { table: new_table, plan });
                return Ok(stats);
            }
        }
        self.replace_with(new_table, plan, started)
    }
}
