//! Waiting until no BPF program still runs with what it read before a map write.
//!
//! The kernel gives this guarantee itself: writing an element of a map-in-map through bpf(2)
//! calls `maybe_wait_bpf_programs()` (kernel/bpf/syscall.c), which runs `synchronize_rcu()`
//! before the system call returns when the map is a `BPF_MAP_TYPE_ARRAY_OF_MAPS` or
//! `HASH_OF_MAPS`. On 6.1 `bpf_map_update_value()` calls it at its end for every update
//! (BPF_MAP_UPDATE_ELEM goes through it); since 6.8 (so on 6.12) `map_update_elem()` calls it
//! after a successful update. The maps actgate's programs read are plain arrays, hashes and
//! tries, whose updates don't wait, so the daemon keeps a one-element array of maps for this
//! alone and rewrites its element whenever it needs to wait.
//!
//! Why that wait covers the programs: actgate's LSM programs aren't sleepable, and the BPF
//! trampoline runs a non-sleepable program between `__bpf_prog_enter*()`, which takes
//! `rcu_read_lock()`, and `__bpf_prog_exit*()`, which drops it (kernel/bpf/trampoline.c). One
//! hook call is one program run, so everything it reads (`CONFIG`'s generation, then its
//! label in `LABELS`, then the rule maps with that label's rule set) happens inside one RCU
//! read-side section. `synchronize_rcu()` returns only after every section that began before
//! it has ended; a hook call that started after it began reads the generation written before
//! it. So once `wait` returns, no hook call can still look up an entry of the generation that
//! was replaced before the call, and its entries can be deleted.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use agent_common::sys::{bpf, create_map};
use anyhow::{Context, Result};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};

pub struct Barrier {
    /// The array of maps whose update waits.
    outer: OwnedFd,
    /// What its element is set to: any map of the inner map's shape will do.
    inner: OwnedFd,
}

impl Barrier {
    pub fn new() -> Result<Self> {
        let inner = create_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, None)
            .context("creating the inner map of the RCU barrier")?;
        let outer = create_map(
            bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            Some(inner.as_fd()),
        )
        .context("creating the array of maps of the RCU barrier")?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program run that began before the call has finished.
    pub fn wait(&self) -> Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_MAP_UPDATE_ELEM member of the union; the key and value
        // outlive the system call.
        let update = unsafe { &mut attr.__bindgen_anon_2 };
        update.map_fd = self.outer.as_raw_fd() as u32;
        update.key = &key as *const u32 as u64;
        update.__bindgen_anon_1.value = &value as *const u32 as u64;
        // BPF_ANY: the element exists after the first wait and is replaced each time.
        update.flags = 0;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)
            .context("updating the RCU barrier's array of maps (the wait for BPF programs)")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_waits_and_can_wait_again() {
        // Creating maps needs CAP_BPF; a kernel that refuses it can't run actgate either.
        let barrier = match Barrier::new() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipping test – no BPF maps here: {e:#}");
                return;
            }
        };
        barrier.wait().expect("first wait");
        barrier.wait().expect("second wait, replacing the element");
    }
}
