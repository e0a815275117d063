//! Turning a hook's arguments into the absolute path the rules are written against.
//!
//! `bpf_d_path` does it where every kernel of the matrix allows it (bprm_check_security,
//! file_open). On the path_* hooks 6.1 refuses it, and new entries have no path yet, so there
//! the path is rebuilt by walking dentries and mounts up to the root, as the kernel's own
//! prepend_path does.
//!
//! A path that can't be rebuilt whole (too long, unreadable) is an error, never a guess from
//! its last components: the caller refuses the action.

use agent_common::{KernelError, PATH_BUF};
use aya_ebpf::{
    bindings::path,
    cty::c_void,
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_d_path, bpf_loop, bpf_probe_read_kernel},
    },
};

use crate::{
    kernel::{self, get, read},
    maps::{self, Scratch, WalkBuf},
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

/// The target's own name (its last path component), for the event of an action whose path
/// could not be resolved: what is known of the target, and plainly not an absolute path.
#[inline(always)]
pub fn name_into(target: Target, out: &mut [u8]) {
    let dentry = match target {
        Target::Walk(_, dentry) => dentry,
        Target::Resolved(p) => read::<usize>(p as *const u8, 8) as *const u8,
    };
    let d_name = dentry.wrapping_add(get(&kernel::DENTRY_D_NAME) as usize);
    let name = read::<usize>(d_name, get(&kernel::QSTR_NAME)) as *const u8;
    // SAFETY: the helper checks the kernel address; a failed read leaves the target empty.
    if unsafe { bpf_probe_read_kernel_str_bytes(name, out) }.is_err()
        && let Some(first) = out.first_mut()
    {
        *first = 0;
    }
}

/// Resolves a target into `s.path` (NUL-terminated), and its length into `s.len`.
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
                // bpf_d_path counts the NUL.
                s.len = len as u64 - 1;
                Ok(())
            }
        }
    }
}

/// Most steps (path components plus mount crossings) a walk takes. A path that fits
/// `PATH_BUF` has fewer than `PATH_BUF / 2` components ("/x" each), so only a tower of mounts
/// stacked on one another can run out of steps; that is refused, never guessed at.
const MAX_STEPS: u32 = 2 * PATH_BUF as u32;

/// `WalkBuf::state` values.
const WALKING: u64 = 0;
const AT_ROOT: u64 = 1;
const TOO_LONG: u64 = 2;
const UNREADABLE: u64 = 3;
const DISCONNECTED: u64 = 4;

/// Rebuilds the absolute path of `dentry` (on the mount of `at`) into `s.path`, right to left in
/// the per-CPU WALK buffer, then copies it in place. Crosses mount points through
/// `struct mount`; stops at the global root.
///
/// Each step is one `bpf_loop` call of `walk_step` (5.17 and later), which the verifier checks
/// once instead of once per round, so the depth is bounded by `PATH_BUF`, not by the
/// verifier's patience.
#[inline(always)]
fn walk(s: &mut Scratch, at: *const path, dentry: *const u8) -> Result<(), KernelError> {
    let w = maps::WALK
        .get_ptr_mut(0)
        .ok_or(KernelError::ScratchUnavailable)?;
    let vfsmnt = read::<usize>(at as *const u8, 0) as *const u8;
    // SAFETY: per-CPU map memory, ours for the life of this program run.
    let state = unsafe {
        (*w).pos = PATH_BUF as u64;
        (*w).state = WALKING;
        (*w).dentry = dentry as u64;
        (*w).mount = vfsmnt.wrapping_sub(get(&kernel::MOUNT_MNT) as usize) as u64;
        (*w).mnt_root = read::<u64>(vfsmnt, get(&kernel::VFSMOUNT_MNT_ROOT));
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        core::ptr::read_volatile(&raw const (*w).state)
    };
    match state {
        AT_ROOT => {}
        TOO_LONG => return Err(KernelError::PathTooLong),
        UNREADABLE => return Err(KernelError::NameUnreadable),
        DISCONNECTED => return Err(KernelError::Disconnected),
        // Out of steps, or bpf_loop refused to run.
        _ => return Err(KernelError::PathTooDeep),
    }
    // SAFETY: as above.
    let (start, buf) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*w).pos) as usize,
            (&raw const (*w).buf) as *const u8,
        )
    };
    // `walk_step` leaves at least one byte for the NUL.
    if start == 0 || start > PATH_BUF {
        return Err(KernelError::PathTooLong);
    }
    if start == PATH_BUF {
        s.path[0] = b'/';
        s.path[1] = 0;
        s.len = 1;
        return Ok(());
    }
    let len = (PATH_BUF - start) & (PATH_BUF - 1);
    // SAFETY: copies from our own map memory; `len` < PATH_BUF fits `s.path`.
    let copied = unsafe {
        bpf_probe_read_kernel(
            s.path.as_mut_ptr() as *mut _,
            len as u32,
            buf.wrapping_add(start & (PATH_BUF - 1)) as *const _,
        )
    };
    if copied != 0 {
        return Err(KernelError::NameUnreadable);
    }
    s.path[len] = 0;
    s.len = len as u64;
    Ok(())
}

/// Ends the walk where `node` has no `parent` to go up to: in state `top` when it is its own
/// parent, unreadable when the parent is 0 (never NULL in the kernel: the read failed).
#[inline(always)]
fn stops(w: &mut WalkBuf, node: u64, parent: u64, top: u64) -> bool {
    w.state = if parent == node {
        top
    } else if parent == 0 {
        UNREADABLE
    } else {
        return false;
    };
    true
}

/// One step of `walk`, on the state in `WALK`: up from a mount's root to its mount point, or
/// up one directory, prepending its name. Returns 1 to stop the loop.
///
/// The state lives in map memory, which the verifier doesn't track, so every call is checked
/// against unknown values: the write position is masked into the buffer before each use.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = maps::WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map memory, ours for the life of this program run.
    let w = unsafe { &mut *w };
    let d = w.dentry as *const u8;
    let mount = w.mount as *const u8;
    if d as u64 == w.mnt_root {
        let parent = read::<u64>(mount, get(&kernel::MOUNT_MNT_PARENT));
        // A mount that is its own parent is the root of the mount tree.
        if stops(w, mount as u64, parent, AT_ROOT) {
            return 1;
        }
        w.dentry = read::<u64>(mount, get(&kernel::MOUNT_MNT_MOUNTPOINT));
        w.mount = parent;
        let vfsmnt = (parent as *const u8).wrapping_add(get(&kernel::MOUNT_MNT) as usize);
        w.mnt_root = read::<u64>(vfsmnt, get(&kernel::VFSMOUNT_MNT_ROOT));
        return 0;
    }
    let parent = read::<u64>(d, get(&kernel::DENTRY_D_PARENT));
    // A dentry that is its own parent, but not its mount's root (checked above), is cut off
    // from the tree.
    if stops(w, d as u64, parent, DISCONNECTED) {
        return 1;
    }
    let d_name = d.wrapping_add(get(&kernel::DENTRY_D_NAME) as usize);
    let len = u64::from(read::<u32>(d_name, get(&kernel::QSTR_LEN)) & 0xff);
    let name = read::<usize>(d_name, get(&kernel::QSTR_NAME)) as *const u8;
    // The slash and the name, with a byte left in front for the NUL of the copy.
    if w.pos < len + 2 {
        w.state = TOO_LONG;
        return 1;
    }
    let at = w.pos - len - 1;
    let buf = (&raw mut w.buf) as *mut u8;
    // SAFETY: the masked offsets plus at most 255 bytes stay inside the 2 * PATH_BUF buffer.
    let failed = unsafe {
        // Masked again after a fresh load: the comparison above leaves the 6.12 verifier
        // without an upper bound on `len` (it tracks `len + 2` against the position).
        let size = (core::ptr::read_volatile(&len) & 0xff) as u32;
        let name_at = (at as usize).wrapping_add(1) & (PATH_BUF - 1);
        let r = bpf_probe_read_kernel(buf.wrapping_add(name_at) as *mut _, size, name as *const _);
        *buf.wrapping_add(at as usize & (PATH_BUF - 1)) = b'/';
        r != 0
    };
    if failed {
        w.state = UNREADABLE;
        return 1;
    }
    w.pos = at;
    w.dentry = parent;
    0
}
