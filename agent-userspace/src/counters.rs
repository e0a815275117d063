//! Reading the kernel's per-CPU counters. These, not the event stream, are the source of every
//! count actgate reports: events can be dropped, counters can't.

use std::sync::Mutex;

use agent_common::{Action, KernelError, Verdict, decision_index, limit_index, maps};
use anyhow::Result;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};

use crate::{pin::Pins, revocation::Revocations};

pub struct Counters {
    decisions: Mutex<PerCpuArray<MapData, u64>>,
    dropped: Mutex<PerCpuArray<MapData, u64>>,
    errors: Mutex<PerCpuArray<MapData, u64>>,
    budget_exceeded: Mutex<PerCpuArray<MapData, u64>>,
    /// The revoked labels and how often each was revoked.
    pub revocations: Revocations,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Mutex<PerCpuArray<MapData, u64>>> {
    crate::maps::take(ebpf, name).map(Mutex::new)
}

/// Sum of one slot over every CPU; a read error counts as zero rather than failing a scrape.
fn sum(map: &Mutex<PerCpuArray<MapData, u64>>, index: u32) -> u64 {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

/// Decisions of one label: `[action][verdict]`.
pub type LabelDecisions = [[u64; Verdict::COUNT]; Action::COUNT];

impl Counters {
    pub fn new(ebpf: &mut Ebpf, pins: &Pins) -> Result<Self> {
        Ok(Self {
            decisions: take(ebpf, maps::DECISIONS)?,
            dropped: take(ebpf, maps::EVENTS_DROPPED)?,
            errors: take(ebpf, maps::ERRORS)?,
            budget_exceeded: take(ebpf, maps::BUDGET_EXCEEDED)?,
            revocations: Revocations::open(pins)?,
        })
    }

    /// The label's actions of `action` refused for being over its budget.
    pub fn budget_exceeded(&self, label: u32, action: Action) -> u64 {
        sum(&self.budget_exceeded, limit_index(label, action as u32))
    }

    pub fn decisions(&self, label: u32) -> LabelDecisions {
        let mut out = [[0; Verdict::COUNT]; Action::COUNT];
        for a in Action::ALL {
            for v in Verdict::ALL {
                out[a as usize][v as usize] = sum(&self.decisions, decision_index(label, a, v));
            }
        }
        out
    }

    pub fn dropped(&self, action: Action) -> u64 {
        sum(&self.dropped, action as u32)
    }

    /// Hook calls that failed for `reason` and were refused.
    pub fn errors_of(&self, reason: KernelError) -> u64 {
        sum(&self.errors, reason as u32)
    }

    /// Hook calls that failed for any reason.
    pub fn errors(&self) -> u64 {
        KernelError::ALL.iter().map(|r| self.errors_of(*r)).sum()
    }
}
