//! From the workers' samples to the report's figures: medians and quartiles, ratios between
//! phases, and each round's own ratio.

use std::collections::BTreeMap;

use super::{
    Op, Phase, RULES, Run, SCALES, Who, WorkloadRun,
    report::{CacheEffect, Comparison, DepthEffect, DepthRuns, Samples, Scaled, WorkloadFigures},
    workloads::Workload,
};

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median, p25 and p75.
pub fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    (quantile(&s, 0.5), quantile(&s, 0.25), quantile(&s, 0.75))
}

pub fn pct(base: f64, with: f64) -> f64 {
    (with - base) / base * 100.0
}

/// Rounded to 0.1, for times in ns. What isn't finite stays so, and serde_json writes it as
/// null.
pub fn r1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Rounded to 0.01, for percentages.
pub fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Every timed run so far.
#[derive(Default)]
pub struct Results {
    pub runs: Vec<Run>,
    pub workloads: Vec<WorkloadRun>,
}

impl Results {
    pub fn pooled(&self, who: Who, op: Op, phase: Phase) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.who == who && r.op == op && r.phase == phase)
            .flat_map(|r| r.samples.iter().copied())
            .collect()
    }

    fn run_median(&self, who: Who, op: Op, phase: Phase, round: u32) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.who == who && r.op == op && r.phase == phase && r.round == round)
            .map(|r| summary(&r.samples).0)
    }

    fn rounds(&self) -> u32 {
        self.runs.iter().map(|r| r.round + 1).max().unwrap_or(0)
    }

    /// Each round's own `num`/`den` - 1 of `op`'s run medians, in %, over the rounds that
    /// have both runs.
    fn round_ratios(&self, op: Op, num: (Who, Phase), den: (Who, Phase)) -> Vec<f64> {
        (0..self.rounds())
            .filter_map(|r| {
                let d = self.run_median(den.0, op, den.1, r)?;
                let n = self.run_median(num.0, op, num.1, r)?;
                Some(pct(d, n))
            })
            .collect()
    }

    /// A against B at RULES rules: pooled medians, quartiles, and each round's own ratio; and
    /// the floor F against both.
    pub fn compare(&self, who: Who, op: Op) -> Comparison {
        let a = self.pooled(who, op, Phase::A);
        let b = self.pooled(who, op, Phase::B);
        let fl = self.pooled(who, op, Phase::Floor);
        let (am, a25, a75) = summary(&a);
        let (bm, b25, b75) = summary(&b);
        let (fm, f25, f75) = summary(&fl);
        // Each round's own B/A ratio, and the labelled worker against the unlabelled one in
        // the same interleaved slices (immune to the host's load changing between runs).
        let ratios = |num, den| self.round_ratios(op, num, den);
        let per_round = ratios((who, Phase::B), (who, Phase::A));
        let above_floor = ratios((who, Phase::B), (who, Phase::Floor));
        let vs_unlabelled = |phase: Phase| {
            (who == Who::Labelled)
                .then(|| r2(summary(&ratios((Who::Labelled, phase), (Who::Unlabelled, phase))).0))
        };
        Comparison {
            above_floor_pct: r2(pct(fm, bm)),
            baseline_ns: r1(am),
            baseline_p25_ns: r1(a25),
            baseline_p75_ns: r1(a75),
            enforced_ns: r1(bm),
            enforced_p25_ns: r1(b25),
            enforced_p75_ns: r1(b75),
            floor_ns: r1(fm),
            floor_p25_ns: r1(f25),
            floor_p75_ns: r1(f75),
            floor_pct: r2(pct(am, fm)),
            iterations_per_sample: op.batch(),
            overhead_pct: r2(pct(am, bm)),
            round_above_floor_median_pct: r2(summary(&above_floor).0),
            round_overhead_median_pct: r2(summary(&per_round).0),
            round_overhead_pct: per_round.iter().map(|x| r2(*x)).collect(),
            samples: Samples {
                baseline: a.len(),
                enforced: b.len(),
                floor: fl.len(),
            },
            vs_unlabelled_enforced_pct: vs_unlabelled(Phase::B),
            vs_unlabelled_stopped_pct: vs_unlabelled(Phase::A),
        }
    }

    /// One workload's A, F and B runs: medians and quartiles of its ms, pooled over rounds and
    /// repetitions.
    pub fn workload(&self, w: Workload) -> WorkloadFigures {
        let ms = |phase: Phase| -> Vec<f64> {
            self.workloads
                .iter()
                .filter(|r| r.workload == w && r.phase == phase)
                .map(|r| r.ms)
                .collect()
        };
        let (a, f, b) = (ms(Phase::A), ms(Phase::Floor), ms(Phase::B));
        let u = ms(Phase::Uncached);
        let (am, a25, a75) = summary(&a);
        let (fm, f25, f75) = summary(&f);
        let (bm, b25, b75) = summary(&b);
        let (um, u25, u75) = summary(&u);
        WorkloadFigures {
            a_ms: r1(am),
            a_p25_ms: r1(a25),
            a_p75_ms: r1(a75),
            a_samples: a.len(),
            above_floor_pct: r2(pct(fm, bm)),
            b_ms: r1(bm),
            b_p25_ms: r1(b25),
            b_p75_ms: r1(b75),
            b_samples: b.len(),
            cache_pct: r2(pct(um, bm)),
            f_ms: r1(fm),
            f_p25_ms: r1(f25),
            f_p75_ms: r1(f75),
            f_samples: f.len(),
            floor_pct: r2(pct(am, fm)),
            overhead_pct: r2(pct(am, bm)),
            u_ms: r1(um),
            u_p25_ms: r1(u25),
            u_p75_ms: r1(u75),
            u_samples: u.len(),
            what: w.what(),
        }
    }

    /// The labelled `op` with the directory cache on (B) and off (U).
    pub fn cache_effect(&self, op: Op) -> CacheEffect {
        let (b, _, _) = summary(&self.pooled(Who::Labelled, op, Phase::B));
        let (u, u25, u75) = summary(&self.pooled(Who::Labelled, op, Phase::Uncached));
        CacheEffect {
            cached_ns: r1(b),
            cached_vs_uncached_pct: r2(pct(u, b)),
            uncached_ns: r1(u),
            uncached_p25_ns: r1(u25),
            uncached_p75_ns: r1(u75),
        }
    }

    /// The labelled worker at each rule count of SCALES.
    pub fn scaling(&self, op: Op) -> BTreeMap<usize, Scaled> {
        let (base, _, _) = summary(&self.pooled(Who::Labelled, op, Phase::A));
        SCALES
            .into_iter()
            .map(|n| {
                let phase = if n == RULES {
                    Phase::B
                } else {
                    Phase::Scale(n)
                };
                let s = self.pooled(Who::Labelled, op, phase);
                let (m, p25, p75) = summary(&s);
                let scaled = Scaled {
                    enforced_ns: r1(m),
                    overhead_pct: r2(pct(base, m)),
                    p25_ns: r1(p25),
                    p75_ns: r1(p75),
                    samples: s.len(),
                };
                (n, scaled)
            })
            .collect()
    }

    /// `op` in the depth runs: each worker with labels at level 2 (B's daemon) and at levels 2
    /// and 5 (D); and, within D's slices, each level-5 worker against its level-2 or root
    /// counterpart.
    pub fn depth(&self, op: Op) -> DepthEffect {
        let (b, d) = (Phase::Depth(2), Phase::Depth(5));
        let in_d = |num: Who, den: Who| r2(summary(&self.round_ratios(op, (num, d), (den, d))).0);
        let workers = Who::ALL
            .into_iter()
            .map(|who| {
                let sb = self.pooled(who, op, b);
                let sd = self.pooled(who, op, d);
                let (bm, b25, b75) = summary(&sb);
                let (dm, d25, d75) = summary(&sd);
                let rounds = self.round_ratios(op, (who, d), (who, b));
                let runs = DepthRuns {
                    b_lookups: who.lookups(2),
                    b_ns: r1(bm),
                    b_p25_ns: r1(b25),
                    b_p75_ns: r1(b75),
                    b_samples: sb.len(),
                    d_lookups: who.lookups(5),
                    d_ns: r1(dm),
                    d_p25_ns: r1(d25),
                    d_p75_ns: r1(d75),
                    d_samples: sd.len(),
                    d_vs_b_pct: r2(pct(bm, dm)),
                    round_d_vs_b_median_pct: r2(summary(&rounds).0),
                    round_d_vs_b_pct: rounds.iter().map(|x| r2(*x)).collect(),
                };
                (who.name(), runs)
            })
            .collect();
        DepthEffect {
            iterations_per_sample: op.batch(),
            level5_bound_vs_labelled_pct: in_d(Who::DeepBound, Who::Labelled),
            level5_unbound_vs_unlabelled_pct: in_d(Who::DeepFree, Who::Unlabelled),
            workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let (m, p25, p75) = summary(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((m, p25, p75), (3.0, 2.0, 4.0));
        let (m, _, _) = summary(&[1.0, 2.0]);
        assert_eq!(m, 1.5);
    }
}
