//! Per-program run time (kernel.bpf_stats_enabled): which of the daemon's programs ran while
//! a worker repeated an operation, for how long per call, and their share of the operation's
//! time with the daemon stopped.

use std::{collections::BTreeMap, fs};

use agent_common::HOOKS;
use anyhow::{Context, Result};

use super::{
    Bench, Op, Phase, STATS_SLICES, Who,
    report::{BpfStats, OpPrograms, Program},
    stats::{r1, r2, summary},
};
use crate::harness::Daemon;

/// A program's counters in its fdinfo.
struct Counters {
    tag: String,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Program tag → name, from the JIT's symbols (`bpf_prog_<tag>_<name>`).
fn prog_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    for line in text.lines() {
        let Some(sym) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some(rest) = sym.strip_prefix("bpf_prog_") else {
            continue;
        };
        let Some((tag, name)) = rest.split_once('_') else {
            continue;
        };
        let full = HOOKS
            .iter()
            .find(|h| !name.is_empty() && h.starts_with(name))
            .map_or(name, |h| *h);
        names
            .entry(tag.to_string())
            .and_modify(|n: &mut String| {
                if !n.split('/').any(|x| x == full) {
                    n.push('/');
                    n.push_str(full);
                }
            })
            .or_insert_with(|| full.to_string());
    }
    names
}

/// Program id → counters of every BPF program the daemon holds.
fn prog_stats(pid: u32) -> BTreeMap<u64, Counters> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let is_prog = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().contains("bpf-prog"))
            .unwrap_or(false);
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
        };
        let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(id), Some(tag)) = (num("prog_id"), field("prog_tag")) {
            let counters = Counters {
                tag,
                run_time_ns: num("run_time_ns").unwrap_or(0),
                run_cnt: num("run_cnt").unwrap_or(0),
            };
            out.insert(id, counters);
        }
    }
    out
}

/// (program name, calls, ns) of each program that ran between two snapshots.
fn stats_delta(
    before: &BTreeMap<u64, Counters>,
    after: &BTreeMap<u64, Counters>,
    names: &BTreeMap<String, String>,
) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for (id, now) in after {
        let (t0, c0) = before
            .get(id)
            .map_or((0, 0), |b| (b.run_time_ns, b.run_cnt));
        let calls = now.run_cnt.saturating_sub(c0);
        if calls == 0 {
            continue;
        }
        let name = names
            .get(&now.tag)
            .cloned()
            .unwrap_or_else(|| format!("prog{id}"));
        out.push((name, calls, now.run_time_ns.saturating_sub(t0)));
    }
    out
}

fn set_bpf_stats(on: bool) -> Result<()> {
    fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .context("writing kernel.bpf_stats_enabled")
}

impl Bench {
    /// Per-program run time while each worker repeats each operation, with the kernel's
    /// statistics on only for this (they add two clock reads per program run). Every
    /// operation runs in STATS_SLICES slices; a program's ns per call is the median over the
    /// slices, so one slice the host stalled doesn't decide it. Each operation also gets the
    /// run time of all programs per operation, and its share of the operation's A median:
    /// the work actgate's own code does, which emulation inflates about as much as the
    /// kernel's (both are translated x86 code).
    pub(super) fn bpf_stats(&mut self, daemon: &Daemon) -> Result<BpfStats> {
        set_bpf_stats(true)?;
        let names = prog_names();
        let stats = BpfStats {
            labelled: self.programs_by_op(Who::Labelled, daemon, &names, self.ops.clone())?,
            unlabelled: self.programs_by_op(Who::Unlabelled, daemon, &names, self.ops.clone())?,
        };
        set_bpf_stats(false)?;
        Ok(stats)
    }

    /// `bpf_stats` of the labelled worker's `ops` alone.
    pub(super) fn labelled_stats(
        &mut self,
        daemon: &Daemon,
        ops: Vec<Op>,
    ) -> Result<BTreeMap<&'static str, OpPrograms>> {
        set_bpf_stats(true)?;
        let stats = self.programs_by_op(Who::Labelled, daemon, &prog_names(), ops);
        set_bpf_stats(false)?;
        stats
    }

    fn programs_by_op(
        &mut self,
        who: Who,
        daemon: &Daemon,
        names: &BTreeMap<String, String>,
        ops: Vec<Op>,
    ) -> Result<BTreeMap<&'static str, OpPrograms>> {
        let ms = (self.ms / STATS_SLICES).max(200);
        let mut per_op = BTreeMap::new();
        for op in ops.into_iter().filter(|op| *op != Op::Control) {
            // Program name → per-slice (calls, ns).
            let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            let mut iterations = 0;
            for _ in 0..STATS_SLICES {
                let before = prog_stats(daemon.pid());
                let cmd = self.command(op, ms);
                iterations += self.worker(who).call(&cmd)?.len() as u64 * op.batch() as u64;
                let after = prog_stats(daemon.pid());
                for (name, calls, ns) in stats_delta(&before, &after, names) {
                    seen.entry(name).or_default().push((calls, ns));
                }
            }
            let mut programs = BTreeMap::new();
            let mut total_ns = 0;
            for (name, slices) in seen {
                let per_call: Vec<f64> = slices
                    .iter()
                    .map(|(c, ns)| *ns as f64 / *c as f64)
                    .collect();
                let calls: u64 = slices.iter().map(|s| s.0).sum();
                let ns: u64 = slices.iter().map(|s| s.1).sum();
                total_ns += ns;
                let program = Program {
                    calls,
                    ns_per_call: r1(summary(&per_call).0),
                    ns_per_call_mean: r1(ns as f64 / calls as f64),
                };
                programs.insert(name, program);
            }
            let per_op_ns = total_ns as f64 / iterations.max(1) as f64;
            let (baseline, _, _) = summary(&self.results.pooled(who, op, Phase::A));
            let programs = OpPrograms {
                iterations,
                program_ns_per_operation: r1(per_op_ns),
                programs,
                share_of_baseline_pct: r2(100.0 * per_op_ns / baseline),
            };
            per_op.insert(op.name(), programs);
        }
        Ok(per_op)
    }
}
