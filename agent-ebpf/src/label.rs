//! Which label, if any, governs the current task.
//!
//! A label's cgroups may sit at any level of the hierarchy: actgate's own
//! (`<cgroup2>/actgate/<label>`) and those a policy binds (`cgroups:`), such as a service's or a
//! container's. `Config::levels` lists the levels in use, shallowest first; a task's label is
//! found through its ancestor at each, so everything beneath a label's cgroup is covered
//! without tracking processes, and an unlabelled task costs one helper call and one lookup per
//! level in use (at most `MAX_LABEL_LEVELS`).

use agent_common::{Config, LabelInfo, LabelKey, MAX_LABEL_LEVELS, MODE_REVOKED};
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;

use crate::{
    kernel::{self, get, read},
    maps, revoke,
};

/// The first of `ancestor(level)` over the levels in use that is a label's cgroup in the
/// generation in force: its id and the label's entry. `ancestor` gives 0 for a level deeper
/// than the cgroup itself. A revoked label is judged in `MODE_REVOKED`, whatever its policy's
/// mode.
#[inline(always)]
fn find(ancestor: impl Fn(u32) -> u64) -> Option<(u64, LabelInfo)> {
    // Read in place (a copy would cost stack the hooks don't have): the generation and the
    // levels may come from two of the daemon's writes, so it keeps the levels of both
    // generations while it switches.
    let config: &Config = maps::CONFIG.get(0)?;
    let generation = config.generation;
    for i in 0..MAX_LABEL_LEVELS {
        let level = config.levels[i];
        if level == 0 {
            return None;
        }
        let cgroup_id = ancestor(u32::from(level));
        if cgroup_id == 0 {
            // Deeper than the task's cgroup, and the next levels are deeper still.
            return None;
        }
        let key = LabelKey {
            cgroup_id,
            generation,
            _pad: 0,
        };
        // SAFETY: the value is copied out before the program can be preempted by a writer.
        if let Some(info) = unsafe { maps::LABELS.get(key) } {
            let mut info = *info;
            if revoke::revoked(info.label) {
                info.mode = MODE_REVOKED;
            }
            return Some((cgroup_id, info));
        }
    }
    None
}

/// The label of the current task.
#[inline(always)]
pub fn current() -> Option<LabelInfo> {
    find(current_ancestor).map(|(_, info)| info)
}

/// The id of the current task's label cgroup, 0 when it has none.
#[inline(always)]
pub fn current_cgroup() -> u64 {
    find(current_ancestor).map_or(0, |(id, _)| id)
}

/// `current_cgroup` for another task (a BTF-typed `struct task_struct *`), read the way the
/// helper reads it: task → css_set → default-hierarchy cgroup → its ancestors.
#[inline(always)]
pub fn cgroup_of(task: *const u8) -> u64 {
    let cset = read::<usize>(task, get(&kernel::TASK_STRUCT_CGROUPS)) as *const u8;
    let cgrp = read::<usize>(cset, get(&kernel::CSS_SET_DFL_CGRP)) as *const u8;
    find(|level| ancestor_of(cgrp, level)).map_or(0, |(id, _)| id)
}

/// `current_cgroup` for a socket (a `struct sock *`), through the cgroup it was created in.
/// That cgroup, not the caller's, picks the cgroup programs that run for the socket (see
/// `dns.rs`).
#[inline(always)]
pub fn cgroup_of_socket(sk: *const u8) -> u64 {
    let at = get(&kernel::SOCK_SK_CGRP_DATA) + get(&kernel::SOCK_CGROUP_DATA_CGROUP);
    let cgrp = read::<usize>(sk, at) as *const u8;
    find(|level| ancestor_of(cgrp, level)).map_or(0, |(id, _)| id)
}

#[inline(always)]
fn current_ancestor(level: u32) -> u64 {
    // SAFETY: a helper without pointer arguments.
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
}

/// The kernfs id of the ancestor of `cgrp` (a `struct cgroup *`) at `level`, 0 when `cgrp` is
/// shallower.
#[inline(always)]
fn ancestor_of(cgrp: *const u8, level: u32) -> u64 {
    if cgrp.is_null() || read::<u32>(cgrp, get(&kernel::CGROUP_LEVEL)) < level {
        return 0;
    }
    let slot = get(&kernel::CGROUP_ANCESTORS) + 8 * u64::from(level);
    let ancestor = read::<usize>(cgrp, slot) as *const u8;
    let kn = read::<usize>(ancestor, get(&kernel::CGROUP_KN)) as *const u8;
    read(kn, get(&kernel::KERNFS_NODE_ID))
}
