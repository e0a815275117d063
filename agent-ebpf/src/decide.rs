//! The shared part of every hook: rule lookup → verdict → counter → event → return value.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    Action, COMM_LEN, Event, LabelInfo, MODE_AUDIT, PATH_KEY_DATA, RULE_ALLOW, RULE_DENY, Verdict,
    decision_index, path_key_header,
};
use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_d_path, bpf_get_current_task},
    },
    maps::{PerCpuArray, lpm_trie::Key},
};

use crate::{
    kernel,
    maps::{self, Scratch},
};

const EPERM: i32 = 1;

/// Turns the flags of the longest matching rule into a verdict: deny beats allow, and the
/// label's default applies when no rule matched.
#[inline(always)]
pub fn verdict(flags: u8, default: u8, mode: u8) -> Verdict {
    let denied = if flags & RULE_DENY != 0 {
        true
    } else if flags & RULE_ALLOW != 0 {
        false
    } else {
        default == RULE_DENY
    };
    match (denied, mode == MODE_AUDIT) {
        (false, _) => Verdict::Allow,
        (true, false) => Verdict::Deny,
        (true, true) => Verdict::Audit,
    }
}

/// The hook's return value for a verdict.
#[inline(always)]
pub fn errno(v: Verdict) -> i32 {
    if v == Verdict::Deny && !fake_allow_all() {
        -EPERM
    } else {
        0
    }
}

#[inline(always)]
fn events_allow() -> bool {
    maps::CONFIG.get(0).map(|c| c.events_allow).unwrap_or(0) != 0
}

#[inline(always)]
fn fake_allow_all() -> bool {
    kernel::get(&kernel::FAKE_ALLOW_ALL) != 0
}

/// Adds one to a per-CPU counter. The add is atomic because BPF programs can be preempted by
/// another task on the same CPU (they only disable migration), and a lost update would make
/// the exported counts wrong. (`AtomicU64` has no `fetch_add` on the BPF target, the
/// intrinsic compiles to BPF_ATOMIC_ADD.)
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = counters.get_ptr_mut(index) {
        // SAFETY: the map value is a valid, aligned u64 for the life of the program.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// The per-CPU scratch buffer.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU and the program doesn't migrate, so nobody else holds it meanwhile.
    maps::SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Judges an action on a path for a labelled task: resolves the path only when a rule or an
/// event needs it, looks the rules up once, counts and reports the verdict.
#[inline(always)]
pub fn path_action(
    info: &LabelInfo,
    cgroup_id: u64,
    action: Action,
    target: *const path,
) -> Result<i32, u32> {
    let a = action as usize;
    let has_rules = info.has_rules.get(a).copied().unwrap_or(0) != 0;
    let default = info.defaults.get(a).copied().unwrap_or(0);
    if !has_rules {
        // Only the default can apply: skip resolving the path unless an event needs it.
        let v = verdict(0, default, info.mode);
        if v == Verdict::Allow && !events_allow() {
            bump(&maps::DECISIONS, decision_index(info.label, action, v));
            return Ok(0);
        }
    }
    let Some(s) = scratch() else {
        return Err(agent_common::ERR_SCRATCH);
    };
    // SAFETY: `target` came from a BTF-typed hook argument; bpf_d_path checks it.
    let len = unsafe {
        bpf_d_path(
            target as *mut path,
            s.path.as_mut_ptr() as *mut _,
            s.path.len() as u32,
        )
    };
    if len <= 0 {
        return Err(agent_common::ERR_PATH);
    }
    let mut flags = 0;
    if has_rules {
        s.header = path_key_header(info.ruleset, action);
        // The key's own length: the trie compares each rule's prefix against it. Bytes
        // bpf_d_path leaves after the NUL never matter, because no rule has a NUL before its end.
        s.prefix_len = (8 * PATH_KEY_DATA) as u32;
        // SAFETY: `Scratch` starts with an LPM key: prefix_len, then PATH_KEY_DATA bytes.
        let key = unsafe { &*(s as *const Scratch as *const Key<[u8; PATH_KEY_DATA]>) };
        flags = maps::PATH_RULES.get(key).copied().unwrap_or(0);
    }
    let v = verdict(flags, default, info.mode);
    record(info, cgroup_id, action, v, |e| {
        // SAFETY: reads our own map memory.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(s.path.as_ptr(), &mut e.path) };
    });
    Ok(errno(v))
}

/// Counts a decision and, for denials, audits and (if asked) allows, sends an event. A full
/// ring buffer is counted per action, never silent.
#[inline(always)]
pub fn record(
    info: &LabelInfo,
    cgroup_id: u64,
    action: Action,
    v: Verdict,
    fill_target: impl FnOnce(&mut Event),
) {
    bump(&maps::DECISIONS, decision_index(info.label, action, v));
    if v == Verdict::Allow && !events_allow() {
        return;
    }
    let Some(mut entry) = maps::EVENTS.reserve::<Event>(0) else {
        bump(&maps::EVENTS_DROPPED, action as u32);
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below or zeroed.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let pid_tgid = bpf_get_current_pid_tgid();
    e.time_ns = unsafe { bpf_ktime_get_ns() };
    e.cgroup_id = cgroup_id;
    e.pid = pid_tgid as u32;
    e.tgid = (pid_tgid >> 32) as u32;
    e.ppid = parent_tgid();
    e.uid = bpf_get_current_uid_gid() as u32;
    e.label = info.label;
    e.action = action as u8;
    e.verdict = v as u8;
    e.family = 0;
    e._pad = 0;
    e.port = 0;
    e._pad2 = [0; 6];
    e.addr = [0; 16];
    e.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    e.path[0] = 0;
    fill_target(e);
    entry.submit(0);
}

/// The tgid of the current task's parent, through BTF offsets the daemon passed in.
#[inline(always)]
fn parent_tgid() -> u32 {
    // SAFETY: bpf_probe_read_kernel checks every read.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let parent: *const u8 = match bpf_probe_read_kernel(
            task.add(kernel::get(&kernel::TASK_STRUCT_REAL_PARENT) as usize) as *const *const u8,
        ) {
            Ok(p) => p,
            Err(_) => return 0,
        };
        bpf_probe_read_kernel(
            parent.add(kernel::get(&kernel::TASK_STRUCT_TGID) as usize) as *const u32
        )
        .unwrap_or(0)
    }
}
