//! Backends: the IR as text a kernel tool loads.

pub mod iptables;
pub mod labels;
pub mod nft;

/// The conntrack mark bit of flows a policy change cut. The agent sets it on the conntrack
/// entries of established flows the new ruleset denies; both backends drop packets of marked
/// entries, both directions, before anything accepts them as established. Marking instead of
/// deleting keeps the flow's 5-tuple taken until its entry expires: a reply still in flight
/// (an echo, a delayed ACK) or a server that keeps sending cannot open the flow again the other
/// way round, as it would in a fresh entry the policy allows.
pub const CUT_MARK: u32 = 0x0040_0000;
/// Packet mark bit the bridge attachment's `inet` forward chain sets on bridged pod traffic, so
/// that the `bridge` forward chain can drop what the `inet` hooks never saw (`br_netfilter` off).
pub const SEEN_MARK: u32 = 0x0020_0000;

/// Comment of the rules that drop cut flows.
pub const CUT_COMMENT: &str = "flow cut: a policy change denies it";

/// A comment both backends can quote: no quotes, backslashes or control characters inside, cut to
/// at most `max` bytes (on a character boundary, ending in `...`).
pub(crate) fn sanitize_comment(s: &str, max: usize) -> String {
    let mut c: String = s
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if c.len() > max {
        let mut end = max - 3;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
        c.push_str("...");
    }
    c
}
