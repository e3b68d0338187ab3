//! Traffic that keeps flowing while the cluster changes: a continuous prober that counts what
//! arrives where it must not, long-lived flows for the conntrack cut, and churn: many new short
//! connections that keep conntrack tables busy.
//!
//! ```text
//!  Source: two threads in the source pod               Sink: one thread in the destination pod
//!   every 10 ms a UDP datagram ──────────────────────►  UDP socket on PORT    datagrams per source address
//!   every 50 ms a TCP connect (40 ms timeout) ───────►  TCP listener on PORT  connections and bytes per source address
//!  Stream: one long-lived TCP connection or UDP socket
//!   every 10 ms 64 bytes ────────────────────────────►  the same sink (with echo: UDP datagrams go back)
//!  Churn: two threads in a pod, for a bounded time
//!   RATE/s TCP connects, closed at once ─────────────►  a sink (new entry each: TIME_WAIT for 2 min)
//!   RATE/s datagrams, each from a new socket ────────►  a sink (new entry each: 30 s unreplied)
//! ```
//!
//! The sink counts what arrived: a datagram read from its socket, a connection its listener
//! accepted, bytes read (and notes when it last read a datagram or bytes from each source). A
//! denied pair must show none of these; an allowed pair in the same run shows that the prober
//! works. A prober sink never answers (no reply can open a flow the other
//! way); a stream sink echoes UDP, so that conntrack sees both directions as it does for a real
//! request/response protocol.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{sys, Error};

/// Pace of a source's datagrams and of every stream's writes.
pub const DATAGRAM_INTERVAL: Duration = Duration::from_millis(10);
/// Pace of a source's TCP connects.
pub const CONNECT_INTERVAL: Duration = Duration::from_millis(50);
/// A connect not answered in this time was dropped (a SYN is retransmitted only after 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(40);
/// Bytes per stream write.
pub const STREAM_CHUNK: usize = 64;
/// How often a sink's thread checks whether it should stop.
const SINK_POLL_MS: u16 = 50;

/// What reached a sink from one source address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arrived {
    pub datagrams: u64,
    pub udp_bytes: u64,
    pub connections: u64,
    pub tcp_bytes: u64,
    /// When the sink read the last datagram from this source.
    pub last_udp: Option<Instant>,
    /// When the sink read the last TCP bytes from this source.
    pub last_tcp: Option<Instant>,
    /// When datagrams from this source started arriving again after a [`PAUSE`] without any
    /// (or arrived first).
    pub resumed_udp: Option<Instant>,
    /// When TCP bytes from this source started arriving again after a [`PAUSE`] (or first).
    pub resumed_tcp: Option<Instant>,
}

/// A silence this long in a source's datagrams or bytes (streams write every 10 ms) counts as
/// a stop; what comes after is [`Arrived::resumed_udp`] or [`Arrived::resumed_tcp`].
pub const PAUSE: Duration = Duration::from_millis(100);

/// Notes a read at `now` in `last`, and in `resumed` when it ends a [`PAUSE`].
fn arrived_at(last: &mut Option<Instant>, resumed: &mut Option<Instant>, now: Instant) {
    if last.is_none_or(|l| now.duration_since(l) >= PAUSE) {
        *resumed = Some(now);
    }
    *last = Some(now);
}

impl Arrived {
    fn minus(self, o: Arrived) -> Arrived {
        Arrived {
            datagrams: self.datagrams - o.datagrams,
            udp_bytes: self.udp_bytes - o.udp_bytes,
            connections: self.connections - o.connections,
            tcp_bytes: self.tcp_bytes - o.tcp_bytes,
            last_udp: self.last_udp,
            last_tcp: self.last_tcp,
            resumed_udp: self.resumed_udp,
            resumed_tcp: self.resumed_tcp,
        }
    }
}

/// Runs `setup` then `body` on a new thread inside the network namespace at `netns`; returns
/// once `setup` succeeded there, with the information it passed back.
fn spawn_in<S, I>(
    name: String,
    netns: &Path,
    setup: impl FnOnce() -> Result<(S, I), Error> + Send + 'static,
    body: impl FnOnce(S) + Send + 'static,
) -> Result<(JoinHandle<()>, I), Error>
where
    S: 'static,
    I: Send + 'static,
{
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name)
        .stack_size(256 * 1024)
        .spawn(move || match sys::enter_netns(&netns).and_then(|_| setup()) {
            Ok((state, info)) => {
                let _ = tx.send(Ok(info));
                body(state)
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| Error::new(format!("cannot start a thread: {e}")))?;
    match rx.recv() {
        Ok(Ok(info)) => Ok((thread, info)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(Error::new("traffic thread died during setup")),
    }
}

// === Sink ===

/// Counts what arrives at one address and port of a pod, per source address.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<Mutex<BTreeMap<IpAddr, Arrived>>>,
}

type Counts = Mutex<BTreeMap<IpAddr, Arrived>>;

impl Sink {
    /// Listens on `addr` (a pod's address and a port, TCP and UDP) inside the pod's namespace.
    /// With `echo`, every datagram goes back to its sender.
    pub fn start(netns: &Path, addr: SocketAddr, echo: bool) -> Result<Sink, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Counts> = Arc::default();
        let (stop2, counts2) = (stop.clone(), counts.clone());
        let ctx = move |what: &'static str| move |e: std::io::Error| Error::new(format!("sink {addr}: {what}: {e}"));
        let setup = move || {
            let tcp = TcpListener::bind(addr).map_err(ctx("listen"))?;
            let udp = UdpSocket::bind(addr).map_err(ctx("bind UDP"))?;
            tcp.set_nonblocking(true).map_err(ctx("nonblocking"))?;
            udp.set_nonblocking(true).map_err(ctx("nonblocking"))?;
            Ok(((tcp, udp), ()))
        };
        let body = move |(tcp, udp)| serve(&tcp, &udp, echo, &stop2, &counts2);
        let (thread, ()) = spawn_in(format!("sink {addr}"), netns, setup, body)?;
        Ok(Sink {
            addr,
            stop,
            thread: Some(thread),
            counts,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What arrived from `src` so far.
    pub fn arrived_from(&self, src: IpAddr) -> Arrived {
        self.counts
            .lock()
            .expect("sink counts")
            .get(&src)
            .copied()
            .unwrap_or_default()
    }

    /// Stops the sink after it has read everything already queued on its sockets.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count(counts: &Counts, ip: IpAddr, f: impl FnOnce(&mut Arrived)) {
    f(counts.lock().expect("sink counts").entry(ip).or_default())
}

/// Reads whatever is queued on the sockets `ready` marks (listener, UDP socket, then each open
/// connection; missing entries count as ready): new connections, datagrams, bytes. Closed
/// connections are dropped.
fn drain(
    tcp: &TcpListener,
    udp: &UdpSocket,
    conns: &mut Vec<(TcpStream, IpAddr)>,
    ready: &[bool],
    echo: bool,
    counts: &Counts,
    buf: &mut [u8],
) {
    let is_ready = |i: usize| ready.get(i).copied().unwrap_or(true);
    if is_ready(0) {
        while let Ok((c, peer)) = tcp.accept() {
            if c.set_nonblocking(true).is_ok() {
                count(counts, peer.ip(), |a| a.connections += 1);
                conns.push((c, peer.ip()));
            }
        }
    }
    if is_ready(1) {
        while let Ok((n, from)) = udp.recv_from(buf) {
            count(counts, from.ip(), |a| {
                a.datagrams += 1;
                a.udp_bytes += n as u64;
                arrived_at(&mut a.last_udp, &mut a.resumed_udp, Instant::now());
            });
            if echo {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    }
    let mut closed = Vec::new();
    for (i, (c, ip)) in conns.iter_mut().enumerate() {
        if !is_ready(2 + i) {
            continue;
        }
        loop {
            match c.read(buf) {
                Ok(0) => {
                    closed.push(i);
                    break;
                }
                Ok(n) => count(counts, *ip, |a| {
                    a.tcp_bytes += n as u64;
                    arrived_at(&mut a.last_tcp, &mut a.resumed_tcp, Instant::now());
                }),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed.push(i);
                    break;
                }
            }
        }
    }
    for i in closed.into_iter().rev() {
        conns.swap_remove(i);
    }
}

fn serve(tcp: &TcpListener, udp: &UdpSocket, echo: bool, stop: &AtomicBool, counts: &Counts) {
    let mut conns: Vec<(TcpStream, IpAddr)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = vec![
            PollFd::new(tcp.as_fd(), PollFlags::POLLIN),
            PollFd::new(udp.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(conns.iter().map(|(c, _)| PollFd::new(c.as_fd(), PollFlags::POLLIN)));
        match poll(&mut fds, PollTimeout::from(SINK_POLL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        drain(tcp, udp, &mut conns, &ready, echo, counts, &mut buf);
    }
    // Whatever arrived before the stop still counts.
    drain(tcp, udp, &mut conns, &[], echo, counts, &mut buf);
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

// === Source ===

/// What a source sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub connects: u64,
    /// Connects that completed: the SYN reached the destination and its answer came back.
    pub connected: u64,
    /// Connects refused: a RST came back, so the SYN reached the destination's kernel.
    pub refused: u64,
    /// Sends or connects that failed otherwise (the prober's own trouble).
    pub errors: u64,
}

impl Sent {
    fn minus(self, o: Sent) -> Sent {
        Sent {
            datagrams: self.datagrams - o.datagrams,
            connects: self.connects - o.connects,
            connected: self.connected - o.connected,
            refused: self.refused - o.refused,
            errors: self.errors - o.errors,
        }
    }
}

#[derive(Debug, Default)]
struct SentCounters {
    datagrams: AtomicU64,
    connects: AtomicU64,
    connected: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

/// Sends UDP datagrams and TCP connects from a pod to one address and port, at a steady rate,
/// until dropped.
#[derive(Debug)]
pub struct Source {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    sent: Arc<SentCounters>,
}

fn unspecified(dst: SocketAddr) -> SocketAddr {
    match dst.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Calls `tick` every `interval`, on schedule rather than drifting, until `stop` is set.
fn every(interval: Duration, stop: &AtomicBool, mut tick: impl FnMut()) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick();
        next += interval;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(d) => std::thread::sleep(d),
            None => next = now,
        }
    }
}

impl Source {
    /// Starts sending from the pod whose namespace is `netns` to `dst`.
    pub fn start(netns: &Path, dst: SocketAddr) -> Result<Source, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(SentCounters::default());
        let mut threads = Vec::new();

        let (stop2, sent2) = (stop.clone(), sent.clone());
        let setup = move || {
            UdpSocket::bind(unspecified(dst))
                .map(|s| (s, ()))
                .map_err(|e| Error::new(format!("source to {dst}: bind UDP: {e}")))
        };
        let body = move |sock: UdpSocket| {
            let mut n = 0u64;
            every(DATAGRAM_INTERVAL, &stop2, || {
                n += 1;
                let c = match sock.send_to(format!("policyc-lab {n}").as_bytes(), dst) {
                    Ok(_) => &sent2.datagrams,
                    Err(_) => &sent2.errors,
                };
                c.fetch_add(1, Ordering::Relaxed);
            });
        };
        threads.push(spawn_in(format!("udp to {dst}"), netns, setup, body)?.0);

        let (stop2, sent2) = (stop.clone(), sent.clone());
        let body = move |()| {
            every(CONNECT_INTERVAL, &stop2, || {
                sent2.connects.fetch_add(1, Ordering::Relaxed);
                let c = match TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT) {
                    Ok(_) => &sent2.connected,
                    Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => return,
                    Err(e) if crate::listen::is_refusal(e.kind()) => &sent2.refused,
                    Err(_) => &sent2.errors,
                };
                c.fetch_add(1, Ordering::Relaxed);
            });
        };
        threads.push(spawn_in(format!("tcp to {dst}"), netns, || Ok(((), ())), body)?.0);
        Ok(Source { stop, threads, sent })
    }

    pub fn sent(&self) -> Sent {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Sent {
            datagrams: n(&self.sent.datagrams),
            connects: n(&self.sent.connects),
            connected: n(&self.sent.connected),
            refused: n(&self.sent.refused),
            errors: n(&self.sent.errors),
        }
    }

    /// Stops sending; returns the final counts.
    pub fn finish(mut self) -> Sent {
        self.stop_and_join();
        self.sent()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

// === Prober ===

/// Whether a pair's traffic may arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allowed,
    Denied,
}

/// One pair's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairCounts {
    pub name: String,
    pub expect: Expect,
    pub sent: Sent,
    pub arrived: Arrived,
}

impl PairCounts {
    /// Datagrams and connections of a denied pair that reached the destination (0 for an
    /// allowed pair).
    pub fn leaked(&self) -> u64 {
        match self.expect {
            Expect::Allowed => 0,
            Expect::Denied => {
                self.arrived.datagrams + self.arrived.connections + self.sent.connected + self.sent.refused
            }
        }
    }

    /// Counts since an earlier reading of the same pair.
    pub fn since(&self, earlier: &PairCounts) -> PairCounts {
        PairCounts {
            name: self.name.clone(),
            expect: self.expect,
            sent: self.sent.minus(earlier.sent),
            arrived: self.arrived.minus(earlier.arrived),
        }
    }
}

#[derive(Debug)]
struct Pair {
    expect: Expect,
    src: IpAddr,
    sink: SocketAddr,
    source: Source,
}

/// Sources and sinks of many pairs; one sink serves every pair towards its address. A pair
/// stopped with its sink keeps its final counts.
#[derive(Debug, Default)]
pub struct Prober {
    sinks: BTreeMap<SocketAddr, Sink>,
    pairs: BTreeMap<String, Pair>,
    finished: BTreeMap<String, PairCounts>,
}

impl Prober {
    pub fn new() -> Prober {
        Prober::default()
    }

    /// Starts a pair: traffic from the pod at `src_netns` (address `src`) to `dst` in the pod at
    /// `dst_netns`. Pairs towards one sink need different source addresses.
    pub fn add(
        &mut self,
        name: &str,
        expect: Expect,
        (src_netns, src): (&Path, IpAddr),
        (dst_netns, dst): (&Path, SocketAddr),
    ) -> Result<(), Error> {
        if self.pairs.contains_key(name) || self.finished.contains_key(name) {
            return Err(Error::new(format!("pair {name} exists")));
        }
        if self.pairs.values().any(|p| p.sink == dst && p.src == src) {
            return Err(Error::new(format!("a pair from {src} to {dst} exists")));
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.sinks.entry(dst) {
            e.insert(Sink::start(dst_netns, dst, false)?);
        }
        let source = Source::start(src_netns, dst)?;
        self.pairs.insert(
            name.to_string(),
            Pair {
                expect,
                src,
                sink: dst,
                source,
            },
        );
        Ok(())
    }

    fn counts_of(&self, name: &str, p: &Pair) -> PairCounts {
        PairCounts {
            name: name.to_string(),
            expect: p.expect,
            sent: p.source.sent(),
            arrived: self.sinks[&p.sink].arrived_from(p.src),
        }
    }

    /// Stops every pair towards `dst`, then its sink (after it read what was queued); their
    /// counts stay in [`Prober::counts`].
    pub fn remove_sink(&mut self, dst: SocketAddr) {
        let names: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.sink == dst)
            .map(|(n, _)| n.clone())
            .collect();
        let mut stopped = Vec::new();
        for name in names {
            let p = self.pairs.remove(&name).expect("pair");
            stopped.push((name, p.expect, p.src, p.source.finish()));
        }
        let Some(sink) = self.sinks.remove(&dst) else {
            return;
        };
        let counts = sink.counts.clone();
        sink.finish();
        for (name, expect, src, sent) in stopped {
            let arrived = counts
                .lock()
                .expect("sink counts")
                .get(&src)
                .copied()
                .unwrap_or_default();
            self.finished.insert(
                name.clone(),
                PairCounts {
                    name,
                    expect,
                    sent,
                    arrived,
                },
            );
        }
    }

    /// Current counts of every pair, by name.
    pub fn counts(&self) -> BTreeMap<String, PairCounts> {
        let mut all = self.finished.clone();
        for (name, p) in &self.pairs {
            all.insert(name.clone(), self.counts_of(name, p));
        }
        all
    }

    /// Current counts of one pair.
    pub fn pair(&self, name: &str) -> Option<PairCounts> {
        match self.pairs.get(name) {
            Some(p) => Some(self.counts_of(name, p)),
            None => self.finished.get(name).cloned(),
        }
    }
}

// === Streams ===

/// One long-lived flow from a pod: a TCP connection or a UDP socket, sending 64 bytes every
/// 10 ms until dropped.
#[derive(Debug)]
pub struct Stream {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Bytes the local kernel took (TCP: queued for sending; UDP: sent).
    sent: Arc<AtomicU64>,
}

enum StreamSock {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Stream {
    /// Connects from the pod at `netns` to `dst` (failing unless accepted within 2 s) and
    /// starts writing.
    pub fn tcp(netns: &Path, dst: SocketAddr) -> Result<Stream, Error> {
        Stream::start(netns, dst, true)
    }

    /// Sends datagrams from one socket of the pod at `netns` to `dst`.
    pub fn udp(netns: &Path, dst: SocketAddr) -> Result<Stream, Error> {
        Stream::start(netns, dst, false)
    }

    fn start(netns: &Path, dst: SocketAddr, tcp: bool) -> Result<Stream, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let err =
            move |what: &'static str| move |e: std::io::Error| Error::new(format!("stream to {dst}: {what}: {e}"));
        let setup = move || {
            let (sock, local) = if tcp {
                let s = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).map_err(err("connect"))?;
                s.set_nonblocking(true).map_err(err("nonblocking"))?;
                let local = s.local_addr().map_err(err("local address"))?;
                (StreamSock::Tcp(s), local)
            } else {
                let s = UdpSocket::bind(unspecified(dst)).map_err(err("bind"))?;
                s.connect(dst).map_err(err("connect"))?;
                s.set_nonblocking(true).map_err(err("nonblocking"))?;
                let local = s.local_addr().map_err(err("local address"))?;
                (StreamSock::Udp(s), local)
            };
            Ok((sock, local))
        };
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let body = move |sock: StreamSock| {
            let chunk = [0x5au8; STREAM_CHUNK];
            let mut buf = [0u8; 2048];
            every(DATAGRAM_INTERVAL, &stop2, || {
                let n = match &sock {
                    // A full send buffer (nothing acknowledged) is the flow being stopped.
                    StreamSock::Tcp(c) => {
                        let mut c: &TcpStream = c;
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                        c.write(&chunk)
                    }
                    StreamSock::Udp(u) => {
                        while u.recv(&mut buf).is_ok() {}
                        u.send(&chunk)
                    }
                };
                if let Ok(n) = n {
                    sent2.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        };
        let kind = if tcp { "tcp" } else { "udp" };
        let (thread, local) = spawn_in(format!("{kind} stream to {dst}"), netns, setup, body)?;
        Ok(Stream {
            local,
            stop,
            thread: Some(thread),
            sent,
        })
    }

    /// The flow's own address and port: the source of its conntrack tuple.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === Churn ===

/// What a [`Churn`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Churned {
    /// TCP connections made (accepted, then closed at once).
    pub connections: u64,
    /// Datagrams sent, each from a fresh socket.
    pub datagrams: u64,
    /// Connects that failed or timed out, sends that failed.
    pub failed: u64,
}

/// New short connections from one pod, to keep its nodes' conntrack tables busy: every
/// `1 / rate` a TCP connection (closed at once) and a datagram from a fresh socket, so a new
/// source port and a new conntrack entry each time, to the targets in turn. Stops when dropped
/// or after `at_most`, whichever comes first.
#[derive(Debug)]
pub struct Churn {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
    datagrams: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Churn {
    /// Starts `rate` TCP connections and `rate` datagrams per second from the pod at `netns`.
    pub fn start(netns: &Path, targets: &[SocketAddr], rate: u32, at_most: Duration) -> Result<Churn, Error> {
        if targets.is_empty() || rate == 0 {
            return Err(Error::new("churn needs targets and a rate"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (connections, datagrams, failed) = (Arc::default(), Arc::default(), Arc::default());
        let interval = Duration::from_secs(1) / rate;
        let mut threads = Vec::new();
        for tcp in [true, false] {
            let (stop2, targets) = (stop.clone(), targets.to_vec());
            let done: Arc<AtomicU64> = if tcp {
                Arc::clone(&connections)
            } else {
                Arc::clone(&datagrams)
            };
            let failed2: Arc<AtomicU64> = Arc::clone(&failed);
            let body = move |()| {
                let end = Instant::now() + at_most;
                let mut i = 0usize;
                every(interval, &stop2, || {
                    if Instant::now() >= end {
                        stop2.store(true, Ordering::Relaxed);
                        return;
                    }
                    let dst = targets[i % targets.len()];
                    i += 1;
                    let ok = if tcp {
                        TcpStream::connect_timeout(&dst, Duration::from_millis(200)).is_ok()
                    } else {
                        UdpSocket::bind(unspecified(dst))
                            .and_then(|s| s.send_to(b"churn", dst))
                            .is_ok()
                    };
                    let c = if ok { &done } else { &failed2 };
                    c.fetch_add(1, Ordering::Relaxed);
                });
            };
            let kind = if tcp { "tcp" } else { "udp" };
            threads.push(spawn_in(format!("{kind} churn"), netns, || Ok(((), ())), body)?.0);
        }
        Ok(Churn {
            stop,
            threads,
            connections,
            datagrams,
            failed,
        })
    }

    pub fn made(&self) -> Churned {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Churned {
            connections: n(&self.connections),
            datagrams: n(&self.datagrams),
            failed: n(&self.failed),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
