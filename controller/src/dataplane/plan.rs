//! The ruleset `render::nft::render(ir, true)` describes, as the nf_tables objects `nft -f`
//! creates for it, in the order it creates them.
//!
//! Pure data, no I/O: [`Ruleset::from_ir`] mirrors the renderer statement by statement and
//! lowers every statement the way nft 1.0.x lowers it (dependency matches such as
//! `meta nfproto ipv4` before `ip saddr`, `cmp gte` + `cmp lte` for a port range, an anonymous
//! set for `{ a, b }`), so that the kernel ends up holding the same objects whichever of the
//! two loaded them. The encodings were taken from `nft --debug=netlink,mnl -f` on rendered
//! rulesets; `nft list` output and `nft --debug=netlink list` (expressions, registers,
//! element flags, userdata, handles) are compared in `tests/netlink.rs`.
//!
//! Creation order matters: handles, the kernel's `__setN` names of anonymous sets and the
//! listing order all follow it. nft creates the table, then every chain (declaration order),
//! then every named set and map, each followed by its elements, then the rules, each rule
//! preceded by its anonymous set if it has one.
//!
//! Admin tiers add interval verdict maps (`adm_*`/`bl_*` by peer address, `pc_*` by port) whose
//! elements nft sends as for an interval set, with the verdict (`goto ar_*` / `goto pc_*`) on
//! each start element: adjacent ranges give the closing element of one range and the start of
//! the next at the same key, and a range running to the end of the key space has no closing
//! element but the "open interval" userdata flag on its start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use policyc_compiler::cidr::{Family, IpRange};
use policyc_compiler::ir::{
    AddrSet, AdminRuleIr, Endpoint, Ir, PeerMatch, PolicyChain, PortClass, PortMatch, PortRange, PortSet, SetKind,
    TierTable,
};
use policyc_compiler::model::{AdminAction, Direction, ObjectRef, Protocol};
use policyc_compiler::render::nft;

use super::DataplaneError;

// nf_tables constants (linux/netfilter/nf_tables.h, linux/netfilter.h).
pub(crate) const NFPROTO_INET: u16 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
pub(crate) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(crate) const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// `NFT_DATA_VERDICT`: the data type of a verdict map.
pub(crate) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// `NF_IP_PRI_FILTER`, nft's `priority filter`.
const PRIORITY_FILTER: i32 = 0;
/// `IFNAMSIZ`: interface names are 16-byte NUL-padded keys.
const IFNAMSIZ: usize = 16;
/// Longest range of a non-interval set that is expanded into single elements.
const MAX_EXPANDED_RANGE: u128 = 1 << 16;

/// The whole table, as one replace batch creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ruleset {
    /// Every chain in declaration order, with its rules.
    pub chains: Vec<ChainSpec>,
    /// Named sets and maps in declaration order.
    pub sets: Vec<SetSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainSpec {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<RuleSpec>,
}

/// Hook of a base chain: `type filter hook HOOK priority PRIORITY; policy accept;`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BaseChain {
    pub hook: BaseHook,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BaseHook {
    Forward,
    Input,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuleSpec {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
    /// The anonymous set `SetRef::Anonymous` refers to, created just before the rule.
    pub anon_set: Option<SetSpec>,
}

/// One nf_tables expression, as nft emits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `meta load KEY => reg 1`
    Meta(MetaKey),
    /// `ct load state => reg 1`
    CtState,
    /// `ct load mark => reg 1`
    CtMark,
    /// `bitwise reg 1 = ( reg 1 & MASK ) ^ XOR`
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    /// `cmp OP reg 1 DATA`
    Cmp { op: CmpOp, data: Vec<u8> },
    /// `payload load LEN @ BASE + OFFSET => reg DREG`
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `lookup reg 1 set SET`, or with `dreg 0` (the verdict register) for a verdict map.
    Lookup { set: SetRef, verdict_map: bool },
    /// `counter`
    Counter,
    /// `immediate reg 0 VERDICT`
    Verdict(Verdict),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaKey {
    NfProto,
    L4Proto,
    IifName,
    OifName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Neq,
    Gte,
    Lte,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadBase {
    Network,
    Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SetRef {
    Named(String),
    /// The rule's own anonymous set (`RuleSpec::anon_set`).
    Anonymous,
}

/// A verdict, of a rule (`immediate reg 0`) or as the data of a verdict-map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// A named set, a map or an anonymous set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetSpec {
    /// `__set%d` for an anonymous set: the kernel picks the number.
    pub name: String,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    pub key: KeyType,
    /// Verdict map: `type KEY : verdict`.
    pub verdict_map: bool,
    /// `NFTA_SET_DESC_SIZE`, which nft sets on anonymous sets only.
    pub size: Option<u32>,
    /// `NFTA_SET_USERDATA`: key byte order, typeof information and comment, as nft writes them.
    pub udata: Vec<u8>,
    /// In the order nft sends them.
    pub elements: Vec<Elem>,
}

/// Data type of a set key (nftables `datatype.h` ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyType {
    Addr(Family),
    InetService,
    Ifname,
    /// `ipv4_addr . inet_service` / `ipv6_addr . inet_service`.
    AddrService(Family),
}

const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
/// nft's `concat_subtype_add`: each component shifts the id left by `TYPE_BITS`.
const TYPE_BITS: u32 = 6;

impl KeyType {
    pub fn type_id(self) -> u32 {
        match self {
            KeyType::Addr(f) => addr_type_id(f),
            KeyType::InetService => TYPE_INET_SERVICE,
            KeyType::Ifname => TYPE_IFNAME,
            KeyType::AddrService(f) => (addr_type_id(f) << TYPE_BITS) | TYPE_INET_SERVICE,
        }
    }

    /// Key length in bytes; each concatenation component takes a multiple of 4 bytes.
    pub fn len(self) -> u32 {
        match self {
            KeyType::Addr(f) => addr_len(f) as u32,
            KeyType::InetService => 2,
            KeyType::Ifname => IFNAMSIZ as u32,
            KeyType::AddrService(f) => addr_len(f) as u32 + 4,
        }
    }
}

fn addr_type_id(f: Family) -> u32 {
    match f {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    }
}

fn addr_len(f: Family) -> usize {
    match f {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

/// One set element as sent to the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Elem {
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END` for the element closing an interval.
    pub flags: u32,
    /// `NFTA_SET_ELEM_USERDATA`: nft marks an interval that runs to the end of the key space.
    pub udata: Vec<u8>,
    /// Verdict-map data (`NFTA_SET_ELEM_DATA`), on every element of a verdict map except the
    /// ones closing an interval.
    pub verdict: Option<Verdict>,
}

impl Elem {
    fn key(key: Vec<u8>) -> Elem {
        Elem {
            key,
            flags: 0,
            udata: Vec::new(),
            verdict: None,
        }
    }
}

// === userdata (libnftnl udata.h TLVs: u8 type, u8 length, value; integers in host order) ===

const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_MERGE_ELEMENTS: u8 = 2;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
const UDATA_SET_TYPEOF_EXPR: u8 = 0;
const UDATA_SET_TYPEOF_DATA: u8 = 1;
const UDATA_SET_ELEM_FLAGS: u8 = 1;
/// `NFTNL_SET_ELEM_F_INTERVAL_OPEN`
const SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
/// nftables `enum byteorder`.
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// nftables `enum expr_types`: EXPR_PAYLOAD, EXPR_CONCAT.
const EXPR_PAYLOAD: u32 = 7;
const EXPR_CONCAT: u32 = 13;
/// nftables `enum proto_desc_id`.
const PROTO_DESC_UDP: u32 = 6;
const PROTO_DESC_TCP: u32 = 8;
const PROTO_DESC_SCTP: u32 = 10;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;
/// Header field indexes in nft's protocol templates.
const IPHDR_SADDR: u32 = 11;
const IPHDR_DADDR: u32 = 12;
const IP6HDR_SADDR: u32 = 8;
const IP6HDR_DADDR: u32 = 9;
const THDR_DPORT: u32 = 2;

/// A userdata buffer being built.
#[derive(Default)]
pub(crate) struct Udata(Vec<u8>);

impl Udata {
    fn put(&mut self, ty: u8, value: &[u8]) -> &mut Self {
        let len = u8::try_from(value.len()).expect("userdata attribute longer than 255 bytes");
        self.0.push(ty);
        self.0.push(len);
        self.0.extend_from_slice(value);
        self
    }

    fn put_u32(&mut self, ty: u8, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    fn put_strz(&mut self, ty: u8, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }

    fn nest(&mut self, ty: u8, f: impl FnOnce(&mut Udata)) -> &mut Self {
        let mut inner = Udata::default();
        f(&mut inner);
        self.put(ty, &inner.0)
    }

    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// `typeof PAYLOAD`: the expression nft records so that it can print anonymous sets back.
fn typeof_payload(u: &mut Udata, desc: u32, field: u32) {
    u.nest(UDATA_SET_KEY_TYPEOF, |n| {
        n.put_u32(UDATA_SET_TYPEOF_EXPR, EXPR_PAYLOAD);
        n.nest(UDATA_SET_TYPEOF_DATA, |d| {
            d.put_u32(0, desc);
            d.put_u32(1, field);
        });
    });
}

// === building ===

/// The comment text nft stores for `comment "..."` as the renderer writes it.
fn comment(s: &str) -> String {
    let quoted = nft::comment(s);
    quoted[1..quoted.len() - 1].to_string()
}

fn set_name(base: &str, f: Family) -> String {
    format!("{base}_{}", f.suffix())
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
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
fn interval_elements(ranges: &[(u128, u128)], width: usize) -> Vec<Elem> {
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
fn interval_size(ranges: &[(u128, u128)]) -> u32 {
    let leading = u32::from(ranges.first().is_some_and(|r| r.0 != 0));
    leading + 2 * ranges.len() as u32
}

/// Sorts and merges overlapping or adjacent ranges (nft's automerge of anonymous sets).
fn automerge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
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

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// `meta nfproto ipv4|ipv6`: the dependency nft adds in an inet table.
fn nfproto_match(f: Family) -> [Expr; 2] {
    [
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp {
            op: CmpOp::Eq,
            data: vec![nfproto(f)],
        },
    ]
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

impl End {
    fn of(d: Direction) -> End {
        // Ingress matches where traffic comes from, egress where it goes.
        match d {
            Direction::Ingress => End::Source,
            Direction::Egress => End::Destination,
        }
    }
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

/// An anonymous constant set, as nft creates one for `{ a, b, ... }`.
fn anon_set(key: KeyType, interval: bool, udata: Vec<u8>, elements: Vec<Elem>, size: u32) -> SetSpec {
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

impl Ruleset {
    /// Lowers what `render::nft::render(ir, true)` describes.
    pub fn from_ir(ir: &Ir) -> Result<Ruleset, DataplaneError> {
        let mut sets = Vec::new();
        for (name, set) in &ir.sets {
            for f in &set.families {
                sets.push(addr_set(name, set, *f)?);
            }
        }
        for (name, set) in &ir.port_sets {
            for f in [Family::V4, Family::V6] {
                sets.push(port_set(name, set, f));
            }
        }
        for (name, table) in &ir.tier_tables {
            for f in [Family::V4, Family::V6] {
                sets.extend(table_map(name, table, f));
            }
        }
        for (name, class) in &ir.port_classes {
            for p in Protocol::ALL {
                sets.extend(class_map(name, class, p));
            }
        }
        for d in [Direction::Ingress, Direction::Egress] {
            sets.push(dispatch_map(ir, d));
        }

        let mut chains = base_chains(ir);
        for ep in &ir.endpoints {
            for d in [Direction::Ingress, Direction::Egress] {
                if ep.isolation(d).enforced() {
                    chains.push(endpoint_chain(ir, ep, d)?);
                }
            }
        }
        for (name, chain) in &ir.chains {
            chains.push(policy_chain(ir, name, chain)?);
        }
        for (name, table) in &ir.tier_tables {
            chains.push(table_chain(name, table));
        }
        for (name, class) in &ir.port_classes {
            chains.push(class_chain(name, class));
        }
        for (name, rule) in &ir.admin_rules {
            chains.push(admin_rule_chain(name, rule));
        }
        Ok(Ruleset { chains, sets })
    }

    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum::<usize>()
            + self
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .filter_map(|r| r.anon_set.as_ref())
                .map(|s| s.elements.len())
                .sum::<usize>()
    }

    pub fn anon_set_count(&self) -> usize {
        self.chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.anon_set.is_some())
            .count()
    }
}

/// Element changes of one named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetDelta {
    pub set: SetSpec,
    pub remove: Vec<Elem>,
    pub add: Vec<Elem>,
}

/// Changes that turn `old` into `new` without recreating the table: set and map elements, and
/// chains whose rules are rewritten (flushed and added anew, in their place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InPlace {
    pub sets: Vec<SetDelta>,
    /// Indexes into `new.chains`.
    pub chains: Vec<usize>,
}

/// What [`InPlace`] turns `old` into `new`, or `None` when chains or sets themselves differ
/// (names, order, hooks, set definitions) or the elements of an interval set or map do: only a
/// replace then gives the table nft would create, in the same order. Sets whose elements are
/// equal are skipped without building their difference (pod churn touches a few sets of many).
///
/// A change in an interval set or map (`cidr_*`, `net_*`, the tier maps `adm_*`, `bl_*`,
/// `pc_*`) is structural: the kernel checks every interval element it adds against the
/// elements already there, one at a time, so a delta that splits a range or moves a boundary
/// between adjacent ranges (the closing element of one range and the start of the next share a
/// key) is refused as overlapping (`EEXIST`) although the resulting map is valid. Those sets are
/// named after their contents, so a change renames them anyway and this costs no element update
/// in practice.
pub(crate) fn in_place_update(old: &Ruleset, new: &Ruleset) -> Option<InPlace> {
    let same_skeleton = old.chains.len() == new.chains.len()
        && old
            .chains
            .iter()
            .zip(&new.chains)
            .all(|(o, n)| o.name == n.name && o.base == n.base)
        && old.sets.len() == new.sets.len()
        && old
            .sets
            .iter()
            .zip(&new.sets)
            .all(|(o, n)| o.same_but_elements(n) && !interval_changed(o, n));
    if !same_skeleton {
        return None;
    }
    let chains = (0..new.chains.len())
        .filter(|&i| old.chains[i].rules != new.chains[i].rules)
        .collect();
    let sets = old
        .sets
        .iter()
        .zip(&new.sets)
        .filter_map(|(o, n)| delta(o, n))
        .collect();
    Some(InPlace { sets, chains })
}

/// Whether `o` and `n` are interval sets or maps with different elements: a structural change
/// (see [`in_place_update`]).
fn interval_changed(o: &SetSpec, n: &SetSpec) -> bool {
    (o.flags | n.flags) & NFT_SET_INTERVAL != 0 && o.elements != n.elements
}

/// The element changes that turn set `o` into `n` (same header), if any.
fn delta(o: &SetSpec, n: &SetSpec) -> Option<SetDelta> {
    if o.elements == n.elements {
        return None;
    }
    let sorted = |v: &[Elem]| v.windows(2).all(|w| w[0] < w[1]);
    let (remove, add) = if sorted(&o.elements) && sorted(&n.elements) {
        // Address and named-port sets hold their elements sorted: one merge.
        merge_diff(&o.elements, &n.elements)
    } else {
        let before: BTreeSet<&Elem> = o.elements.iter().collect();
        let after: BTreeSet<&Elem> = n.elements.iter().collect();
        (
            o.elements.iter().filter(|e| !after.contains(e)).cloned().collect(),
            n.elements.iter().filter(|e| !before.contains(e)).cloned().collect(),
        )
    };
    (!remove.is_empty() || !add.is_empty()).then(|| SetDelta {
        set: n.clone_header(),
        remove,
        add,
    })
}

/// Pushes `old` onto `out` when it was lowered from the same IR part (`same`), otherwise what
/// `lower` gives, noting its index and the old version in `fresh`.
fn place<T>(
    out: &mut Vec<T>,
    fresh: &mut Vec<(usize, Option<T>)>,
    old: Option<T>,
    same: bool,
    lower: impl FnOnce() -> Result<T, DataplaneError>,
) -> Result<(), DataplaneError> {
    match old {
        Some(o) if same => out.push(o),
        o => {
            fresh.push((out.len(), o));
            out.push(lower()?);
        }
    }
    Ok(())
}

/// Items only in `old` and items only in `new`, both strictly ascending.
fn merge_diff<'a, T: Ord + Clone + 'a>(
    old: impl IntoIterator<Item = &'a T>,
    new: impl IntoIterator<Item = &'a T>,
) -> (Vec<T>, Vec<T>) {
    let (mut remove, mut add) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(o), Some(n)) => match o.cmp(n) {
                std::cmp::Ordering::Less => remove.extend(old.next().cloned()),
                std::cmp::Ordering::Greater => add.extend(new.next().cloned()),
                std::cmp::Ordering::Equal => {
                    old.next();
                    new.next();
                }
            },
            (Some(_), None) => remove.extend(old.next().cloned()),
            (None, Some(_)) => add.extend(new.next().cloned()),
            (None, None) => return (remove, add),
        }
    }
}

/// `spec` with the sorted elements `remove` (which it holds) taken out and `add` (which it
/// does not hold) put in, keeping its elements sorted; and the delta that does the same in the
/// kernel. No element is lowered or allocated again.
fn patch(spec: SetSpec, remove: Vec<Elem>, add: Vec<Elem>) -> (SetSpec, Option<SetDelta>) {
    if remove.is_empty() && add.is_empty() {
        return (spec, None);
    }
    let header = spec.clone_header();
    let mut elements = Vec::with_capacity(spec.elements.len() + add.len());
    let mut gone = remove.iter().peekable();
    let mut new = add.iter().peekable();
    for e in spec.elements {
        while let Some(a) = new.next_if(|a| **a < e) {
            elements.push(a.clone());
        }
        if gone.next_if(|r| **r == e).is_none() {
            elements.push(e);
        }
    }
    elements.extend(new.cloned());
    let delta = SetDelta {
        set: header.clone(),
        remove,
        add,
    };
    (SetSpec { elements, ..header }, Some(delta))
}

/// A committed plan and the IR parts its sets and policy chains were lowered from, so that the
/// next plan can take over what did not change instead of lowering and comparing it again.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    pub plan: Ruleset,
    fail_closed: Option<String>,
    endpoints: Vec<Endpoint>,
    sets: BTreeMap<String, AddrSet>,
    port_sets: BTreeMap<String, PortSet>,
    chains: BTreeMap<String, PolicyChain>,
    tier_tables: BTreeMap<String, TierTable>,
    port_classes: BTreeMap<String, PortClass>,
    admin_rules: BTreeMap<String, AdminRuleIr>,
}

impl Committed {
    pub fn new(ir: &Ir, plan: Ruleset) -> Committed {
        Committed {
            plan,
            fail_closed: ir.fail_closed.clone(),
            endpoints: ir.endpoints.clone(),
            sets: ir.sets.clone(),
            port_sets: ir.port_sets.clone(),
            chains: ir.chains.clone(),
            tier_tables: ir.tier_tables.clone(),
            port_classes: ir.port_classes.clone(),
            admin_rules: ir.admin_rules.clone(),
        }
    }
}

/// The plan for `new` and, when one suffices, the in-place change from `old`'s plan to it: the
/// same as `Ruleset::from_ir(new)` and [`in_place_update`], but sets and policy chains lowered
/// from IR parts equal to `old`'s are moved over from `old`'s plan, neither lowered nor compared
/// again. On a large node a change touches a few of many sets and chains.
pub(crate) fn replan(old: Committed, new: &Ir) -> Result<(Ruleset, Option<InPlace>), DataplaneError> {
    let Committed {
        plan: old_plan,
        fail_closed: old_fail_closed,
        endpoints: old_endpoints,
        sets: old_sets_ir,
        port_sets: old_ports_ir,
        chains: old_chains_ir,
        tier_tables: old_tables_ir,
        port_classes: old_classes_ir,
        admin_rules: old_rules_ir,
    } = old;
    let old_set_order: Vec<String> = old_plan.sets.iter().map(|s| s.name.clone()).collect();
    let old_chain_order: Vec<(String, Option<BaseChain>)> =
        old_plan.chains.iter().map(|c| (c.name.clone(), c.base)).collect();
    let mut old_sets: HashMap<String, SetSpec> = old_plan.sets.into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut old_chains: HashMap<String, ChainSpec> = old_plan.chains.into_iter().map(|c| (c.name.clone(), c)).collect();

    // Lowered anew: (index in the new plan, the old version if there was one).
    let mut fresh_sets: Vec<(usize, Option<SetSpec>)> = Vec::new();
    // Patched with what changed in their IR members: (index in the new plan, the change).
    let mut patched: Vec<(usize, SetDelta)> = Vec::new();
    let mut sets = Vec::new();
    for (name, set) in &new.sets {
        let prev = old_sets_ir.get(name);
        let same = prev == Some(set);
        // A selector set with the same description has the same header; its sorted elements
        // follow its sorted members one to one.
        let patchable = prev.filter(|p| {
            !same && set.kind == SetKind::Selector && p.kind == set.kind && p.description == set.description
        });
        for f in &set.families {
            let old = old_sets.remove(&set_name(name, *f));
            if let (Some(o), Some(prev)) = (&old, patchable) {
                if o.flags == 0 {
                    let (remove, add) = merge_diff(prev.members_of(*f), set.members_of(*f));
                    let (remove, add) = (address_elements(name, *f, &remove)?, address_elements(name, *f, &add)?);
                    let (spec, delta) = patch(old.expect("checked"), remove, add);
                    patched.extend(delta.map(|d| (sets.len(), d)));
                    sets.push(spec);
                    continue;
                }
            }
            place(&mut sets, &mut fresh_sets, old, same, || addr_set(name, set, *f))?;
        }
    }
    for (name, set) in &new.port_sets {
        let prev = old_ports_ir.get(name);
        let same = prev == Some(set);
        for f in [Family::V4, Family::V6] {
            let old = old_sets.remove(&set_name(name, f));
            // Same set name, so the same port name and protocol, so the same header.
            if let (Some(_), Some(prev)) = (&old, prev.filter(|_| !same)) {
                let of = |s: &PortSet| -> Vec<(IpAddr, u16)> {
                    s.members
                        .iter()
                        .filter(|(ip, _)| Family::of(ip) == f)
                        .copied()
                        .collect()
                };
                let (remove, add) = merge_diff(&of(prev), &of(set));
                let (spec, delta) = patch(old.expect("checked"), port_elements(&remove), port_elements(&add));
                patched.extend(delta.map(|d| (sets.len(), d)));
                sets.push(spec);
                continue;
            }
            place(&mut sets, &mut fresh_sets, old, same, || Ok(port_set(name, set, f)))?;
        }
    }
    // Tier maps and port class maps are lowered from their table or class alone (a family or
    // protocol without entries has no map). Their names are content hashes, but the content is
    // compared all the same: a map is taken over only when it is exactly what it was.
    for (name, table) in &new.tier_tables {
        let same = old_tables_ir.get(name) == Some(table);
        for f in [Family::V4, Family::V6] {
            if table.entries(f).is_empty() {
                continue;
            }
            let old = old_sets.remove(&nft::table_map_name(name, f));
            place(&mut sets, &mut fresh_sets, old, same, || {
                table_map(name, table, f).ok_or_else(|| unreachable_empty(name))
            })?;
        }
    }
    for (name, class) in &new.port_classes {
        let same = old_classes_ir.get(name) == Some(class);
        for p in Protocol::ALL {
            if class.protocol(p).is_empty() {
                continue;
            }
            let old = old_sets.remove(&nft::class_map_name(name, p));
            place(&mut sets, &mut fresh_sets, old, same, || {
                class_map(name, class, p).ok_or_else(|| unreachable_empty(name))
            })?;
        }
    }
    // The dispatch maps are lowered from the endpoints alone.
    let same_endpoints = old_endpoints == new.endpoints;
    for d in [Direction::Ingress, Direction::Egress] {
        let old = old_sets.remove(&format!("{}_dispatch", d.as_str()));
        place(&mut sets, &mut fresh_sets, old, same_endpoints, || {
            Ok(dispatch_map(new, d))
        })?;
    }

    let mut fresh_chains: Vec<(usize, Option<ChainSpec>)> = Vec::new();
    let mut chains = Vec::new();
    // The base chains are lowered from the fail-closed prefix alone.
    for c in base_chains(new) {
        let old = old_chains.remove(&c.name);
        let same = old_fail_closed == new.fail_closed;
        place(&mut chains, &mut fresh_chains, old, same, || Ok(c))?;
    }
    // An endpoint chain is lowered from its endpoint, the policies of its chains and the tier
    // tables it jumps to, which the chain and table names determine.
    let old_endpoints: HashMap<&ObjectRef, &Endpoint> = old_endpoints.iter().map(|e| (&e.pod, e)).collect();
    for ep in &new.endpoints {
        let same = old_endpoints.get(&ep.pod) == Some(&ep);
        for d in [Direction::Ingress, Direction::Egress] {
            if ep.isolation(d).enforced() {
                let old = old_chains.remove(&ep.chain_name(d));
                place(&mut chains, &mut fresh_chains, old, same, || endpoint_chain(new, ep, d))?;
            }
        }
    }
    for (name, chain) in &new.chains {
        // A policy chain is lowered from the chain and the families of the sets it uses.
        let same = old_chains_ir.get(name) == Some(chain)
            && chain.rules.iter().all(|r| match &r.peer {
                PeerMatch::Set(s) => old_sets_ir.get(s).map(|x| &x.families) == new.sets.get(s).map(|x| &x.families),
                PeerMatch::Any => true,
            });
        let old = old_chains.remove(name);
        place(&mut chains, &mut fresh_chains, old, same, || {
            policy_chain(new, name, chain)
        })?;
    }
    for (name, table) in &new.tier_tables {
        let same = old_tables_ir.get(name) == Some(table);
        let old = old_chains.remove(name);
        place(&mut chains, &mut fresh_chains, old, same, || {
            Ok(table_chain(name, table))
        })?;
    }
    for (name, class) in &new.port_classes {
        let same = old_classes_ir.get(name) == Some(class);
        let old = old_chains.remove(name);
        place(&mut chains, &mut fresh_chains, old, same, || {
            Ok(class_chain(name, class))
        })?;
    }
    for (name, rule) in &new.admin_rules {
        let same = old_rules_ir.get(name) == Some(rule);
        let old = old_chains.remove(name);
        place(&mut chains, &mut fresh_chains, old, same, || {
            Ok(admin_rule_chain(name, rule))
        })?;
    }
    let plan = Ruleset { chains, sets };

    let same_skeleton = plan.sets.iter().map(|s| &s.name).eq(old_set_order.iter())
        && plan
            .chains
            .iter()
            .map(|c| (&c.name, c.base))
            .eq(old_chain_order.iter().map(|(n, b)| (n, *b)))
        && fresh_sets.iter().all(|(i, o)| {
            o.as_ref()
                .is_some_and(|o| o.same_but_elements(&plan.sets[*i]) && !interval_changed(o, &plan.sets[*i]))
        });
    if !same_skeleton {
        return Ok((plan, None));
    }
    let chains = fresh_chains
        .iter()
        .filter(|(i, o)| o.as_ref().is_none_or(|o| o.rules != plan.chains[*i].rules))
        .map(|(i, _)| *i)
        .collect();
    let mut deltas: Vec<(usize, SetDelta)> = fresh_sets
        .iter()
        .filter_map(|(i, o)| Some((*i, delta(o.as_ref()?, &plan.sets[*i])?)))
        .collect();
    deltas.extend(patched);
    deltas.sort_by_key(|(i, _)| *i);
    let sets = deltas.into_iter().map(|(_, d)| d).collect();
    Ok((plan, Some(InPlace { sets, chains })))
}

/// A map with entries that lowered to none: cannot happen, as only tables and classes with
/// entries are lowered.
fn unreachable_empty(name: &str) -> DataplaneError {
    DataplaneError::Unrepresentable(format!("map of {name} without entries"))
}

impl SetSpec {
    /// Whether the two differ in nothing but their elements.
    fn same_but_elements(&self, other: &SetSpec) -> bool {
        let SetSpec {
            name,
            flags,
            key,
            verdict_map,
            size,
            udata,
            elements: _,
        } = self;
        *name == other.name
            && *flags == other.flags
            && *key == other.key
            && *verdict_map == other.verdict_map
            && *size == other.size
            && *udata == other.udata
    }

    /// The set without its elements.
    fn clone_header(&self) -> SetSpec {
        SetSpec {
            name: self.name.clone(),
            flags: self.flags,
            key: self.key,
            verdict_map: self.verdict_map,
            size: self.size,
            udata: self.udata.clone(),
            elements: Vec::new(),
        }
    }
}

fn addr_set(name: &str, set: &AddrSet, f: Family) -> Result<SetSpec, DataplaneError> {
    let width = addr_len(f);
    let interval = set.kind == SetKind::IpBlock;
    let members: Vec<&IpRange> = set.members_of(f).collect();
    let elements = if interval {
        let ranges: Vec<(u128, u128)> = members.iter().map(|r| (r.start, r.end)).collect();
        interval_elements(&ranges, width)
    } else {
        address_elements(name, f, members)?
    };
    let mut u = Udata::default();
    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
    u.put_strz(UDATA_SET_COMMENT, &comment(&set.description));
    Ok(SetSpec {
        name: set_name(name, f),
        flags: if interval { NFT_SET_INTERVAL } else { 0 },
        key: KeyType::Addr(f),
        verdict_map: false,
        size: None,
        udata: u.into_bytes(),
        elements,
    })
}

/// The elements of a set without intervals (a selector set), in the members' order: a set
/// without `flags interval` holds single addresses, so a range (adjacent pod addresses merged
/// by the compiler) stands for each of its addresses.
fn address_elements<'a>(
    name: &str,
    f: Family,
    members: impl IntoIterator<Item = &'a IpRange>,
) -> Result<Vec<Elem>, DataplaneError> {
    let width = addr_len(f);
    let mut out = Vec::new();
    for r in members {
        if r.end - r.start >= MAX_EXPANDED_RANGE {
            return Err(DataplaneError::Unrepresentable(format!(
                "set {}: range {r} in a set without intervals",
                set_name(name, f)
            )));
        }
        out.extend((r.start..=r.end).map(|v| Elem::key(be_bytes(v, width))));
    }
    Ok(out)
}

/// `address . port` elements, in the members' order.
fn port_elements<'a>(members: impl IntoIterator<Item = &'a (IpAddr, u16)>) -> Vec<Elem> {
    members
        .into_iter()
        .map(|(ip, port)| {
            let mut key = addr_bytes(ip);
            key.extend_from_slice(&port.to_be_bytes());
            key.extend_from_slice(&[0, 0]);
            Elem::key(key)
        })
        .collect()
}

fn port_set(name: &str, set: &PortSet, f: Family) -> SetSpec {
    let elements = port_elements(set.members.iter().filter(|(ip, _)| Family::of(ip) == f));
    let mut u = Udata::default();
    // A concatenation has no single byte order; nft records 0 and a typeof of the concat.
    u.put_u32(UDATA_SET_KEYBYTEORDER, 0);
    u.nest(UDATA_SET_KEY_TYPEOF, |n| {
        n.put_u32(UDATA_SET_TYPEOF_EXPR, EXPR_CONCAT);
        n.nest(UDATA_SET_TYPEOF_DATA, |_| {});
    });
    u.put_strz(
        UDATA_SET_COMMENT,
        &comment(&format!("named port {}/{}", set.port_name, set.protocol)),
    );
    SetSpec {
        name: set_name(name, f),
        flags: 0,
        key: KeyType::AddrService(f),
        verdict_map: false,
        size: None,
        udata: u.into_bytes(),
        elements,
    }
}

fn ifname_key(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.resize(IFNAMSIZ.max(key.len()), 0);
    key
}

fn dispatch_map(ir: &Ir, d: Direction) -> SetSpec {
    let elements = ir
        .endpoints
        .iter()
        .map(|ep| Elem {
            verdict: Some(match ep.isolation(d).enforced() {
                true => Verdict::Jump(ep.chain_name(d)),
                false => Verdict::Accept,
            }),
            ..Elem::key(ifname_key(&ep.interface))
        })
        .collect();
    let mut u = Udata::default();
    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_HOST_ENDIAN);
    u.put_u32(UDATA_SET_DATABYTEORDER, 0);
    u.put_u32(UDATA_SET_DATA_INTERVAL, 0);
    SetSpec {
        name: format!("{}_dispatch", d.as_str()),
        flags: NFT_SET_MAP,
        key: KeyType::Ifname,
        verdict_map: true,
        size: None,
        udata: u.into_bytes(),
        elements,
    }
}

fn rule(exprs: Vec<Expr>, comment: Option<String>) -> RuleSpec {
    RuleSpec {
        exprs,
        comment,
        anon_set: None,
    }
}

/// `ct state established,related accept`
fn established_accept() -> RuleSpec {
    const ESTABLISHED: u32 = 2;
    const RELATED: u32 = 4;
    rule(
        vec![
            Expr::CtState,
            Expr::Bitwise {
                mask: (ESTABLISHED | RELATED).to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Cmp {
                op: CmpOp::Neq,
                data: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Verdict(Verdict::Accept),
        ],
        None,
    )
}

/// `ct mark & CUT_MARK == CUT_MARK counter drop comment "…"`: packets of flows a policy change
/// cut.
fn cut_drop() -> RuleSpec {
    use policyc_compiler::render::CUT_MARK;
    rule(
        vec![
            Expr::CtMark,
            Expr::Bitwise {
                mask: CUT_MARK.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                data: CUT_MARK.to_ne_bytes().to_vec(),
            },
            Expr::Counter,
            Expr::Verdict(Verdict::Drop),
        ],
        Some(comment(policyc_compiler::render::CUT_COMMENT)),
    )
}

/// `iifname vmap @MAP` / `oifname vmap @MAP`
fn dispatch(key: MetaKey, map: &str) -> RuleSpec {
    rule(
        vec![
            Expr::Meta(key),
            Expr::Lookup {
                set: SetRef::Named(map.into()),
                verdict_map: true,
            },
        ],
        None,
    )
}

/// The renderer's base chains.
fn base_chains(ir: &Ir) -> Vec<ChainSpec> {
    let base = |name: &str, hook, priority, key, map: &str| {
        let mut rules = vec![cut_drop(), established_accept(), dispatch(key, map)];
        if let Some(prefix) = &ir.fail_closed {
            // `iifname "cali*"`: a prefix comparison of the name's bytes, without the NUL.
            rules.push(rule(
                vec![
                    Expr::Meta(key),
                    Expr::Cmp {
                        op: CmpOp::Eq,
                        data: prefix.as_bytes().to_vec(),
                    },
                    Expr::Counter,
                    Expr::Verdict(Verdict::Drop),
                ],
                Some(comment(&format!("{prefix}* interface not programmed yet: fail closed"))),
            ));
        }
        ChainSpec {
            name: name.into(),
            base: Some(BaseChain { hook, priority }),
            rules,
        }
    };
    vec![
        base(
            "forward_egress",
            BaseHook::Forward,
            PRIORITY_FILTER - 1,
            MetaKey::IifName,
            "egress_dispatch",
        ),
        base(
            "forward_ingress",
            BaseHook::Forward,
            PRIORITY_FILTER,
            MetaKey::OifName,
            "ingress_dispatch",
        ),
        base(
            "input_egress",
            BaseHook::Input,
            PRIORITY_FILTER - 1,
            MetaKey::IifName,
            "egress_dispatch",
        ),
    ]
}

fn endpoint_chain(ir: &Ir, ep: &Endpoint, d: Direction) -> Result<ChainSpec, DataplaneError> {
    let end = End::of(d);
    let mut rules = Vec::new();
    for f in [Family::V4, Family::V6] {
        let own: Vec<&IpAddr> = ep.ips.iter().filter(|ip| Family::of(ip) == f).collect();
        if own.is_empty() {
            continue;
        }
        let mut exprs = nfproto_match(f).to_vec();
        exprs.push(addr_payload(f, end));
        let mut r = rule(Vec::new(), Some(comment(&format!("{} to itself", ep.pod))));
        if let [ip] = own[..] {
            // nft turns a one-element set into a comparison.
            exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: addr_bytes(ip),
            });
        } else {
            let (desc, field) = match (f, end) {
                (Family::V4, End::Source) => (PROTO_DESC_IP, IPHDR_SADDR),
                (Family::V4, End::Destination) => (PROTO_DESC_IP, IPHDR_DADDR),
                (Family::V6, End::Source) => (PROTO_DESC_IP6, IP6HDR_SADDR),
                (Family::V6, End::Destination) => (PROTO_DESC_IP6, IP6HDR_DADDR),
            };
            let mut u = Udata::default();
            u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
            typeof_payload(&mut u, desc, field);
            let elements: Vec<Elem> = own.iter().map(|ip| Elem::key(addr_bytes(ip))).collect();
            let size = elements.len() as u32;
            r.anon_set = Some(anon_set(KeyType::Addr(f), false, u.into_bytes(), elements, size));
            exprs.push(Expr::Lookup {
                set: SetRef::Anonymous,
                verdict_map: false,
            });
        }
        exprs.push(Expr::Verdict(Verdict::Accept));
        r.exprs = exprs;
        rules.push(r);
    }
    let iso = ep.isolation(d);
    let tier_jump = |table: &str, tier: &str, policies: &[_]| -> Result<RuleSpec, DataplaneError> {
        if !ir.tier_tables.contains_key(table) {
            return Err(DataplaneError::Unrepresentable(format!(
                "endpoint {} jumps to unknown tier table {table}",
                ep.pod
            )));
        }
        let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
        Ok(rule(
            vec![Expr::Verdict(Verdict::Jump(table.to_string()))],
            Some(comment(&format!("{tier} tier: {}", names.join(", ")))),
        ))
    };
    if let Some(table) = &iso.admin_table {
        rules.push(tier_jump(table, "Admin", &iso.admin)?);
    }
    if iso.isolated() {
        for chain in &iso.chains {
            let policy = ir
                .chains
                .get(chain)
                .ok_or_else(|| {
                    DataplaneError::Unrepresentable(format!("endpoint {} jumps to unknown chain {chain}", ep.pod))
                })?
                .policy
                .to_string();
            rules.push(rule(
                vec![Expr::Verdict(Verdict::Jump(chain.clone()))],
                Some(comment(&policy)),
            ));
        }
        let policies: Vec<String> = iso.policies.iter().map(|p| p.to_string()).collect();
        rules.push(rule(
            vec![Expr::Counter, Expr::Verdict(Verdict::Drop)],
            Some(comment(&format!(
                "{} {d} denied: selected by {}",
                ep.pod,
                policies.join(", ")
            ))),
        ));
    } else if let Some(table) = &iso.baseline_table {
        rules.push(tier_jump(table, "Baseline", &iso.baseline)?);
    }
    Ok(ChainSpec {
        name: ep.chain_name(d),
        base: None,
        rules,
    })
}

/// The port part of a policy rule: per protocol, the expressions and the anonymous set they
/// look up, if any.
fn port_matches(m: &PortMatch, f: Family, nfproto_known: bool) -> Vec<(Vec<Expr>, Option<SetSpec>)> {
    match m {
        PortMatch::Any => vec![(Vec::new(), None)],
        PortMatch::Named { set, protocol } => {
            // `ip daddr . tcp dport @set`: address into register 1, port into the next 32-bit
            // slot after it.
            let mut exprs = Vec::new();
            if !nfproto_known {
                exprs.extend(nfproto_match(f));
            }
            exprs.extend(l4proto_match(*protocol));
            exprs.push(addr_payload(f, End::Destination));
            exprs.push(dport_payload(register(addr_len(f) as u32 / 4)));
            exprs.push(Expr::Lookup {
                set: SetRef::Named(set_name(set, f)),
                verdict_map: false,
            });
            vec![(exprs, None)]
        }
        PortMatch::Ports(ranges) => {
            let mut out = Vec::new();
            for p in Protocol::ALL {
                let rs: Vec<&PortRange> = ranges.iter().filter(|r| r.protocol == p).collect();
                if rs.is_empty() {
                    continue;
                }
                let mut exprs = l4proto_match(p).to_vec();
                if rs.iter().any(|r| r.is_whole_protocol()) {
                    out.push((exprs, None));
                    continue;
                }
                exprs.push(dport_payload(1));
                let mut anon = None;
                if let [r] = rs[..] {
                    if r.first == r.last {
                        exprs.push(Expr::Cmp {
                            op: CmpOp::Eq,
                            data: r.first.to_be_bytes().to_vec(),
                        });
                    } else {
                        exprs.push(Expr::Cmp {
                            op: CmpOp::Gte,
                            data: r.first.to_be_bytes().to_vec(),
                        });
                        exprs.push(Expr::Cmp {
                            op: CmpOp::Lte,
                            data: r.last.to_be_bytes().to_vec(),
                        });
                    }
                } else {
                    let interval = rs.iter().any(|r| r.first != r.last);
                    let mut u = Udata::default();
                    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
                    let (elements, size) = if interval {
                        u.put_u32(UDATA_SET_MERGE_ELEMENTS, 1);
                        let ranges = automerge(rs.iter().map(|r| (r.first as u128, r.last as u128)).collect());
                        (interval_elements(&ranges, 2), interval_size(&ranges))
                    } else {
                        let e: Vec<Elem> = rs.iter().map(|r| Elem::key(r.first.to_be_bytes().to_vec())).collect();
                        let n = e.len() as u32;
                        (e, n)
                    };
                    typeof_payload(&mut u, proto_desc(p), THDR_DPORT);
                    anon = Some(anon_set(KeyType::InetService, interval, u.into_bytes(), elements, size));
                    exprs.push(Expr::Lookup {
                        set: SetRef::Anonymous,
                        verdict_map: false,
                    });
                }
                out.push((exprs, anon));
            }
            out
        }
    }
}

fn policy_chain(ir: &Ir, name: &str, chain: &PolicyChain) -> Result<ChainSpec, DataplaneError> {
    let end = End::of(chain.direction);
    let mut rules = Vec::new();
    for r in &chain.rules {
        let c = comment(&format!("{} {}[{}]", chain.policy, chain.direction, r.rule));
        let families: Vec<Option<Family>> = match (&r.peer, &r.ports) {
            (PeerMatch::Set(s), _) => ir
                .sets
                .get(s)
                .ok_or_else(|| DataplaneError::Unrepresentable(format!("chain {name} uses unknown set {s}")))?
                .families
                .iter()
                .map(|f| Some(*f))
                .collect(),
            (PeerMatch::Any, PortMatch::Named { .. }) => vec![Some(Family::V4), Some(Family::V6)],
            (PeerMatch::Any, _) => vec![None],
        };
        for f in families {
            let peer = match (&r.peer, f) {
                (PeerMatch::Set(s), Some(f)) => {
                    let mut e = nfproto_match(f).to_vec();
                    e.push(addr_payload(f, end));
                    e.push(Expr::Lookup {
                        set: SetRef::Named(set_name(s, f)),
                        verdict_map: false,
                    });
                    e
                }
                _ => Vec::new(),
            };
            let nfproto_known = !peer.is_empty();
            for (ports, anon) in port_matches(&r.ports, f.unwrap_or(Family::V4), nfproto_known) {
                let mut exprs = peer.clone();
                exprs.extend(ports);
                exprs.push(Expr::Counter);
                exprs.push(Expr::Verdict(Verdict::Accept));
                rules.push(RuleSpec {
                    exprs,
                    comment: Some(c.clone()),
                    anon_set: anon,
                });
            }
        }
    }
    Ok(ChainSpec {
        name: name.to_string(),
        base: None,
        rules,
    })
}

// === admin tiers ===

/// Userdata of an interval verdict map: key byte order (big endian: addresses and ports), data
/// byte order and data interval (both 0 for verdicts), then the comment, if any.
fn verdict_map_udata(comment_text: Option<&str>) -> Vec<u8> {
    let mut u = Udata::default();
    u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
    u.put_u32(UDATA_SET_DATABYTEORDER, 0);
    u.put_u32(UDATA_SET_DATA_INTERVAL, 0);
    if let Some(c) = comment_text {
        u.put_strz(UDATA_SET_COMMENT, &comment(c));
    }
    u.into_bytes()
}

/// `map adm_*_v4 { type ipv4_addr : verdict; flags interval; comment ...; elements = { RANGE :
/// goto CHAIN, ... } }`; none for a family without entries.
fn table_map(name: &str, table: &TierTable, f: Family) -> Option<SetSpec> {
    let entries = table.entries(f);
    if entries.is_empty() {
        return None;
    }
    let ranges = entries
        .iter()
        .map(|(r, t)| (r.start, r.end, Some(Verdict::Goto(t.chain().to_string()))));
    Some(SetSpec {
        name: nft::table_map_name(name, f),
        flags: NFT_SET_INTERVAL | NFT_SET_MAP,
        key: KeyType::Addr(f),
        verdict_map: true,
        size: None,
        udata: verdict_map_udata(Some(&format!(
            "{} tier {}: peer address -> rule",
            table.tier, table.direction
        ))),
        elements: interval_map_elements(ranges, addr_len(f)),
    })
}

/// `map pc_*_tcp { type inet_service : verdict; flags interval; elements = { PORTS : goto ar_*,
/// ... } }` (no comment); none for a protocol without entries.
fn class_map(name: &str, class: &PortClass, p: Protocol) -> Option<SetSpec> {
    let entries = class.protocol(p);
    if entries.is_empty() {
        return None;
    }
    let ranges = entries
        .iter()
        .map(|o| (o.first as u128, o.last as u128, Some(Verdict::Goto(o.rule.clone()))));
    Some(SetSpec {
        name: nft::class_map_name(name, p),
        flags: NFT_SET_INTERVAL | NFT_SET_MAP,
        key: KeyType::InetService,
        verdict_map: true,
        size: None,
        udata: verdict_map_udata(None),
        elements: interval_map_elements(ranges, 2),
    })
}

/// A tier table's chain: `ip saddr vmap @adm_*_v4`, `ip6 saddr vmap @adm_*_v6` (`daddr` for
/// egress), for the families it has entries of.
fn table_chain(name: &str, table: &TierTable) -> ChainSpec {
    let end = End::of(table.direction);
    let mut rules = Vec::new();
    for f in [Family::V4, Family::V6] {
        if table.entries(f).is_empty() {
            continue;
        }
        let mut exprs = nfproto_match(f).to_vec();
        exprs.push(addr_payload(f, end));
        exprs.push(Expr::Lookup {
            set: SetRef::Named(nft::table_map_name(name, f)),
            verdict_map: true,
        });
        rules.push(rule(exprs, None));
    }
    ChainSpec {
        name: name.to_string(),
        base: None,
        rules,
    }
}

/// A port class's chain: `tcp dport vmap @pc_*_tcp` per protocol with entries; with a rule for
/// other protocols, `meta l4proto tcp return` (udp, sctp) and `goto ar_*`.
fn class_chain(name: &str, class: &PortClass) -> ChainSpec {
    let mut rules = Vec::new();
    for p in Protocol::ALL {
        if class.protocol(p).is_empty() {
            continue;
        }
        // `tcp dport`: nft adds the `meta l4proto tcp` dependency.
        let mut exprs = l4proto_match(p).to_vec();
        exprs.push(dport_payload(1));
        exprs.push(Expr::Lookup {
            set: SetRef::Named(nft::class_map_name(name, p)),
            verdict_map: true,
        });
        rules.push(rule(exprs, None));
    }
    if let Some(other) = &class.other {
        for p in Protocol::ALL {
            let mut exprs = l4proto_match(p).to_vec();
            exprs.push(Expr::Verdict(Verdict::Return));
            rules.push(rule(exprs, None));
        }
        rules.push(rule(vec![Expr::Verdict(Verdict::Goto(other.clone()))], None));
    }
    ChainSpec {
        name: name.to_string(),
        base: None,
        rules,
    }
}

/// An admin rule's chain: `counter accept|drop|return comment "..."`.
fn admin_rule_chain(name: &str, r: &AdminRuleIr) -> ChainSpec {
    let verdict = match r.action {
        AdminAction::Accept => Verdict::Accept,
        AdminAction::Deny => Verdict::Drop,
        AdminAction::Pass => Verdict::Return,
    };
    ChainSpec {
        name: name.to_string(),
        base: None,
        rules: vec![rule(
            vec![Expr::Counter, Expr::Verdict(verdict)],
            Some(comment(&format!(
                "{} tier: {}: {}",
                r.tier,
                r.comment_label(),
                r.action
            ))),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Userdata bytes captured from `nft --debug=mnl` (nftables 1.0.6).
    #[test]
    fn set_userdata_matches_nft() {
        let mut u = Udata::default();
        u.put_u32(UDATA_SET_KEYBYTEORDER, 0);
        u.nest(UDATA_SET_KEY_TYPEOF, |n| {
            n.put_u32(UDATA_SET_TYPEOF_EXPR, EXPR_CONCAT);
            n.nest(UDATA_SET_TYPEOF_DATA, |_| {});
        });
        assert_eq!(
            u.into_bytes(),
            [0x00, 0x04, 0, 0, 0, 0, 0x03, 0x08, 0x00, 0x04, 0x0d, 0, 0, 0, 0x01, 0x00]
        );

        // `tcp dport { 443, 9000-9010 }`
        let mut u = Udata::default();
        u.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN);
        u.put_u32(UDATA_SET_MERGE_ELEMENTS, 1);
        typeof_payload(&mut u, PROTO_DESC_TCP, THDR_DPORT);
        let expect: Vec<u8> = [
            "00040200", "00000204", "01000000", "03140004", "07000000", "010c0004", "08000000", "01040200", "0000",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        assert_eq!(u.into_bytes(), expect);
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

    fn hex(s: &[&str]) -> Vec<u8> {
        s.concat()
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect()
    }

    /// Set userdata of interval verdict maps, captured from `nft --debug=mnl` (nftables 1.0.6).
    #[test]
    fn verdict_map_userdata_matches_nft() {
        // `map p_tcp { type inet_service : verdict; flags interval; ... }`
        assert_eq!(
            verdict_map_udata(None),
            hex(&["00040200", "00000104", "00000000", "06040000", "0000"])
        );
        // With `comment "Admin tier egress: peer address -> rule"`.
        let mut want = hex(&["00040200", "00000104", "00000000", "06040000", "00000728"]);
        want.extend_from_slice(b"Admin tier egress: peer address -> rule\0");
        assert_eq!(verdict_map_udata(Some("Admin tier egress: peer address -> rule")), want);
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

    #[test]
    fn interval_changes_are_structural() {
        let map = |elements| SetSpec {
            name: "adm_x_in_v4".into(),
            flags: NFT_SET_INTERVAL | NFT_SET_MAP,
            key: KeyType::Addr(Family::V4),
            verdict_map: true,
            size: None,
            udata: verdict_map_udata(None),
            elements,
        };
        let dispatch = |elements| SetSpec {
            name: "ingress_dispatch".into(),
            flags: NFT_SET_MAP,
            key: KeyType::Ifname,
            verdict_map: true,
            size: None,
            udata: Vec::new(),
            elements,
        };
        let goto = |c: &str| Some(Verdict::Goto(c.into()));
        let rs = |ranges: Vec<(u128, u128, Option<Verdict>)>, ifaces: &[&str]| Ruleset {
            chains: Vec::new(),
            sets: vec![
                map(interval_map_elements(ranges, 4)),
                dispatch(
                    ifaces
                        .iter()
                        .map(|i| Elem {
                            verdict: Some(Verdict::Accept),
                            ..Elem::key(ifname_key(i))
                        })
                        .collect(),
                ),
            ],
        };
        let old = rs(vec![(10, 20, goto("a"))], &["cali1"]);
        // Only the dispatch map changes: an element update.
        let change = in_place_update(&old, &rs(vec![(10, 20, goto("a"))], &["cali1", "cali2"])).unwrap();
        assert_eq!(change.sets.len(), 1);
        assert_eq!(change.sets[0].set.name, "ingress_dispatch");
        assert!(change.chains.is_empty());
        // A range split with another verdict, or a verdict changed: structural.
        assert!(in_place_update(&old, &rs(vec![(10, 15, goto("a")), (16, 20, goto("b"))], &["cali1"])).is_none());
        assert!(in_place_update(&old, &rs(vec![(10, 20, goto("b"))], &["cali1"])).is_none());
    }

    /// Taking unchanged parts over from the committed plan gives the plan and the in-place
    /// change that lowering both IRs afresh gives, through changes of every kind.
    #[test]
    fn replan_is_lowering_afresh() {
        use policyc_compiler::model::{PortRef, PortSpec};
        use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
        use policyc_compiler::{compile, CompileOptions};
        let shape = Shape {
            pods: 200,
            namespaces: 5,
            policies: 40,
            nodes: 2,
            dual_stack_every: 3,
        };
        let mut snap = cluster(shape, 3);
        add_admin_policies(&mut snap, 12, 3);
        let opts = CompileOptions {
            node: Some("node-0".into()),
            fail_closed: true,
            ..CompileOptions::default()
        };
        let mut ir = compile(&snap, &opts);
        assert!(!ir.tier_tables.is_empty() && !ir.admin_rules.is_empty());
        let mut committed = Committed::new(&ir, Ruleset::from_ir(&ir).unwrap());
        let pods: Vec<_> = snap.pods.keys().cloned().collect();
        let policies: Vec<_> = snap.policies.keys().cloned().collect();
        let admin: Vec<_> = snap.admin_policies.keys().cloned().collect();
        let (mut in_place, mut replaced) = (0, 0);
        for step in 0..24 {
            match step % 6 {
                4 => {
                    // An admin rule's action or ports change.
                    let p = snap.admin_policies.get_mut(&admin[step / 6 % admin.len()]).unwrap();
                    for r in p.ingress.iter_mut().chain(p.egress.iter_mut()) {
                        r.action = match r.action {
                            AdminAction::Accept => AdminAction::Deny,
                            _ => AdminAction::Accept,
                        };
                        r.ports = vec![PortSpec {
                            protocol: Protocol::Tcp,
                            port: PortRef::Range {
                                first: 2000 + step as u16,
                                last: 2000 + step as u16,
                            },
                        }];
                    }
                }
                5 => {
                    // Admin policies go.
                    snap.admin_policies.remove(&admin[(step / 6 + 6) % admin.len()]);
                }
                0 => {
                    let p = snap.policies.get_mut(&policies[step * 3 % policies.len()]).unwrap();
                    for r in p.ingress.iter_mut().chain(p.egress.iter_mut()) {
                        r.ports = vec![PortSpec {
                            protocol: Protocol::Udp,
                            port: PortRef::Range {
                                first: 1000 + step as u16,
                                last: 1000 + step as u16,
                            },
                        }];
                    }
                }
                1 => {
                    snap.pods.remove(&pods[(step * 7 + 1) % pods.len()]);
                }
                2 => {
                    if let Some(pod) = snap.pods.get_mut(&pods[(step * 11 + 2) % pods.len()]) {
                        pod.labels.insert("tier".into(), "moved".into());
                    }
                }
                _ => {
                    if let Some(pod) = snap.pods.get_mut(&pods[(step * 5 + 3) % pods.len()]) {
                        pod.ips = vec![format!("10.250.0.{step}").parse().unwrap()];
                    }
                }
            }
            let new = compile(&snap, &opts);
            let (plan, change) = replan(committed, &new).unwrap();
            let (old_fresh, fresh) = (Ruleset::from_ir(&ir).unwrap(), Ruleset::from_ir(&new).unwrap());
            assert!(plan == fresh, "step {step}: another plan than lowering afresh");
            assert_eq!(change, in_place_update(&old_fresh, &fresh), "step {step}");
            match change {
                Some(_) => in_place += 1,
                None => replaced += 1,
            }
            committed = Committed::new(&new, plan);
            ir = new;
        }
        assert!(in_place > 0 && replaced > 0, "{in_place} in place, {replaced} replaced");
    }

    /// A tier map whose contents change under the same name is not taken over from the
    /// committed plan, nor changed element by element: a replace.
    #[test]
    fn changed_tier_map_is_replaced_by_replan() {
        use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
        use policyc_compiler::{compile, CompileOptions};
        let shape = Shape {
            pods: 60,
            namespaces: 4,
            policies: 10,
            nodes: 1,
            dual_stack_every: 0,
        };
        let mut snap = cluster(shape, 5);
        add_admin_policies(&mut snap, 8, 5);
        let ir = compile(&snap, &CompileOptions::default());
        let mut changed = ir.clone();
        let table = changed
            .tier_tables
            .values_mut()
            .find(|t| t.v4.iter().any(|(_, x)| *x != t.v4[0].1))
            .expect("a table with two targets");
        let other = table
            .v4
            .iter()
            .map(|(_, x)| x.clone())
            .find(|x| *x != table.v4[0].1)
            .unwrap();
        table.v4[0].1 = other;
        let committed = Committed::new(&ir, Ruleset::from_ir(&ir).unwrap());
        let (plan, change) = replan(committed, &changed).unwrap();
        assert!(plan == Ruleset::from_ir(&changed).unwrap());
        assert_eq!(change, None);
    }

    #[test]
    fn registers() {
        assert_eq!(register(0), 1);
        assert_eq!(register(1), 9);
        assert_eq!(register(4), 2);
        assert_eq!(KeyType::AddrService(Family::V4).type_id(), 0x1cd);
        assert_eq!(KeyType::AddrService(Family::V6).type_id(), 0x20d);
        assert_eq!(KeyType::AddrService(Family::V6).len(), 20);
    }
}
