//! exec: `bprm_check_security` runs once the kernel has opened the binary (and again for the
//! interpreter of a script), so `bprm->file` is the real file whatever name or symlink the
//! caller used. The last binary checked is the one the process runs, which `process.rs`
//! remembers for the process's events.

use agent_common::Hook;
use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};

use crate::{
    hook::frame,
    judge,
    kernel::{self, Inode, field, get},
    path::Target,
};

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::BPRM_CHECK_SECURITY, |info| {
        let bprm: *const u8 = ctx.arg(0);
        // SAFETY: a direct load through the BTF-typed `bprm` keeps the verifier's type of
        // `bprm->file`, which bpf_d_path requires (a bpf_probe_read_kernel result would not).
        let file = unsafe {
            core::ptr::read_volatile(
                bprm.add(get(&kernel::LINUX_BINPRM_FILE) as usize) as *const *const u8
            )
        };
        let target = file.wrapping_add(get(&kernel::FILE_F_PATH) as usize) as *const path;
        // Another hard link to a denied binary is the same file: judge it by inode too.
        let inode = Inode::of(
            field::<usize>(file, get(&kernel::FILE_F_INODE)) as *const u8,
            false,
        );
        judge::exec_action(info, Target::Resolved(target), inode)
    })
}
