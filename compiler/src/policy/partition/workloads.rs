//! Workload classes: which policies apply to a task, by its deepest selected cgroup and its
//! uid.

use std::collections::BTreeSet;

use super::{ANY_UID, CgroupClass, hash::HashMap};
use crate::policy::model::{Operation, PolicySet};

/// Selected cgroups, `(S, uid) → W` entries, and the applying policies of each `W`.
pub(super) type Workloads = (Vec<CgroupClass>, Vec<((u32, u32), u32)>, Vec<Vec<usize>>);

/// Workload classes: `S` per selected cgroup, `W` per distinct set of applying policies.
pub(super) fn classes(set: &PolicySet, op: Operation) -> Workloads {
    let sectioned: Vec<usize> =
        set.policies.iter().enumerate().filter(|(_, p)| p.default_of(op).is_some()).map(|(i, _)| i).collect();
    let paths: BTreeSet<&Vec<String>> =
        sectioned.iter().map(|&i| &set.policies[i].cgroup).filter(|c| !c.is_empty()).collect();
    let cgroups: Vec<CgroupClass> = paths
        .iter()
        .enumerate()
        .map(|(i, c)| CgroupClass { path: format!("/{}", c.join("/")), level: c.len() as u32, class: i as u32 + 1 })
        .collect();
    let uids: BTreeSet<u32> = sectioned.iter().filter_map(|&i| set.policies[i].uid).collect();
    let mut classes: Vec<Vec<usize>> = vec![Vec::new()];
    let mut class_ids: HashMap<Vec<usize>, u32> = HashMap::default();
    class_ids.insert(Vec::new(), 0);
    let mut entries = Vec::new();
    let empty = Vec::new();
    let selected: Vec<(u32, &Vec<String>)> =
        std::iter::once((0, &empty)).chain(paths.iter().enumerate().map(|(i, c)| (i as u32 + 1, *c))).collect();
    for (s, path) in selected {
        let mut intern = |policies: Vec<usize>| {
            let next = classes.len() as u32;
            *class_ids.entry(policies.clone()).or_insert_with(|| {
                classes.push(policies);
                next
            })
        };
        let applying = |uid: Option<u32>| -> Vec<usize> {
            sectioned
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &set.policies[i];
                    path.starts_with(&p.cgroup) && (p.uid.is_none() || p.uid == uid)
                })
                .collect()
        };
        let any = intern(applying(None));
        if any != 0 {
            entries.push(((s, ANY_UID), any));
        }
        for &uid in &uids {
            let w = intern(applying(Some(uid)));
            if w != any {
                entries.push(((s, uid), w));
            }
        }
    }
    (cgroups, entries, classes)
}
