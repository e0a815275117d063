//! files.write and files.read: `file_open` for opens (and `file_receive` for descriptors a
//! task is given), `file_truncate` and the `path_*` hooks (CONFIG_SECURITY_PATH) for every
//! other change to the file system; attribute changes are in `attr.rs`. Each hook is given
//! the kernel's resolved path (or directory plus entry name), never the caller's string.

use agent_common::{Action, Hook, KernelError, LabelInfo, Verdict};
use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};

use crate::{
    dircache::Dir,
    hook::{frame, frame_when},
    judge::{cached_path_actions, moved_path, protected},
    kernel::{self, Inode, field, get, read},
    path::Target,
    steps::Steps,
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// Opens the kernel makes to execute a file (FMODE_EXEC, and __FMODE_EXEC in f_flags, are
/// both 0x20); `exec` rules judge those.
const FMODE_EXEC: u32 = 0x20;
/// Files the kernel opens on behalf of another open (overlayfs' backing files, 6.1's
/// open_with_fake_path and 6.12's backing_file_open): the user's own open was judged already,
/// under the path the user sees.
pub const FMODE_NOACCOUNT: u32 = 1 << 29;
const RENAME_EXCHANGE: u32 = 1 << 1;
const O_ACCMODE: u32 = 0o3;
const S_IFMT: u32 = 0o170_000;
const S_IFBLK: u32 = 0o060_000;
/// Mounts the kernel makes for itself (kern_mount: pipes, sockets, memfds), in no namespace.
pub(crate) const MNT_INTERNAL: u32 = 0x4000;
/// File systems no labelled task may write, whatever its policy says and through whichever
/// mount: cgroupfs (cgroup.procs moves a process out of its label) and bpffs (actgate's pins).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

#[inline(always)]
fn protected_magic(magic: u64) -> bool {
    matches!(
        magic,
        CGROUP2_SUPER_MAGIC | CGROUP_SUPER_MAGIC | BPF_FS_MAGIC
    )
}

/// Whether the BTF-typed `struct inode *` lives on a protected file system.
#[inline(always)]
pub(crate) fn on_protected_sb(inode: *const u8) -> bool {
    let sb = field::<usize>(inode, get(&kernel::INODE_I_SB)) as *const u8;
    protected_magic(field(sb, get(&kernel::SUPER_BLOCK_S_MAGIC)))
}

/// Whether the mount of `at` (a `struct path *`) holds a protected file system.
#[inline(always)]
fn on_protected_fs(at: *const path) -> bool {
    let mnt = read::<usize>(at as *const u8, 0) as *const u8;
    let sb = read::<usize>(mnt, get(&kernel::VFSMOUNT_MNT_SB)) as *const u8;
    protected_magic(read(sb, get(&kernel::SUPER_BLOCK_S_MAGIC)))
}

/// The inode behind a BTF-typed `struct dentry *`.
#[inline(always)]
pub(crate) fn dentry_inode(dentry: *const u8) -> *const u8 {
    field::<usize>(dentry, get(&kernel::DENTRY_D_INODE)) as *const u8
}

/// The inode a BTF-typed `struct path` ({ vfsmount *mnt; dentry *dentry; }) names.
#[inline(always)]
fn path_inode(p: *const u8) -> *const u8 {
    dentry_inode(field::<usize>(p, 8) as *const u8)
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let mode: u32 = field(file, get(&kernel::FILE_F_MODE));
    // open_exec() marks its opens with __FMODE_EXEC in f_flags; FMODE_EXEC in f_mode is not
    // set on every kernel. Every open of a file on overlayfs (a container's root, the VM's
    // /tmp) comes twice, the second time as a backing file; it leaves before the label
    // lookup.
    // Direct pointer arithmetic on the BTF-typed `file` keeps `&file->f_path` typed for
    // bpf_d_path.
    let at = file.wrapping_add(get(&kernel::FILE_F_PATH) as usize) as *const path;
    // 6.9 and later open pidfds on pidfs through here, read-write: a file of the kernel's
    // internal mounts, like those file_receive lets pass.
    let concerns = || {
        let flags: u32 = field(file, get(&kernel::FILE_F_FLAGS));
        (mode | flags) & FMODE_EXEC == 0 && mode & FMODE_NOACCOUNT == 0 && !internal(at)
    };
    frame_when(&ctx, Hook::FILE_OPEN, concerns, |info| {
        open_file(info, file, Target::Resolved(at), || Dir::of_file(file))
    })
}

/// Whether `at` (a `struct path *`) is on one of the kernel's internal mounts (pipes, sockets,
/// memfds, pidfds): no path on disk that a rule could name.
#[inline(always)]
fn internal(at: *const path) -> bool {
    let mnt = field::<usize>(at as *const u8, 0) as *const u8;
    field::<u32>(mnt, get(&kernel::VFSMOUNT_MNT_FLAGS)) & MNT_INTERNAL != 0
}

/// A labelled task that gets the open `file` (a BTF-typed `struct file *`, named by `target`)
/// may read it if it was opened to read, and write it if it was opened to write. `dir` gives
/// its directory for the directory cache when `target` is the path it was opened by.
#[inline(always)]
fn open_file(
    info: &LabelInfo,
    file: *const u8,
    target: Target,
    dir: impl FnOnce() -> Option<Dir>,
) -> Result<Verdict, KernelError> {
    let mode: u32 = field(file, get(&kernel::FILE_F_MODE));
    let flags: u32 = field(file, get(&kernel::FILE_F_FLAGS));
    // Access mode 3 gets neither FMODE_READ nor FMODE_WRITE (OPEN_FMODE in fs/open.c), yet
    // may_open asked for both permissions and the descriptor serves ioctls that change the
    // file.
    let both = flags & O_ACCMODE == O_ACCMODE;
    let write = both || mode & FMODE_WRITE != 0;
    let read = both || mode & FMODE_READ != 0;
    let f_inode = field::<usize>(file, get(&kernel::FILE_F_INODE)) as *const u8;
    if write && on_protected_sb(f_inode) {
        return Ok(protected(info, Action::FileWrite, target));
    }
    // A disk read or written under every file system on it, past every path rule (and
    // actgate's own files).
    let i_mode: u16 = field(f_inode, get(&kernel::INODE_I_MODE));
    if u32::from(i_mode) & S_IFMT == S_IFBLK && (write || read) {
        let action = if write {
            Action::FileWrite
        } else {
            Action::FileRead
        };
        return Ok(protected(info, action, target));
    }
    let actions: &[Action] = match (write, read) {
        (true, true) => &[Action::FileWrite, Action::FileRead],
        (true, false) => &[Action::FileWrite],
        (false, true) => &[Action::FileRead],
        (false, false) => return Ok(Verdict::Allow),
    };
    cached_path_actions(info, dir, target, Inode::of(f_inode, false), actions)
}

/// A descriptor passed over SCM_RIGHTS or taken with pidfd_getfd is judged as if the task had
/// opened the file itself. Pipes, sockets, memfds and other files of the kernel's internal
/// mounts have no path on disk that a rule could name; they pass.
#[lsm(hook = "file_receive")]
pub fn file_receive(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let at = file.wrapping_add(get(&kernel::FILE_F_PATH) as usize) as *const path;
    frame_when(
        &ctx,
        Hook::FILE_RECEIVE,
        || !internal(at),
        |info| open_file(info, file, Target::at(at), || None),
    )
}

/// A file already open to the task, truncated through it: ftruncate(2) and, since 6.2,
/// open(O_TRUNC), even of a file opened read-only, which the open's own check let through.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::FILE_TRUNCATE, |info| {
        let file: *const u8 = ctx.arg(0);
        existing_write(
            info,
            file.wrapping_add(get(&kernel::FILE_F_PATH) as usize) as *const path,
        )
    })
}

/// A change to the existing file that `p` (a BTF-typed `struct path *`) names.
#[inline(always)]
fn existing_write(info: &LabelInfo, p: *const path) -> Result<Verdict, KernelError> {
    if on_protected_fs(p) {
        return Ok(protected(info, Action::FileWrite, Target::at(p)));
    }
    let inode = Inode::of(path_inode(p as *const u8), false);
    let at = p as *const u8;
    let dir = || Dir::of_entry(at, field::<usize>(at, 8) as *const u8);
    cached_path_actions(info, dir, Target::at(p), inode, &[Action::FileWrite])
}

/// A hook whose first argument is the `struct path` of an existing file that it changes
/// (truncate, chmod, chown).
macro_rules! existing_write_hook {
    ($name:ident, $hook:literal, $konst:ident) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            frame(&ctx, Hook::$konst, |info| existing_write(info, ctx.arg(0)))
        }
    };
}

existing_write_hook!(path_truncate, "path_truncate", PATH_TRUNCATE);
existing_write_hook!(path_chmod, "path_chmod", PATH_CHMOD);
existing_write_hook!(path_chown, "path_chown", PATH_CHOWN);

/// What a change to a directory entry is judged as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A new entry: a write of its name.
    Create,
    /// A new symlink: a write, guarded (see `moved_path`), since a symlink in a protected
    /// name's place would send the rule's path elsewhere.
    Symlink,
    /// A removed entry (unlink, rmdir): a write and a delete, guarded, since removing the root
    /// `D` of a `D/**` rule, or a directory above a rule's target, would let the agent put a
    /// tree of its own where the rule points.
    Remove,
}

/// A change of the entry `dentry` in the directory `dir`.
#[inline(always)]
fn entry_write(
    info: &LabelInfo,
    dir: *const path,
    dentry: *const u8,
    entry: Entry,
) -> Result<Verdict, KernelError> {
    let target = Target::Walk(dir, dentry);
    if on_protected_fs(dir) {
        return Ok(protected(info, Action::FileWrite, target));
    }
    match entry {
        Entry::Create => {
            let in_dir = || Dir::of_entry(dir as *const u8, dentry);
            cached_path_actions(info, in_dir, target, None, &[Action::FileWrite])
        }
        Entry::Symlink => moved_path(info, target, None, &[Action::FileWrite]),
        // Two judgments of one name: as steps, which the verifier checks once (see `steps`).
        Entry::Remove => {
            let mut steps = Steps::new(info)?;
            steps.add(
                dir,
                dentry,
                None,
                &[Action::FileWrite, Action::FileDelete],
                true,
            );
            steps.judge()
        }
    }
}

/// A hook whose first two arguments are (directory, entry) and that changes that entry.
macro_rules! entry_write_hook {
    ($name:ident, $hook:literal, $konst:ident, $entry:expr) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            frame(&ctx, Hook::$konst, |info| {
                entry_write(info, ctx.arg(0), ctx.arg(1), $entry)
            })
        }
    };
}

entry_write_hook!(path_unlink, "path_unlink", PATH_UNLINK, Entry::Remove);
entry_write_hook!(path_rmdir, "path_rmdir", PATH_RMDIR, Entry::Remove);
entry_write_hook!(path_mkdir, "path_mkdir", PATH_MKDIR, Entry::Create);
entry_write_hook!(path_symlink, "path_symlink", PATH_SYMLINK, Entry::Symlink);

/// mknod, mkfifo, and every O_CREAT open that creates a file (may_o_create in fs/namei.c), so
/// a denied create leaves no empty file behind.
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::PATH_MKNOD, |info| {
        entry_write(info, ctx.arg(0), ctx.arg(1), Entry::Create)
    })
}

/// A hard link adds a name to an existing file: the new name must be writable and not a
/// guarded name, and the source must be writable, readable, not a guarded path, and not a file
/// denied by identity. Each operand is judged on its own; the first refusal decides.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::PATH_LINK, |info| {
        let old: *const u8 = ctx.arg(0);
        let new_dir: *const path = ctx.arg(1);
        let target = Target::Walk(new_dir, ctx.arg(2));
        if on_protected_fs(new_dir) {
            return Ok(protected(info, Action::FileWrite, target));
        }
        // A hard link can't cross mounts (do_linkat returns EXDEV first), so the source sits on
        // new_dir's mount and the walk can rebuild its path too.
        let inode = Inode::of(dentry_inode(old), true);
        let mut steps = Steps::new(info)?;
        let moved = &[Action::FileWrite, Action::FileRead];
        steps.add(new_dir, old, inode, moved, true);
        steps.add(new_dir, ctx.arg(2), None, &[Action::FileWrite], true);
        steps.judge()
    })
}

/// A rename writes both names and deletes the source's. The source must also be readable:
/// moving a file out of a read-denied tree would otherwise make it readable under its new
/// name. A target that exists is replaced, so it is deleted too (both are after the writes:
/// a write denial stops the rename before any delete is judged). Both names are guarded:
/// moving a protected name away, or a tree of the agent's own onto it, carries the rule's
/// target somewhere else. An exchange moves the target's file to the source's name as well,
/// so there both sides are judged alike. Each operand is judged on its own; the first refusal
/// decides.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::PATH_RENAME, |info| {
        let (from_at, from): (*const path, *const u8) = (ctx.arg(0), ctx.arg(1));
        let (to_at, to): (*const path, *const u8) = (ctx.arg(2), ctx.arg(3));
        let exchange = ctx.arg::<u32>(4) & RENAME_EXCHANGE != 0;
        // A rename can't cross mounts, so the target's mount is the source's.
        if on_protected_fs(from_at) {
            return Ok(protected(
                info,
                Action::FileWrite,
                Target::Walk(from_at, from),
            ));
        }
        let moved = &[Action::FileWrite, Action::FileRead];
        let mut steps = Steps::new(info)?;
        steps.add(from_at, from, None, moved, true);
        let to_actions: &[Action] = if exchange {
            moved
        } else {
            &[Action::FileWrite]
        };
        steps.add(to_at, to, None, to_actions, true);
        // The deletes, once both names may be written: the source's name goes, and so does
        // the target's when it exists (replaced) or the rename is an exchange.
        steps.add(from_at, from, None, &[Action::FileDelete], false);
        // Read as a number (`read`, not `field`): LLVM merges the two tests into one OR, which
        // the verifier refuses on a pointer.
        let replaced = read::<u64>(to, get(&kernel::DENTRY_D_INODE)) != 0;
        if replaced || exchange {
            steps.add(to_at, to, None, &[Action::FileDelete], false);
        }
        steps.judge()
    })
}
