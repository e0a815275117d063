//! Turning a hook's arguments into the absolute path the rules are written against.
//!
//! `bpf_d_path` does it where every kernel of the matrix allows it (bprm_check_security,
//! file_open). On the path_* hooks 6.1 refuses it, and new entries have no path yet, so there
//! the path is rebuilt by walking dentries and mounts up to the root, as the kernel's own
//! prepend_path does.

use agent_common::{KernelError, PATH_BUF};
use aya_ebpf::{
    bindings::path,
    helpers::generated::{bpf_d_path, bpf_probe_read_kernel},
};

use crate::{
    kernel::{self, get, read},
    maps::{self, Scratch},
};

/// What a path action is about.
#[derive(Clone, Copy)]
pub enum Target {
    /// A `struct path *` from a BTF-typed argument of a hook where bpf_d_path is allowed
    /// (bprm_check_security, file_open).
    Resolved(*const path),
    /// The entry `dentry`, on the mount of `at` (a `struct path *`): the path_* hooks, where
    /// 6.1 doesn't allow bpf_d_path and the entry may not exist yet (mkdir, create, rename
    /// target). The path is rebuilt by a dentry walk.
    Walk(*const path, *const u8),
}

impl Target {
    /// The object a `struct path *` names.
    #[inline(always)]
    pub fn at(p: *const path) -> Target {
        // `struct path` is { vfsmount *mnt; dentry *dentry; } on every kernel.
        Target::Walk(p, read::<usize>(p as *const u8, 8) as *const u8)
    }
}

/// Resolves a target into `s.path` (NUL-terminated).
#[inline(always)]
pub fn resolve(s: &mut Scratch, target: Target) -> Result<(), KernelError> {
    match target {
        Target::Walk(at, dentry) => walk(s, at, dentry),
        Target::Resolved(p) => {
            // SAFETY: `p` came from a BTF-typed hook argument; bpf_d_path checks it.
            let len = unsafe {
                bpf_d_path(
                    p as *mut path,
                    s.path.as_mut_ptr() as *mut _,
                    PATH_BUF as u32,
                )
            };
            if len <= 0 {
                Err(KernelError::DPathFailed)
            } else {
                Ok(())
            }
        }
    }
}

/// Most path components (directories plus the entry) a walk follows.
const MAX_DEPTH: u32 = 40;

/// Rebuilds the absolute path of `dentry` (on the mount of `at`) into `s.path`, right to left in
/// the per-CPU WALK buffer, then copies it in place. Crosses mount points through
/// `struct mount`; stops at the global root.
///
/// The write position lives in map memory and is re-read every round (volatile), so the
/// verifier sees an unknown, masked offset instead of tracking a different exact value on
/// every path through the loop, which made it give up after a million instructions.
#[inline(always)]
fn walk(s: &mut Scratch, at: *const path, dentry: *const u8) -> Result<(), KernelError> {
    let w = maps::WALK
        .get_ptr_mut(0)
        .ok_or(KernelError::ScratchUnavailable)?;
    // SAFETY: per-CPU map memory, ours for the life of this program run.
    let (pos, buf) = unsafe { (&raw mut (*w).pos, (&raw mut (*w).buf) as *mut u8) };
    unsafe { core::ptr::write_volatile(pos, PATH_BUF as u64) };
    let mut vfsmnt = read::<usize>(at as *const u8, 0) as *const u8;
    let mut mount = vfsmnt.wrapping_sub(get(&kernel::MOUNT_MNT) as usize);
    let mut mnt_root = read::<usize>(vfsmnt, get(&kernel::VFSMOUNT_MNT_ROOT)) as *const u8;
    let mut d = dentry;
    let mut at_root = false;
    for _ in 0..MAX_DEPTH {
        if d == mnt_root {
            let parent = read::<usize>(mount, get(&kernel::MOUNT_MNT_PARENT)) as *const u8;
            if parent == mount || parent.is_null() {
                at_root = true;
                break;
            }
            d = read::<usize>(mount, get(&kernel::MOUNT_MNT_MOUNTPOINT)) as *const u8;
            mount = parent;
            vfsmnt = mount.wrapping_add(get(&kernel::MOUNT_MNT) as usize);
            mnt_root = read::<usize>(vfsmnt, get(&kernel::VFSMOUNT_MNT_ROOT)) as *const u8;
            continue;
        }
        let parent = read::<usize>(d, get(&kernel::DENTRY_D_PARENT)) as *const u8;
        if parent == d || parent.is_null() {
            at_root = true;
            break;
        }
        let d_name = d.wrapping_add(get(&kernel::DENTRY_D_NAME) as usize);
        let len = read::<u32>(d_name, get(&kernel::QSTR_LEN)) & 0xff;
        let name = read::<usize>(d_name, get(&kernel::QSTR_NAME)) as *const u8;
        // SAFETY: the masked offsets plus at most 255 bytes stay inside the 2 * PATH_BUF
        // buffer. A path longer than PATH_BUF wraps the position, which is caught below.
        unsafe {
            let at = core::ptr::read_volatile(pos).wrapping_sub(u64::from(len) + 1);
            let name_at = (at as usize).wrapping_add(1) & (PATH_BUF - 1);
            bpf_probe_read_kernel(buf.wrapping_add(name_at) as *mut _, len, name as *const _);
            *buf.wrapping_add(at as usize & (PATH_BUF - 1)) = b'/';
            core::ptr::write_volatile(pos, at);
        }
        d = parent;
    }
    // A deeper path would be judged by its last components only: refuse to guess.
    if !at_root {
        return Err(KernelError::PathTooDeep);
    }
    // SAFETY: as above.
    let start = unsafe { core::ptr::read_volatile(pos) } as usize;
    // 0 would leave no room for the NUL.
    if start == 0 || start > PATH_BUF {
        return Err(KernelError::PathTooLong);
    }
    if start == PATH_BUF {
        s.path[0] = b'/';
        s.path[1] = 0;
        return Ok(());
    }
    let len = (PATH_BUF - start) & (PATH_BUF - 1);
    // SAFETY: copies from our own map memory; `len` < PATH_BUF fits `s.path`.
    unsafe {
        bpf_probe_read_kernel(
            s.path.as_mut_ptr() as *mut _,
            len as u32,
            buf.wrapping_add(start & (PATH_BUF - 1)) as *const _,
        );
    }
    s.path[len] = 0;
    Ok(())
}
