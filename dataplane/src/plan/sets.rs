//! Sets and maps of the model as nf_tables sets: flags, userdata and elements as key bytes.

use std::net::IpAddr;

use policyc_compiler::nft::{Element, Key, KeyType, Set, Verdict};

use super::udata::*;
use super::{DataplaneError, Elem, SetKey, SetSpec, IFNAMSIZ, NFT_SET_ANONYMOUS, NFT_SET_CONSTANT};
use super::{NFT_SET_ELEM_INTERVAL_END, NFT_SET_INTERVAL, NFT_SET_MAP};

/// Longest range of a non-interval set that is expanded into single elements.
const MAX_EXPANDED_RANGE: u128 = 1 << 16;

/// A named set or map, with all its elements.
pub(super) fn set(s: &Set) -> Result<SetSpec, DataplaneError> {
    let mut flags = 0;
    if s.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if s.verdict_map {
        flags |= NFT_SET_MAP;
    }
    Ok(SetSpec {
        name: s.name.clone(),
        flags,
        key: s.key.into(),
        verdict_map: s.verdict_map,
        size: None,
        udata: set_udata(s),
        elements: elements(s, &s.elements)?,
    })
}

/// The userdata nft writes for a named set or map: key byte order, `typeof` of a
/// concatenation, data byte order and interval of a verdict map, the comment.
fn set_udata(s: &Set) -> Vec<u8> {
    let mut u = Udata::default();
    match s.key {
        KeyType::Addr(_) | KeyType::InetService => u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN),
        KeyType::Ifname => u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_HOST_ENDIAN),
        // A concatenation has no single byte order; nft records 0 and a typeof of the concat.
        KeyType::AddrService(_) => u.put_u32(UDATA_SET_KEYBYTEORDER, 0).nest(UDATA_SET_KEY_TYPEOF, |n| {
            n.put_u32(UDATA_SET_TYPEOF_EXPR, EXPR_CONCAT);
            n.nest(UDATA_SET_TYPEOF_DATA, |_| {});
        }),
    };
    if s.verdict_map {
        u.put_u32(UDATA_SET_DATABYTEORDER, 0);
        u.put_u32(UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(c) = &s.comment {
        u.put_strz(UDATA_SET_COMMENT, c);
    }
    u.into_bytes()
}

/// The kernel elements of `elements` (all of `s`'s, or some of them for a set without
/// intervals), in their order.
pub(super) fn elements(s: &Set, elements: &[Element]) -> Result<Vec<Elem>, DataplaneError> {
    let width = super::key_len(s.key.into()) as usize;
    if s.interval {
        let ranges = elements
            .iter()
            .map(|e| {
                let (start, end) = match &e.key {
                    Key::Addr(r) => (r.start, r.end),
                    Key::Ports(a, b) => (u128::from(*a), u128::from(*b)),
                    other => return Err(unrepresentable(s, &format!("{other:?} in an interval set"))),
                };
                Ok((start, end, e.verdict.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(interval_map_elements(ranges, width));
    }
    let mut out = Vec::with_capacity(elements.len());
    for e in elements {
        let with_verdict = |key| Elem {
            verdict: e.verdict.clone(),
            ..Elem::key(key)
        };
        match &e.key {
            // A set without `flags interval` holds single addresses, so a range (adjacent pod
            // addresses merged by the compiler) stands for each of its addresses.
            Key::Addr(r) => {
                if r.end - r.start >= MAX_EXPANDED_RANGE {
                    return Err(unrepresentable(s, &format!("range {r} in a set without intervals")));
                }
                out.extend((r.start..=r.end).map(|v| with_verdict(be_bytes(v, width))));
            }
            Key::AddrPort(ip, port) => {
                let mut key = addr_bytes(ip);
                key.extend_from_slice(&port.to_be_bytes());
                key.extend_from_slice(&[0, 0]);
                out.push(with_verdict(key));
            }
            Key::Ifname(name) => out.push(with_verdict(ifname_key(name))),
            Key::Ports(a, b) => {
                out.extend((*a..=*b).map(|p| with_verdict(p.to_be_bytes().to_vec())));
            }
        }
    }
    Ok(out)
}

fn unrepresentable(s: &Set, what: &str) -> DataplaneError {
    DataplaneError::Unrepresentable(format!("set {}: {what}", s.name))
}

/// An anonymous constant set, as nft creates one for `{ a, b, ... }`.
pub(super) fn anon_set(key: SetKey, interval: bool, udata: Vec<u8>, elements: Vec<Elem>, size: u32) -> SetSpec {
    let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
    if interval {
        flags |= NFT_SET_INTERVAL;
    }
    SetSpec {
        name: "__set%d".into(),
        flags,
        key,
        verdict_map: false,
        size: Some(size),
        udata,
        elements,
    }
}

pub(super) fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn ifname_key(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.resize(IFNAMSIZ.max(key.len()), 0);
    key
}

/// The low `width` bytes of `v`, big-endian.
fn be_bytes(v: u128, width: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - width..].to_vec()
}

fn max_value(width: usize) -> u128 {
    if width >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * width)) - 1
    }
}

/// Interval elements for sorted, non-overlapping inclusive ranges, as nft 1.0.x sends them: a
/// closing element at 0 when the first range does not start there, then per range its start
/// and the element closing it at `end + 1`; a range running to the end of the key space has
/// no closing element and its start carries the "open interval" userdata flag.
pub(super) fn interval_elements(ranges: &[(u128, u128)], width: usize) -> Vec<Elem> {
    interval_map_elements(ranges.iter().map(|&(start, end)| (start, end, None)), width)
}

/// [`interval_elements`] of a map: each start element carries its range's verdict, closing
/// elements carry none. Adjacent ranges are not merged (their verdicts differ): the element
/// closing one range and the start of the next share a key, closing element first.
fn interval_map_elements(ranges: impl IntoIterator<Item = (u128, u128, Option<Verdict>)>, width: usize) -> Vec<Elem> {
    let max = max_value(width);
    let mut ranges = ranges.into_iter().peekable();
    let mut out = Vec::with_capacity(ranges.size_hint().0 * 2 + 1);
    if ranges.peek().is_some_and(|r| r.0 != 0) {
        out.push(Elem {
            flags: NFT_SET_ELEM_INTERVAL_END,
            ..Elem::key(be_bytes(0, width))
        });
    }
    for (start, end, verdict) in ranges {
        let mut e = Elem {
            verdict,
            ..Elem::key(be_bytes(start, width))
        };
        if end == max {
            let mut u = Udata::default();
            u.put_u32(UDATA_SET_ELEM_FLAGS, SET_ELEM_F_INTERVAL_OPEN);
            e.udata = u.into_bytes();
            out.push(e);
        } else {
            out.push(e);
            out.push(Elem {
                flags: NFT_SET_ELEM_INTERVAL_END,
                ..Elem::key(be_bytes(end + 1, width))
            });
        }
    }
    out
}

/// `NFTA_SET_DESC_SIZE` of an anonymous interval set: nft counts a start and an end per range
/// (even the end it then leaves out) plus the leading closing element.
pub(super) fn interval_size(ranges: &[(u128, u128)]) -> u32 {
    let leading = u32::from(ranges.first().is_some_and(|r| r.0 != 0));
    leading + 2 * ranges.len() as u32
}

/// Sorts and merges overlapping or adjacent ranges (nft's automerge of anonymous sets).
pub(super) fn automerge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            if r.0 <= last.1.saturating_add(1) {
                last.1 = last.1.max(r.1);
                continue;
            }
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_compiler::cidr::Family;

    fn hex(s: &[&str]) -> Vec<u8> {
        s.concat()
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect()
    }

    fn map(key: KeyType, interval: bool, comment: Option<&str>) -> Set {
        Set {
            name: "m".into(),
            key,
            verdict_map: true,
            interval,
            comment: comment.map(str::to_string),
            elements: Vec::new(),
        }
    }

    /// Userdata bytes captured from `nft --debug=mnl` (nftables 1.0.6).
    #[test]
    fn set_userdata_matches_nft() {
        let port_set = Set {
            name: "p".into(),
            key: KeyType::AddrService(Family::V4),
            verdict_map: false,
            interval: false,
            comment: None,
            elements: Vec::new(),
        };
        assert_eq!(
            set_udata(&port_set),
            [0x00, 0x04, 0, 0, 0, 0, 0x03, 0x08, 0x00, 0x04, 0x0d, 0, 0, 0, 0x01, 0x00]
        );

        // `tcp dport { 443, 9000-9010 }`
        let mut u = Udata::default();
        u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
        u.put_u32(UDATA_SET_MERGE_ELEMENTS, 1);
        typeof_payload(&mut u, PROTO_DESC_TCP, THDR_DPORT);
        let expect = hex(&[
            "00040200", "00000204", "01000000", "03140004", "07000000", "010c0004", "08000000", "01040200", "0000",
        ]);
        assert_eq!(u.into_bytes(), expect);
    }

    /// Set userdata of interval verdict maps, captured from `nft --debug=mnl` (nftables 1.0.6).
    #[test]
    fn verdict_map_userdata_matches_nft() {
        // `map p_tcp { type inet_service : verdict; flags interval; ... }`
        assert_eq!(
            set_udata(&map(KeyType::InetService, true, None)),
            hex(&["00040200", "00000104", "00000000", "06040000", "0000"])
        );
        // With `comment "Admin tier egress: peer address -> rule"`.
        let mut want = hex(&["00040200", "00000104", "00000000", "06040000", "00000728"]);
        want.extend_from_slice(b"Admin tier egress: peer address -> rule\0");
        let m = map(
            KeyType::Addr(Family::V4),
            true,
            Some("Admin tier egress: peer address -> rule"),
        );
        assert_eq!(set_udata(&m), want);
    }

    #[test]
    fn intervals_like_nft() {
        // tcp dport { 443, 9000-9010 }: leading end at 0, size 5.
        let r = [(443, 443), (9000, 9010)];
        let e = interval_elements(&r, 2);
        let keys: Vec<(Vec<u8>, u32)> = e.iter().map(|e| (e.key.clone(), e.flags)).collect();
        assert_eq!(
            keys,
            [
                (vec![0, 0], 1),
                (vec![0x01, 0xbb], 0),
                (vec![0x01, 0xbc], 1),
                (vec![0x23, 0x28], 0),
                (vec![0x23, 0x33], 1)
            ]
        );
        assert_eq!(interval_size(&r), 5);
        // { 0-5, 65535 }: no leading end, open last interval, size 4.
        let r = [(0, 5), (65535, 65535)];
        let e = interval_elements(&r, 2);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].udata, [1, 4, 1, 0, 0, 0]);
        assert_eq!(interval_size(&r), 4);
        assert_eq!(automerge(vec![(4, 9), (1, 3)]), [(1, 9)]);
    }

    /// `{ 10.0.1.10 : goto c1, 10.0.1.11 : goto c2, 10.1.0.5-10.1.0.9 : goto c1,
    /// 11.0.0.0/8 : goto c2, 200.0.0.0-255.255.255.255 : goto c1 }` as nft 1.0.6 sends it.
    #[test]
    fn interval_map_like_nft() {
        let ip = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()) as u128;
        let goto = |c: &str| Some(Verdict::Goto(c.into()));
        let ranges = [
            (ip("10.0.1.10"), ip("10.0.1.10"), goto("c1")),
            (ip("10.0.1.11"), ip("10.0.1.11"), goto("c2")),
            (ip("10.1.0.5"), ip("10.1.0.9"), goto("c1")),
            (ip("11.0.0.0"), ip("11.255.255.255"), goto("c2")),
            (ip("200.0.0.0"), ip("255.255.255.255"), goto("c1")),
        ];
        let got: Vec<(String, u32, Option<Verdict>, bool)> = interval_map_elements(ranges, 4)
            .into_iter()
            .map(|e| {
                let key: [u8; 4] = e.key.try_into().unwrap();
                (
                    std::net::Ipv4Addr::from(key).to_string(),
                    e.flags,
                    e.verdict,
                    !e.udata.is_empty(),
                )
            })
            .collect();
        let end = |k: &str| (k.to_string(), NFT_SET_ELEM_INTERVAL_END, None, false);
        let start = |k: &str, c: &str| (k.to_string(), 0, goto(c), false);
        assert_eq!(
            got,
            [
                end("0.0.0.0"),
                start("10.0.1.10", "c1"),
                // Adjacent ranges: the end of one and the start of the next share the key.
                end("10.0.1.11"),
                start("10.0.1.11", "c2"),
                end("10.0.1.12"),
                start("10.1.0.5", "c1"),
                end("10.1.0.10"),
                start("11.0.0.0", "c2"),
                end("12.0.0.0"),
                // Open interval: no end, userdata flag.
                ("200.0.0.0".to_string(), 0, goto("c1"), true),
            ]
        );

        // `{ 0-79 : goto c1, 80 : goto c2, 81-65535 : goto c1 }`: no leading end at 0.
        let ports = interval_map_elements([(0, 79, goto("c1")), (80, 80, goto("c2")), (81, 65535, goto("c1"))], 2);
        let keys: Vec<(Vec<u8>, u32)> = ports.iter().map(|e| (e.key.clone(), e.flags)).collect();
        assert_eq!(
            keys,
            [
                (vec![0, 0], 0),
                (vec![0, 80], 1),
                (vec![0, 80], 0),
                (vec![0, 81], 1),
                (vec![0, 81], 0)
            ]
        );
        assert_eq!(ports[4].udata, [1, 4, 1, 0, 0, 0]);
    }
}
