//! The nf_tables objects `nft -f` creates for a [`Table`] of the model, in the order it creates
//! them: the encoding layer under the one lowering (`policyc_compiler::nft::lower`).
//!
//! Pure data, no I/O. Nothing here decides a name, an order, a comment or a verdict: each model
//! statement is spelt out the way nft 1.0.x compiles it (dependency matches such as
//! `meta nfproto ipv4` before `ip saddr`, `cmp gte` + `cmp lte` for a port range, an anonymous
//! set for `{ a, b }`), so that the kernel ends up holding the same objects whichever of the two
//! loaded them. The encodings were taken from `nft --debug=netlink,mnl -f` on rendered rulesets;
//! `nft list` output and `nft --debug=netlink list` (expressions, registers, element flags,
//! userdata, handles) are compared in `tests/netlink.rs`.
//!
//! ```text
//!  Table (model) ──sets::set──►  SetSpec  (flags, key, userdata, elements as key bytes)
//!               ──rules::chain─► ChainSpec (rules as expressions, anonymous sets)
//!  two Tables ──diff::replan──► the new Ruleset + InPlace (sets and chains added and deleted,
//!                                 element deltas, refilled interval sets, rewritten chains)
//! ```
//!
//! Creation order matters: handles, the kernel's `__setN` names of anonymous sets and the
//! listing order all follow it. nft creates the table, then every chain (declaration order),
//! then every named set and map, each followed by its elements, then the rules, each rule
//! preceded by its anonymous set if it has one (see `nl::Builder::replace`). An in-place change
//! appends what it creates, so afterwards the kernel's order is the old objects' order followed
//! by the new ones'; the plan committed after it is arranged so (`diff::Order`).

mod diff;
mod edit;
mod rules;
mod sets;
mod udata;

pub(crate) use self::diff::{in_place_update, replan, Committed, Handles, InPlace, SetDelta};
pub(crate) use self::edit::RuleOp;

use policyc_compiler::cidr::Family;
pub(crate) use policyc_compiler::nft::{BaseHook, Hook, KeyType, Table, TableFamily, Verdict};

use super::DataplaneError;

// nf_tables constants (linux/netfilter/nf_tables.h, linux/netfilter.h).
pub(crate) const NFPROTO_INET: u16 = 1;
pub(crate) const NFPROTO_BRIDGE: u16 = 7;
pub(crate) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(crate) const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// `NFT_DATA_VERDICT`: the data type of a verdict map.
pub(crate) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// `IFNAMSIZ`: interface names are 16-byte NUL-padded keys.
const IFNAMSIZ: usize = 16;

/// `NFPROTO_*` of a table family.
pub(crate) fn nfproto(f: TableFamily) -> u16 {
    match f {
        TableFamily::Inet => NFPROTO_INET,
        TableFamily::Bridge => NFPROTO_BRIDGE,
    }
}

/// The whole table, as one replace batch creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ruleset {
    pub family: TableFamily,
    /// Every chain in declaration order, with its rules.
    pub chains: Vec<ChainSpec>,
    /// Named sets and maps in declaration order.
    pub sets: Vec<SetSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainSpec {
    pub name: String,
    pub base: Option<BaseHook>,
    pub rules: Vec<RuleSpec>,
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
    /// `meta set mark with reg 1`
    MetaSetMark,
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
    /// `limit rate RATE/UNIT burst BURST type packets flags 0x0`: `unit` in seconds.
    Limit { rate: u64, unit: u64, burst: u32 },
    /// `log prefix PREFIX group GROUP snaplen S qthreshold Q` (NFLOG); snaplen and queue
    /// threshold only when given, as nft sends them.
    Log {
        prefix: Option<String>,
        group: u16,
        snaplen: Option<u32>,
        queue_threshold: Option<u16>,
    },
    /// `immediate reg 0 VERDICT`
    Verdict(Verdict),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaKey {
    NfProto,
    L4Proto,
    IifName,
    OifName,
    /// The link layer protocol (ethertype, big-endian): the bridge family's network dependency.
    Protocol,
    Mark,
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
    /// The link layer header (`ether type` at offset 12 in the bridge family).
    Link,
    Network,
    Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SetRef {
    Named(String),
    /// The rule's own anonymous set (`RuleSpec::anon_set`).
    Anonymous,
}

/// A named set, a map or an anonymous set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetSpec {
    /// `__set%d` for an anonymous set: the kernel picks the number.
    pub name: String,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    pub key: SetKey,
    /// Verdict map: `type KEY : verdict`.
    pub verdict_map: bool,
    /// `NFTA_SET_DESC_SIZE`, which nft sets on anonymous sets only.
    pub size: Option<u32>,
    /// `NFTA_SET_USERDATA`: key byte order, typeof information and comment, as nft writes them.
    pub udata: Vec<u8>,
    /// In the order nft sends them.
    pub elements: Vec<Elem>,
}

/// The key type of a set: one of the model's, or one only anonymous sets of a statement have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SetKey {
    Model(KeyType),
    /// `icmpv6_type`: `icmpv6 type { ... }`.
    Icmpv6Type,
}

impl From<KeyType> for SetKey {
    fn from(k: KeyType) -> SetKey {
        SetKey::Model(k)
    }
}

const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_ICMP6_TYPE: u32 = 29;
const TYPE_IFNAME: u32 = 41;
/// nft's `concat_subtype_add`: each component shifts the id left by `TYPE_BITS`.
const TYPE_BITS: u32 = 6;

/// nftables `datatype.h` id of a key type.
pub(crate) fn type_id(k: SetKey) -> u32 {
    let k = match k {
        SetKey::Model(k) => k,
        SetKey::Icmpv6Type => return TYPE_ICMP6_TYPE,
    };
    match k {
        KeyType::Addr(f) => addr_type_id(f),
        KeyType::InetService => TYPE_INET_SERVICE,
        KeyType::Ifname => TYPE_IFNAME,
        KeyType::AddrService(f) => (addr_type_id(f) << TYPE_BITS) | TYPE_INET_SERVICE,
    }
}

/// Key length in bytes; each concatenation component takes a multiple of 4 bytes.
pub(crate) fn key_len(k: SetKey) -> u32 {
    let k = match k {
        SetKey::Model(k) => k,
        SetKey::Icmpv6Type => return 1,
    };
    match k {
        KeyType::Addr(f) => addr_len(f) as u32,
        KeyType::InetService => 2,
        KeyType::Ifname => IFNAMSIZ as u32,
        KeyType::AddrService(f) => addr_len(f) as u32 + 4,
    }
}

fn addr_type_id(f: Family) -> u32 {
    match f {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    }
}

pub(crate) fn addr_len(f: Family) -> usize {
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
    pub(crate) fn key(key: Vec<u8>) -> Elem {
        Elem {
            key,
            flags: 0,
            udata: Vec::new(),
            verdict: None,
        }
    }
}
impl Ruleset {
    /// Spells out every set and chain of the model.
    pub fn from_table(table: &Table) -> Result<Ruleset, DataplaneError> {
        Ok(Ruleset {
            family: table.family,
            sets: table.sets.iter().map(|s| sets::set(s)).collect::<Result<_, _>>()?,
            chains: table
                .chains
                .iter()
                .map(|c| rules::chain(table.family, c))
                .collect::<Result<_, _>>()?,
        })
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

impl SetSpec {
    /// Whether the two differ in nothing but their elements.
    pub(crate) fn same_but_elements(&self, other: &SetSpec) -> bool {
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
    pub(crate) fn clone_header(&self) -> SetSpec {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types() {
        assert_eq!(type_id(KeyType::AddrService(Family::V4).into()), 0x1cd);
        assert_eq!(type_id(KeyType::AddrService(Family::V6).into()), 0x20d);
        assert_eq!(key_len(KeyType::AddrService(Family::V6).into()), 20);
    }
}
