//! Revocation: a revoked label is denied every action (`MODE_REVOKED`), whatever its policy
//! says, until the operator restores it. The daemon revokes by hand (`actgate revoke`); the
//! kernel revokes when a budget with `then: revoke` runs out or the breaker trips.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{Revocation, Trigger, revocation_index};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};

use crate::maps;

/// Whether the label with index `label` is revoked.
#[inline(always)]
pub fn revoked(label: u32) -> bool {
    // SAFETY: only the presence of the entry is read.
    unsafe { maps::REVOKED.get(label) }.is_some()
}

/// Revokes `label` because of `trigger` (for a budget, on `action`; else `u8::MAX`). Only the
/// first revocation is written and counted: concurrent trips of one label leave one entry and
/// one count.
#[inline(always)]
pub fn trip(label: u32, trigger: Trigger, action: u8) {
    let revocation = Revocation {
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        trigger: trigger as u8,
        action,
        _pad: [0; 6],
    };
    if maps::REVOKED
        .insert(label, revocation, u64::from(BPF_NOEXIST))
        .is_ok()
        && let Some(p) = maps::REVOCATIONS.get_ptr_mut(revocation_index(label, trigger))
    {
        // SAFETY: a valid, aligned u64 of the map; shared across CPUs, hence the atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}
