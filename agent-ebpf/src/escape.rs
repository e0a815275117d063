//! The routes by which a task, root or not, could get out from under its label: bpf(2) (the
//! maps and programs that enforce), capabilities that undo the policy, signals and ptrace
//! aimed at the daemon, a clone into another cgroup, user namespaces, and mounts. The writes
//! to cgroupfs and bpffs that would do the same are refused in `file.rs`.

use agent_common::{
    Action, CAP_NAME_LEN, CAPABILITIES, DENIED_CAPABILITIES, Hook, RULE_ALLOW, RULE_DENY, Verdict,
};
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::lsm, programs::LsmContext};

use crate::{
    hook::{frame, frame_when},
    judge::{enforced, fixed},
    kernel::{self, field, get, read},
    label, maps,
};

/// `clone3`'s flag to start the child in the cgroup its `cgroup` fd names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `security_capable`'s opts bit for a check the kernel makes on its own account (to size a
/// memory reservation, to filter what /proc shows): denied like any other, but not counted,
/// since the task didn't ask for anything. The same holds for `PTRACE_MODE_NOAUDIT`.
const CAP_OPT_NOAUDIT: u32 = 1 << 1;
/// open_by_handle_at's capability. The kernel also asks for it on every read root makes past
/// a file's mode bits, and falls back to CAP_DAC_OVERRIDE when it is refused, so those reads
/// still work: its denials are not counted either, or every such read would look refused
/// (and feed the circuit breaker).
const CAP_DAC_READ_SEARCH: i32 = 2;
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
const TIOCSTI: u32 = 0x5412;

/// The capability names, padded, so an event can name one with a bounded copy.
static CAP_NAMES: [[u8; CAP_NAME_LEN]; 64] = {
    let mut table = [[0u8; CAP_NAME_LEN]; 64];
    let mut i = 0;
    while i < CAPABILITIES.len() {
        let name = CAPABILITIES[i].as_bytes();
        let mut j = 0;
        while j < name.len() {
            table[i][j] = name[j];
            j += 1;
        }
        i += 1;
    }
    table
};

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    frame(&ctx, Hook::BPF, |info| {
        Ok(fixed(info, Action::Bpf, 0, |_| {}))
    })
}

/// Whether `cred` is the current task's own: a check made with other credentials is the kernel
/// acting for someone else, such as overlayfs reading its trusted.* xattrs with its mounter's
/// credentials (override_creds), and refusing it would change what the task sees.
#[inline(always)]
fn own_credentials(cred: usize) -> bool {
    // SAFETY: a helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    read::<usize>(task, get(&kernel::TASK_STRUCT_REAL_CRED)) == cred
}

#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let cred: usize = ctx.arg(0);
    let cap: i32 = ctx.arg(2);
    let bit = 1u64.checked_shl(cap as u32).unwrap_or(0);
    // Most checks are for capabilities nobody denies; they leave before the label lookup.
    let concerns = || bit & DENIED_CAPABILITIES != 0 && own_credentials(cred);
    frame_when(&ctx, Hook::CAPABLE, concerns, |info| {
        let opts: u32 = ctx.arg(3);
        // Under `process.namespaces: allow`, a capability in a user namespace below the host's
        // is granted: root there is root over that namespace's own mounts and nothing else,
        // which is what the policy allowed. Without it, such a check is judged like the
        // host's: entering a namespace someone else made would bring their mounts along.
        let ns: *const u8 = ctx.arg(1);
        let level: u32 = field(ns, get(&kernel::USER_NAMESPACE_LEVEL));
        let namespaces_allowed = info.defaults[Action::Namespace as usize] == RULE_ALLOW;
        let flags = if info.denied_caps & bit == 0 || (level > 0 && namespaces_allowed) {
            RULE_ALLOW
        } else {
            RULE_DENY
        };
        if opts & CAP_OPT_NOAUDIT != 0 || cap == CAP_DAC_READ_SEARCH {
            return Ok(agent_common::verdict(flags, RULE_DENY, enforced(info.mode)));
        }
        Ok(fixed(info, Action::Capability, flags, |e| {
            e.path[..CAP_NAME_LEN].copy_from_slice(&CAP_NAMES[cap as usize & 63]);
        }))
    })
}

/// Whether `task` (a BTF-typed `struct task_struct *`) belongs to the daemon.
#[inline(always)]
fn is_daemon(task: *const u8) -> bool {
    let tgid: u32 = field(task, get(&kernel::TASK_STRUCT_TGID));
    tgid != 0 && maps::CONFIG.get(0).map(|c| c.daemon_tgid) == Some(tgid)
}

/// Every signal a task sends (kill, tgkill, pidfd_send_signal, a group or -1 broadcast)
/// reaches here once per receiving process.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let target: *const u8 = ctx.arg(0);
    frame_when(
        &ctx,
        Hook::TASK_KILL,
        || is_daemon(target),
        |info| Ok(fixed(info, Action::Signal, 0, |_| {})),
    )
}

/// ptrace attach, /proc/PID/mem, environ and fd, process_vm_readv/writev, pidfd_getfd and kcmp
/// all ask `ptrace_may_access`, which ends here. A labelled task may reach into the processes
/// of its own label only: one outside it (an unlabelled shell of the same user, another
/// label's agent) would do whatever it was made to, unjudged, and the daemon is outside
/// every label.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let child: *const u8 = ctx.arg(0);
    frame(&ctx, Hook::PTRACE_ACCESS_CHECK, |info| {
        if !is_daemon(child) && label::cgroup_of(child) == label::current_cgroup() {
            return Ok(Verdict::Allow);
        }
        let mode: u32 = ctx.arg(1);
        if mode & PTRACE_MODE_NOAUDIT != 0 {
            return Ok(agent_common::verdict(
                0,
                info.defaults[Action::Ptrace as usize],
                enforced(info.mode),
            ));
        }
        Ok(fixed(info, Action::Ptrace, 0, |_| {}))
    })
}

/// TIOCSTI pushes bytes into a terminal's input, as if typed: an agent sharing its user's
/// terminal would have the shell that started it run commands after it exits, unlabelled.
/// 6.2 and later refuse it without CAP_SYS_ADMIN unless built with LEGACY_TIOCSTI; 6.1 always
/// allows it on the caller's own terminal. Judged as reaching into another process.
#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(1);
    frame_when(
        &ctx,
        Hook::FILE_IOCTL,
        || cmd == TIOCSTI,
        |info| {
            Ok(fixed(info, Action::Ptrace, 0, |e| {
                e.path[..8].copy_from_slice(b"TIOCSTI\0")
            }))
        },
    )
}

/// `copy_process` asks before `cgroup_can_fork` moves the child, so a denied clone never
/// starts outside the label.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    frame_when(
        &ctx,
        Hook::TASK_ALLOC,
        || flags & CLONE_INTO_CGROUP != 0,
        |info| Ok(fixed(info, Action::Cgroup, 0, |_| {})),
    )
}

/// A namespace or mount operation, named in the event's target: allowed only by
/// `process.namespaces: allow`.
#[inline(always)]
fn namespace_op(info: &agent_common::LabelInfo, op: &[u8]) -> Verdict {
    fixed(info, Action::Namespace, 0, |e| {
        let n = op.len().min(e.path.len() - 1);
        e.path[..n].copy_from_slice(&op[..n]);
    })
}

/// A hook that only namespaces and mounts reach, judged as `namespace_op`.
macro_rules! namespace_hook {
    ($name:ident, $hook:literal, $konst:ident, $op:literal) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            frame(&ctx, Hook::$konst, |info| Ok(namespace_op(info, $op)))
        }
    };
}

// A user namespace makes its creator root over mounts of its own, which the path rules don't
// know about.
namespace_hook!(userns_create, "userns_create", USERNS_CREATE, b"userns");
// A mount, a moved or cloned mount, pivot_root and chroot all change which file a path names,
// so a rule about the path would judge another file. They need CAP_SYS_ADMIN or
// CAP_SYS_CHROOT, or a user namespace, which actgate denies too; these hooks hold when the
// policy grants one of those. mount(2) asks sb_mount before checking the capability.
namespace_hook!(sb_mount, "sb_mount", SB_MOUNT, b"mount");
namespace_hook!(move_mount, "move_mount", MOVE_MOUNT, b"move_mount");
namespace_hook!(sb_pivotroot, "sb_pivotroot", SB_PIVOTROOT, b"pivot_root");
namespace_hook!(path_chroot, "path_chroot", PATH_CHROOT, b"chroot");
