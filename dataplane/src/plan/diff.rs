//! In-place updates as diffs of two models: which sets change by elements only, which chains
//! are rewritten, and when only a full replace gives what nft would create.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use policyc_compiler::nft::{Chain, Element, Set, Table};

use super::{rules, sets, ChainSpec, DataplaneError, Elem, Ruleset, SetSpec, NFT_SET_INTERVAL};

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
    let same_skeleton = old.family == new.family
        && old.chains.len() == new.chains.len()
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

/// Pushes `old` onto `out` when it was encoded from an equal model object (`same`), otherwise
/// what `lower` gives, noting its index and the old version in `fresh`.
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

/// What the kernel holds as far as the writer knows: the model it last committed and that
/// model's encoding, in the same order, so that the next plan can take over what did not change
/// instead of encoding and comparing it again.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    pub table: Table,
    pub plan: Ruleset,
}

/// The plan for `new` and, when one suffices, the in-place change from `old`'s plan to it: the
/// same as `Ruleset::from_table(new)` and [`in_place_update`], but sets and chains equal in both
/// models (the same `Arc`, as `nft::lower_after` shares them, or equal) are moved over from
/// `old`'s plan, neither encoded nor compared again; a set without
/// intervals whose elements change is patched with the encoding of the changed elements only.
/// On a large node a change touches a few of many sets and chains.
pub(crate) fn replan(old: Committed, new: &Table) -> Result<(Ruleset, Option<InPlace>), DataplaneError> {
    let Committed {
        table: old_table,
        plan: old_plan,
    } = old;
    let old_set_order: Vec<String> = old_plan.sets.iter().map(|s| s.name.clone()).collect();
    let old_chain_order: Vec<(String, Option<super::BaseHook>)> =
        old_plan.chains.iter().map(|c| (c.name.clone(), c.base)).collect();
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

    // Encoded anew: (index in the new plan, the old version if there was one).
    let mut fresh_sets: Vec<(usize, Option<SetSpec>)> = Vec::new();
    // Patched with the changed elements: (index in the new plan, the change).
    let mut patched: Vec<(usize, SetDelta)> = Vec::new();
    let mut set_specs = Vec::with_capacity(new.sets.len());
    for s in &new.sets {
        let sorted = |v: &[Element]| v.windows(2).all(|w| w[0] < w[1]);
        match old_sets.remove(&s.name) {
            // Sorted model elements encode to sorted kernel elements, one to many: patch.
            Some((om, ospec))
                if !Arc::ptr_eq(&om, s)
                    && *om != **s
                    && !s.interval
                    && om.same_but_elements(s)
                    && sorted(&om.elements)
                    && sorted(&s.elements) =>
            {
                let (remove, add) = merge_diff(&om.elements, &s.elements);
                let (remove, add) = (sets::elements(s, &remove)?, sets::elements(s, &add)?);
                let (spec, delta) = patch(ospec, remove, add);
                patched.extend(delta.map(|d| (set_specs.len(), d)));
                set_specs.push(spec);
            }
            old => {
                let same = old.as_ref().is_some_and(|(om, _)| Arc::ptr_eq(om, s) || om == s);
                place(&mut set_specs, &mut fresh_sets, old.map(|(_, spec)| spec), same, || {
                    sets::set(s)
                })?;
            }
        }
    }

    let mut fresh_chains: Vec<(usize, Option<ChainSpec>)> = Vec::new();
    let mut chain_specs = Vec::with_capacity(new.chains.len());
    for c in &new.chains {
        let old = old_chains.remove(&c.name);
        let same = old.as_ref().is_some_and(|(om, _)| Arc::ptr_eq(om, c) || om == c);
        place(
            &mut chain_specs,
            &mut fresh_chains,
            old.map(|(_, spec)| spec),
            same,
            || rules::chain(new.family, c),
        )?;
    }
    let same_family = old_plan.family == new.family;
    let plan = Ruleset {
        family: new.family,
        chains: chain_specs,
        sets: set_specs,
    };

    let same_skeleton = same_family
        && plan.sets.iter().map(|s| &s.name).eq(old_set_order.iter())
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

#[cfg(test)]
mod tests {
    use super::super::NFT_SET_MAP;
    use super::*;
    use policyc_compiler::cidr::{Family, IpRange};
    use policyc_compiler::model::{AdminAction, Protocol};
    use policyc_compiler::nft::{lower, lower_after, Key, KeyType, TableFamily, Verdict};

    fn lowered(ir: &policyc_compiler::Ir) -> (Table, Ruleset) {
        let table = lower(ir).unwrap();
        let plan = Ruleset::from_table(&table).unwrap();
        (table, plan)
    }

    #[test]
    fn interval_changes_are_structural() {
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
        let change = in_place_update(&old, &rs(vec![(10, 20, goto("a"))], &["cali1", "cali2"])).unwrap();
        assert_eq!(change.sets.len(), 1);
        assert_eq!(change.sets[0].set.name, "ingress_dispatch");
        assert!(change.chains.is_empty());
        // A range split with another verdict, or a verdict changed: structural.
        assert!(in_place_update(&old, &rs(vec![(10, 15, goto("a")), (16, 20, goto("b"))], &["cali1"])).is_none());
        assert!(in_place_update(&old, &rs(vec![(10, 20, goto("b"))], &["cali1"])).is_none());
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
        let mut committed = Committed { table, plan };
        let pods: Vec<_> = snap.pods.keys().cloned().collect();
        let policies: Vec<_> = snap.policies.keys().cloned().collect();
        let admin: Vec<_> = snap.admin_policies.keys().cloned().collect();
        let (mut in_place, mut replaced, mut patched, mut shared_total) = (0, 0, 0, 0);
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
            let (plan, change) = replan(committed, &new_table).unwrap();
            let (_, old_fresh) = lowered(&ir);
            assert!(plan == fresh, "step {step}: another plan than encoding afresh");
            assert_eq!(change, in_place_update(&old_fresh, &fresh), "step {step}");
            match change {
                Some(c) => {
                    in_place += 1;
                    patched += c.sets.len();
                }
                None => replaced += 1,
            }
            committed = Committed { table: new_table, plan };
            ir = new;
        }
        assert!(
            in_place > 0 && replaced > 0,
            "{in_place} in place ({patched} sets), {replaced} replaced"
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
        let mut committed = Committed { table, plan };
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
            let old_fresh = committed.plan.clone();
            let (plan, change) = replan(committed, &new_table).unwrap();
            assert!(plan == fresh, "step {step}");
            let change = change.expect("remote pod churn is an in-place change");
            assert_eq!(
                Some(&change),
                in_place_update(&old_fresh, &fresh).as_ref(),
                "step {step}"
            );
            assert!(change.chains.is_empty(), "step {step}: no chain changes");
            patched += change.sets.len();
            committed = Committed { table: new_table, plan };
        }
        assert!(patched > 0);
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
        let (table, plan) = lowered(&ir);
        let (changed_table, fresh) = lowered(&changed);
        let (plan, change) = replan(Committed { table, plan }, &changed_table).unwrap();
        assert!(plan == fresh);
        assert_eq!(change, None);
    }
}
