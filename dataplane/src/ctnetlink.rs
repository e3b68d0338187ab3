//! The conntrack table over ctnetlink (`NFNL_SUBSYS_CTNETLINK` on a `NETLINK_NETFILTER`
//! socket), without `conntrack` or libnetfilter_conntrack: list every entry, and change the mark
//! of one entry with its own request and its own acknowledgement.
//!
//! ```text
//!  Conntrack::dump ── IPCTNL_MSG_CT_GET, NLM_F_DUMP, AF_UNSPEC ──────────► kernel
//!                  ◄─ CT_NEW, CT_NEW, … (NLM_F_MULTI, same seq) … NLMSG_DONE
//!                     └─► Vec<Entry>: original + reply tuple, id, mark, status, zone
//!
//!  Conntrack::set_marks ── CT_NEW #seq=n   (no NLM_F_CREATE: update only) ─┐ one write,
//!                          CT_NEW #seq=n+1  CTA_TUPLE_ORIG, CTA_ID,        │ ≤ WINDOW
//!                          …                CTA_MARK, CTA_MARK_MASK, ACK   ┘ messages
//!                      ◄── NLMSG_ERROR #n: 0 → Done, -ENOENT → Vanished, else Kernel error
//!                      ◄── NLMSG_ERROR #n+1 …   (answers matched by sequence number)
//! ```
//!
//! # Behaviour contract
//!
//! * **Mark arithmetic** (kernel `ctnetlink_change_mark`): `new = (old & !mask) ^ value`.
//!   [`Conntrack::set_mark`] requires `value & !mask == 0`, where this is "replace the `mask`
//!   bits by `value`, keep the others"; it is idempotent, so retrying it is always safe.
//!   [`Conntrack::set_mark_unchecked`] sends any pair, and bits of `value` outside `mask` then
//!   *toggle*.
//! * **Which entry an update hits**: the kernel looks the entry up by the original tuple
//!   (plus zone) only. It ignores `CTA_ID` on updates (we send it anyway; a kernel that checks
//!   it would answer ENOENT, which we report as [`Update::Vanished`]). So if the entry died and
//!   a new one with the same tuple appeared meanwhile, the new one is updated. The lookup also
//!   matches an entry whose *reply* tuple equals the tuple sent (a connection opened the other
//!   way round).
//! * **Every update has its own answer.** Each message asks for an acknowledgement and has its
//!   own sequence number; answers with other numbers (left over from an earlier, abandoned
//!   request) are ignored. ENOENT (the entry expired or was deleted) is [`Update::Vanished`],
//!   not an error. Any other failure is returned for that update alone; a lost answer
//!   ([`CtError::Overrun`], [`CtError::Timeout`]) means "unknown", and the update should be
//!   retried ([`CtError::is_retryable`]).
//! * **Dumps** are not snapshots: entries created or destroyed during a dump may or may not
//!   appear. An entry seen twice (the kernel resumes after a hash resize by id) is kept once.
//!   `NLM_F_DUMP_INTR` (not set by conntrack dumps today) and a receive-buffer overrun restart
//!   the dump (up to [`DUMP_ATTEMPTS`] times, the buffer doubled after an overrun).
//! * **Threads**: a [`Conntrack`] is `Send + Sync`; requests are serialized on its socket. A
//!   request that fails midway (timeout, overrun, socket error) drops the socket, and the next
//!   request opens a fresh one in the same namespace, so no half-read dump or late answer can
//!   confuse it.
//! * **Namespaces**: the socket is opened by a short-lived thread that enters the namespace
//!   (see `socket.rs`); the caller's threads never change namespace. The namespace file stays
//!   open, so the socket can be reopened even after `/run/netns/NAME` is unmounted.
//!
//! # Safety
//!
//! No `unsafe` here: system calls go through `nix`, messages are built and parsed as bytes.
//! Everything the kernel sends is length-checked before use; a malformed message is a
//! [`CtError::Malformed`], never a panic.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;

use crate::nla::{
    be16, be32, fixed, nfnl_msg_type, Attrs, Messages, MsgBuilder, NFGENMSG_LEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use crate::socket::{NlSocket, SocketError};

// --- nfnetlink (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h) ---
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_MARK_MASK: u16 = 21;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;

const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

/// IP protocol numbers of [`Tuple::protocol`].
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Bits of [`Entry::status`] (`enum ip_conntrack_status`).
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
pub const IPS_ASSURED: u32 = 1 << 2;
pub const IPS_CONFIRMED: u32 = 1 << 3;
pub const IPS_DYING: u32 = 1 << 9;

/// How many times a dump is restarted after an interruption or an overrun.
pub const DUMP_ATTEMPTS: u32 = 5;
/// Updates sent in one write (each still with its own sequence number and answer).
pub const WINDOW: usize = 64;
/// How long a request waits for the kernel's next message by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const INITIAL_RCVBUF: usize = 4 << 20;
const MAX_RCVBUF: usize = 64 << 20;
/// The kernel's dump messages fit in 32 KiB (`netlink_recvmsg` caps `max_recvmsg_len`).
const RECV_BUF: usize = 128 * 1024;

/// What the transport-layer part of a tuple holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP (and GRE keys, which the kernel reports as ports).
    Ports { src: u16, dst: u16 },
    /// ICMP and ICMPv6 (`kind` is the ICMP type).
    Icmp { id: u16, kind: u8, code: u8 },
    /// Protocols conntrack tracks by addresses only.
    None,
}

/// One direction of a connection, as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number ([`IPPROTO_TCP`], ...).
    pub protocol: u8,
    pub l4: L4,
    /// A zone that applies to this direction only (`CTA_TUPLE_ZONE`).
    pub zone: Option<u16>,
}

impl Tuple {
    /// `(source port, destination port)`, for protocols with ports.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Ports { src, dst } => Some((src, dst)),
            _ => None,
        }
    }
}

/// One conntrack entry, as a dump returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The direction of the first packet: what a policy judges.
    pub orig: Tuple,
    pub reply: Tuple,
    /// The kernel's id of the entry (`CTA_ID`, as `conntrack -o id` prints it).
    pub id: u32,
    pub mark: u32,
    /// `IPS_*` bits.
    pub status: u32,
    /// Zone of both directions (`CTA_ZONE`), when not the default zone.
    pub zone: Option<u16>,
    /// Seconds left, when the kernel reports it (not for offloaded flows).
    pub timeout: Option<u32>,
}

impl Entry {
    pub fn is_ipv6(&self) -> bool {
        self.orig.src.is_ipv6()
    }

    pub fn protocol(&self) -> u8 {
        self.orig.protocol
    }

    /// Source and destination ports of the original direction, for protocols with ports.
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.orig.ports()
    }
}

/// What an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The kernel found the entry and changed its mark (or it already had that mark).
    Done,
    /// No entry has that tuple any more (ENOENT): it expired or was deleted.
    Vanished,
}

/// One mark change for [`Conntrack::set_marks`].
#[derive(Clone, Copy, Debug)]
pub struct MarkChange<'a> {
    pub entry: &'a Entry,
    pub value: u32,
    pub mask: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("opening a ctnetlink socket: cannot open network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening a ctnetlink socket{}: {op} failed", in_netns(.netns))]
    Open {
        netns: Option<PathBuf>,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("ctnetlink {op}: {call} failed")]
    Io {
        op: &'static str,
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("ctnetlink {op}: the kernel refused it ({errno})")]
    Kernel {
        op: &'static str,
        errno: Errno,
        #[source]
        source: io::Error,
    },
    #[error("ctnetlink {op}: no answer from the kernel within {timeout:?}; whether it was applied is unknown")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("ctnetlink {op}: answers lost (receive buffer overrun); whether it was applied is unknown")]
    Overrun { op: &'static str },
    #[error("ctnetlink dump: interrupted (NLM_F_DUMP_INTR or overrun) {attempts} times in a row")]
    DumpInconsistent { attempts: u32 },
    #[error("ctnetlink {op}: malformed message from the kernel: {detail}")]
    Malformed { op: &'static str, detail: String },
    #[error("ctnetlink set mark: value {value:#x} has bits outside mask {mask:#x}, which the kernel would toggle")]
    MarkOutsideMask { value: u32, mask: u32 },
}

fn in_netns(netns: &Option<PathBuf>) -> String {
    netns
        .as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

impl CtError {
    /// Whether trying the same request again may succeed: lost answers, transient kernel and
    /// socket errors. Not: bad arguments, a namespace that cannot be entered, malformed data.
    pub fn is_retryable(&self) -> bool {
        match self {
            CtError::Io { .. } | CtError::Timeout { .. } | CtError::Overrun { .. } => true,
            CtError::DumpInconsistent { .. } => true,
            CtError::Kernel { errno, .. } => !matches!(
                errno,
                Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP | Errno::EAFNOSUPPORT | Errno::EEXIST
            ),
            CtError::Netns { .. } | CtError::Open { .. } | CtError::Malformed { .. } => false,
            CtError::MarkOutsideMask { .. } => false,
        }
    }

    fn io(op: &'static str, call: &'static str, errno: Errno) -> CtError {
        CtError::Io {
            op,
            call,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    fn kernel(op: &'static str, errno: Errno) -> CtError {
        CtError::Kernel {
            op,
            errno,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// A ctnetlink connection to the conntrack table of one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    netns: Option<(PathBuf, File)>,
    timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` after a failure midway through a request: reopened by the next one.
    sock: Option<NlSocket>,
    seq: u32,
    rcvbuf: usize,
    buf: Vec<u8>,
}

impl Inner {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

impl Conntrack {
    /// Opens a ctnetlink socket in the network namespace at `netns` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), or in the caller's when `None`.
    pub fn open(netns: Option<&Path>) -> Result<Conntrack, CtError> {
        let netns = match netns {
            Some(path) => {
                let file = File::open(path).map_err(|source| CtError::Netns {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.to_path_buf(), file))
            }
            None => None,
        };
        let ct = Conntrack {
            netns,
            timeout: DEFAULT_TIMEOUT,
            inner: Mutex::new(Inner {
                sock: None,
                // Start from a time-derived number so that a restarted agent's sequence
                // numbers do not repeat its predecessor's on a reused port id.
                seq: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(1),
                rcvbuf: INITIAL_RCVBUF,
                buf: vec![0; RECV_BUF],
            }),
        };
        let mut inner = ct.lock();
        ct.socket(&mut inner)?;
        drop(inner);
        Ok(ct)
    }

    /// How long a request waits for each message from the kernel ([`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Conntrack {
        self.timeout = timeout;
        if let Some(sock) = &self.inner.get_mut().unwrap_or_else(|p| p.into_inner()).sock {
            // Applied again whenever a socket is opened.
            let _ = sock.set_recv_timeout(timeout);
        }
        self
    }

    /// Starts the socket's receive buffer at `bytes` (default 4 MiB). It doubles, up to
    /// 64 MiB, after every overrun.
    pub fn with_receive_buffer(self, bytes: usize) -> Conntrack {
        let mut inner = self.lock();
        inner.rcvbuf = bytes;
        if let Some(sock) = &inner.sock {
            if sock.set_recv_buffer(bytes).is_err() {
                inner.sock = None;
            }
        }
        drop(inner);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open socket, opening one first if needed.
    fn socket<'a>(&self, inner: &'a mut Inner) -> Result<&'a NlSocket, CtError> {
        if inner.sock.is_none() {
            let open_err = |e: SocketError| match (&self.netns, e.op) {
                (Some((path, _)), "setns") => CtError::Netns {
                    path: path.clone(),
                    source: e.source,
                },
                _ => CtError::Open {
                    netns: self.netns.as_ref().map(|(p, _)| p.clone()),
                    op: e.op,
                    source: e.source,
                },
            };
            let sock = NlSocket::open_in(self.netns.as_ref().map(|(_, f)| f)).map_err(open_err)?;
            sock.set_recv_buffer(inner.rcvbuf).map_err(open_err)?;
            sock.set_send_buffer(1 << 20).map_err(open_err)?;
            sock.set_recv_timeout(self.timeout).map_err(open_err)?;
            inner.sock = Some(sock);
        }
        Ok(inner.sock.as_ref().expect("just opened"))
    }

    /// Lists every conntrack entry (IPv4 and IPv6) of the namespace.
    pub fn dump(&self) -> Result<Vec<Entry>, CtError> {
        let mut inner = self.lock();
        for _ in 0..DUMP_ATTEMPTS {
            match self.dump_once(&mut inner) {
                Ok(Some(entries)) => return Ok(entries),
                // Interrupted: the dump ended cleanly, the socket is fine.
                Ok(None) => {}
                Err(CtError::Overrun { .. }) => {
                    inner.rcvbuf = (inner.rcvbuf * 2).min(MAX_RCVBUF);
                    inner.sock = None;
                }
                Err(e) => {
                    inner.sock = None;
                    return Err(e);
                }
            }
        }
        Err(CtError::DumpInconsistent {
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// One dump: `Some(entries)`, or `None` when the kernel flagged it interrupted.
    fn dump_once(&self, inner: &mut Inner) -> Result<Option<Vec<Entry>>, CtError> {
        const OP: &str = "dump";
        let seq = inner.next_seq();
        let mut req = MsgBuilder::new(
            ct_msg_type(IPCTNL_MSG_CT_GET),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            AF_UNSPEC,
        );
        let req = req.finish();
        self.socket(inner)?;
        let Inner { sock, buf, .. } = inner;
        let sock = sock.as_ref().expect("opened above");
        sock.send(&req).map_err(|e| CtError::io(OP, "send", e))?;

        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut interrupted = false;
        loop {
            let n = match sock.recv(buf, true) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => {
                    return Err(CtError::Timeout {
                        op: OP,
                        timeout: self.timeout,
                    })
                }
                Err(Errno::ENOBUFS) => return Err(CtError::Overrun { op: OP }),
                Err(e) => return Err(CtError::io(OP, "recv", e)),
            };
            for msg in Messages(&buf[..n]) {
                let msg = msg.map_err(|detail| CtError::Malformed { op: OP, detail })?;
                if msg.seq != seq {
                    continue; // left over from an earlier request
                }
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.ty {
                    NLMSG_DONE => {
                        // The dump callback's result: 0, or an errno.
                        match msg.done_error() {
                            0 => {}
                            errno => return Err(CtError::kernel(OP, Errno::from_raw(errno))),
                        }
                        return Ok((!interrupted).then_some(entries));
                    }
                    NLMSG_ERROR => match msg.error() {
                        Ok(0) => {}
                        Ok(errno) => return Err(CtError::kernel(OP, Errno::from_raw(errno))),
                        Err(detail) => return Err(CtError::Malformed { op: OP, detail }),
                    },
                    NLMSG_OVERRUN => return Err(CtError::Overrun { op: OP }),
                    NLMSG_NOOP => {}
                    ty if ty == ct_msg_type(IPCTNL_MSG_CT_NEW) => {
                        let e = parse_entry(msg.payload).map_err(|detail| CtError::Malformed { op: OP, detail })?;
                        if seen.insert((e.id, e.orig)) {
                            entries.push(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Replaces the `mask` bits of the entry's mark by `value` and keeps the other bits:
    /// `new = (old & !mask) | value`. `value` must lie within `mask`.
    pub fn set_mark(&self, entry: &Entry, value: u32, mask: u32) -> Result<Update, CtError> {
        self.set_marks(&[MarkChange { entry, value, mask }])
            .pop()
            .expect("one answer per change")
    }

    /// Sends `value` and `mask` as they are: the kernel computes `(old & !mask) ^ value`, so
    /// bits of `value` outside `mask` toggle.
    pub fn set_mark_unchecked(&self, entry: &Entry, value: u32, mask: u32) -> Result<Update, CtError> {
        let mut out = vec![None];
        self.update_window(&mut self.lock(), &[MarkChange { entry, value, mask }], &mut out);
        out.pop().flatten().expect("answered")
    }

    /// [`set_mark`](Self::set_mark) for many entries: each change is its own request with its
    /// own answer, up to [`WINDOW`] of them per write. The results are in the order of
    /// `changes`.
    pub fn set_marks(&self, changes: &[MarkChange<'_>]) -> Vec<Result<Update, CtError>> {
        let mut out: Vec<Option<Result<Update, CtError>>> = Vec::with_capacity(changes.len());
        for c in changes {
            out.push((c.value & !c.mask != 0).then_some(Err(CtError::MarkOutsideMask {
                value: c.value,
                mask: c.mask,
            })));
        }
        let valid: Vec<usize> = (0..changes.len()).filter(|&i| out[i].is_none()).collect();
        let mut inner = self.lock();
        for chunk in valid.chunks(WINDOW) {
            let batch: Vec<MarkChange<'_>> = chunk.iter().map(|&i| changes[i]).collect();
            let mut answers: Vec<Option<Result<Update, CtError>>> = (0..batch.len()).map(|_| None).collect();
            self.update_window(&mut inner, &batch, &mut answers);
            for (&i, a) in chunk.iter().zip(answers) {
                out[i] = a;
            }
        }
        out.into_iter().map(|r| r.expect("every change answered")).collect()
    }

    /// Sends `changes` in one write and collects an answer for each into `out`.
    fn update_window(
        &self,
        inner: &mut Inner,
        changes: &[MarkChange<'_>],
        out: &mut [Option<Result<Update, CtError>>],
    ) {
        const OP: &str = "set mark";
        let first = inner.seq.wrapping_add(1);
        let mut bytes = Vec::with_capacity(changes.len() * 128);
        for c in changes {
            let seq = inner.next_seq();
            bytes.extend_from_slice(&update_request(c.entry, c.value, c.mask, seq));
        }
        let fail_all = |out: &mut [Option<Result<Update, CtError>>], e: &dyn Fn() -> CtError| {
            for o in out.iter_mut().filter(|o| o.is_none()) {
                *o = Some(Err(e()));
            }
        };
        if let Err(e) = self.socket(inner) {
            // The same error for each change (io::Error is not Clone: copy kind and text).
            let copy = |s: &io::Error| io::Error::new(s.kind(), s.to_string());
            fail_all(out, &|| match &e {
                CtError::Netns { path, source } => CtError::Netns {
                    path: path.clone(),
                    source: copy(source),
                },
                CtError::Open { netns, op, source } => CtError::Open {
                    netns: netns.clone(),
                    op,
                    source: copy(source),
                },
                other => CtError::Io {
                    op: OP,
                    call: "open",
                    source: io::Error::other(other.to_string()),
                },
            });
            return;
        }
        let Inner { sock, buf, rcvbuf, .. } = inner;
        let s = sock.as_ref().expect("opened above");
        if let Err(e) = s.send(&bytes) {
            *sock = None;
            fail_all(out, &|| CtError::io(OP, "send", e));
            return;
        }

        let mut pending = changes.len();
        let mut overrun = false;
        while pending > 0 {
            // After an overrun, what is left is already queued: read without waiting.
            let n = match s.recv(buf, !overrun) {
                Ok(n) => n,
                Err(Errno::ENOBUFS) => {
                    overrun = true;
                    continue;
                }
                Err(Errno::EAGAIN) if overrun => break,
                Err(Errno::EAGAIN) => {
                    *sock = None;
                    let timeout = self.timeout;
                    fail_all(out, &|| CtError::Timeout { op: OP, timeout });
                    return;
                }
                Err(e) => {
                    *sock = None;
                    fail_all(out, &|| CtError::io(OP, "recv", e));
                    return;
                }
            };
            for msg in Messages(&buf[..n]) {
                let Ok(msg) = msg else {
                    break; // a broken datagram: its answers count as lost
                };
                let i = msg.seq.wrapping_sub(first) as usize;
                if msg.ty != NLMSG_ERROR || i >= out.len() || out[i].is_some() {
                    continue; // not an answer to this window
                }
                out[i] = Some(match msg.error() {
                    Ok(0) => Ok(Update::Done),
                    Ok(errno) if errno == Errno::ENOENT as i32 => Ok(Update::Vanished),
                    Ok(errno) => Err(CtError::kernel(OP, Errno::from_raw(errno))),
                    Err(detail) => Err(CtError::Malformed { op: OP, detail }),
                });
                pending -= 1;
            }
        }
        if overrun {
            *rcvbuf = (*rcvbuf * 2).min(MAX_RCVBUF);
            if s.set_recv_buffer(*rcvbuf).is_err() {
                *sock = None;
            }
        }
        fail_all(out, &|| CtError::Overrun { op: OP });
    }
}

fn ct_msg_type(msg: u16) -> u16 {
    nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, msg)
}

/// The `IPCTNL_MSG_CT_NEW` update (no `NLM_F_CREATE`) that sets `entry`'s mark.
fn update_request(entry: &Entry, value: u32, mask: u32, seq: u32) -> Vec<u8> {
    let family = if entry.is_ipv6() { AF_INET6 } else { AF_INET };
    let mut m = MsgBuilder::new(ct_msg_type(IPCTNL_MSG_CT_NEW), NLM_F_REQUEST | NLM_F_ACK, seq, family);
    put_tuple(&mut m, CTA_TUPLE_ORIG, &entry.orig);
    if let Some(zone) = entry.zone {
        m.put(CTA_ZONE, &zone.to_be_bytes());
    }
    m.put(CTA_ID, &entry.id.to_be_bytes());
    m.put(CTA_MARK, &value.to_be_bytes());
    m.put(CTA_MARK_MASK, &mask.to_be_bytes());
    m.finish()
}

fn put_tuple(m: &mut MsgBuilder, ty: u16, t: &Tuple) {
    let tuple = m.nest_start(ty);
    let ip = m.nest_start(CTA_TUPLE_IP);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.put(CTA_IP_V4_SRC, &s.octets());
            m.put(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            m.put(CTA_IP_V6_SRC, &v6(s).octets());
            m.put(CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    m.nest_end(ip);
    let proto = m.nest_start(CTA_TUPLE_PROTO);
    m.put(CTA_PROTO_NUM, &[t.protocol]);
    match t.l4 {
        L4::Ports { src, dst } => {
            m.put(CTA_PROTO_SRC_PORT, &src.to_be_bytes());
            m.put(CTA_PROTO_DST_PORT, &dst.to_be_bytes());
        }
        L4::Icmp { id, kind, code } => {
            let (a_id, a_type, a_code) = match t.protocol {
                IPPROTO_ICMPV6 => (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE),
                _ => (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE),
            };
            m.put(a_id, &id.to_be_bytes());
            m.put(a_type, &[kind]);
            m.put(a_code, &[code]);
        }
        L4::None => {}
    }
    m.nest_end(proto);
    if let Some(zone) = t.zone {
        m.put(CTA_TUPLE_ZONE, &zone.to_be_bytes());
    }
    m.nest_end(tuple);
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// An entry from the payload (`nfgenmsg` and attributes) of an `IPCTNL_MSG_CT_NEW` message.
fn parse_entry(payload: &[u8]) -> Result<Entry, String> {
    let family = *payload.first().ok_or("empty conntrack message")?;
    let attrs = payload
        .get(NFGENMSG_LEN..)
        .ok_or("conntrack message shorter than nfgenmsg")?;
    let (mut orig, mut reply, mut id) = (None, None, None);
    let (mut mark, mut status, mut zone, mut timeout) = (0, 0, None, None);
    for attr in Attrs(attrs) {
        let (ty, data) = attr?;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(family, data)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(family, data)?),
            CTA_ID => id = Some(be32("CTA_ID", data)?),
            CTA_MARK => mark = be32("CTA_MARK", data)?,
            CTA_STATUS => status = be32("CTA_STATUS", data)?,
            CTA_ZONE => zone = Some(be16("CTA_ZONE", data)?),
            CTA_TIMEOUT => timeout = Some(be32("CTA_TIMEOUT", data)?),
            _ => {}
        }
    }
    Ok(Entry {
        orig: orig.ok_or("conntrack entry without CTA_TUPLE_ORIG")?,
        reply: reply.ok_or("conntrack entry without CTA_TUPLE_REPLY")?,
        id: id.ok_or("conntrack entry without CTA_ID")?,
        mark,
        status,
        zone,
        timeout,
    })
}

fn parse_tuple(family: u8, data: &[u8]) -> Result<Tuple, String> {
    let (mut src, mut dst, mut protocol, mut zone) = (None, None, None, None);
    let (mut sport, mut dport, mut icmp_id, mut icmp_type, mut icmp_code) = (None, None, None, None, None);
    for attr in Attrs(data) {
        let (ty, data) = attr?;
        match ty {
            CTA_TUPLE_IP => {
                for a in Attrs(data) {
                    let (ty, data) = a?;
                    match (family, ty) {
                        (AF_INET, CTA_IP_V4_SRC) => src = Some(IpAddr::V4(Ipv4Addr::from(fixed::<4>("v4 src", data)?))),
                        (AF_INET, CTA_IP_V4_DST) => dst = Some(IpAddr::V4(Ipv4Addr::from(fixed::<4>("v4 dst", data)?))),
                        (AF_INET6, CTA_IP_V6_SRC) => {
                            src = Some(IpAddr::V6(Ipv6Addr::from(fixed::<16>("v6 src", data)?)))
                        }
                        (AF_INET6, CTA_IP_V6_DST) => {
                            dst = Some(IpAddr::V6(Ipv6Addr::from(fixed::<16>("v6 dst", data)?)))
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attrs(data) {
                    let (ty, data) = a?;
                    match ty {
                        CTA_PROTO_NUM => protocol = Some(fixed::<1>("CTA_PROTO_NUM", data)?[0]),
                        CTA_PROTO_SRC_PORT => sport = Some(be16("source port", data)?),
                        CTA_PROTO_DST_PORT => dport = Some(be16("destination port", data)?),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => icmp_id = Some(be16("ICMP id", data)?),
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = Some(fixed::<1>("ICMP type", data)?[0])
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = Some(fixed::<1>("ICMP code", data)?[0])
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => zone = Some(be16("CTA_TUPLE_ZONE", data)?),
            _ => {}
        }
    }
    let protocol = protocol.ok_or("tuple without CTA_PROTO_NUM")?;
    let l4 = match (sport, dport, icmp_id, icmp_type, icmp_code) {
        (Some(src), Some(dst), ..) => L4::Ports { src, dst },
        (_, _, Some(id), Some(kind), Some(code)) => L4::Icmp { id, kind, code },
        _ => L4::None,
    };
    Ok(Tuple {
        src: src.ok_or_else(|| format!("tuple of family {family} without source address"))?,
        dst: dst.ok_or_else(|| format!("tuple of family {family} without destination address"))?,
        protocol,
        l4,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::testing::{attr, message, nest};
    use crate::nla::{NlMsg, NLMSG_HDRLEN};

    /// A conntrack message as the kernel dumps it: UDP 10.0.0.1:5353 → 10.0.0.2:53.
    fn kernel_udp_entry() -> Vec<u8> {
        let tuple = |ty, s: [u8; 4], d: [u8; 4], sp: u16, dp: u16| {
            nest(
                ty,
                &[
                    nest(CTA_TUPLE_IP, &[attr(CTA_IP_V4_SRC, &s), attr(CTA_IP_V4_DST, &d)]),
                    nest(
                        CTA_TUPLE_PROTO,
                        &[
                            attr(CTA_PROTO_NUM, &[17]),
                            attr(CTA_PROTO_SRC_PORT, &sp.to_be_bytes()),
                            attr(CTA_PROTO_DST_PORT, &dp.to_be_bytes()),
                        ],
                    ),
                ],
            )
        };
        [
            vec![AF_INET, 0, 0, 0],
            tuple(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 0, 0, 2], 5353, 53),
            tuple(CTA_TUPLE_REPLY, [10, 0, 0, 2], [10, 0, 0, 1], 53, 5353),
            attr(CTA_STATUS, &(IPS_CONFIRMED | IPS_SEEN_REPLY).to_be_bytes()),
            attr(CTA_MARK, &0x0040_0001u32.to_be_bytes()),
            attr(CTA_ID, &0xdead_beefu32.to_be_bytes()),
            attr(11 /* CTA_USE */, &1u32.to_be_bytes()),
            attr(CTA_TIMEOUT, &29u32.to_be_bytes()),
        ]
        .concat()
    }

    #[test]
    fn parses_a_kernel_entry() {
        let e = parse_entry(&kernel_udp_entry()).unwrap();
        assert_eq!(e.orig.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(e.orig.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(e.orig.protocol, IPPROTO_UDP);
        assert_eq!(e.ports(), Some((5353, 53)));
        assert_eq!(e.reply.ports(), Some((53, 5353)));
        assert_eq!(e.mark, 0x0040_0001);
        assert_eq!(e.id, 0xdead_beef);
        assert_eq!(e.status, IPS_CONFIRMED | IPS_SEEN_REPLY);
        assert_eq!(e.timeout, Some(29));
        assert_eq!(e.zone, None);
    }

    #[test]
    fn parses_ipv6_icmp_and_zone() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        let tuple = |ty, s: Ipv6Addr, d: Ipv6Addr, kind: u8| {
            nest(
                ty,
                &[
                    nest(
                        CTA_TUPLE_IP,
                        &[attr(CTA_IP_V6_SRC, &s.octets()), attr(CTA_IP_V6_DST, &d.octets())],
                    ),
                    nest(
                        CTA_TUPLE_PROTO,
                        &[
                            attr(CTA_PROTO_NUM, &[IPPROTO_ICMPV6]),
                            attr(CTA_PROTO_ICMPV6_ID, &7u16.to_be_bytes()),
                            attr(CTA_PROTO_ICMPV6_TYPE, &[kind]),
                            attr(CTA_PROTO_ICMPV6_CODE, &[0]),
                        ],
                    ),
                ],
            )
        };
        let payload = [
            vec![AF_INET6, 0, 0, 0],
            tuple(CTA_TUPLE_ORIG, a, b, 128),
            tuple(CTA_TUPLE_REPLY, b, a, 129),
            attr(CTA_ZONE, &3u16.to_be_bytes()),
            attr(CTA_ID, &1u32.to_be_bytes()),
        ]
        .concat();
        let e = parse_entry(&payload).unwrap();
        assert!(e.is_ipv6());
        assert_eq!(
            e.orig.l4,
            L4::Icmp {
                id: 7,
                kind: 128,
                code: 0
            }
        );
        assert_eq!(
            e.reply.l4,
            L4::Icmp {
                id: 7,
                kind: 129,
                code: 0
            }
        );
        assert_eq!(e.ports(), None);
        assert_eq!(e.zone, Some(3));
        assert_eq!(e.mark, 0, "no CTA_MARK: mark 0");
    }

    #[test]
    fn rejects_malformed_entries() {
        let good = kernel_udp_entry();
        // Cut inside the reply tuple.
        assert!(parse_entry(&good[..good.len() - 30]).is_err());
        // An attribute claiming more bytes than there are.
        let mut bad = good.clone();
        bad[4..6].copy_from_slice(&500u16.to_ne_bytes());
        assert!(parse_entry(&bad).is_err());
        // A 3-byte CTA_MARK.
        let mut bad = good[..4].to_vec();
        bad.extend(attr(CTA_MARK, &[1, 2, 3]));
        assert!(parse_entry(&bad).unwrap_err().contains("CTA_MARK"));
        assert!(parse_entry(&[]).is_err());
    }

    #[test]
    fn encodes_an_update_byte_for_byte() {
        let e = parse_entry(&kernel_udp_entry()).unwrap();
        let req = update_request(&e, 0x0040_0000, 0x0040_0000, 77);
        let orig = nest(
            CTA_TUPLE_ORIG,
            &[
                nest(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &[10, 0, 0, 1]), attr(CTA_IP_V4_DST, &[10, 0, 0, 2])],
                ),
                nest(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[17]),
                        attr(CTA_PROTO_SRC_PORT, &[0x14, 0xe9]), // 5353
                        attr(CTA_PROTO_DST_PORT, &[0, 53]),
                    ],
                ),
            ],
        );
        let payload = [
            vec![AF_INET, 0, 0, 0],
            orig,
            attr(CTA_ID, &[0xde, 0xad, 0xbe, 0xef]),
            attr(CTA_MARK, &[0, 0x40, 0, 0]),
            attr(CTA_MARK_MASK, &[0, 0x40, 0, 0]),
        ]
        .concat();
        let mut want = message(0x0100, NLM_F_REQUEST | NLM_F_ACK, 77, &payload);
        want[12..16].copy_from_slice(&0u32.to_ne_bytes()); // port id 0: to the kernel
        assert_eq!(req, want);
        // Type 0x0100: subsystem 1 (ctnetlink), message 0 (CT_NEW); no NLM_F_CREATE (0x400).
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]) & 0x400, 0);
    }

    #[test]
    fn encoded_tuples_parse_back() {
        for (src, dst, protocol, l4, zone) in [
            (
                "10.1.2.3",
                "10.3.2.1",
                IPPROTO_TCP,
                L4::Ports { src: 40000, dst: 443 },
                None,
            ),
            (
                "fd00::1",
                "fd00::2",
                IPPROTO_SCTP,
                L4::Ports { src: 1, dst: 65535 },
                Some(9),
            ),
            (
                "10.1.2.3",
                "10.3.2.1",
                IPPROTO_ICMP,
                L4::Icmp {
                    id: 99,
                    kind: 8,
                    code: 0,
                },
                None,
            ),
            ("fd00::1", "fd00::2", 47, L4::None, None),
        ] {
            let t = Tuple {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol,
                l4,
                zone,
            };
            let family = if t.src.is_ipv6() { AF_INET6 } else { AF_INET };
            let mut m = MsgBuilder::new(0, 0, 0, family);
            put_tuple(&mut m, CTA_TUPLE_ORIG, &t);
            let bytes = m.finish();
            let (ty, data) = Attrs(&bytes[NLMSG_HDRLEN + NFGENMSG_LEN..]).next().unwrap().unwrap();
            assert_eq!(ty, CTA_TUPLE_ORIG);
            assert_eq!(parse_tuple(family, data).unwrap(), t);
        }
    }

    #[test]
    fn splits_datagrams_and_reads_answers() {
        let mut err = (-(Errno::ENOENT as i32)).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]); // the quoted request header
        let buf = [
            message(ct_msg_type(IPCTNL_MSG_CT_NEW), 2, 5, &kernel_udp_entry()),
            message(NLMSG_ERROR, 0, 6, &err),
            message(NLMSG_ERROR, 0x100, 7, &[0; 20]),
            message(NLMSG_DONE, 2, 5, &0i32.to_ne_bytes()),
        ]
        .concat();
        let msgs: Vec<NlMsg<'_>> = Messages(&buf).map(Result::unwrap).collect();
        assert_eq!(
            msgs.iter().map(|m| (m.ty, m.seq)).collect::<Vec<_>>(),
            [(0x0100, 5), (NLMSG_ERROR, 6), (NLMSG_ERROR, 7), (NLMSG_DONE, 5)]
        );
        assert_eq!(msgs[1].error(), Ok(Errno::ENOENT as i32));
        assert_eq!(msgs[2].error(), Ok(0));
        assert_eq!(parse_entry(msgs[0].payload).unwrap().ports(), Some((5353, 53)));

        // A length past the end: an error, then nothing.
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        let mut it = Messages(&bad);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let err = CtError::MarkOutsideMask { value: 1, mask: 2 };
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("toggle"));
        assert!(CtError::Overrun { op: "set mark" }.is_retryable());
        assert!(CtError::kernel("set mark", Errno::EBUSY).is_retryable());
        assert!(!CtError::kernel("set mark", Errno::EINVAL).is_retryable());
    }
}
