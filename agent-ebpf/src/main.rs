//! actgate's kernel side: BPF LSM programs that judge the actions of labelled workloads
//! against the rule maps the daemon fills, and deny with -EPERM before the action happens.
//!
//! One file per hook family (`exec.rs`, `file.rs`, `net.rs`); `label.rs` finds the calling
//! task's label, `decide.rs` turns rule lookups into a verdict, counts it and reports it, and
//! `process.rs` remembers which binary each labelled process runs, for its events.
#![no_std]
#![no_main]
// Atomic adds for exact per-CPU counters; see decide::bump.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod decide;
mod exec;
mod file;
mod kernel;
mod label;
mod maps;
mod net;
mod path;
mod process;

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
