//! Hooks that make several judgments of names (rename, link, unlink, rmdir) make each one, an
//! action on a name, a step, and judge the steps in the rounds of one `bpf_loop`: the verifier
//! checks one judgment, however many the call makes. Inlined one after the other, a rename's judgments
//! cost 6.1's verifier 735,000 instructions, ten seconds of every daemon start.

use agent_common::{Action, KernelError, LabelInfo, Verdict};
use aya_ebpf::{bindings::path, cty::c_void, helpers::generated::bpf_loop};

use crate::{
    judge::{self, worst},
    kernel::Inode,
    maps::{self, Step},
    path::Target,
    record,
};

/// This CPU's steps of the hook call under way.
#[inline(always)]
fn state() -> Option<&'static mut maps::Steps> {
    // SAFETY: per-CPU, and a program runs to its end on one CPU.
    maps::STEPS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The judgments of one hook call, made in the order they are added; the first denial ends
/// them.
pub struct Steps(&'static mut maps::Steps);

impl Steps {
    #[inline(always)]
    pub fn new(info: &LabelInfo) -> Result<Steps, KernelError> {
        let s = state().ok_or(KernelError::ScratchUnavailable)?;
        s.info = *info;
        s.count = 0;
        s.done = 0;
        s.verdict = Verdict::Allow as u8;
        s.resolved_at = 0;
        s.resolved_dentry = 0;
        Ok(Steps(s))
    }

    /// `actions` on the entry `dentry` on the mount of `at`, one step each; `guard` as for
    /// `judge::moved_path`.
    #[inline(always)]
    pub fn add(
        &mut self,
        at: *const path,
        dentry: *const u8,
        inode: Option<Inode>,
        actions: &[Action],
        guard: bool,
    ) {
        for action in actions {
            let n = self.0.count as usize;
            // `MAX_STEPS` holds every hook's list. A step that didn't fit is still counted: no
            // round judges it, so `judge` refuses the call.
            self.0.count += 1;
            if let Some(step) = self.0.steps.get_mut(n) {
                *step = Step {
                    at: at as u64,
                    dentry: dentry as u64,
                    dev: inode.map_or(0, |i| i.dev),
                    ino: inode.map_or(0, |i| i.ino),
                    action: *action as u8,
                    guard: guard as u8,
                    has_inode: inode.is_some() as u8,
                    _pad: [0; 5],
                };
            }
        }
    }

    /// Judges the steps: the worst verdict, each step recorded as it is judged.
    #[inline(always)]
    pub fn judge(self) -> Result<Verdict, KernelError> {
        let count = self.0.count;
        // SAFETY: a helper call; `judge_one` works on this CPU's `STEPS`.
        unsafe { bpf_loop(count, judge_one as *mut c_void, core::ptr::null_mut(), 0) };
        let s = state().ok_or(KernelError::ScratchUnavailable)?;
        // SAFETY: this CPU's map memory, which the helper's rounds wrote.
        let (done, v) = unsafe {
            (
                core::ptr::read_volatile(&raw const s.done),
                core::ptr::read_volatile(&raw const s.verdict),
            )
        };
        match Verdict::from_u8(v) {
            Some(Verdict::Deny) => Ok(Verdict::Deny),
            Some(v) if done == count => Ok(v),
            // Steps left unjudged: one didn't fit, or a round couldn't find its state.
            _ => Err(KernelError::ScratchUnavailable),
        }
    }
}

/// Round `index` of `Steps::judge`. Returns 1 to stop: at a denial, or without its state or
/// its step.
#[inline(never)]
extern "C" fn judge_one(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = state() else {
        return 1;
    };
    let Some(step) = s.steps.get(index as usize).copied() else {
        return 1;
    };
    let Some(action) = Action::from_u8(step.action) else {
        return 1;
    };
    let target = Target::Walk(step.at as *const path, step.dentry as *const u8);
    let inode = (step.has_inode != 0).then_some(Inode {
        dev: step.dev,
        ino: step.ino,
    });
    let mut resolved = s.resolved_at == step.at && s.resolved_dentry == step.dentry;
    let v = match judge::step(
        &s.info,
        target,
        inode,
        action,
        step.guard != 0,
        &mut resolved,
    ) {
        Ok(v) => v,
        Err(e) => record::unjudged_action(&s.info, action, e, |_| {}),
    };
    (s.resolved_at, s.resolved_dentry) = if resolved {
        (step.at, step.dentry)
    } else {
        (0, 0)
    };
    let worse = worst(Verdict::from_u8(s.verdict).unwrap_or(Verdict::Deny), v);
    s.verdict = worse as u8;
    s.done += 1;
    i64::from(v == Verdict::Deny)
}
