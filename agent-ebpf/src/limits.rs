//! Budgets and the circuit breaker: how often a label may act, counted in the kernel across
//! all of its processes, so a runaway chain stops before anyone reads a log.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use agent_common::{
    Action, BREAKER_SLOT, LabelInfo, Limit, LimitKey, MODE_REVOKED, RULE_DENY, Trigger, Verdict,
    limit_index, verdict,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{maps, record::bump, revoke};

/// A window is one u64 in `WINDOWS`: the millisecond it opened (`bpf_ktime_get_ns` / 10^6) in
/// the high 40 bits, the count in the low 24 (`LIMIT_MAX` fits).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Compare-and-swap attempts before giving up. Each failure means another CPU counted in
/// between, so running out takes that many concurrent actions of one label at once.
const TRIES: u32 = 16;

/// Counts one more action in the window at `index` and returns the new count, or `None` when
/// the window already holds `limit.max` (nothing is counted then).
///
/// How the window is kept: it opens at the first counted action and lasts `per_ms`; the first
/// action after that opens the next one. The count lives in one u64 of a shared (not per-CPU)
/// array together with the window's start, and every change is a compare-and-swap of that
/// u64, so processes of the label on several CPUs can't both take the last unit, nor lose a
/// count, nor restart a window twice. If the swap keeps failing, the action is counted as
/// over the limit: a budget fails closed.
#[inline(always)]
fn take(index: u32, limit: &Limit, now_ms: u64) -> Option<u32> {
    let slot = maps::WINDOWS.get_ptr_mut(index)?;
    for _ in 0..TRIES {
        // SAFETY: a valid, aligned u64 of the map for the life of the program.
        let old = unsafe { core::ptr::read_volatile(slot) };
        let start = old >> COUNT_BITS;
        let count = (old & COUNT_MASK) as u32;
        let (start, count) = if old == 0 || now_ms.saturating_sub(start) >= u64::from(limit.per_ms)
        {
            (now_ms, 0)
        } else {
            (start, count)
        };
        if count >= limit.max {
            return None;
        }
        let new = (start << COUNT_BITS) | u64::from(count + 1);
        // SAFETY: as above; compiles to BPF_CMPXCHG.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                slot, old, new,
            )
        };
        if swapped {
            return Some(count + 1);
        }
    }
    None
}

/// The limit of the label's rule set in `slot`, if its policy sets one.
#[inline(always)]
fn limit(info: &LabelInfo, slot: u32) -> Option<Limit> {
    if info.limits & (1 << slot) == 0 {
        return None;
    }
    let key = LimitKey {
        ruleset: info.ruleset,
        slot: slot as u8,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    unsafe { maps::LIMITS.get(key) }.copied()
}

/// The final verdict on `action` of a label whose policy sets limits: an allowed action over
/// its budget is refused (in audit mode, reported), which may revoke the label, and a denial
/// counts towards the breaker, which revokes the label at exactly its threshold.
///
/// Not inlined: every decision goes through here, and one copy per program keeps the
/// programs small.
#[inline(never)]
pub fn settle(info: &LabelInfo, action: Action, v: Verdict) -> Verdict {
    // SAFETY: a helper without arguments.
    let now_ms = unsafe { bpf_ktime_get_ns() } / 1_000_000;
    let slot = action as u32;
    let mut v = v;
    if v == Verdict::Allow
        && let Some(budget) = limit(info, slot)
        && take(limit_index(info.label, slot), &budget, now_ms).is_none()
    {
        bump(&maps::BUDGET_EXCEEDED, limit_index(info.label, slot));
        v = verdict(RULE_DENY, RULE_DENY, info.mode);
        if budget.revoke != 0 && v == Verdict::Deny {
            revoke::trip(info.label, Trigger::Budget, action);
        }
    }
    if v == Verdict::Deny
        && info.mode != MODE_REVOKED
        && let Some(breaker) = limit(info, BREAKER_SLOT)
        && take(limit_index(info.label, BREAKER_SLOT), &breaker, now_ms) == Some(breaker.max)
    {
        revoke::trip(info.label, Trigger::Breaker, action);
    }
    v
}
