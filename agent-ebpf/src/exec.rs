//! exec: `bprm_check_security` runs once the kernel has opened the binary (and again for the
//! interpreter of a script), so `bprm->file` is the real file whatever name or symlink the
//! caller used.

use agent_common::{Action, ERR_SLOTS};
use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};

use crate::{decide, kernel, label, maps};

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // An earlier LSM's denial stands.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some((info, cgroup_id)) = label::current() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: a direct load through the BTF-typed `bprm` keeps the verifier's type of
    // `bprm->file`, which bpf_d_path requires (a bpf_probe_read_kernel result would not do).
    let file = unsafe {
        core::ptr::read_volatile(
            bprm.add(kernel::get(&kernel::LINUX_BINPRM_FILE) as usize) as *const *const u8
        )
    };
    let target = unsafe { file.add(kernel::get(&kernel::FILE_F_PATH) as usize) } as *const path;
    // An internal error is counted and never blocks: a denial-of-service is not a policy.
    decide::path_action(&info, cgroup_id, Action::Exec, target).unwrap_or_else(|slot| {
        decide::bump(&maps::ERRORS, slot.min(ERR_SLOTS - 1));
        0
    })
}
