//! Kernel memory: the values the daemon writes into .rodata before loading, and the two ways
//! the programs read kernel objects with them.
//!
//! Rust eBPF has no CO-RE, and kernel struct offsets differ between kernels, so the daemon
//! reads them from /sys/kernel/btf/vmlinux (see `agent_common::kernel_offsets!`).

macro_rules! offset_globals {
    ($($global:ident: $ty:ident . $member:ident $(| $alt:ident)?,)+) => {
        $(
            #[doc = concat!("Offset of `", stringify!($ty), ".", stringify!($member), "`.")]
            #[unsafe(no_mangle)]
            pub static $global: u64 = 0;
        )+
    };
}

agent_common::kernel_offsets!(offset_globals);

/// This program set's instance number, unique among the sets pinned in bpffs. Only the set
/// that `maps::OWNER` names judges; see `hook::frame_when`.
#[unsafe(no_mangle)]
pub static INSTANCE: u64 = 0;

/// Addresses of the kernel's `rename_lock` and `mount_lock` seqlocks (from /proc/kallsyms; 0
/// when the daemon couldn't find them, which turns the directory cache off). Their sequence
/// numbers change with every `d_move` and every change to the mount tree: see `dircache.rs`.
#[unsafe(no_mangle)]
pub static RENAME_LOCK: u64 = 0;
#[unsafe(no_mangle)]
pub static MOUNT_LOCK: u64 = 0;

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

/// Reads a kernel value through a pointer, 0 when the read fails.
#[inline(always)]
pub fn read<T: Default>(base: *const u8, offset: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T)
    }
    .unwrap_or_default()
}

/// Loads a field of a kernel object whose BTF type the verifier knows: a hook's argument, or a
/// pointer loaded through `field` from one. The verifier turns the plain load into a
/// fault-safe PROBE_MEM load, which costs far less than `read`'s helper call. `offset` must be
/// one of the frozen .rodata globals above, which the verifier reads as constants.
#[inline(always)]
pub fn field<T>(base: *const u8, offset: u64) -> T {
    // SAFETY: see above; the verifier checks the access against the BTF type, and a faulting
    // PROBE_MEM load yields 0.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

/// Whether the BTF-typed `struct inode *` has no name left on disk: deleted, or never linked
/// (memfd_create and O_TMPFILE files start with no link).
#[inline(always)]
pub fn unlinked(inode: *const u8) -> bool {
    field::<u32>(inode, get(&INODE_I_NLINK)) == 0
}

/// `inode.i_flags` bit of the kernel's internal shmem files (include/linux/fs.h).
const S_PRIVATE: u32 = 1 << 9;

/// Whether the BTF-typed `struct inode *` is one of the kernel's internal shmem files: those
/// behind shared anonymous mappings (shmem_zero_setup) and SysV shared memory. They are
/// memory with no name a process can open, like anonymous memory.
#[inline(always)]
pub fn kernel_private(inode: *const u8) -> bool {
    field::<u32>(inode, get(&INODE_I_FLAGS)) & S_PRIVATE != 0
}

/// A file identified by inode, for rules that must also hold for its other names.
#[derive(Clone, Copy)]
pub struct Inode {
    pub dev: u64,
    pub ino: u64,
}

impl Inode {
    /// The inode of a BTF-typed `struct inode *` (see `field`), but only when it has more than
    /// one name (or `always`): a file with a single link can only be reached through the path
    /// judged anyway.
    #[inline(always)]
    pub fn of(inode: *const u8, always: bool) -> Option<Inode> {
        if inode.is_null() {
            return None;
        }
        let nlink: u32 = field(inode, get(&INODE_I_NLINK));
        if nlink <= 1 && !always {
            return None;
        }
        let sb = field::<usize>(inode, get(&INODE_I_SB)) as *const u8;
        let dev: u32 = field(sb, get(&SUPER_BLOCK_S_DEV));
        Some(Inode {
            dev: u64::from(dev),
            ino: field(inode, get(&INODE_I_INO)),
        })
    }
}
