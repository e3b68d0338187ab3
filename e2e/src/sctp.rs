//! SCTP without an SCTP stack: this lab's probes are raw IP packets (protocol 132).
//!
//! ```text
//!  prober (source pod)                          recorder (destination pod)
//!  raw socket ── INIT(src port, dst port, tag) ──► raw socket: parse, record (src, dst port, tag)
//! ```
//!
//! An INIT is the first packet of every SCTP association, so it is what a NetworkPolicy has to
//! let through or stop. The packet is a valid one: common header (ports, verification tag 0, a
//! correct CRC32c checksum, as conntrack checks it) and one INIT chunk carrying a random
//! initiate tag that identifies the probe.

/// IANA protocol number of SCTP.
pub const PROTOCOL: i32 = 132;

/// Length of an INIT packet: 12 bytes of common header and a 20-byte INIT chunk.
pub const INIT_LEN: usize = 32;

const CHUNK_INIT: u8 = 1;

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), as RFC 9260 appendix A defines it.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut crc = !0u32;
    for b in data {
        crc = TABLE[((crc ^ *b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// An SCTP INIT packet (no IP header) from `src_port` to `dst_port`, identified by `tag`.
pub fn init_packet(src_port: u16, dst_port: u16, tag: u32) -> [u8; INIT_LEN] {
    let mut p = [0u8; INIT_LEN];
    p[0..2].copy_from_slice(&src_port.to_be_bytes());
    p[2..4].copy_from_slice(&dst_port.to_be_bytes());
    // Verification tag 0 (required for INIT); checksum filled in below.
    p[12] = CHUNK_INIT;
    p[13] = 0; // flags
    p[14..16].copy_from_slice(&20u16.to_be_bytes()); // chunk length
    p[16..20].copy_from_slice(&tag.to_be_bytes()); // initiate tag
    p[20..24].copy_from_slice(&65_535u32.to_be_bytes()); // advertised receiver window
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&tag.to_be_bytes()); // initial TSN
                                                   // The checksum is stored least significant byte first (RFC 9260 appendix A, as Linux does).
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// An INIT seen by a recorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init {
    pub src_port: u16,
    pub dst_port: u16,
    pub tag: u32,
}

/// Parses an SCTP packet (no IP header); `Some` for a well-formed INIT with a correct checksum.
pub fn parse_init(p: &[u8]) -> Option<Init> {
    if p.len() < INIT_LEN || p[12] != CHUNK_INIT {
        return None;
    }
    let mut copy = p.to_vec();
    copy[8..12].fill(0);
    if crc32c(&copy).to_le_bytes() != p[8..12] {
        return None;
    }
    Some(Init {
        src_port: u16::from_be_bytes([p[0], p[1]]),
        dst_port: u16::from_be_bytes([p[2], p[3]]),
        tag: u32::from_be_bytes([p[16], p[17], p[18], p[19]]),
    })
}

/// Strips the IPv4 header that raw IPv4 sockets deliver along with the payload.
pub fn strip_ipv4_header(p: &[u8]) -> Option<&[u8]> {
    let ihl = (*p.first()? & 0x0f) as usize * 4;
    (ihl >= 20 && p.len() >= ihl).then(|| &p[ihl..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn init_round_trip() {
        let p = init_packet(40000, 80, 0xdead_beef);
        let init = parse_init(&p).unwrap();
        assert_eq!(
            init,
            Init {
                src_port: 40000,
                dst_port: 80,
                tag: 0xdead_beef
            }
        );
        let mut bad = p;
        bad[20] ^= 1;
        assert_eq!(parse_init(&bad), None, "a corrupted packet fails the checksum");
        let mut ip = vec![0x45u8; 20];
        ip.extend_from_slice(&p);
        assert_eq!(strip_ipv4_header(&ip), Some(&p[..]));
    }
}
