//! Packet log events over nfnetlink_log (`NFNL_SUBSYS_ULOG` on a `NETLINK_NETFILTER` socket),
//! without libnetfilter_log: what the ruleset's `log ... group G` statements send (see
//! `policyc_compiler::nft::Log`), read back with the packet's headers.
//!
//! ```text
//!  Nflog::open ── NFULNL_MSG_CONFIG res_id=G  CMD_BIND, MODE packet/snaplen, ──► kernel
//!                                             QTHRESH, TIMEOUT, NLBUFSIZ, FLAGS seq
//!              ◄─ NLMSG_ERROR 0  (EPERM: another socket holds group G in this namespace)
//!
//!  rule `... log prefix "pc:42" group G` ─► instance G: queues events, sends one datagram per
//!                                           QTHRESH events or TIMEOUT, whichever comes first
//!  Nflog::recv ◄─ NFULNL_MSG_PACKET, NFULNL_MSG_PACKET, …
//!              └─► Batch { events: [Event { prefix, hook, mark, devices, packet: Packet { src,
//!                          dst, protocol, ports | icmp type } }], lost }
//! ```
//!
//! # Behaviour contract
//!
//! * **One listener per group and namespace.** Binding a group another socket holds fails
//!   with `EPERM` ([`NflogError::Bind`]). The group is released when the [`Nflog`] is dropped
//!   (the kernel destroys the instance of a closed socket).
//! * **No per-family binding.** `nft`'s `log group` statements name nfnetlink_log as their
//!   logger themselves, so `NFULNL_CFG_CMD_PF_BIND` is not sent: it would also make
//!   nfnetlink_log the namespace's default logger of that family (for `nf_log` users such as
//!   `nf_conntrack_log_invalid`), a side effect the reader has no business with.
//! * **Losses are counted, never fatal.** Every event carries the instance's sequence number
//!   (`NFULNL_CFG_F_SEQ`); a gap is events the kernel dropped because the socket's receive
//!   buffer was full, and is added to [`Batch::lost`]. An overrun (`ENOBUFS`) is counted in
//!   [`Batch::overruns`] and reading goes on. Events rate-limited away by a rule's `limit` never
//!   existed and are not counted anywhere here (the rule's `counter`, if any, has them).
//! * **Receive buffer.** [`Nflog::open`] asks for [`Options::recv_buffer`] with
//!   `SO_RCVBUFFORCE`; without `CAP_NET_ADMIN` in the initial user namespace that fails and
//!   `SO_RCVBUF` is used, capped at `net.core.rmem_max`: [`Nflog::recv_buffer`] says which and
//!   how much.
//! * **Namespaces**: the socket is opened by a short-lived thread that enters the namespace (see
//!   `socket.rs`); the caller's threads never change namespace.
//! * **Threads**: [`Nflog::recv`] blocks the calling thread; [`Nflog::spawn`] runs it on a
//!   thread of its own and hands each batch to a callback, which can forward it into an async
//!   channel (`tokio::sync::mpsc::Sender::blocking_send`).
//!
//! # Safety
//!
//! No `unsafe` here: system calls go through `nix` (`socket.rs`), messages are built and parsed
//! as bytes. Everything the kernel sends is length-checked before use; a malformed message is
//! skipped and counted ([`Stats::malformed`]), never a panic.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use crate::nla::{
    be16, be32, be64, fixed, nfnl_msg_type, string, Attrs, Messages, MsgBuilder, NFGENMSG_LEN, NLMSG_ERROR,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_REQUEST,
};
use crate::socket::{NlSocket, SocketError};

// --- nfnetlink_log (linux/netfilter/nfnetlink_log.h) ---
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;

const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULA_CFG_FLAGS: u16 = 6;

const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULNL_CFG_F_SEQ: u16 = 0x1;

const NFULA_PACKET_HDR: u16 = 1;
const NFULA_MARK: u16 = 2;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_IFINDEX_PHYSINDEV: u16 = 6;
const NFULA_IFINDEX_PHYSOUTDEV: u16 = 7;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_SEQ: u16 = 12;

const AF_UNSPEC: u8 = 0;

/// IP protocol numbers of [`Packet::protocol`].
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// Netfilter hooks of [`Event::hook`] (`enum nf_inet_hooks`).
pub const HOOK_PREROUTING: u8 = 0;
pub const HOOK_INPUT: u8 = 1;
pub const HOOK_FORWARD: u8 = 2;
pub const HOOK_OUTPUT: u8 = 3;
pub const HOOK_POSTROUTING: u8 = 4;

/// The kernel's largest per-instance buffer (`NFULNL_NLBUFSIZ` is capped at 128 KiB).
const MAX_NLBUFSIZ: u32 = 128 * 1024;
/// Bytes read per datagram: more than the largest instance buffer.
const RECV_BUF: usize = 256 * 1024;

/// How a group is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bytes of each packet copied into its event, from the network header on (the
    /// `copy_range` of `NFULNL_COPY_PACKET`). 128 holds an IPv6 header with a transport header
    /// behind a few extension headers. A rule's `snaplen` overrides it.
    pub snaplen: u32,
    /// Events the kernel queues before sending them together (`NFULA_CFG_QTHRESH`); 1 sends
    /// each at once.
    pub queue_threshold: u32,
    /// How long the kernel holds queued events below the threshold (`NFULA_CFG_TIMEOUT`,
    /// sent in hundredths of a second).
    pub flush_timeout: Duration,
    /// The kernel's buffer per datagram (`NFULA_CFG_NLBUFSIZ`, at most 128 KiB): a datagram
    /// ends early when the next event would not fit.
    pub kernel_buffer: u32,
    /// The socket's receive buffer: what can wait for [`Nflog::recv`] before the kernel drops
    /// events.
    pub recv_buffer: usize,
}

impl Default for Options {
    /// 128-byte snapshots, up to 64 events or 100 ms per datagram, 8 MiB of receive buffer
    /// (about 40,000 events of 200 bytes).
    fn default() -> Options {
        Options {
            snaplen: 128,
            queue_threshold: 64,
            flush_timeout: Duration::from_millis(100),
            kernel_buffer: 64 * 1024,
            recv_buffer: 8 << 20,
        }
    }
}

/// One logged packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The rule's `log prefix` (empty without one).
    pub prefix: String,
    /// `NFPROTO_*` of the hook that logged it: 2 (IPv4), 10 (IPv6), 7 (bridge).
    pub family: u8,
    /// The link layer protocol (ethertype), e.g. 0x0800 for IPv4.
    pub hw_protocol: u16,
    /// The netfilter hook (`HOOK_*`).
    pub hook: u8,
    /// The packet mark; `None` when 0 (the kernel leaves it out).
    pub mark: Option<u32>,
    /// Interface indexes, where the packet has them. In the bridge family (kernels with bridge
    /// netfilter) these are the bridge's, and the ports are in `physindev` / `physoutdev`.
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// The bridge ports of a bridged packet: logged by the bridge family, or by the inet
    /// family through `br_netfilter`.
    pub physindev: Option<u32>,
    pub physoutdev: Option<u32>,
    /// When the packet was received, if the kernel stamped it.
    pub timestamp: Option<SystemTime>,
    /// The group's sequence number of the event.
    pub seq: Option<u32>,
    /// Bytes of the packet copied into the event.
    pub captured: usize,
    /// The network and transport headers; `None` when the copy holds no IP header (an ARP
    /// frame, a copy shorter than the header).
    pub packet: Option<Packet>,
}

/// The headers of a logged IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (`IPPROTO_*`); for IPv6 the one after the extension headers.
    pub protocol: u8,
    /// The packet's length from its IP header (IPv6: payload length plus 40).
    pub len: u32,
    pub transport: Transport,
}

/// What the transport header says, as far as the copy holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP, UDP, UDP-Lite, SCTP.
    Ports { src: u16, dst: u16 },
    /// ICMP or ICMPv6.
    Icmp { ty: u8, code: u8 },
    /// Another protocol, a later fragment, or a header beyond the copy.
    Unknown,
}

/// What one [`Nflog::recv`] got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Events the kernel sent into a full receive buffer and dropped, found from gaps in the
    /// sequence numbers.
    pub lost: u64,
    /// Receive buffer overruns (`ENOBUFS`) met.
    pub overruns: u64,
}

/// Totals since the reader was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub lost: u64,
    pub overruns: u64,
    /// Messages skipped because they could not be parsed.
    pub malformed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("nflog: cannot open network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("nflog: {op} failed")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("nflog: cannot bind group {group} (errno {errno}{})", if *errno == libc::EPERM { ": another listener holds it, or no CAP_NET_ADMIN" } else { "" })]
    Bind {
        group: u16,
        errno: i32,
        #[source]
        source: io::Error,
    },
    #[error("nflog: no answer to binding group {group}")]
    Unanswered { group: u16 },
}

impl From<SocketError> for NflogError {
    fn from(e: SocketError) -> NflogError {
        NflogError::Socket {
            op: e.op,
            source: e.source,
        }
    }
}

fn sock_err(op: &'static str) -> impl FnOnce(Errno) -> NflogError {
    move |e| NflogError::Socket {
        op,
        source: io::Error::from(e),
    }
}

/// A bound nfnetlink_log group.
#[derive(Debug)]
pub struct Nflog {
    sock: NlSocket,
    group: u16,
    buf: Vec<u8>,
    /// The sequence number the next event should carry; `None` before the first.
    next_seq: Option<u32>,
    /// The socket's current `SO_RCVTIMEO`.
    timeout: Option<Duration>,
    recv_buffer: RecvBuffer,
    stats: Stats,
    /// Events that arrived with the bind's answer.
    pending: Vec<Event>,
}

/// The receive buffer the socket got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvBuffer {
    /// Bytes, as `SO_RCVBUF` reports them (the kernel doubles the size asked).
    pub bytes: usize,
    /// Whether `SO_RCVBUFFORCE` took; `false`: `SO_RCVBUF`, capped at `net.core.rmem_max`.
    pub forced: bool,
}

impl Nflog {
    /// Binds `group` in the network namespace at `netns` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), or in the caller's when `None`.
    pub fn open(netns: Option<&Path>, group: u16, options: &Options) -> Result<Nflog, NflogError> {
        let file = match netns {
            Some(path) => Some(File::open(path).map_err(|source| NflogError::Netns {
                path: path.to_path_buf(),
                source,
            })?),
            None => None,
        };
        let sock = NlSocket::open_in(file.as_ref()).map_err(|e| match (netns, e.op) {
            (Some(path), "setns") => NflogError::Netns {
                path: path.to_path_buf(),
                source: e.source,
            },
            _ => e.into(),
        })?;
        let forced = sock.set_recv_buffer_forced(options.recv_buffer)?;
        let recv_buffer = RecvBuffer {
            bytes: sock.recv_buffer()?,
            forced,
        };
        let mut log = Nflog {
            sock,
            group,
            buf: vec![0; RECV_BUF],
            next_seq: None,
            timeout: None,
            recv_buffer,
            stats: Stats::default(),
            pending: Vec::new(),
        };
        log.bind(options)?;
        Ok(log)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn recv_buffer(&self) -> RecvBuffer {
        self.recv_buffer
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// One config message: bind, copy mode, batching, sequence numbers; then its answer.
    fn bind(&mut self, o: &Options) -> Result<(), NflogError> {
        const SEQ: u32 = 1;
        let mut m = MsgBuilder::new(
            nfnl_msg_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG),
            NLM_F_REQUEST | NLM_F_ACK,
            SEQ,
            AF_UNSPEC,
        );
        m.set_res_id(self.group);
        m.put(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        // struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; }
        let mut mode = o.snaplen.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        m.put(NFULA_CFG_MODE, &mode);
        m.put(NFULA_CFG_NLBUFSIZ, &o.kernel_buffer.min(MAX_NLBUFSIZ).to_be_bytes());
        let hundredths = (o.flush_timeout.as_millis() / 10).clamp(1, u32::MAX as u128) as u32;
        m.put(NFULA_CFG_TIMEOUT, &hundredths.to_be_bytes());
        m.put(NFULA_CFG_QTHRESH, &o.queue_threshold.max(1).to_be_bytes());
        m.put(NFULA_CFG_FLAGS, &NFULNL_CFG_F_SEQ.to_be_bytes());
        self.sock.send(&m.finish()).map_err(sock_err("send (bind)"))?;

        self.set_timeout(Duration::from_secs(5))?;
        loop {
            let n = match self.sock.recv(&mut self.buf, true) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Err(NflogError::Unanswered { group: self.group }),
                Err(Errno::ENOBUFS) => {
                    self.stats.overruns += 1;
                    continue;
                }
                Err(e) => return Err(sock_err("recv (bind)")(e)),
            };
            let mut answer = None;
            let mut batch = Batch::default();
            for msg in Messages(&self.buf[..n]) {
                let Ok(msg) = msg else {
                    self.stats.malformed += 1;
                    break;
                };
                if msg.ty == NLMSG_ERROR && msg.seq == SEQ {
                    answer = Some(msg.error().unwrap_or(libc::EPROTO));
                } else {
                    take_event(&msg, &mut self.next_seq, &mut self.stats, &mut batch);
                }
            }
            self.pending.append(&mut batch.events);
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => {
                    return Err(NflogError::Bind {
                        group: self.group,
                        errno,
                        source: io::Error::from_raw_os_error(errno),
                    })
                }
                None => {}
            }
        }
    }

    fn set_timeout(&mut self, t: Duration) -> Result<(), NflogError> {
        // SO_RCVTIMEO of zero means "forever".
        let t = t.max(Duration::from_micros(1));
        if self.timeout != Some(t) {
            self.sock.set_recv_timeout(t)?;
            self.timeout = Some(t);
        }
        Ok(())
    }

    /// Waits up to `timeout` for events, then takes every event already queued, up to about
    /// `max` (whole datagrams). An empty batch: nothing came in time.
    pub fn recv(&mut self, timeout: Duration, max: usize) -> Result<Batch, NflogError> {
        let mut batch = Batch {
            events: std::mem::take(&mut self.pending),
            ..Batch::default()
        };
        let deadline = Instant::now() + timeout;
        let mut wait = batch.events.is_empty();
        while batch.events.len() < max.max(1) {
            if wait {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.set_timeout(left)?;
            }
            let n = match self.sock.recv(&mut self.buf, wait) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::ENOBUFS) => {
                    batch.overruns += 1;
                    self.stats.overruns += 1;
                    continue;
                }
                // A datagram larger than the buffer: its events are lost, the gap counts them.
                Err(Errno::EMSGSIZE) => {
                    self.stats.malformed += 1;
                    continue;
                }
                Err(e) => return Err(sock_err("recv")(e)),
            };
            for msg in Messages(&self.buf[..n]) {
                match msg {
                    Ok(msg) if msg.ty == NLMSG_OVERRUN => {
                        batch.overruns += 1;
                        self.stats.overruns += 1;
                    }
                    Ok(msg) => take_event(&msg, &mut self.next_seq, &mut self.stats, &mut batch),
                    Err(_) => {
                        self.stats.malformed += 1;
                        break;
                    }
                }
            }
            // Something came: take what else is queued, without waiting.
            wait = batch.events.is_empty() && batch.lost == 0;
        }
        Ok(batch)
    }

    /// Reads on a thread of its own (named `nflog-GROUP`), handing every non-empty batch to
    /// `deliver` until it returns `false` or [`Listener::stop`] is called. The thread notices a
    /// stop within `poll` (e.g. 100 ms).
    ///
    /// ```ignore
    /// let (tx, rx) = tokio::sync::mpsc::channel(64);
    /// let listener = nflog.spawn(Duration::from_millis(100), move |batch| tx.blocking_send(batch).is_ok())?;
    /// ```
    pub fn spawn<F>(mut self, poll: Duration, mut deliver: F) -> Result<Listener, NflogError>
    where
        F: FnMut(Batch) -> bool + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("nflog-{}", self.group))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let batch = self.recv(poll, 4096)?;
                    if (batch.events.is_empty() && batch.lost == 0 && batch.overruns == 0) || deliver(batch) {
                        continue;
                    }
                    break;
                }
                Ok(self.stats)
            })
            .map_err(|source| NflogError::Socket {
                op: "spawning the reader thread",
                source,
            })?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

/// A reader running on its own thread ([`Nflog::spawn`]); stopped when dropped.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Stats, NflogError>>>,
}

impl Listener {
    /// Stops the thread (within its poll interval), releases the group and returns the
    /// totals, or the error that ended the thread.
    pub fn stop(mut self) -> Result<Stats, NflogError> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("joined only here or on drop");
        thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses a packet message into `batch`, counting gaps in the sequence and malformed messages;
/// other message types are ignored.
fn take_event(msg: &crate::nla::NlMsg<'_>, next_seq: &mut Option<u32>, stats: &mut Stats, batch: &mut Batch) {
    if msg.ty != nfnl_msg_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET) {
        return;
    }
    let event = match parse_event(msg.payload) {
        Ok(e) => e,
        Err(_) => {
            stats.malformed += 1;
            return;
        }
    };
    if let Some(seq) = event.seq {
        if let Some(expected) = *next_seq {
            let gap = seq.wrapping_sub(expected);
            // A gap of more than half the space is a reordering, not a loss.
            if gap > 0 && gap < u32::MAX / 2 {
                batch.lost += u64::from(gap);
                stats.lost += u64::from(gap);
            }
        } else if seq > 0 {
            // Events before the first one read were lost (the first event is 0).
            batch.lost += u64::from(seq);
            stats.lost += u64::from(seq);
        }
        *next_seq = Some(seq.wrapping_add(1));
    }
    stats.events += 1;
    batch.events.push(event);
}

/// An `NFULNL_MSG_PACKET` payload: `nfgenmsg`, then attributes.
fn parse_event(payload: &[u8]) -> Result<Event, String> {
    let header = payload
        .get(..NFGENMSG_LEN)
        .ok_or("packet message shorter than its nfgenmsg")?;
    let mut e = Event {
        prefix: String::new(),
        family: header[0],
        hw_protocol: 0,
        hook: 0,
        mark: None,
        indev: None,
        outdev: None,
        physindev: None,
        physoutdev: None,
        timestamp: None,
        seq: None,
        captured: 0,
        packet: None,
    };
    let mut have_header = false;
    for attr in Attrs(&payload[NFGENMSG_LEN..]) {
        let (ty, data) = attr?;
        match ty {
            // struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
            NFULA_PACKET_HDR => {
                let h = fixed::<4>("NFULA_PACKET_HDR", data)?;
                e.hw_protocol = u16::from_be_bytes([h[0], h[1]]);
                e.hook = h[2];
                have_header = true;
            }
            NFULA_MARK => e.mark = Some(be32("NFULA_MARK", data)?),
            // struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; }
            NFULA_TIMESTAMP => {
                let t = fixed::<16>("NFULA_TIMESTAMP", data)?;
                let sec = be64("timestamp seconds", &t[..8])?;
                let usec = be64("timestamp microseconds", &t[8..])?;
                e.timestamp =
                    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(sec) + Duration::from_micros(usec));
            }
            NFULA_IFINDEX_INDEV => e.indev = Some(be32("NFULA_IFINDEX_INDEV", data)?),
            NFULA_IFINDEX_OUTDEV => e.outdev = Some(be32("NFULA_IFINDEX_OUTDEV", data)?),
            NFULA_IFINDEX_PHYSINDEV => e.physindev = Some(be32("NFULA_IFINDEX_PHYSINDEV", data)?),
            NFULA_IFINDEX_PHYSOUTDEV => e.physoutdev = Some(be32("NFULA_IFINDEX_PHYSOUTDEV", data)?),
            NFULA_PAYLOAD => {
                e.captured = data.len();
                e.packet = parse_packet(data);
            }
            NFULA_PREFIX => e.prefix = string("NFULA_PREFIX", data)?,
            NFULA_SEQ => e.seq = Some(be32("NFULA_SEQ", data)?),
            _ => {}
        }
    }
    if !have_header {
        return Err("packet message without NFULA_PACKET_HDR".into());
    }
    Ok(e)
}

/// The IP and transport headers at the start of a copied packet; `None` when it does not start
/// with a whole IPv4 or IPv6 header.
pub fn parse_packet(p: &[u8]) -> Option<Packet> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < 20 {
                return None;
            }
            let len = u32::from(be16("", &p[2..4]).ok()?);
            let fragment_offset = be16("", &p[6..8]).ok()? & 0x1fff;
            let protocol = p[9];
            let src = Ipv4Addr::from(fixed::<4>("", &p[12..16]).ok()?);
            let dst = Ipv4Addr::from(fixed::<4>("", &p[16..20]).ok()?);
            let transport = if fragment_offset == 0 {
                transport(protocol, p.get(ihl..).unwrap_or(&[]))
            } else {
                Transport::Unknown
            };
            Some(Packet {
                src: src.into(),
                dst: dst.into(),
                protocol,
                len,
                transport,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let len = u32::from(be16("", &p[4..6]).ok()?) + 40;
            let src = Ipv6Addr::from(fixed::<16>("", &p[8..24]).ok()?);
            let dst = Ipv6Addr::from(fixed::<16>("", &p[24..40]).ok()?);
            let (protocol, at, later_fragment) = ipv6_transport(p[6], p);
            let transport = match (later_fragment, p.get(at..)) {
                (false, Some(rest)) => transport(protocol, rest),
                _ => Transport::Unknown,
            };
            Some(Packet {
                src: src.into(),
                dst: dst.into(),
                protocol,
                len,
                transport,
            })
        }
        _ => None,
    }
}

/// Follows IPv6 extension headers (hop-by-hop, routing, fragment, destination options) from
/// the fixed header: the transport protocol, where its header starts, and whether the packet is
/// a fragment other than the first.
fn ipv6_transport(mut next: u8, p: &[u8]) -> (u8, usize, bool) {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DEST_OPTS: u8 = 60;
    let mut at = 40;
    for _ in 0..8 {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let Some(h) = p.get(at..at + 2) else {
                    return (next, p.len(), false);
                };
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            FRAGMENT => {
                let Some(h) = p.get(at..at + 4) else {
                    return (next, p.len(), false);
                };
                let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                next = h[0];
                at += 8;
                if offset != 0 {
                    return (next, at, true);
                }
            }
            _ => break,
        }
    }
    (next, at, false)
}

fn transport(protocol: u8, h: &[u8]) -> Transport {
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP if h.len() >= 4 => Transport::Ports {
            src: u16::from_be_bytes([h[0], h[1]]),
            dst: u16::from_be_bytes([h[2], h[3]]),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 if h.len() >= 2 => Transport::Icmp { ty: h[0], code: h[1] },
        _ => Transport::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::testing::{attr, message};

    fn udp4() -> Vec<u8> {
        let mut p = vec![
            0x45,
            0,
            0,
            33,
            0,
            1,
            0x40,
            0,
            64,
            IPPROTO_UDP,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ];
        p.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o']);
        p
    }

    fn event_message(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![2, 0, 0, 7]; // AF_INET, version, res_id 7
        body.extend(attr(NFULA_PACKET_HDR, &[0x08, 0x00, HOOK_INPUT, 0]));
        body.extend(attr(NFULA_MARK, &0x4000u32.to_be_bytes()));
        body.extend(attr(NFULA_IFINDEX_INDEV, &3u32.to_be_bytes()));
        body.extend(attr(NFULA_PREFIX, b"pc:42\0"));
        body.extend(attr(NFULA_SEQ, &seq.to_be_bytes()));
        let mut ts = 1_700_000_000u64.to_be_bytes().to_vec();
        ts.extend_from_slice(&250u64.to_be_bytes());
        body.extend(attr(NFULA_TIMESTAMP, &ts));
        body.extend(attr(NFULA_PAYLOAD, payload));
        message(nfnl_msg_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET), 0, 0, &body)
    }

    #[test]
    fn packet_message() {
        let m = event_message(0, &udp4());
        let msg = Messages(&m).next().unwrap().unwrap();
        let e = parse_event(msg.payload).unwrap();
        assert_eq!(e.prefix, "pc:42");
        assert_eq!((e.family, e.hw_protocol, e.hook), (2, 0x0800, HOOK_INPUT));
        assert_eq!(
            (e.mark, e.indev, e.outdev, e.seq),
            (Some(0x4000), Some(3), None, Some(0))
        );
        assert_eq!(
            e.timestamp,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(250))
        );
        assert_eq!(e.captured, 33);
        assert_eq!(
            e.packet,
            Some(Packet {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: IPPROTO_UDP,
                len: 33,
                transport: Transport::Ports { src: 12345, dst: 8080 },
            })
        );
    }

    #[test]
    fn sequence_gaps_are_lost_events() {
        let (mut next, mut stats, mut batch) = (None, Stats::default(), Batch::default());
        for seq in [0, 1, 5, 6] {
            let m = event_message(seq, &udp4());
            take_event(
                &Messages(&m).next().unwrap().unwrap(),
                &mut next,
                &mut stats,
                &mut batch,
            );
        }
        assert_eq!((batch.events.len(), batch.lost, stats.lost), (4, 3, 3));
    }

    #[test]
    fn ipv6_through_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0 /* hop-by-hop */, 64];
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[IPPROTO_ICMPV6, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
        let pk = parse_packet(&p).unwrap();
        assert_eq!((pk.protocol, pk.len), (IPPROTO_ICMPV6, 56));
        assert_eq!(pk.transport, Transport::Icmp { ty: 128, code: 0 });
    }

    #[test]
    fn short_or_foreign_copies() {
        assert_eq!(parse_packet(&[]), None);
        assert_eq!(parse_packet(&udp4()[..19]), None);
        // ARP: not IP.
        assert_eq!(parse_packet(&[0, 1, 8, 0, 6, 4, 0, 1]), None);
        // The transport header cut off.
        assert_eq!(parse_packet(&udp4()[..22]).unwrap().transport, Transport::Unknown);
    }

    #[test]
    fn malformed_message_is_an_error() {
        assert!(parse_event(&[2, 0]).is_err());
        assert!(parse_event(&[2, 0, 0, 7]).is_err(), "no packet header");
    }
}
