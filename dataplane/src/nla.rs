//! Netlink messages and attributes as bytes, for the clients that build and parse their
//! messages themselves ([`crate::ctnetlink`], [`crate::counters`], [`crate::links`],
//! [`crate::nflog`]): a message builder (header, `nfgenmsg` or another family header,
//! attributes, nests) and length-checked iterators over received messages and attributes.
//! Nothing here panics on what the kernel sends: a malformed message or attribute is an
//! `Err(String)` describing it.

// --- netlink (linux/netlink.h) ---
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLA_HDRLEN: usize = 4;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;

// --- nfnetlink (linux/netfilter/nfnetlink.h) ---
pub(crate) const NFGENMSG_LEN: usize = 4;
pub(crate) const NFNETLINK_V0: u8 = 0;

/// The netlink message type of nfnetlink message `msg` of subsystem `subsys`.
pub(crate) const fn nfnl_msg_type(subsys: u16, msg: u16) -> u16 {
    (subsys << 8) | msg
}

/// Builds one netlink message: header, `nfgenmsg`, attributes.
pub(crate) struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// A message of netlink type `ty` (see [`nfnl_msg_type`]) for address family `family`.
    pub(crate) fn new(ty: u16, flags: u16, seq: u32, family: u8) -> MsgBuilder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]); // res_id 0 (big-endian u16)
        MsgBuilder { buf }
    }

    /// A message of netlink type `ty` whose family header is `header` (e.g. rtnetlink's
    /// `ifinfomsg` or `ifaddrmsg`, already encoded) instead of an `nfgenmsg`.
    pub(crate) fn with_header(ty: u16, flags: u16, seq: u32, header: &[u8]) -> MsgBuilder {
        let mut buf = Vec::with_capacity(64 + header.len());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.extend_from_slice(header);
        let mut b = MsgBuilder { buf };
        b.pad();
        b
    }

    /// The `nfgenmsg`'s `res_id` (big-endian), for a message built by [`MsgBuilder::new`]:
    /// e.g. the nfnetlink_log group a config message is about.
    pub(crate) fn set_res_id(&mut self, id: u16) {
        self.buf[NLMSG_HDRLEN + 2..NLMSG_HDRLEN + 4].copy_from_slice(&id.to_be_bytes());
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + data.len()).expect("attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A string attribute, NUL-terminated as the kernel's `NLA_STRING` policies accept.
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    /// Starts a nested attribute; returns where its header is, for [`nest_end`](Self::nest_end).
    pub(crate) fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("attribute under 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// One netlink message of a received datagram.
#[derive(Debug)]
pub(crate) struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl NlMsg<'_> {
    /// The errno of an `NLMSG_ERROR` message, positive (0 for an acknowledgement).
    pub(crate) fn error(&self) -> Result<i32, String> {
        let err = self.payload.get(..4).ok_or("NLMSG_ERROR shorter than its error code")?;
        Ok(-i32::from_ne_bytes(err.try_into().expect("4 bytes")))
    }

    /// The errno an `NLMSG_DONE` reports (the dump callback's result), positive; 0 when the
    /// dump succeeded or the message carries no result.
    pub(crate) fn done_error(&self) -> i32 {
        match self.payload.get(..4) {
            Some(err) => (-i32::from_ne_bytes(err.try_into().expect("4 bytes"))).max(0),
            None => 0,
        }
    }
}

/// The messages of a datagram; stops at the first malformed one.
pub(crate) struct Messages<'a>(pub &'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Result<NlMsg<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.0;
        if buf.is_empty() {
            return None;
        }
        if buf.len() < NLMSG_HDRLEN {
            self.0 = &[];
            return Some(Err(format!("{} trailing bytes, less than a message header", buf.len())));
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.0 = &[];
            return Some(Err(format!("message length {len} with {} bytes left", buf.len())));
        }
        let msg = NlMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        self.0 = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(Ok(msg))
    }
}

/// The attributes of a buffer, type without the nested/byte-order flags.
pub(crate) struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.0;
        if buf.is_empty() {
            return None;
        }
        self.0 = &[];
        if buf.len() < NLA_HDRLEN {
            return Some(Err(format!(
                "{} trailing bytes, less than an attribute header",
                buf.len()
            )));
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            return Some(Err(format!(
                "attribute {ty} of length {len} with {} bytes left",
                buf.len()
            )));
        }
        self.0 = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(Ok((ty, &buf[NLA_HDRLEN..len])))
    }
}

pub(crate) fn fixed<const N: usize>(what: &str, data: &[u8]) -> Result<[u8; N], String> {
    data.try_into()
        .map_err(|_| format!("{what}: {} bytes, expected {N}", data.len()))
}

pub(crate) fn be16(what: &str, data: &[u8]) -> Result<u16, String> {
    fixed::<2>(what, data).map(u16::from_be_bytes)
}

pub(crate) fn be32(what: &str, data: &[u8]) -> Result<u32, String> {
    fixed::<4>(what, data).map(u32::from_be_bytes)
}

pub(crate) fn be64(what: &str, data: &[u8]) -> Result<u64, String> {
    fixed::<8>(what, data).map(u64::from_be_bytes)
}

/// A string attribute: the bytes up to the first NUL (all of them without one).
pub(crate) fn string(what: &str, data: &[u8]) -> Result<String, String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8(data[..end].to_vec()).map_err(|_| format!("{what}: not UTF-8"))
}

/// Building messages and attributes the way the kernel sends them, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::NLA_F_NESTED;

    pub(crate) fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    pub(crate) fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | NLA_F_NESTED, &parts.concat())
    }

    pub(crate) fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&4242u32.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }
}
