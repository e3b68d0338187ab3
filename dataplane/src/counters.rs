//! The counters of a table's rules, read from nf_tables over netlink (`NFNL_SUBSYS_NFTABLES` on
//! a `NETLINK_NETFILTER` socket), without running `nft`: what `nft -j list table inet NAME`
//! reports of each rule's `counter` and comment, at the cost of one rule dump.
//!
//! ```text
//!  rule_counters ── NFT_MSG_GETTABLE  NFTA_TABLE_NAME, ACK ──────────────────────► kernel
//!                ◄─ NEWTABLE, ACK                (or ENOENT: CountersError::NoTable)
//!                ── NFT_MSG_GETRULE, NLM_F_DUMP, NFPROTO_INET, NFTA_RULE_TABLE ──►
//!                   (NFPROTO_BRIDGE for `table bridge policyc`: rule_counters_of)
//!                ◄─ NEWRULE, NEWRULE, … (NLM_F_MULTI, same seq) … NLMSG_DONE
//!                   └─► Vec<RuleCounters>: chain, handle, comment, packets, bytes
//! ```
//!
//! Each rule's attributes: `NFTA_RULE_CHAIN`, `NFTA_RULE_HANDLE` (u64, big-endian),
//! `NFTA_RULE_USERDATA` (libnftnl's TLVs: type u8, length u8, value; the comment is type
//! `NFTNL_UDATA_RULE_COMMENT`, NUL-terminated) and `NFTA_RULE_EXPRESSIONS` (a list of
//! `NFTA_LIST_ELEM`, each an `NFTA_EXPR_NAME` and its `NFTA_EXPR_DATA`; a `counter`'s data holds
//! `NFTA_COUNTER_BYTES` and `NFTA_COUNTER_PACKETS`, u64 big-endian).
//!
//! # Behaviour contract
//!
//! * **Consistent dumps.** nf_tables flags a dump `NLM_F_DUMP_INTR` when the ruleset changed
//!   while it was read (a commit in between); such a dump, and one the kernel ends with `EINTR`
//!   or `EAGAIN`, or one whose messages were lost (`ENOBUFS`), is read again, up to
//!   [`DUMP_ATTEMPTS`] times ([`CountersError::Inconsistent`] after that). The flag is not
//!   enough: a commit bumps the generation number before it switches the rules over, so a dump
//!   that starts in between sees a mix of both generations unflagged (seen on a loaded machine:
//!   a 2,000-rule table dumped as empty, twice in a row, while the commit activated its rules).
//!   So each dump is preceded by a barrier, an empty batch, which the kernel runs under its
//!   commit mutex (it returns once any commit in progress has finished), and followed by the
//!   generation number (`NFT_MSG_GETGEN`); a dump counts only when the next one has the same
//!   generation and lists the same rules (chain and handle): at least two reads per call. A
//!   dump torn by a commit differs from the one after the barrier that waited for that commit. So the rules returned are those of
//!   one generation of the ruleset; their counters are read as the kernel walks them, like `nft`
//!   does.
//! * **Only counted rules.** Rules without a `counter` expression are left out; a rule with
//!   several counters reports its first one.
//! * **A missing table** is [`CountersError::NoTable`], as `nft list table` fails, not an empty
//!   list.
//! * **Namespaces**: the socket is opened by a short-lived thread that enters the namespace
//!   (`socket.rs`); the caller's thread never changes namespace. One socket per call: nothing
//!   is kept between calls.
//! * No `unsafe`: messages are built and parsed as bytes, every length checked; a malformed
//!   message is [`CountersError::Malformed`], never a panic.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::nla::{
    be32, be64, nfnl_msg_type, string, Attrs, Messages, MsgBuilder, NFGENMSG_LEN, NFNETLINK_V0, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use crate::socket::{NlSocket, SocketError};

pub use policyc_compiler::nft::TableFamily;

// --- linux/netfilter/nfnetlink.h, nf_tables.h, netfilter.h ---
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFT_MSG_NEWTABLE: u16 = 0;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

// --- libnftnl/udata.h ---
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// How many dumps one call reads at most (two agreeing ones end it).
pub const DUMP_ATTEMPTS: u32 = 10;
/// How long to wait for each message from the kernel.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Dump datagrams are at most 32 KiB (`netlink_recvmsg` caps `max_recvmsg_len`).
const RECV_BUF: usize = 128 * 1024;

/// One rule's counter, as `nft -j list table` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounters {
    pub chain: String,
    /// The kernel's handle of the rule (`nft -a`).
    pub handle: u64,
    /// The rule's comment (`NFTNL_UDATA_RULE_COMMENT`).
    pub comment: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("reading rule counters: cannot open network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading rule counters: {op} failed")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// No such table: its family and name, e.g. `inet policyc`.
    #[error("reading rule counters: no table {0}")]
    NoTable(String),
    #[error("reading rule counters: the kernel refused the {what} ({errno})")]
    Kernel {
        what: &'static str,
        errno: Errno,
        #[source]
        source: io::Error,
    },
    #[error("reading rule counters: no answer from the kernel within {0:?}")]
    Timeout(Duration),
    #[error("reading rule counters: the ruleset changed during {0} dumps in a row")]
    Inconsistent(u32),
    #[error("reading rule counters: malformed message from the kernel: {0}")]
    Malformed(String),
}

impl CountersError {
    fn kernel(what: &'static str, errno: Errno) -> CountersError {
        CountersError::Kernel {
            what,
            errno,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    fn io(op: &'static str, errno: Errno) -> CountersError {
        CountersError::Socket {
            op,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    /// Whether the dump should simply be read again.
    fn is_transient(&self) -> bool {
        match self {
            CountersError::Kernel { errno, .. } => matches!(errno, Errno::EINTR | Errno::EAGAIN),
            CountersError::Socket { source, .. } => source.raw_os_error() == Some(Errno::ENOBUFS as i32),
            _ => false,
        }
    }
}

fn nft_msg_type(msg: u16) -> u16 {
    nfnl_msg_type(NFNL_SUBSYS_NFTABLES, msg)
}

/// The counted rules of `table inet <table>` in the network namespace at `netns` (a file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), or in the caller's when `None`.
pub fn rule_counters(netns: Option<&Path>, table: &str) -> Result<Vec<RuleCounters>, CountersError> {
    rule_counters_of(netns, TableFamily::Inet, table)
}

/// [`rule_counters`] of the table of another family: `TableFamily::Bridge` for the bridge
/// attachment's `table bridge policyc` (the source guard's drops). Rules are keyed by family,
/// table, chain and handle; the caller picks the family.
pub fn rule_counters_of(
    netns: Option<&Path>,
    family: TableFamily,
    table: &str,
) -> Result<Vec<RuleCounters>, CountersError> {
    let mut reader = Reader::open(netns, family)?;
    reader.check_table(table)?;
    // A dump counts when the next one, after a commit barrier and in the same generation, lists
    // the same rules: see "Consistent dumps" above.
    let mut previous: Option<(Vec<RuleCounters>, u32)> = None;
    for _ in 0..DUMP_ATTEMPTS {
        match reader.dump_after_barrier(table) {
            Ok(Some((rules, generation))) => {
                if previous
                    .as_ref()
                    .is_some_and(|(p, g)| *g == generation && same_rules(p, &rules))
                {
                    return Ok(rules);
                }
                previous = Some((rules, generation));
            }
            // Interrupted: the dump ran to its end, the socket is fine.
            Ok(None) => {}
            // Lost messages or an error midway: a fresh socket, so nothing left over is read.
            Err(e) if e.is_transient() => reader = Reader::open(netns, family)?,
            Err(e) => return Err(e),
        }
    }
    Err(CountersError::Inconsistent(DUMP_ATTEMPTS))
}

/// Whether two dumps list the same rules (chain and handle, in order); counters may differ.
fn same_rules(a: &[RuleCounters], b: &[RuleCounters]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.handle == y.handle && x.chain == y.chain)
}

/// Whether the kernel has `table FAMILY <table>` (one table lookup).
pub fn table_exists(netns: Option<&Path>, family: TableFamily, table: &str) -> Result<bool, CountersError> {
    match Reader::open(netns, family)?.check_table(table) {
        Ok(()) => Ok(true),
        Err(CountersError::NoTable(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ruleset's generation number, then the handle of `table FAMILY <table>` (`None` when
/// there is none), asked on `sock` (the writer's socket, in the writer's network namespace),
/// which is handed back. Read in that order: a batch that carries the generation
/// (`NFNL_BATCH_GENID`) is refused unless nothing was committed since, so the table it changes
/// is the one whose handle was read. Table handles are never reused in a network namespace: a
/// table deleted and created again (by `nft -f` of a rendered ruleset, another writer) has
/// another one, and so do its rules.
pub(crate) fn generation_and_table(
    sock: NlSocket,
    family: TableFamily,
    table: &str,
) -> (Result<(u32, Option<u64>), CountersError>, NlSocket) {
    let mut r = Reader::on(sock, family);
    let answer = r.set_timeout().and_then(|()| {
        let generation = r.generation()?;
        Ok((generation, r.table_handle(table)?))
    });
    (answer, r.sock)
}

fn nfproto(family: TableFamily) -> u8 {
    match family {
        TableFamily::Inet => NFPROTO_INET,
        TableFamily::Bridge => NFPROTO_BRIDGE,
    }
}

struct Reader {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
    family: TableFamily,
}

impl Reader {
    fn open(netns: Option<&Path>, family: TableFamily) -> Result<Reader, CountersError> {
        let open_err = |e: SocketError| match (netns, e.op) {
            (Some(path), "setns") => CountersError::Netns {
                path: path.to_path_buf(),
                source: e.source,
            },
            _ => CountersError::Socket {
                op: e.op,
                source: e.source,
            },
        };
        let sock = match netns {
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|source| CountersError::Netns {
                    path: path.to_path_buf(),
                    source,
                })?;
                NlSocket::open_in(Some(&file)).map_err(open_err)?
            }
            None => NlSocket::open_in(None).map_err(open_err)?,
        };
        sock.set_recv_timeout(TIMEOUT).map_err(open_err)?;
        Ok(Reader::on(sock, family))
    }

    fn on(sock: NlSocket, family: TableFamily) -> Reader {
        Reader {
            sock,
            // Different from any earlier socket's numbers on a reused port id.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1),
            buf: vec![0; RECV_BUF],
            family,
        }
    }

    fn set_timeout(&self) -> Result<(), CountersError> {
        self.sock.set_recv_timeout(TIMEOUT).map_err(|e| CountersError::Socket {
            op: e.op,
            source: e.source,
        })
    }

    fn request(&mut self, msg: u16, flags: u16, attrs: impl FnOnce(&mut MsgBuilder)) -> Result<u32, CountersError> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = MsgBuilder::new(nft_msg_type(msg), NLM_F_REQUEST | flags, self.seq, nfproto(self.family));
        attrs(&mut m);
        self.sock.send(&m.finish()).map_err(|e| CountersError::io("send", e))?;
        Ok(self.seq)
    }

    fn recv(&mut self) -> Result<usize, CountersError> {
        match self.sock.recv(&mut self.buf, true) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Err(CountersError::Timeout(TIMEOUT)),
            Err(e) => Err(CountersError::io("recv", e)),
        }
    }

    /// Waits until no commit is in progress: an empty batch, which the kernel handles under
    /// the nf_tables commit mutex, synchronously within the send.
    fn barrier(&mut self) -> Result<(), CountersError> {
        // nfgenmsg with res_id = the nf_tables subsystem (big-endian), as batches carry it.
        let header = [0u8, NFNETLINK_V0, 0, NFNL_SUBSYS_NFTABLES as u8];
        let mut batch = Vec::new();
        for ty in [NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END] {
            self.seq = self.seq.wrapping_add(1);
            batch.extend(MsgBuilder::with_header(ty, NLM_F_REQUEST, self.seq, &header).finish());
        }
        self.sock.send(&batch).map_err(|e| CountersError::io("send", e))
    }

    /// A barrier, one dump and the generation after it; `None` when the kernel flagged the
    /// dump interrupted.
    fn dump_after_barrier(&mut self, table: &str) -> Result<Option<(Vec<RuleCounters>, u32)>, CountersError> {
        self.barrier()?;
        match self.dump_once(table)? {
            Some(rules) => Ok(Some((rules, self.generation()?))),
            None => Ok(None),
        }
    }

    /// The ruleset's generation number (`NFT_MSG_GETGEN`).
    fn generation(&mut self) -> Result<u32, CountersError> {
        let seq = self.request(NFT_MSG_GETGEN, 0, |_| {})?;
        loop {
            let n = self.recv()?;
            for msg in Messages(&self.buf[..n]) {
                let msg = msg.map_err(CountersError::Malformed)?;
                if msg.seq != seq {
                    continue;
                }
                if msg.ty == NLMSG_ERROR {
                    match msg.error().map_err(CountersError::Malformed)? {
                        0 => continue,
                        errno => return Err(CountersError::kernel("generation", Errno::from_raw(errno))),
                    }
                }
                if msg.ty == nft_msg_type(NFT_MSG_NEWGEN) {
                    let attrs = msg.payload.get(NFGENMSG_LEN..).unwrap_or_default();
                    for attr in Attrs(attrs) {
                        let (ty, data) = attr.map_err(CountersError::Malformed)?;
                        if ty == NFTA_GEN_ID {
                            return be32("generation id", data).map_err(CountersError::Malformed);
                        }
                    }
                    return Err(CountersError::Malformed("NEWGEN without NFTA_GEN_ID".into()));
                }
            }
        }
    }

    /// The handle of `table FAMILY <table>`, `None` when there is none.
    fn table_handle(&mut self, table: &str) -> Result<Option<u64>, CountersError> {
        let seq = self.request(NFT_MSG_GETTABLE, NLM_F_ACK, |m| m.put_str(NFTA_TABLE_NAME, table))?;
        let mut handle = None;
        loop {
            let n = self.recv()?;
            for msg in Messages(&self.buf[..n]) {
                let msg = msg.map_err(CountersError::Malformed)?;
                if msg.seq != seq {
                    continue;
                }
                if msg.ty == nft_msg_type(NFT_MSG_NEWTABLE) {
                    let attrs = msg.payload.get(NFGENMSG_LEN..).unwrap_or_default();
                    for attr in Attrs(attrs) {
                        let (ty, data) = attr.map_err(CountersError::Malformed)?;
                        if ty == NFTA_TABLE_HANDLE {
                            handle = Some(be64("table handle", data).map_err(CountersError::Malformed)?);
                        }
                    }
                    continue;
                }
                if msg.ty != NLMSG_ERROR {
                    continue;
                }
                return match msg.error().map_err(CountersError::Malformed)? {
                    0 if handle.is_some() => Ok(handle),
                    0 => Err(CountersError::Malformed("table without NFTA_TABLE_HANDLE".into())),
                    errno if errno == Errno::ENOENT as i32 => Ok(None),
                    errno => Err(CountersError::kernel("table lookup", Errno::from_raw(errno))),
                };
            }
        }
    }

    /// `NoTable` unless the kernel has `table FAMILY <table>`.
    fn check_table(&mut self, table: &str) -> Result<(), CountersError> {
        match self.table_handle(table)? {
            Some(_) => Ok(()),
            None => Err(CountersError::NoTable(format!("{} {table}", self.family.as_str()))),
        }
    }

    /// One dump: `Some(rules)`, or `None` when the kernel flagged it interrupted.
    fn dump_once(&mut self, table: &str) -> Result<Option<Vec<RuleCounters>>, CountersError> {
        let seq = self.request(NFT_MSG_GETRULE, NLM_F_DUMP, |m| m.put_str(NFTA_RULE_TABLE, table))?;
        let mut rules = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            for msg in Messages(&self.buf[..n]) {
                let msg = msg.map_err(CountersError::Malformed)?;
                if msg.seq != seq {
                    continue; // left over from an earlier request
                }
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.ty {
                    NLMSG_DONE => {
                        return match msg.done_error() {
                            0 => Ok((!interrupted).then_some(rules)),
                            errno => Err(CountersError::kernel("rule dump", Errno::from_raw(errno))),
                        }
                    }
                    NLMSG_ERROR => match msg.error().map_err(CountersError::Malformed)? {
                        0 => {}
                        errno => return Err(CountersError::kernel("rule dump", Errno::from_raw(errno))),
                    },
                    NLMSG_OVERRUN => return Err(CountersError::io("recv", Errno::ENOBUFS)),
                    NLMSG_NOOP => {}
                    ty if ty == nft_msg_type(NFT_MSG_NEWRULE) => {
                        let rule = parse_rule(msg.payload, nfproto(self.family), table);
                        if let Some(rule) = rule.map_err(CountersError::Malformed)? {
                            rules.push(rule);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The counter of a rule from the payload (`nfgenmsg` and attributes) of an `NFT_MSG_NEWRULE`
/// message; `None` for a rule of another table or family, or without a counter.
fn parse_rule(payload: &[u8], want_family: u8, table: &str) -> Result<Option<RuleCounters>, String> {
    let family = *payload.first().ok_or("empty rule message")?;
    let attrs = payload
        .get(NFGENMSG_LEN..)
        .ok_or("rule message shorter than nfgenmsg")?;
    let (mut rule_table, mut chain, mut handle, mut comment, mut counter) = (None, None, None, None, None);
    for attr in Attrs(attrs) {
        let (ty, data) = attr?;
        match ty {
            NFTA_RULE_TABLE => rule_table = Some(string("NFTA_RULE_TABLE", data)?),
            NFTA_RULE_CHAIN => chain = Some(string("NFTA_RULE_CHAIN", data)?),
            NFTA_RULE_HANDLE => handle = Some(be64("NFTA_RULE_HANDLE", data)?),
            NFTA_RULE_USERDATA => comment = parse_comment(data)?,
            NFTA_RULE_EXPRESSIONS => counter = first_counter(data)?,
            _ => {}
        }
    }
    if family != want_family || rule_table.as_deref() != Some(table) {
        return Ok(None);
    }
    let Some((packets, bytes)) = counter else {
        return Ok(None);
    };
    Ok(Some(RuleCounters {
        chain: chain.ok_or("rule without NFTA_RULE_CHAIN")?,
        handle: handle.ok_or("rule without NFTA_RULE_HANDLE")?,
        comment,
        packets,
        bytes,
    }))
}

/// The comment in a rule's userdata: libnftnl's TLVs (type u8, length u8, value), the comment
/// NUL-terminated.
fn parse_comment(mut udata: &[u8]) -> Result<Option<String>, String> {
    while let [ty, len, rest @ ..] = udata {
        let value = rest
            .get(..*len as usize)
            .ok_or_else(|| format!("rule userdata item {ty} of length {len} with {} bytes left", rest.len()))?;
        if *ty == NFTNL_UDATA_RULE_COMMENT {
            return string("rule comment", value).map(Some);
        }
        udata = &rest[*len as usize..];
    }
    match udata {
        [] => Ok(None),
        _ => Err("rule userdata: 1 trailing byte".to_string()),
    }
}

/// `(packets, bytes)` of the first `counter` in a rule's `NFTA_RULE_EXPRESSIONS`.
fn first_counter(list: &[u8]) -> Result<Option<(u64, u64)>, String> {
    for elem in Attrs(list) {
        let (ty, expr) = elem?;
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let (mut name, mut data) = (None, None);
        for attr in Attrs(expr) {
            let (ty, value) = attr?;
            match ty {
                NFTA_EXPR_NAME => name = Some(value),
                NFTA_EXPR_DATA => data = Some(value),
                _ => {}
            }
        }
        let Some(name) = name else {
            return Err("expression without NFTA_EXPR_NAME".to_string());
        };
        if string("NFTA_EXPR_NAME", name)? != "counter" {
            continue;
        }
        let (mut packets, mut bytes) = (0, 0);
        for attr in Attrs(data.unwrap_or_default()) {
            let (ty, value) = attr?;
            match ty {
                NFTA_COUNTER_PACKETS => packets = be64("NFTA_COUNTER_PACKETS", value)?,
                NFTA_COUNTER_BYTES => bytes = be64("NFTA_COUNTER_BYTES", value)?,
                _ => {}
            }
        }
        return Ok(Some((packets, bytes)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::testing::{attr, message, nest};
    use crate::nla::NLMSG_HDRLEN;

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut parts = vec![attr(NFTA_EXPR_NAME, format!("{name}\0").as_bytes())];
        if !data.is_empty() {
            parts.push(nest(NFTA_EXPR_DATA, data));
        }
        nest(NFTA_LIST_ELEM, &parts)
    }

    fn udata_comment(c: &str) -> Vec<u8> {
        let mut v = vec![NFTNL_UDATA_RULE_COMMENT, (c.len() + 1) as u8];
        v.extend_from_slice(c.as_bytes());
        v.push(0);
        v
    }

    /// A rule message as the kernel dumps it: `meta l4proto tcp counter accept comment "…"`.
    fn kernel_rule(table: &str, handle: u64, udata: &[u8], counter: Option<(u64, u64)>) -> Vec<u8> {
        let mut exprs = vec![
            expr("meta", &[attr(2, &1u32.to_be_bytes()), attr(1, &16u32.to_be_bytes())]),
            expr("cmp", &[attr(1, &1u32.to_be_bytes()), attr(2, &0u32.to_be_bytes())]),
        ];
        if let Some((p, b)) = counter {
            exprs.push(expr(
                "counter",
                &[
                    attr(NFTA_COUNTER_BYTES, &b.to_be_bytes()),
                    attr(NFTA_COUNTER_PACKETS, &p.to_be_bytes()),
                ],
            ));
        }
        exprs.push(expr("immediate", &[attr(1, &0u32.to_be_bytes())]));
        [
            vec![NFPROTO_INET, 0, 0, 7],
            attr(NFTA_RULE_TABLE, format!("{table}\0").as_bytes()),
            attr(NFTA_RULE_CHAIN, b"np_0123456789ab_in\0"),
            attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()),
            nest(NFTA_RULE_EXPRESSIONS, &exprs),
            attr(NFTA_RULE_USERDATA, udata),
        ]
        .concat()
    }

    #[test]
    fn parses_a_kernel_rule() {
        let payload = kernel_rule("policyc", 42, &udata_comment("x/allow ingress[1]"), Some((3, 180)));
        let r = parse_rule(&payload, NFPROTO_INET, "policyc").unwrap().unwrap();
        assert_eq!(
            r,
            RuleCounters {
                chain: "np_0123456789ab_in".into(),
                handle: 42,
                comment: Some("x/allow ingress[1]".into()),
                packets: 3,
                bytes: 180,
            }
        );
        // Another table, or no counter: not reported.
        assert_eq!(parse_rule(&payload, NFPROTO_INET, "other").unwrap(), None);
        let payload = kernel_rule("policyc", 43, &udata_comment("c"), None);
        assert_eq!(parse_rule(&payload, NFPROTO_INET, "policyc").unwrap(), None);
    }

    #[test]
    fn finds_the_comment_among_userdata_items() {
        // An item of another type first (NFTNL_UDATA_RULE_EBTABLES_POLICY), then the comment.
        let mut udata = vec![1, 4, 0, 0, 0, 1];
        udata.extend(udata_comment("ns/pod ingress denied: selected by ns/p"));
        assert_eq!(
            parse_comment(&udata).unwrap().as_deref(),
            Some("ns/pod ingress denied: selected by ns/p")
        );
        assert_eq!(parse_comment(&[1, 1, 9]).unwrap(), None);
        assert_eq!(parse_comment(&[]).unwrap(), None);
        // A length past the end, a lone byte.
        assert!(parse_comment(&[0, 9, b'a', 0]).is_err());
        assert!(parse_comment(&[1, 0, 5]).is_err());
        // No comment item: the rule still counts.
        let payload = kernel_rule("policyc", 1, &[], Some((1, 2)));
        assert_eq!(
            parse_rule(&payload, NFPROTO_INET, "policyc").unwrap().unwrap().comment,
            None
        );
    }

    #[test]
    fn rejects_malformed_rules() {
        let good = kernel_rule("policyc", 42, &udata_comment("a"), Some((1, 2)));
        assert!(parse_rule(&good[..good.len() - 9], NFPROTO_INET, "policyc").is_err());
        assert!(parse_rule(&[], NFPROTO_INET, "policyc").is_err());
        // A 4-byte handle.
        let mut bad = good[..4].to_vec();
        bad.extend(attr(NFTA_RULE_HANDLE, &[0, 0, 0, 1]));
        assert!(parse_rule(&bad, NFPROTO_INET, "policyc")
            .unwrap_err()
            .contains("NFTA_RULE_HANDLE"));
        // A counter with a 4-byte packet count.
        let bad = [
            vec![NFPROTO_INET, 0, 0, 0],
            nest(
                NFTA_RULE_EXPRESSIONS,
                &[expr("counter", &[attr(NFTA_COUNTER_PACKETS, &[0, 0, 0, 1])])],
            ),
        ]
        .concat();
        assert!(parse_rule(&bad, NFPROTO_INET, "policyc")
            .unwrap_err()
            .contains("NFTA_COUNTER_PACKETS"));
    }

    #[test]
    fn encodes_the_dump_request() {
        let mut m = MsgBuilder::new(
            nft_msg_type(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            NFPROTO_INET,
        );
        m.put_str(NFTA_RULE_TABLE, "policyc");
        let req = m.finish();
        let mut want = message(
            0x0a07,
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            &[vec![NFPROTO_INET, 0, 0, 0], attr(NFTA_RULE_TABLE, b"policyc\0")].concat(),
        );
        want[12..16].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(req, want);
        assert_eq!(req.len(), NLMSG_HDRLEN + 4 + 12);
    }
}
