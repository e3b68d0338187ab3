//! A reader that binds an NFLOG group in a node's namespace and discards what it reads: for the
//! benchmark, so that the kernel builds and queues every flow event as it does for an agent
//! (without a listener it drops them before building them). The agent's reader, which parses
//! them, is `policyc_dataplane::nflog`; the lab does not link the dataplane crate.

use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};

use crate::{sys, Error};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NLM_F_REQUEST: u16 = 1;

/// Binds `group` and reads until dropped.
#[derive(Debug)]
pub struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

/// The bind request: a config message with `CMD_BIND` and copy mode packet, 128 bytes.
fn bind_message(group: u16) -> Vec<u8> {
    let mut body = vec![0u8, 0, 0, 0]; // nfgenmsg: AF_UNSPEC, version 0, res_id (big-endian)
    body[2..4].copy_from_slice(&group.to_be_bytes());
    // NFULA_CFG_CMD: one byte, padded to 4.
    body.extend_from_slice(&5u16.to_ne_bytes());
    body.extend_from_slice(&NFULA_CFG_CMD.to_ne_bytes());
    body.extend_from_slice(&[NFULNL_CFG_CMD_BIND, 0, 0, 0]);
    // NFULA_CFG_MODE: copy range (big-endian u32), mode, pad; 6 bytes padded to 8.
    body.extend_from_slice(&10u16.to_ne_bytes());
    body.extend_from_slice(&NFULA_CFG_MODE.to_ne_bytes());
    body.extend_from_slice(&128u32.to_be_bytes());
    body.extend_from_slice(&[NFULNL_COPY_PACKET, 0, 0, 0]);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&body);
    msg
}

impl Drain {
    pub fn start(netns: &Path, group: u16) -> Result<Drain, Error> {
        let fd = sys::in_netns(netns, || {
            socket::socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkNetFilter,
            )
        })?
        .map_err(|e| Error::new(format!("NFLOG socket: {e}")))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| Error::new(format!("NFLOG bind: {e}")))?;
        socket::send(fd.as_raw_fd(), &bind_message(group), socket::MsgFlags::empty())
            .map_err(|e| Error::new(format!("NFLOG group {group}: {e}")))?;
        socket::setsockopt(
            &fd,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )
        .map_err(|e| Error::new(format!("NFLOG timeout: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut bytes = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket::recv(fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty()) {
                    bytes += n as u64;
                }
            }
            bytes
        });
        // The bind is asynchronous to nothing: the kernel handled it in send(); give the
        // thread a moment to be reading.
        std::thread::sleep(Duration::from_millis(10));
        Ok(Drain {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops reading; the bytes read.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
