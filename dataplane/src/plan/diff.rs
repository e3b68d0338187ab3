//! In-place updates as diffs of two models: which sets change by elements only, which are
//! refilled, which sets and chains are added and deleted, which chains are rewritten, and when
//! only a full replace will do.
//!
//! After an in-place change the kernel lists the sets and chains it kept in their old order and
//! the added ones after them (it appends what a transaction creates), so the plan the writer
//! commits is arranged in that order ([`Order`]), not in the model's: the next diff matches
//! objects by name, and a replace restores the model's order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use policyc_compiler::nft::{Chain, Set, Table};

use super::edit::{rule_edits, Edit};
use super::{rules, sets, ChainSpec, DataplaneError, Elem, Ruleset, SetSpec, NFT_SET_INTERVAL};

/// Element changes of one named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetDelta {
    pub set: SetSpec,
    pub remove: Vec<Elem>,
    pub add: Vec<Elem>,
}

/// Changes that turn the kernel's table into a plan without recreating the table, sent as one
/// batch (see `nl::Builder::in_place` for their order). Indexes are into the plan arranged in
/// the kernel's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InPlace {
    /// Element changes of kept sets and maps without intervals.
    pub sets: Vec<SetDelta>,
    /// Kept chains whose rules are rewritten (flushed and added anew, in their place): those
    /// whose rule handles the writer does not know.
    pub chains: Vec<usize>,
    /// Kept chains whose changed rules are replaced, inserted and deleted by handle.
    pub edited: Vec<(usize, Edit)>,
    /// The rule handles of the kept chains before the change.
    pub handles: Handles,
    /// Kept interval sets and maps whose elements changed: flushed and filled anew, in the same
    /// transaction (the kernel checks each added interval against the active elements only, so
    /// a split range or a moved boundary is no overlap, unlike with an element-by-element
    /// delta).
    pub refilled: Vec<usize>,
    /// Sets and maps created, with their elements.
    pub new_sets: Vec<usize>,
    /// Regular chains created, with their rules.
    pub new_chains: Vec<usize>,
    /// Sets and maps the plan no longer has: deleted once no rule refers to them.
    pub gone_sets: Vec<String>,
    /// Regular chains the plan no longer has: flushed, then deleted once nothing jumps to them.
    pub gone_chains: Vec<String>,
    /// Where the kernel lists each object afterwards.
    pub order: Order,
}

impl InPlace {
    /// Only element updates of kept sets without intervals: what `Dataplane::update_elements`
    /// promises.
    pub(crate) fn elements_only(&self) -> bool {
        self.chains.is_empty() && self.edited.is_empty() && self.is_elementwise()
    }

    /// No set or chain added, deleted or refilled.
    fn is_elementwise(&self) -> bool {
        self.refilled.is_empty()
            && self.new_sets.is_empty()
            && self.new_chains.is_empty()
            && self.gone_sets.is_empty()
            && self.gone_chains.is_empty()
    }
}

/// The kernel's listing order after an in-place change, as permutations of the model's order:
/// `sets[i]` is the model index of the set listed i-th, likewise `chains`. Kept objects keep
/// their old places, added ones follow in the model's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Order {
    pub sets: Vec<usize>,
    pub chains: Vec<usize>,
}

impl Order {
    /// `table`'s sets and chains (in the model's order) in the kernel's order: the committed
    /// table and plan must line up.
    pub(crate) fn arrange_table(&self, table: &Table) -> Table {
        Table {
            family: table.family,
            summary: table.summary.clone(),
            sets: arrange(&self.sets, table.sets.clone()),
            chains: arrange(&self.chains, table.chains.clone()),
        }
    }

    /// Back to the model's order (for a replace after a rejected in-place batch).
    pub(crate) fn restore(&self, rs: Ruleset) -> Ruleset {
        Ruleset {
            family: rs.family,
            sets: restore(&self.sets, rs.sets),
            chains: restore(&self.chains, rs.chains),
        }
    }
}

/// The kernel's order of `new` (names in the model's order) after an in-place change from a
/// table listing `old`.
fn kernel_order<'a>(old: &[String], new: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let pos: HashMap<&str, usize> = new.enumerate().map(|(i, n)| (n, i)).collect();
    let mut taken = vec![false; pos.len()];
    let mut perm = Vec::with_capacity(pos.len());
    for n in old {
        if let Some(&i) = pos.get(n.as_str()) {
            if !std::mem::replace(&mut taken[i], true) {
                perm.push(i);
            }
        }
    }
    perm.extend((0..taken.len()).filter(|&i| !taken[i]));
    perm
}

fn arrange<T>(perm: &[usize], v: Vec<T>) -> Vec<T> {
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return v;
    }
    let mut slots: Vec<Option<T>> = v.into_iter().map(Some).collect();
    perm.iter().map(|&i| slots[i].take().expect("a permutation")).collect()
}

fn restore<T>(perm: &[usize], v: Vec<T>) -> Vec<T> {
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return v;
    }
    let mut slots: Vec<Option<T>> = (0..v.len()).map(|_| None).collect();
    for (&i, x) in perm.iter().zip(v) {
        slots[i] = Some(x);
    }
    slots.into_iter().map(|x| x.expect("a permutation")).collect()
}

/// What becomes of one set of the new plan.
#[derive(Debug)]
enum SetState {
    Kept,
    Delta(SetDelta),
    Refill,
    New,
}

/// What becomes of one chain of the new plan.
#[derive(Debug, Clone)]
enum ChainState {
    Kept,
    /// Flushed and filled anew.
    Rewrite,
    /// Changed rule by rule.
    Edit(Edit),
    New,
}

/// The old objects' names in the kernel's order, and what the change deletes.
struct Old {
    sets: Vec<String>,
    chains: Vec<String>,
    gone_sets: Vec<String>,
    gone_chains: Vec<String>,
}

/// `plan` (in the model's order, with the state of each object) arranged in the kernel's order,
/// and the change that gets there.
fn assemble(
    old: Old,
    plan: Ruleset,
    sets: Vec<SetState>,
    chains: Vec<ChainState>,
    handles: Handles,
) -> (Ruleset, InPlace) {
    let order = Order {
        sets: kernel_order(&old.sets, plan.sets.iter().map(|s| s.name.as_str())),
        chains: kernel_order(&old.chains, plan.chains.iter().map(|c| c.name.as_str())),
    };
    let plan = Ruleset {
        family: plan.family,
        sets: arrange(&order.sets, plan.sets),
        chains: arrange(&order.chains, plan.chains),
    };
    let mut change = InPlace {
        gone_sets: old.gone_sets,
        gone_chains: old.gone_chains,
        handles,
        ..InPlace::default()
    };
    for (i, st) in arrange(&order.sets, sets).into_iter().enumerate() {
        match st {
            SetState::Kept => {}
            SetState::Delta(d) => change.sets.push(d),
            SetState::Refill => change.refilled.push(i),
            SetState::New => change.new_sets.push(i),
        }
    }
    for (i, st) in arrange(&order.chains, chains).into_iter().enumerate() {
        match st {
            ChainState::Kept => {}
            ChainState::Rewrite => change.chains.push(i),
            ChainState::Edit(e) => change.edited.push((i, e)),
            ChainState::New => change.new_chains.push(i),
        }
    }
    change.order = order;
    (plan, change)
}

/// The state of a set of the new plan encoded anew, given its old encoding; `None` when the
/// set itself changed (flags, key, comment: only deleting and creating it again would do).
fn set_state(old: Option<&SetSpec>, new: &SetSpec) -> Option<SetState> {
    Some(match old {
        None => SetState::New,
        Some(o) if !o.same_but_elements(new) => return None,
        Some(o) if interval_changed(o, new) => SetState::Refill,
        Some(o) => delta(o, new).map_or(SetState::Kept, SetState::Delta),
    })
}

/// The state of a chain of the new plan encoded anew, given its old encoding; `None` when a base
/// chain comes, goes or changes its hook (a replace then).
fn chain_state(old: Option<&ChainSpec>, new: &ChainSpec) -> Option<ChainState> {
    Some(match old {
        None if new.base.is_some() => return None,
        None => ChainState::New,
        Some(o) if o.base != new.base => return None,
        Some(o) if o.rules != new.rules => ChainState::Rewrite,
        Some(_) => ChainState::Kept,
    })
}

/// `new` (in the model's order) arranged in the kernel's order after an in-place change from
/// `old` (what the kernel holds, in its order), with that change; `None` when only a replace
/// will do: another family, a base chain added, deleted or changed, or a set or map whose
/// definition (flags, key, comment) changed under the same name. Everything else is in place:
/// element updates of sets without intervals, interval sets and maps refilled, sets and chains
/// added and deleted, chains rewritten. Sets whose elements are equal are skipped without
/// building their difference (pod churn touches a few sets of many).
///
/// Interval sets and maps (`cidr_*`, `net_*`, the tier maps `adm_*`, `bl_*`, `pc_*`) are not
/// updated element by element: the kernel checks every interval element it adds against the
/// elements already there, one at a time, so a delta that splits a range or moves a boundary
/// between adjacent ranges (the closing element of one range and the start of the next share a
/// key) is refused as overlapping (`EEXIST`) although the resulting map is valid. They are
/// flushed and filled anew instead, in the same transaction.
pub(crate) fn in_place_update(old: &Ruleset, new: Ruleset) -> Option<(Ruleset, InPlace)> {
    if old.family != new.family {
        return None;
    }
    let old_sets: HashMap<&str, &SetSpec> = old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let old_chains: HashMap<&str, &ChainSpec> = old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let sets = new
        .sets
        .iter()
        .map(|n| set_state(old_sets.get(n.name.as_str()).copied(), n))
        .collect::<Option<Vec<_>>>()?;
    let chains = new
        .chains
        .iter()
        .map(|n| chain_state(old_chains.get(n.name.as_str()).copied(), n))
        .collect::<Option<Vec<_>>>()?;
    let new_sets: HashSet<&str> = new.sets.iter().map(|s| s.name.as_str()).collect();
    let new_chains: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
    let gone_chains: Vec<&ChainSpec> = old
        .chains
        .iter()
        .filter(|c| !new_chains.contains(c.name.as_str()))
        .collect();
    if gone_chains.iter().any(|c| c.base.is_some()) {
        return None;
    }
    let old = Old {
        sets: old.sets.iter().map(|s| s.name.clone()).collect(),
        chains: old.chains.iter().map(|c| c.name.clone()).collect(),
        gone_sets: old
            .sets
            .iter()
            .filter(|s| !new_sets.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect(),
        gone_chains: gone_chains.iter().map(|c| c.name.clone()).collect(),
    };
    Some(assemble(old, new, sets, chains, Handles::default()))
}

/// Whether `o` and `n` are interval sets or maps with different elements: refilled, not
/// updated element by element (see [`in_place_update`]).
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

/// What the kernel holds as far as the writer knows: the model it last committed and that
/// model's encoding, in the same order, so that the next plan can take over what did not change
/// instead of encoding and comparing it again; and the handles the kernel gave the rules of
/// its chains.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    pub table: Table,
    pub plan: Ruleset,
    pub handles: Handles,
    /// The handle of the table those rule handles belong to (the table this writer created).
    pub table_handle: Option<u64>,
}

/// The kernel's rule handles of a table's chains, by chain name, in each chain's rule order;
/// only chains all of whose rules' handles are known.
pub(crate) type Handles = HashMap<String, Vec<u64>>;

/// The plan for `new` and, when one suffices, the in-place change from `old`'s plan to it: the
/// same as [`in_place_update`] of `Ruleset::from_table(new)`, but sets and chains equal in both
/// models (the same `Arc`, as `nft::lower_after` shares them, or equal) are moved over from
/// `old`'s plan, neither encoded nor compared again; a set without intervals whose elements
/// change is patched with the encoding of the changed elements only. On a large node a change
/// touches a few of many sets and chains.
///
/// With a change, the plan is in the kernel's order afterwards (see [`Order`]); without one, in
/// the model's order, for a replace.
pub(crate) fn replan(old: Committed, new: &Table) -> Result<(Ruleset, Option<InPlace>), DataplaneError> {
    let Committed {
        table: old_table,
        plan: old_plan,
        handles: mut old_handles,
        table_handle: _,
    } = old;
    let old_set_order: Vec<String> = old_plan.sets.iter().map(|s| s.name.clone()).collect();
    let old_chain_order: Vec<String> = old_plan.chains.iter().map(|c| c.name.clone()).collect();
    let mut old_sets: HashMap<String, (Arc<Set>, SetSpec)> = old_table
        .sets
        .into_iter()
        .zip(old_plan.sets)
        .map(|(m, s)| (m.name.clone(), (m, s)))
        .collect();
    let mut old_chains: HashMap<String, (Arc<Chain>, ChainSpec)> = old_table
        .chains
        .into_iter()
        .zip(old_plan.chains)
        .map(|(m, c)| (m.name.clone(), (m, c)))
        .collect();
    // Cleared when only a replace will do; the plan is completed all the same.
    let mut in_place = old_plan.family == new.family;

    let mut set_states = Vec::with_capacity(new.sets.len());
    let mut set_specs = Vec::with_capacity(new.sets.len());
    for s in &new.sets {
        let sorted = |v: &[policyc_compiler::nft::Element]| v.windows(2).all(|w| w[0] < w[1]);
        let (spec, state) = match old_sets.remove(&s.name) {
            Some((om, ospec)) if Arc::ptr_eq(&om, s) || *om == **s => (ospec, Some(SetState::Kept)),
            // Sorted model elements encode to sorted kernel elements, one to many: patch.
            Some((om, ospec))
                if !s.interval && om.same_but_elements(s) && sorted(&om.elements) && sorted(&s.elements) =>
            {
                let (remove, add) = merge_diff(&om.elements, &s.elements);
                let (remove, add) = (sets::elements(s, &remove)?, sets::elements(s, &add)?);
                let (spec, delta) = patch(ospec, remove, add);
                (spec, Some(delta.map_or(SetState::Kept, SetState::Delta)))
            }
            old => {
                let spec = sets::set(s)?;
                let state = set_state(old.as_ref().map(|(_, o)| o), &spec);
                (spec, state)
            }
        };
        match state {
            Some(st) => set_states.push(st),
            None => in_place = false,
        }
        set_specs.push(spec);
    }

    let mut chain_states = Vec::with_capacity(new.chains.len());
    let mut chain_specs = Vec::with_capacity(new.chains.len());
    for c in &new.chains {
        let (spec, state) = match old_chains.remove(&c.name) {
            Some((om, ospec)) if Arc::ptr_eq(&om, c) || *om == **c => (ospec, Some(ChainState::Kept)),
            old => {
                let spec = rules::chain(new.family, c)?;
                let state = match chain_state(old.as_ref().map(|(_, o)| o), &spec) {
                    // Rule by rule when the kernel's handles of the old rules are known.
                    Some(ChainState::Rewrite) => Some(
                        old_handles
                            .get(&c.name)
                            .zip(old.as_ref())
                            .and_then(|(h, (_, o))| rule_edits(&o.rules, h, &spec.rules))
                            .map_or(ChainState::Rewrite, ChainState::Edit),
                    ),
                    st => st,
                };
                (spec, state)
            }
        };
        match state {
            Some(st) => chain_states.push(st),
            None => in_place = false,
        }
        chain_specs.push(spec);
    }
    let plan = Ruleset {
        family: new.family,
        chains: chain_specs,
        sets: set_specs,
    };
    // What is left of the old plan is deleted; a base chain only by a replace.
    if !in_place || old_chains.values().any(|(_, c)| c.base.is_some()) {
        return Ok((plan, None));
    }
    let old = Old {
        gone_sets: old_set_order
            .iter()
            .filter(|n| old_sets.contains_key(*n))
            .cloned()
            .collect(),
        gone_chains: old_chain_order
            .iter()
            .filter(|n| old_chains.contains_key(*n))
            .cloned()
            .collect(),
        sets: old_set_order,
        chains: old_chain_order,
    };
    old_handles.retain(|name, _| !old_chains.contains_key(name));
    let (plan, change) = assemble(old, plan, set_states, chain_states, old_handles);
    Ok((plan, Some(change)))
}

#[cfg(test)]
mod tests {
    use super::super::NFT_SET_MAP;
    use super::*;
    use policyc_compiler::cidr::{Family, IpRange};
    use policyc_compiler::model::{AdminAction, Protocol};
    use policyc_compiler::nft::{lower, lower_after, Element, Key, KeyType, TableFamily, Verdict};

    fn lowered(ir: &policyc_compiler::Ir) -> (Table, Ruleset) {
        let table = lower(ir).unwrap();
        let plan = Ruleset::from_table(&table).unwrap();
        (table, plan)
    }

    #[test]
    fn interval_changes_are_refilled() {
        let map = |elements| SetSpec {
            name: "adm_x_in_v4".into(),
            flags: NFT_SET_INTERVAL | NFT_SET_MAP,
            key: KeyType::Addr(Family::V4).into(),
            verdict_map: true,
            size: None,
            udata: Vec::new(),
            elements,
        };
        let dispatch = |elements| SetSpec {
            name: "ingress_dispatch".into(),
            flags: NFT_SET_MAP,
            key: KeyType::Ifname.into(),
            verdict_map: true,
            size: None,
            udata: Vec::new(),
            elements,
        };
        let goto = |c: &str| Some(Verdict::Goto(c.into()));
        let rs = |ranges: Vec<(u128, u128, Option<Verdict>)>, ifaces: &[&str]| Ruleset {
            family: TableFamily::Inet,
            chains: Vec::new(),
            sets: vec![
                map(sets::elements(&interval_map(&ranges), &interval_map(&ranges).elements).unwrap()),
                dispatch(
                    ifaces
                        .iter()
                        .map(|i| Elem {
                            verdict: Some(Verdict::Accept),
                            ..Elem::key(i.as_bytes().to_vec())
                        })
                        .collect(),
                ),
            ],
        };
        let old = rs(vec![(10, 20, goto("a"))], &["cali1"]);
        // Only the dispatch map changes: an element update.
        let (_, change) = in_place_update(&old, rs(vec![(10, 20, goto("a"))], &["cali1", "cali2"])).unwrap();
        assert_eq!(change.sets.len(), 1);
        assert_eq!(change.sets[0].set.name, "ingress_dispatch");
        assert!(change.elements_only());
        // A range split with another verdict, or a verdict changed: the map is refilled, not
        // updated element by element.
        for new in [
            rs(vec![(10, 15, goto("a")), (16, 20, goto("b"))], &["cali1"]),
            rs(vec![(10, 20, goto("b"))], &["cali1"]),
        ] {
            let (plan, change) = in_place_update(&old, new.clone()).unwrap();
            assert_eq!(plan, new);
            assert_eq!(change.refilled, vec![0]);
            assert!(change.sets.is_empty() && !change.elements_only());
        }
        // A set whose definition changes under the same name: a replace.
        let mut other = old.clone();
        other.sets[1].flags |= NFT_SET_INTERVAL;
        assert!(in_place_update(&old, other).is_none());
    }

    /// Kept objects in their old order, then the new ones in the model's order; `restore`
    /// undoes `arrange`.
    #[test]
    fn kernel_order_appends_new_objects() {
        let old: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let new = ["x", "d", "b", "y", "a"];
        let perm = kernel_order(&old, new.iter().copied());
        let listed: Vec<&str> = arrange(&perm, new.to_vec());
        assert_eq!(listed, ["a", "b", "d", "x", "y"]);
        assert_eq!(restore(&perm, listed), new);
        // Nothing added or moved: the model's order.
        let same = kernel_order(&old, old.iter().map(String::as_str));
        assert_eq!(same, [0, 1, 2, 3]);
    }

    fn interval_map(ranges: &[(u128, u128, Option<Verdict>)]) -> Set {
        Set {
            name: "adm_x_in_v4".into(),
            key: KeyType::Addr(Family::V4),
            verdict_map: true,
            interval: true,
            comment: None,
            elements: ranges
                .iter()
                .map(|(a, b, v)| Element {
                    key: Key::Addr(IpRange {
                        family: Family::V4,
                        start: *a,
                        end: *b,
                    }),
                    verdict: v.clone(),
                })
                .collect(),
        }
    }

    /// Taking unchanged parts over from the committed plan gives the plan and the in-place
    /// change that encoding both models afresh gives, through changes of every kind.
    #[test]
    fn replan_is_encoding_afresh() {
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
        let (table, plan) = lowered(&ir);
        let mut committed = Committed {
            table,
            plan,
            handles: Handles::default(),
            table_handle: None,
        };
        let pods: Vec<_> = snap.pods.keys().cloned().collect();
        let policies: Vec<_> = snap.policies.keys().cloned().collect();
        let admin: Vec<_> = snap.admin_policies.keys().cloned().collect();
        let (mut in_place, mut structural, mut patched, mut shared_total) = (0, 0, 0, 0);
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
            let (fresh_table, fresh) = lowered(&new);
            // As the writer lowers: sharing what did not change with the committed table.
            let new_table = lower_after(Some((&ir, &committed.table)), &new).unwrap();
            assert!(new_table == fresh_table, "step {step}: lower_after differs from lower");
            let shared = new_table
                .sets
                .iter()
                .filter(|s| committed.table.sets.iter().any(|o| Arc::ptr_eq(o, s)))
                .count();
            shared_total += shared;
            // The reference: both encoded afresh, the old one in the kernel's order.
            let expected = in_place_update(&committed.plan, fresh.clone());
            let (plan, change) = replan(committed, &new_table).unwrap();
            let (expected_plan, expected_change) = match expected {
                Some((p, c)) => (p, Some(c)),
                None => (fresh.clone(), None),
            };
            assert!(plan == expected_plan, "step {step}: another plan than encoding afresh");
            assert_eq!(change, expected_change, "step {step}");
            let table = match &change {
                Some(c) => {
                    in_place += 1;
                    patched += c.sets.len();
                    if !c.is_elementwise() {
                        structural += 1;
                    }
                    // Back in the model's order, the plan is what encoding afresh gives.
                    assert!(c.order.restore(plan.clone()) == fresh, "step {step}");
                    c.order.arrange_table(&new_table)
                }
                None => new_table,
            };
            committed = Committed {
                table,
                plan,
                handles: Handles::default(),
                table_handle: None,
            };
            ir = new;
        }
        // Policies and admin policies coming, going and changing add and delete sets and
        // chains, and refill tier maps: all in place.
        assert!(
            in_place == 24 && structural > 0,
            "{in_place} in place ({patched} sets), {structural} structural"
        );
        assert!(shared_total > 0, "lower_after shared no set with the committed table");
    }

    /// Pods coming, going and moving without admin policies (whose interval maps a pod change
    /// renames): selector sets are patched element by element, and the result is what encoding
    /// afresh gives.
    #[test]
    fn pod_churn_patches_sets() {
        use policyc_compiler::synth::{cluster, Shape};
        use policyc_compiler::{compile, CompileOptions};
        let shape = Shape {
            pods: 300,
            namespaces: 4,
            policies: 30,
            nodes: 3,
            dual_stack_every: 4,
        };
        let mut snap = cluster(shape, 9);
        let opts = CompileOptions {
            node: Some("node-0".into()),
            ..CompileOptions::default()
        };
        let ir = compile(&snap, &opts);
        let (table, plan) = lowered(&ir);
        let mut committed = Committed {
            table,
            plan,
            handles: Handles::default(),
            table_handle: None,
        };
        let remote: Vec<_> = snap
            .pods
            .iter()
            .filter(|(_, p)| p.node.as_deref() != Some("node-0"))
            .map(|(k, _)| k.clone())
            .collect();
        let mut patched = 0;
        for (step, pod) in remote.iter().take(12).enumerate() {
            let p = snap.pods.get_mut(pod).unwrap();
            match step % 3 {
                0 => p.ips = vec![format!("10.251.0.{step}").parse().unwrap()],
                1 => {
                    p.labels.insert("app".into(), format!("moved-{step}"));
                }
                _ => {
                    snap.pods.remove(pod);
                }
            }
            let new = compile(&snap, &opts);
            let (new_table, fresh) = lowered(&new);
            let expected = in_place_update(&committed.plan, fresh.clone());
            let (plan, change) = replan(committed, &new_table).unwrap();
            assert!(plan == fresh, "step {step}");
            let change = change.expect("remote pod churn is an in-place change");
            assert_eq!(
                Some((&plan, &change)),
                expected.as_ref().map(|(p, c)| (p, c)),
                "step {step}"
            );
            assert!(change.elements_only(), "step {step}: element updates only");
            patched += change.sets.len();
            committed = Committed {
                table: new_table,
                plan,
                handles: Handles::default(),
                table_handle: None,
            };
        }
        assert!(patched > 0);
    }

    /// A tier map whose contents change under the same name is not taken over from the
    /// committed plan, nor changed element by element: it is refilled.
    #[test]
    fn changed_tier_map_is_refilled_by_replan() {
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
        let (table, plan) = lowered(&ir);
        let (changed_table, fresh) = lowered(&changed);
        let (plan, change) = replan(
            Committed {
                table,
                plan,
                handles: Handles::default(),
                table_handle: None,
            },
            &changed_table,
        )
        .unwrap();
        assert!(plan == fresh);
        let change = change.expect("in place");
        assert!(!change.refilled.is_empty(), "{change:?}");
        assert!(change
            .refilled
            .iter()
            .all(|&i| plan.sets[i].flags & NFT_SET_INTERVAL != 0));
        assert!(change.sets.is_empty() && change.new_sets.is_empty() && change.gone_sets.is_empty());
    }
}
