//! Encoding a [`Ruleset`] as one nf_tables netlink batch: the `inet` table, and the `bridge`
//! table of the bridge attachment in the same batch ([`Builder`]).
//!
//! Tables, chains, rules and most expressions come from the `nftnl` crate. What it does not
//! cover is done here with raw `nftnl_sys` calls, and only here:
//!
//! * [`NlSet`]: named, anonymous and verdict-map sets with any flags, key type and length,
//!   data type, `NFTA_SET_DESC_SIZE`, set ID and userdata (`nftnl::set::Set` fixes the key
//!   type per Rust type and the flags);
//! * set elements with interval-end flags, userdata and verdict data (`accept`, `drop`,
//!   `return`, `jump CHAIN`, `goto CHAIN`), as interval verdict maps need them ([`ElemChunk`]);
//! * `payload` into any register (concatenations load the port into register 9 or 2) and
//!   `lookup` by set name and ID with an optional destination register (verdict maps);
//! * for in-place changes: sets deleted and flushed (`flush set`: an element deletion without
//!   elements, [`SetFlush`]), and chains and sets created with `NLM_F_EXCL` ([`NewChain`]), which
//!   `nftnl` does not send.
//!
//! # Safety contract
//!
//! Every raw object is owned by exactly one Rust value that frees it on drop ([`NlSet`],
//! [`ElemIter`]); objects handed to libnftnl with an "add" call (`nftnl_set_elem_add`,
//! `nftnl_rule_add_expr` inside `nftnl::Rule::add_expr`) are owned by the container from then on
//! and are never touched again. Allocation failures abort, as in `nftnl`. Pointers passed to
//! setters are valid for the call and libnftnl copies what they point to (strings are
//! NUL-terminated `CStr`s, data comes with its length). Messages are written through
//! `nftnl::NlMsg::write`, whose caller (`nftnl::Batch`) guarantees a buffer of
//! `nft_nlmsg_maxsize()` bytes; libnftnl never writes a set-element message larger than that (it
//! ends a message before its element nest would exceed 64 KiB and continues in the next).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::{Bitwise, Cmp, Conntrack, Counter, Expression, Meta};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, NlMsg, Policy, ProtoFamily, Rule, Table};

use super::plan::{
    self, ChainSpec, CmpOp, Elem, Expr, InPlace, MetaKey, PayloadBase, RuleOp, Ruleset, SetDelta, SetRef, SetSpec,
    TableFamily, Verdict,
};
use super::socket::{Echo, NEWRULE, NEWTABLE};
use super::DataplaneError;

/// A finalized batch and, per message that the kernel acknowledges, what it was about.
pub(crate) struct Encoded {
    pub batch: FinalizedBatch,
    /// One entry per message between the batch begin and end messages.
    pub what: Vec<String>,
    /// The rules the kernel is asked to echo once created (`NLM_F_ECHO`, with the handle it
    /// gave them): message index → (chain index in the plan, rule index in the chain).
    pub echoed: HashMap<usize, (usize, usize)>,
    /// The message creating the `inet` table, echoed likewise.
    pub table_echo: Option<usize>,
    /// The ruleset generation the batch applies to (`NFNL_BATCH_GENID`): the kernel refuses it
    /// (`ERESTART`) if anything was committed since.
    pub generation: Option<u32>,
}

impl Encoded {
    /// Bytes of the whole batch.
    pub fn len(&self) -> usize {
        self.batch.iter().map(<[u8]>::len).sum()
    }

    /// What the message with sequence number `seq` was about, if it is one of ours.
    pub fn describe(&self, seq: u32) -> Option<&str> {
        self.what.get(self.index(seq)?).map(String::as_str)
    }

    /// The index (into `what`) of the message with sequence number `seq`.
    pub fn index(&self, seq: u32) -> Option<usize> {
        let seqs = self.batch.sequence_numbers();
        // The batch begin and end messages take a sequence number too when the kernel
        // acknowledges them (Linux 6.10 and later).
        let first = if seqs.len() == self.what.len() + 2 {
            seqs.start + 1
        } else {
            seqs.start
        };
        Some(seq.checked_sub(first)? as usize)
    }

    /// The handles the kernel gave the echoed rules, by (chain index, rule index).
    pub fn created(&self, echoes: &[Echo]) -> HashMap<(usize, usize), u64> {
        echoes
            .iter()
            .filter(|e| e.ty == NEWRULE)
            .filter_map(|e| Some((*self.echoed.get(&self.index(e.seq)?)?, e.handle)))
            .collect()
    }

    /// The handle of the `inet` table the batch created, if it created one.
    pub fn table_handle(&self, echoes: &[Echo]) -> Option<u64> {
        let at = self.table_echo?;
        echoes
            .iter()
            .find(|e| e.ty == NEWTABLE && self.index(e.seq) == Some(at))
            .map(|e| e.handle)
    }

    /// The batch's bytes, page by page; with a generation, the batch begin message (the first
    /// one, `nfgenmsg` only) carries it as `NFNL_BATCH_GENID`.
    pub fn pages(&self) -> Vec<Cow<'_, [u8]>> {
        let mut pages: Vec<Cow<'_, [u8]>> = self.batch.iter().map(Cow::Borrowed).collect();
        if let (Some(generation), Some(first)) = (self.generation, pages.first_mut()) {
            *first = Cow::Owned(with_generation(first, generation));
        }
        pages
    }
}

/// `NFNL_BATCH_GENID`, the batch begin message's only attribute.
const NFNL_BATCH_GENID: u16 = 1;

/// `page` (starting with the batch begin message) with `NFNL_BATCH_GENID` added to that message.
fn with_generation(page: &[u8], generation: u32) -> Vec<u8> {
    let len = u32::from_ne_bytes(page[0..4].try_into().expect("a netlink header")) as usize;
    let mut out = Vec::with_capacity(page.len() + 8);
    out.extend_from_slice(&((len + 8) as u32).to_ne_bytes());
    out.extend_from_slice(&page[4..len]);
    out.extend_from_slice(&8u16.to_ne_bytes());
    out.extend_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&page[len..]);
    out
}

/// Builds one batch, remembering what each message is about. Changes of several tables go into
/// one batch, so that the kernel commits them as one transaction.
pub(crate) struct Builder {
    batch: Batch,
    what: Vec<String>,
    echoed: HashMap<usize, (usize, usize)>,
    table_echo: Option<usize>,
    /// nft numbers sets 1, 2, ... in the order it creates them; lookups name a set and give its
    /// ID, which the kernel uses to find a set created earlier in the same batch. Unique across
    /// the batch, whichever table a set belongs to.
    next_id: u32,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            batch: Batch::new(),
            what: Vec::new(),
            echoed: HashMap::new(),
            table_echo: None,
            next_id: 1,
        }
    }

    fn add<T: NlMsg>(&mut self, msg: &T, ty: MsgType, what: impl Into<String>) {
        self.batch.add(msg, ty);
        self.what.push(what.into());
    }

    /// No message so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn finish(self, generation: Option<u32>) -> Encoded {
        Encoded {
            batch: self.batch.finalize(),
            what: self.what,
            echoed: self.echoed,
            table_echo: self.table_echo,
            generation,
        }
    }

    /// Replaces the whole table of `rs`'s family with `rs`.
    pub(crate) fn replace(&mut self, rs: &Ruleset) -> Result<(), DataplaneError> {
        let t = table(rs.family);
        let label = table_label(rs.family);
        add_delete_table(self, &t, rs.family);
        // The table created anew is echoed: its handle tells it from any later one.
        if rs.family == TableFamily::Inet {
            self.table_echo = Some(self.what.len());
            let echoed = Flagged {
                msg: &t,
                set: NLM_F_ECHO,
                clear: 0,
            };
            self.add(&echoed, MsgType::Add, label);
        } else {
            self.add(&t, MsgType::Add, label);
        }

        let mut chains = Vec::with_capacity(rs.chains.len());
        for spec in &rs.chains {
            let mut c = Chain::new(cstring(&spec.name)?, &t);
            if let Some(base) = spec.base {
                let hook = match base.hook {
                    plan::Hook::Prerouting => Hook::PreRouting,
                    plan::Hook::Forward => Hook::Forward,
                    plan::Hook::Input => Hook::In,
                };
                // The model's priority is relative to the family's `filter`.
                c.set_hook(hook, rs.family.filter_priority() + base.priority);
                c.set_type(ChainType::Filter);
                c.set_policy(Policy::Accept);
            }
            self.add(&c, MsgType::Add, format!("chain {}{}", spec.name, in_table(rs.family)));
            chains.push(c);
        }

        let mut ids: HashMap<&str, u32> = HashMap::new();
        for spec in &rs.sets {
            let id = self.take_id();
            ids.insert(&spec.name, id);
            add_set(self, rs.family, spec, SetOp::Create(id), &spec.elements)?;
        }

        for (i, (spec, chain)) in rs.chains.iter().zip(&chains).enumerate() {
            add_rules(self, rs.family, chain, (i, spec), &ids)?;
        }
        Ok(())
    }

    /// Changes the table holding `rs` in place ([`InPlace`]), in an order the kernel accepts
    /// within one transaction:
    ///
    /// 1. new chains, empty (verdict-map elements and rules may jump to them);
    /// 2. new sets and maps with their elements;
    /// 3. element deletions, then additions, of kept sets without intervals;
    /// 4. changed interval sets and maps flushed and filled anew;
    /// 5. each changed chain's rules replaced, inserted and deleted by handle (`plan::edit`), or,
    ///    when the writer does not know the handles, the chain flushed and its rules added
    ///    again; then the new chains' rules;
    /// 6. the rules of chains that go flushed, then the sets and maps that go deleted (no rule
    ///    refers to them any more), then those chains deleted (no rule or element jumps to them
    ///    any more: deleting a set or chain still referred to fails with `EBUSY`).
    ///
    /// Other chains, their rules and counters stay as they are, and so do the kept sets'
    /// unchanged elements.
    pub(crate) fn in_place(&mut self, rs: &Ruleset, change: &InPlace) -> Result<(), DataplaneError> {
        let t = table(rs.family);
        let chain_label = |name: &str| format!("chain {name}{}", in_table(rs.family));
        // Created exclusively: a chain or set the kernel holds already means it does not hold
        // what the change starts from, and the batch is refused (the writer then replaces).
        for &i in &change.new_chains {
            let name = &rs.chains[i].name;
            self.add(&NewChain::new(rs.family, name)?, MsgType::Add, chain_label(name));
        }
        // The kept named sets exist: lookups find them by name (batch ID 0 names no new set);
        // new ones also by their batch ID, as in a replace.
        let mut ids: HashMap<&str, u32> = rs.sets.iter().map(|s| (s.name.as_str(), 0)).collect();
        for &i in &change.new_sets {
            let spec = &rs.sets[i];
            let id = self.take_id();
            ids.insert(&spec.name, id);
            add_set(self, rs.family, spec, SetOp::CreateNew(id), &spec.elements)?;
        }
        add_element_changes(self, rs.family, &change.sets)?;
        for &i in &change.refilled {
            let spec = &rs.sets[i];
            add_set(self, rs.family, spec, SetOp::Refill, &spec.elements)?;
        }
        for (i, edit) in &change.edited {
            let spec = &rs.chains[*i];
            let chain = Chain::new(cstring(&spec.name)?, &t);
            for op in &edit.ops {
                match *op {
                    RuleOp::Replace { new, handle } => {
                        add_rule(self, rs.family, &chain, (*i, spec), new, &ids, Place::Replace(handle))?
                    }
                    RuleOp::InsertBefore { new, handle } => {
                        add_rule(self, rs.family, &chain, (*i, spec), new, &ids, Place::Before(handle))?
                    }
                    RuleOp::Append { new } => add_rule(self, rs.family, &chain, (*i, spec), new, &ids, Place::End)?,
                    RuleOp::Delete { handle } => {
                        let mut rule = Rule::new(&chain);
                        rule.set_handle(handle);
                        let what = format!(
                            "deletion of rule {handle} of chain {}{}",
                            spec.name,
                            in_table(rs.family)
                        );
                        self.add(&rule, MsgType::Del, what);
                    }
                }
            }
        }
        for &i in &change.chains {
            let spec = &rs.chains[i];
            let chain = Chain::new(cstring(&spec.name)?, &t);
            flush_chain(self, rs.family, &chain, &spec.name);
            add_rules(self, rs.family, &chain, (i, spec), &ids)?;
        }
        for &i in &change.new_chains {
            let spec = &rs.chains[i];
            add_rules(self, rs.family, &Chain::new(cstring(&spec.name)?, &t), (i, spec), &ids)?;
        }
        let gone: Vec<Chain<'_>> = change
            .gone_chains
            .iter()
            .map(|n| Ok(Chain::new(cstring(n)?, &t)))
            .collect::<Result<_, DataplaneError>>()?;
        for (chain, name) in gone.iter().zip(&change.gone_chains) {
            flush_chain(self, rs.family, chain, name);
        }
        for name in &change.gone_sets {
            let set = NlSet::named(rs.family, name)?;
            self.add(
                &set,
                MsgType::Del,
                format!("deletion of set {name}{}", in_table(rs.family)),
            );
        }
        for (chain, name) in gone.iter().zip(&change.gone_chains) {
            self.add(chain, MsgType::Del, format!("deletion of {}", chain_label(name)));
        }
        Ok(())
    }

    /// Deletes the table of `family` if it exists.
    pub(crate) fn remove(&mut self, family: TableFamily) {
        add_delete_table(self, &table(family), family);
    }
}

fn cstring(s: &str) -> Result<CString, DataplaneError> {
    CString::new(s).map_err(|_| DataplaneError::Unrepresentable(format!("name or comment with a NUL byte: {s:?}")))
}

/// `policyc_compiler::render::nft::TABLE`, as libnftnl wants it.
const TABLE: &CStr = c"policyc";

fn table(family: TableFamily) -> Table {
    let f = match family {
        TableFamily::Inet => ProtoFamily::Inet,
        TableFamily::Bridge => ProtoFamily::Bridge,
    };
    Table::new(TABLE, f)
}

/// How error messages name the table: "table" for the main (inet) one, as before.
fn table_label(family: TableFamily) -> &'static str {
    match family {
        TableFamily::Inet => "table",
        TableFamily::Bridge => "bridge table",
    }
}

fn in_table(family: TableFamily) -> &'static str {
    match family {
        TableFamily::Inet => "",
        TableFamily::Bridge => " (bridge table)",
    }
}

/// `flush chain`: a rule message without a handle deletes every rule of the chain.
fn flush_chain(b: &mut Builder, family: TableFamily, chain: &Chain<'_>, name: &str) {
    b.add(
        &Rule::new(chain),
        MsgType::Del,
        format!("flush of chain {name}{}", in_table(family)),
    );
}

/// `table FAMILY policyc` + `delete table FAMILY policyc`: removes the table whether or not it
/// exists.
fn add_delete_table(b: &mut Builder, t: &Table, family: TableFamily) {
    b.add(t, MsgType::Add, table_label(family));
    b.add(t, MsgType::Del, format!("{} deletion", table_label(family)));
}

/// The rules of `spec` (chain `index` of the plan) added at the end of `chain`, each preceded
/// by its anonymous set if it has one.
fn add_rules(
    b: &mut Builder,
    family: TableFamily,
    chain: &Chain<'_>,
    (index, spec): (usize, &ChainSpec),
    ids: &HashMap<&str, u32>,
) -> Result<(), DataplaneError> {
    for i in 0..spec.rules.len() {
        add_rule(b, family, chain, (index, spec), i, ids, Place::End)?;
    }
    Ok(())
}

/// Where a rule goes in its chain.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// At the end.
    End,
    /// Before the rule with this handle.
    Before(u64),
    /// Instead of the rule with this handle, keeping the handle.
    Replace(u64),
}

/// Rule `i` of `spec` (chain `index` of the plan) into `chain` at `place`, preceded by its
/// anonymous set if it has one. A rule the kernel creates (not a replacement) of the `inet`
/// table is echoed, so that the writer learns its handle.
fn add_rule(
    b: &mut Builder,
    family: TableFamily,
    chain: &Chain<'_>,
    (index, spec): (usize, &ChainSpec),
    i: usize,
    ids: &HashMap<&str, u32>,
    place: Place,
) -> Result<(), DataplaneError> {
    let r = &spec.rules[i];
    let anon = match &r.anon_set {
        Some(set) => {
            let id = b.take_id();
            add_set(b, family, set, SetOp::Create(id), &set.elements)?;
            Some(id)
        }
        None => None,
    };
    let mut rule = Rule::new(chain);
    for e in &r.exprs {
        let set = match e {
            Expr::Lookup { set, .. } => Some(resolve(set, ids, anon)?),
            _ => None,
        };
        rule.add_expr(&NlExpr { expr: e, set });
    }
    if let Some(c) = &r.comment {
        rule.set_comment(cstring(c)?)
            .map_err(|e| DataplaneError::Unrepresentable(format!("comment {c:?}: {e}")))?;
    }
    let echo = family == TableFamily::Inet && !matches!(place, Place::Replace(_));
    let (set, clear) = match place {
        Place::End => (0, 0),
        Place::Before(handle) => {
            rule.set_position(handle);
            (0, NLM_F_APPEND)
        }
        Place::Replace(handle) => {
            rule.set_handle(handle);
            (NLM_F_REPLACE, NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL)
        }
    };
    let set = if echo { set | NLM_F_ECHO } else { set };
    if echo {
        b.echoed.insert(b.what.len(), (index, i));
    }
    let what = match place {
        Place::Replace(h) => format!(
            "rule {} of chain {} (replacing rule {h}){}",
            i + 1,
            spec.name,
            in_table(family)
        ),
        _ => format!("rule {} of chain {}{}", i + 1, spec.name, in_table(family)),
    };
    b.add(&Flagged { msg: &rule, set, clear }, MsgType::Add, what);
    Ok(())
}

const NLM_F_ECHO: u16 = 0x8;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// An `nftnl` message with header flags `nftnl` does not send: `set` added to and `clear`
/// taken from the flags it writes (`NLM_F_ECHO` on a NEWTABLE; echo, replace or insert on a
/// NEWRULE, whose own are `NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL | NLM_F_ACK`).
struct Flagged<'a, M> {
    msg: &'a M,
    set: u16,
    clear: u16,
}

// SAFETY: `write` lets the wrapped `nftnl` message build itself into `buf` (nft_nlmsg_maxsize()
// bytes, guaranteed by the caller, which is what the wrapped `write` requires), then rewrites
// the 16-bit `nlmsg_flags` field of the netlink header that message starts with (offset 6 of
// the 16 header bytes, host byte order), unaligned.
unsafe impl<M: NlMsg> NlMsg for Flagged<'_, M> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, ty: MsgType) {
        // SAFETY: see the impl's contract.
        unsafe {
            self.msg.write(buf, seq, ty);
            let flags = buf.cast::<u8>().add(6).cast::<u16>();
            flags.write_unaligned((flags.read_unaligned() & !self.clear) | self.set);
        }
    }
}

/// Name and batch ID of the set a lookup refers to.
fn resolve(set: &SetRef, ids: &HashMap<&str, u32>, anon: Option<u32>) -> Result<(CString, u32), DataplaneError> {
    match set {
        SetRef::Named(n) => {
            let id = ids
                .get(n.as_str())
                .ok_or_else(|| DataplaneError::Unrepresentable(format!("lookup of unknown set {n}")))?;
            Ok((cstring(n)?, *id))
        }
        SetRef::Anonymous => {
            let id = anon.ok_or_else(|| DataplaneError::Unrepresentable("lookup of a missing anonymous set".into()))?;
            Ok((c"__set%d".to_owned(), id))
        }
    }
}

fn add_element_changes(b: &mut Builder, family: TableFamily, deltas: &[SetDelta]) -> Result<(), DataplaneError> {
    for d in deltas.iter().filter(|d| !d.remove.is_empty()) {
        add_set(b, family, &d.set, SetOp::DeleteElements, &d.remove)?;
    }
    for d in deltas.iter().filter(|d| !d.add.is_empty()) {
        add_set(b, family, &d.set, SetOp::AddElements, &d.add)?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum SetOp {
    /// Create the set, with this batch-local ID, and its elements.
    Create(u32),
    /// The same, but a set of that name must not exist (`NLM_F_EXCL`).
    CreateNew(u32),
    /// Add elements to an existing set; an element that exists already is an error.
    AddElements,
    /// Delete elements from an existing set; an element that does not exist is an error.
    DeleteElements,
    /// Delete every element of an existing set (`flush set`), then add these.
    Refill,
}

/// Messages for a set and its elements.
fn add_set(
    b: &mut Builder,
    family: TableFamily,
    spec: &SetSpec,
    op: SetOp,
    elements: &[Elem],
) -> Result<(), DataplaneError> {
    let id = match op {
        SetOp::Create(id) | SetOp::CreateNew(id) => Some(id),
        _ => None,
    };
    let mut set = NlSet::new(family, spec, id)?;
    set.excl = matches!(op, SetOp::CreateNew(_));
    for e in elements {
        set.add(e)?;
    }
    let label = if spec.name.starts_with("__set") {
        format!("anonymous set{}", in_table(family))
    } else {
        format!("set {}{}", spec.name, in_table(family))
    };
    if id.is_some() {
        b.add(&set, MsgType::Add, label.clone());
    }
    if let SetOp::Refill = op {
        let flush = SetFlush(NlSet::named(family, &spec.name)?);
        b.add(&flush, MsgType::Del, format!("flush of {label}"));
    }
    if elements.is_empty() {
        return Ok(());
    }
    let (ty, excl, what) = match op {
        SetOp::Create(_) | SetOp::CreateNew(_) | SetOp::Refill => (MsgType::Add, false, "elements of"),
        SetOp::AddElements => (MsgType::Add, true, "new elements of"),
        SetOp::DeleteElements => (MsgType::Del, false, "deleted elements of"),
    };
    let iter = ElemIter::new(&set);
    loop {
        let chunk = ElemChunk {
            iter: &iter,
            more: Cell::new(false),
            excl,
        };
        b.add(&chunk, ty, format!("{what} {label}"));
        if !chunk.more.get() {
            break;
        }
    }
    Ok(())
}

/// An `nftnl_set` with its elements.
struct NlSet {
    ptr: NonNull<sys::nftnl_set>,
    /// `NFPROTO_*` of its table, for the message headers.
    family: u16,
    /// Creating it fails if it exists.
    excl: bool,
}

fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL only when malloc fails; do what `nftnl` and libstd do.
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

impl NlSet {
    /// A set to create, with its batch-local `id`; without one, just what an element message
    /// for an existing set needs (table and name).
    fn new(family: TableFamily, spec: &SetSpec, id: Option<u32>) -> Result<NlSet, DataplaneError> {
        let name = cstring(&spec.name)?;
        // SAFETY: nftnl_set_alloc has no preconditions; `alloc` aborts on NULL.
        let ptr = alloc(unsafe { sys::nftnl_set_alloc() });
        let family = plan::nfproto(family);
        let set = NlSet {
            ptr,
            family,
            excl: false,
        };
        let s = set.ptr.as_ptr();
        let u32_attr = |attr: u32, v: u32| {
            // SAFETY: `s` is a live set owned by `set`; u32 attributes take no pointers.
            unsafe { sys::nftnl_set_set_u32(s, attr as u16, v) };
        };
        u32_attr(sys::NFTNL_SET_FAMILY, u32::from(family));
        // SAFETY: `s` is live; both strings are NUL-terminated and copied by libnftnl.
        unsafe {
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, TABLE.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        }
        let Some(id) = id else {
            return Ok(set);
        };
        u32_attr(sys::NFTNL_SET_ID, id);
        u32_attr(sys::NFTNL_SET_FLAGS, spec.flags);
        u32_attr(sys::NFTNL_SET_KEY_TYPE, plan::type_id(spec.key));
        u32_attr(sys::NFTNL_SET_KEY_LEN, plan::key_len(spec.key));
        if spec.verdict_map {
            u32_attr(sys::NFTNL_SET_DATA_TYPE, plan::NFT_DATA_VERDICT);
            u32_attr(sys::NFTNL_SET_DATA_LEN, 0);
        }
        if let Some(size) = spec.size {
            u32_attr(sys::NFTNL_SET_DESC_SIZE, size);
        }
        if !spec.udata.is_empty() {
            // SAFETY: `s` is live; the pointer and length describe `spec.udata`, which
            // libnftnl copies.
            let rc = unsafe {
                sys::nftnl_set_set_data(
                    s,
                    sys::NFTNL_SET_USERDATA as u16,
                    spec.udata.as_ptr().cast::<c_void>(),
                    spec.udata.len() as u32,
                )
            };
            if rc < 0 {
                std::process::abort();
            }
        }
        Ok(set)
    }

    /// Just what a set deletion or flush names: table and set.
    fn named(family: TableFamily, name: &str) -> Result<NlSet, DataplaneError> {
        let name = cstring(name)?;
        // SAFETY: nftnl_set_alloc has no preconditions; `alloc` aborts on NULL.
        let ptr = alloc(unsafe { sys::nftnl_set_alloc() });
        let family = plan::nfproto(family);
        let set = NlSet {
            ptr,
            family,
            excl: false,
        };
        let s = set.ptr.as_ptr();
        // SAFETY: `s` is a live set owned by `set`; u32 attributes take no pointers; both strings
        // are NUL-terminated and copied by libnftnl.
        unsafe {
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(family));
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, TABLE.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        }
        Ok(set)
    }

    /// Attaches an element; the set owns it from then on.
    fn add(&mut self, e: &Elem) -> Result<(), DataplaneError> {
        let (code, chain) = match &e.verdict {
            None => (None, None),
            Some(Verdict::Accept) => (Some(libc::NF_ACCEPT), None),
            Some(Verdict::Drop) => (Some(libc::NF_DROP), None),
            Some(Verdict::Return) => (Some(libc::NFT_RETURN), None),
            Some(Verdict::Jump(c)) => (Some(libc::NFT_JUMP), Some(cstring(c)?)),
            Some(Verdict::Goto(c)) => (Some(libc::NFT_GOTO), Some(cstring(c)?)),
        };
        // SAFETY: nftnl_set_elem_alloc has no preconditions; `alloc` aborts on NULL.
        let elem = alloc(unsafe { sys::nftnl_set_elem_alloc() }).as_ptr();
        // SAFETY: `elem` is live and not yet shared. Data pointers and lengths describe
        // `e.key` / `e.udata`, strings are NUL-terminated; libnftnl copies all of them. Then
        // `nftnl_set_elem_add` moves `elem` into the live set `self.ptr`, which frees it with
        // itself; `elem` is not used after that.
        unsafe {
            sys::nftnl_set_elem_set(
                elem,
                sys::NFTNL_SET_ELEM_KEY as u16,
                e.key.as_ptr().cast::<c_void>(),
                e.key.len() as u32,
            );
            if e.flags != 0 {
                sys::nftnl_set_elem_set_u32(elem, sys::NFTNL_SET_ELEM_FLAGS as u16, e.flags);
            }
            // The verdict code is an i32 (NFT_GOTO is -4) sent as its 32 bits.
            if let Some(code) = code {
                sys::nftnl_set_elem_set_u32(elem, sys::NFTNL_SET_ELEM_VERDICT as u16, code as u32);
            }
            if let Some(chain) = &chain {
                sys::nftnl_set_elem_set_str(elem, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
            }
            if !e.udata.is_empty() {
                sys::nftnl_set_elem_set(
                    elem,
                    sys::NFTNL_SET_ELEM_USERDATA as u16,
                    e.udata.as_ptr().cast::<c_void>(),
                    e.udata.len() as u32,
                );
            }
            sys::nftnl_set_elem_add(self.ptr.as_ptr(), elem);
        }
        Ok(())
    }
}

impl Drop for NlSet {
    fn drop(&mut self) {
        // SAFETY: `ptr` is owned by this value and freed exactly once, with its elements.
        unsafe { sys::nftnl_set_free(self.ptr.as_ptr()) };
    }
}

// SAFETY: `write` builds one NEWSET (or, for `MsgType::Del`, DELSET) message with
// nftnl_nlmsg_build_hdr and nftnl_set_nlmsg_build_payload into `buf`, which the caller
// guarantees holds nft_nlmsg_maxsize() bytes; a set message (names, a few u32s, userdata of at
// most 256 bytes) is far smaller.
unsafe impl NlMsg for NlSet {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, ty: MsgType) {
        let (msg, flags) = match ty {
            MsgType::Add if self.excl => (
                libc::NFT_MSG_NEWSET,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            ),
            MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
        };
        // SAFETY: see the impl's contract; `self.ptr` is live.
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(buf.cast::<c_char>(), msg as u16, self.family, flags as u16, seq);
            sys::nftnl_set_nlmsg_build_payload(nlh, self.ptr.as_ptr());
        }
    }
}

/// A regular chain to create, failing if it exists (`nftnl::Chain` sends no `NLM_F_EXCL`).
struct NewChain {
    ptr: NonNull<sys::nftnl_chain>,
    family: u16,
}

impl NewChain {
    fn new(family: TableFamily, name: &str) -> Result<NewChain, DataplaneError> {
        let name = cstring(name)?;
        // SAFETY: nftnl_chain_alloc has no preconditions; `alloc` aborts on NULL.
        let ptr = alloc(unsafe { sys::nftnl_chain_alloc() });
        let family = plan::nfproto(family);
        let chain = NewChain { ptr, family };
        let c = chain.ptr.as_ptr();
        // SAFETY: `c` is a live chain owned by `chain`; u32 attributes take no pointers; both
        // strings are NUL-terminated and copied by libnftnl.
        unsafe {
            sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(family));
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, TABLE.as_ptr());
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
        }
        Ok(chain)
    }
}

impl Drop for NewChain {
    fn drop(&mut self) {
        // SAFETY: `ptr` is owned by this value and freed exactly once.
        unsafe { sys::nftnl_chain_free(self.ptr.as_ptr()) };
    }
}

// SAFETY: `write` builds one NEWCHAIN message (table and chain names) into `buf`, which the
// caller guarantees holds nft_nlmsg_maxsize() bytes.
unsafe impl NlMsg for NewChain {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _ty: MsgType) {
        // SAFETY: see the impl's contract; `self.ptr` is live.
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_NEWCHAIN as u16,
                self.family,
                (libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_chain_nlmsg_build_payload(nlh, self.ptr.as_ptr());
        }
    }
}

/// `flush set`: a DELSETELEM message naming the set without an element list deletes all its
/// elements. The set must have none attached ([`NlSet::named`]).
struct SetFlush(NlSet);

// SAFETY: `write` builds one DELSETELEM message into `buf` (nft_nlmsg_maxsize() bytes,
// guaranteed by the caller): nftnl_set_elems_nlmsg_build_payload writes the table and set names
// and, the set having no elements, no element list.
unsafe impl NlMsg for SetFlush {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _ty: MsgType) {
        // SAFETY: see the impl's contract; the set is live.
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_DELSETELEM as u16,
                self.0.family,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.0.ptr.as_ptr());
        }
    }
}

/// Iterator over a set's elements, for building element messages.
struct ElemIter<'a> {
    ptr: NonNull<sys::nftnl_set_elems_iter>,
    set: &'a NlSet,
}

impl<'a> ElemIter<'a> {
    fn new(set: &'a NlSet) -> ElemIter<'a> {
        ElemIter {
            // SAFETY: `set.ptr` is live and outlives the iterator (borrowed for 'a).
            ptr: alloc(unsafe { sys::nftnl_set_elems_iter_create(set.ptr.as_ptr()) }),
            set,
        }
    }
}

impl Drop for ElemIter<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is owned by this value and destroyed exactly once, before the set.
        unsafe { sys::nftnl_set_elems_iter_destroy(self.ptr.as_ptr()) };
    }
}

/// One element message: as many of the remaining elements as fit.
struct ElemChunk<'a> {
    iter: &'a ElemIter<'a>,
    /// Set by `write`: elements remain for another message.
    more: Cell<bool>,
    /// Adding an element that exists is an error (element updates must match the kernel).
    excl: bool,
}

// SAFETY: `write` builds one NEWSETELEM / DELSETELEM message into `buf` (nft_nlmsg_maxsize()
// bytes, guaranteed by the caller). nftnl_set_elems_nlmsg_build_payload_iter stops before the
// element nest exceeds the 64 KiB netlink attribute limit, so the message fits.
unsafe impl NlMsg for ElemChunk<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, ty: MsgType) {
        let (msg, flags) = match ty {
            MsgType::Add if self.excl => (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            ),
            MsgType::Add => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
        };
        // SAFETY: see the impl's contract; the iterator and its set are live.
        let rc = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                msg as u16,
                self.iter.set.family,
                flags as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload_iter(nlh, self.iter.ptr.as_ptr())
        };
        // 1: the message is full and elements remain; 0: done.
        self.more.set(rc > 0);
    }
}

/// A rule expression; `set` is the name and batch ID of the set a lookup refers to.
struct NlExpr<'a> {
    expr: &'a Expr,
    set: Option<(CString, u32)>,
}

impl Expression for NlExpr<'_> {
    fn to_expr(&self, rule: &Rule) -> NonNull<sys::nftnl_expr> {
        match self.expr {
            Expr::Meta(k) => match k {
                MetaKey::NfProto => Meta::NfProto,
                MetaKey::L4Proto => Meta::L4Proto,
                MetaKey::IifName => Meta::IifName,
                MetaKey::OifName => Meta::OifName,
                MetaKey::Protocol => Meta::Protocol,
                MetaKey::Mark => Meta::Mark { set: false },
            }
            .to_expr(rule),
            Expr::MetaSetMark => Meta::Mark { set: true }.to_expr(rule),
            Expr::CtState => Conntrack::State.to_expr(rule),
            Expr::CtMark => Conntrack::Mark { set: false }.to_expr(rule),
            Expr::Bitwise { mask, xor } => Bitwise::new(mask.as_slice(), xor.as_slice()).to_expr(rule),
            Expr::Cmp { op, data } => {
                let op = match op {
                    CmpOp::Eq => nftnl::expr::CmpOp::Eq,
                    CmpOp::Neq => nftnl::expr::CmpOp::Neq,
                    CmpOp::Gte => nftnl::expr::CmpOp::Gte,
                    CmpOp::Lte => nftnl::expr::CmpOp::Lte,
                };
                Cmp::new(op, data.as_slice()).to_expr(rule)
            }
            Expr::Counter => Counter.to_expr(rule),
            Expr::Verdict(v) => match v {
                Verdict::Accept => nftnl::expr::Verdict::Accept,
                Verdict::Drop => nftnl::expr::Verdict::Drop,
                Verdict::Return => nftnl::expr::Verdict::Return,
                // Chain names were checked when their chains were built.
                Verdict::Jump(chain) => nftnl::expr::Verdict::Jump {
                    chain: CString::new(chain.as_str()).unwrap_or_default(),
                },
                Verdict::Goto(chain) => nftnl::expr::Verdict::Goto {
                    chain: CString::new(chain.as_str()).unwrap_or_default(),
                },
            }
            .to_expr(rule),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => payload(*base, *offset, *len, *dreg),
            Expr::Lookup { verdict_map, .. } => {
                let (name, id) = self.set.as_ref().expect("lookup with its set resolved");
                lookup(name, *id, *verdict_map)
            }
            Expr::Limit { rate, unit, burst } => limit(*rate, *unit, *burst),
            Expr::Log {
                prefix,
                group,
                snaplen,
                queue_threshold,
            } => {
                // Prefixes were checked for NUL bytes when the rule was planned.
                let prefix = prefix.as_deref().map(|p| CString::new(p).unwrap_or_default());
                log(prefix.as_deref(), *group, *snaplen, *queue_threshold)
            }
        }
    }
}

/// `limit rate RATE/UNIT burst BURST type packets flags 0x0`, every attribute set as nft sets
/// it (`netlink_gen_limit_stmt`).
fn limit(rate: u64, unit: u64, burst: u32) -> NonNull<sys::nftnl_expr> {
    // SAFETY: nftnl_expr_alloc gets a NUL-terminated name; `alloc` aborts on NULL.
    let e = alloc(unsafe { sys::nftnl_expr_alloc(c"limit".as_ptr()) });
    // SAFETY: `e` is live and unshared; integer attributes take no pointers. The caller
    // (`Rule::add_expr`) takes ownership of `e`.
    unsafe {
        let p = e.as_ptr();
        sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_RATE as u16, rate);
        sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_UNIT as u16, unit);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_BURST as u16, burst);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_TYPE as u16, NFT_LIMIT_PKTS);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_FLAGS as u16, 0);
    }
    e
}

/// `enum nft_limit_type`: a limit in packets (not bytes).
const NFT_LIMIT_PKTS: u32 = 0;

/// `log [prefix P] group G [snaplen S] [qthreshold Q]`, as nft sets it
/// (`netlink_gen_log_stmt`: the prefix when given, then the group and, only with a group, the
/// snaplen and queue threshold when given).
fn log(
    prefix: Option<&CStr>,
    group: u16,
    snaplen: Option<u32>,
    queue_threshold: Option<u16>,
) -> NonNull<sys::nftnl_expr> {
    // SAFETY: nftnl_expr_alloc gets a NUL-terminated name; `alloc` aborts on NULL.
    let e = alloc(unsafe { sys::nftnl_expr_alloc(c"log".as_ptr()) });
    // SAFETY: `e` is live and unshared; the prefix is NUL-terminated and copied by libnftnl,
    // integer attributes take no pointers. The caller (`Rule::add_expr`) takes ownership of `e`.
    unsafe {
        let p = e.as_ptr();
        if let Some(prefix) = prefix {
            sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOG_PREFIX as u16, prefix.as_ptr());
        }
        sys::nftnl_expr_set_u16(p, sys::NFTNL_EXPR_LOG_GROUP as u16, group);
        if let Some(snaplen) = snaplen {
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOG_SNAPLEN as u16, snaplen);
        }
        if let Some(q) = queue_threshold {
            sys::nftnl_expr_set_u16(p, sys::NFTNL_EXPR_LOG_QTHRESHOLD as u16, q);
        }
    }
    e
}

/// `payload load LEN @ BASE + OFFSET => reg DREG`.
fn payload(base: PayloadBase, offset: u32, len: u32, dreg: u32) -> NonNull<sys::nftnl_expr> {
    let base = match base {
        PayloadBase::Link => libc::NFT_PAYLOAD_LL_HEADER,
        PayloadBase::Network => libc::NFT_PAYLOAD_NETWORK_HEADER,
        PayloadBase::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
    } as u32;
    // SAFETY: nftnl_expr_alloc gets a NUL-terminated name; `alloc` aborts on NULL.
    let e = alloc(unsafe { sys::nftnl_expr_alloc(c"payload".as_ptr()) });
    // SAFETY: `e` is live and unshared; u32 attributes take no pointers. The caller
    // (`Rule::add_expr`) takes ownership of `e`.
    unsafe {
        let p = e.as_ptr();
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, dreg);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, len);
    }
    e
}

/// `lookup reg 1 set NAME`, with `dreg 0` for a verdict map.
fn lookup(name: &CString, id: u32, verdict_map: bool) -> NonNull<sys::nftnl_expr> {
    // SAFETY: nftnl_expr_alloc gets a NUL-terminated name; `alloc` aborts on NULL.
    let e = alloc(unsafe { sys::nftnl_expr_alloc(c"lookup".as_ptr()) });
    // SAFETY: `e` is live and unshared; `name` is NUL-terminated and copied by libnftnl. The
    // caller (`Rule::add_expr`) takes ownership of `e`.
    unsafe {
        let p = e.as_ptr();
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_SREG as u16, libc::NFT_REG_1 as u32);
        sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, name.as_ptr());
        sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, id);
        if verdict_map {
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_DREG as u16, libc::NFT_REG_VERDICT as u32);
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_name() {
        assert_eq!(TABLE.to_str(), Ok(policyc_compiler::render::nft::TABLE));
    }
}
