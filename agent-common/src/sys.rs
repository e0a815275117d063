//! System calls libc and aya don't wrap (userspace only): bpf(2) for the commands aya's API
//! doesn't offer (the daemon's RCU barrier map and the benchmark's no-op programs), and
//! clone3(CLONE_INTO_CGROUP) for the self-test and the VM tests.

use std::io;

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// bpf(2) with `cmd` and `attr`; the kernel's non-negative result (often a new fd) or errno.
pub fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a bpf_attr with the command's fields set (callers start from zeroes);
    // the kernel reads at most its size and returns a non-negative value or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// `CLONE_INTO_CGROUP`: clone3 starts the child in the cgroup its `cgroup` fd names.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2); libc has no binding for it.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks a child straight into the cgroup of the directory `cgroup_fd` with
/// `clone3(CLONE_INTO_CGROUP)`; the child exits at once and is reaped. Ok when the kernel
/// allowed the clone.
pub fn clone_into_cgroup(cgroup_fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: a fork without CLONE_VM: the child gets its own copy of memory and only calls
    // _exit, which is async-signal-safe.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => unsafe { libc::_exit(0) },
        p if p < 0 => Err(io::Error::last_os_error()),
        p => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(p as libc::pid_t, &mut status, 0) };
            Ok(())
        }
    }
}
