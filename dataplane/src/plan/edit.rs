//! Rule-level changes of a kept chain whose rules the kernel numbered (rule handles): the rules
//! that differ are replaced where they stand (`NLM_F_REPLACE` with the old rule's handle, which
//! the new rule keeps), the ones added are inserted in their place, the ones gone deleted by
//! handle. Rules that did not change are not touched: their counters run on, and the kernel
//! parses only what changed (a policy created for a namespace changes two rules of each of its
//! endpoint chains, the jump to its group and the drop naming the policies, of ten or more).
//!
//! Handles come from the kernel itself (it echoes every rule it creates at the writer's
//! request, see `socket::NlSocket::transact`); a chain whose handles the writer does not know
//! is flushed and filled anew, as before.

use super::RuleSpec;

/// One rule operation of a chain's edit, in the order they are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RuleOp {
    /// Rule `new` of the new chain replaces the rule with this handle (and keeps the handle).
    Replace { new: usize, handle: u64 },
    /// Rule `new` is inserted before the rule with this handle.
    InsertBefore { new: usize, handle: u64 },
    /// Rule `new` is added at the end of the chain.
    Append { new: usize },
    /// The rule with this handle is deleted.
    Delete { handle: u64 },
}

/// A chain's edit: the operations, and the handle of each rule of the new chain that keeps an
/// old rule's handle (kept or replaced; `None` for the rules it creates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Edit {
    pub ops: Vec<RuleOp>,
    handles: Vec<Option<u64>>,
}

/// Longest common subsequence tables larger than this fall back to keeping the common prefix
/// and suffix only.
const MAX_TABLE: usize = 1 << 16;

/// The operations that turn `old` (whose rules have `handles`) into `new`, keeping the rules of
/// a longest common subsequence (the common prefix and suffix only for long chains). Between
/// two kept rules, changed rules are replaced pairwise, extra new ones inserted before the next
/// kept rule (appended at the end), extra old ones deleted. `None` when the operations are more
/// than flushing the chain and adding every rule again would send, or when `handles` does not
/// number `old`.
pub(crate) fn rule_edits(old: &[RuleSpec], handles: &[u64], new: &[RuleSpec]) -> Option<Edit> {
    if handles.len() != old.len() {
        return None;
    }
    let pairs = common(old, new);
    let mut ops = Vec::new();
    let mut kept = vec![None; new.len()];
    let (mut o, mut n) = (0, 0);
    for (mo, mn) in pairs.into_iter().chain([(old.len(), new.len())]) {
        let paired = (mo - o).min(mn - n);
        for k in 0..paired {
            ops.push(RuleOp::Replace {
                new: n + k,
                handle: handles[o + k],
            });
            kept[n + k] = Some(handles[o + k]);
        }
        let before = handles.get(mo).copied();
        for k in n + paired..mn {
            ops.push(match before {
                Some(handle) => RuleOp::InsertBefore { new: k, handle },
                None => RuleOp::Append { new: k },
            });
        }
        ops.extend(handles[o + paired..mo].iter().map(|&handle| RuleOp::Delete { handle }));
        if mo < old.len() {
            kept[mn] = Some(handles[mo]);
        }
        (o, n) = (mo + 1, mn + 1);
    }
    // A flush is one message, then one per rule; deletions parse nothing, and the edit keeps
    // the untouched rules' counters: at as many messages, the edit.
    (ops.len() <= new.len() + 1).then_some(Edit { ops, handles: kept })
}

/// Index pairs (old, new) of equal rules kept by the edit, ascending in both.
fn common(old: &[RuleSpec], new: &[RuleSpec]) -> Vec<(usize, usize)> {
    let prefix = old.iter().zip(new).take_while(|(o, n)| o == n).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(o, n)| o == n)
        .count();
    let (a, b) = (&old[prefix..old.len() - suffix], &new[prefix..new.len() - suffix]);
    let mut pairs: Vec<(usize, usize)> = (0..prefix).map(|i| (i, i)).collect();
    if !a.is_empty() && !b.is_empty() && (a.len() + 1) * (b.len() + 1) <= MAX_TABLE {
        // lcs[i][j]: length of a longest common subsequence of a[i..] and b[j..].
        let w = b.len() + 1;
        let mut lcs = vec![0u16; (a.len() + 1) * w];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i * w + j] = if a[i] == b[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if a[i] == b[j] {
                pairs.push((prefix + i, prefix + j));
                (i, j) = (i + 1, j + 1);
            } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    pairs.extend((0..suffix).map(|k| (old.len() - suffix + k, new.len() - suffix + k)));
    pairs
}

impl Edit {
    /// The handles of the edited chain's rules, in its new order, given the handles the kernel
    /// gave the rules the edit created (by index into the new chain); `None` if one is missing.
    pub(crate) fn handles_after(&self, created: impl Fn(usize) -> Option<u64>) -> Option<Vec<u64>> {
        self.handles
            .iter()
            .enumerate()
            .map(|(i, h)| h.or_else(|| created(i)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Expr, Verdict};

    fn rule(c: &str) -> RuleSpec {
        RuleSpec {
            exprs: vec![Expr::Verdict(Verdict::Accept)],
            comment: Some(c.to_string()),
            anon_set: None,
        }
    }

    fn rules(s: &str) -> Vec<RuleSpec> {
        s.chars().map(|c| rule(&c.to_string())).collect()
    }

    /// Applies `ops` to a chain of (name, handle) the way the kernel does, creating rules with
    /// handles from 100 on.
    fn apply(old: &[RuleSpec], handles: &[u64], new: &[RuleSpec], ops: &[RuleOp]) -> (Vec<RuleSpec>, Vec<u64>) {
        let mut chain: Vec<(RuleSpec, u64)> = old.iter().cloned().zip(handles.iter().copied()).collect();
        let mut next = 100;
        for op in ops {
            match op {
                RuleOp::Replace { new: n, handle } => {
                    let at = chain.iter().position(|(_, h)| h == handle).unwrap();
                    chain[at].0 = new[*n].clone();
                }
                RuleOp::InsertBefore { new: n, handle } => {
                    let at = chain.iter().position(|(_, h)| h == handle).unwrap();
                    chain.insert(at, (new[*n].clone(), next));
                    next += 1;
                }
                RuleOp::Append { new: n } => {
                    chain.push((new[*n].clone(), next));
                    next += 1;
                }
                RuleOp::Delete { handle } => chain.retain(|(_, h)| h != handle),
            }
        }
        chain.into_iter().unzip()
    }

    #[test]
    fn edits_give_the_new_chain_and_its_handles() {
        let cases = [
            ("abcd", "abXd"),
            ("abcd", "aXYd"),
            ("abcd", "abcdXY"),
            ("abcd", "XYabcd"),
            ("abcd", "abXYZcd"),
            ("abcdef", "abf"),
            ("abcdef", "aXf"),
            ("abc", "abc"),
            ("aaaa", "aaa"),
            ("abab", "ab"),
            ("ab", "abab"),
            // Changes at both ends keep what lies between.
            ("sJabcdeD", "sKabcdeE"),
            ("sJabNcdeD", "sKJabcdeE"),
            ("", "abc"),
        ];
        for (o, n) in cases {
            let (old, new) = (rules(o), rules(n));
            let handles: Vec<u64> = (1..=old.len() as u64).collect();
            let edit = rule_edits(&old, &handles, &new).unwrap_or_else(|| panic!("{o} -> {n}"));
            let ops = edit.ops.clone();
            let (got, got_handles) = apply(&old, &handles, &new, &ops);
            assert_eq!(got, new, "{o} -> {n}: {ops:?}");
            // The created rules got 100, 101, ... in the order of the operations.
            let mut next = 100;
            let mut created = std::collections::HashMap::new();
            for op in &ops {
                if let RuleOp::InsertBefore { new, .. } | RuleOp::Append { new } = op {
                    created.insert(*new, next);
                    next += 1;
                }
            }
            let after = edit.handles_after(|i| created.get(&i).copied());
            assert_eq!(after, Some(got_handles), "{o} -> {n}: {ops:?}");
        }
    }

    #[test]
    fn flush_when_cheaper_or_handles_unknown() {
        let old = rules("abcdef");
        let handles: Vec<u64> = (1..=6).collect();
        // One replace and five deletions against a flush and one rule.
        assert_eq!(rule_edits(&old, &handles, &rules("X")), None);
        // Changes at both ends of a long chain: only they are sent.
        let (old, new) = (rules("sJabcdefghijD"), rules("sKabcdefghijE"));
        let handles: Vec<u64> = (1..=old.len() as u64).collect();
        let edit = rule_edits(&old, &handles, &new).unwrap();
        assert_eq!(
            edit.ops,
            [
                RuleOp::Replace { new: 1, handle: 2 },
                RuleOp::Replace { new: 12, handle: 13 }
            ]
        );
        // Every rule gone: a flush.
        assert_eq!(rule_edits(&old, &handles, &[]), None);
        let (old, handles) = (rules("abcdef"), &handles[..6]);
        // Unknown handles: a flush.
        assert_eq!(rule_edits(&old, &handles[..5], &rules("abcdeX")), None);
        // Every rule changed, none added: as many replaces as rules, one message fewer.
        assert_eq!(
            rule_edits(&old, handles, &rules("UVWXYZ")).map(|e| e.ops.len()),
            Some(6)
        );
    }
}
