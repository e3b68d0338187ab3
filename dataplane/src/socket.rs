//! The netlink sockets: opening one (in another network namespace if asked), sending a
//! batch in one `sendmsg` and checking the kernel's answer to every message (nf_tables), or
//! plain `send`/`recv` of whole messages (ctnetlink, [`crate::ctnetlink`]; rtnetlink,
//! [`crate::links`]; nfnetlink_log, [`crate::nflog`]).

use std::fs::File;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, getsockopt, recv, recvmsg, send, sendmsg, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SetSockOpt, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use super::nl::Encoded;
use super::nla::{be64, Attrs, Messages, NFGENMSG_LEN};
use super::DataplaneError;

/// `NLMSG_ERROR`: an acknowledgement (error 0) or an error.
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
/// Largest reply: an error quoting a whole 64 KiB request, plus headers.
const RECV_BUF: usize = 256 * 1024;

/// A bound `NETLINK_NETFILTER` (or, from [`NlSocket::open_route_in`], `NETLINK_ROUTE`) socket.
/// The network namespace is the one of the thread that created it, for its whole life.
#[derive(Debug)]
pub(crate) struct NlSocket {
    fd: OwnedFd,
}

/// A failed system call while opening or using the socket.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub(crate) struct SocketError {
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl From<SocketError> for DataplaneError {
    fn from(e: SocketError) -> DataplaneError {
        DataplaneError::Socket {
            op: e.op,
            source: e.source,
        }
    }
}

fn err(op: &'static str) -> impl FnOnce(Errno) -> SocketError {
    move |e| SocketError {
        op,
        source: io::Error::from(e),
    }
}

fn sock_err(op: &'static str) -> impl FnOnce(Errno) -> DataplaneError {
    move |e| err(op)(e).into()
}

// `NETLINK_GET_STRICT_CHK` (linux/netlink.h, kernel >= 4.20): the kernel checks dump requests
// strictly and honours their filters, among them `IFA_TARGET_NETNSID` and the interface index of
// an address dump, which it ignores otherwise. nix has no wrapper for it; its `sockopt_impl!`
// macro makes one from nix's own `setsockopt` code for an `int` option (no unsafe code here).
use nix::{setsockopt_impl, sockopt_impl};
sockopt_impl!(
    /// `NETLINK_GET_STRICT_CHK` on `SOL_NETLINK`.
    NetlinkGetStrictChk,
    SetOnly,
    libc::SOL_NETLINK,
    NETLINK_GET_STRICT_CHK,
    bool
);
const NETLINK_GET_STRICT_CHK: i32 = 12;

impl NlSocket {
    fn open_here() -> Result<NlSocket, SocketError> {
        NlSocket::open_proto_here(SockProtocol::NetlinkNetFilter, 0)
    }

    /// A socket of `protocol` bound to the multicast `groups` (a bit mask; 0: none).
    fn open_proto_here(protocol: SockProtocol, groups: u32) -> Result<NlSocket, SocketError> {
        let fd =
            socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol).map_err(err("socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(err("bind"))?;
        Ok(NlSocket { fd })
    }

    /// A `NETLINK_ROUTE` socket in the network namespace of an open namespace file (the
    /// caller's when `None`), bound to the rtnetlink multicast `groups` (`RTMGRP_*` bits; 0 for
    /// requests only). Entered the way [`NlSocket::open_in`] does.
    pub fn open_route_in(netns: Option<&File>, groups: u32) -> Result<NlSocket, SocketError> {
        let open = || NlSocket::open_proto_here(SockProtocol::NetlinkRoute, groups);
        let Some(file) = netns else {
            return open();
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file, CloneFlags::CLONE_NEWNET).map_err(err("setns"))?;
                open()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Asks the kernel to check this socket's dump requests strictly and to apply their filters
    /// (`NETLINK_GET_STRICT_CHK`); `ENOPROTOOPT` on kernels before 4.20.
    pub fn set_strict_check(&self) -> Result<(), SocketError> {
        setsockopt(&self.fd, NetlinkGetStrictChk, &true).map_err(err("setsockopt(NETLINK_GET_STRICT_CHK)"))
    }

    /// Opens a socket in the network namespace at `netns` (a file such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`), or in the caller's when `None`.
    pub fn open(netns: Option<&Path>) -> Result<NlSocket, DataplaneError> {
        let Some(path) = netns else {
            return Ok(NlSocket::open_here()?);
        };
        let file = File::open(path).map_err(|source| DataplaneError::Netns {
            path: path.to_path_buf(),
            source,
        })?;
        NlSocket::open_in(Some(&file)).map_err(|e| match e.op {
            "setns" => DataplaneError::Netns {
                path: path.to_path_buf(),
                source: e.source,
            },
            _ => e.into(),
        })
    }

    /// Opens a socket in the network namespace of an open namespace file, or in the caller's
    /// when `None`. The namespace is entered by a short-lived thread of its own, so no other
    /// thread ever changes namespace; a socket stays in the namespace it was created in.
    pub fn open_in(netns: Option<&File>) -> Result<NlSocket, SocketError> {
        let Some(file) = netns else {
            return NlSocket::open_here();
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file, CloneFlags::CLONE_NEWNET).map_err(err("setns"))?;
                NlSocket::open_here()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sets a socket buffer size beyond the system maximum (needs CAP_NET_ADMIN in the initial
    /// user namespace), or as close to it as allowed (`net.core.rmem_max` / `wmem_max`).
    /// Returns whether the forced size took (`false`: the plain option, capped, was used).
    fn buffer<F, P>(&self, force: F, plain: P, size: usize) -> Result<bool, SocketError>
    where
        F: SetSockOpt<Val = usize>,
        P: SetSockOpt<Val = usize>,
    {
        let size = size.min(i32::MAX as usize / 2);
        match setsockopt(&self.fd, force, &size) {
            Ok(()) => Ok(true),
            Err(Errno::EPERM) => setsockopt(&self.fd, plain, &size)
                .map(|()| false)
                .map_err(err("setsockopt")),
            Err(e) => Err(err("setsockopt")(e)),
        }
    }

    pub fn set_recv_buffer(&self, size: usize) -> Result<(), SocketError> {
        self.buffer(sockopt::RcvBufForce, sockopt::RcvBuf, size).map(drop)
    }

    /// [`set_recv_buffer`](Self::set_recv_buffer), saying whether `SO_RCVBUFFORCE` took
    /// (`false`: `SO_RCVBUF`, capped at `net.core.rmem_max`).
    pub fn set_recv_buffer_forced(&self, size: usize) -> Result<bool, SocketError> {
        self.buffer(sockopt::RcvBufForce, sockopt::RcvBuf, size)
    }

    /// The receive buffer the kernel gave (`SO_RCVBUF`: twice the size asked, for its
    /// bookkeeping).
    pub fn recv_buffer(&self) -> Result<usize, SocketError> {
        getsockopt(&self.fd, sockopt::RcvBuf).map_err(err("getsockopt(SO_RCVBUF)"))
    }

    pub fn set_send_buffer(&self, size: usize) -> Result<(), SocketError> {
        self.buffer(sockopt::SndBufForce, sockopt::SndBuf, size).map(drop)
    }

    /// A blocking `recv` fails with `EAGAIN` after `timeout` without a message.
    pub fn set_recv_timeout(&self, timeout: Duration) -> Result<(), SocketError> {
        let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(err("setsockopt(SO_RCVTIMEO)"))
    }

    /// Sends `bytes` (one or more netlink messages) to the kernel in one write. The kernel
    /// handles the messages inside this call, so their answers are queued when it returns.
    pub fn send(&self, bytes: &[u8]) -> Result<(), Errno> {
        loop {
            match send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()) {
                Ok(n) if n == bytes.len() => return Ok(()),
                // A datagram socket writes all or nothing.
                Ok(_) => return Err(Errno::EMSGSIZE),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one datagram (one or more netlink messages). `EAGAIN`: nothing within the
    /// timeout (or at once, when `wait` is false); `ENOBUFS`: the kernel dropped messages
    /// because the receive buffer was full; `EMSGSIZE`: the datagram did not fit in `buf`.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> Result<usize, Errno> {
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        loop {
            let mut iov = [IoSliceMut::new(buf)];
            match recvmsg::<NetlinkAddr>(self.fd.as_raw_fd(), &mut iov, None, flags) {
                Ok(m) if m.flags.contains(MsgFlags::MSG_TRUNC) => return Err(Errno::EMSGSIZE),
                Ok(m) => return Ok(m.bytes),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the batch in one `sendmsg` (the kernel applies a batch only when its end message
    /// arrives in the same write) and checks an answer came for every message. The kernel
    /// processes the batch inside `sendmsg`, so all answers are queued when it returns.
    pub fn transact(&self, enc: &Encoded) -> Result<Vec<Echo>, DataplaneError> {
        let pages = enc.pages();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let expected = enc.batch.sequence_numbers();

        // Room for the whole batch in one write, and for every answer: an acknowledgement per
        // message, and an error quotes the message it rejects.
        let sndbuf = (total + 64 * 1024).max(256 * 1024);
        // The rules echoed back with their handles take about what they took to send.
        let rcvbuf = expected.len() * 1024 + 2 * total + 1024 * 1024;
        self.set_send_buffer(sndbuf)?;
        self.set_recv_buffer(rcvbuf)?;

        let iov: Vec<IoSlice<'_>> = pages.iter().map(|p| IoSlice::new(p)).collect();
        let kernel = NetlinkAddr::new(0, 0);
        let sent =
            sendmsg(self.fd.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&kernel)).map_err(sock_err("sendmsg"))?;
        if sent != total {
            return Err(DataplaneError::Socket {
                op: "sendmsg",
                source: io::Error::other(format!("sent {sent} of {total} bytes")),
            });
        }

        let mut answered = vec![false; expected.len()];
        let mut errors: Vec<(u32, i32)> = Vec::new();
        let mut echoes: Vec<Echo> = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                // Answers were dropped: whether the batch was applied is unknown.
                Err(Errno::ENOBUFS) => return Err(sock_err("recv (answers lost, outcome unknown)")(Errno::ENOBUFS)),
                Err(e) => return Err(sock_err("recv")(e)),
            };
            echoes.extend(parse_echoes(&buf[..n]));
            for (seq, err) in parse_answers(&buf[..n]) {
                if let Some(i) = seq.checked_sub(expected.start).map(|i| i as usize) {
                    if let Some(a) = answered.get_mut(i) {
                        *a = true;
                    }
                }
                if err != 0 {
                    errors.push((seq, err));
                }
            }
        }

        if let Some(&(seq, err)) = errors.iter().min_by_key(|(seq, _)| *seq) {
            let object = enc
                .describe(seq)
                .map(str::to_string)
                .unwrap_or_else(|| "the batch".to_string());
            return Err(DataplaneError::Rejected {
                object,
                errno: -err,
                more_errors: errors.len() - 1,
                source: io::Error::from_raw_os_error(-err),
            });
        }
        let missing = answered.iter().filter(|a| !**a).count();
        if missing > 0 {
            return Err(DataplaneError::Unanswered {
                missing,
                messages: answered.len(),
            });
        }
        Ok(echoes)
    }
}

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE`: a table the kernel created, echoed.
pub(crate) const NEWTABLE: u16 = 10 << 8;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE`: a rule the kernel created, echoed.
pub(crate) const NEWRULE: u16 = (10 << 8) | 6;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_RULE_HANDLE: u16 = 3;

/// One object the kernel created and echoed: its message type, the sequence number of the
/// request that created it, and its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Echo {
    pub ty: u16,
    pub seq: u32,
    pub handle: u64,
}

/// Every table and rule echoed in a buffer of netlink messages (the kernel echoes a created
/// object with the sequence number of the message that created it); malformed messages are
/// skipped (their objects' handles stay unknown).
fn parse_echoes(buf: &[u8]) -> Vec<Echo> {
    Messages(buf)
        .map_while(Result::ok)
        .filter_map(|m| {
            let attr = match m.ty {
                NEWTABLE => NFTA_TABLE_HANDLE,
                NEWRULE => NFTA_RULE_HANDLE,
                _ => return None,
            };
            let attrs = m.payload.get(NFGENMSG_LEN..)?;
            Attrs(attrs)
                .map_while(Result::ok)
                .find(|(ty, _)| *ty == attr)
                .and_then(|(_, data)| be64("handle", data).ok())
                .map(|handle| Echo {
                    ty: m.ty,
                    seq: m.seq,
                    handle,
                })
        })
        .collect()
}

/// `(sequence number, error)` of every `NLMSG_ERROR` in a buffer of netlink messages; error 0 is
/// an acknowledgement, otherwise a negative errno.
fn parse_answers(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32_at(buf, 8);
        if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let err = i32::from_ne_bytes(buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].try_into().expect("4 bytes"));
            out.push((seq, err));
        }
        let next = len.next_multiple_of(4).min(buf.len());
        buf = &buf[next..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let mut b = Vec::new();
        for (seq, err) in [(5u32, 0i32), (6, -2)] {
            b.extend_from_slice(&36u32.to_ne_bytes());
            b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&err.to_ne_bytes());
            b.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_answers(&b), [(5, 0), (6, -2)]);
    }

    #[test]
    fn echoed_objects() {
        use crate::nla::testing::{attr, message, nest};
        let rule = |table: &str, handle: u64| {
            let mut p = vec![1, 0, 0, 0];
            p.extend(attr(1, format!("{table}\0").as_bytes()));
            p.extend(attr(2, b"ep_x_in\0"));
            p.extend(attr(3, &handle.to_be_bytes()));
            p.extend(nest(4, &[attr(1, b"counter\0")]));
            p
        };
        let mut b = message(NEWRULE, 0, 7, &rule("policyc", 42));
        b.extend(message(NLMSG_ERROR, 0, 7, &[0; 20]));
        // A deleted rule's echo and a rule without a handle are no created rule.
        b.extend(message((10 << 8) | 8, 0, 8, &rule("policyc", 41)));
        b.extend(message(NEWRULE, 0, 9, &[1, 0, 0, 0]));
        b.extend(message(NEWRULE, 0, 10, &rule("policyc", 43)));
        let mut table = vec![1, 0, 0, 0];
        table.extend(attr(1, b"policyc\0"));
        table.extend(attr(2, &0u32.to_be_bytes()));
        table.extend(attr(4, &9u64.to_be_bytes()));
        b.extend(message(NEWTABLE, 0, 3, &table));
        let echo = |ty, seq, handle| Echo { ty, seq, handle };
        assert_eq!(
            parse_echoes(&b),
            [echo(NEWRULE, 7, 42), echo(NEWRULE, 10, 43), echo(NEWTABLE, 3, 9)]
        );
    }
}
