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
#[unsafe(no_mangle)]
pub static TASK_STRUCT_GROUP_LEADER: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_STRUCT_START_TIME: u64 = 0;
#[unsafe(no_mangle)]
pub static FILE_F_MODE: u64 = 0;
#[unsafe(no_mangle)]
pub static FILE_F_INODE: u64 = 0;
#[unsafe(no_mangle)]
pub static FILE_F_FLAGS: u64 = 0;
#[unsafe(no_mangle)]
pub static DENTRY_D_NAME: u64 = 0;
#[unsafe(no_mangle)]
pub static DENTRY_D_INODE: u64 = 0;
#[unsafe(no_mangle)]
pub static QSTR_NAME: u64 = 0;
#[unsafe(no_mangle)]
pub static INODE_I_NLINK: u64 = 0;
#[unsafe(no_mangle)]
pub static INODE_I_SB: u64 = 0;
#[unsafe(no_mangle)]
pub static INODE_I_INO: u64 = 0;
#[unsafe(no_mangle)]
pub static SUPER_BLOCK_S_DEV: u64 = 0;
#[unsafe(no_mangle)]
pub static DENTRY_D_PARENT: u64 = 0;
#[unsafe(no_mangle)]
pub static QSTR_LEN: u64 = 0;
#[unsafe(no_mangle)]
pub static MOUNT_MNT: u64 = 0;
#[unsafe(no_mangle)]
pub static MOUNT_MNT_PARENT: u64 = 0;
#[unsafe(no_mangle)]
pub static MOUNT_MNT_MOUNTPOINT: u64 = 0;
#[unsafe(no_mangle)]
pub static VFSMOUNT_MNT_ROOT: u64 = 0;
#[unsafe(no_mangle)]
pub static MSGHDR_MSG_NAME: u64 = 0;
#[unsafe(no_mangle)]
pub static MSGHDR_MSG_NAMELEN: u64 = 0;

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
