//! Which binary a labelled process runs, remembered in the kernel for its events.
//!
//! The daemon reads events after the fact, when a short-lived process (a `cat` denied a
//! secret) is often gone and /proc can no longer say what it was. So `bprm_check_security`
//! stores the path it resolved in `EXES`, a fork hands the parent's entry to the child, and
//! `record` copies the entry into each event.

use agent_common::{EVENT_PATH, Event, PATH_BUF, ProcessKey};
use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    decide::read,
    kernel::{self, get},
    maps,
};

/// The current task (`struct task_struct *`).
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// A task's process, keyed by tgid and the start time of its thread group leader (which an
/// exec from another thread inherits, so the key survives it).
#[inline(always)]
fn key_of(task: *const u8) -> ProcessKey {
    let leader = read::<usize>(task, get(&kernel::TASK_STRUCT_GROUP_LEADER)) as *const u8;
    ProcessKey {
        tgid: read(task, get(&kernel::TASK_STRUCT_TGID)),
        _pad: 0,
        start_time: read(leader, get(&kernel::TASK_STRUCT_START_TIME)),
    }
}

/// Remembers `path` (a resolved, NUL-terminated path of `PATH_BUF` bytes) as the binary the
/// current process executes. Only its first `EVENT_PATH` bytes are kept, as in events.
#[inline(always)]
pub fn remember_exe(path: &[u8; PATH_BUF]) {
    // SAFETY: the first EVENT_PATH bytes of a PATH_BUF array.
    let exe = unsafe { &*(path.as_ptr() as *const [u8; EVENT_PATH]) };
    // A full map evicts its least recently used entry; a failure only costs an event's `exe`.
    let _ = maps::EXES.insert(key_of(current_task()), exe, 0);
}

/// Copies the current process's remembered binary into `e.exe`, or leaves it empty.
#[inline(always)]
pub fn fill_exe(e: &mut Event) {
    e.exe[0] = 0;
    if let Some(exe) = maps::EXES.get_ptr(key_of(current_task())) {
        // SAFETY: copies from our own map value into the ring buffer entry, both EVENT_PATH bytes.
        let _ = unsafe {
            bpf_probe_read_kernel(
                e.exe.as_mut_ptr() as *mut _,
                EVENT_PATH as u32,
                exe as *const _,
            )
        };
    }
}

/// A new process of a labelled parent runs the parent's binary until it executes its own.
/// Threads (same tgid) share the parent's entry already.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if crate::label::current().is_none() {
        return 0;
    }
    // The tracepoint's arguments are (struct task_struct *parent, *child).
    let (parent, child): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    let child_key = key_of(child);
    let parent_key = key_of(parent);
    if child_key.tgid == parent_key.tgid {
        return 0;
    }
    if let Some(exe) = maps::EXES.get_ptr(parent_key) {
        // SAFETY: a map value of the right type, read by the helper during the call.
        let exe = unsafe { &*exe };
        // By reference: the helper reads the parent's map value in place, where a by-value
        // argument would first copy 256 bytes onto the 512-byte stack.
        let _ = maps::EXES.insert(child_key, exe, 0);
    }
    0
}
