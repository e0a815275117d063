//! System calls libc and aya don't wrap (userspace only): bpf(2) for the commands aya's API
//! doesn't offer (the daemon's RCU barrier map and the benchmark's no-op programs),
//! clone3(CLONE_INTO_CGROUP), move_mount(2) and pivot_root(2) for the self-test and the VM
//! tests.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};

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

/// A new one-element map of `map_type` with 4-byte keys and values; `inner` is the template
/// of a map of maps' inner map.
pub fn create_map(map_type: bpf_map_type, inner: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_MAP_CREATE member of the union.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = map_type as u32;
    create.key_size = 4;
    create.value_size = 4;
    create.max_entries = 1;
    create.inner_map_fd = inner.map_or(0, |fd| fd.as_raw_fd() as u32);
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the BPF object `fd` at `path` in a bpffs.
pub fn pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let name = c_path(path)?;
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_PIN member of the union; the path outlives the call.
    let pin = unsafe { &mut attr.__bindgen_anon_4 };
    pin.pathname = name.as_ptr() as u64;
    pin.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
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
pub fn clone_into_cgroup(cgroup_fd: BorrowedFd<'_>) -> io::Result<()> {
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

/// A path as the C string a system call takes.
fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    Ok(std::ffi::CString::new(path.as_os_str().as_bytes())?)
}

/// A raw system call's result: -1 means errno says why.
fn result(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// move_mount(2) of the mount at `from` onto `to`, both looked up from the working directory.
pub fn move_mount(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: NUL-terminated paths that outlive the call; no flags.
    result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            0,
        )
    })
}

/// pivot_root(2): `new_root` becomes the root, the old one moves to `put_old`.
pub fn pivot_root(new_root: &std::path::Path, put_old: &std::path::Path) -> io::Result<()> {
    let (new_root, put_old) = (c_path(new_root)?, c_path(put_old)?);
    // SAFETY: NUL-terminated paths that outlive the call.
    result(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
}
