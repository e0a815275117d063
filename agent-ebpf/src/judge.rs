//! Rule lookups: from a labelled task's action to a verdict, recorded. Path actions resolve
//! the path once and look it up in `PATH_RULES` (and, for hard links, the file in
//! `INODE_RULES`); connections look the destination up in `NET_RULES`, and in `HOSTS` for the
//! names the label looked up.

use agent_common::{
    ANONYMOUS, Action, Event, GUARD_ACTION, InodeKey, KernelError, LabelInfo, MODE_AUDIT,
    MODE_ENFORCE, NET_ANY_PORT_RULES, NET_KEY_DATA, NET_KEY_HEADER, NET_PORT_RULES, PATH_KEY_DATA,
    PATH_KEY_HEADER, RULE_ALLOW, RULE_DENY, Reason, SOCKET_KIND_NAME, SocketKind, Verdict,
    dns::HostKey, net_key_header, path_key_header, path_key_header_raw, reason, verdict,
};
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, generated::bpf_probe_read_kernel,
    },
    maps::lpm_trie::Key,
};

use crate::{
    dircache::{self, Cached, Dir},
    kernel::{self, Inode, get, read},
    limits,
    maps::{self, Scratch},
    path::{self, Target},
    process,
    record::{self, record},
};

/// The flags of the label's rule set for `action` on the file `inode`.
#[inline(always)]
fn inode_flags(inode: &Inode, ruleset: u16, action: Action) -> u8 {
    let key = InodeKey {
        dev: inode.dev,
        ino: inode.ino,
        ruleset,
        action: action as u8,
        _pad: [0; 5],
    };
    // SAFETY: the value is copied out at once.
    unsafe { maps::INODE_RULES.get(key) }.copied().unwrap_or(0)
}

/// The per-CPU scratch buffer.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch, KernelError> {
    // SAFETY: per-CPU and the program doesn't migrate, so nobody else holds it meanwhile.
    maps::SCRATCH
        .get_ptr_mut(0)
        .map(|p| unsafe { &mut *p })
        .ok_or(KernelError::ScratchUnavailable)
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
) -> Result<Verdict, KernelError> {
    judge_path(info, target, inode, actions, false, || None)
}

/// `path_actions` for a target whose directory `dir` gives: the decision may come from the
/// directory cache (`dircache.rs`), and the resolved path fills it.
#[inline(always)]
pub fn cached_path_actions(
    info: &LabelInfo,
    dir: impl FnOnce() -> Option<Dir>,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
) -> Result<Verdict, KernelError> {
    judge_path(info, target, inode, actions, false, dir)
}

/// What an exec or an executable mapping runs.
#[derive(Clone, Copy)]
pub enum Executable {
    /// A file with a path, and its inode when it has other names.
    File(Target, Option<Inode>),
    /// A file with no path on disk, judged as `agent_common::ANONYMOUS`.
    Anonymous,
}

/// An exec of `exe`. Unlike other path actions its path is always resolved: a binary the
/// process may run is remembered as its `exe` (see `process.rs`).
#[inline(always)]
pub fn exec_action(info: &LabelInfo, exe: Executable) -> Result<Verdict, KernelError> {
    let s = scratch()?;
    let v = match exe {
        Executable::File(target, inode) => {
            if let Some(v) = unresolved(info, s, target, Action::Exec) {
                return Ok(v);
            }
            judge_resolved(info, Action::Exec, s, inode, false)
        }
        Executable::Anonymous => anonymous(info, s),
    };
    if v != Verdict::Deny {
        process::remember_exe(&s.path);
    }
    Ok(v)
}

/// An executable mapping of `exe`: an exec of it, judged like other path actions (the path
/// is resolved only when a rule or an event needs it, since a process maps every shared
/// library it loads) and not remembered, since the process keeps running what it ran. `dir`
/// gives the file's directory for the directory cache, as in `cached_path_actions`.
#[inline(always)]
pub fn mapped(
    info: &LabelInfo,
    exe: Executable,
    dir: impl FnOnce() -> Option<Dir>,
) -> Result<Verdict, KernelError> {
    match exe {
        Executable::File(target, inode) => {
            cached_path_actions(info, dir, target, inode, &[Action::Exec])
        }
        Executable::Anonymous => Ok(anonymous(info, scratch()?)),
    }
}

/// An exec of a file with no path on disk: no path rule can speak for it, and a copy of any
/// binary can be made one, so it is denied unless the exec rules name `anonymous`, whatever
/// the exec default.
#[inline(always)]
fn anonymous(info: &LabelInfo, s: &mut Scratch) -> Verdict {
    let name = ANONYMOUS.as_bytes();
    for (i, b) in name.iter().enumerate() {
        s.path[i] = *b;
    }
    s.path[name.len()] = 0;
    let action = Action::Exec;
    let flags = if has_rules(info, action) {
        path_rule_flags(s, path_key_header(info.ruleset, action))
    } else {
        0
    };
    let v = verdict(flags, RULE_DENY, info.mode);
    record_path(info, action, v, reason(flags, info.mode), s);
    v
}

/// Like `path_actions` for a name that is moved, removed or replaced (both names of a rename,
/// a hard link's source and new name, unlink, rmdir, symlink): its file_write decision also
/// denies when the path is one a deny rule protects (see `GUARD_ACTION`).
#[inline(always)]
pub fn moved_path(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
) -> Result<Verdict, KernelError> {
    judge_path(info, target, inode, actions, true, || None)
}

#[inline(always)]
fn judge_path(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    actions: &[Action],
    guard: bool,
    dir: impl FnOnce() -> Option<Dir>,
) -> Result<Verdict, KernelError> {
    if !needs_path(info, actions, guard) {
        // Only allowing defaults can apply: count them without resolving the path.
        for action in actions {
            record::count(info, *action, Verdict::Allow);
        }
        return Ok(Verdict::Allow);
    }
    let s = scratch()?;
    // Taken before the path is resolved: see `dircache`.
    let dir = if dircache::usable(info, actions) {
        dir()
    } else {
        None
    };
    let mut fill = false;
    if let Some(d) = &dir {
        match cached(info, d, s, inode, actions) {
            Ok(v) => return Ok(v),
            Err(unknown) => fill = unknown,
        }
    }
    let first = actions.first().copied().unwrap_or(Action::FileWrite);
    if let Some(v) = unresolved(info, s, target, first) {
        return Ok(v);
    }
    let mut result = Verdict::Allow;
    for action in actions {
        let guarded = guard && *action == Action::FileWrite;
        let v = judge_resolved(info, *action, s, inode, guarded);
        result = worst(result, v);
        if v == Verdict::Deny {
            break;
        }
    }
    if fill && let Some(d) = &dir {
        for action in actions {
            d.fill(info, *action, s);
        }
    }
    Ok(result)
}

/// The decision on `actions` from the directory cache, when every one of them is cached and
/// allowed (then counted as `judge_resolved` would). Otherwise the path decides, and the error
/// says whether the cache lacked what it could learn from the path.
#[inline(always)]
fn cached(
    info: &LabelInfo,
    d: &Dir,
    s: &mut Scratch,
    inode: Option<Inode>,
    actions: &[Action],
) -> Result<Verdict, bool> {
    for action in actions {
        let flags = match d.get(info, *action, s) {
            Cached::Flags(flags) => with_inode(info, *action, flags, inode),
            Cached::Resolve => return Err(false),
            Cached::Unknown => return Err(true),
        };
        if verdict(flags, default(info, *action), info.mode) != Verdict::Allow {
            return Err(false);
        }
    }
    for action in actions {
        // An allow sends no event here (`dircache::usable`), so the target isn't needed.
        record(info, *action, Verdict::Allow, Reason::Rule, |_| {});
    }
    Ok(Verdict::Allow)
}

/// One judgment of `steps.rs`: `action` on `target`, like `judge_path` with that one action.
/// `resolved` says whether the scratch buffer holds the target's path already (the step
/// before was about the same name), and is set once it does.
#[inline(always)]
pub fn step(
    info: &LabelInfo,
    target: Target,
    inode: Option<Inode>,
    action: Action,
    guard: bool,
    resolved: &mut bool,
) -> Result<Verdict, KernelError> {
    if !needs_path(info, &[action], guard) {
        record::count(info, action, Verdict::Allow);
        return Ok(Verdict::Allow);
    }
    let s = scratch()?;
    if !*resolved {
        if let Some(v) = unresolved(info, s, target, action) {
            return Ok(v);
        }
        *resolved = true;
    }
    let guarded = guard && action == Action::FileWrite;
    Ok(judge_resolved(info, action, s, inode, guarded))
}

/// Whether judging `actions` takes the path: a rule, a budget or a refusing default may apply,
/// or allowed actions are sent as events too.
#[inline(always)]
fn needs_path(info: &LabelInfo, actions: &[Action], guard: bool) -> bool {
    // A guard protects the targets of every path action's deny rules.
    let path_actions = [
        Action::Exec,
        Action::FileWrite,
        Action::FileRead,
        Action::FileDelete,
    ];
    let mut need_path = guard
        && path_actions
            .iter()
            .any(|a| info.has_rules[*a as usize] != 0);
    for action in actions {
        // A budget needs the path too, for the event of an action over it.
        need_path |= has_rules(info, *action)
            || limits::limited(info, *action)
            || verdict(0, default(info, *action), info.mode) != Verdict::Allow;
    }
    need_path || record::events_allow(info)
}

/// Resolves `target` into `s`, or refuses the action when its path can't be named (see
/// `record::unjudged_action`): `Some` is that verdict, already recorded.
#[inline(always)]
fn unresolved(
    info: &LabelInfo,
    s: &mut Scratch,
    target: Target,
    action: Action,
) -> Option<Verdict> {
    match path::resolve(s, target) {
        Ok(()) => None,
        Err(e) => Some(record::unjudged_action(info, action, e, |ev| {
            path::name_into(target, &mut ev.path)
        })),
    }
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
    let mut flags = 0;
    if guarded {
        flags |= path_rule_flags(s, path_key_header_raw(info.ruleset, GUARD_ACTION)) & RULE_DENY;
    }
    if has_rules(info, action) {
        let path = path_rule_flags(s, path_key_header(info.ruleset, action));
        flags |= with_inode(info, action, path, inode);
    }
    let v = verdict(flags, default(info, action), info.mode);
    record_path(info, action, v, reason(flags, info.mode), s);
    v
}

/// Whether the label's section has rules of `action`.
#[inline(always)]
pub fn has_rules(info: &LabelInfo, action: Action) -> bool {
    info.has_rules.get(action as usize).copied().unwrap_or(0) != 0
}

/// The label's default for `action`.
#[inline(always)]
fn default(info: &LabelInfo, action: Action) -> u8 {
    info.defaults.get(action as usize).copied().unwrap_or(0)
}

/// `path`, the flags of `action`'s rules for a path, with those of the rules for the file's
/// other names (hard links: see `inode_flags`), when the label has rules of `action`.
#[inline(always)]
fn with_inode(info: &LabelInfo, action: Action, path: u8, inode: Option<Inode>) -> u8 {
    match inode {
        Some(i) if has_rules(info, action) => path | inode_flags(&i, info.ruleset, action),
        _ => path,
    }
}

/// Records a decision about the path resolved in `s`.
#[inline(always)]
fn record_path(info: &LabelInfo, action: Action, v: Verdict, why: Reason, s: &Scratch) {
    record(info, action, v, why, |e| fill_path(e, s));
}

/// Names the path resolved in `s` as an event's target.
#[inline(always)]
pub fn fill_path(e: &mut Event, s: &Scratch) {
    // SAFETY: reads our own map memory.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(s.path.as_ptr(), &mut e.path) };
}

/// The flags of the longest `PATH_RULES` entry under `header` that is a prefix of the path
/// resolved in `s`.
#[inline(always)]
fn path_rule_flags(s: &mut Scratch, header: [u8; PATH_KEY_HEADER]) -> u8 {
    // The key's own length: the trie compares each rule's prefix against it. Bytes
    // bpf_d_path leaves after the NUL never matter, because no rule has a NUL before its end.
    s.lookup(header, (8 * PATH_KEY_DATA) as u32)
}

/// An IPv4 or IPv6 destination, the address in network order, IPv4 in the first 4 bytes.
pub struct Dest {
    /// `NET_FAMILY_V4` or `NET_FAMILY_V6`.
    pub family: u8,
    pub port: u16,
    pub addr: [u8; 16],
}

/// Judges a connection to `d` (or a listen on it): one trie lookup with the port, one with
/// port 0 (rules without a port), combined; each only when the policy has rules of its kind.
/// A connection also takes the rules of the names whose lookups returned `d` (`hosts`).
#[inline(always)]
pub fn net_action(info: &LabelInfo, action: Action, d: &Dest) -> Verdict {
    let a = action as usize;
    let mut flags = 0;
    let kinds = info.has_rules.get(a).copied().unwrap_or(0);
    for (port, kind) in [(d.port, NET_PORT_RULES), (0, NET_ANY_PORT_RULES)] {
        if kinds & kind != 0 {
            let mut data = [0u8; NET_KEY_DATA];
            data[..NET_KEY_HEADER].copy_from_slice(&net_key_header(
                info.ruleset,
                action,
                port,
                d.family,
            ));
            data[NET_KEY_HEADER..NET_KEY_HEADER + 16].copy_from_slice(&d.addr);
            let key = Key::new((8 * NET_KEY_DATA) as u32, data);
            flags |= maps::NET_RULES.get(&key).copied().unwrap_or(0);
        }
    }
    let mut host = 0;
    if action == Action::Connect {
        (flags, host) = hosts(info, d, flags);
    }
    let v = verdict(flags, info.defaults.get(a).copied().unwrap_or(0), info.mode);
    record(info, action, v, reason(flags, info.mode), |e| {
        fill_dest(e, d);
        e.host = host;
    });
    limits::note_dest(d);
    v
}

/// `flags` with those of the label's `HOSTS` entries for `d` (with its port, then for every
/// port) that haven't expired, and the host id of the first of them (0 for none). Looked up
/// for every connect: a label may have name rules only, which set no `has_rules` bit.
#[inline(always)]
fn hosts(info: &LabelInfo, d: &Dest, mut flags: u8) -> (u8, u32) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut key = HostKey {
        label: info.label,
        port: d.port,
        family: d.family,
        _pad: 0,
        addr: d.addr,
    };
    let mut host = 0;
    for port in [d.port, 0] {
        key.port = port;
        // SAFETY: the value is copied out at once.
        if let Some(e) = unsafe { maps::HOSTS.get(key) }.copied()
            && now < e.expires_ns
        {
            flags |= e.flags;
            if host == 0 {
                host = e.host;
            }
        }
    }
    (flags, host)
}

/// Names the destination `d` as an event's target.
#[inline(always)]
pub fn fill_dest(e: &mut Event, d: &Dest) {
    e.family = d.family;
    e.port = d.port;
    e.addr = d.addr;
}

/// A connect or send to the AF_UNIX socket with the abstract address `addr` (a `struct
/// unix_address *`), judged as the path `@name` against the label's `network.unix` rules.
///
/// Infallible on purpose: a `Result` here, merged with `path_actions`' in the unix hooks,
/// made LLVM move an undefined register, which the verifier refuses. The per-CPU scratch
/// buffer can't be missing; if it were, the action could not be judged and is denied.
#[inline(always)]
pub fn abstract_socket(info: &LabelInfo, addr: *const u8) -> Verdict {
    let Ok(s) = scratch() else {
        return record::unjudged_action(
            info,
            Action::UnixConnect,
            KernelError::ScratchUnavailable,
            |_| {},
        );
    };
    // `len` counts sun_family (2 bytes) and the leading NUL of an abstract name.
    let len = read::<i32>(addr, get(&kernel::UNIX_ADDRESS_LEN)) - 3;
    let len = len.clamp(0, UNIX_NAME_MAX) as usize;
    let name = addr.wrapping_add(get(&kernel::UNIX_ADDRESS_NAME) as usize + 3);
    s.path[0] = b'@';
    // SAFETY: at most UNIX_NAME_MAX bytes into our own map memory; the helper checks `name`.
    unsafe {
        bpf_probe_read_kernel(
            s.path.as_mut_ptr().wrapping_add(1) as *mut _,
            len as u32,
            name as *const _,
        )
    };
    s.path[1 + (len & 127)] = 0;
    judge_resolved(info, Action::UnixConnect, s, None, false)
}

/// Longest abstract AF_UNIX name: sun_path (108 bytes) less its leading NUL.
const UNIX_NAME_MAX: i32 = 107;

/// A socket use of `kind` (`Action::Socket`): allowed only when the policy names the kind.
#[inline(always)]
pub fn socket_use(info: &LabelInfo, kind: SocketKind) -> Verdict {
    let a = Action::Socket as usize;
    let allowed = info.has_rules.get(a).copied().unwrap_or(0) & kind.bit() != 0;
    let flags = if allowed { RULE_ALLOW } else { 0 };
    let v = verdict(flags, info.defaults.get(a).copied().unwrap_or(0), info.mode);
    record(info, Action::Socket, v, reason(flags, info.mode), |e| {
        let name = SocketKind::EVENT_NAMES[kind as usize & 3];
        e.path[..SOCKET_KIND_NAME].copy_from_slice(&name);
    });
    v
}

/// An action judged without rule lookups: `flags` are what the policy says about this very
/// call (`RULE_DENY` for a granted-nothing capability, 0 to let the label's default decide).
/// `fill_target` names the target in the event.
///
/// These are actgate's own protections (see `escape.rs`), enforced in audit mode too: a label
/// that is only observed could otherwise switch enforcement off for every other label.
#[inline(always)]
pub fn fixed(
    info: &LabelInfo,
    action: Action,
    flags: u8,
    fill_target: impl FnOnce(&mut Event),
) -> Verdict {
    let default = info.defaults.get(action as usize).copied().unwrap_or(0);
    let mode = enforced(info.mode);
    let v = verdict(flags, default, mode);
    record(info, action, v, reason(flags, mode), fill_target);
    v
}

/// `mode`, with audit made enforce.
#[inline(always)]
pub fn enforced(mode: u8) -> u8 {
    if mode == MODE_AUDIT {
        MODE_ENFORCE
    } else {
        mode
    }
}

/// An `action` no labelled task may take, whatever the policy's rules say: a write to a file
/// system it may not change (cgroupfs, bpffs), an open of a block device. Denied, with the
/// path when it resolves.
#[inline(always)]
pub fn protected(info: &LabelInfo, action: Action, target: Target) -> Verdict {
    let s = scratch().ok();
    let resolved = match s {
        Some(s) => path::resolve(s, target).is_ok().then_some(s),
        None => None,
    };
    fixed(info, action, RULE_DENY, |e| {
        if let Some(s) = resolved {
            // SAFETY: reads our own map memory.
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(s.path.as_ptr(), &mut e.path) };
        }
    })
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
