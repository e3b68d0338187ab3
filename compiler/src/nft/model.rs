//! The nftables object model: what `table inet policyc` holds, as nft's statements name it.
//!
//! Pure data. [`super::lower`] builds it from the IR and decides every name, order, comment and
//! verdict; [`super::print`] writes it as `nft -f` text; the agent's netlink writer
//! (`policyc-dataplane`) encodes the very same objects as nf_tables expressions, and compares two
//! models to update the kernel in place. Nothing below the model decides layout.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::cidr::{Family, IpRange};
use crate::model::Protocol;

/// `table inet policyc { ... }` (or, for the bridge attachment's per-port guard, `table bridge
/// policyc`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub family: TableFamily,
    /// One line saying what the ruleset is for (printed as a `#` comment above the table).
    pub summary: String,
    /// Named sets and maps, in declaration order. Shared (`Arc`) with the table lowered before
    /// when their IR parts did not change ([`super::lower_after`]).
    pub sets: Vec<Arc<Set>>,
    /// Chains in declaration order, each with its rules; shared like the sets.
    pub chains: Vec<Arc<Chain>>,
}

/// The address family of a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TableFamily {
    /// `inet`: IPv4 and IPv6, routed (and, through `br_netfilter`, bridged) traffic.
    #[default]
    Inet,
    /// `bridge`: frames crossing a Linux bridge, by port.
    Bridge,
}

impl TableFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            TableFamily::Inet => "inet",
            TableFamily::Bridge => "bridge",
        }
    }

    /// The numeric priority nft calls `filter` in this family.
    pub fn filter_priority(self) -> i32 {
        match self {
            TableFamily::Inet => 0,
            TableFamily::Bridge => -200,
        }
    }
}

/// A named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: KeyType,
    /// A verdict map (`type KEY : verdict`): every element carries a verdict.
    pub verdict_map: bool,
    /// `flags interval`: elements are ranges that must not overlap.
    pub interval: bool,
    /// Final text (already cut to what both nft and libnftnl accept, see [`super::MAX_COMMENT`]).
    pub comment: Option<String>,
    /// In the order the set's members sort (address and named-port sets, tier maps) or the
    /// order of what they stand for (dispatch maps: endpoints).
    pub elements: Vec<Element>,
}

/// The type of a set's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`
    Addr(Family),
    /// `inet_service`: a transport port.
    InetService,
    /// `ifname`
    Ifname,
    /// `ipv4_addr . inet_service` / `ipv6_addr . inet_service`
    AddrService(Family),
}

/// One set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Key,
    /// The verdict of a verdict map's element; `None` in a set.
    pub verdict: Option<Verdict>,
}

/// An element's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An address or, in an interval set or map, a range of addresses. In a set without
    /// intervals a range stands for each of its addresses (adjacent pod addresses merged).
    Addr(IpRange),
    /// `address . port`
    AddrPort(IpAddr, u16),
    /// An interface name.
    Ifname(String),
    /// A port or an inclusive range of ports.
    Ports(u16, u16),
}

/// A chain and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// A base chain's hook; `None` for a regular chain.
    pub hook: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

/// `type filter hook HOOK priority filter + OFFSET; policy accept;`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHook {
    pub hook: Hook,
    /// Priority relative to `filter` (0).
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Forward,
    Input,
}

/// One rule: every match must hold, then the counter counts, the log (within its rate limit, if
/// it has one) sends an event, and the action applies. Printed in that order:
/// `MATCHES counter limit rate N/second log prefix "..." group G VERDICT`.
///
/// # Logging a verdict, rate-limited
///
/// A `limit` statement stops the rule for every packet over the rate, so in
/// `MATCHES limit rate 10/second log ... accept` the packets over the rate skip the `accept` too
/// and fall through to the next rules. A verdict is logged with a rate limit by two rules
/// instead: a log rule with the same matches and no verdict ([`Action::Continue`],
/// [`Rule::log_only`]), then the verdict rule:
///
/// ```text
/// ip saddr @pods_v4 tcp dport 80 limit rate 100/second log prefix "pc:123" group 1
/// ip saddr @pods_v4 tcp dport 80 counter accept
/// ```
///
/// The log rule's limit then gates the event only. Where the matches are costly or shared by
/// many verdicts, the verdict rule may instead `goto` a chain of its own holding the same two
/// statements without matches (`limit ... log ...`, then the verdict). Without a limit, one rule
/// does both (`MATCHES counter log prefix "pc:123" group 1 accept`): every matching packet is
/// logged, which suits verdicts met once per connection (the first packet of an allowed flow)
/// only when the kernel's per-group queue keeps up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    /// `[limit rate ...] log ...`: after the counter, before the action.
    pub log: Option<Log>,
    pub action: Action,
    /// Final text, like [`Set::comment`].
    pub comment: Option<String>,
}

/// `limit rate N/UNIT [burst B packets] log [prefix "..."] group G [snaplen S]
/// [queue-threshold Q]`: an NFLOG event to netlink group `group`, for every packet or, with a
/// limit, for as many as the limit lets through (the rest of the rule, the action too, applies
/// to those only: see [`Rule`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Log {
    /// A token bucket in front of the log, kept by the kernel per rule (a new rule, as after a
    /// table replace or a chain rewrite, starts with a full bucket).
    pub limit: Option<Limit>,
    /// Final text: at most [`MAX_LOG_PREFIX`](super::MAX_LOG_PREFIX) bytes, no `"`; what the
    /// reader of the group gets as the event's prefix.
    pub prefix: Option<String>,
    /// The nfnetlink_log group (0 to 65535).
    pub group: u16,
    /// Bytes of the packet copied into the event (`snaplen`); `None`: as the group's listener
    /// asked. `Some(0)` copies nothing.
    pub snaplen: Option<u32>,
    /// Events the kernel queues before sending them in one datagram (`queue-threshold`); `None`
    /// or 0: as the group's listener asked.
    pub queue_threshold: Option<u16>,
}

/// `limit rate N/UNIT [burst B packets]`: at most `rate` packets per `unit` after a burst of
/// `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: u64,
    pub unit: RateUnit,
    /// Packets let through at once on a full bucket; nft's default is
    /// [`Limit::DEFAULT_BURST`], which `nft list` leaves out. Not 0 (nft refuses it).
    pub burst: u32,
}

/// The time unit of a [`Limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

/// Which end of a packet an address match looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    Source,
    Destination,
}

/// Which interface an interface match looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Iface {
    /// `iifname`
    In,
    /// `oifname`
    Out,
}

/// `ct state` bits (`NF_CT_STATE_BIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtStates(pub u32);

impl CtStates {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    /// In the order nft prints them.
    pub const NAMES: [(u32, &'static str); 4] = [
        (Self::INVALID, "invalid"),
        (Self::ESTABLISHED, "established"),
        (Self::RELATED, "related"),
        (Self::NEW, "new"),
    ];
}

/// A match statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `ct mark & BITS == BITS`
    CtMarkAll(u32),
    /// `ct state established,related`: any of the bits.
    CtState(CtStates),
    /// `iifname "cali*"`: the interface name starts with the prefix.
    IfnamePrefix(Iface, String),
    /// `iifname "cni0"`: exactly this interface.
    Ifname(Iface, String),
    /// `meta mark & BITS == 0x00000000`: none of the bits is set.
    MarkClear(u32),
    /// `icmpv6 type { nd-neighbor-solicit, ... }`: any of these ICMPv6 types.
    Icmpv6Types(Vec<u8>),
    /// `ip6 saddr fe80::/10`: the address is in the prefix.
    AddrPrefix {
        family: Family,
        end: End,
        net: IpAddr,
        len: u8,
    },
    /// `arp saddr ip { 10.0.0.1, 0.0.0.0 }`: the ARP sender's protocol address (bridge family).
    ArpSenderIn(Vec<Ipv4Addr>),
    /// `ip saddr @set_v4`, `ip6 daddr @set_v6`
    AddrInSet { family: Family, end: End, set: String },
    /// `ip saddr 10.0.0.1` or `ip saddr { 10.0.0.1, 10.0.0.2 }`
    AddrIn {
        family: Family,
        end: End,
        addrs: Vec<IpAddr>,
    },
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `tcp dport 80`, `tcp dport 80-90`, `tcp dport { 80, 443 }`: inclusive ranges, sorted.
    Dport { protocol: Protocol, ports: Vec<(u16, u16)> },
    /// `ip daddr . tcp dport @set_v4`
    AddrDportInSet {
        family: Family,
        protocol: Protocol,
        set: String,
    },
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Verdict(Verdict),
    /// Nothing: on to the next rule (a rule that only counts or logs).
    Continue,
    /// `meta mark set meta mark | BITS`, then on to the next rule.
    SetMarkBits(u32),
    /// `KEY vmap @MAP`: the map's verdict for the key; nothing when the key is not in it.
    Vmap {
        key: VmapKey,
        map: String,
    },
}

/// The key a verdict-map lookup takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmapKey {
    Ifname(Iface),
    Addr(Family, End),
    Dport(Protocol),
}

/// A verdict, of a rule or of a verdict map's element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

// === impl ===

impl Table {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum()
    }

    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name).map(|s| &**s)
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name).map(|c| &**c)
    }
}

impl Set {
    /// Whether the two differ in nothing but their elements.
    pub fn same_but_elements(&self, other: &Set) -> bool {
        let Set {
            name,
            key,
            verdict_map,
            interval,
            comment,
            elements: _,
        } = self;
        *name == other.name
            && *key == other.key
            && *verdict_map == other.verdict_map
            && *interval == other.interval
            && *comment == other.comment
    }
}

impl Rule {
    /// A rule without matches.
    pub fn always(counter: bool, verdict: Verdict, comment: Option<String>) -> Rule {
        Rule {
            matches: Vec::new(),
            counter,
            log: None,
            action: Action::Verdict(verdict),
            comment,
        }
    }

    /// A rule that logs what `matches` select and goes on to the next rule: the first of the two
    /// rules of a rate-limited logged verdict (see [`Rule`]).
    pub fn log_only(matches: Vec<Match>, log: Log, comment: Option<String>) -> Rule {
        Rule {
            matches,
            counter: false,
            log: Some(log),
            action: Action::Continue,
            comment,
        }
    }
}

impl Log {
    /// `log prefix "PREFIX" group GROUP`, without a limit.
    pub fn group(group: u16, prefix: impl Into<String>) -> Log {
        Log {
            limit: None,
            prefix: Some(prefix.into()),
            group,
            snaplen: None,
            queue_threshold: None,
        }
    }

    pub fn with_limit(self, limit: Limit) -> Log {
        Log {
            limit: Some(limit),
            ..self
        }
    }
}

impl Limit {
    /// The burst nft gives a packet limit that names none.
    pub const DEFAULT_BURST: u32 = 5;

    /// `limit rate RATE/second`, with nft's default burst.
    pub fn per_second(rate: u64) -> Limit {
        Limit {
            rate,
            unit: RateUnit::Second,
            burst: Limit::DEFAULT_BURST,
        }
    }
}

impl RateUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
            RateUnit::Week => "week",
        }
    }

    /// Its length in seconds, as the kernel takes it (`NFTA_LIMIT_UNIT`).
    pub fn seconds(self) -> u64 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86_400,
            RateUnit::Week => 604_800,
        }
    }
}

impl Element {
    pub fn key(key: Key) -> Element {
        Element { key, verdict: None }
    }
}
