//! Which label, if any, governs the current task.

use agent_common::{LabelInfo, LabelKey};
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;

use crate::{kernel, maps};

/// The label of the current task, found through its cgroup ancestor at the labels' depth, so
/// that every process and sub-cgroup beneath a label is covered without tracking them.
/// Unlabelled tasks leave after one helper call and one lookup.
#[inline(always)]
pub fn current() -> Option<LabelInfo> {
    // SAFETY: a helper without pointer arguments.
    let cgroup_id =
        unsafe { bpf_get_current_ancestor_cgroup_id(kernel::get(&kernel::LABEL_LEVEL) as i32) };
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
    let info = unsafe { maps::LABELS.get(key) }?;
    Some(*info)
}
