//! What the benchmark reports: results.json, typed, and the table printed beside it.
//!
//! results.json's key order is part of what it promises (BENCHMARKS.md and the README quote
//! it): the top level in issue 5's order, then every nested object's keys in alphabetical
//! order, which is how serde_json wrote them when the report was an untyped map. A struct
//! serialises its fields in the order they are declared, so the nested structs declare theirs
//! alphabetically; `nested_keys_are_alphabetical` holds them to it.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::{
    CACHED_OPS, DEPTH_OPS, LeftOut, Op, PASSES, RULES, SCALES, Who,
    stats::{Results, pct, r1, r2},
    workloads::{PATH, Workload},
};

/// The whole of results.json.
#[derive(Serialize)]
pub struct Report {
    pub kernel: String,
    pub rules_per_label: usize,
    pub exec: Comparison,
    pub file_open: FileOpen,
    pub connect: Comparison,
    /// By operation name.
    pub unlabelled: BTreeMap<&'static str, Comparison>,
    pub scaling: Scaling,
    /// null when no round ran.
    pub flood: Option<Outcome<Flood>>,
    pub control_getppid: Comparison,
    /// null when no round ran.
    pub bpf_stats: Option<Outcome<BpfStats>>,
    pub machine: Machine,
    pub method: Method,
    /// Issue 13, after issue 5's keys: what judging executable mappings costs.
    pub exec_by_mapping: ExecByMapping,
    /// Issue 13's other hooks, on the paths every labelled task takes.
    pub other_hooks: OtherHooks,
    /// Issue 16: real programs run by the labelled worker, by workload name.
    pub workloads: BTreeMap<&'static str, WorkloadOutcome>,
    /// Issue 16: the directory cache, on (B) against off (U) in the same boot.
    pub dir_cache: DirCache,
    /// Issue 18: the label search with label cgroups at level 2 (B's daemon) and at levels 2
    /// and 5 (D), in the same boot.
    pub depth: Depth,
}

/// The label search's cost by depth: the cheap operations DEPTH_OPS, timed by each worker in
/// B's daemon and in D's.
#[derive(Serialize)]
pub struct Depth {
    pub note: &'static str,
    /// By operation name.
    pub operations: BTreeMap<&'static str, DepthEffect>,
}

/// One operation in the depth runs.
#[derive(Serialize)]
pub struct DepthEffect {
    pub iterations_per_sample: u32,
    /// In D's slices: the worker bound at level 5 (two lookups, a hit at the second) against
    /// the labelled one at level 2 (one lookup, a hit), each round's ratio - 1, median over
    /// rounds.
    pub level5_bound_vs_labelled_pct: f64,
    /// In D's slices: the unbound worker at level 5 (two misses) against the one in the root
    /// cgroup (no lookup), the same way.
    pub level5_unbound_vs_unlabelled_pct: f64,
    /// By worker name.
    pub workers: BTreeMap<&'static str, DepthRuns>,
}

/// One worker's runs of one operation in B's daemon and in D's. Times in ns rounded to 0.1,
/// percentages rounded to 0.01.
#[derive(Serialize)]
pub struct DepthRuns {
    /// LABELS lookups of one label search in B's daemon (levels in use: 2).
    pub b_lookups: u32,
    pub b_ns: f64,
    pub b_p25_ns: f64,
    pub b_p75_ns: f64,
    pub b_samples: usize,
    /// In D's (levels in use: 2 and 5).
    pub d_lookups: u32,
    pub d_ns: f64,
    pub d_p25_ns: f64,
    pub d_p75_ns: f64,
    pub d_samples: usize,
    /// D/B - 1 of the pooled medians.
    pub d_vs_b_pct: f64,
    pub round_d_vs_b_median_pct: f64,
    pub round_d_vs_b_pct: Vec<f64>,
}

/// What the last round measured besides the operations' samples; each `None` when no round
/// ran.
pub struct LastRound {
    pub flood: Option<Outcome<Flood>>,
    pub bpf_stats: Option<Outcome<BpfStats>>,
    pub bpf_stats_uncached: Option<Outcome<BTreeMap<&'static str, OpPrograms>>>,
}

/// What the directory cache saves: the labelled operations it can serve, timed in B (cache on)
/// and in U (`actgate run --no-dir-cache`), and the programs' run time in U.
#[derive(Serialize)]
pub struct DirCache {
    /// null when no round ran.
    pub bpf_stats_uncached: Option<Outcome<BTreeMap<&'static str, OpPrograms>>>,
    pub note: &'static str,
    /// By operation name.
    pub operations: BTreeMap<&'static str, CacheEffect>,
}

/// One labelled operation's pooled medians with the cache on and off.
#[derive(Serialize)]
pub struct CacheEffect {
    pub cached_ns: f64,
    /// B/U - 1: negative when the cache makes the operation cheaper.
    pub cached_vs_uncached_pct: f64,
    pub uncached_ns: f64,
    pub uncached_p25_ns: f64,
    pub uncached_p75_ns: f64,
}

/// A workload's figures, or why this guest could not run it.
#[derive(Serialize)]
#[serde(untagged)]
pub enum WorkloadOutcome {
    Done(WorkloadFigures),
    Skipped { skipped: String },
}

/// One workload's wall clock, spawn to exit, in ms rounded to 0.1: A (daemon stopped), F
/// (floor) and B (enforcing RULES rules), medians and quartiles pooled over rounds and
/// repetitions; percentages rounded to 0.01.
#[derive(Serialize)]
pub struct WorkloadFigures {
    pub a_ms: f64,
    pub a_p25_ms: f64,
    pub a_p75_ms: f64,
    pub a_samples: usize,
    pub above_floor_pct: f64,
    pub b_ms: f64,
    pub b_p25_ms: f64,
    pub b_p75_ms: f64,
    pub b_samples: usize,
    /// B/U - 1: what the directory cache changes, within the same boot.
    pub cache_pct: f64,
    pub f_ms: f64,
    pub f_p25_ms: f64,
    pub f_p75_ms: f64,
    pub f_samples: usize,
    pub floor_pct: f64,
    pub overhead_pct: f64,
    /// U: enforcing with the directory cache off.
    pub u_ms: f64,
    pub u_p25_ms: f64,
    pub u_p75_ms: f64,
    pub u_samples: usize,
    pub what: String,
}

/// Labelled operations that pass through the hooks issue 13 added besides `mmap_file` and
/// `file_mprotect`. An operation this guest can't do says why instead.
#[derive(Serialize)]
pub struct OtherHooks {
    pub capable: Outcome<Comparison>,
    pub capable_judged: Outcome<Comparison>,
    pub ftruncate: Outcome<Comparison>,
    pub note: &'static str,
    pub sendto_udp: Outcome<Comparison>,
    pub setxattr: Outcome<Comparison>,
    pub socket: Outcome<Comparison>,
    pub unix_connect: Outcome<Comparison>,
    pub utime: Outcome<Comparison>,
}

/// Labelled operations that `mmap_file` judges as execs.
#[derive(Serialize)]
pub struct ExecByMapping {
    pub exec_dynamic: Comparison,
    pub mmap_exec: Comparison,
    pub note: &'static str,
}

/// A part of the report measured on its own: when it fails, the rest still stands and the
/// part says why.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Outcome<T> {
    Done(T),
    Failed { error: String },
}

impl<T> Outcome<T> {
    pub fn of(result: Result<T>) -> Self {
        match result {
            Ok(part) => Outcome::Done(part),
            Err(e) => Outcome::Failed {
                error: format!("{e:#}"),
            },
        }
    }
}

/// One operation in one worker: A (daemon stopped) against B (enforcing RULES rules), and the
/// floor F against both. Times in ns, rounded to 0.1; percentages rounded to 0.01; null where
/// there was nothing to measure.
#[derive(Serialize)]
pub struct Comparison {
    pub above_floor_pct: f64,
    pub baseline_ns: f64,
    pub baseline_p25_ns: f64,
    pub baseline_p75_ns: f64,
    pub enforced_ns: f64,
    pub enforced_p25_ns: f64,
    pub enforced_p75_ns: f64,
    pub floor_ns: f64,
    pub floor_p25_ns: f64,
    pub floor_p75_ns: f64,
    pub floor_pct: f64,
    pub iterations_per_sample: u32,
    pub overhead_pct: f64,
    pub round_above_floor_median_pct: f64,
    pub round_overhead_median_pct: f64,
    pub round_overhead_pct: Vec<f64>,
    pub samples: Samples,
    /// Labelled worker only: against the unlabelled one in the same slices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_unlabelled_enforced_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_unlabelled_stopped_pct: Option<f64>,
}

/// Samples pooled per phase.
#[derive(Serialize)]
pub struct Samples {
    pub baseline: usize,
    pub enforced: usize,
    pub floor: usize,
}

#[derive(Serialize)]
pub struct FileOpen {
    pub baseline_ns: f64,
    pub enforced_ns: f64,
    pub note: &'static str,
    pub overhead_pct: f64,
    pub read: Comparison,
    /// A read in a directory no rule lies beneath, which the directory cache serves.
    pub read_plain: Comparison,
    pub write: Comparison,
}

/// By rule count, for each operation.
#[derive(Serialize)]
pub struct Scaling {
    pub connect: BTreeMap<usize, Scaled>,
    pub control_getppid: BTreeMap<usize, Scaled>,
    pub file_open_read: BTreeMap<usize, Scaled>,
    pub file_open_write: BTreeMap<usize, Scaled>,
    pub note: &'static str,
}

/// The labelled worker at one rule count, against the pooled A median.
#[derive(Serialize)]
pub struct Scaled {
    pub enforced_ns: f64,
    pub overhead_pct: f64,
    pub p25_ns: f64,
    pub p75_ns: f64,
    pub samples: usize,
}

/// Denied opens as fast as several processes can make them, and what reached the daemon.
#[derive(Serialize)]
pub struct Flood {
    pub attempts: u64,
    pub attempts_per_sec: f64,
    pub eperm: u64,
    pub events_dropped: u64,
    pub events_per_sec: f64,
    pub events_received: u64,
    pub events_received_plus_dropped: u64,
    pub kernel_denies: u64,
    pub kernel_denies_equal_attempts: bool,
    pub other_results: u64,
    pub processes: u32,
    pub seconds: f64,
    pub seconds_until_last_event: f64,
}

/// Per-program run time, by worker, then by operation name.
#[derive(Serialize)]
pub struct BpfStats {
    pub labelled: BTreeMap<&'static str, OpPrograms>,
    pub unlabelled: BTreeMap<&'static str, OpPrograms>,
}

/// The programs that ran while one worker repeated one operation.
#[derive(Serialize)]
pub struct OpPrograms {
    pub iterations: u64,
    pub program_ns_per_operation: f64,
    /// By program name.
    pub programs: BTreeMap<String, Program>,
    pub share_of_baseline_pct: f64,
}

#[derive(Serialize)]
pub struct Program {
    pub calls: u64,
    /// Median over the slices.
    pub ns_per_call: f64,
    pub ns_per_call_mean: f64,
}

#[derive(Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub emulation: &'static str,
}

/// How the figures were taken, in words, for whoever reads results.json alone.
#[derive(Serialize)]
pub struct Method {
    pub caveat: &'static str,
    pub connect: &'static str,
    pub control: &'static str,
    pub cpus: &'static str,
    pub exec_program: &'static str,
    pub file_open: String,
    pub floor: &'static str,
    /// `--only-depth`: only B's daemon's depth runs and D ran; every other figure is null.
    pub only_depth: bool,
    pub order: &'static str,
    pub rounds: u32,
    pub rules: &'static str,
    pub seconds_per_run: f64,
    pub slices_per_run: u64,
    pub statistic: &'static str,
    pub workload_reps: u32,
    pub workloads: String,
}

impl Report {
    pub fn new(
        kernel: String,
        res: &Results,
        left_out: &LeftOut,
        last: LastRound,
        machine: Machine,
        method: Method,
    ) -> Report {
        let LastRound {
            flood,
            bpf_stats,
            bpf_stats_uncached,
        } = last;
        let read = res.compare(Who::Labelled, Op::OpenRead);
        let write = res.compare(Who::Labelled, Op::OpenWrite);
        // From the rounded medians, as results.json shows them.
        let base = (read.baseline_ns + write.baseline_ns) / 2.0;
        let enf = (read.enforced_ns + write.enforced_ns) / 2.0;
        let skipped = &left_out.ops;
        let labelled = |op: Op| match skipped.get(&op) {
            Some(why) => Outcome::Failed { error: why.clone() },
            None => Outcome::Done(res.compare(Who::Labelled, op)),
        };
        Report {
            kernel,
            rules_per_label: RULES,
            exec: res.compare(Who::Labelled, Op::Exec),
            file_open: FileOpen {
                baseline_ns: r1(base),
                enforced_ns: r1(enf),
                note: "top-level figures are the mean of the read and write medians; read_plain: a read in a directory no rule lies beneath (served by the directory cache)",
                overhead_pct: r2(pct(base, enf)),
                read,
                read_plain: res.compare(Who::Labelled, Op::OpenReadPlain),
                write,
            },
            connect: res.compare(Who::Labelled, Op::Connect),
            unlabelled: Op::ALL
                .into_iter()
                .filter(|op| !skipped.contains_key(op))
                .map(|op| (op.name(), res.compare(Who::Unlabelled, op)))
                .collect(),
            scaling: Scaling {
                connect: res.scaling(Op::Connect),
                control_getppid: res.scaling(Op::Control),
                file_open_read: res.scaling(Op::OpenRead),
                file_open_write: res.scaling(Op::OpenWrite),
                note: "labelled, daemon enforcing N deny rules per action; overhead against the pooled A median; 1000 is the main B runs",
            },
            flood,
            control_getppid: res.compare(Who::Labelled, Op::Control),
            bpf_stats,
            machine,
            method,
            exec_by_mapping: ExecByMapping {
                exec_dynamic: res.compare(Who::Labelled, Op::ExecDynamic),
                mmap_exec: res.compare(Who::Labelled, Op::MapExec),
                note: "exec_dynamic spawns /usr/bin/true (the loader maps it, ld.so and libc executable: three mmap_file decisions besides bprm_check_security); mmap_exec maps the static exec target PROT_READ|PROT_EXEC and unmaps it",
            },
            other_hooks: OtherHooks {
                capable: labelled(Op::Capable),
                capable_judged: labelled(Op::CapableJudged),
                ftruncate: labelled(Op::Ftruncate),
                note: "capable: setgroups(2) to the worker's own groups (a capable check of CAP_SETGID, which leaves before the label lookup); capable_judged: sethostname(2) to the host's own name (CAP_SYS_ADMIN, on actgate's denied list, granted by the bench policy: judged and counted); sendto_udp: sendto(2) of one byte from a UDP socket to a loopback port (socket_sendmsg with a destination, judged as a connect against network.connect's 1000 rules, and the sendmsg4 cgroup program of the DNS steering); socket: socket(AF_INET, SOCK_STREAM) + close (socket_create, which judges only raw, packet and SCTP sockets); utime: utimensat(write target, NULL) (inode_setattr, judged as files.write); setxattr: a user.* attribute on the write target (inode_setxattr, files.write); ftruncate: of the open write target to its own size (file_truncate, 6.2+, files.write); unix_connect: socket(AF_UNIX) + connect to a path-named listener + close (unix_stream_connect, judged against network.unix's 1000 rules)",
                sendto_udp: labelled(Op::SendTo),
                setxattr: labelled(Op::Setxattr),
                socket: labelled(Op::Socket),
                unix_connect: labelled(Op::UnixConnect),
                utime: labelled(Op::Utime),
            },
            workloads: Workload::ALL
                .into_iter()
                .map(|w| {
                    let outcome = match left_out.workloads.get(&w) {
                        Some(why) => WorkloadOutcome::Skipped {
                            skipped: why.clone(),
                        },
                        None => WorkloadOutcome::Done(res.workload(w)),
                    };
                    (w.name(), outcome)
                })
                .collect(),
            dir_cache: DirCache {
                bpf_stats_uncached,
                note: "B runs with the directory cache on, U runs (actgate run --no-dir-cache, after B in each round) with it off; the labelled worker only; cached_vs_uncached_pct = B/U - 1; file_open_read's directory holds a near miss of the read rules, so the cache never serves it, file_open_read_plain's holds no rule",
                operations: CACHED_OPS
                    .into_iter()
                    .filter(|op| !skipped.contains_key(op))
                    .map(|op| (op.name(), res.cache_effect(op)))
                    .collect(),
            },
            depth: Depth {
                note: "workers: labelled (actgate exec, the label's cgroup at level 2), unlabelled (a cgroup above level 2: the search stops before a lookup), level5_bound (actgate-bench.slice/a/b/c/bound.scope, which D's policy binds to the label: unlabelled in B, labelled in D), level5_unbound (actgate-bench.slice/a/b/c/free.scope, bound by no policy); b: B's daemon after B's runs (1000 rules per action, labels at level 2), d: a daemon whose policy is B's plus cgroups: [bound.scope] (levels 2 and 5); the four workers take turns in the same slices; lookups: LABELS lookups per label search (one bpf_get_current_ancestor_cgroup_id call each); capable_judged is judged only for a labelled worker, so level5_bound's d_vs_b includes the judgement: compare it with labelled in D (level5_bound_vs_labelled_pct)",
                operations: DEPTH_OPS
                    .into_iter()
                    .filter(|op| !skipped.contains_key(op))
                    .map(|op| (op.name(), res.depth(op)))
                    .collect(),
            },
        }
    }

    /// results.json's text.
    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }
}

impl Method {
    /// `file_system`: the type of the file system the opened files are on.
    pub fn new(
        rounds: u32,
        seconds_per_run: f64,
        reps: u32,
        only_depth: bool,
        file_system: &str,
    ) -> Method {
        Method {
            caveat: "the VM runs under QEMU software emulation (TCG): absolute times are far slower than native; only ratios measured within one boot mean anything",
            connect: "socket + SO_LINGER 0 + connect to a 127.0.0.1 listener + close",
            control: "getppid(2), which no hook sees: a steadiness check of the emulated machine",
            cpus: "workers and their children pinned to the last CPU; orchestrator, listener and daemon to CPU 0; flood processes unpinned",
            exec_program: "a 132-byte static x86-64 ELF that calls exit(0); posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) + execve) + waitpid",
            file_open: format!(
                "open(O_RDONLY or O_WRONLY) + close of an allowed file on {file_system}"
            ),
            floor: "floor_pct = F/A - 1, the cost of attaching any BPF LSM program; above_floor_pct = B/F - 1, what actgate's own programs add to that",
            only_depth,
            order: "S10, then A F B D U per round, then S10000 (A: daemon stopped, F: daemon stopped and a no-op BPF LSM program on each of its hooks, B: enforcing 1000 rules per action, then, in B's daemon, the depth operations in all four workers, D: as B with a level-5 cgroup bound too, the depth operations in all four workers, U: as B with the directory cache off, labelled worker and the operations of dir_cache only, S: enforcing N rules)",
            rounds,
            rules: "rules per action (exec, files.write, files.read, network.connect, network.unix); files.write denies by default and allows the workspace (/tmp/actgate-bench/work/**), the micro-benchmarks' files (/tmp/actgate-bench/files/**) and /dev/null, padded with deny rules; the other actions allow by default and deny a list (files.read: /etc/shadow, /root/.ssh/** and the flood's target among them); no deny rule matches a benchmarked target",
            seconds_per_run,
            slices_per_run: PASSES,
            statistic: "median (p25, p75) of per-iteration means of small batches, pooled over rounds; overhead_pct = enforced/baseline - 1",
            workload_reps: reps,
            workloads: format!(
                "after the operations of each A, F, B and U run, the labelled worker runs every workload to its end, workload_reps times in turns (order reversed every other turn); each run is timed from spawn to exit, output to /dev/null, PATH={PATH}, HOME and TMPDIR inside the workspace, and must exit 0; untimed steps before it (also labelled) remove what the previous run made; a_ms, f_ms, b_ms, u_ms are medians pooled over rounds and repetitions; overhead_pct = B/A - 1, above_floor_pct = B/F - 1, floor_pct = F/A - 1, cache_pct = B/U - 1"
            ),
        }
    }
}

pub fn human(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn signed(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.2}%")
    } else {
        "-".into()
    }
}

/// A number as results.json writes it (`1.0`, `null`), so the table quotes the file exactly.
fn json(v: f64) -> String {
    serde_json::Value::from(v).to_string()
}

/// A median and its quartiles.
fn span(m: f64, lo: f64, hi: f64) -> String {
    format!("{} [{} .. {}]", human(m), human(lo), human(hi))
}

fn row(name: &str, v: &Comparison) -> String {
    let rounds: Vec<String> = v.round_overhead_pct.iter().map(|x| signed(*x)).collect();
    format!(
        "{:<37} {:>34} {:>34} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
        name,
        span(v.baseline_ns, v.baseline_p25_ns, v.baseline_p75_ns),
        span(v.enforced_ns, v.enforced_p25_ns, v.enforced_p75_ns),
        signed(v.overhead_pct),
        signed(v.round_overhead_median_pct),
        signed(v.floor_pct),
        signed(v.above_floor_pct),
        signed(v.vs_unlabelled_enforced_pct.unwrap_or(f64::NAN)),
        rounds.join(" ")
    )
}

/// The label search by depth: each operation's workers in B's daemon and in D's.
fn depth_table(d: &Depth, line: &mut impl FnMut(String)) {
    line(
        "Label search depth (issue 18): B's daemon (labels at level 2) against D (a level-5 \
         cgroup bound too: levels 2 and 5), same boot; medians [p25 .. p75] pooled over rounds; \
         lookups per search B -> D; D/B = median of each round's own D/B - 1:"
            .into(),
    );
    line(format!(
        "{:<42} {:<16} {:>7} {:>34} {:>34} {:>9}",
        "operation", "worker", "lookups", "B: level 2", "D: levels 2, 5", "D/B"
    ));
    for op in DEPTH_OPS {
        let Some(e) = d.operations.get(op.name()) else {
            continue;
        };
        for who in Who::ALL {
            let Some(v) = e.workers.get(who.name()) else {
                continue;
            };
            line(format!(
                "{:<42} {:<16} {:>7} {:>34} {:>34} {:>9}",
                op.what(),
                who.name(),
                format!("{} -> {}", v.b_lookups, v.d_lookups),
                span(v.b_ns, v.b_p25_ns, v.b_p75_ns),
                span(v.d_ns, v.d_p25_ns, v.d_p75_ns),
                signed(v.round_d_vs_b_median_pct)
            ));
        }
        line(format!(
            "{:<42} in D's slices: level5_bound vs labelled {}, level5_unbound vs unlabelled {}",
            "",
            signed(e.level5_bound_vs_labelled_pct),
            signed(e.level5_unbound_vs_unlabelled_pct)
        ));
    }
}

/// The table printed at the end and written beside results.json.
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let mut line = |s: String| {
        t.push_str(&s);
        t.push('\n');
    };
    line(format!(
        "actgate benchmark: Linux {}, {} rules per action, {} rounds of A (daemon stopped) / F (floor: no-op programs) / B (enforcing)",
        r.kernel, r.rules_per_label, r.method.rounds
    ));
    line(
        "Medians of per-iteration means [p25 .. p75], pooled over rounds. overhead = B/A - 1 of \
         those; rounds = median of each round's own B/A - 1; floor = F/A - 1, a no-op BPF LSM \
         program on each hook; B/F = B/F - 1, what actgate adds above that floor; vs unl. = \
         labelled against unlabelled in the same interleaved slices of the B runs (median over \
         rounds)."
            .into(),
    );
    line(String::new());
    line(format!(
        "{:<37} {:>34} {:>34} {:>9} {:>9} {:>9} {:>9} {:>9}  per round",
        "operation",
        "A: daemon stopped",
        "B: enforcing",
        "overhead",
        "rounds",
        "floor",
        "B/F",
        "vs unl."
    ));
    line(row("labelled   exec (spawn+wait)", &r.exec));
    line(row("labelled   file_open read", &r.file_open.read));
    line(row(
        "labelled   file_open read, no rule in its directory",
        &r.file_open.read_plain,
    ));
    line(row("labelled   file_open write", &r.file_open.write));
    line(row("labelled   connect 127.0.0.1", &r.connect));
    line(row(
        "labelled   control: getppid (no hook)",
        &r.control_getppid,
    ));
    line(row(
        "labelled   exec dynamic (spawn+wait)",
        &r.exec_by_mapping.exec_dynamic,
    ));
    line(row(
        "labelled   mmap PROT_EXEC + munmap",
        &r.exec_by_mapping.mmap_exec,
    ));
    let o = &r.other_hooks;
    for (op, v) in [
        (Op::Capable, &o.capable),
        (Op::CapableJudged, &o.capable_judged),
        (Op::Socket, &o.socket),
        (Op::SendTo, &o.sendto_udp),
        (Op::Utime, &o.utime),
        (Op::Setxattr, &o.setxattr),
        (Op::Ftruncate, &o.ftruncate),
        (Op::UnixConnect, &o.unix_connect),
    ] {
        let name = format!("labelled   {}", op.what());
        match v {
            Outcome::Done(c) => line(row(&name, c)),
            Outcome::Failed { error } => line(format!("{name:<37} left out: {error}")),
        }
    }
    for op in Op::ALL {
        if let Some(v) = r.unlabelled.get(op.name()) {
            line(row(&format!("unlabelled {}", op.what()), v));
        }
    }
    line(String::new());
    line(format!(
        "Workloads (labelled, wall clock spawn to exit, median [p25 .. p75] of {} runs per phase):",
        r.method.rounds * r.method.workload_reps
    ));
    line(format!(
        "{:<12} {:>28} {:>9} {:>28} {:>9} {:>9} {:>9} {:>9}",
        "workload",
        "A: daemon stopped",
        "F: floor",
        "B: enforcing",
        "B/A",
        "B/F",
        "U: no dc",
        "B/U"
    ));
    for name in Workload::ALL.map(Workload::name) {
        let Some(w) = r.workloads.get(name) else {
            continue;
        };
        match w {
            WorkloadOutcome::Done(v) => {
                let secs = |ms: f64| format!("{:.2} s", ms / 1000.0);
                let span = |m: f64, lo: f64, hi: f64| {
                    format!("{} [{} .. {}]", secs(m), secs(lo), secs(hi))
                };
                line(format!(
                    "{:<12} {:>28} {:>9} {:>28} {:>9} {:>9} {:>9} {:>9}",
                    name,
                    span(v.a_ms, v.a_p25_ms, v.a_p75_ms),
                    secs(v.f_ms),
                    span(v.b_ms, v.b_p25_ms, v.b_p75_ms),
                    signed(v.overhead_pct),
                    signed(v.above_floor_pct),
                    secs(v.u_ms),
                    signed(v.cache_pct)
                ));
            }
            WorkloadOutcome::Skipped { skipped } => line(format!("{name:<12} left out: {skipped}")),
        }
    }
    line(String::new());
    line("Directory cache (labelled, enforcing): B with it, U without (--no-dir-cache):".into());
    line(format!(
        "{:<42} {:>12} {:>12} {:>9}",
        "operation", "B: cache on", "U: off", "B/U"
    ));
    for op in CACHED_OPS {
        if let Some(c) = r.dir_cache.operations.get(op.name()) {
            line(format!(
                "{:<42} {:>12} {:>12} {:>9}",
                op.what(),
                human(c.cached_ns),
                human(c.uncached_ns),
                signed(c.cached_vs_uncached_pct)
            ));
        }
    }
    line(String::new());
    depth_table(&r.depth, &mut line);
    line(String::new());
    line("Scaling (labelled, enforcing; overhead against the A median):".into());
    line(format!(
        "{:<37} {:>22} {:>22} {:>22}",
        "operation", "10 rules", "1,000 rules", "10,000 rules"
    ));
    let s = &r.scaling;
    for (op, by_rules) in [
        (Op::OpenRead, &s.file_open_read),
        (Op::OpenWrite, &s.file_open_write),
        (Op::Connect, &s.connect),
        (Op::Control, &s.control_getppid),
    ] {
        let cells: Vec<String> = SCALES
            .iter()
            .map(|n| {
                let c = &by_rules[n];
                format!("{} ({})", human(c.enforced_ns), signed(c.overhead_pct))
            })
            .collect();
        line(format!(
            "{:<37} {:>22} {:>22} {:>22}",
            op.what(),
            cells[0],
            cells[1],
            cells[2]
        ));
    }
    line(String::new());
    match &r.flood {
        Some(Outcome::Done(fl)) => line(format!(
            "Flood: {} processes x {} s of denied opens: {} attempts ({} EPERM, {}/s); kernel denies {} (equal: {}); \
             events received {}, dropped {}; {} events/s written",
            fl.processes,
            json(fl.seconds),
            fl.attempts,
            fl.eperm,
            json(fl.attempts_per_sec),
            fl.kernel_denies,
            fl.kernel_denies_equal_attempts,
            fl.events_received,
            fl.events_dropped,
            json(fl.events_per_sec)
        )),
        other => line(format!(
            "Flood: {}",
            serde_json::to_string(other).unwrap_or_default()
        )),
    }
    if let Some(stats) = &r.bpf_stats {
        line(String::new());
        line(
            "Program run time with kernel.bpf_stats_enabled=1, by operation: all programs' ns per \
             operation and its share of the A median; per program, median ns per call over slices \
             and calls:"
                .into(),
        );
        if let Outcome::Done(stats) = stats {
            for (who, ops) in [
                ("labelled", &stats.labelled),
                ("unlabelled", &stats.unlabelled),
            ] {
                for (op, v) in ops {
                    let cells: Vec<String> = v
                        .programs
                        .iter()
                        .map(|(name, p)| format!("{name} {} ns x{}", json(p.ns_per_call), p.calls))
                        .collect();
                    line(format!(
                        "  {who:<10} {op:<16} {} ns per operation = {} of A; {}",
                        json(v.program_ns_per_operation),
                        signed(v.share_of_baseline_pct),
                        cells.join(", ")
                    ));
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Phase, Run, WorkloadRun};

    /// A report over three samples of every run, every part present.
    fn report() -> Report {
        let mut results = Results::default();
        let phases = [
            Phase::A,
            Phase::Floor,
            Phase::B,
            Phase::Uncached,
            Phase::Scale(10),
            Phase::Scale(10000),
            Phase::Depth(2),
            Phase::Depth(5),
        ];
        for who in Who::ALL {
            for op in Op::ALL {
                for phase in phases {
                    results.runs.push(Run {
                        who,
                        op,
                        phase,
                        round: 0,
                        samples: vec![100.0, 110.0, 125.0],
                    });
                }
            }
        }
        for workload in Workload::ALL {
            for phase in [Phase::A, Phase::Floor, Phase::B, Phase::Uncached] {
                for ms in [2000.0, 2100.0, 2300.0] {
                    results.workloads.push(WorkloadRun {
                        workload,
                        phase,
                        ms,
                    });
                }
            }
        }
        let left_out = LeftOut {
            workloads: BTreeMap::from([(Workload::TarX, "tar is not in /usr/bin:/bin".into())]),
            ..LeftOut::default()
        };
        let by_op = || {
            let program = Program {
                calls: 3,
                ns_per_call: 50.0,
                ns_per_call_mean: 51.5,
            };
            let programs = OpPrograms {
                iterations: 3,
                program_ns_per_operation: 150.0,
                programs: BTreeMap::from([("file_open".to_string(), program)]),
                share_of_baseline_pct: 1.5,
            };
            BTreeMap::from([(Op::OpenRead.name(), programs)])
        };
        let flood = Flood {
            attempts: 10,
            attempts_per_sec: 3.3,
            eperm: 10,
            events_dropped: 0,
            events_per_sec: 3.3,
            events_received: 10,
            events_received_plus_dropped: 10,
            kernel_denies: 10,
            kernel_denies_equal_attempts: true,
            other_results: 0,
            processes: 4,
            seconds: 3.0,
            seconds_until_last_event: 3.0,
        };
        let stats = BpfStats {
            labelled: by_op(),
            unlabelled: by_op(),
        };
        Report::new(
            "6.12".into(),
            &results,
            &left_out,
            LastRound {
                flood: Some(Outcome::Done(flood)),
                bpf_stats: Some(Outcome::Done(stats)),
                bpf_stats_uncached: Some(Outcome::Done(by_op())),
            },
            Machine::probe(),
            Method::new(1, 0.3, 2, false, "tmpfs"),
        )
    }

    #[test]
    fn keys_keep_the_order_results_json_always_had() {
        let report = report();
        let pretty = report.json().unwrap();
        let top: Vec<&str> = pretty
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split('"').next())
            .collect();
        assert_eq!(
            top,
            [
                "kernel",
                "rules_per_label",
                "exec",
                "file_open",
                "connect",
                "unlabelled",
                "scaling",
                "flood",
                "control_getppid",
                "bpf_stats",
                "machine",
                "method",
                "exec_by_mapping",
                "other_hooks",
                "workloads",
                "dir_cache",
                "depth"
            ]
        );
        // serde_json's own map sorts keys: rebuilding the document from it, field by field in
        // the order above, must give back the same text.
        let compact = serde_json::to_string(&report).unwrap();
        let sorted = serde_json::to_value(&report).unwrap();
        let rebuilt: Vec<String> = top
            .iter()
            .map(|k| format!("\"{k}\":{}", sorted[k]))
            .collect();
        assert_eq!(compact, format!("{{{}}}", rebuilt.join(",")));
    }

    #[test]
    fn only_the_labelled_worker_is_compared_with_the_unlabelled() {
        let v = serde_json::to_value(report()).unwrap();
        assert!(v["exec"]["vs_unlabelled_enforced_pct"].is_number());
        assert!(
            v["unlabelled"]["exec"]
                .get("vs_unlabelled_enforced_pct")
                .is_none()
        );
    }

    #[test]
    fn every_workload_has_figures_or_says_why_it_was_left_out() {
        let v = serde_json::to_value(report()).unwrap();
        for w in Workload::ALL {
            let fig = &v["workloads"][w.name()];
            if w == Workload::TarX {
                assert_eq!(fig["skipped"], "tar is not in /usr/bin:/bin");
                continue;
            }
            for key in ["a_ms", "f_ms", "b_ms", "overhead_pct", "above_floor_pct"] {
                assert!(fig[key].is_number(), "{} {key}", w.name());
            }
            assert_eq!(fig["a_ms"], 2100.0);
            assert_eq!(fig["b_samples"], 3);
        }
        assert!(table(&report()).contains("tar_x        left out: tar is not in"));
    }

    #[test]
    fn each_depth_operation_has_every_worker_and_its_lookups() {
        let v = serde_json::to_value(report()).unwrap();
        for op in DEPTH_OPS {
            let e = &v["depth"]["operations"][op.name()];
            assert!(
                e["level5_bound_vs_labelled_pct"].is_number(),
                "{}",
                op.name()
            );
            let lookups = |who: Who| {
                let w = &e["workers"][who.name()];
                (w["b_lookups"].as_u64(), w["d_lookups"].as_u64())
            };
            assert_eq!(lookups(Who::Labelled), (Some(1), Some(1)));
            assert_eq!(lookups(Who::Unlabelled), (Some(0), Some(0)));
            assert_eq!(lookups(Who::DeepBound), (Some(1), Some(2)));
            assert_eq!(lookups(Who::DeepFree), (Some(1), Some(2)));
        }
        assert!(table(&report()).contains("level5_unbound    1 -> 2"));
    }

    #[test]
    fn a_failed_part_says_why_and_a_missing_one_is_null() {
        let failed: Option<Outcome<Flood>> = Some(Outcome::of(Err(anyhow::anyhow!("no metrics"))));
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"error":"no metrics"}"#
        );
        let missing: Option<Outcome<Flood>> = None;
        assert_eq!(serde_json::to_string(&missing).unwrap(), "null");
    }
}
