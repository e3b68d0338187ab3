//! Forged datagrams: UDP over IPv4 with any source address, sent through a raw socket with
//! `IP_HDRINCL` (`IPPROTO_RAW`) from a pod's namespace, and a counting receiver.
//!
//! ```text
//!  pod B: raw socket ── IPv4 {src = pod A, dst = pod C} UDP {dport} "policyc-spoof <tag>" ──► pod C: Receiver
//! ```
//!
//! The kernel sends such a packet as it is (it fills in only the IP checksum and, when zero, the
//! identification): what a compromised pod could send. The source guard must drop it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn};

use crate::{sys, Error};

/// The one's complement sum of 16-bit words (RFC 1071), folded, not yet inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An IPv4 packet (header and UDP datagram) from `src:sport` to `dst:dport`.
pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = !(sum16(&p[..20], 0) as u16);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    // Pseudo-header: source, destination, zero, protocol, UDP length.
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut sum = !(sum16(&p[20..], sum16(&pseudo, 0)) as u16);
    if sum == 0 {
        sum = 0xffff;
    }
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Sends `count` UDP datagrams with source `src` (any address) from the namespace at `netns`.
pub fn send_udp_as(
    netns: &Path,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    count: usize,
) -> Result<(), Error> {
    sys::in_netns(netns, || -> Result<(), Error> {
        // IPPROTO_RAW implies IP_HDRINCL: the packet carries its own IPv4 header.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Raw,
        )
        .map_err(|e| Error::new(format!("raw socket: {e}")))?;
        let packet = udp_packet(src, dst, 40_000, dport, payload);
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        for _ in 0..count {
            sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty())
                .map_err(|e| Error::new(format!("sending as {src} to {dst}: {e}")))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })?
}

/// Sends `count` ordinary UDP datagrams from the namespace at `netns`.
pub fn send_udp(netns: &Path, dst: Ipv4Addr, dport: u16, payload: &[u8], count: usize) -> Result<(), Error> {
    sys::in_netns(netns, || -> Result<(), Error> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| Error::new(format!("udp socket: {e}")))?;
        for _ in 0..count {
            s.send_to(payload, SocketAddr::from((dst, dport)))
                .map_err(|e| Error::new(format!("sending to {dst}: {e}")))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })?
}

/// Sends `count` UDP datagrams to a broadcast address from the namespace at `netns`.
pub fn send_udp_broadcast(netns: &Path, dst: Ipv4Addr, dport: u16, payload: &[u8], count: usize) -> Result<(), Error> {
    sys::in_netns(netns, || -> Result<(), Error> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| Error::new(format!("udp socket: {e}")))?;
        s.set_broadcast(true)
            .map_err(|e| Error::new(format!("SO_BROADCAST: {e}")))?;
        for _ in 0..count {
            s.send_to(payload, SocketAddr::from((dst, dport)))
                .map_err(|e| Error::new(format!("broadcasting to {dst}: {e}")))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })?
}

/// A datagram received: its source and payload.
type Datagram = (SocketAddr, Vec<u8>);

/// Counts the datagrams arriving on a UDP port in a namespace, with their source addresses and
/// payloads.
#[derive(Debug)]
pub struct Receiver {
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub netns: PathBuf,
}

impl Receiver {
    pub fn start(netns: &Path, port: u16) -> Result<Receiver, Error> {
        let socket = sys::in_netns(netns, || UdpSocket::bind(("0.0.0.0", port)))?
            .map_err(|e| Error::new(format!("udp receiver on {port} in {}: {e}", netns.display())))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| Error::new(e.to_string()))?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Ok(mut g) = g.lock() {
                        g.push((from, buf[..n].to_vec()));
                    }
                }
            }
        });
        Ok(Receiver {
            got,
            stop,
            thread: Some(thread),
            netns: netns.to_path_buf(),
        })
    }

    /// Datagrams received so far whose payload is `payload`, by source address.
    pub fn count(&self, payload: &[u8]) -> usize {
        self.got
            .lock()
            .map(|g| g.iter().filter(|(_, p)| p == payload).count())
            .unwrap_or(0)
    }

    /// Waits until `want` datagrams with `payload` arrived (or a second passed), then a little
    /// longer for anything late; the count.
    pub fn arrived(&self, payload: &[u8], want: usize) -> usize {
        for _ in 0..20 {
            if self.count(payload) >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.count(payload)
    }

    /// Sources of the datagrams received with `payload`.
    pub fn sources(&self, payload: &[u8]) -> Vec<SocketAddr> {
        self.got
            .lock()
            .map(|g| g.iter().filter(|(_, p)| p == payload).map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1234,
            53,
            b"hello",
        );
        // A correct header sums to 0xffff; so does a UDP datagram with its pseudo-header.
        assert_eq!(sum16(&p[..20], 0), 0xffff);
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17];
        pseudo.extend_from_slice(&13u16.to_be_bytes());
        assert_eq!(sum16(&p[20..], sum16(&pseudo, 0)), 0xffff);
        assert_eq!(p.len(), 33);
    }
}
