//! Which label, if any, governs the current task.

use agent_common::{LabelInfo, LabelKey, MODE_REVOKED};
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;

use crate::{
    kernel::{self, get, read},
    maps, revoke,
};

/// The id of the current task's cgroup ancestor at the labels' depth (0 above it): the cgroup
/// of its label, if it has one.
#[inline(always)]
pub fn current_cgroup() -> u64 {
    // SAFETY: a helper without pointer arguments.
    unsafe { bpf_get_current_ancestor_cgroup_id(get(&kernel::LABEL_LEVEL) as i32) }
}

/// `current_cgroup` for another task (a BTF-typed `struct task_struct *`), read the way the
/// helper reads it: task → css_set → default-hierarchy cgroup → its ancestor at the labels'
/// depth → kernfs id.
#[inline(always)]
pub fn cgroup_of(task: *const u8) -> u64 {
    let cset = read::<usize>(task, get(&kernel::TASK_STRUCT_CGROUPS)) as *const u8;
    label_ancestor(read::<usize>(cset, get(&kernel::CSS_SET_DFL_CGRP)) as *const u8)
}

/// `current_cgroup` for a socket (a `struct sock *`): its ancestor at the labels' depth of the
/// cgroup it was created in. That cgroup, not the caller's, picks the cgroup programs that
/// run for the socket (see `dns.rs`).
#[inline(always)]
pub fn cgroup_of_socket(sk: *const u8) -> u64 {
    let at = get(&kernel::SOCK_SK_CGRP_DATA) + get(&kernel::SOCK_CGROUP_DATA_CGROUP);
    label_ancestor(read::<usize>(sk, at) as *const u8)
}

/// The kernfs id of the ancestor of `cgrp` (a `struct cgroup *`) at the labels' depth, 0 when
/// it has none.
#[inline(always)]
fn label_ancestor(cgrp: *const u8) -> u64 {
    let level = get(&kernel::LABEL_LEVEL);
    if cgrp.is_null() || u64::from(read::<u32>(cgrp, get(&kernel::CGROUP_LEVEL))) < level {
        return 0;
    }
    let slot = get(&kernel::CGROUP_ANCESTORS) + 8 * level;
    let ancestor = read::<usize>(cgrp, slot) as *const u8;
    let kn = read::<usize>(ancestor, get(&kernel::CGROUP_KN)) as *const u8;
    read(kn, get(&kernel::KERNFS_NODE_ID))
}

/// The label of the current task, found through its cgroup ancestor at the labels' depth, so
/// that every process and sub-cgroup beneath a label is covered without tracking them.
/// Unlabelled tasks leave after one helper call and one lookup. A revoked label is judged in
/// `MODE_REVOKED`, whatever its policy's mode.
#[inline(always)]
pub fn current() -> Option<LabelInfo> {
    let cgroup_id = current_cgroup();
    if cgroup_id == 0 {
        return None;
    }
    let generation = maps::CONFIG.get(0)?.generation;
    let key = LabelKey {
        cgroup_id,
        generation,
        _pad: 0,
    };
    // SAFETY: the value is copied out before the program can be preempted by a writer.
    let mut info = *unsafe { maps::LABELS.get(key) }?;
    if revoke::revoked(info.label) {
        info.mode = MODE_REVOKED;
    }
    Some(info)
}
