//! Budgets and the circuit breaker: how often a label may act, counted in the kernel across
//! all of its processes, so a runaway chain stops before anyone reads a log.
//!
//! Both are settled once per hook call, at its end (`settle`, called by `hook::frame_when`):
//! the decisions of the call note which budgeted actions they allowed (`note`), then the
//! budgets are charged, and a denied call counts towards the breaker. One place per program
//! keeps the verifier's work flat: settling inside every decision multiplied the paths it
//! explores, and 6.1's verifier gave up on rename.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use agent_common::{
    Action, BREAKER_SLOT, LabelInfo, Limit, LimitKey, MODE_REVOKED, RULE_DENY, Reason, Trigger,
    Verdict, decision_index, limit_index, verdict,
};
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
};

use crate::{
    judge::{self, Dest},
    maps::{self, Pending},
    record::{self, bump},
    revoke,
};

/// A window is one u64 in `WINDOWS`: the millisecond it opened (`bpf_ktime_get_ns` / 10^6) in
/// the high 40 bits, the count in the low 24 (`LIMIT_MAX` fits).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Compare-and-swap attempts before giving up. Each failure means another CPU counted in
/// between, so running out takes that many concurrent actions of one label at once.
const TRIES: u32 = 16;

/// This CPU's note of the hook call under way.
#[inline(always)]
fn pending() -> Option<&'static mut Pending> {
    // SAFETY: per-CPU, and a program runs to its end on one CPU.
    maps::PENDING.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A labelled hook call starts: nothing is noted yet.
#[inline(always)]
pub fn begin() {
    if let Some(p) = pending() {
        p.actions = 0;
    }
}

/// Notes `action` if it was allowed. Called for every decision, so it has no branch but the
/// map's: each branch here would double the paths the verifier walks after every decision.
#[inline(always)]
pub fn note(action: Action, v: Verdict) {
    // 1 for Allow (0), 0 for the other verdicts.
    let allowed = ((v as u32).wrapping_neg() >> 31) ^ 1;
    if let Some(p) = pending() {
        p.actions |= allowed << (action as u32 & 15);
    }
}

/// Notes the destination of a connection, for the event of one over budget.
#[inline(always)]
pub fn note_dest(d: &Dest) {
    if let Some(p) = pending() {
        p.family = d.family;
        p.port = d.port;
        p.addr = d.addr;
    }
}

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
        let count = old & COUNT_MASK;
        let expired = old == 0 || now_ms.saturating_sub(start) >= u64::from(limit.per_ms);
        let (start, count) = if expired { (now_ms, 0) } else { (start, count) };
        if count >= u64::from(limit.max) {
            return None;
        }
        let new = (start << COUNT_BITS) | (count + 1);
        // SAFETY: as above; compiles to BPF_CMPXCHG.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                slot, old, new,
            )
        };
        if swapped {
            return Some((count + 1) as u32);
        }
    }
    None
}

/// Whether the label's policy has a budget for `action`: an allowed one is then charged, and
/// the event of one over it needs the target.
#[inline(always)]
pub fn limited(info: &LabelInfo, action: Action) -> bool {
    info.limits & (1 << action as u16) != 0
}

/// The limit of the label's rule set in `slot`, if its policy sets one.
#[inline(always)]
fn limit(info: &LabelInfo, slot: u32) -> Option<Limit> {
    if u32::from(info.limits) & (1 << slot) == 0 {
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

fn now_ms() -> u64 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() }) / 1_000_000
}

/// Charges the budgets of the actions the call was allowed; the verdict is `Deny` (`Audit` in
/// audit mode) if any of them was over budget, and the first of those is reported.
#[inline(always)]
fn charge(info: &LabelInfo) -> Verdict {
    let Some(p) = pending() else {
        return Verdict::Allow;
    };
    p.actions &= u32::from(info.limits);
    if p.actions == 0 {
        return Verdict::Allow;
    }
    p.info = *info;
    p.now_ms = now_ms();
    p.over = Verdict::Allow as u8;
    p.over_action = 0;
    // SAFETY: a helper call; `charge_one` works on this CPU's `PENDING`.
    unsafe {
        bpf_loop(
            Action::COUNT as u32,
            charge_one as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(p) = pending() else {
        return Verdict::Allow;
    };
    // SAFETY: this CPU's map memory, which the helper's rounds wrote.
    let (over, action) = unsafe {
        (
            core::ptr::read_volatile(&raw const p.over),
            core::ptr::read_volatile(&raw const p.over_action),
        )
    };
    let (Some(v), Some(action)) = (Verdict::from_u8(over), Action::from_u8(action)) else {
        return Verdict::Deny;
    };
    if v == Verdict::Allow {
        return v;
    }
    record::emit(info, action, v, Reason::Budget, |e| match action {
        Action::Connect | Action::Listen => {
            let d = Dest {
                family: p.family,
                port: p.port,
                addr: p.addr,
            };
            judge::fill_dest(e, &d);
        }
        _ => {
            if let Ok(s) = judge::scratch() {
                judge::fill_path(e, s);
            }
        }
    });
    v
}

/// One round of `charge`: the action with discriminant `round`, if the call was allowed it.
/// Over budget, the decision counted as an allow is counted as a denial (audit in audit mode)
/// instead, and `then: revoke` revokes the label. Returns 0 to go on.
#[inline(never)]
extern "C" fn charge_one(round: u64, _ctx: *mut c_void) -> i64 {
    let Some(p) = pending() else {
        return 1;
    };
    let slot = round as u32 & 15;
    if p.actions & (1 << slot) == 0 {
        return 0;
    }
    let Some(action) = Action::from_u8(slot as u8) else {
        return 1;
    };
    let info = &p.info;
    let Some(budget) = limit(info, slot) else {
        return 0;
    };
    if take(limit_index(info.label, slot), &budget, p.now_ms).is_some() {
        return 0;
    }
    bump(&maps::BUDGET_EXCEEDED, limit_index(info.label, slot));
    let v = verdict(RULE_DENY, RULE_DENY, info.mode);
    // The allow counted for it becomes this verdict, on this CPU, whose counter holds it.
    let allowed = decision_index(info.label, action, Verdict::Allow);
    if let Some(n) = maps::DECISIONS.get_ptr_mut(allowed) {
        // SAFETY: a valid, aligned u64 of the map; adding u64::MAX takes one away.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, u64::MAX) };
    }
    record::count(info, action, v);
    if budget.revoke != 0 && v == Verdict::Deny {
        revoke::trip(info.label, Trigger::Budget, action as u8);
    }
    if p.over == Verdict::Allow as u8 {
        p.over_action = action as u8;
    }
    p.over = judge::worst(Verdict::from_u8(p.over).unwrap_or(Verdict::Allow), v) as u8;
    0
}

/// The final verdict of a hook call of a label whose policy sets limits: an allowed call over
/// a budget is refused (in audit mode, reported), which may revoke the label, and a denied one
/// counts towards the breaker, which revokes the label at exactly its threshold.
///
/// The verdict passes through `opaque` first: every path of the judge then reaches the call in
/// one state, and the verifier walks `settle` once rather than once per path.
#[inline(always)]
pub fn settle(info: &LabelInfo, v: Verdict) -> Verdict {
    settle_opaque(info, opaque(v))
}

/// `v`, passed through map memory, which the verifier doesn't track: what follows is checked
/// once for every verdict instead of once per path that produced one.
#[inline(always)]
fn opaque(v: Verdict) -> Verdict {
    let Some(p) = pending() else {
        return v;
    };
    // SAFETY: this CPU's map memory.
    let stored = unsafe {
        core::ptr::write_volatile(&raw mut p.verdict, v as u8);
        core::ptr::read_volatile(&raw const p.verdict)
    };
    match stored {
        0 => Verdict::Allow,
        2 => Verdict::Audit,
        _ => Verdict::Deny,
    }
}

#[inline(never)]
fn settle_opaque(info: &LabelInfo, v: Verdict) -> Verdict {
    let v = if v == Verdict::Allow { charge(info) } else { v };
    if v == Verdict::Deny
        && info.mode != MODE_REVOKED
        && let Some(breaker) = limit(info, BREAKER_SLOT)
        && take(limit_index(info.label, BREAKER_SLOT), &breaker, now_ms()) == Some(breaker.max)
    {
        revoke::trip(info.label, Trigger::Breaker, u8::MAX);
    }
    v
}
