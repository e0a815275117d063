//! The frame of every hook: an earlier LSM's denial stands, unlabelled tasks pass untouched, a
//! labelled task's action is judged, and what can't be judged is refused.

use agent_common::{Hook, KernelError, LabelInfo, Verdict};
use aya_ebpf::programs::LsmContext;

use crate::{
    kernel::{self, get},
    label, limits, maps, record,
};

const EPERM: i32 = 1;

/// The hook's return value for a verdict.
#[inline(always)]
fn errno(v: Verdict) -> i32 {
    if v == Verdict::Deny && get(&kernel::FAKE_ALLOW_ALL) == 0 {
        -EPERM
    } else {
        0
    }
}

/// Whether this program set is the one that judges. During a daemon's take-over the previous
/// set stays attached until this one owns, so every call is judged by one set or (for the
/// instant of the switch) both; a set that doesn't own passes the previous verdict on. The
/// DNS programs (`dns.rs`) are attached side by side the same way, and only the owner's steer.
#[inline(always)]
pub fn owns() -> bool {
    maps::OWNER.get(0).copied() == Some(get(&kernel::INSTANCE))
}

/// Runs `judge` for a labelled task on `hook`. The verdict of the previous program is the
/// argument after the hook's own (`Hook::nargs`).
#[inline(always)]
pub fn frame(
    ctx: &LsmContext,
    hook: Hook,
    judge: impl FnOnce(&LabelInfo) -> Result<Verdict, KernelError>,
) -> i32 {
    frame_when(ctx, hook, || true, judge)
}

/// `frame` for a hook that also sees calls no rule is about (`concerns` returns false): those
/// pass before the label lookup, which is most of what an unlabelled task pays.
#[inline(always)]
pub fn frame_when(
    ctx: &LsmContext,
    hook: Hook,
    concerns: impl FnOnce() -> bool,
    judge: impl FnOnce(&LabelInfo) -> Result<Verdict, KernelError>,
) -> i32 {
    let previous: i32 = ctx.arg(hook.nargs);
    if previous != 0 {
        return previous;
    }
    if !concerns() {
        return 0;
    }
    let Some(info) = label::current() else {
        return 0;
    };
    if !owns() {
        return 0;
    }
    limits::begin();
    let v = match judge(&info) {
        Ok(v) => v,
        // An agent that can make the check fail (a path too deep or too long, a name the
        // kernel can't read) must not get through by it.
        Err(e) => {
            // A path that can't be resolved is refused in `judge` already, with an event that
            // names the file; what gets here has no target to show, so it also gets a line in
            // the daemon's log.
            aya_log_ebpf::warn!(
                ctx,
                "label {}: an internal error (slot {} of actgate_kernel_errors_total's reasons) \
                 left an action unjudged; it was refused",
                info.label,
                e as u32
            );
            record::unjudged_action(&info, hook.actions[0], e, |_| {})
        }
    };
    // Budgets and the breaker, once per call (see `limits`).
    let v = if info.limits != 0 {
        limits::settle(&info, v)
    } else {
        v
    };
    errno(v)
}
