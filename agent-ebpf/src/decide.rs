//! The shared part of every hook: rule lookup → verdict → counter → event → return value.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    Action, COMM_LEN, ERR_SCRATCH, Event, GUARD_ACTION, InodeKey, LabelInfo, MODE_AUDIT,
    NET_ANY_PORT_RULES, NET_KEY_DATA, NET_KEY_HEADER, NET_PORT_RULES, PATH_KEY_DATA,
    PATH_KEY_HEADER, RULE_ALLOW, RULE_DENY, Verdict, decision_index, net_key_header,
    path_key_header, path_key_header_raw,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::bpf_get_current_cgroup_id,
    },
    maps::{PerCpuArray, lpm_trie::Key},
};

use crate::{
    kernel::{self, get},
    maps::{self, Scratch},
    path::Target,
};

const EPERM: i32 = 1;

/// Turns the flags of the longest matching rule into a verdict: deny beats allow, and the
/// label's default applies when no rule matched.
#[inline(always)]
pub fn verdict(flags: u8, default: u8, mode: u8) -> Verdict {
    let denied = if flags & RULE_DENY != 0 {
        true
    } else if flags & RULE_ALLOW != 0 {
        false
    } else {
        default == RULE_DENY
    };
    match (denied, mode == MODE_AUDIT) {
        (false, _) => Verdict::Allow,
        (true, false) => Verdict::Deny,
        (true, true) => Verdict::Audit,
    }
}

/// The hook's return value for a verdict.
#[inline(always)]
pub fn errno(v: Verdict) -> i32 {
    if v == Verdict::Deny && get(&kernel::FAKE_ALLOW_ALL) == 0 {
        -EPERM
    } else {
        0
    }
}

/// The hook's return value for an internal error: it is counted and never blocks, because a
/// denial-of-service is not a policy.
#[inline(always)]
pub fn on_error(slot: u32) -> i32 {
    bump(&maps::ERRORS, slot);
    0
}

#[inline(always)]
fn events_allow() -> bool {
    maps::CONFIG.get(0).map(|c| c.events_allow).unwrap_or(0) != 0
}

/// Adds one to a per-CPU counter. The add is atomic because BPF programs can be preempted by
/// another task on the same CPU (they only disable migration), and a lost update would make
/// the exported counts wrong. (`AtomicU64` has no `fetch_add` on the BPF target; the
/// intrinsic compiles to BPF_ATOMIC_ADD.)
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = counters.get_ptr_mut(index) {
        // SAFETY: the map value is a valid, aligned u64 for the life of the program.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// Reads a kernel value through a pointer, 0 when the read fails.
#[inline(always)]
pub fn read<T: Default>(base: *const u8, offset: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .unwrap_or_default()
}

/// Loads a field of a kernel object whose BTF type the verifier knows: a hook's argument, or a
/// pointer loaded through `field` from one. The verifier turns the plain load into a
/// fault-safe PROBE_MEM load, which costs far less than `read`'s helper call. `offset` must be
/// one of the frozen .rodata globals (`kernel.rs`), which the verifier reads as constants.
#[inline(always)]
pub fn field<T>(base: *const u8, offset: u64) -> T {
    // SAFETY: see above; the verifier checks the access against the BTF type, and a faulting
    // PROBE_MEM load yields 0.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
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
        let nlink: u32 = field(inode, get(&kernel::INODE_I_NLINK));
        if nlink <= 1 && !always {
            return None;
        }
        let sb = field::<usize>(inode, get(&kernel::INODE_I_SB)) as *const u8;
        let dev: u32 = field(sb, get(&kernel::SUPER_BLOCK_S_DEV));
        Some(Inode {
            dev: u64::from(dev),
            ino: field(inode, get(&kernel::INODE_I_INO)),
        })
    }

    #[inline(always)]
    fn flags(&self, ruleset: u16, action: Action) -> u8 {
        let key = InodeKey {
            dev: self.dev,
            ino: self.ino,
            ruleset,
            action: action as u8,
            _pad: [0; 5],
        };
        // SAFETY: the value is copied out at once.
        unsafe { maps::INODE_RULES.get(key) }.copied().unwrap_or(0)
    }
}

/// The per-CPU scratch buffer.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU and the program doesn't migrate, so nobody else holds it meanwhile.
    maps::SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Judges `actions` on one path (and, for hard links, on the file's inode) for a labelled
/// task, stopping at the first denial. The path is resolved once, and only when a rule or an
/// event needs it.
#[inline(always)]
pub fn path_actions(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
) -> Result<Verdict, u32> {
    judge_path(info, target, inode, actions, false)
}

/// An exec of the binary at `target`. Unlike other path actions its path is always resolved:
/// a binary the process may run is remembered as its `exe` (see `process.rs`).
#[inline(always)]
pub fn exec_action(info: &LabelInfo, target: Target, inode: Option<Inode>) -> Result<Verdict, u32> {
    let s = scratch().ok_or(ERR_SCRATCH)?;
    crate::path::resolve(s, target)?;
    let v = judge_resolved(info, Action::Exec, s, inode, false);
    if v != Verdict::Deny {
        crate::process::remember_exe(&s.path);
    }
    Ok(v)
}

/// Like `path_actions` for the source of a rename or hard link: its file_write decision also
/// denies when the path holds something a deny rule protects (see `GUARD_ACTION`).
#[inline(always)]
pub fn moved_path(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
) -> Result<Verdict, u32> {
    judge_path(info, target, inode, actions, true)
}

#[inline(always)]
fn judge_path(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
    guard: bool,
) -> Result<Verdict, u32> {
    // A guard protects the targets of every path action's deny rules.
    let path_actions = [Action::Exec, Action::FileWrite, Action::FileRead];
    let mut need_path = guard
        && path_actions
            .iter()
            .any(|a| info.has_rules[*a as usize] != 0);
    for action in actions {
        let a = *action as usize;
        let has_rules = info.has_rules.get(a).copied().unwrap_or(0) != 0;
        let default = info.defaults.get(a).copied().unwrap_or(0);
        need_path |= has_rules || verdict(0, default, info.mode) != Verdict::Allow;
    }
    if !need_path && !events_allow() {
        // Only allowing defaults can apply: count them without resolving the path.
        for action in actions {
            bump(
                &maps::DECISIONS,
                decision_index(info.label, *action, Verdict::Allow),
            );
        }
        return Ok(Verdict::Allow);
    }
    let s = scratch().ok_or(ERR_SCRATCH)?;
    crate::path::resolve(s, target)?;
    let mut result = Verdict::Allow;
    for action in actions {
        let guarded = guard && *action == Action::FileWrite;
        let v = judge_resolved(info, *action, s, inode, guarded);
        result = worst(result, v);
        if v == Verdict::Deny {
            break;
        }
    }
    Ok(result)
}

/// One action on the path already resolved in `s`: one trie lookup, plus the inode's rules.
#[inline(always)]
fn judge_resolved(
    info: &LabelInfo,
    action: Action,
    s: &mut Scratch,
    inode: Option<Inode>,
    guarded: bool,
) -> Verdict {
    let a = action as usize;
    let mut flags = 0;
    if guarded {
        flags |= path_rule_flags(s, path_key_header_raw(info.ruleset, GUARD_ACTION)) & RULE_DENY;
    }
    if info.has_rules.get(a).copied().unwrap_or(0) != 0 {
        flags |= path_rule_flags(s, path_key_header(info.ruleset, action));
        if let Some(i) = inode {
            flags |= i.flags(info.ruleset, action);
        }
    }
    let v = verdict(flags, info.defaults.get(a).copied().unwrap_or(0), info.mode);
    record(info, action, v, |e| {
        // SAFETY: reads our own map memory.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(s.path.as_ptr(), &mut e.path) };
    });
    v
}

/// The flags of the longest `PATH_RULES` entry under `header` that is a prefix of the path
/// resolved in `s`.
#[inline(always)]
fn path_rule_flags(s: &mut Scratch, header: [u8; PATH_KEY_HEADER]) -> u8 {
    s.header = header;
    // The key's own length: the trie compares each rule's prefix against it. Bytes
    // bpf_d_path leaves after the NUL never matter, because no rule has a NUL before its end.
    s.prefix_len = (8 * PATH_KEY_DATA) as u32;
    // SAFETY: `Scratch` starts with an LPM key: prefix_len, then PATH_KEY_DATA bytes.
    let key = unsafe { &*(s as *const Scratch as *const Key<[u8; PATH_KEY_DATA]>) };
    maps::PATH_RULES.get(key).copied().unwrap_or(0)
}

/// An IPv4 or IPv6 destination, the address in network order, IPv4 in the first 4 bytes.
pub struct Dest {
    pub family: u8,
    pub port: u16,
    pub addr: [u8; 16],
}

/// Judges a connection to `d`: one trie lookup with the port, one with port 0 (rules without
/// a port), combined; each only when the policy has rules of its kind.
#[inline(always)]
pub fn net_action(info: &LabelInfo, d: &Dest) -> Verdict {
    let action = Action::Connect;
    let a = action as usize;
    let mut flags = 0;
    let kinds = info.has_rules.get(a).copied().unwrap_or(0);
    for (port, kind) in [(d.port, NET_PORT_RULES), (0, NET_ANY_PORT_RULES)] {
        if kinds & kind != 0 {
            let mut data = [0u8; NET_KEY_DATA];
            data[..NET_KEY_HEADER].copy_from_slice(&net_key_header(info.ruleset, port, d.family));
            data[NET_KEY_HEADER..NET_KEY_HEADER + 16].copy_from_slice(&d.addr);
            let key = Key::new((8 * NET_KEY_DATA) as u32, data);
            flags |= maps::NET_RULES.get(&key).copied().unwrap_or(0);
        }
    }
    let v = verdict(flags, info.defaults.get(a).copied().unwrap_or(0), info.mode);
    record(info, action, v, |e| {
        e.family = d.family;
        e.port = d.port;
        e.addr = d.addr;
    });
    v
}

/// Counts a decision and, for denials, audits and (if asked) allows, sends an event. A full
/// ring buffer is counted per action, never silent.
#[inline(always)]
pub fn record(info: &LabelInfo, action: Action, v: Verdict, fill_target: impl FnOnce(&mut Event)) {
    bump(&maps::DECISIONS, decision_index(info.label, action, v));
    if v == Verdict::Allow && !events_allow() {
        return;
    }
    let Some(mut entry) = maps::EVENTS.reserve::<Event>(0) else {
        bump(&maps::EVENTS_DROPPED, action as u32);
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helpers without pointer arguments.
    e.time_ns = unsafe { bpf_ktime_get_ns() };
    // The task's own cgroup (the label's or one beneath it), for the event's `cgroup`.
    // SAFETY: a helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.pid = pid_tgid as u32;
    e.tgid = (pid_tgid >> 32) as u32;
    e.uid = bpf_get_current_uid_gid() as u32;
    e.label = info.label;
    e.action = action as u8;
    e.verdict = v as u8;
    e.family = 0;
    e._pad = 0;
    e.port = 0;
    e._pad2 = [0; 6];
    e.addr = [0; 16];
    e.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    e.path[0] = 0;
    crate::process::fill_process(e);
    fill_target(e);
    entry.submit(0);
}

/// The frame of every hook: an earlier LSM's denial stands (the verdict of the previous
/// program is the argument after the hook's own `nargs`), unlabelled tasks pass untouched, and
/// `judge` decides for labelled ones.
#[inline(always)]
pub fn hook(
    ctx: &aya_ebpf::programs::LsmContext,
    nargs: usize,
    judge: impl FnOnce(&LabelInfo) -> Result<Verdict, u32>,
) -> i32 {
    hook_when(ctx, nargs, || true, judge)
}

/// `hook` for a hook that also sees calls no rule is about (`concerns` returns false): those
/// pass before the label lookup, which is most of what an unlabelled task pays.
#[inline(always)]
pub fn hook_when(
    ctx: &aya_ebpf::programs::LsmContext,
    nargs: usize,
    concerns: impl FnOnce() -> bool,
    judge: impl FnOnce(&LabelInfo) -> Result<Verdict, u32>,
) -> i32 {
    let previous: i32 = ctx.arg(nargs);
    if previous != 0 {
        return previous;
    }
    if !concerns() {
        return 0;
    }
    let Some(info) = crate::label::current() else {
        return 0;
    };
    match judge(&info) {
        Ok(v) => errno(v),
        Err(slot) => {
            aya_log_ebpf::warn!(
                ctx,
                "label {}: could not judge an action (error slot {}); allowed and counted",
                info.label,
                slot
            );
            on_error(slot)
        }
    }
}

/// The worse of two verdicts (deny over audit over allow), so a hook that judges several
/// things refuses when any of them is refused.
#[inline(always)]
pub fn worst(a: Verdict, b: Verdict) -> Verdict {
    if a == Verdict::Deny || b == Verdict::Deny {
        Verdict::Deny
    } else if a == Verdict::Audit || b == Verdict::Audit {
        Verdict::Audit
    } else {
        Verdict::Allow
    }
}
