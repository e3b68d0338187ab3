//! Probes: real packets from one pod to another, all of a batch in parallel.
//!
//! Each probe runs on its own thread, which enters the source pod's network namespace and opens
//! its socket there:
//!
//! | protocol | sends | reached when | blocked when |
//! |---|---|---|---|
//! | TCP | `connect()` | connected, or refused (RST: nothing listens) | no answer within the timeout |
//! | UDP | one datagram with a random nonce | the echo comes back, or ICMP port unreachable | no answer |
//! | SCTP | a raw INIT with a random initiate tag | the destination pod's recorder saw the tag | not seen |
//!
//! Policy denies by DROP, so a blocked probe always ends in a timeout; a refusal proves the
//! packet arrived.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage};
use policyc_compiler::{ObjectRef, Protocol};
use serde::Serialize;

use crate::listen::{is_refusal, Arrivals};
use crate::{sctp, sys};

/// What one probe observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Outcome {
    /// TCP handshake completed.
    Connected,
    /// The destination refused (TCP RST, ICMP port unreachable): the packet arrived.
    Refused,
    /// The UDP echo came back.
    Answered,
    /// The SCTP INIT reached the destination pod.
    Arrived,
    /// Nothing came back in time: dropped on the way.
    Timeout,
    /// The two pods have no address family in common: nothing can be sent.
    NoCommonFamily,
    /// The probe itself failed (socket error other than a refusal).
    Error(String),
}

impl Outcome {
    /// Whether the packet reached the destination pod.
    pub fn reached(&self) -> bool {
        matches!(
            self,
            Outcome::Connected | Outcome::Refused | Outcome::Answered | Outcome::Arrived
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Connected => "connected".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Answered => "answered".into(),
            Outcome::Arrived => "arrived".into(),
            Outcome::Timeout => "timed out".into(),
            Outcome::NoCommonFamily => "no common address family".into(),
            Outcome::Error(e) => format!("error: {e}"),
        }
    }
}

/// One probe to run.
#[derive(Clone, Debug)]
pub struct Probe {
    pub src_pod: ObjectRef,
    pub dst_pod: ObjectRef,
    /// The source pod's network namespace.
    pub src_netns: PathBuf,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// Runs every probe in parallel; results in the same order.
pub fn run_all(probes: &[Probe], timeout: Duration, arrivals: &Arrivals) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, move || run_one(p, timeout, arrivals))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Outcome::Error("probe thread panicked".into())),
                Err(e) => Outcome::Error(format!("cannot start a probe thread: {e}")),
            })
            .collect()
    })
}

/// Runs one probe on the calling thread's behalf (in a new thread inside the source pod).
pub fn run_one(p: &Probe, timeout: Duration, arrivals: &Arrivals) -> Outcome {
    if let Err(e) = sys::enter_netns(&p.src_netns) {
        return Outcome::Error(e.to_string());
    }
    let dst = SocketAddr::new(p.dst, p.port);
    match p.protocol {
        Protocol::Tcp => tcp(dst, timeout),
        Protocol::Udp => udp(dst, timeout),
        Protocol::Sctp => sctp_init(p, timeout, arrivals),
    }
}

fn io_outcome(e: std::io::Error) -> Outcome {
    match e.kind() {
        k if is_refusal(k) => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

fn tcp(dst: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&dst, timeout) {
        Ok(_) => Outcome::Connected,
        Err(e) => io_outcome(e),
    }
}

fn udp(dst: SocketAddr, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let local = SocketAddr::new(
        match dst.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let sock = match UdpSocket::bind(local).and_then(|s| s.connect(dst).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let nonce = format!("policyc-lab {:08x}{:08x}", sys::random_u32(), sys::random_u32());
    if let Err(e) = sock.send(nonce.as_bytes()) {
        return io_outcome(e);
    }
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Timeout;
        }
        if let Err(e) = sock.set_read_timeout(Some(left)) {
            return Outcome::Error(e.to_string());
        }
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == nonce.as_bytes() => return Outcome::Answered,
            Ok(_) => continue,
            Err(e) => return io_outcome(e),
        }
    }
}

fn sctp_init(p: &Probe, timeout: Duration, arrivals: &Arrivals) -> Outcome {
    let deadline = Instant::now() + timeout;
    let family = match p.dst {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = match socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Sctp) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("raw SCTP socket: {e}")),
    };
    let tag = sys::random_u32() | 1;
    let src_port = 32_768 + (sys::random_u32() % 28_000) as u16;
    let packet = sctp::init_packet(src_port, p.port, tag);
    // Raw sockets take a port of 0 (it is not used).
    let addr = SockaddrStorage::from(SocketAddr::new(p.dst, 0));
    if let Err(e) = sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), &packet, &addr, MsgFlags::empty()) {
        return Outcome::Error(format!("sending SCTP INIT: {e}"));
    }
    match arrivals.wait(tag, deadline) {
        Some(a) if a.pod == p.dst_pod && a.dst_port == p.port => Outcome::Arrived,
        Some(a) => Outcome::Error(format!("the INIT reached {} on port {} instead", a.pod, a.dst_port)),
        None => Outcome::Timeout,
    }
}
