//! `vm-guest bench`: what enforcement costs, measured on the VM's real kernel (issue 5).
//!
//! The orchestrator (this process, unlabelled) drives two long-lived workers over pipes: one
//! started with `actgate exec --user root --label bench`, so it and everything it forks stay
//! in the label's cgroup across daemon restarts, and one unlabelled. Each worker times one kind of
//! operation in a tight loop and answers with per-iteration means of small batches.
//!
//! The runs alternate: A with the daemon stopped, F (the floor, `floor.rs`) with a no-op BPF
//! LSM program on each of actgate's hooks, B with the daemon running and enforcing a policy of
//! 1,000 rules per action that never matches the benchmarked targets, so B measures the allow
//! path. Each run ends with the workloads (`workloads.rs`, issue 16): real programs the
//! labelled worker runs to their end, which the policy must allow. Only ratios within one boot
//! mean anything: the VM runs under software emulation. Nothing here asserts a timing.
//!
//! The label search (issue 18): two more workers sit in cgroups at level 5, one in a cgroup the
//! D policy binds to the label and one in a cgroup no policy binds. After B's runs, B's daemon
//! (labels at level 2 only) times DEPTH_OPS in all four workers; then D, a daemon whose policy
//! also binds the level-5 cgroup (levels 2 and 5 in use), times them again. The kernel looks
//! the label up level by level, so a task at level 5 pays one more lookup in D than in B.
//!
//! This file runs the phases. `worker.rs` holds the timed operations, `fixtures.rs` what they
//! operate on, `workloads.rs` the workloads and theirs, `stats.rs` turns samples into figures,
//! `programs.rs` reads each BPF program's run time, and `report.rs` is results.json and its
//! table.

mod depth;
mod fixtures;
mod floor;
mod machine;
mod programs;
mod report;
mod stats;
mod worker;
mod workloads;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    net::TcpListener,
    os::unix::io::AsRawFd,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use self::{
    depth::DEPTH_OPS,
    fixtures::Paths,
    floor::Floor,
    machine::{fs_type, quiesce},
    report::{Flood, LastRound, Machine, Method, Outcome, Report, human},
    stats::{Results, r1, r2, summary},
    worker::{Worker, pin, worker_cpu},
    workloads::Workload,
};
use crate::harness::{self, Daemon, metric};

pub use worker::worker;

const LABEL: &str = "bench";
const DIR: &str = "/tmp/actgate-bench";
/// Rules per action of the main runs.
const RULES: usize = 1000;
/// Rule counts of the scaling runs (1,000 comes from the main runs).
const SCALES: [usize; 3] = [10, 1000, 10000];
const FLOOD_PROCS: u32 = 4;
const FLOOD_MS: u64 = 3000;
/// Loading and proving the programs takes ~30–60 s under emulation.
const READY_SECS: u64 = 180;
/// The dynamically linked program `Op::ExecDynamic` spawns.
const DYNAMIC_EXE: &str = "/usr/bin/true";
/// Slices each run's time is cut into, operations taking turns.
const PASSES: u64 = 8;
/// The labelled operations the directory cache can serve, timed again in the U runs.
const CACHED_OPS: [Op; 6] = [
    Op::OpenRead,
    Op::OpenWrite,
    Op::OpenReadPlain,
    Op::MapExec,
    Op::Ftruncate,
    Op::Control,
];
/// Slices of each operation in the per-program statistics.
const STATS_SLICES: u64 = 5;

/// Options of `vm-guest bench`.
pub struct Options {
    pub actgate: PathBuf,
    pub out: PathBuf,
    /// Pairs of A and B runs at 1,000 rules.
    pub rounds: u32,
    /// Seconds each operation is timed per run.
    pub secs: f64,
    /// Times each workload runs per run.
    pub reps: u32,
    /// Only the depth runs (and the daemon starts they need): B's daemon and D, no A, F, U,
    /// workloads, flood or scaling.
    pub only_depth: bool,
}

/// The worker that times an operation: where its cgroup sits decides how many levels the
/// kernel's label search looks at.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Who {
    /// Started by `actgate exec --label bench`: in the label's cgroup, level 2.
    Labelled,
    /// Started by the orchestrator, in a cgroup above level 2 (the root one in the VM): the
    /// search stops before a lookup.
    Unlabelled,
    /// In DEEP_BOUND, level 5: labelled only while D's policy binds it.
    DeepBound,
    /// In DEEP_FREE, level 5: unlabelled, and looked up at every level in use.
    DeepFree,
}

impl Who {
    const ALL: [Who; 4] = [
        Who::Labelled,
        Who::Unlabelled,
        Who::DeepBound,
        Who::DeepFree,
    ];

    fn name(self) -> &'static str {
        match self {
            Who::Labelled => "labelled",
            Who::Unlabelled => "unlabelled",
            Who::DeepBound => "level5_bound",
            Who::DeepFree => "level5_unbound",
        }
    }

    /// LABELS lookups of one label search when label cgroups are in use down to level
    /// `deepest`: one per level in use no deeper than the worker's own cgroup, until a hit.
    fn lookups(self, deepest: u32) -> u32 {
        match self {
            Who::Labelled => 1,
            Who::Unlabelled => 0,
            Who::DeepBound | Who::DeepFree => {
                if deepest >= 5 {
                    2
                } else {
                    1
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Exec,
    OpenRead,
    OpenWrite,
    Connect,
    /// getppid(2): a system call no hook sees, timed beside the others to show how steady
    /// the emulated machine ran.
    Control,
    /// A spawn of a dynamically linked program: the loader maps it, ld.so and libc
    /// executable, and each mapping is judged as an exec (`mmap_file`).
    ExecDynamic,
    /// mmap(PROT_READ|PROT_EXEC) and munmap of a file: one `mmap_file` decision each.
    MapExec,
    /// socket(AF_INET, SOCK_STREAM) and close: `socket_create`, which judges only raw,
    /// packet and SCTP sockets, so this is the call every other socket pays.
    Socket,
    /// utimensat(path, NULL) of the write target: `inode_setattr`, judged as a write.
    Utime,
    /// setxattr of a `user.*` attribute on the write target: `inode_setxattr`, a write.
    Setxattr,
    /// ftruncate of the open write target to its own size: `file_truncate` (6.2+), a write.
    Ftruncate,
    /// connect to a path-named AF_UNIX listener, then close: `unix_stream_connect`, judged
    /// against `network.unix`.
    UnixConnect,
    /// open(O_RDONLY) and close of a file in a directory no rule lies beneath: what the
    /// directory cache (issue 16) serves without resolving the path. `OpenRead`'s directory
    /// holds a near miss of its rules, so it is always resolved.
    OpenReadPlain,
    /// setgroups(2) to the groups the worker has: a `capable` check of CAP_SETGID, which no
    /// policy denies, so the hook leaves before it looks for a label.
    Capable,
    /// sethostname(2) to the name the host has: a `capable` check of CAP_SYS_ADMIN, on the
    /// denied list and granted by the bench policy, so it is judged and counted.
    CapableJudged,
    /// sendto(2) of one byte on a UDP socket to a loopback port: `socket_sendmsg` with a
    /// destination, judged as a connect (and the DNS steering's `sendmsg4` cgroup program).
    SendTo,
}

impl Op {
    const ALL: [Op; 16] = [
        Op::Exec,
        Op::OpenRead,
        Op::OpenWrite,
        Op::Connect,
        Op::Control,
        Op::ExecDynamic,
        Op::MapExec,
        Op::Socket,
        Op::Utime,
        Op::Setxattr,
        Op::Ftruncate,
        Op::UnixConnect,
        Op::OpenReadPlain,
        Op::Capable,
        Op::CapableJudged,
        Op::SendTo,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::OpenRead => "file_open_read",
            Op::OpenWrite => "file_open_write",
            Op::Connect => "connect",
            Op::Control => "control_getppid",
            Op::ExecDynamic => "exec_dynamic",
            Op::MapExec => "mmap_exec",
            Op::Socket => "socket",
            Op::Utime => "utime",
            Op::Setxattr => "setxattr",
            Op::Ftruncate => "ftruncate",
            Op::UnixConnect => "unix_connect",
            Op::OpenReadPlain => "file_open_read_plain",
            Op::Capable => "capable",
            Op::CapableJudged => "capable_judged",
            Op::SendTo => "sendto_udp",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Op::Exec => "exec (spawn+wait)",
            Op::OpenRead => "file_open read",
            Op::OpenWrite => "file_open write",
            Op::Connect => "connect 127.0.0.1",
            Op::Control => "control: getppid (no hook)",
            Op::ExecDynamic => "exec dynamic (spawn+wait)",
            Op::MapExec => "mmap PROT_EXEC + munmap",
            Op::Socket => "socket(AF_INET) + close",
            Op::Utime => "utimensat (touch)",
            Op::Setxattr => "setxattr user.*",
            Op::Ftruncate => "ftruncate, same size",
            Op::UnixConnect => "connect AF_UNIX path",
            Op::OpenReadPlain => "file_open read, no rule in its directory",
            Op::Capable => "setgroups, same groups (capable)",
            Op::CapableJudged => "sethostname, same name (capable, judged)",
            Op::SendTo => "sendto UDP 127.0.0.1",
        }
    }

    /// Iterations per timed sample: an exec takes milliseconds under emulation, an open
    /// microseconds.
    fn batch(self) -> u32 {
        match self {
            Op::Exec | Op::Connect | Op::ExecDynamic => 1,
            Op::OpenRead
            | Op::OpenWrite
            | Op::MapExec
            | Op::Socket
            | Op::Utime
            | Op::Setxattr
            | Op::Ftruncate
            | Op::UnixConnect
            | Op::OpenReadPlain
            | Op::Capable
            | Op::CapableJudged
            | Op::SendTo => 5,
            Op::Control => 50,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Daemon stopped.
    A,
    /// Daemon stopped, a no-op program on each of its hooks: what attaching costs by itself.
    Floor,
    /// Daemon enforcing RULES rules per action.
    B,
    /// As B, with the directory cache off (`actgate run --no-dir-cache`): what the cache saves,
    /// within the same boot.
    Uncached,
    /// Daemon enforcing this many rules per action (scaling runs).
    Scale(usize),
    /// The depth runs: DEPTH_OPS in every worker, with label cgroups in use down to this level:
    /// 2 in B's daemon, 5 in D's, whose policy binds DEEP_BOUND too.
    Depth(u32),
}

/// One timed run of a workload, by the labelled worker.
struct WorkloadRun {
    workload: Workload,
    phase: Phase,
    ms: f64,
}

/// What this guest can't measure, and why.
#[derive(Default)]
struct LeftOut {
    ops: BTreeMap<Op, String>,
    workloads: BTreeMap<Workload, String>,
}

/// One timed run of one operation by one worker.
struct Run {
    who: Who,
    op: Op,
    phase: Phase,
    round: u32,
    /// Mean ns per iteration of each batch.
    samples: Vec<f64>,
}

fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    println!("[bench {:>3}:{:02}] {msg}", t / 60, t % 60);
    let _ = io::stdout().flush();
}

/// The orchestrator: its workers, what it set up, and every run timed so far.
struct Bench {
    paths: Paths,
    actgate: PathBuf,
    workers: BTreeMap<Who, Worker>,
    port: u16,
    /// The operations timed in each run: Op::ALL less those this guest can't do.
    ops: Vec<Op>,
    /// The workloads each run ends with: Workload::ALL less those this guest can't run.
    workloads: Vec<Workload>,
    left_out: LeftOut,
    ms: u64,
    reps: u32,
    starts: u32,
    results: Results,
}

impl Bench {
    fn command(&self, op: Op, ms: u64) -> String {
        let target = match op {
            Op::Exec | Op::MapExec => self.paths.exe().display().to_string(),
            Op::ExecDynamic => DYNAMIC_EXE.into(),
            Op::OpenRead => self.paths.read_target().display().to_string(),
            Op::OpenReadPlain => self.paths.plain_read_target().display().to_string(),
            Op::OpenWrite | Op::Utime | Op::Setxattr | Op::Ftruncate => {
                self.paths.write_target().display().to_string()
            }
            Op::Connect => self.port.to_string(),
            Op::UnixConnect => self.paths.unix_socket().display().to_string(),
            Op::Control | Op::Socket | Op::Capable | Op::CapableJudged | Op::SendTo => "-".into(),
        };
        let verb = match op {
            Op::Exec | Op::ExecDynamic => "exec",
            Op::MapExec => "mmap_exec",
            Op::OpenRead | Op::OpenReadPlain => "open_read",
            Op::OpenWrite => "open_write",
            Op::Connect => "connect",
            Op::Control => "getppid",
            Op::Socket => "socket",
            Op::Utime => "utime",
            Op::Setxattr => "setxattr",
            Op::Ftruncate => "ftruncate",
            Op::UnixConnect => "unix_connect",
            Op::Capable => "setgroups",
            Op::CapableJudged => "sethostname",
            Op::SendTo => "sendto",
        };
        format!("{verb} {target} {} {ms}", op.batch())
    }

    fn worker(&mut self, who: Who) -> &mut Worker {
        self.workers.get_mut(&who).expect("every worker runs")
    }

    /// Times `ops` in each worker of `who` for `ms` each, in PASSES interleaved slices so
    /// that a change in the emulator's speed touches every operation alike.
    fn measure(
        &mut self,
        phase: Phase,
        round: u32,
        ops: &[Op],
        who: &[Who],
        ms: u64,
    ) -> Result<()> {
        let (waited, busy) = quiesce();
        progress(&format!(
            "  machine settled after {waited:.0} s ({:.0}% busy over the last second)",
            busy * 100.0
        ));
        let first = self.results.runs.len();
        for &op in ops {
            for &w in who {
                self.results.runs.push(Run {
                    who: w,
                    op,
                    phase,
                    round,
                    samples: Vec::new(),
                });
            }
        }
        let slice = (ms / PASSES).max(50);
        for pass in 0..PASSES {
            for &op in ops {
                // Alternate which worker goes first.
                let order: Vec<Who> = if pass % 2 == 0 {
                    who.to_vec()
                } else {
                    who.iter().rev().copied().collect()
                };
                for w in order {
                    let cmd = self.command(op, slice);
                    let samples = self.worker(w).call(&cmd)?;
                    let run = self.results.runs[first..]
                        .iter_mut()
                        .find(|r| r.op == op && r.who == w)
                        .expect("a run per operation and worker");
                    run.samples.extend(samples);
                }
            }
        }
        for r in &self.results.runs[first..] {
            progress(&format!(
                "  {:?} round {} {:<14} {:<20} median {} ({} samples)",
                phase,
                round + 1,
                r.who.name(),
                r.op.name(),
                human(summary(&r.samples).0),
                r.samples.len()
            ));
        }
        Ok(())
    }

    /// Runs each workload `reps` times in the labelled worker, in turns, the order reversed
    /// every other turn. A workload that fails fails the benchmark: under B it means the policy
    /// denied it, and a number would hide that.
    fn run_workloads(&mut self, phase: Phase, round: u32) -> Result<()> {
        if self.workloads.is_empty() {
            return Ok(());
        }
        let (waited, busy) = quiesce();
        progress(&format!(
            "  workloads: machine settled after {waited:.0} s ({:.0}% busy over the last second)",
            busy * 100.0
        ));
        let first = self.results.workloads.len();
        for rep in 0..self.reps {
            let mut order = self.workloads.clone();
            if rep % 2 == 1 {
                order.reverse();
            }
            for w in order {
                let failed = || format!("workload {} in {phase:?} round {}", w.name(), round + 1);
                let steps = w.prepare(&self.paths);
                for step in steps {
                    self.worker(Who::Labelled)
                        .call(&step.line()?)
                        .with_context(|| format!("preparing the {}", failed()))?;
                }
                let timed = w.job(&self.paths).line()?;
                let ms = self
                    .worker(Who::Labelled)
                    .call(&timed)
                    .with_context(failed)?;
                self.results.workloads.push(WorkloadRun {
                    workload: w,
                    phase,
                    ms: ms.first().copied().unwrap_or(f64::NAN),
                });
            }
        }
        for &w in &self.workloads {
            let ms: Vec<f64> = self.results.workloads[first..]
                .iter()
                .filter(|r| r.workload == w)
                .map(|r| r.ms)
                .collect();
            progress(&format!(
                "  {phase:?} round {} workload {:<10} median {:.0} ms of {:?}",
                round + 1,
                w.name(),
                summary(&ms).0,
                ms
            ));
        }
        Ok(())
    }

    fn start(&mut self, rules: usize) -> Result<Daemon> {
        self.start_with(rules, &[])
    }

    /// `start` with more options of `actgate run`.
    fn start_with(&mut self, rules: usize, args: &[&str]) -> Result<Daemon> {
        let policies = self.paths.policies(rules);
        self.launch(policies, args)
    }

    /// A daemon enforcing the policies in `policies`, ready.
    fn launch(&mut self, policies: PathBuf, args: &[&str]) -> Result<Daemon> {
        self.starts += 1;
        let root = &self.paths.root;
        let t = Instant::now();
        let daemon = Daemon::launch(
            &self.actgate,
            &policies,
            &root.join(format!("events-{}.jsonl", self.starts)),
            &root.join(format!("daemon-{}.log", self.starts)),
            args,
            Duration::from_secs(READY_SECS),
        )?;
        progress(&format!(
            "daemon ready with {} in {:.0} s",
            policies.display(),
            t.elapsed().as_secs_f64()
        ));
        Ok(daemon)
    }

    fn flood(&mut self, daemon: &Daemon) -> Result<Flood> {
        let series_deny = harness::decision_series(LABEL, "file_read", "deny");
        let series_drop = "actgate_events_dropped_total{action=\"file_read\"}";
        let scrape = || -> Result<(f64, f64)> {
            let body = harness::scrape()?;
            Ok((metric(&body, &series_deny), metric(&body, series_drop)))
        };
        let count = || count_events(&daemon.events);
        let (deny0, drop0) = scrape()?;
        let ev0 = count();
        let t0 = Instant::now();
        let cmd = format!(
            "flood {} {FLOOD_PROCS} {FLOOD_MS}",
            self.paths.flood_target().display()
        );
        let v = self.worker(Who::Labelled).call(&cmd)?;
        let flood_secs = t0.elapsed().as_secs_f64();
        let [attempts, eperm, other] = [v[0] as u64, v[1] as u64, v[2] as u64];
        // Wait for the daemon to write what it received: until the count stops growing.
        let mut last = count();
        let mut last_growth = Instant::now();
        let give_up = Instant::now() + Duration::from_secs(60);
        while last_growth.elapsed() < Duration::from_millis(2000) && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(250));
            let n = count();
            if n != last {
                last = n;
                last_growth = Instant::now();
            }
        }
        let written_secs = (last_growth - t0).as_secs_f64().max(flood_secs);
        let (deny1, drop1) = scrape()?;
        let received = last - ev0;
        let denies = (deny1 - deny0) as u64;
        let dropped = (drop1 - drop0) as u64;
        Ok(Flood {
            attempts,
            attempts_per_sec: r1(attempts as f64 / flood_secs),
            eperm,
            events_dropped: dropped,
            events_per_sec: r1(received as f64 / written_secs),
            events_received: received,
            events_received_plus_dropped: received + dropped,
            kernel_denies: denies,
            kernel_denies_equal_attempts: denies == attempts,
            other_results: other,
            processes: FLOOD_PROCS,
            seconds: r2(flood_secs),
            seconds_until_last_event: r2(written_secs),
        })
    }
}

/// The fields of a daemon's event line that the flood counts by.
#[derive(Deserialize)]
struct Event {
    label: String,
    action: String,
    verdict: String,
}

/// Deny events for the bench label's file reads in an events file.
fn count_events(path: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.ends_with('}'))
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .filter(|e| e.label == LABEL && e.action == "file_read" && e.verdict == "deny")
        .count() as u64
}

/// `vm-guest bench`.
pub fn run(opts: &Options) -> Result<()> {
    let kernel = agent_common::kernel_release();
    progress(&format!("kernel {kernel}"));
    // The orchestrator, the listener and the daemon (started from here) keep off the
    // workers' CPU.
    if worker_cpu().is_some() {
        pin(Some(0));
    }
    let paths = Paths {
        root: PathBuf::from(DIR),
    };
    let mut left_out = LeftOut {
        workloads: fixtures::create(&paths, &opts.actgate, !opts.only_depth)?,
        ..LeftOut::default()
    };
    for (w, why) in &left_out.workloads {
        progress(&format!("left out: workload {}: {why}", w.name()));
    }
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| !left_out.workloads.contains_key(w))
        .collect();
    let ms = (opts.secs * 1000.0) as u64;

    // The connect target: an unlabelled listener that accepts and closes, with a deep
    // backlog so no SYN is ever dropped (a dropped SYN costs a 1 s retransmit).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: raising the backlog of our own listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    // The AF_UNIX connect target, the same way.
    let unix = UnixListener::bind(paths.unix_socket())
        .with_context(|| format!("binding {}", paths.unix_socket().display()))?;
    // SAFETY: raising the backlog of our own listening socket.
    unsafe { libc::listen(unix.as_raw_fd(), 4096) };
    thread::spawn(move || {
        for conn in unix.incoming() {
            drop(conn);
        }
    });
    // User extended attributes need the file system's support (tmpfs has it since 6.6).
    let target = std::ffi::CString::new(paths.write_target().display().to_string())?;
    if let Err(e) = worker::set_xattr(&target) {
        let why = format!(
            "setxattr({}) on {} ({}): {e}",
            worker::XATTR.to_string_lossy(),
            paths.write_target().display(),
            fs_type(&paths.root)
        );
        progress(&format!("left out: {why}"));
        left_out.ops.insert(Op::Setxattr, why);
    }
    let ops: Vec<Op> = Op::ALL
        .into_iter()
        .filter(|op| !left_out.ops.contains_key(op))
        .collect();

    let guest = std::env::current_exe()?;
    let mut unlabelled_cmd = Command::new(&guest);
    unlabelled_cmd.arg("bench-worker");
    let mut bench = Bench {
        paths,
        actgate: opts.actgate.clone(),
        workers: BTreeMap::from([(Who::Unlabelled, Worker::spawn(unlabelled_cmd)?)]),
        port,
        ops,
        workloads,
        left_out,
        ms,
        reps: opts.reps,
        starts: 0,
        results: Results::default(),
    };
    // Shallower than level 2, the search for its label stops before any lookup.
    let own = &bench.worker(Who::Unlabelled).cgroup;
    if own.contains("/actgate/") || own.split('/').filter(|c| !c.is_empty()).count() >= 2 {
        bail!("the unlabelled worker is in {own}, not in a cgroup above level 2");
    }
    bench.spawn_deep_workers(&guest)?;

    // The first daemon enforces the 10-rule policy: its run is the first scaling run, and it
    // lets `actgate exec` put the labelled worker in the label's cgroup, where it stays.
    let scale_ops = [Op::OpenRead, Op::OpenWrite, Op::Connect, Op::Control];
    let daemon = bench.start(10)?;
    let mut cmd = Command::new(&opts.actgate);
    cmd.args(["exec", "--user", "root", "--label", LABEL, "--"])
        .arg(&guest)
        .arg("bench-worker");
    let w = Worker::spawn(cmd)?;
    if !w.cgroup.ends_with(&format!("/actgate/{LABEL}")) {
        bail!("the labelled worker is in cgroup {}", w.cgroup);
    }
    progress(&format!("labelled worker in cgroup {}", w.cgroup));
    bench.workers.insert(Who::Labelled, w);
    let all = !opts.only_depth;
    if all {
        bench.measure(Phase::Scale(10), 0, &scale_ops, &[Who::Labelled], ms * 2)?;
    }
    daemon.stop_cleanly()?;

    let mut flood = None;
    let mut bpf_stats = None;
    let mut uncached_stats = None;
    let both = [Who::Labelled, Who::Unlabelled];
    for round in 0..opts.rounds {
        let ops = bench.ops.clone();
        if all {
            progress(&format!(
                "round {} of {}: A (daemon stopped)",
                round + 1,
                opts.rounds
            ));
            bench.measure(Phase::A, round, &ops, &both, ms)?;
            bench.run_workloads(Phase::A, round)?;
            progress(&format!(
                "round {} of {}: F (floor: a no-op program on each hook)",
                round + 1,
                opts.rounds
            ));
            let floor = Floor::attach()?;
            bench.measure(Phase::Floor, round, &ops, &both, ms)?;
            bench.run_workloads(Phase::Floor, round)?;
            drop(floor);
        }
        let daemon = bench.start(RULES)?;
        if all {
            progress(&format!(
                "round {} of {}: B (enforcing)",
                round + 1,
                opts.rounds
            ));
            bench.measure(Phase::B, round, &ops, &both, ms)?;
            bench.run_workloads(Phase::B, round)?;
            if round + 1 == opts.rounds {
                progress("flood of denied opens");
                let outcome = Outcome::of(bench.flood(&daemon));
                progress(&format!("flood: {}", serde_json::to_string(&outcome)?));
                flood = Some(outcome);
                progress("per-program run time (kernel.bpf_stats_enabled)");
                bpf_stats = Some(Outcome::of(bench.bpf_stats(&daemon)));
            }
        }
        progress(&format!(
            "round {} of {}: B's daemon, labels at level 2: the depth workers",
            round + 1,
            opts.rounds
        ));
        bench.measure(Phase::Depth(2), round, &DEPTH_OPS, &Who::ALL, ms)?;
        daemon.stop_cleanly()?;
        let daemon = bench.launch(bench.paths.depth_policies(), &[])?;
        progress(&format!(
            "round {} of {}: D (enforcing, labels at levels 2 and 5)",
            round + 1,
            opts.rounds
        ));
        bench.measure(Phase::Depth(5), round, &DEPTH_OPS, &Who::ALL, ms)?;
        daemon.stop_cleanly()?;
        if !all {
            continue;
        }
        let daemon = bench.start_with(RULES, &["--no-dir-cache"])?;
        progress(&format!(
            "round {} of {}: U (enforcing, directory cache off)",
            round + 1,
            opts.rounds
        ));
        bench.measure(Phase::Uncached, round, &CACHED_OPS, &[Who::Labelled], ms)?;
        bench.run_workloads(Phase::Uncached, round)?;
        if round + 1 == opts.rounds {
            progress("per-program run time, directory cache off");
            let ops = CACHED_OPS.into_iter().filter(|op| bench.ops.contains(op));
            uncached_stats = Some(Outcome::of(bench.labelled_stats(&daemon, ops.collect())));
        }
        daemon.stop_cleanly()?;
    }
    if all {
        let daemon = bench.start(10000)?;
        bench.measure(Phase::Scale(10000), 0, &scale_ops, &[Who::Labelled], ms * 2)?;
        daemon.stop_cleanly()?;
    }

    let report = Report::new(
        kernel,
        &bench.results,
        &bench.left_out,
        LastRound {
            flood,
            bpf_stats,
            bpf_stats_uncached: uncached_stats,
        },
        Machine::probe(),
        Method::new(
            opts.rounds,
            opts.secs,
            opts.reps,
            opts.only_depth,
            &fs_type(&bench.paths.root),
        ),
    );
    let text = report::table(&report);
    println!("\n{text}");
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&opts.out, report.json()?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    let _ = fs::write(opts.out.with_extension("txt"), &text);
    progress(&format!("wrote {}", opts.out.display()));
    drop(bench);
    depth::remove_cgroups();
    Ok(())
}
