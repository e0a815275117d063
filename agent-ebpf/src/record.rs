//! What every decision leaves behind: a per-CPU count, and for denials, audits and (if asked)
//! allows, an event on the ring buffer.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    Action, COMM_LEN, Event, KernelError, LABEL_EVENTS_ALLOW, LabelInfo, MODE_ORPHANED,
    MODE_REVOKED, Reason, Verdict, decision_index, unjudged,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::bpf_get_current_cgroup_id,
    },
    maps::PerCpuArray,
};

use crate::{limits, maps, process};

/// Adds one to a per-CPU counter. The add is atomic because BPF programs can be preempted by
/// another task on the same CPU (they only disable migration), and a lost update would make
/// the exported counts wrong. (`AtomicU64` has no `fetch_add` on the BPF target; the
/// intrinsic compiles to BPF_ATOMIC_ADD.)
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = counters.get_ptr_mut(index) {
        // SAFETY: the map value is a valid, aligned u64 for the life of the program.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// An action the kernel could not judge because of `e`: counted under its reason, refused
/// (see `agent_common::unjudged`) and recorded with `Reason::Unjudged`, or `Reason::Orphaned`
/// for an orphaned label, which is denied whatever could be judged. Returns the verdict.
#[inline(always)]
pub fn unjudged_action(
    info: &LabelInfo,
    action: Action,
    e: KernelError,
    fill_target: impl FnOnce(&mut Event),
) -> Verdict {
    bump(&maps::ERRORS, e as u32);
    let v = unjudged(info.mode);
    let why = if info.mode == MODE_ORPHANED {
        Reason::Orphaned
    } else if info.mode == MODE_REVOKED {
        Reason::Revoked
    } else {
        Reason::Unjudged
    };
    record(info, action, v, why, fill_target);
    v
}

/// Counts a decision without an event: an allow when allows send none.
#[inline(always)]
pub fn count(info: &LabelInfo, action: Action, v: Verdict) {
    bump(&maps::DECISIONS, decision_index(info.label, action, v));
}

/// Whether the label's allow decisions are sent as events too: `--events-allow` for every
/// label, or the label's own flag (a label being learnt).
#[inline(always)]
pub fn events_allow(info: &LabelInfo) -> bool {
    info.flags & LABEL_EVENTS_ALLOW != 0
        || maps::CONFIG.get(0).map(|c| c.events_allow).unwrap_or(0) != 0
}

/// Counts a decision and, for denials, audits and (if asked) allows, sends an event that says
/// `why`. A full ring buffer is counted per action, never silent. An allowed action is noted
/// for the budgets, charged at the hook's end (see `limits::settle`).
#[inline(always)]
pub fn record(
    info: &LabelInfo,
    action: Action,
    v: Verdict,
    why: Reason,
    fill_target: impl FnOnce(&mut Event),
) {
    count(info, action, v);
    limits::note(action, v);
    if v == Verdict::Allow && !events_allow(info) {
        return;
    }
    emit(info, action, v, why, fill_target);
}

/// Sends the event of a decision.
#[inline(always)]
pub fn emit(
    info: &LabelInfo,
    action: Action,
    v: Verdict,
    why: Reason,
    fill_target: impl FnOnce(&mut Event),
) {
    let Some(mut entry) = maps::EVENTS.reserve::<Event>(0) else {
        bump(&maps::EVENTS_DROPPED, action as u32);
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helpers without pointer arguments.
    e.time_ns = unsafe { bpf_ktime_get_ns() };
    // The task's own cgroup (the label's or one beneath it), for the event's `cgroup`.
    // SAFETY: a helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.pid = pid_tgid as u32;
    e.tgid = (pid_tgid >> 32) as u32;
    e.uid = bpf_get_current_uid_gid() as u32;
    e.label = info.label;
    e.action = action as u8;
    e.verdict = v as u8;
    e.family = 0;
    e.reason = why as u8;
    e.port = 0;
    e.host = 0;
    e._pad2 = [0; 2];
    e.addr = [0; 16];
    e.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    e.path[0] = 0;
    process::fill_process(e);
    fill_target(e);
    entry.submit(0);
}
