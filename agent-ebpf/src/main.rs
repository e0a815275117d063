//! actgate's kernel side: BPF LSM programs that judge the actions of labelled workloads
//! against the rule maps the daemon fills, and deny with -EPERM before the action happens.
//!
//! Modules in layers, each using only those below it:
//! - `kernel.rs` (offsets and reads of kernel memory) and `maps.rs`;
//! - `path.rs` (a hook's target → absolute path), `label.rs` (the calling task's label) and
//!   `process.rs` (the binary each labelled process runs, for its events);
//! - `limits.rs` (budgets and the breaker), `record.rs` (counters and events), `hook.rs`
//!   (the frame every hook runs in) and `dircache.rs` (directories whose entries' path flags
//!   are known, so an open there needs no path);
//! - `judge.rs` (rule lookups → verdict) and `steps.rs` (a call's several judgments, checked by
//!   the verifier once);
//! - `dns.rs`: cgroup sock_addr programs, not LSM ones, that steer labelled DNS queries to the
//!   daemon's resolver; it tells `net.rs` which connects and sends it takes over;
//! - one file per hook family: `exec.rs`, `file.rs` (and `attr.rs` for attributes), `net.rs`,
//!   `unix.rs`, `sock.rs` (socket kinds and options), `escape.rs` (bpf(2), capabilities, the
//!   daemon, cgroups and namespaces).
//!
//! Adding a hook takes an entry in `agent_common::Hook`'s list and a function in its family's
//! file.
#![no_std]
#![no_main]
// Atomic adds for exact per-CPU counters; see record::bump.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod attr;
mod dircache;
mod dns;
mod escape;
mod exec;
mod file;
mod hook;
mod judge;
mod kernel;
mod label;
mod limits;
mod maps;
mod net;
mod path;
mod process;
mod record;
mod revoke;
mod sock;
mod steps;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves that no path reaches here; a loop keeps the type checker happy.
    loop {}
}

// bpf_d_path is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
