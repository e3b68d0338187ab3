//! Chains of the model as nf_tables chains: each statement spelt out as the expressions nft
//! compiles it to.

use std::net::IpAddr;

use policyc_compiler::cidr::Family;
use policyc_compiler::model::Protocol;
use policyc_compiler::nft::{Action, Chain, CtStates, End, Iface, KeyType, Match, Rule, VmapKey};

use super::sets::{addr_bytes, anon_set, automerge, interval_elements, interval_size};
use super::udata::*;
use super::{addr_len, ChainSpec, CmpOp, DataplaneError, Elem, Expr, MetaKey, PayloadBase, RuleSpec, SetRef};

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

pub(super) fn chain(c: &Chain) -> Result<ChainSpec, DataplaneError> {
    Ok(ChainSpec {
        name: c.name.clone(),
        base: c.hook,
        rules: c.rules.iter().map(rule).collect::<Result<_, _>>()?,
    })
}

/// The expressions of one rule, in statement order: matches (with the dependencies nft adds),
/// counter, verdict or verdict-map lookup.
pub(super) fn rule(r: &Rule) -> Result<RuleSpec, DataplaneError> {
    let mut out = RuleSpec {
        exprs: Vec::new(),
        comment: r.comment.clone(),
        anon_set: None,
    };
    // nft adds `meta nfproto` once per rule, before the first network-header match.
    let mut nfproto_known = false;
    for m in &r.matches {
        lower_match(m, &mut out, &mut nfproto_known)?;
    }
    if r.counter {
        out.exprs.push(Expr::Counter);
    }
    match &r.action {
        Action::Verdict(v) => out.exprs.push(Expr::Verdict(v.clone())),
        Action::SetMarkBits(_) => return Err(DataplaneError::Unrepresentable(format!("{:?}", r.action))),
        Action::Vmap { key, map } => {
            match *key {
                VmapKey::Ifname(i) => out.exprs.push(Expr::Meta(iface_key(i))),
                VmapKey::Addr(f, end) => {
                    nfproto(&mut out.exprs, &mut nfproto_known, f);
                    out.exprs.push(addr_payload(f, end));
                }
                // `tcp dport`: nft adds the `meta l4proto tcp` dependency.
                VmapKey::Dport(p) => {
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

fn lower_match(m: &Match, out: &mut RuleSpec, nfproto_known: &mut bool) -> Result<(), DataplaneError> {
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
        Match::AddrInSet { family, end, set } => {
            nfproto(exprs, nfproto_known, *family);
            exprs.push(addr_payload(*family, *end));
            exprs.push(Expr::Lookup {
                set: SetRef::Named(set.clone()),
                verdict_map: false,
            });
        }
        Match::AddrIn { family, end, addrs } => {
            nfproto(exprs, nfproto_known, *family);
            exprs.push(addr_payload(*family, *end));
            if let [ip] = addrs[..] {
                // nft turns a one-element set into a comparison.
                exprs.push(Expr::Cmp {
                    op: CmpOp::Eq,
                    data: addr_bytes(&ip),
                });
            } else {
                let (desc, field) = match (family, end) {
                    (Family::V4, End::Source) => (PROTO_DESC_IP, IPHDR_SADDR),
                    (Family::V4, End::Destination) => (PROTO_DESC_IP, IPHDR_DADDR),
                    (Family::V6, End::Source) => (PROTO_DESC_IP6, IP6HDR_SADDR),
                    (Family::V6, End::Destination) => (PROTO_DESC_IP6, IP6HDR_DADDR),
                };
                let mut u = Udata::default();
                u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
                typeof_payload(&mut u, desc, field);
                let elements: Vec<Elem> = addrs.iter().map(|ip: &IpAddr| Elem::key(addr_bytes(ip))).collect();
                let size = elements.len() as u32;
                out.anon_set = Some(anon_set(KeyType::Addr(*family), false, u.into_bytes(), elements, size));
                exprs.push(Expr::Lookup {
                    set: SetRef::Anonymous,
                    verdict_map: false,
                });
            }
        }
        Match::L4Proto(p) => exprs.extend(l4proto_match(*p)),
        Match::Dport { protocol, ports } => {
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
                    out.anon_set = Some(anon_set(KeyType::InetService, interval, u.into_bytes(), elements, size));
                    exprs.push(Expr::Lookup {
                        set: SetRef::Anonymous,
                        verdict_map: false,
                    });
                }
            }
        }
        Match::Ifname(..)
        | Match::MarkClear(_)
        | Match::Icmpv6Types(_)
        | Match::AddrPrefix { .. }
        | Match::ArpSenderIn(_) => return Err(DataplaneError::Unrepresentable(format!("{m:?}"))),
        // `ip daddr . tcp dport @set`: address into register 1, port into the next 32-bit slot
        // after it.
        Match::AddrDportInSet { family, protocol, set } => {
            nfproto(exprs, nfproto_known, *family);
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

/// `meta nfproto ipv4|ipv6`: the dependency nft adds in an inet table, once per rule.
fn nfproto(exprs: &mut Vec<Expr>, known: &mut bool, f: Family) {
    if *known {
        return;
    }
    *known = true;
    exprs.push(Expr::Meta(MetaKey::NfProto));
    exprs.push(Expr::Cmp {
        op: CmpOp::Eq,
        data: vec![match f {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }],
    });
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

    #[test]
    fn registers() {
        assert_eq!(register(0), 1);
        assert_eq!(register(1), 9);
        assert_eq!(register(4), 2);
    }
}
