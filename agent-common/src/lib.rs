//! Types shared by the kernel programs (`agent-ebpf`) and the daemon (`agent-userspace`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, because the same bytes are written by
//! one side and read by the other through BPF maps and the ring buffer.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

mod caps;
pub mod dns;
mod errors;
mod hooks;
pub mod maps;
mod offsets;
#[cfg(feature = "user")]
pub mod sys;

pub use caps::{CAP_NAME_LEN, CAPABILITIES, DENIED_CAPABILITIES, capability_by_name};
pub use errors::KernelError;
pub use hooks::{HOOK_COUNT, HOOKS, Hook};
pub use offsets::{KERNEL_OFFSETS, KernelOffset, OPTIONAL_OFFSETS};

/// The actions a policy governs. The discriminant indexes counters and lives in map keys; the
/// counters outlive the daemon, so new actions are only ever appended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Exec = 0,
    FileWrite = 1,
    FileRead = 2,
    Connect = 3,
    /// Any bpf(2) call.
    Bpf = 4,
    /// A capability on `DENIED_CAPABILITIES` the policy doesn't grant.
    Capability = 5,
    /// A signal to the daemon.
    Signal = 6,
    /// ptrace, /proc/PID/mem and the like, aimed at the daemon.
    Ptrace = 7,
    /// Creating a user namespace; a mount, move_mount, pivot_root or chroot.
    Namespace = 8,
    /// Leaving the label's cgroup subtree (`clone3(CLONE_INTO_CGROUP)`).
    Cgroup = 9,
    /// Connecting or sending to a named AF_UNIX socket (`network.unix`).
    UnixConnect = 10,
    /// listen(2) on a non-loopback address (`network.listen`).
    Listen = 11,
    /// A socket use that reaches past the connect rules: raw, packet and SCTP sockets, and IP
    /// options that reroute (`network.raw` and its siblings; see `SocketKind`).
    Socket = 12,
    /// Removing or replacing a name: unlink, rmdir, a rename's source, the existing file a
    /// rename replaces (`files.delete`). Judged together with `FileWrite` on the same name.
    FileDelete = 13,
}

impl Action {
    pub const COUNT: usize = 14;
    pub const ALL: [Action; Action::COUNT] = [
        Action::Exec,
        Action::FileWrite,
        Action::FileRead,
        Action::Connect,
        Action::Bpf,
        Action::Capability,
        Action::Signal,
        Action::Ptrace,
        Action::Namespace,
        Action::Cgroup,
        Action::UnixConnect,
        Action::Listen,
        Action::Socket,
        Action::FileDelete,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The name used in metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Exec => "exec",
            Action::FileWrite => "file_write",
            Action::FileRead => "file_read",
            Action::Connect => "connect",
            Action::Bpf => "bpf",
            Action::Capability => "capability",
            Action::Signal => "signal",
            Action::Ptrace => "ptrace",
            Action::Namespace => "namespace",
            Action::Cgroup => "cgroup",
            Action::UnixConnect => "unix_connect",
            Action::Listen => "listen",
            Action::Socket => "socket",
            Action::FileDelete => "file_delete",
        }
    }
}

/// What the kernel did with one action. Append-only, like `Action`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 0,
    Deny = 1,
    /// The policy is in audit mode and would have denied: the action was allowed.
    Audit = 2,
}

impl Verdict {
    pub const COUNT: usize = 3;
    pub const ALL: [Verdict; Verdict::COUNT] = [Verdict::Allow, Verdict::Deny, Verdict::Audit];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
}

/// Most labels the maps hold at once. Label indexes are never reused while actgate is loaded
/// (they are kept in bpffs across daemon restarts), so counters stay attached to their label.
pub const MAX_LABELS: u32 = 1024;

/// Longest label name (a cgroup directory name).
pub const LABEL_NAME_LEN: usize = 64;

/// Room per label for actions and per action for verdicts in the counter maps. The counters
/// outlive the daemon (they are pinned in bpffs) and a newer build adopts them, so their
/// layout must not move when an action or verdict is added: discriminants are append-only
/// and these capacities are fixed.
pub const ACTION_SLOTS: u32 = 16;
pub const VERDICT_SLOTS: u32 = 4;
const _: () =
    assert!(Action::COUNT as u32 <= ACTION_SLOTS && Verdict::COUNT as u32 <= VERDICT_SLOTS);

/// Index of a decision counter in the `DECISIONS` per-CPU array.
pub const fn decision_index(label: u32, action: Action, verdict: Verdict) -> u32 {
    (label * ACTION_SLOTS + action as u32) * VERDICT_SLOTS + verdict as u32
}

pub const DECISION_SLOTS: u32 = MAX_LABELS * ACTION_SLOTS * VERDICT_SLOTS;

/// `mode` of a label's policy.
pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;
/// A label no policy names any more while processes still run under it: every action of
/// theirs is denied, so a reload never releases them by accident.
pub const MODE_ORPHANED: u8 = 2;
/// A revoked label (`REVOKED` names it): every action is denied, in audit mode too. Never
/// stored in `LABELS`; the kernel sets it on its copy of the label's `LabelInfo`.
pub const MODE_REVOKED: u8 = 3;

/// Bits of a rule lookup result (the value of a path or network trie entry, and a label's
/// per-action default). An entry carries the union of its own rule and every shorter rule that
/// also matches, so one longest-prefix lookup answers "did any deny match? any allow?".
pub const RULE_ALLOW: u8 = 1;
pub const RULE_DENY: u8 = 2;
/// With `RULE_DENY`: the denial holds in audit mode too (actgate's own files).
pub const RULE_PROTECT: u8 = 4;

/// Turns the flags of the longest matching rule into a verdict: deny beats allow, and the
/// label's default (`RULE_ALLOW` or `RULE_DENY`) applies when no rule matched. `mode` is the
/// label's `MODE_*`; an orphaned or revoked label is denied whatever matched. The kernel
/// decides every action with this.
#[inline(always)]
pub fn verdict(flags: u8, default: u8, mode: u8) -> Verdict {
    let denied = if mode >= MODE_ORPHANED || flags & RULE_DENY != 0 {
        true
    } else if flags & RULE_ALLOW != 0 {
        false
    } else {
        default == RULE_DENY
    };
    let audit = mode == MODE_AUDIT && flags & RULE_PROTECT == 0;
    match (denied, audit) {
        (false, _) => Verdict::Allow,
        (true, false) => Verdict::Deny,
        (true, true) => Verdict::Audit,
    }
}

/// Why the kernel decided as it did; every event carries one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched (an allow or deny rule, or a move guard).
    Rule = 0,
    /// No rule matched: the label's default for the action decided.
    Default = 1,
    /// No policy names the label any more (`MODE_ORPHANED`).
    Orphaned = 2,
    /// The kernel could not judge the action (a `KernelError`, counted in `ERRORS`), so it
    /// was refused (see `unjudged`).
    Unjudged = 3,
    /// The label used up its budget for the action (`budgets` in the policy).
    Budget = 4,
    /// The label is revoked (`actgate revoke`, a budget's `then: revoke`, or the breaker).
    Revoked = 5,
}

impl Reason {
    pub const COUNT: usize = 6;
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Rule,
        Reason::Default,
        Reason::Orphaned,
        Reason::Unjudged,
        Reason::Budget,
        Reason::Revoked,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Default => "default",
            Reason::Orphaned => "orphaned",
            Reason::Unjudged => "unjudged",
            Reason::Budget => "budget",
            Reason::Revoked => "revoked",
        }
    }
}

/// What revoked a label: `actgate_revocations_total{trigger}`. Append-only: counters of
/// revocations are kept per (label, trigger) and outlive the daemon.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `actgate revoke`.
    Manual = 0,
    /// A budget with `then: revoke` ran out.
    Budget = 1,
    /// The circuit breaker (`revoke_after`) tripped.
    Breaker = 2,
}

impl Trigger {
    pub const COUNT: usize = 3;
    pub const ALL: [Trigger; Trigger::COUNT] = [Trigger::Manual, Trigger::Budget, Trigger::Breaker];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The `trigger` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Budget => "budget",
            Trigger::Breaker => "breaker",
        }
    }
}

/// The verdict on an action the kernel could not judge: what the kernel can't judge is
/// refused. An audit-mode label only observes, so it gets `Audit` (counted, reported, not
/// enforced), as a denying rule would give it; an orphaned label is denied as always.
#[inline(always)]
pub fn unjudged(mode: u8) -> Verdict {
    verdict(RULE_DENY, RULE_DENY, mode)
}

/// What decided a `verdict` with the same arguments.
#[inline(always)]
pub fn reason(flags: u8, mode: u8) -> Reason {
    if mode == MODE_ORPHANED {
        Reason::Orphaned
    } else if mode == MODE_REVOKED {
        Reason::Revoked
    } else if flags & (RULE_ALLOW | RULE_DENY) != 0 {
        Reason::Rule
    } else {
        Reason::Default
    }
}

/// The kinds of socket use judged as `Action::Socket`: each is denied unless the policy
/// allows it (`network.raw: allow` and so on). `LabelInfo::has_rules[Action::Socket]` holds
/// the `bit` of every allowed kind; the event's target is the kind's name.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SocketKind {
    /// SOCK_RAW in an internet family (or any family but AF_UNIX and AF_NETLINK).
    Raw = 0,
    /// Any AF_PACKET socket.
    Packet = 1,
    /// An SCTP socket, and SCTP_DSTADDRV4/V6 control messages.
    Sctp = 2,
    /// IP_OPTIONS, the IPv6 routing header, and the control messages that set them.
    IpOptions = 3,
}

/// Room for a `SocketKind`'s name in an event, NUL included.
pub const SOCKET_KIND_NAME: usize = 12;

impl SocketKind {
    pub const ALL: [SocketKind; 4] = [
        SocketKind::Raw,
        SocketKind::Packet,
        SocketKind::Sctp,
        SocketKind::IpOptions,
    ];

    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The policy key under `network` and the event's target.
    pub const fn as_str(self) -> &'static str {
        match self {
            SocketKind::Raw => "raw",
            SocketKind::Packet => "packet",
            SocketKind::Sctp => "sctp",
            SocketKind::IpOptions => "ip_options",
        }
    }

    /// `as_str` of each kind by discriminant, NUL-padded: the kernel copies one into an event.
    pub const EVENT_NAMES: [[u8; SOCKET_KIND_NAME]; 4] = [
        SocketKind::Raw.event_name(),
        SocketKind::Packet.event_name(),
        SocketKind::Sctp.event_name(),
        SocketKind::IpOptions.event_name(),
    ];

    const fn event_name(self) -> [u8; SOCKET_KIND_NAME] {
        let name = self.as_str().as_bytes();
        let mut out = [0; SOCKET_KIND_NAME];
        let mut i = 0;
        while i < name.len() {
            out[i] = name[i];
            i += 1;
        }
        out
    }
}

/// Bits of `LabelInfo::has_rules[Action::Connect]` (and `Action::Listen`): which of the two network lookups (with the
/// connection's port, and with port 0 for rules without a port) can match, so a policy whose
/// rules all have a port, or all lack one, costs one trie lookup per connection.
pub const NET_ANY_PORT_RULES: u8 = 1;
pub const NET_PORT_RULES: u8 = 2;

/// Key of the `LABELS` hash map: a label's cgroup (its cgroup v2 id, i.e. the directory's
/// inode number) in one policy generation. Keying by generation lets a reload write the new
/// policy beside the old one and switch every label with one write to `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelKey {
    pub cgroup_id: u64,
    pub generation: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelInfo {
    /// Stable index of the label: counters and events refer to it.
    pub label: u32,
    /// Rule set of the label's policy in this generation: the first bytes of every trie key.
    pub ruleset: u16,
    /// `MODE_ENFORCE`, `MODE_AUDIT` or `MODE_ORPHANED`.
    pub mode: u8,
    /// `LABEL_*` bits.
    pub flags: u8,
    /// Per action: `RULE_ALLOW` or `RULE_DENY` when no rule matches.
    pub defaults: [u8; Action::COUNT],
    /// Per action: non-zero when the policy has any rule at all, so the hook can skip
    /// resolving the path when only the default can apply. For connect, the `NET_*_RULES` bits.
    pub has_rules: [u8; Action::COUNT],
    /// Bit n set: the policy has a budget for the action with discriminant n (`LIMITS`);
    /// `BREAKER_SLOT`'s bit: it has a circuit breaker.
    pub limits: u16,
    pub _pad2: [u8; 2],
    /// Bit n set: capability n is denied (`DENIED_CAPABILITIES` less what the policy grants).
    pub denied_caps: u64,
}

/// `LabelInfo::flags`: send the label's allow decisions to the ring buffer too, as
/// `Config::events_allow` does for every label (`actgate learn` records a label this way).
pub const LABEL_EVENTS_ALLOW: u8 = 1;

/// Global switches, in a one-element array map so the daemon can flip them at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The generation of `LABELS` and trie entries in force.
    pub generation: u32,
    /// Send allow decisions to the ring buffer too (`--events-allow`).
    pub events_allow: u32,
    /// The daemon's process: no labelled task may signal or ptrace it.
    pub daemon_tgid: u32,
    /// The cgroup levels (root = 0) where label cgroups sit, shallowest first, ended by 0 when
    /// fewer than `MAX_LABEL_LEVELS`. A task's label is the first of its ancestors at these
    /// levels that `LABELS` holds, so finding it costs at most this many lookups.
    pub levels: [u8; MAX_LABEL_LEVELS],
}

/// How many different cgroup levels the label search looks at. A plan may use half of them:
/// while one generation replaces another, `Config::levels` holds both's (see the daemon's
/// `maps.rs`).
pub const MAX_LABEL_LEVELS: usize = 8;

/// The deepest level a label's cgroup may sit at (the kernel's cgroup levels are `int`s; this
/// bound keeps the levels in a byte).
pub const MAX_LABEL_LEVEL: u32 = u8::MAX as u32;

/// LPM tries accept at most 256 bytes of key data (`LPM_DATA_SIZE_MAX` in kernel/bpf/lpm_trie.c).
pub const PATH_KEY_DATA: usize = 256;
/// The trie key data starts with the rule set (big-endian u16), the action and a zero byte.
pub const PATH_KEY_HEADER: usize = 4;
/// Longest path a rule can name, keeping one byte for the NUL that marks an exact path.
pub const MAX_RULE_PATH: usize = PATH_KEY_DATA - PATH_KEY_HEADER - 1;

/// Key of the `PATH_RULES` LPM trie. `prefix_len` counts bits of `data`.
///
/// A rule for the exact path `/a/b` is stored as header + `/a/b\0`; a rule for the tree
/// `/a/**` as header + `/a/`. A lookup key holds the header and the NUL-terminated resolved
/// path, so an exact rule only matches the path itself and a tree rule everything beneath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub prefix_len: u32,
    pub data: [u8; PATH_KEY_DATA],
}

/// Action byte of the "move guard" entries in `PATH_RULES`: every directory above (and the
/// target of) a deny rule, stored as an exact path (for a `D/**` rule, `D` itself). Renaming
/// or hard-linking such a path would carry what the rule protects to a name no rule mentions,
/// and removing or replacing it (rmdir, unlink, rename or link onto it, a symlink in its
/// place) would put a tree of the agent's own where the rule points, so the kernel refuses
/// these.
pub const GUARD_ACTION: u8 = Action::COUNT as u8;

/// Fill in a trie key header.
pub fn path_key_header(ruleset: u16, action: Action) -> [u8; PATH_KEY_HEADER] {
    path_key_header_raw(ruleset, action as u8)
}

/// A trie key header for any action byte, `GUARD_ACTION` included.
pub fn path_key_header_raw(ruleset: u16, action: u8) -> [u8; PATH_KEY_HEADER] {
    let rs = ruleset.to_be_bytes();
    [rs[0], rs[1], action, 0]
}

/// Last header byte of the "below" marks in `PATH_RULES` (rules have 0 there, so the two
/// kinds never match each other's lookups). For every directory `D/` above the key of one of
/// an action's rules (strictly shorter than it), there is an entry header + `D/` whose value
/// is the length of `D/`. A directory without a mark has no rule beneath it, so every entry
/// in it gets the flags its own prefix gets: the kernel's directory cache (`dircache.rs`)
/// keeps those per directory and skips resolving the paths of the files in it.
pub const PATH_KEY_BELOW: u8 = 1;

/// The header of an action's "below" marks (see `PATH_KEY_BELOW`).
pub fn below_key_header(ruleset: u16, action: Action) -> [u8; PATH_KEY_HEADER] {
    let rs = ruleset.to_be_bytes();
    [rs[0], rs[1], action as u8, PATH_KEY_BELOW]
}

/// Network trie key data: rule set (big-endian u16), port (big-endian u16, 0 = any port),
/// family (4 or 6), the action (connect or listen), then the address (IPv4 in the first 4
/// bytes).
pub const NET_KEY_HEADER: usize = 6;
pub const NET_KEY_DATA: usize = 24;
pub const NET_FAMILY_V4: u8 = 4;
pub const NET_FAMILY_V6: u8 = 6;

/// Key of the `NET_RULES` LPM trie. A rule `10.0.0.0/8:443` has `prefix_len` 48 + 8; the kernel
/// looks a connection up twice, with its port and with port 0, and combines the two results.
/// IPv4-mapped IPv6 addresses are looked up as IPv4 (family 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub prefix_len: u32,
    pub data: [u8; NET_KEY_DATA],
}

/// Fill in a network trie key header.
pub fn net_key_header(ruleset: u16, action: Action, port: u16, family: u8) -> [u8; NET_KEY_HEADER] {
    let rs = ruleset.to_be_bytes();
    let p = port.to_be_bytes();
    [rs[0], rs[1], p[0], p[1], family, action as u8]
}

/// Key of the `INODE_RULES` hash map: a file denied by an exact path rule (or found with
/// several hard links beneath a denied tree), identified by device and inode, so that another
/// name for the same file (a hard link) meets the same rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeKey {
    /// The kernel's `dev_t` of the file system (`MKDEV(major, minor)`: major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
    pub ruleset: u16,
    pub action: u8,
    pub _pad: [u8; 5],
}

/// The exec target of a file with no path on disk (a memfd, an `O_TMPFILE` or a deleted
/// file): rules name it with this word, events report it. It is stored in the exec trie as an
/// exact path; it can't start with `/`, so no path rule matches it.
pub const ANONYMOUS: &str = "anonymous";

/// Room for a path resolved by `bpf_d_path`. Paths longer than the trie key still match tree
/// rules on their first bytes; the kernel refuses to resolve paths longer than this.
pub const PATH_BUF: usize = 4096;

/// Byte length of an event's target path.
pub const EVENT_PATH: usize = 256;
pub const COMM_LEN: usize = 16;

/// One decision, sent from the kernel to the daemon over the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub label: u32,
    pub action: u8,
    pub verdict: u8,
    /// Address family of a connect target (`NET_FAMILY_V4` or `NET_FAMILY_V6`: 4 or 6, not
    /// `AF_INET`), 0 for paths.
    pub family: u8,
    /// What decided: a `Reason`.
    pub reason: u8,
    /// Port of a connect target, host byte order.
    pub port: u16,
    pub _pad2: [u8; 2],
    /// The daemon's id of the host name a connect was judged by (`HostEntry::host`), 0 when
    /// no name spoke for it.
    pub host: u32,
    /// IPv4 (first 4 bytes) or IPv6 address of a connect target.
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// NUL-terminated resolved path of an exec or file target (truncated to fit).
    pub path: [u8; EVENT_PATH],
    /// The binary the process last executed under its label (`EXES`), as the kernel resolved
    /// it then; empty when the kernel never saw it. Captured in the kernel because the process
    /// may be gone before the daemon reads the event.
    pub exe: [u8; EVENT_PATH],
}

/// Key of the kernel's `EXES` map: a process (thread group) by its tgid and its leader's start
/// time (ns since boot), so that a recycled pid never inherits another process's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessKey {
    pub tgid: u32,
    pub _pad: u32,
    pub start_time: u64,
}

/// Processes whose executable the kernel remembers (least recently used ones are evicted).
pub const MAX_PROCESSES: u32 = 16384;

/// The running kernel's release (as `uname -r` prints it), or "unknown". Userspace only.
#[cfg(feature = "user")]
pub fn kernel_release() -> std::string::String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().into())
        .unwrap_or_else(|_| "unknown".into())
}

/// Room per label for revocation triggers in `REVOCATIONS`, append-only like `ACTION_SLOTS`.
pub const TRIGGER_SLOTS: u32 = 4;
const _: () = assert!(Trigger::COUNT as u32 <= TRIGGER_SLOTS);

/// Index of a revocation counter in `REVOCATIONS`.
pub const fn revocation_index(label: u32, trigger: Trigger) -> u32 {
    label * TRIGGER_SLOTS + trigger as u32
}

/// Value of the `REVOKED` map (label index → revocation): the label is revoked since
/// `time_ns` (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) by `trigger`. Written with `BPF_NOEXIST`,
/// so the first revocation stands and is counted once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub time_ns: u64,
    /// A `Trigger`.
    pub trigger: u8,
    /// For `Trigger::Budget`, the action whose budget ran out.
    pub action: u8,
    pub _pad: [u8; 6],
}

/// The slot of a label's circuit breaker among its `LIMITS` and `WINDOWS`, after the actions.
pub const BREAKER_SLOT: u32 = ACTION_SLOTS - 1;
const _: () = assert!((Action::COUNT as u32) < BREAKER_SLOT);

/// Key of the `LIMITS` hash map: a rule set's budget for one action, or its breaker
/// (`slot` = `BREAKER_SLOT`). Keyed by rule set like the tries, so a reload switches limits
/// with the rest of the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitKey {
    pub ruleset: u16,
    pub slot: u8,
    pub _pad: u8,
}

/// A budget (`max` allowed actions per `per_ms`) or a breaker (`max` denials within `per_ms`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub per_ms: u32,
    /// Non-zero: running out revokes the label (a budget's `then: revoke`; always for a
    /// breaker).
    pub revoke: u8,
    pub _pad: [u8; 3],
}

/// Most a budget or breaker may count in one window: a window's count has 24 bits.
pub const LIMIT_MAX: u32 = 1_000_000;
const _: () = assert!(LIMIT_MAX < 1 << 24);
/// Bounds of a window, in ms: a second to a day.
pub const LIMIT_WINDOW_MIN_MS: u32 = 1_000;
pub const LIMIT_WINDOW_MAX_MS: u32 = 86_400_000;

/// Index of a label's window in `WINDOWS` and of its over-budget count in `BUDGET_EXCEEDED`.
pub const fn limit_index(label: u32, slot: u32) -> u32 {
    label * ACTION_SLOTS + slot
}
pub const LIMIT_SLOTS: u32 = MAX_LABELS * ACTION_SLOTS;
const _: () = assert!(limit_index(MAX_LABELS - 1, BREAKER_SLOT) < LIMIT_SLOTS);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data: repr(C), only integer fields, padding made explicit.
    unsafe impl aya::Pod for LabelKey {}
    unsafe impl aya::Pod for LabelInfo {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PathKey {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for Revocation {}
    unsafe impl aya::Pod for LimitKey {}
    unsafe impl aya::Pod for Limit {}
    unsafe impl aya::Pod for dns::Resolver {}
    unsafe impl aya::Pod for dns::HostKey {}
    unsafe impl aya::Pod for dns::HostEntry {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn decision_indexes_are_unique_and_fit() {
        let mut seen = std::collections::BTreeSet::new();
        for l in 0..MAX_LABELS {
            for a in Action::ALL {
                for v in Verdict::ALL {
                    assert!(seen.insert(decision_index(l, a, v)));
                }
            }
        }
        assert!(*seen.iter().next_back().unwrap() < DECISION_SLOTS);
    }

    #[test]
    fn deny_beats_allow_and_the_default_fills_in_only_without_a_match() {
        for mode in [MODE_ENFORCE, MODE_AUDIT] {
            let denied = if mode == MODE_AUDIT {
                Verdict::Audit
            } else {
                Verdict::Deny
            };
            for default in [RULE_ALLOW, RULE_DENY] {
                let fallback = if default == RULE_DENY {
                    denied
                } else {
                    Verdict::Allow
                };
                assert_eq!(verdict(0, default, mode), fallback);
                assert_eq!(verdict(RULE_ALLOW, default, mode), Verdict::Allow);
                assert_eq!(verdict(RULE_DENY, default, mode), denied);
                assert_eq!(verdict(RULE_ALLOW | RULE_DENY, default, mode), denied);
            }
        }
    }

    #[test]
    fn an_orphaned_label_is_denied_whatever_matched() {
        for flags in [0, RULE_ALLOW, RULE_DENY, RULE_ALLOW | RULE_DENY] {
            for default in [RULE_ALLOW, RULE_DENY] {
                assert_eq!(verdict(flags, default, MODE_ORPHANED), Verdict::Deny);
                assert_eq!(reason(flags, MODE_ORPHANED), Reason::Orphaned);
            }
        }
    }

    #[test]
    fn the_reason_is_the_rule_when_one_matched_and_the_default_otherwise() {
        for mode in [MODE_ENFORCE, MODE_AUDIT] {
            assert_eq!(reason(0, mode), Reason::Default);
            assert_eq!(reason(RULE_ALLOW, mode), Reason::Rule);
            assert_eq!(reason(RULE_DENY, mode), Reason::Rule);
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_u8(r as u8), Some(r));
        }
        assert_eq!(Reason::from_u8(Reason::COUNT as u8), None);
    }

    #[test]
    fn what_the_kernel_cant_judge_is_denied_and_only_audited_in_audit_mode() {
        assert_eq!(unjudged(MODE_ENFORCE), Verdict::Deny);
        assert_eq!(unjudged(MODE_AUDIT), Verdict::Audit);
        assert_eq!(unjudged(MODE_ORPHANED), Verdict::Deny);
        assert_eq!(Reason::Unjudged.as_str(), "unjudged");
    }

    #[test]
    fn a_revoked_label_is_denied_everything_in_every_mode_with_reason_revoked() {
        for flags in [0, RULE_ALLOW, RULE_DENY] {
            for default in [RULE_ALLOW, RULE_DENY] {
                assert_eq!(verdict(flags, default, MODE_REVOKED), Verdict::Deny);
            }
            assert_eq!(reason(flags, MODE_REVOKED), Reason::Revoked);
        }
        assert_eq!(unjudged(MODE_REVOKED), Verdict::Deny);
    }

    #[test]
    fn revocation_and_limit_indexes_are_unique_and_fit() {
        let mut seen = std::collections::BTreeSet::new();
        for l in [0, 1, MAX_LABELS - 1] {
            for t in Trigger::ALL {
                assert!(seen.insert(revocation_index(l, t)));
            }
        }
    }

    #[test]
    fn a_protected_denial_holds_in_audit_mode() {
        let flags = RULE_DENY | RULE_PROTECT;
        for mode in [MODE_ENFORCE, MODE_AUDIT, MODE_ORPHANED, MODE_REVOKED] {
            assert_eq!(verdict(flags, RULE_ALLOW, mode), Verdict::Deny);
            assert_eq!(verdict(flags | RULE_ALLOW, RULE_ALLOW, mode), Verdict::Deny);
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<LabelKey>(), 16);
        assert_eq!(
            core::mem::size_of::<LabelInfo>(),
            8 + 2 * Action::COUNT + 2 + 2 + 8
        );
        assert_eq!(core::mem::offset_of!(LabelInfo, limits) % 2, 0);
        assert_eq!(core::mem::offset_of!(LabelInfo, denied_caps) % 8, 0);
        assert_eq!(core::mem::size_of::<Revocation>(), 16);
        assert_eq!(core::mem::size_of::<LimitKey>(), 4);
        assert_eq!(core::mem::size_of::<Limit>(), 12);
        assert_eq!(core::mem::size_of::<Config>(), 12 + MAX_LABEL_LEVELS);
        assert_eq!(core::mem::size_of::<PathKey>(), 4 + PATH_KEY_DATA);
        assert_eq!(core::mem::size_of::<ProcessKey>(), 16);
        assert_eq!(
            core::mem::size_of::<Event>(),
            8 + 8 + 5 * 4 + 4 + 2 + 6 + 16 + COMM_LEN + 2 * EVENT_PATH
        );
        assert_eq!(core::mem::offset_of!(Event, reason), 8 + 8 + 5 * 4 + 3);
    }
}
