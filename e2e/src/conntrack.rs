//! Flushing a namespace's connection-tracking table over netlink (what `conntrack -F` does), so
//! that after a ruleset change every probe is a new connection the new rules judge, never a
//! leftover entry of an earlier step that `ct state established` would let through.

use std::path::Path;

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::{sys, Error};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// The request: a netlink header and an nfgenmsg for every family (AF_UNSPEC), no attributes.
fn flush_request(seq: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..4].copy_from_slice(&20u32.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0, then nfgenmsg { family: AF_UNSPEC, version: NFNETLINK_V0, res_id: 0 }.
    m
}

/// Empties the conntrack table of the network namespace at `netns`.
pub fn flush(netns: &Path) -> Result<(), Error> {
    sys::in_netns(netns, || -> Result<(), String> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| format!("netfilter netlink socket: {e}"))?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        bind(raw, &NetlinkAddr::new(0, 0)).map_err(|e| format!("bind: {e}"))?;
        send(raw, &flush_request(1), MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 1024];
        let n = recv(raw, &mut buf, MsgFlags::empty()).map_err(|e| format!("recv: {e}"))?;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            // ENOENT: nothing to flush.
            if errno != 0 && errno != -libc_enoent() {
                return Err(format!("kernel answered errno {}", -errno));
            }
        }
        Ok(())
    })?
    .map_err(|e| Error::new(format!("flushing conntrack in {}: {e}", netns.display())))
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}
