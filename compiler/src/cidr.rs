//! CIDRs and address intervals: enough arithmetic to turn `ipBlock { cidr, except }` into the
//! minimal sorted list of disjoint address ranges that an nftables interval set holds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Suffix used in set names: `v4` / `v6`.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// A network prefix with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX")]
    Syntax(String),
    #[error("invalid CIDR {0:?}: prefix length out of range")]
    Prefix(String),
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let family = Family::of(&addr);
        if prefix > family.bits() {
            return None;
        }
        let start = to_u128(addr) & mask(family, prefix);
        Some(Cidr {
            addr: from_u128(family, start),
            prefix,
        })
    }

    /// A single address as a /32 or /128.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: Family::of(&addr).bits(),
        }
    }

    /// Parses `a.b.c.d/n` or `x::y/n`. Returns the CIDR and whether host bits had to be cleared.
    pub fn parse_lenient(s: &str) -> Result<(Cidr, bool), CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| CidrError::Syntax(s.into()))?;
        let addr = IpAddr::from_str(addr).map_err(|_| CidrError::Syntax(s.into()))?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(CidrError::Syntax(s.into()));
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Prefix(s.into()))?;
        let cidr = Cidr::new(addr, prefix).ok_or_else(|| CidrError::Prefix(s.into()))?;
        Ok((cidr, cidr.addr != addr))
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    pub fn range(&self) -> IpRange {
        let f = self.family();
        let start = to_u128(self.addr);
        let end = start | !mask(f, self.prefix) & max(f);
        IpRange { family: f, start, end }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.range().contains(ip)
    }

    /// Whether `other` lies inside `self` and is smaller (a strict subset).
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        self.family() == other.family() && self.prefix < other.prefix && self.contains(&other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse_lenient(s).map(|(c, _)| c)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub family: Family,
    pub start: u128,
    pub end: u128,
}

impl IpRange {
    pub fn single(ip: IpAddr) -> IpRange {
        let v = to_u128(ip);
        IpRange {
            family: Family::of(&ip),
            start: v,
            end: v,
        }
    }

    pub fn first(&self) -> IpAddr {
        from_u128(self.family, self.start)
    }

    pub fn last(&self) -> IpAddr {
        from_u128(self.family, self.end)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&to_u128(*ip))
    }

    /// The CIDR this range is exactly equal to, if any.
    pub fn as_cidr(&self) -> Option<Cidr> {
        let size = self.end - self.start;
        if size == u128::MAX {
            return Cidr::new(self.first(), 0);
        }
        let n = size + 1;
        if !n.is_power_of_two() || self.start % n != 0 {
            return None;
        }
        let host_bits = n.trailing_zeros() as u8;
        Cidr::new(self.first(), self.family.bits() - host_bits)
    }
}

impl fmt::Display for IpRange {
    /// nftables element syntax: `a.b.c.d`, `a.b.c.0/24` or `a.b.c.d-e.f.g.h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.first())
        } else if let Some(c) = self.as_cidr() {
            write!(f, "{c}")
        } else {
            write!(f, "{}-{}", self.first(), self.last())
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `cidr` minus every `except`, as sorted disjoint ranges.
pub fn subtract(cidr: &Cidr, except: &[Cidr]) -> Vec<IpRange> {
    let mut out = vec![cidr.range()];
    for ex in except {
        let ex = ex.range();
        if ex.family != cidr.family() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len() + 1);
        for r in out {
            if ex.end < r.start || ex.start > r.end {
                next.push(r);
                continue;
            }
            if ex.start > r.start {
                next.push(IpRange { end: ex.start - 1, ..r });
            }
            if ex.end < r.end {
                next.push(IpRange { start: ex.end + 1, ..r });
            }
        }
        out = next;
    }
    out
}

/// Sorts and merges overlapping or adjacent ranges of the same family.
pub fn normalize(mut ranges: Vec<IpRange>) -> Vec<IpRange> {
    ranges.sort();
    let mut out: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            if last.family == r.family && r.start <= last.end.saturating_add(1) {
                last.end = last.end.max(r.end);
                continue;
            }
        }
        out.push(r);
    }
    out
}

fn max(f: Family) -> u128 {
    match f {
        Family::V4 => u32::MAX as u128,
        Family::V6 => u128::MAX,
    }
}

fn mask(f: Family, prefix: u8) -> u128 {
    let bits = f.bits();
    if prefix == 0 {
        0
    } else {
        (max(f) >> (bits - prefix)) << (bits - prefix) & max(f)
    }
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(f: Family, v: u128) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_normalize_host_bits() {
        let (cidr, fixed) = Cidr::parse_lenient("10.1.2.3/8").unwrap();
        assert_eq!(cidr.to_string(), "10.0.0.0/8");
        assert!(fixed);
        assert!(Cidr::parse_lenient("10.0.0.0/33").is_err());
        assert!(Cidr::parse_lenient("10.0.0/8").is_err());
        assert!(Cidr::parse_lenient("10.0.0.0").is_err());
        assert_eq!(c("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(c("0.0.0.0/0").range().end, u32::MAX as u128);
    }

    #[test]
    fn subtract_excepts() {
        let r = subtract(&c("10.0.0.0/24"), &[c("10.0.0.128/25"), c("10.0.0.0/30")]);
        let s: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(s, ["10.0.0.4-10.0.0.127"]);
        let r = subtract(&c("10.0.0.0/24"), &[c("10.0.0.7/32")]);
        let s: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(s, ["10.0.0.0-10.0.0.6", "10.0.0.8-10.0.0.255"]);
        let all6 = subtract(&c("::/0"), &[c("fd00::/8")]);
        assert_eq!(all6.len(), 2);
    }

    #[test]
    fn strict_subset() {
        assert!(c("10.0.0.0/8").strictly_contains(&c("10.1.0.0/16")));
        assert!(!c("10.0.0.0/8").strictly_contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").strictly_contains(&c("11.0.0.0/16")));
        assert!(!c("10.0.0.0/8").strictly_contains(&c("fd00::/16")));
    }

    #[test]
    fn merge_adjacent() {
        let r = normalize(vec![
            c("10.0.0.4/30").range(),
            c("10.0.0.0/30").range(),
            c("10.0.1.0/24").range(),
        ]);
        let s: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(s, ["10.0.0.0/29", "10.0.1.0/24"]);
    }
}
