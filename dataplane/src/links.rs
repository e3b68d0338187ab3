//! The node's links over rtnetlink, for the agent's attachment detection and the bridge
//! attachment's port discovery: which pod sits behind which port of the bridge (`cni0`), found
//! without entering any pod's network namespace.
//!
//! ```text
//!  node netns                                    pod netns (nsid N as seen from the node)
//!  RTM_GETLINK dump ─► cni0 (kind bridge, index B)
//!                      vethXXXXXXXX  IFLA_MASTER = B, kind veth,
//!                                    IFLA_LINK = P (the peer's index in its netns),
//!                                    IFLA_LINK_NETNSID = N ─────────► eth0 (index P)
//!  RTM_GETADDR dump, ifa_index = P, IFA_TARGET_NETNSID = N ─────────► 10.244.1.5/24, fd00::5/64
//!  (AF_INET and AF_INET6, strict checking)      ◄── RTM_NEWADDR … NLMSG_DONE
//! ```
//!
//! # Mechanism
//!
//! * [`bridge_ports`] lists the links of the node's namespace (one `RTM_GETLINK` dump), takes
//!   the bridge by name, and keeps its ports: links whose `IFLA_MASTER` is the bridge and whose
//!   `IFLA_INFO_KIND` is `veth`. For each, `IFLA_LINK` is the peer's interface index and
//!   `IFLA_LINK_NETNSID` the id of the peer's namespace *as the node's namespace names it* (the
//!   kernel assigns one when it reports a veth whose peer lives elsewhere).
//! * The peer's addresses come from `RTM_GETADDR` dumps (IPv4, then IPv6) sent in the node's
//!   namespace with `IFA_TARGET_NETNSID` = that id and `ifa_index` = the peer's index (Linux
//!   4.20 or later; the kernel honours both only with `NETLINK_GET_STRICT_CHK` set on the socket, and
//!   asks for `CAP_NET_ADMIN` over the target namespace's user namespace, which an agent with
//!   `NET_ADMIN` in the initial one has). No `setns` into a pod's namespace, no `hostPID`, no
//!   container runtime. Addresses are filtered by index again on our side, and link-local,
//!   loopback and unspecified ones are skipped.
//! * [`LinkEvents`] subscribes to `RTMGRP_LINK` (`RTM_NEWLINK`/`RTM_DELLINK`, including a port
//!   being enslaved or released) so the agent rescans when ports come and go. Address changes
//!   inside a pod's namespace are not multicast to the node's namespace: the agent also
//!   rescans when its pods change (a pod reports its IP after its CNI ADD finished) and
//!   periodically.
//!
//! # Fallbacks and limits
//!
//! * A port whose peer is in the node's own namespace (no `IFLA_LINK_NETNSID`: no pod), or whose
//!   address dump the kernel rejects (a kernel before 4.20: `EINVAL`/`ENOPROTOOPT`; no
//!   permission: `EPERM`/`EACCES`), is returned with no addresses and [`BridgePort::error`]
//!   saying why. The agent then knows no pod for that port; the compiled ruleset drops frames
//!   from unknown ports that claim a known pod's address, so such a pod fails closed rather
//!   than open. Neighbour or FDB entries (what the pod *sent*) are deliberately not used as a
//!   fallback: a pod controls them, so they cannot anchor an anti-spoofing guard.
//! * What a pod's namespace holds is what the pod (with `NET_ADMIN`) may change: an address
//!   that shows up on two ports is ambiguous, and the agent then maps it to neither.
//!
//! # Safety
//!
//! No `unsafe` here: sockets through `nix` (see `socket.rs`), messages built and parsed as
//! bytes; every length the kernel sends is checked, and a malformed message is an error, never
//! a panic.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::nla::{
    fixed, Attrs, Messages, MsgBuilder, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use crate::socket::{NlSocket, SocketError};

// --- rtnetlink (linux/rtnetlink.h, if_link.h, if_addr.h) ---
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTMGRP_LINK: u32 = 1;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const IFF_UP: u32 = 1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How many times a dump the kernel flags as interrupted (links changed meanwhile) is restarted.
const DUMP_ATTEMPTS: u32 = 5;
/// How long a request waits for the kernel's next message.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Dump messages fit in 32 KiB (`netlink_recvmsg` caps them); room for a few.
const RECV_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot enter network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink socket: {op} failed")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("kernel refused {request} (errno {errno})")]
    Kernel {
        request: &'static str,
        /// Positive errno.
        errno: i32,
        #[source]
        source: io::Error,
    },
    #[error("no answer to {0} within {TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("{0} was interrupted {DUMP_ATTEMPTS} times (links kept changing)")]
    Interrupted(&'static str),
    #[error("malformed rtnetlink message: {0}")]
    Malformed(String),
}

impl From<SocketError> for LinkError {
    fn from(e: SocketError) -> LinkError {
        LinkError::Socket {
            op: e.op,
            source: e.source,
        }
    }
}

fn sock_err(op: &'static str) -> impl FnOnce(Errno) -> LinkError {
    move |e| LinkError::Socket {
        op,
        source: io::Error::from(e),
    }
}

/// One link of a namespace, as `RTM_GETLINK` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: `veth`, `bridge`, `vxlan`, …; `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// `IFLA_MASTER`: the bridge (or bond, VRF) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, its peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, in this namespace, of the namespace `link` lives in.
    pub link_netnsid: Option<i32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// One port of a bridge and the addresses of the pod interface behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgePort {
    /// Host-side name, e.g. `veth1a2b3c4d`.
    pub name: String,
    pub index: u32,
    /// The veth peer's index in its namespace.
    pub peer_index: Option<u32>,
    /// The peer's namespace id as the node's namespace names it.
    pub peer_netnsid: Option<i32>,
    /// The peer's addresses: global and site scope, IPv4 and IPv6; no link-local, loopback or
    /// unspecified address.
    pub addresses: Vec<IpAddr>,
    /// Why `addresses` could not be read, when they could not.
    pub error: Option<String>,
}

/// `(message type, payload)` of a dump's answers.
type Answers = Vec<(u16, Vec<u8>)>;

/// A `NETLINK_ROUTE` request socket in one network namespace.
#[derive(Debug)]
pub struct Rtnetlink {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// Opens the namespace file at `netns`, if any.
fn netns_file(netns: Option<&Path>) -> Result<Option<File>, LinkError> {
    netns
        .map(|path| {
            File::open(path).map_err(|source| LinkError::Netns {
                path: path.to_path_buf(),
                source,
            })
        })
        .transpose()
}

fn open_route(netns: Option<&Path>, groups: u32) -> Result<NlSocket, LinkError> {
    let file = netns_file(netns)?;
    NlSocket::open_route_in(file.as_ref(), groups).map_err(|e| match (e.op, netns) {
        ("setns", Some(path)) => LinkError::Netns {
            path: path.to_path_buf(),
            source: e.source,
        },
        _ => e.into(),
    })
}

impl Rtnetlink {
    /// A socket in the network namespace at `netns` (e.g. `/run/netns/NAME`), or in the
    /// caller's; with strict checking of dump requests (Linux >= 4.20).
    pub fn open(netns: Option<&Path>) -> Result<Rtnetlink, LinkError> {
        let sock = open_route(netns, 0)?;
        sock.set_strict_check()?;
        sock.set_recv_timeout(TIMEOUT)?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        Ok(Rtnetlink {
            sock,
            seq,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        let mut header = [0u8; IFINFOMSG_LEN]; // every index
        header[0] = AF_UNSPEC;
        let msgs = self.dump("link dump", RTM_GETLINK, &header, &[])?;
        msgs.iter()
            .filter(|(ty, _)| *ty == RTM_NEWLINK)
            .map(|(_, p)| parse_link(p).map_err(LinkError::Malformed))
            .collect()
    }

    /// The addresses of interface `index` in the namespace with id `netnsid` (as this socket's
    /// namespace names it), or in this socket's namespace when `None`: both families, without
    /// link-local, loopback and unspecified addresses.
    pub fn addresses(&mut self, netnsid: Option<i32>, index: u32) -> Result<Vec<IpAddr>, LinkError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let mut header = [0u8; IFADDRMSG_LEN];
            header[0] = family;
            header[4..8].copy_from_slice(&index.to_ne_bytes());
            let attrs: Vec<(u16, Vec<u8>)> = netnsid
                .map(|id| (IFA_TARGET_NETNSID, id.to_ne_bytes().to_vec()))
                .into_iter()
                .collect();
            let msgs = match self.dump("address dump", RTM_GETADDR, &header, &attrs) {
                // A namespace without IPv6 (disabled) has no AF_INET6 dump handler.
                Err(LinkError::Kernel {
                    errno: libc::EAFNOSUPPORT,
                    ..
                }) if family == AF_INET6 => continue,
                r => r?,
            };
            for (ty, p) in &msgs {
                if *ty != RTM_NEWADDR {
                    continue;
                }
                if let Some(a) = parse_addr(p, index).map_err(LinkError::Malformed)? {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends one dump request and collects `(type, payload)` of its answers; restarts a dump
    /// the kernel flags as interrupted or whose answers overran the buffer.
    fn dump(
        &mut self,
        what: &'static str,
        ty: u16,
        header: &[u8],
        attrs: &[(u16, Vec<u8>)],
    ) -> Result<Answers, LinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let mut b = MsgBuilder::with_header(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, header);
            for (t, data) in attrs {
                b.put(*t, data);
            }
            self.sock.send(&b.finish()).map_err(sock_err("send"))?;
            if let Some(msgs) = self.collect(what, seq)? {
                return Ok(msgs);
            }
        }
        Err(LinkError::Interrupted(what))
    }

    /// The answers to dump `seq` up to its `NLMSG_DONE`; `None` when it must be restarted.
    fn collect(&mut self, what: &'static str, seq: u32) -> Result<Option<Answers>, LinkError> {
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match self.sock.recv(&mut self.buf, true) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Err(LinkError::Timeout(what)),
                // Answers were dropped: read on to our DONE, then dump again.
                Err(Errno::ENOBUFS) => {
                    interrupted = true;
                    continue;
                }
                Err(e) => return Err(sock_err("recv")(e)),
            };
            for m in Messages(&self.buf[..n]) {
                let m = m.map_err(LinkError::Malformed)?;
                if m.seq != seq {
                    continue; // left over from an abandoned request
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.ty {
                    NLMSG_DONE => {
                        return match m.done_error() {
                            0 if interrupted => Ok(None),
                            0 => Ok(Some(out)),
                            errno => Err(kernel(what, errno)),
                        };
                    }
                    NLMSG_ERROR => match m.error().map_err(LinkError::Malformed)? {
                        0 => {}
                        errno => return Err(kernel(what, errno)),
                    },
                    NLMSG_OVERRUN => interrupted = true,
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
        }
    }
}

fn kernel(request: &'static str, errno: i32) -> LinkError {
    LinkError::Kernel {
        request,
        errno,
        source: io::Error::from_raw_os_error(errno),
    }
}

fn u32_attr(what: &str, data: &[u8]) -> Result<u32, String> {
    fixed::<4>(what, data).map(u32::from_ne_bytes)
}

/// A link from an `RTM_NEWLINK` payload (`ifinfomsg` and attributes).
fn parse_link(p: &[u8]) -> Result<Link, String> {
    if p.len() < IFINFOMSG_LEN {
        return Err(format!("RTM_NEWLINK of {} bytes, shorter than ifinfomsg", p.len()));
    }
    let index = i32::from_ne_bytes(p[4..8].try_into().expect("4 bytes"));
    let flags = u32::from_ne_bytes(p[8..12].try_into().expect("4 bytes"));
    let mut link = Link {
        index: u32::try_from(index).map_err(|_| format!("link index {index}"))?,
        up: flags & IFF_UP != 0,
        ..Link::default()
    };
    for a in Attrs(&p[IFINFOMSG_LEN..]) {
        let (ty, data) = a?;
        match ty {
            IFLA_IFNAME => link.name = crate::nla::string("IFLA_IFNAME", data)?,
            IFLA_LINK => link.link = Some(u32_attr("IFLA_LINK", data)?),
            IFLA_MASTER => link.master = Some(u32_attr("IFLA_MASTER", data)?),
            IFLA_LINK_NETNSID => {
                link.link_netnsid = Some(fixed::<4>("IFLA_LINK_NETNSID", data).map(i32::from_ne_bytes)?)
            }
            IFLA_LINKINFO => {
                for a in Attrs(data) {
                    let (ty, data) = a?;
                    if ty == IFLA_INFO_KIND {
                        link.kind = Some(crate::nla::string("IFLA_INFO_KIND", data)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// The address of an `RTM_NEWADDR` payload when it belongs to interface `index` and is one a
/// pod is reached by (not link-local, loopback or unspecified).
fn parse_addr(p: &[u8], index: u32) -> Result<Option<IpAddr>, String> {
    if p.len() < IFADDRMSG_LEN {
        return Err(format!("RTM_NEWADDR of {} bytes, shorter than ifaddrmsg", p.len()));
    }
    let family = p[0];
    if u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes")) != index {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    for a in Attrs(&p[IFADDRMSG_LEN..]) {
        let (ty, data) = a?;
        if ty != IFA_LOCAL && ty != IFA_ADDRESS {
            continue;
        }
        let ip = match family {
            AF_INET => IpAddr::V4(Ipv4Addr::from(fixed::<4>("IFA_ADDRESS", data)?)),
            AF_INET6 => IpAddr::V6(Ipv6Addr::from(fixed::<16>("IFA_ADDRESS", data)?)),
            _ => return Ok(None),
        };
        if ty == IFA_LOCAL {
            local = Some(ip);
        } else {
            address = Some(ip);
        }
    }
    // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on a
    // point-to-point link); IPv6 sends IFA_ADDRESS alone unless there is a peer.
    Ok(local.or(address).filter(|ip| pod_address(*ip)))
}

/// Whether a pod may be reached by this address: not link-local, loopback, unspecified or
/// multicast.
fn pod_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_link_local() || a.is_loopback() || a.is_unspecified() || a.is_multicast()),
        IpAddr::V6(a) => {
            !((a.segments()[0] & 0xffc0) == 0xfe80 || a.is_loopback() || a.is_unspecified() || a.is_multicast())
        }
    }
}

/// Every link of the namespace at `netns` (the caller's when `None`).
pub fn links(netns: Option<&Path>) -> Result<Vec<Link>, LinkError> {
    Rtnetlink::open(netns)?.links()
}

/// The veth ports of bridge `bridge` in the namespace at `netns` (the caller's when `None`),
/// each with its peer's addresses, sorted by name; `Ok(None)` when there is no bridge of that
/// name. A port whose addresses cannot be read has none and says why ([`BridgePort::error`]).
pub fn bridge_ports(netns: Option<&Path>, bridge: &str) -> Result<Option<Vec<BridgePort>>, LinkError> {
    let mut rt = Rtnetlink::open(netns)?;
    let links = rt.links()?;
    let Some(br) = links
        .iter()
        .find(|l| l.name == bridge && l.kind.as_deref() == Some("bridge"))
    else {
        return Ok(None);
    };
    let mut ports = Vec::new();
    for l in links
        .iter()
        .filter(|l| l.master == Some(br.index) && l.kind.as_deref() == Some("veth"))
    {
        let mut port = BridgePort {
            name: l.name.clone(),
            index: l.index,
            peer_index: l.link,
            peer_netnsid: l.link_netnsid,
            ..BridgePort::default()
        };
        match (l.link, l.link_netnsid) {
            (Some(peer), Some(nsid)) => match rt.addresses(Some(nsid), peer) {
                Ok(a) => port.addresses = a,
                Err(e) => port.error = Some(e.to_string()),
            },
            // The kernel names the peer's namespace only when it is another one.
            (Some(_), None) => port.error = Some("the veth's peer is in the node's own namespace: no pod".into()),
            (None, _) => port.error = Some("the kernel reports no peer for the veth".into()),
        }
        ports.push(port);
    }
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(ports))
}

/// A subscription to link changes (`RTM_NEWLINK`, `RTM_DELLINK`) in one namespace.
#[derive(Debug)]
pub struct LinkEvents {
    sock: NlSocket,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes in the namespace at `netns` (the caller's when `None`).
    pub fn open(netns: Option<&Path>) -> Result<LinkEvents, LinkError> {
        let sock = open_route(netns, RTMGRP_LINK)?;
        sock.set_recv_buffer(1 << 20)?;
        Ok(LinkEvents {
            sock,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Waits up to `timeout` for link changes; `Ok(true)` when some arrived (all queued ones
    /// are read), also when the kernel dropped some because the buffer was full.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, LinkError> {
        self.sock.set_recv_timeout(timeout.max(Duration::from_millis(1)))?;
        let mut changed = false;
        let mut wait = true;
        loop {
            match self.sock.recv(&mut self.buf, wait) {
                Ok(n) => {
                    changed |= Messages(&self.buf[..n])
                        .filter_map(Result::ok)
                        .any(|m| matches!(m.ty, RTM_NEWLINK | RTM_DELLINK));
                }
                Err(Errno::ENOBUFS) => changed = true,
                Err(Errno::EAGAIN) => return Ok(changed),
                Err(e) => return Err(sock_err("recv")(e)),
            }
            wait = false;
        }
    }
}

/// `net.bridge.bridge-nf-call-iptables` and `-ip6tables` of one namespace: whether bridged
/// IPv4/IPv6 traffic passes the `inet` hooks. Per network namespace since Linux 5.3; the files
/// exist only when `br_netfilter` is loaded (a module a pod cannot load).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrNetfilter {
    /// `None`: no such sysctl (`br_netfilter` not loaded).
    pub iptables: Option<bool>,
    pub ip6tables: Option<bool>,
    /// Why turning one on failed, when it was asked for and failed (e.g. `/proc/sys` mounted
    /// read-only in an unprivileged container).
    pub error: Option<String>,
}

impl BrNetfilter {
    /// Both families' bridged traffic passes the `inet` hooks.
    pub fn on(&self) -> bool {
        self.iptables == Some(true) && self.ip6tables == Some(true)
    }
}

const BR_NF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Reads the `br_netfilter` switches of the namespace at `netns` (the caller's when `None`) and,
/// with `enable`, turns off ones on. A `/proc/sys/net` file shows the namespace of the thread
/// that opens it, so a short-lived thread enters the namespace to read and write them.
pub fn br_netfilter(netns: Option<&Path>, enable: bool) -> Result<BrNetfilter, LinkError> {
    let file = netns_file(netns)?;
    let work = || {
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim() != "0");
        let mut errors = Vec::new();
        let mut state = [read(BR_NF[0]), read(BR_NF[1])];
        for (i, path) in BR_NF.iter().enumerate() {
            if enable && state[i] == Some(false) {
                match std::fs::write(path, "1") {
                    Ok(()) => state[i] = read(path),
                    Err(e) => errors.push(format!("{path}: {e}")),
                }
            }
        }
        BrNetfilter {
            iptables: state[0],
            ip6tables: state[1],
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    };
    let Some(file) = file else {
        return Ok(work());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| LinkError::Netns {
                path: netns.map(Path::to_path_buf).unwrap_or_default(),
                source: io::Error::from(e),
            })?;
            Ok(work())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::testing::{attr, nest};

    fn ifinfo(index: i32, flags: u32) -> Vec<u8> {
        let mut v = vec![AF_UNSPEC, 0, 1, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    #[test]
    fn parses_a_bridge_port() {
        let mut p = ifinfo(7, IFF_UP);
        p.extend(attr(IFLA_IFNAME, b"veth1a2b3c4d\0"));
        p.extend(attr(IFLA_LINK, &2u32.to_ne_bytes()));
        p.extend(attr(IFLA_MASTER, &3u32.to_ne_bytes()));
        p.extend(nest(IFLA_LINKINFO, &[attr(IFLA_INFO_KIND, b"veth\0")]));
        p.extend(attr(IFLA_LINK_NETNSID, &4i32.to_ne_bytes()));
        assert_eq!(
            parse_link(&p).unwrap(),
            Link {
                index: 7,
                name: "veth1a2b3c4d".into(),
                kind: Some("veth".into()),
                master: Some(3),
                link: Some(2),
                link_netnsid: Some(4),
                up: true,
            }
        );
        assert!(parse_link(&p[..10]).is_err());
        let mut bad = ifinfo(7, 0);
        bad.extend(attr(IFLA_MASTER, &[1, 2]));
        assert!(
            parse_link(&bad).is_err(),
            "a short IFLA_MASTER is an error, not a panic"
        );
    }

    fn ifaddr(family: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![family, 24, 0, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend(attrs.concat());
        v
    }

    #[test]
    fn parses_addresses_and_skips_link_local() {
        let v4 = ifaddr(
            AF_INET,
            2,
            &[
                attr(IFA_ADDRESS, &[10, 244, 1, 9]),
                attr(IFA_LOCAL, &[10, 244, 1, 5]),
                attr(3, b"eth0\0"), // IFA_LABEL
            ],
        );
        assert_eq!(parse_addr(&v4, 2).unwrap(), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(parse_addr(&v4, 3).unwrap(), None, "another interface's");
        let ll4 = ifaddr(AF_INET, 2, &[attr(IFA_LOCAL, &[169, 254, 0, 1])]);
        assert_eq!(parse_addr(&ll4, 2).unwrap(), None);
        let g6: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let v6 = ifaddr(AF_INET6, 2, &[attr(IFA_ADDRESS, &g6.octets())]);
        assert_eq!(parse_addr(&v6, 2).unwrap(), Some(IpAddr::V6(g6)));
        let ll6: Ipv6Addr = "fe80::1".parse().unwrap();
        let v6 = ifaddr(AF_INET6, 2, &[attr(IFA_ADDRESS, &ll6.octets())]);
        assert_eq!(parse_addr(&v6, 2).unwrap(), None);
        let short = ifaddr(AF_INET6, 2, &[attr(IFA_ADDRESS, &[1, 2, 3, 4])]);
        assert!(parse_addr(&short, 2).is_err());
    }
}
