//! Every map the programs use. aya names each map after its static, and the daemon opens the
//! shared ones by the names in `agent_common::maps`, which a test of the daemon checks against
//! the built object.

use agent_common::{
    ACTION_SLOTS, Config, DECISION_SLOTS, EVENT_PATH, InodeKey, KernelError, LIMIT_SLOTS,
    LabelInfo, LabelKey, Limit, LimitKey, MAX_LABELS, MAX_PROCESSES, NET_KEY_DATA, PATH_BUF,
    PATH_KEY_DATA, PATH_KEY_HEADER, ProcessKey, Revocation, TRIGGER_SLOTS,
    dns::{HostEntry, HostKey, MAX_HOSTS, MAX_STEERED, Resolver, Steered},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The instance (`kernel::INSTANCE`) whose programs judge. While a new daemon takes over,
/// its programs and the previous ones are attached side by side; one write here hands every
/// decision from one set to the other, so no action is judged by neither, nor counted twice.
/// Kept in bpffs and shared by every build: its layout never changes.
#[map]
pub static OWNER: Array<u64> = Array::with_max_entries(1, 0);

/// Label cgroup (per generation) → the label and its policy. Two generations live side by side
/// during a reload.
#[map]
pub static LABELS: HashMap<LabelKey, LabelInfo> = HashMap::with_max_entries(2 * MAX_LABELS, 0);

/// Path rules of every rule set, keyed as `agent_common::PathKey` describes. The daemon sizes
/// it at load time.
#[map]
pub static PATH_RULES: LpmTrie<[u8; PATH_KEY_DATA], u8> = LpmTrie::with_max_entries(1, 0);

/// Network rules of every rule set, keyed as `agent_common::NetKey` describes.
#[map]
pub static NET_RULES: LpmTrie<[u8; NET_KEY_DATA], u8> = LpmTrie::with_max_entries(1, 0);

/// Files denied by identity as well as by path (see `agent_common::InodeKey`).
#[map]
pub static INODE_RULES: HashMap<InodeKey, u8> = HashMap::with_max_entries(1, 0);

/// Decisions per (label, action, verdict): the source of `actgate_decisions_total`.
#[map]
pub static DECISIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECISION_SLOTS, 0);

/// Events that found the ring buffer full, per action.
#[map]
pub static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(ACTION_SLOTS, 0);

/// Actions the kernel could not judge, per `agent_common::KernelError`; each was refused.
#[map]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KernelError::SLOTS, 0);

/// BPF_F_NO_COMMON_LRU: each CPU keeps its own LRU list, so an exec's update takes no
/// lock shared with the other CPUs.
const NO_COMMON_LRU: u32 = 1 << 1;

/// The binary each labelled process last executed, for events (see `process.rs`).
#[map]
pub static EXES: LruHashMap<ProcessKey, [u8; EVENT_PATH]> =
    LruHashMap::with_max_entries(MAX_PROCESSES, NO_COMMON_LRU);

/// Revoked labels, by label index (see `revoke.rs`). Kept in bpffs: a revocation outlives
/// reloads and the daemon.
#[map]
pub static REVOKED: HashMap<u32, Revocation> = HashMap::with_max_entries(MAX_LABELS, 0);

/// Revocations per (label, trigger), indexed by `agent_common::revocation_index`. Shared by
/// every CPU: a label is revoked far too rarely for per-CPU counters to pay.
#[map]
pub static REVOCATIONS: Array<u64> = Array::with_max_entries(MAX_LABELS * TRIGGER_SLOTS, 0);

/// The budgets and breakers of every rule set (see `limits.rs`): at most one per budgetable
/// action and a breaker (8) per policy, for two generations of at most one policy per label.
#[map]
pub static LIMITS: HashMap<LimitKey, Limit> = HashMap::with_max_entries(2 * MAX_LABELS * 8, 0);

/// Each label's current window per budget and for its breaker, indexed by
/// `agent_common::limit_index`. Shared by every CPU, so a count is exact across them.
#[map]
pub static WINDOWS: Array<u64> = Array::with_max_entries(LIMIT_SLOTS, 0);

/// Actions refused for being over budget, per (label, action).
#[map]
pub static BUDGET_EXCEEDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(LIMIT_SLOTS, 0);

/// What the hook call under way allowed that a budget counts, and the state of its settling
/// (see `limits.rs`). Kept in map memory rather than on the stack: the settling runs at the
/// bottom of the deepest call chains, where the 512 bytes of stack are spent.
#[repr(C)]
pub struct Pending {
    /// Bit n: an allowed action with discriminant n.
    pub actions: u32,
    /// The last connection's destination, for the event of one over budget.
    pub family: u8,
    /// The call's verdict on its way to `limits::settle` (see there).
    pub verdict: u8,
    pub port: u16,
    pub addr: [u8; 16],
    /// The worst verdict of an action over budget (`Verdict::Allow` while none was) and the
    /// first such action.
    pub over: u8,
    pub over_action: u8,
    pub _pad: [u8; 6],
    pub now_ms: u64,
    /// The label, for each round of the charge.
    pub info: LabelInfo,
}

#[map]
pub static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Where each label's DNS queries go (label index → the daemon's resolver ports; see `dns.rs`).
#[map]
pub static DNS_RESOLVERS: HashMap<u32, Resolver> = HashMap::with_max_entries(MAX_LABELS, 0);

/// Addresses that a label's lookups of names with rules returned, and what the rules say
/// about connecting to them (see `judge::net_action`).
#[map]
pub static HOSTS: HashMap<HostKey, HostEntry> = HashMap::with_max_entries(MAX_HOSTS, 0);

/// The server each steered socket asked (by socket cookie), for its replies and getpeername.
/// LRU: a socket's entry is never removed when it closes, so the oldest make room.
#[map]
pub static STEERED: LruHashMap<u64, Steered> = LruHashMap::with_max_entries(MAX_STEERED, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Most judgments one hook call makes through `steps.rs` (a rename exchange's six).
pub const MAX_STEPS: usize = 6;

/// One judgment of `steps.rs`: an action on the entry `dentry` on the mount of `at` (kernel
/// addresses of a `path::Target::Walk`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Step {
    pub at: u64,
    pub dentry: u64,
    /// The file's inode when `has_inode` (hard links' inode rules).
    pub dev: u64,
    pub ino: u64,
    pub action: u8,
    /// Non-zero: a `judge::moved_path` name, whose write is guarded.
    pub guard: u8,
    pub has_inode: u8,
    pub _pad: [u8; 5],
}

/// A hook call's judgments, made by the rounds of one `bpf_loop` (see `steps.rs`), and how
/// far they got.
#[repr(C)]
pub struct Steps {
    /// The label, for each round.
    pub info: LabelInfo,
    /// Steps added, including any that didn't fit (which no round can judge).
    pub count: u32,
    /// Rounds that judged their step.
    pub done: u32,
    /// The worst verdict so far.
    pub verdict: u8,
    pub _pad: [u8; 7],
    /// The name whose path `SCRATCH` holds (`Step::at`, `Step::dentry`), 0 for none.
    pub resolved_at: u64,
    pub resolved_dentry: u64,
    pub steps: [Step; MAX_STEPS],
}

#[map]
pub static STEPS: PerCpuArray<Steps> = PerCpuArray::with_max_entries(1, 0);

/// A trie lookup key followed by room for the rest of a resolved path. `bpf_d_path` writes the
/// path into `path`, right behind the key header, so the first `PATH_KEY_DATA` bytes after
/// `prefix_len` form a complete `PATH_RULES` key without copying. It lives in a per-CPU map
/// because it is far larger than the 512-byte eBPF stack.
#[repr(C)]
pub struct Scratch {
    pub prefix_len: u32,
    pub header: [u8; PATH_KEY_HEADER],
    pub path: [u8; PATH_BUF],
    /// The length of `path` without its NUL, once resolved.
    pub len: u64,
    /// The directory cache's entry for the directory of the file being judged (see
    /// `dircache::Dir`).
    pub dir: DirEntry,
}

impl Scratch {
    /// The value of the longest `PATH_RULES` entry under `header` that is a prefix of the
    /// first `bits` bits of the header and the path.
    #[inline(always)]
    pub fn lookup(&mut self, header: [u8; PATH_KEY_HEADER], bits: u32) -> u8 {
        self.header = header;
        self.prefix_len = bits;
        // SAFETY: `Scratch` starts with an LPM key: prefix_len, then PATH_KEY_DATA bytes.
        let key = unsafe { &*(self as *const Scratch as *const Key<[u8; PATH_KEY_DATA]>) };
        PATH_RULES.get(key).copied().unwrap_or(0)
    }
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Where a `DIRS` entry is kept (see `dircache.rs`): `D`'s dentry, the mount, the rule set and the action.
#[repr(C)]
pub struct DirKey {
    pub dentry: u64,
    pub mnt: u64,
    pub ruleset: u16,
    pub action: u8,
    pub _pad: [u8; 5],
}

/// What must be unchanged for a `DIRS` entry to hold (see `dircache.rs`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DirState {
    pub rename_seq: u32,
    pub mount_seq: u32,
    pub generation: u32,
    pub _pad: u32,
    pub root_mnt: u64,
    pub root_dentry: u64,
    pub inode: u64,
    pub ino: u64,
    pub parent: u64,
    pub hash_len: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DirEntry {
    pub state: DirState,
    /// The path flags of every entry of `D`, when not `below`.
    pub flags: u8,
    /// `D` has a rule beneath it: its entries' paths must be resolved.
    pub below: u8,
    pub _pad: [u8; 6],
}

/// Directories whose entries' path flags are known (see `dircache.rs`). Least recently used
/// entries make room; a lost entry only costs a path resolution.
#[map]
pub static DIRS: LruHashMap<DirKey, DirEntry> = LruHashMap::with_max_entries(MAX_DIRS, 0);

/// Directories the cache keeps, over all labels, rule sets and actions.
const MAX_DIRS: u32 = 16384;

/// Where `path::walk` assembles a path right to left before copying it into `Scratch`, and
/// the state its `bpf_loop` steps share: where the walk is (a dentry on a mount, kernel
/// addresses) and how it ended.
#[repr(C)]
pub struct WalkBuf {
    pub pos: u64,
    pub state: u64,
    pub dentry: u64,
    pub mount: u64,
    pub mnt_root: u64,
    pub buf: [u8; 2 * PATH_BUF],
}

#[map]
pub static WALK: PerCpuArray<WalkBuf> = PerCpuArray::with_max_entries(1, 0);
