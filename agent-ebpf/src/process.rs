//! Which binary a labelled process runs, remembered in the kernel for its events.
//!
//! The daemon reads events after the fact, when a short-lived process (a `cat` denied a
//! secret) is often gone and /proc can no longer say what it was. So `bprm_check_security`
//! stores the path it resolved in `EXES`, and `record` copies the entry into each event while
//! the process still runs. A child that forked without an exec runs its parent's binary, so it
//! gets the parent's entry; forks themselves are not hooked, because most are followed by an
//! exec and would pay for a copy nobody reads.

use agent_common::{EVENT_PATH, Event, PATH_BUF, ProcessKey};
use aya_ebpf::helpers::generated::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::{
    kernel::{self, get, read},
    maps,
};

/// The current task (`struct task_struct *`).
#[inline(always)]
fn current_task() -> *const u8 {
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

/// Fills the event's `ppid`, and its `exe` with the remembered binary of the current process
/// (or else of its parent, for a child that forked without an exec), or leaves it empty.
#[inline(always)]
pub fn fill_process(e: &mut Event) {
    let task = current_task();
    let parent = read::<usize>(task, get(&kernel::TASK_STRUCT_REAL_PARENT)) as *const u8;
    e.ppid = read(parent, get(&kernel::TASK_STRUCT_TGID));
    e.exe[0] = 0;
    let found = maps::EXES
        .get_ptr(key_of(task))
        .or_else(|| maps::EXES.get_ptr(key_of(parent)));
    if let Some(exe) = found {
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
