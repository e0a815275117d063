//! exec: `bprm_check_security` runs once the kernel has opened the binary (and again for the
//! interpreter of a script), so `bprm->file` is the real file whatever name or symlink the
//! caller used. The last binary checked is the one the process runs, which `process.rs`
//! remembers for the process's events.
//!
//! Mapping a file executable is an exec of that file too (`mmap_file`, `file_mprotect`):
//! `ld.so /denied/binary` runs a binary with a read and an mmap, and the ELF loader maps a
//! binary's `PT_INTERP` (load_elf_binary → elf_map → vm_mmap → security_mmap_file) without
//! another bprm check. Anonymous memory isn't judged: that is where JITs put their code.

use agent_common::Hook;
use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};

use crate::{
    dircache::Dir,
    file::FMODE_NOACCOUNT,
    hook::{frame, frame_when},
    judge::{self, Executable},
    kernel::{self, Inode, field, get},
    path::Target,
};

/// `prot` bit of mmap(2) and mprotect(2).
const PROT_EXEC: u64 = 0x4;

/// Whether an executable mapping of the BTF-typed `file` (null for anonymous memory) is an
/// exec: not of anonymous memory, nor of the kernel's shmem files that back shared anonymous
/// mappings and SysV shared memory (JITs put code there too).
#[inline(always)]
fn maps_a_file(prot: u64, file: *const u8) -> bool {
    prot & PROT_EXEC != 0
        && !file.is_null()
        && !kernel::kernel_private(field::<usize>(file, get(&kernel::FILE_F_INODE)) as *const u8)
}

/// What running the BTF-typed `struct file *` executes: the file at its path (`target` of
/// the file) or, when it has no name on disk (unlinked, a memfd, an O_TMPFILE), `anonymous`.
/// bpf_d_path names those "/memfd:x (deleted)" or "<old path> (deleted)", which no rule may
/// be matched against.
#[inline(always)]
fn executable(file: *const u8, target: fn(*const u8) -> Target) -> Executable {
    let inode = field::<usize>(file, get(&kernel::FILE_F_INODE)) as *const u8;
    if kernel::unlinked(inode) {
        return Executable::Anonymous;
    }
    // Another hard link to a denied binary is the same file: judge it by inode too.
    Executable::File(target(file), Inode::of(inode, false))
}

/// `&file->f_path` for bpf_d_path: direct pointer arithmetic on the BTF-typed `file` keeps it
/// typed.
#[inline(always)]
fn f_path(file: *const u8) -> Target {
    Target::Resolved(file.wrapping_add(get(&kernel::FILE_F_PATH) as usize) as *const path)
}

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
        judge::exec_action(info, executable(file, f_path))
    })
}

/// `prot` is what the mapping gets, after READ_IMPLIES_EXEC added PROT_EXEC to a readable one.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let prot: u64 = ctx.arg(2);
    let concerns = || maps_a_file(prot, ctx.arg(0));
    frame_when(&ctx, Hook::MMAP_FILE, concerns, |info| {
        let file: *const u8 = ctx.arg(0);
        judge::mapped(info, executable(file, f_path), || Dir::of_file(file))
    })
}

/// The path the user opened `file` by, for a BTF-typed `struct file *` that overlayfs may have
/// put into a mapping in place of the user's (ovl_mmap's vma_set_file): since 6.8 that
/// backing file's `f_path` is the file on the layer, under a private mount no rule names,
/// and the user's path is kept beside it. 6.1's backing files carry the user's path.
#[inline(always)]
fn user_path(file: *const u8) -> Target {
    let mode: u32 = field(file, get(&kernel::FILE_F_MODE));
    let user = get(&kernel::BACKING_FILE_USER_PATH);
    let offset = if user != 0 && mode & FMODE_NOACCOUNT != 0 {
        user
    } else {
        get(&kernel::FILE_F_PATH)
    };
    Target::at(file.wrapping_add(offset as usize) as *const path)
}

/// bpf_d_path isn't allowed here (file_mprotect isn't a sleepable LSM hook), so the path is
/// rebuilt by a dentry walk.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let prot: u64 = ctx.arg(2);
    let file = || {
        let vma: *const u8 = ctx.arg(0);
        field::<usize>(vma, get(&kernel::VM_AREA_STRUCT_VM_FILE)) as *const u8
    };
    let concerns = || maps_a_file(prot, file());
    frame_when(&ctx, Hook::FILE_MPROTECT, concerns, |info| {
        judge::mapped(info, executable(file(), user_path), || None)
    })
}
