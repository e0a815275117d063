//! The benchmark's floor: what any BPF LSM enforcer pays on a hook before doing any work.
//!
//! Under emulation, the kernel's dispatch into a BPF program (the trampoline that the hook
//! jumps to, and its entry and exit bookkeeping) costs far more, relative to the rest of a
//! system call, than it does natively. So the benchmark attaches a program that only
//! returns 0 to each of actgate's hooks, with the daemon stopped, and times the same
//! operations in the same boot. What actgate adds above that floor is what its own code costs.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use agent_common::Hook;
use anyhow::{Context, Result};
use aya_obj::{
    btf::{Btf, BtfKind},
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type},
};

/// `r0 = 0; exit`, as two little-endian eBPF instructions.
const RETURN_ZERO: [u64; 2] = [0xb7, 0x95];

/// The no-op programs, attached while this lives (dropping the links detaches them).
pub struct Floor {
    _links: Vec<OwnedFd>,
}

/// bpf(2) for a command whose result is a new fd.
fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = agent_common::sys::bpf(cmd, attr)?;
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `return 0` as a BPF LSM program on `hook` and attaches it.
fn attach_one(btf: &Btf, hook: &str) -> Result<OwnedFd> {
    let func = format!("bpf_lsm_{hook}");
    let btf_id = btf
        .id_by_type_name_kind(&func, BtfKind::Func)
        .with_context(|| format!("{func} in the kernel's BTF"))?;
    let license = CString::new("GPL")?;
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_PROG_LOAD member of the union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_LSM as u32;
    load.expected_attach_type = bpf_attach_type::BPF_LSM_MAC as u32;
    load.attach_btf_id = btf_id;
    load.insns = RETURN_ZERO.as_ptr() as u64;
    load.insn_cnt = RETURN_ZERO.len() as u32;
    load.license = license.as_ptr() as u64;
    let prog = bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        .with_context(|| format!("loading a no-op program for {hook}"))?;
    // SAFETY: as above. BPF_RAW_TRACEPOINT_OPEN without a name attaches the program at its
    // BTF target.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .with_context(|| format!("attaching the no-op program to {hook}"))
}

impl Floor {
    /// A no-op program on every hook actgate attaches to.
    pub fn attach() -> Result<Floor> {
        let btf = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
        let links = Hook::ALL
            .iter()
            // actgate attaches nothing to a hook this kernel lacks.
            .filter(|h| {
                !h.optional
                    || btf
                        .id_by_type_name_kind(&format!("bpf_lsm_{}", h.name), BtfKind::Func)
                        .is_ok()
            })
            .map(|h| attach_one(&btf, h.name))
            .collect::<Result<_>>()?;
        Ok(Floor { _links: links })
    }
}
