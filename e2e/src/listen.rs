//! The servers in the pods: one thread per pod, inside the pod's network namespace, serving
//! every container port.
//!
//! ```text
//!  pod thread (setns into the pod) ── poll ──┬─ TCP listener   accept, close
//!                                            ├─ UDP socket     echo every datagram
//!                                            └─ raw SCTP (132) record INITs in Arrivals ──► probers wait here
//! ```
//!
//! Sockets are dual-stack (`[::]`) when the pod has IPv6, so one socket serves both families.
//! The raw SCTP sockets see every SCTP packet reaching the pod, on any port: arrival is what
//! an SCTP probe checks, as a TCP probe counts a refused connection as having arrived.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvfrom, socket, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage};
use policyc_compiler::{ObjectRef, Protocol};

use crate::topo::PodPlan;
use crate::{sctp, sys, Error};

/// An SCTP INIT that reached a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub pod: ObjectRef,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// INITs seen by the pods' raw sockets, by initiate tag; probers wait on it.
#[derive(Debug, Default)]
pub struct Arrivals {
    seen: Mutex<HashMap<u32, (Arrival, Instant)>>,
    changed: Condvar,
}

/// Entries nobody waited for are dropped after this long.
const ARRIVAL_TTL: Duration = Duration::from_secs(60);

impl Arrivals {
    fn record(&self, tag: u32, arrival: Arrival) {
        let mut seen = self.seen.lock().expect("arrivals lock");
        let now = Instant::now();
        seen.retain(|_, (_, at)| now.duration_since(*at) < ARRIVAL_TTL);
        seen.insert(tag, (arrival, now));
        self.changed.notify_all();
    }

    /// Waits until an INIT with `tag` arrives somewhere, or `deadline` passes.
    pub fn wait(&self, tag: u32, deadline: Instant) -> Option<Arrival> {
        let mut seen = self.seen.lock().expect("arrivals lock");
        loop {
            if let Some((a, _)) = seen.remove(&tag) {
                return Some(a);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            seen = self
                .changed
                .wait_timeout(seen, deadline - now)
                .expect("arrivals lock")
                .0;
        }
    }
}

/// A pod's server thread; stops and closes its sockets when dropped.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp4(OwnedFd),
    Sctp6(OwnedFd),
}

impl Sock {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Udp(s) => s.as_fd(),
            Sock::Sctp4(s) | Sock::Sctp6(s) => s.as_fd(),
        }
    }
}

/// How often the thread checks whether it should stop.
const POLL_INTERVAL_MS: u16 = 100;

fn bind_addr(dual: bool, port: u16) -> SocketAddr {
    if dual {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

fn open_sockets(pod: &PodPlan) -> Result<Vec<Sock>, Error> {
    let dual = pod.has_family(policyc_compiler::cidr::Family::V6);
    let mut socks = Vec::new();
    let ctx = |what: String| move |e: std::io::Error| Error::new(format!("pod {}: {what}: {e}", pod.id));
    for &(port, protocol) in &pod.ports {
        let addr = bind_addr(dual, port);
        match protocol {
            Protocol::Tcp => {
                let l = TcpListener::bind(addr).map_err(ctx(format!("listen on {port}/TCP")))?;
                l.set_nonblocking(true).map_err(ctx("nonblocking".into()))?;
                socks.push(Sock::Tcp(l));
            }
            Protocol::Udp => {
                let s = UdpSocket::bind(addr).map_err(ctx(format!("bind {port}/UDP")))?;
                s.set_nonblocking(true).map_err(ctx("nonblocking".into()))?;
                socks.push(Sock::Udp(s));
            }
            // One raw socket per family serves every SCTP port.
            Protocol::Sctp => {}
        }
    }
    let raw = |family| {
        socket(
            family,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::Sctp,
        )
        .map_err(|e| Error::new(format!("pod {}: raw SCTP socket: {e}", pod.id)))
    };
    if pod.has_family(policyc_compiler::cidr::Family::V4) {
        socks.push(Sock::Sctp4(raw(AddressFamily::Inet)?));
    }
    if dual {
        socks.push(Sock::Sctp6(raw(AddressFamily::Inet6)?));
    }
    Ok(socks)
}

fn serve_one(sock: &Sock, pod: &ObjectRef, arrivals: &Arrivals, buf: &mut [u8]) {
    match sock {
        Sock::Tcp(l) => {
            // Accept and close: the handshake completing is the answer.
            while let Ok((conn, _)) = l.accept() {
                drop(conn);
            }
        }
        Sock::Udp(s) => {
            while let Ok((n, from)) = s.recv_from(buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
        Sock::Sctp4(fd) | Sock::Sctp6(fd) => {
            while let Ok((n, from)) = recvfrom::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(fd), buf) {
                let (packet, src) = match sock {
                    Sock::Sctp4(_) => {
                        // IPv4 raw sockets deliver the IP header too.
                        let Some(p) = sctp::strip_ipv4_header(&buf[..n]) else {
                            continue;
                        };
                        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                        (p, IpAddr::V4(src))
                    }
                    _ => {
                        let Some(src) = from.as_ref().and_then(|a| a.as_sockaddr_in6()).map(|a| a.ip()) else {
                            continue;
                        };
                        (&buf[..n], IpAddr::V6(src))
                    }
                };
                if let Some(init) = sctp::parse_init(packet) {
                    arrivals.record(
                        init.tag,
                        Arrival {
                            pod: pod.clone(),
                            src,
                            src_port: init.src_port,
                            dst_port: init.dst_port,
                        },
                    );
                }
            }
        }
    }
}

impl Listener {
    /// Starts the pod's server thread and returns once every socket is open.
    pub fn start(pod: &PodPlan, netns: PathBuf, arrivals: Arc<Arrivals>) -> Result<Listener, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let plan = pod.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pod {}", pod.id))
            .stack_size(256 * 1024)
            .spawn(move || {
                let socks = match sys::enter_netns(&netns).and_then(|_| open_sockets(&plan)) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut buf = vec![0u8; 65_536];
                while !stop2.load(Ordering::Relaxed) {
                    let mut fds: Vec<PollFd> = socks.iter().map(|s| PollFd::new(s.fd(), PollFlags::POLLIN)).collect();
                    match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
                        Ok(0) => continue,
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                    let ready: Vec<usize> = fds
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                        .map(|(i, _)| i)
                        .collect();
                    drop(fds);
                    for i in ready {
                        serve_one(&socks[i], &plan.id, &arrivals, &mut buf);
                    }
                }
            })
            .map_err(|e| Error::new(format!("cannot start the server thread of {}: {e}", pod.id)))?;
        let mut l = Listener {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(l),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                l.thread.take().map(|t| t.join());
                Err(Error::new(format!("the server thread of {} died", pod.id)))
            }
        }
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

/// Whether a socket error means the peer answered with a refusal (TCP RST, ICMP port
/// unreachable): the packet arrived.
pub fn is_refusal(kind: ErrorKind) -> bool {
    kind == ErrorKind::ConnectionRefused
}
