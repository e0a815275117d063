//! The bpf(2) system call, for the few commands aya's API doesn't offer (userspace only): the
//! daemon's RCU barrier map and the benchmark's no-op programs.

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
