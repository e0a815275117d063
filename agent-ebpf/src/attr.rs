//! files.write for changes to a file's attributes that no `path_*` hook sees: extended
//! attributes, POSIX ACLs (which rewrite the mode bits past the chmod rule) and timestamps.
//!
//! These hooks get a dentry without its mount, so the path is rebuilt through a mount of the
//! whole file system: the same file seen through a bind mount of one of its directories is
//! named by its path under that whole mount (see the README's Limits).

use agent_common::{Action, Hook, KernelError, LabelInfo, Verdict};
use aya_ebpf::{
    bindings::path, helpers::generated::bpf_get_current_task, macros::lsm, programs::LsmContext,
};

use crate::{
    file::{MNT_INTERNAL, dentry_inode, on_protected_sb},
    hook::frame_when,
    judge::{path_actions, protected},
    kernel::{self, Inode, field, get, read},
    path::Target,
};

/// The number of arguments of this kernel's `inode_setattr`: 6.9 put the mount's idmap before
/// the dentry (3), earlier kernels have (dentry, attr) (2). The daemon reads it from BTF.
#[unsafe(no_mangle)]
pub static INODE_SETATTR_NARGS: u64 = 0;

/// Where a super block's list of mounts points into a `struct mount`: at its `mnt_instance`
/// (a `list_head`, 6.1 to 6.12), or at its start (a plain `struct mount *`, with
/// `mnt_next_for_sb` the link, on newer kernels such as 6.18). The daemon reads it from BTF.
#[unsafe(no_mangle)]
pub static MOUNT_SB_LIST_BIAS: u64 = 0;

/// The mounts of one file system looked at for a mount of all of it.
const MAX_MOUNTS: u32 = 16;

const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
const ATTR_ATIME_SET: u32 = 1 << 7;
const ATTR_MTIME_SET: u32 = 1 << 8;

/// Whether the current task acts with its own credentials. The kernel acting for someone
/// else, such as overlayfs copying a file up (xattrs, times) with its mounter's credentials
/// (override_creds), is not the task's doing; the task's own call was judged on the overlay.
#[inline(always)]
fn own_credentials() -> bool {
    // SAFETY: a helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    read::<usize>(task, get(&kernel::TASK_STRUCT_CRED))
        == read::<usize>(task, get(&kernel::TASK_STRUCT_REAL_CRED))
}

/// A `struct vfsmount *` that mounts all of the file system `sb` (a `struct super_block *`),
/// the oldest first; None when the kernel alone mounts it (nothing on it has a path a rule
/// could name).
#[inline(always)]
fn whole_mount(sb: *const u8) -> Result<Option<usize>, KernelError> {
    let head = sb as usize + get(&kernel::SUPER_BLOCK_S_MOUNTS) as usize;
    let root = read::<usize>(sb, get(&kernel::SUPER_BLOCK_S_ROOT));
    let bias = get(&MOUNT_SB_LIST_BIAS) as usize;
    // Either list ends at its head (list_head) or at NULL (the newer singly linked list).
    let mut node = read::<usize>(head as *const u8, 0);
    let mut mounted = false;
    for _ in 0..MAX_MOUNTS {
        if node == head || node == 0 {
            return if mounted {
                Err(KernelError::NoMount)
            } else {
                Ok(None)
            };
        }
        let mount = node.wrapping_sub(bias);
        let vfsmnt = mount.wrapping_add(get(&kernel::MOUNT_MNT) as usize);
        let flags = read::<u32>(vfsmnt as *const u8, get(&kernel::VFSMOUNT_MNT_FLAGS));
        if flags & MNT_INTERNAL == 0 {
            mounted = true;
            if read::<usize>(vfsmnt as *const u8, get(&kernel::VFSMOUNT_MNT_ROOT)) == root {
                return Ok(Some(vfsmnt));
            }
        }
        node = read::<usize>(mount as *const u8, get(&kernel::MOUNT_SB_LINK));
    }
    Err(KernelError::NoMount)
}

/// A change to the attributes of the file behind `dentry` (a BTF-typed `struct dentry *`).
#[inline(always)]
fn attr_write(info: &LabelInfo, dentry: *const u8) -> Result<Verdict, KernelError> {
    let inode = dentry_inode(dentry);
    if inode.is_null() {
        return Err(KernelError::NoMount);
    }
    let sb = field::<usize>(inode, get(&kernel::INODE_I_SB)) as *const u8;
    let mount = whole_mount(sb);
    // A `struct path` ({ vfsmount *mnt; dentry *dentry; }) for the walk, which reads it with
    // bpf_probe_read_kernel.
    let at = [
        match mount {
            Ok(Some(mnt)) => mnt,
            _ => 0,
        },
        dentry as usize,
    ];
    let target = Target::Walk(at.as_ptr() as *const path, dentry);
    if on_protected_sb(inode) {
        // Refused whatever its path, which only names it in the event.
        return Ok(protected(info, Action::FileWrite, target));
    }
    if mount?.is_none() {
        return Ok(Verdict::Allow);
    }
    path_actions(info, target, Inode::of(inode, false), &[Action::FileWrite])
}

/// A hook whose second argument is the dentry whose attributes it changes.
macro_rules! attr_write_hook {
    ($name:ident, $hook:literal, $konst:ident) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            frame_when(&ctx, Hook::$konst, own_credentials, |info| {
                attr_write(info, ctx.arg(1))
            })
        }
    };
}

// On 6.1 an ACL is set and removed through these two as well (system.posix_acl_*).
attr_write_hook!(inode_setxattr, "inode_setxattr", INODE_SETXATTR);
attr_write_hook!(inode_removexattr, "inode_removexattr", INODE_REMOVEXATTR);
attr_write_hook!(inode_set_acl, "inode_set_acl", INODE_SET_ACL);
attr_write_hook!(inode_remove_acl, "inode_remove_acl", INODE_REMOVE_ACL);

/// Timestamps only (utimensat, futimes, `touch -d`). A change of mode, owner or size is a
/// chmod, chown or truncate, which `path_chmod`, `path_chown` and the truncate hooks judge
/// already, under the path the caller named.
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    // Each branch reads only arguments this kernel's hook has: the verifier follows the one
    // the frozen global selects.
    if get(&INODE_SETATTR_NARGS) == 3 {
        setattr(&ctx, Hook::INODE_SETATTR, ctx.arg(1), ctx.arg(2))
    } else {
        let hook = Hook {
            nargs: 2,
            ..Hook::INODE_SETATTR
        };
        setattr(&ctx, hook, ctx.arg(0), ctx.arg(1))
    }
}

#[inline(always)]
fn setattr(ctx: &LsmContext, hook: Hook, dentry: *const u8, attr: *const u8) -> i32 {
    // `struct iattr` starts with ia_valid on every kernel.
    let valid: u32 = field(attr, 0);
    let times = ATTR_ATIME | ATTR_MTIME | ATTR_ATIME_SET | ATTR_MTIME_SET;
    let judged_elsewhere = ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE;
    let concerns = || valid & times != 0 && valid & judged_elsewhere == 0 && own_credentials();
    frame_when(ctx, hook, concerns, |info| attr_write(info, dentry))
}
