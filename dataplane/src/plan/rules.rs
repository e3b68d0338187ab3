//! Chains of the model as nf_tables chains: each statement spelt out as the expressions nft
//! compiles it to.

use std::net::IpAddr;

use policyc_compiler::cidr::Family;
use policyc_compiler::model::Protocol;
use policyc_compiler::nft::{
    Action, Chain, CtStates, End, Iface, KeyType, Log, Match, Rule, TableFamily, VmapKey, MAX_LOG_PREFIX,
};

use super::sets::{addr_bytes, anon_set, automerge, ifname_key, interval_elements, interval_size};
use super::udata::*;
use super::{addr_len, ChainSpec, CmpOp, DataplaneError, Elem, Expr, MetaKey, PayloadBase, RuleSpec, SetKey, SetRef};

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Ethertypes (big-endian on the wire and in `meta protocol`).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;

pub(super) fn chain(family: TableFamily, c: &Chain) -> Result<ChainSpec, DataplaneError> {
    Ok(ChainSpec {
        name: c.name.clone(),
        base: c.hook,
        rules: c.rules.iter().map(|r| rule(family, r)).collect::<Result<_, _>>()?,
    })
}

/// The dependency state of one rule: nft adds the network protocol match (`meta nfproto` in an
/// inet table; `meta protocol` or `ether type` in a bridge table) once per rule, before the
/// first match that needs it.
struct Deps {
    family: TableFamily,
    network_known: bool,
}

/// The network layer protocol a match needs.
#[derive(Clone, Copy)]
enum Net {
    Ip(Family),
    Arp,
}

impl Deps {
    /// The dependency of a network-header match (`ip saddr`, `arp saddr ip`): `meta nfproto`
    /// in inet; in bridge `meta protocol` for IP, `ether type` for ARP (nft 1.0.6).
    fn network(&mut self, exprs: &mut Vec<Expr>, net: Net) -> Result<(), DataplaneError> {
        if self.network_known {
            return Ok(());
        }
        self.network_known = true;
        match (self.family, net) {
            (TableFamily::Inet, Net::Ip(f)) => {
                exprs.push(Expr::Meta(MetaKey::NfProto));
                exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: vec![nfproto_of(f)],
                });
            }
            (TableFamily::Bridge, Net::Ip(f)) => {
                exprs.push(Expr::Meta(MetaKey::Protocol));
                exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: ethertype_of(f).to_be_bytes().to_vec(),
                });
            }
            (TableFamily::Bridge, Net::Arp) => exprs.extend(ether_type(ETH_P_ARP)),
            (TableFamily::Inet, Net::Arp) => {
                return Err(DataplaneError::Unrepresentable("an ARP match in an inet table".into()))
            }
        }
        Ok(())
    }

    /// The dependency of `icmpv6 type`: `meta nfproto ipv6` in inet, `ether type ip6` in
    /// bridge (not `meta protocol`: nft 1.0.6 derives it from the transport header's
    /// protocol), then `meta l4proto ipv6-icmp`.
    fn icmpv6(&mut self, exprs: &mut Vec<Expr>) {
        if !self.network_known {
            self.network_known = true;
            match self.family {
                TableFamily::Inet => {
                    exprs.push(Expr::Meta(MetaKey::NfProto));
                    exprs.push(Expr::Cmp {
                        op: CmpOp::Eq,
                        data: vec![NFPROTO_IPV6],
                    });
                }
                TableFamily::Bridge => exprs.extend(ether_type(ETH_P_IPV6)),
            }
        }
        exprs.push(Expr::Meta(MetaKey::L4Proto));
        exprs.push(Expr::Cmp {
            op: CmpOp::Eq,
            data: vec![IPPROTO_ICMPV6],
        });
    }

    /// Statements verified only in inet tables (`tcp dport`, concatenations with ports).
    fn inet_only(&self, what: &str) -> Result<(), DataplaneError> {
        match self.family {
            TableFamily::Inet => Ok(()),
            TableFamily::Bridge => Err(DataplaneError::Unrepresentable(format!("{what} in a bridge table"))),
        }
    }
}

fn nfproto_of(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn ethertype_of(f: Family) -> u16 {
    match f {
        Family::V4 => ETH_P_IP,
        Family::V6 => ETH_P_IPV6,
    }
}

/// `ether type TYPE`: two bytes at offset 12 of the link layer header.
fn ether_type(t: u16) -> [Expr; 2] {
    [
        Expr::Payload {
            base: PayloadBase::Link,
            offset: 12,
            len: 2,
            dreg: 1,
        },
        Expr::Cmp {
            op: CmpOp::Eq,
            data: t.to_be_bytes().to_vec(),
        },
    ]
}

/// The expressions of one rule, in statement order: matches (with the dependencies nft adds),
/// counter, verdict or verdict-map lookup.
pub(super) fn rule(family: TableFamily, r: &Rule) -> Result<RuleSpec, DataplaneError> {
    let mut out = RuleSpec {
        exprs: Vec::new(),
        comment: r.comment.clone(),
        anon_set: None,
    };
    let mut deps = Deps {
        family,
        network_known: false,
    };
    for m in &r.matches {
        lower_match(m, &mut out, &mut deps)?;
    }
    if r.counter {
        out.exprs.push(Expr::Counter);
    }
    if let Some(log) = &r.log {
        lower_log(log, &mut out.exprs)?;
    }
    match &r.action {
        Action::Verdict(v) => out.exprs.push(Expr::Verdict(v.clone())),
        Action::Continue => {}
        // `meta mark set meta mark | BITS`: load, `( mark & ~BITS ) ^ BITS`, store.
        Action::SetMarkBits(bits) => {
            out.exprs.push(Expr::Meta(MetaKey::Mark));
            out.exprs.push(Expr::Bitwise {
                mask: (!bits).to_ne_bytes().to_vec(),
                xor: bits.to_ne_bytes().to_vec(),
            });
            out.exprs.push(Expr::MetaSetMark);
        }
        Action::Vmap { key, map } => {
            match *key {
                VmapKey::Ifname(i) => out.exprs.push(Expr::Meta(iface_key(i))),
                VmapKey::Addr(f, end) => {
                    deps.network(&mut out.exprs, Net::Ip(f))?;
                    out.exprs.push(addr_payload(f, end));
                }
                // `tcp dport`: nft adds the `meta l4proto tcp` dependency.
                VmapKey::Dport(p) => {
                    deps.inet_only("a port verdict map")?;
                    out.exprs.extend(l4proto_match(p));
                    out.exprs.push(dport_payload(1));
                }
            }
            out.exprs.push(Expr::Lookup {
                set: SetRef::Named(map.clone()),
                verdict_map: true,
            });
        }
    }
    Ok(out)
}

/// `limit ...` (nft sends the burst it defaults to) and `log ...`, checked against what nft
/// itself refuses.
fn lower_log(log: &Log, exprs: &mut Vec<Expr>) -> Result<(), DataplaneError> {
    if let Some(l) = &log.limit {
        if l.rate == 0 || l.burst == 0 {
            return Err(DataplaneError::Unrepresentable(format!(
                "{l:?}: rate and burst must be > 0"
            )));
        }
        exprs.push(Expr::Limit {
            rate: l.rate,
            unit: l.unit.seconds(),
            burst: l.burst,
        });
    }
    if let Some(p) = &log.prefix {
        if p.len() > MAX_LOG_PREFIX || p.contains(['"', '\0']) {
            return Err(DataplaneError::Unrepresentable(format!("log prefix {p:?}")));
        }
    }
    exprs.push(Expr::Log {
        prefix: log.prefix.clone(),
        group: log.group,
        snaplen: log.snaplen,
        // A zero threshold is printed as none (`nft list` shows none), so nft sends none.
        queue_threshold: log.queue_threshold.filter(|q| *q > 0),
    });
    Ok(())
}

/// `typeof` userdata and a one-byte-order key of an anonymous set nft builds for `{ ... }`.
fn anon_udata(desc: u32, field: u32) -> Vec<u8> {
    let mut u = Udata::default();
    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
    typeof_payload(&mut u, desc, field);
    u.into_bytes()
}

/// `== KEY` for one key, a lookup in an anonymous set of the keys for more: nft turns a
/// one-element set into a comparison.
fn eq_or_anon_set(out: &mut RuleSpec, key: SetKey, keys: Vec<Vec<u8>>, udata: impl FnOnce() -> Vec<u8>) {
    if let [one] = &keys[..] {
        out.exprs.push(Expr::Cmp {
            op: CmpOp::Eq,
            data: one.clone(),
        });
        return;
    }
    let elements: Vec<Elem> = keys.into_iter().map(Elem::key).collect();
    let size = elements.len() as u32;
    out.anon_set = Some(anon_set(key, false, udata(), elements, size));
    out.exprs.push(Expr::Lookup {
        set: SetRef::Anonymous,
        verdict_map: false,
    });
}

fn lower_match(m: &Match, out: &mut RuleSpec, deps: &mut Deps) -> Result<(), DataplaneError> {
    let exprs = &mut out.exprs;
    match m {
        Match::CtMarkAll(bits) => {
            exprs.push(Expr::CtMark);
            exprs.push(Expr::Bitwise {
                mask: bits.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            });
            exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: bits.to_ne_bytes().to_vec(),
            });
        }
        Match::CtState(CtStates(bits)) => {
            exprs.push(Expr::CtState);
            exprs.push(Expr::Bitwise {
                mask: bits.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            });
            exprs.push(Expr::Cmp {
                op: CmpOp::Neq,
                data: 0u32.to_ne_bytes().to_vec(),
            });
        }
        // `iifname "cali*"`: a prefix comparison of the name's bytes, without the NUL.
        Match::IfnamePrefix(i, prefix) => {
            exprs.push(Expr::Meta(iface_key(*i)));
            exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: prefix.as_bytes().to_vec(),
            });
        }
        // `iifname "cni0"`: the whole 16-byte, NUL-padded name.
        Match::Ifname(i, name) => {
            exprs.push(Expr::Meta(iface_key(*i)));
            exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: ifname_key(name),
            });
        }
        // `meta mark & BITS == 0x00000000`
        Match::MarkClear(bits) => {
            exprs.push(Expr::Meta(MetaKey::Mark));
            exprs.push(Expr::Bitwise {
                mask: bits.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            });
            exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: 0u32.to_ne_bytes().to_vec(),
            });
        }
        // `icmpv6 type { ... }`: the type is the transport header's first byte.
        Match::Icmpv6Types(types) => {
            deps.icmpv6(exprs);
            exprs.push(Expr::Payload {
                base: PayloadBase::Transport,
                offset: 0,
                len: 1,
                dreg: 1,
            });
            let keys = types.iter().map(|t| vec![*t]).collect();
            eq_or_anon_set(out, SetKey::Icmpv6Type, keys, || {
                anon_udata(PROTO_DESC_ICMPV6, ICMP6HDR_TYPE)
            });
        }
        Match::AddrPrefix { family, end, net, len } => {
            let width = addr_len(*family);
            let len = usize::from(*len);
            if len == 0 || len > 8 * width || Family::of(net) != *family {
                return Err(DataplaneError::Unrepresentable(format!("{m:?}")));
            }
            deps.network(exprs, Net::Ip(*family))?;
            let addr = addr_bytes(net);
            let Expr::Payload { base, offset, dreg, .. } = addr_payload(*family, *end) else {
                unreachable!("addr_payload is a payload load")
            };
            if len % 8 == 0 {
                // A whole-byte prefix: nft loads just those bytes and compares them.
                exprs.push(Expr::Payload {
                    base,
                    offset,
                    len: (len / 8) as u32,
                    dreg,
                });
                exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: addr[..len / 8].to_vec(),
                });
            } else {
                // Otherwise the whole address, masked.
                let mask: Vec<u8> = (0..width)
                    .map(|i| {
                        let bits = len.saturating_sub(8 * i).min(8);
                        (0xffu16 << (8 - bits)) as u8
                    })
                    .collect();
                let masked = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
                exprs.push(addr_payload(*family, *end));
                exprs.push(Expr::Bitwise {
                    mask,
                    xor: vec![0; width],
                });
                exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: masked,
                });
            }
        }
        // `arp saddr ip { ... }`: the sender protocol address, 14 bytes into the ARP header.
        Match::ArpSenderIn(addrs) => {
            deps.network(exprs, Net::Arp)?;
            exprs.push(Expr::Payload {
                base: PayloadBase::Network,
                offset: 14,
                len: 4,
                dreg: 1,
            });
            let keys = addrs.iter().map(|a| a.octets().to_vec()).collect();
            eq_or_anon_set(out, KeyType::Addr(Family::V4).into(), keys, || {
                anon_udata(PROTO_DESC_ARP, ARPHDR_SADDR_IP)
            });
        }
        Match::AddrInSet { family, end, set } => {
            deps.network(exprs, Net::Ip(*family))?;
            exprs.push(addr_payload(*family, *end));
            exprs.push(Expr::Lookup {
                set: SetRef::Named(set.clone()),
                verdict_map: false,
            });
        }
        Match::AddrIn { family, end, addrs } => {
            deps.network(exprs, Net::Ip(*family))?;
            exprs.push(addr_payload(*family, *end));
            let (desc, field) = match (family, end) {
                (Family::V4, End::Source) => (PROTO_DESC_IP, IPHDR_SADDR),
                (Family::V4, End::Destination) => (PROTO_DESC_IP, IPHDR_DADDR),
                (Family::V6, End::Source) => (PROTO_DESC_IP6, IP6HDR_SADDR),
                (Family::V6, End::Destination) => (PROTO_DESC_IP6, IP6HDR_DADDR),
            };
            let keys = addrs.iter().map(|ip: &IpAddr| addr_bytes(ip)).collect();
            eq_or_anon_set(out, KeyType::Addr(*family).into(), keys, || anon_udata(desc, field));
        }
        Match::L4Proto(p) => exprs.extend(l4proto_match(*p)),
        Match::Dport { protocol, ports } => {
            deps.inet_only("a port match")?;
            exprs.extend(l4proto_match(*protocol));
            exprs.push(dport_payload(1));
            match ports[..] {
                [(first, last)] if first == last => exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: first.to_be_bytes().to_vec(),
                }),
                [(first, last)] => {
                    exprs.push(Expr::Cmp {
                        op: CmpOp::Gte,
                        data: first.to_be_bytes().to_vec(),
                    });
                    exprs.push(Expr::Cmp {
                        op: CmpOp::Lte,
                        data: last.to_be_bytes().to_vec(),
                    });
                }
                _ => {
                    let interval = ports.iter().any(|(a, b)| a != b);
                    let mut u = Udata::default();
                    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
                    let (elements, size) = if interval {
                        u.put_u32(UDATA_SET_MERGE_ELEMENTS, 1);
                        let ranges = automerge(ports.iter().map(|&(a, b)| (a as u128, b as u128)).collect());
                        (interval_elements(&ranges, 2), interval_size(&ranges))
                    } else {
                        let e: Vec<Elem> = ports.iter().map(|(a, _)| Elem::key(a.to_be_bytes().to_vec())).collect();
                        let n = e.len() as u32;
                        (e, n)
                    };
                    typeof_payload(&mut u, proto_desc(*protocol), THDR_DPORT);
                    out.anon_set = Some(anon_set(
                        KeyType::InetService.into(),
                        interval,
                        u.into_bytes(),
                        elements,
                        size,
                    ));
                    exprs.push(Expr::Lookup {
                        set: SetRef::Anonymous,
                        verdict_map: false,
                    });
                }
            }
        }
        // `ip daddr . tcp dport @set`: address into register 1, port into the next 32-bit slot
        // after it.
        Match::AddrDportInSet { family, protocol, set } => {
            deps.inet_only("an address and port concatenation")?;
            deps.network(exprs, Net::Ip(*family))?;
            exprs.extend(l4proto_match(*protocol));
            exprs.push(addr_payload(*family, End::Destination));
            exprs.push(dport_payload(register(addr_len(*family) as u32 / 4)));
            exprs.push(Expr::Lookup {
                set: SetRef::Named(set.clone()),
                verdict_map: false,
            });
        }
    }
    Ok(())
}

fn iface_key(i: Iface) -> MetaKey {
    match i {
        Iface::In => MetaKey::IifName,
        Iface::Out => MetaKey::OifName,
    }
}

/// `meta l4proto PROTO`.
fn l4proto_match(p: Protocol) -> [Expr; 2] {
    [
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp {
            op: CmpOp::Eq,
            data: vec![p.number()],
        },
    ]
}

/// `ip saddr` / `ip6 daddr` ... loaded into register 1.
fn addr_payload(f: Family, end: End) -> Expr {
    let offset = match (f, end) {
        (Family::V4, End::Source) => 12,
        (Family::V4, End::Destination) => 16,
        (Family::V6, End::Source) => 8,
        (Family::V6, End::Destination) => 24,
    };
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: addr_len(f) as u32,
        dreg: 1,
    }
}

/// `th dport` (tcp, udp and sctp all keep it at offset 2) into the given register.
fn dport_payload(dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg,
    }
}

/// The register nft names for the 32-bit slot `slot` (0-based) of the register file: 128-bit
/// aligned slots keep their legacy `NFT_REG_1..4` number, the others `NFT_REG32_xx`.
fn register(slot: u32) -> u32 {
    if slot % 4 == 0 {
        1 + slot / 4
    } else {
        8 + slot
    }
}

fn proto_desc(p: Protocol) -> u32 {
    match p {
        Protocol::Tcp => PROTO_DESC_TCP,
        Protocol::Udp => PROTO_DESC_UDP,
        Protocol::Sctp => PROTO_DESC_SCTP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(net: &str, len: u8) -> Vec<Expr> {
        let net: IpAddr = net.parse().unwrap();
        let m = Match::AddrPrefix {
            family: Family::of(&net),
            end: End::Source,
            net,
            len,
        };
        let r = Rule {
            matches: vec![m],
            counter: false,
            log: None,
            action: Action::Verdict(policyc_compiler::nft::Verdict::Accept),
            comment: None,
        };
        let mut e = rule(TableFamily::Inet, &r).unwrap().exprs;
        e.drain(..2); // meta nfproto
        e.pop(); // accept
        e
    }

    /// As `nft --debug=netlink` (1.0.6) shows them: whole-byte prefixes load just their bytes,
    /// others load the address and mask it.
    #[test]
    fn address_prefixes_like_nft() {
        let load = |offset, len| Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len,
            dreg: 1,
        };
        let eq = |data: &[u8]| Expr::Cmp {
            op: CmpOp::Eq,
            data: data.to_vec(),
        };
        // ip saddr 10.0.0.0/8
        assert_eq!(prefix("10.0.0.0", 8), [load(12, 1), eq(&[10])]);
        // ip6 saddr fe80::/16, fe80::/64
        assert_eq!(prefix("fe80::", 16), [load(8, 2), eq(&[0xfe, 0x80])]);
        assert_eq!(prefix("fe80::", 64), [load(8, 8), eq(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0])]);
        // ip saddr 10.0.0.0/9: ( reg 1 & 0xff800000 ) ^ 0
        assert_eq!(
            prefix("10.0.0.0", 9),
            [
                load(12, 4),
                Expr::Bitwise {
                    mask: vec![0xff, 0x80, 0, 0],
                    xor: vec![0; 4]
                },
                eq(&[10, 0, 0, 0])
            ]
        );
        // ip6 saddr fe80::/10
        let mut mask = vec![0u8; 16];
        mask[..2].copy_from_slice(&[0xff, 0xc0]);
        let mut net = vec![0u8; 16];
        net[..2].copy_from_slice(&[0xfe, 0x80]);
        assert_eq!(
            prefix("fe80::", 10),
            [load(8, 16), Expr::Bitwise { mask, xor: vec![0; 16] }, eq(&net)]
        );
    }

    /// As `nft --debug=netlink` (1.0.6) shows `counter limit rate 100/second log prefix "pc:42"
    /// group 1`: after the counter, the limit (unit in seconds, default burst sent), then the
    /// log; a log-only rule ends without a verdict.
    #[test]
    fn log_after_counter_without_verdict() {
        use policyc_compiler::nft::{Limit, RateUnit};
        let r = Rule {
            counter: true,
            ..Rule::log_only(
                Vec::new(),
                Log {
                    queue_threshold: Some(0),
                    ..Log::group(1, "pc:42").with_limit(Limit {
                        rate: 100,
                        unit: RateUnit::Hour,
                        burst: 5,
                    })
                },
                None,
            )
        };
        assert_eq!(
            rule(TableFamily::Inet, &r).unwrap().exprs,
            [
                Expr::Counter,
                Expr::Limit {
                    rate: 100,
                    unit: 3600,
                    burst: 5
                },
                Expr::Log {
                    prefix: Some("pc:42".into()),
                    group: 1,
                    snaplen: None,
                    // Printed as none, so none is sent.
                    queue_threshold: None,
                },
            ]
        );
    }

    #[test]
    fn registers() {
        assert_eq!(register(0), 1);
        assert_eq!(register(1), 9);
        assert_eq!(register(4), 2);
    }
}
