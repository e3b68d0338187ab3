//! policyc's kernel side: programs the kernel's `table inet policyc` for an [`Ir`], loads the
//! iptables rendering instead when asked, cuts the conntrack entries of flows a change denies,
//! reads the rules' counters ([`counters`]) and the packets its `log ... group G` statements
//! send ([`nflog`]), and finds which pod sits behind which port of the node's bridge ([`links`],
//! for the bridge attachment of plain Flannel).
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
//! element order. After a replace `nft list table inet policyc` prints the same text either
//! way; after an in-place change it holds the same sets, maps, chains and rules (each chain's
//! rules in the same order), but the kernel lists the sets and chains the change added after
//! the ones it kept (see below).
//!
//! * [`Dataplane::replace`] sends one batch: add the table (so that deleting it cannot fail),
//!   delete it, then create everything anew. The kernel commits the batch as one transaction:
//!   packets see the old ruleset or the new one, never a mix, and a rejected batch leaves the
//!   old ruleset in place.
//! * [`Dataplane::update_elements`] sends only set and map element deletions and additions when
//!   two IRs differ in nothing else (the usual case when pods come and go), also as one batch.
//!   Interval sets and maps (ipBlock and `networks` sets, the admin tiers' verdict maps) are
//!   never updated element by element (the kernel would refuse a split range as an overlap):
//!   a change in them is not an element update (see `plan::in_place_update`).
//! * [`NetlinkWriter`]'s [`Dataplane::apply`] changes the table in place, in one batch and one
//!   transaction, so that a change to one policy does not recreate every set element of the
//!   node: it adds new sets and maps (with their elements) and new chains (with their rules),
//!   changes the rules of changed chains (a policy whose ports or peers change, an endpoint
//!   that gains or loses a policy, an admin rule whose action changes: rule by rule, see
//!   below, or flushed and refilled when the writer does not know their handles), updates the
//!   elements of changed sets, refills changed interval sets and maps (flushed and filled anew:
//!   an ipBlock, an admin tier's decision table), and deletes the sets and chains no longer
//!   there once nothing refers to them (`nl::Builder::in_place` gives the order). A policy
//!   create or delete is such a change. A change the kernel refuses (the writer's idea of the
//!   kernel was stale), and a base chain (hook) added, deleted or changed, a set redefined
//!   under its name or another family, take a replace. Base chains are never recreated
//!   otherwise.
//! * [`Dataplane::remove`] deletes the table.
//!
//! What an in-place change promises: `nft list table inet policyc` holds the same sets, maps,
//! chains and rules as a replace would, each chain's rules in the same order; the kernel lists
//! the sets and chains it kept in their old order and the added ones after them, in the
//! rendered order (it appends what a transaction creates), so the listing is the rendered
//! text's with its blocks reordered. The plan the writer commits follows the kernel's order.
//! A replace (a new writer, e.g. after a restart, or a fallback) restores the rendered order.
//! Chains and sets that did not change are not touched: their handles and their rules'
//! counters are kept. In a chain that changed, only the rules that changed are sent: replaced
//! by handle where they stand (`NLM_F_REPLACE`; the new rule keeps the handle, its counter
//! starts from zero), added ones inserted before the next kept rule, removed ones deleted by
//! handle (a longest common subsequence of the old and new rules stays). The rules that stay
//! keep their handles and counters. The writer knows the handles because the kernel echoes
//! every rule it creates for it (`NLM_F_ECHO`, answered with the rule's handle), and it keeps
//! them with the plan it committed; a chain whose handles it does not know (a writer that did
//! not create the table) is flushed and refilled, and then known. A policy created for a
//! namespace whose pods other policies isolate changes two rules of each endpoint chain (the
//! jump to its NetworkPolicy group and the drop naming the policies), not the ten or more that
//! chain holds.
//!
//! With the bridge attachment (plain Flannel), an IR also has `table bridge policyc`
//! (`policyc_compiler::nft::lower_bridge`: the per-port source guard and the drop of bridged pod
//! traffic the inet hooks did not see). It goes into the same batch as the inet table's change,
//! after it (the order of the rendered text, which the kernel's table handles follow), so one
//! transaction switches both: the kernel never holds a new inet table, which dispatches by pod
//! address, with an old guard that would let a new pod's address be forged, or the other way
//! round. The bridge table is small (a chain per local pod) and is replaced whole when its model
//! changed, never updated in place; with the Canal attachment a leftover one is deleted (a
//! writer that does not know whether one is left asks the kernel first). Its counters are read
//! with `counters::rule_counters_of(.., TableFamily::Bridge, ..)`.
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
pub mod nflog;
mod nl;
mod nla;
mod plan;
mod socket;

pub use self::iptables::IptablesRestore;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use policyc_compiler::Ir;

use policyc_compiler::nft::{lower, lower_after, lower_bridge, Table, TableFamily};

use self::plan::{Committed, Handles, InPlace, Ruleset};
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
    /// Chains created (every chain in a replace, the new ones in place).
    pub chains: usize,
    /// Rules created (in place: those of rewritten and new chains).
    pub rules: usize,
    /// Named sets and maps created, plus anonymous sets.
    pub sets: usize,
    /// Set and map elements added (in place: also those of new and refilled sets).
    pub elements_added: usize,
    /// Set and map elements deleted one by one (not those of deleted or flushed sets).
    pub elements_removed: usize,
    /// Lowering the IR to nf_tables objects, comparing with what the kernel holds, encoding.
    pub plan_time: Duration,
    /// Sending the batch until the kernel's last answer: the kernel commits in between.
    pub kernel_time: Duration,
    /// The table was changed in place (element updates, rewritten chains, chains and sets added
    /// or deleted), or nothing needed sending; `false` after a replace of the whole table.
    pub in_place: bool,
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
    /// What the kernel holds of `table bridge policyc`, as far as this writer knows.
    bridge: BridgeState,
}

/// The writer's knowledge of the bridge attachment's `table bridge policyc`.
#[derive(Debug, Default)]
enum BridgeState {
    /// A new writer, or after a failed transaction: the kernel is asked when it matters.
    #[default]
    Unknown,
    Absent,
    /// The table lowered from the IR of the last transaction.
    Holds(Table),
}

/// What one transaction does to `table bridge policyc`, and what the kernel holds after it.
#[derive(Debug)]
struct BridgeChange {
    op: BridgeOp,
    after: BridgeState,
}

#[derive(Debug)]
enum BridgeOp {
    Keep,
    /// The whole (small) table replaced: add, delete, create anew, as `nft -f` of the rendered
    /// text does.
    Replace(Ruleset),
    /// Deleted (the attachment is no longer the bridge).
    Remove,
}

impl BridgeChange {
    fn keep(after: BridgeState) -> BridgeChange {
        BridgeChange {
            op: BridgeOp::Keep,
            after,
        }
    }

    /// Its messages, after those for the inet table: one batch, one transaction, so that
    /// packets never meet a new inet table with an old guard or the other way round. The order
    /// within the batch is that of the rendered text (inet first), which the table handles
    /// follow.
    fn encode(&self, b: &mut nl::Builder) -> Result<(), DataplaneError> {
        match &self.op {
            BridgeOp::Keep => Ok(()),
            BridgeOp::Replace(rs) => b.replace(rs),
            BridgeOp::Remove => {
                b.remove(TableFamily::Bridge);
                Ok(())
            }
        }
    }

    /// Adds what the bridge table's replace creates to `stats`.
    fn count(&self, stats: &mut ApplyStats) {
        if let BridgeOp::Replace(rs) = &self.op {
            stats.chains += rs.chains.len();
            stats.rules += rs.rule_count();
            stats.sets += rs.sets.len() + rs.anon_set_count();
            stats.elements_added += rs.element_count();
        }
    }
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

    /// Atomically replaces the kernel's `table FAMILY policyc` (the family of `table`) with a
    /// model built by other means than lowering an IR (a tool's or a test's own rules), as
    /// `nft -f` of `policyc_compiler::nft::print(table, true)` does. The other family's table is
    /// left alone; what this writer knew of the kernel is forgotten, so the next
    /// [`Dataplane::apply`] replaces.
    pub fn replace_table(&mut self, table: &Table) -> Result<ApplyStats, DataplaneError> {
        let started = Instant::now();
        self.committed = None;
        self.bridge = BridgeState::Unknown;
        let rs = Ruleset::from_table(table)?;
        let mut b = nl::Builder::new();
        b.replace(&rs)?;
        let enc = b.finish(None);
        let plan_time = started.elapsed();
        let (kernel_time, _) = self.send(&enc)?;
        self.socket = None;
        Ok(ApplyStats {
            messages: enc.what.len(),
            bytes: enc.len(),
            chains: rs.chains.len(),
            rules: rs.rule_count(),
            sets: rs.sets.len() + rs.anon_set_count(),
            elements_added: rs.element_count(),
            elements_removed: 0,
            plan_time,
            kernel_time,
            in_place: false,
        })
    }

    /// Sends one batch; returns the time until the kernel's last answer.
    fn send(&mut self, enc: &nl::Encoded) -> Result<(Duration, Vec<socket::Echo>), DataplaneError> {
        let t = Instant::now();
        let socket = match self.socket.take() {
            Some(s) => s,
            None => NlSocket::open(self.netns.as_deref())?,
        };
        let echoes = match socket.transact(enc) {
            Ok(echoes) => {
                self.socket = Some(socket);
                echoes
            }
            // The kernel answered: the socket is fine.
            Err(e @ DataplaneError::Rejected { .. }) => {
                self.socket = Some(socket);
                return Err(e);
            }
            // Anything else may leave unread answers behind: the next batch gets a new socket.
            Err(e) => return Err(e),
        };
        Ok((t.elapsed(), echoes))
    }

    /// What to do with the bridge table for `new` (`lower_bridge` of the new IR): nothing when
    /// the kernel holds it already (unless `force`), a replace when it changed, a deletion of a
    /// leftover when the attachment is not the bridge. A writer that does not know whether a
    /// bridge table is left over asks the kernel (one table lookup), so that a Canal node does
    /// not create and delete a table on every replace.
    fn bridge_change(&self, new: Option<Table>, force: bool) -> Result<BridgeChange, DataplaneError> {
        Ok(match (new, &self.bridge) {
            (Some(t), BridgeState::Holds(old)) if !force && *old == t => BridgeChange::keep(BridgeState::Holds(t)),
            (Some(t), _) => BridgeChange {
                op: BridgeOp::Replace(Ruleset::from_table(&t)?),
                after: BridgeState::Holds(t),
            },
            (None, BridgeState::Absent) => BridgeChange::keep(BridgeState::Absent),
            (None, BridgeState::Holds(_)) => BridgeChange {
                op: BridgeOp::Remove,
                after: BridgeState::Absent,
            },
            (None, BridgeState::Unknown) => {
                // If the kernel cannot say, delete whatever is there.
                match counters::table_exists(self.netns.as_deref(), TableFamily::Bridge, TABLE) {
                    Ok(false) => BridgeChange::keep(BridgeState::Absent),
                    Ok(true) | Err(_) => BridgeChange {
                        op: BridgeOp::Remove,
                        after: BridgeState::Absent,
                    },
                }
            }
        })
    }

    /// Replaces the table with `rs`, the encoding of `table`, and changes the bridge table as
    /// `bridge` says, in one batch; planned since `started`.
    fn replace_with(
        &mut self,
        table: Table,
        rs: Ruleset,
        bridge: BridgeChange,
        started: Instant,
    ) -> Result<ApplyStats, DataplaneError> {
        self.committed = None;
        self.bridge = BridgeState::Unknown;
        let mut b = nl::Builder::new();
        b.replace(&rs)?;
        bridge.encode(&mut b)?;
        let enc = b.finish(None);
        let plan_time = started.elapsed();
        let (kernel_time, echoes) = self.send(&enc)?;
        let created = enc.created(&echoes);
        // Closed after a replace, unlike after smaller batches: the close waits for the kernel
        // to free the old table (after the commit, so the new ruleset is in force), and the
        // next replace then commits sooner (measured with agent_bench: p50 3.0 ms instead of
        // 5.3 ms after the debounce, p99 5 ms instead of 14 ms).
        self.socket = None;
        let mut stats = ApplyStats {
            messages: enc.what.len(),
            bytes: enc.len(),
            chains: rs.chains.len(),
            rules: rs.rule_count(),
            sets: rs.sets.len() + rs.anon_set_count(),
            elements_added: rs.element_count(),
            elements_removed: 0,
            plan_time,
            kernel_time,
            in_place: false,
        };
        bridge.count(&mut stats);
        let handles = created_handles(&rs, &created, rs.chains.iter().enumerate().map(|(i, _)| i));
        self.committed = Some(Committed {
            table,
            plan: rs,
            handles,
            table_handle: enc.table_handle(&echoes),
        });
        self.bridge = bridge.after;
        Ok(stats)
    }

    /// Turns the kernel's `old` into `new` by element updates, or `Ok(None)` when they do not
    /// suffice; planned since `started`. The bridge table must not change (`bridge` is the
    /// table the kernel holds before and after).
    fn update_with(
        &mut self,
        old: &Ruleset,
        new_table: Table,
        new: Ruleset,
        bridge: Option<Table>,
        started: Instant,
    ) -> Result<Option<ApplyStats>, DataplaneError> {
        let Some((new, change)) = plan::in_place_update(old, new).filter(|(_, c)| c.elements_only()) else {
            // Nothing sent: what the writer committed is still what the kernel holds.
            return Ok(None);
        };
        self.committed = None;
        self.bridge = BridgeState::Unknown;
        let after = match bridge {
            Some(t) => BridgeState::Holds(t),
            None => BridgeState::Absent,
        };
        let (stats, _) = self.send_in_place(&new, &change, &BridgeChange::keep(BridgeState::Unknown), None, started)?;
        // Built from two IRs, not from what the writer committed: rule handles unknown.
        self.committed = Some(Committed {
            table: change.order.arrange_table(&new_table),
            plan: new,
            handles: Handles::default(),
            table_handle: None,
        });
        self.bridge = after;
        Ok(Some(stats))
    }

    /// Sends an in-place change of the table holding `rs`, with the bridge table's change
    /// (nothing when there is none); planned since `started`.
    fn send_in_place(
        &mut self,
        rs: &Ruleset,
        change: &InPlace,
        bridge: &BridgeChange,
        generation: Option<u32>,
        started: Instant,
    ) -> Result<(ApplyStats, Created), DataplaneError> {
        let edited = change.edited.iter().flat_map(|(i, e)| {
            e.ops.iter().filter_map(|op| match op {
                plan::RuleOp::Replace { new, .. }
                | plan::RuleOp::InsertBefore { new, .. }
                | plan::RuleOp::Append { new } => Some(&rs.chains[*i].rules[*new]),
                plan::RuleOp::Delete { .. } => None,
            })
        });
        let rules = || {
            change
                .chains
                .iter()
                .chain(&change.new_chains)
                .flat_map(|&i| &rs.chains[i].rules)
                .chain(edited.clone())
        };
        let anon = || rules().filter_map(|r| r.anon_set.as_ref());
        let filled = || change.new_sets.iter().chain(&change.refilled).map(|&i| &rs.sets[i]);
        let mut stats = ApplyStats {
            in_place: true,
            chains: change.new_chains.len(),
            rules: rules().count(),
            sets: change.new_sets.len() + anon().count(),
            elements_added: change.sets.iter().map(|d| d.add.len()).sum::<usize>()
                + anon().map(|s| s.elements.len()).sum::<usize>()
                + filled().map(|s| s.elements.len()).sum::<usize>(),
            elements_removed: change.sets.iter().map(|d| d.remove.len()).sum(),
            ..ApplyStats::default()
        };
        bridge.count(&mut stats);
        let mut b = nl::Builder::new();
        b.in_place(rs, change)?;
        bridge.encode(&mut b)?;
        if b.is_empty() {
            stats.plan_time = started.elapsed();
            return Ok((stats, Created::new()));
        }
        let enc = b.finish(generation);
        stats.plan_time = started.elapsed();
        let (kernel_time, echoes) = self.send(&enc)?;
        let created = enc.created(&echoes);
        stats.kernel_time = kernel_time;
        stats.messages = enc.what.len();
        stats.bytes = enc.len();
        Ok((stats, created))
    }
}

impl NetlinkWriter {
    /// The ruleset generation, if the kernel's `inet` table is the one with handle `table`
    /// (the one this writer created: the rule handles it knows are that table's).
    fn generation_of(&mut self, table: Option<u64>) -> Option<u32> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => NlSocket::open(self.netns.as_deref()).ok()?,
        };
        let (answer, socket) = counters::generation_and_table(socket, TableFamily::Inet, TABLE);
        // A socket left with unread answers is not used again.
        if answer.is_ok() {
            self.socket = Some(socket);
        }
        let (generation, found) = answer.ok()?;
        (table.is_some() && found == table).then_some(generation)
    }
}

/// Handles of the rules the kernel created and echoed: (chain index in the plan, rule index) →
/// handle.
type Created = std::collections::HashMap<(usize, usize), u64>;

/// The handles of `chains` (indexes into `plan`) all of whose rules were created and echoed.
fn created_handles(plan: &Ruleset, created: &Created, chains: impl Iterator<Item = usize>) -> Handles {
    chains
        .filter_map(|i| {
            let c = &plan.chains[i];
            let handles: Option<Vec<u64>> = (0..c.rules.len()).map(|r| created.get(&(i, r)).copied()).collect();
            Some((c.name.clone(), handles?))
        })
        .collect()
}

/// The rule handles of `plan`'s chains after the in-place `change`: those of kept chains as
/// before, those of rewritten and new chains as the kernel echoed them, those of edited chains
/// from both.
fn handles_after(plan: &Ruleset, change: InPlace, created: &Created) -> Handles {
    let mut handles = change.handles;
    for &i in &change.chains {
        handles.remove(&plan.chains[i].name);
    }
    handles.extend(created_handles(
        plan,
        created,
        change.chains.iter().chain(&change.new_chains).copied(),
    ));
    for (i, edit) in &change.edited {
        let c = &plan.chains[*i];
        let after = handles
            .get(&c.name)
            .and(edit.handles_after(|r| created.get(&(*i, r)).copied()));
        match after {
            Some(h) => handles.insert(c.name.clone(), h),
            None => handles.remove(&c.name),
        };
    }
    handles
}

impl Dataplane for NetlinkWriter {
    /// Replaces `table inet policyc` and, for the bridge attachment, `table bridge policyc` in
    /// one batch; with the Canal attachment a leftover bridge table is deleted in it.
    fn replace(&mut self, ir: &Ir) -> Result<ApplyStats, DataplaneError> {
        let started = Instant::now();
        let table = lower(ir)?;
        let rs = Ruleset::from_table(&table)?;
        let bridge = self.bridge_change(lower_bridge(ir)?, true)?;
        self.replace_with(table, rs, bridge, started)
    }

    /// Element updates of the inet table only: `Ok(None)` when the bridge tables of `old` and
    /// `new` differ (a pod port came or went, or the attachment changed).
    fn update_elements(&mut self, old: &Ir, new: &Ir) -> Result<Option<ApplyStats>, DataplaneError> {
        let started = Instant::now();
        let bridge = lower_bridge(new)?;
        if lower_bridge(old)? != bridge {
            return Ok(None);
        }
        let old = Ruleset::from_table(&lower(old)?)?;
        let table = lower(new)?;
        let plan = Ruleset::from_table(&table)?;
        self.update_with(&old, table, plan, bridge, started)
    }

    /// Deletes both tables, in one batch.
    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.committed = None;
        self.bridge = BridgeState::Unknown;
        let mut b = nl::Builder::new();
        b.remove(TableFamily::Inet);
        b.remove(TableFamily::Bridge);
        self.send(&b.finish(None))?;
        self.bridge = BridgeState::Absent;
        Ok(())
    }

    /// Lowers `new` once, sharing with the model this writer last committed what did not change
    /// since `current`, and compares the two (`current` is lowered only when the writer has
    /// none, e.g. a new writer for a kernel programmed before; `None` means the kernel's state is
    /// unknown and forces a replace). Only what differs is sent, in place: new sets and chains,
    /// set elements, refilled interval sets, the rules of changed chains (flushed and added
    /// again; other rules keep their counters), deletions of what is gone. `nft list` then holds
    /// what a replace would have given, added sets and chains listed after the kept ones (see
    /// the crate documentation). A base chain change, or a batch the kernel refuses, takes a
    /// replace.
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
                // Lowered here, not committed by this writer: rule handles unknown.
                table.and_then(|table| {
                    Ruleset::from_table(&table).ok().map(|plan| Committed {
                        table,
                        plan,
                        handles: Handles::default(),
                        table_handle: None,
                    })
                })
            }
        };
        // The bridge table is small: lowered whole, replaced whole when it changed.
        let bridge = self.bridge_change(lower_bridge(new)?, false)?;
        self.bridge = BridgeState::Unknown;
        let Some(old) = old else {
            let rs = Ruleset::from_table(&new_table)?;
            return self.replace_with(new_table, rs, bridge, started);
        };
        let table_handle = old.table_handle;
        let (mut plan, change) = plan::replan(old, &new_table)?;
        if let Some(change) = change {
            // Rules changed by handle: only in the table whose handles the writer knows, and only
            // if nothing was committed since it checked (`None`: another table, a replace).
            let generation = match change.edited.is_empty() {
                true => Ok(None),
                false => self.generation_of(table_handle).ok_or(()).map(Some),
            };
            // A rejected batch (the kernel did not hold `old` after all) changes nothing: fall
            // back to a replace.
            if let Ok((stats, created)) =
                generation.and_then(|g| self.send_in_place(&plan, &change, &bridge, g, started).map_err(drop))
            {
                // The plan is in the kernel's listing order; the model must line up with it.
                let table = change.order.arrange_table(&new_table);
                let handles = handles_after(&plan, change, &created);
                self.committed = Some(Committed {
                    table,
                    plan,
                    handles,
                    table_handle,
                });
                self.bridge = bridge.after;
                return Ok(stats);
            }
            // A replace creates in the model's order.
            plan = change.order.restore(plan);
        }
        self.replace_with(new_table, plan, bridge, started)
    }
}
