//! A per-directory cache of path rule flags: a labelled open, executable mapping, create,
//! truncate, chmod or chown in a directory that was judged before skips resolving the path
//! (`bpf_d_path` or the dentry walk) and the trie lookup, which are most of its cost.
//!
//! Rules are paths. When no rule of an action lies strictly beneath a directory `D/` (no
//! "below" mark, see `agent_common::PATH_KEY_BELOW`), the longest rule that is a prefix of
//! `D/name` is one that is a prefix of `D/`, so every entry of `D` gets the flags of `D/`.
//! The first judged action in `D` resolves its path as before, then stores those flags (or that
//! `D` is marked) under `D`'s dentry, the mount it was reached through, the rule set and
//! the action; later actions in `D` read them back.
//!
//! An entry is used only while `D`'s path can't have changed since it was filled:
//! - every rename anywhere moves a dentry under the kernel's `rename_lock`, and every change
//!   to the mount tree (mount, umount, move, a namespace torn down) happens under
//!   `mount_lock`; both are seqlocks whose sequence numbers the entry records, read before the
//!   path was resolved (an odd number, a writer at work, caches nothing);
//! - paths are relative to the task's root, which the entry records (chroot, setns);
//! - a reload brings a new generation with new rule set numbers, which the entry records;
//! - `D`'s dentry may be freed and its memory reused: the entry records `D`'s inode (address
//!   and number), its parent dentry and its name's hash and length, so a reuse that matches
//!   names the same entry of the same parent.
//!
//! Only allows come from the cache: whatever needs an event (a denial, an audit, allow events,
//! a budget's charge) resolves the path, since the event names it.

use agent_common::{
    Action, LabelInfo, PATH_BUF, PATH_KEY_DATA, PATH_KEY_HEADER, below_key_header, path_key_header,
};
use aya_ebpf::helpers::generated::bpf_get_current_task_btf;

use crate::{
    judge,
    kernel::{self, field, get, read},
    limits,
    maps::{self, DirKey, Scratch},
    record,
};

/// What the cache knows about an action in a directory.
pub enum Cached {
    /// The path flags of every entry.
    Flags(u8),
    /// Resolve the path and learn nothing from it: a rule lies beneath, or a rename or a
    /// mount change is under way.
    Resolve,
    /// Nothing yet, or nothing that still holds: resolve the path and fill the entry.
    Unknown,
}

/// The directory of the file being judged. The state its entries must have been filled in is
/// taken into the per-CPU scratch buffer (`Scratch::dir`), off the program's small stack.
#[derive(Clone, Copy)]
pub struct Dir {
    dentry: u64,
    mnt: u64,
    /// The length of the file's own name, which follows `D/` in its path.
    name_len: u64,
    /// The path is rebuilt by a dentry walk (`path::walk`, from the global root), not by
    /// `bpf_d_path` (from the task's root): entries of either kind are kept apart.
    walked: bool,
}

/// `DirKey::action`'s bit for entries filled from walked paths.
const WALKED: u8 = 0x80;

impl Dir {
    /// The directory of the file a BTF-typed `struct file *` opened, named by `bpf_d_path`.
    #[inline(always)]
    pub fn of_file(file: *const u8) -> Option<Dir> {
        let at = get(&kernel::FILE_F_PATH);
        Dir::of(field(file, at), field(file, at + 8), false)
    }

    /// The directory of the entry `child` (a BTF-typed `struct dentry *`, which may not exist
    /// yet) on the mount of the BTF-typed `struct path *` `at`, named by a dentry walk.
    #[inline(always)]
    pub fn of_entry(at: *const u8, child: *const u8) -> Option<Dir> {
        Dir::of(field(at, 0), child as usize, true)
    }

    /// The directory of `child` (a `struct dentry *`) on `mnt` (a `struct vfsmount *`), both
    /// BTF-typed; `None` when the cache can't be used: the lock addresses are unknown, or
    /// `child` is the root of its mount (its path is the mount point's, not its directory's
    /// plus its name).
    #[inline(always)]
    fn of(mnt: usize, child: usize, walked: bool) -> Option<Dir> {
        if get(&kernel::RENAME_LOCK) == 0 || get(&kernel::MOUNT_LOCK) == 0 {
            return None;
        }
        let (mnt, child) = (mnt as *const u8, child as *const u8);
        if child as u64 == field::<u64>(mnt, get(&kernel::VFSMOUNT_MNT_ROOT)) {
            return None;
        }
        let name = get(&kernel::DENTRY_D_NAME);
        Some(Dir {
            dentry: field(child, get(&kernel::DENTRY_D_PARENT)),
            mnt: mnt as u64,
            name_len: u64::from(field::<u32>(child, name + get(&kernel::QSTR_LEN))),
            walked,
        })
    }

    /// Writes the state as it stands now into `s.dir.state`; false while a rename or a mount
    /// change is under way, when nothing may be cached or trusted.
    #[inline(always)]
    fn now(&self, s: &mut Scratch) -> bool {
        // The sequence counts first: a change after these reads makes the entry stale.
        let rename_seq: u32 = read(get(&kernel::RENAME_LOCK) as *const u8, 0);
        let mount_seq: u32 = read(get(&kernel::MOUNT_LOCK) as *const u8, 0);
        if (rename_seq | mount_seq) & 1 != 0 {
            return false;
        }
        let Some(config) = maps::CONFIG.get(0) else {
            return false;
        };
        let dir = self.dentry as *const u8;
        let inode = field::<usize>(dir, get(&kernel::DENTRY_D_INODE)) as *const u8;
        let name = get(&kernel::DENTRY_D_NAME);
        // SAFETY: a helper without arguments; it returns the BTF-typed current task.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        let fs = field::<usize>(task, get(&kernel::TASK_STRUCT_FS)) as *const u8;
        let root = get(&kernel::FS_STRUCT_ROOT);
        let state = &mut s.dir.state;
        state.rename_seq = rename_seq;
        state.mount_seq = mount_seq;
        state.generation = config.generation;
        // `struct path` is { vfsmount *mnt; dentry *dentry; }.
        state.root_mnt = field(fs, root);
        state.root_dentry = field(fs, root + 8);
        state.inode = inode as u64;
        state.ino = field(inode, get(&kernel::INODE_I_INO));
        state.parent = field(dir, get(&kernel::DENTRY_D_PARENT));
        // Two loads: 6.1's verifier won't read `hash_len` as a whole through its union.
        let hash: u32 = field(dir, name + get(&kernel::QSTR_HASH));
        let len: u32 = field(dir, name + get(&kernel::QSTR_LEN));
        state.hash_len = u64::from(len) << 32 | u64::from(hash);
        true
    }

    #[inline(always)]
    fn key(&self, info: &LabelInfo, action: Action) -> DirKey {
        DirKey {
            dentry: self.dentry,
            mnt: self.mnt,
            ruleset: info.ruleset,
            action: action as u8 | if self.walked { WALKED } else { 0 },
            _pad: [0; 5],
        }
    }

    /// What the cache holds for `action` in this directory. The state is taken now, before
    /// the path is resolved, into `s.dir`, where `fill` finds it.
    #[inline(always)]
    pub fn get(&self, info: &LabelInfo, action: Action, s: &mut Scratch) -> Cached {
        let entry = maps::DIRS.get_ptr(self.key(info, action));
        // SAFETY: map memory, read at once; compared in place to keep it off the stack.
        let entry = entry.map(|e| unsafe { &*e });
        // A mark beneath `D` needs no state: a stale one costs a resolution, never an allow.
        // Most of a lookup's cost is the state, so directories that hold rules skip it.
        if entry.is_some_and(|e| e.below != 0) {
            return Cached::Resolve;
        }
        if !self.now(s) {
            return Cached::Resolve;
        }
        match entry {
            Some(e) if e.state == s.dir.state => Cached::Flags(e.flags),
            _ => Cached::Unknown,
        }
    }

    /// Caches this directory's flags for `action`, given the path of one of its entries
    /// resolved in `s` and the state in `s.dir`.
    #[inline(always)]
    pub fn fill(&self, info: &LabelInfo, action: Action, s: &mut Scratch) {
        // `D/` is the path less the file's name.
        let dir_len = s.len.wrapping_sub(self.name_len);
        if dir_len == 0 || dir_len > (PATH_KEY_DATA - PATH_KEY_HEADER) as u64 {
            return;
        }
        // A name that isn't the path's last component (" (deleted)" follows an unlinked
        // file's) leaves no `/` there: nothing is cached.
        if s.path[(dir_len as usize - 1) & (PATH_BUF - 1)] != b'/' {
            return;
        }
        let bits = 8 * (PATH_KEY_HEADER as u32 + dir_len as u32);
        let mark = s.lookup(below_key_header(info.ruleset, action), bits);
        let below = u64::from(mark) == dir_len;
        s.dir.flags = if below || !judge::has_rules(info, action) {
            0
        } else {
            s.lookup(path_key_header(info.ruleset, action), bits)
        };
        s.dir.below = u8::from(below);
        // From the scratch buffer itself: a copy of the entry would go on the stack, which
        // the hooks that open files have little of left.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = maps::DIRS.insert(self.key(info, action), &s.dir, 0);
    }
}

/// Whether decisions on `actions` may come from the cache: allowed ones send no event and
/// charge no budget that would need the path.
#[inline(always)]
pub fn usable(info: &LabelInfo, actions: &[Action]) -> bool {
    !record::events_allow(info) && !actions.iter().any(|a| limits::limited(info, *a))
}
