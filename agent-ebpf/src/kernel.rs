//! Values the daemon writes into .rodata before loading.
//!
//! Rust eBPF has no CO-RE, and kernel struct offsets differ between kernels (`file.f_path` is at
//! 16 on 6.1 and at 64 on 6.12), so the daemon reads them from /sys/kernel/btf/vmlinux.

#[unsafe(no_mangle)]
pub static LINUX_BINPRM_FILE: u64 = 0;
#[unsafe(no_mangle)]
pub static FILE_F_PATH: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_STRUCT_REAL_PARENT: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_STRUCT_TGID: u64 = 0;

/// Depth of the label cgroups (`<cgroup2>/actgate/<label>`) below the cgroup v2 root.
#[unsafe(no_mangle)]
pub static LABEL_LEVEL: u64 = 0;

/// Test-only switch for the start-up self-test: when set, the hooks allow everything, so the
/// daemon's proof of enforcement must fail.
#[unsafe(no_mangle)]
pub static FAKE_ALLOW_ALL: u64 = 0;

/// Reads one of the globals above. The volatile read stops LLVM from folding in the
/// compile-time zero.
#[inline(always)]
pub fn get(global: &'static u64) -> u64 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(global) }
}
