//! The integration tests. Each drives the real `actgate` binary on the VM's real kernel and
//! asserts what a user would observe: exit codes, errno names, file contents, metric values.
//!
//! They run on libtest-mimic, so the command takes the standard test flags (`--list`,
//! `--exact`, `--skip`, a filter). A suite's tests share its fixtures, usually a running
//! daemon: the fixtures are made just before the suite's first selected test and torn down
//! right after its last, so a filter starts only the daemons its tests need.

mod agent;
mod binding;
mod cascade;
mod dns;
mod escapes;
mod exec;
mod failclosed;
mod files;
mod kube;
mod labels;
mod learn;
mod lifetime;
mod mapping;
mod mounts;
mod net;
mod orphans;
mod package;
mod session;
mod sockets;
mod telemetry;
mod users;
mod writes;

use std::{
    fs,
    io::Write,
    mem,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use self::mounts::Mount;
use agent_common::kernel_release;

use crate::harness::{self, Ctx, Daemon, NotPassed, Outcome};

/// The check on the shared daemon (see `harness::Daemon::shared`) after the run.
const SHARED_STOP: &str = "shared_daemon_stops_with_exit_0";

/// One test. Its name is its function's (see `case!`), so the two can't drift apart.
pub struct Case<F> {
    pub name: &'static str,
    pub run: fn(&Ctx, &mut F) -> Outcome,
}

/// `case!(f)` for a test `fn(&Ctx) -> Outcome`, `case!(f, fixture)` for one that also takes
/// its suite's fixture; either way the test is named after the function.
#[macro_export]
macro_rules! case {
    ($f:ident) => {
        $crate::tests::Case {
            name: stringify!($f),
            run: |ctx, _| $f(ctx),
        }
    };
    ($f:ident, fixture) => {
        $crate::tests::Case {
            name: stringify!($f),
            run: |ctx, fixture| $f(ctx, fixture),
        }
    };
}

/// Tests that share fixtures `F`, run in the order given.
pub struct Suite<F> {
    /// Filters match it as well as the test names: `--filter telemetry` selects the suite.
    pub name: &'static str,
    /// Makes the fixtures, e.g. files, mounts and a running daemon.
    pub start: fn(&Ctx) -> Result<F>,
    pub cases: Vec<Case<F>>,
    /// Tears the fixtures down and says whether that went as it should (the daemon exited 0).
    pub stop: fn(F) -> Result<()>,
    /// The name under which `stop` is a test of its own, after the others. When that test
    /// isn't selected, `stop` still runs after the suite's last selected test, and a failure
    /// of it fails that test.
    pub stop_test: Option<&'static str>,
}

impl<F> Suite<F> {
    /// Tests on fixtures that tear down without a check: any daemon is a test's own.
    pub fn unchecked(
        name: &'static str,
        start: fn(&Ctx) -> Result<F>,
        cases: Vec<Case<F>>,
    ) -> Self {
        Suite {
            name,
            start,
            cases,
            stop: |_| Ok(()),
            stop_test: None,
        }
    }
}

impl<F: Send + 'static> Suite<F> {
    fn trials(self, run: &Run) -> Vec<Trial> {
        let life = Arc::new(Mutex::new(Lifetime {
            suite: self.name,
            start: self.start,
            stop: self.stop,
            left: 0,
            fixture: Fixture::NotStarted,
        }));
        let mut trials = Vec::new();
        for case in self.cases {
            let (life, ctx, report) = (life.clone(), run.ctx.clone(), run.report.clone());
            trials.push(Trial::ignorable_test(case.name, move || {
                let mut life = lock(&life);
                let outcome = match life.fixture(&ctx) {
                    Ok(fixture) => guarded(|| (case.run)(&ctx, fixture)),
                    Err(why) => Err(why),
                };
                let outcome = if life.one_done() {
                    life.after_last(outcome)
                } else {
                    outcome
                };
                report.record(case.name, outcome)
            }));
        }
        if let Some(name) = self.stop_test {
            let (life, ctx, report) = (life.clone(), run.ctx.clone(), run.report.clone());
            trials.push(Trial::ignorable_test(name, move || {
                let mut life = lock(&life);
                let outcome = life.fixture(&ctx).map(|_| ());
                life.one_done();
                report.record(name, outcome.and_then(|()| life.stop()))
            }));
        }
        let trials: Vec<Trial> = trials.into_iter().map(|t| t.with_kind(self.name)).collect();
        lock(&life).left = trials.iter().filter(|t| run.selected(t)).count();
        trials
    }
}

/// The usual fixtures: mounts holding a suite's files, and the daemon enforcing its policies.
pub struct Enforcing {
    pub daemon: Daemon,
    pub mounts: Vec<Mount>,
}

impl Enforcing {
    /// Stops the daemon, which must exit 0, then detaches the mounts.
    pub fn stop(self) -> Result<()> {
        let Enforcing { daemon, mounts } = self;
        daemon.stop_cleanly()?;
        drop(mounts);
        Ok(())
    }
}

enum Fixture<F> {
    NotStarted,
    Up(F),
    Failed(String),
    Stopped,
}

/// A suite's fixtures from its first selected test to its last.
struct Lifetime<F> {
    suite: &'static str,
    start: fn(&Ctx) -> Result<F>,
    stop: fn(F) -> Result<()>,
    /// Selected tests not run yet.
    left: usize,
    fixture: Fixture<F>,
}

impl<F> Lifetime<F> {
    /// The fixtures, made on first use; an error fails the test that needed them.
    fn fixture(&mut self, ctx: &Ctx) -> Result<&mut F, NotPassed> {
        if let Fixture::NotStarted = self.fixture {
            self.fixture = match (self.start)(ctx) {
                Ok(f) => Fixture::Up(f),
                Err(e) => Fixture::Failed(format!("{e:#}")),
            };
        }
        match &mut self.fixture {
            Fixture::Up(f) => Ok(f),
            Fixture::Failed(why) => Err(NotPassed::Fail(format!(
                "the {} suite's fixtures did not start: {why}",
                self.suite
            ))),
            Fixture::NotStarted | Fixture::Stopped => Err(NotPassed::Fail(format!(
                "the {} suite's fixtures were already torn down",
                self.suite
            ))),
        }
    }

    /// Counts one selected test as run; true when it was the suite's last.
    fn one_done(&mut self) -> bool {
        self.left = self.left.saturating_sub(1);
        self.left == 0
    }

    /// Tears the fixtures down, if they are up.
    fn stop(&mut self) -> Outcome {
        match mem::replace(&mut self.fixture, Fixture::Stopped) {
            Fixture::Up(f) => (self.stop)(f).map_err(NotPassed::from),
            _ => Ok(()),
        }
    }

    /// The outcome of the suite's last selected test once the fixtures are torn down, which
    /// must go as cleanly as the stop test would require.
    fn after_last(&mut self, outcome: Outcome) -> Outcome {
        let Err(NotPassed::Fail(stop)) = self.stop() else {
            return outcome;
        };
        let stop = format!("then tearing down the {} suite failed: {stop}", self.suite);
        match outcome {
            Err(NotPassed::Fail(why)) => Err(NotPassed::Fail(format!("{why}; {stop}"))),
            _ => Err(NotPassed::Fail(stop)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a test, turning a panic into its failure, so the suite's bookkeeping goes on.
fn guarded(test: impl FnOnce() -> Outcome) -> Outcome {
    panic::catch_unwind(AssertUnwindSafe(test)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Err(NotPassed::Fail(format!("the test panicked: {what}")))
    })
}

/// The results file: each outcome is written as it comes, so a VM that dies midway still
/// reports what ran. Each line says how long its test took (fixtures included), since the
/// VM tests' time is CI's tightest budget.
struct Report(Mutex<Option<(fs::File, Instant)>>);

impl Report {
    fn new(file: Option<fs::File>) -> Report {
        Report(Mutex::new(file.map(|f| (f, Instant::now()))))
    }

    fn text(&self, text: &str) {
        if let Some((f, _)) = lock(&self.0).as_mut() {
            let _ = writeln!(f, "{text}");
        }
    }

    /// Writes `WORD NAME [SECS s]` and the rest: the seconds since the line before.
    fn line(&self, word: &str, name: &str, rest: &str) {
        if let Some((f, since)) = lock(&self.0).as_mut() {
            let secs = since.elapsed().as_secs_f64();
            let _ = writeln!(f, "{word} {name} [{secs:.1} s]{rest}");
            let _ = f.flush();
            *since = Instant::now();
        }
    }

    /// Writes the outcome's line and hands it to libtest-mimic: a skip is a runtime ignore
    /// with its reason, which libtest-mimic counts as ignored.
    fn record(&self, name: &str, outcome: Outcome) -> Result<Completion, Failed> {
        match outcome {
            Ok(()) => {
                self.line("PASS", name, "");
                Ok(Completion::Completed)
            }
            Err(NotPassed::Skip(why)) => {
                self.line("SKIP", name, &format!(": {why}"));
                Ok(Completion::ignored_with(why))
            }
            Err(NotPassed::Fail(why)) => {
                self.line("FAIL", name, &format!(": {why}"));
                Err(why.into())
            }
        }
    }
}

/// What every trial of a run shares.
struct Run {
    ctx: Arc<Ctx>,
    report: Arc<Report>,
    args: Arguments,
}

impl Run {
    /// Whether libtest-mimic will run `trial`: the same test it applies itself.
    fn selected(&self, trial: &Trial) -> bool {
        !self.args.is_filtered_out(trial) && !self.args.is_ignored(trial)
    }
}

/// Runs (or lists) the tests `args` selects; `actgate` and `results` are only needed to run,
/// `package` only by the package's tests, which skip without it.
pub fn run(
    actgate: Option<&Path>,
    results: Option<&Path>,
    package: Option<&Path>,
    mut args: Arguments,
) -> ExitCode {
    // The suites share the daemon's metrics port and control socket, and a suite's tests
    // share its daemon: one test at a time, in the order listed.
    args.test_threads = Some(1);
    let report = results.map(|r| fs::File::create(r).ok());
    let run = Run {
        ctx: Arc::new(Ctx {
            actgate: actgate.map_or_else(|| PathBuf::from("actgate"), Path::to_path_buf),
            guest: std::env::current_exe().unwrap_or_else(|_| "vm-guest".into()),
            dir: "/tmp/actgate-vmtest".into(),
            package: package.map(Path::to_path_buf),
        }),
        report: Arc::new(Report::new(report.flatten())),
        args,
    };
    if !run.args.list {
        let _ = fs::remove_dir_all(&run.ctx.dir);
        run.report.text(&format!("# kernel {}", kernel_release()));
    }
    let mut trials = Vec::new();
    trials.extend(exec::suite().trials(&run));
    trials.extend(exec::without_daemon().trials(&run));
    trials.extend(lifetime::suite().trials(&run));
    trials.extend(package::suite().trials(&run));
    trials.extend(orphans::suite().trials(&run));
    trials.extend(binding::suite().trials(&run));
    trials.extend(cascade::suite().trials(&run));
    // The suites on the shared daemon (`Daemon::shared`), one after another: a suite that
    // starts a daemon of its own stops the shared one.
    trials.extend(users::suite().trials(&run));
    trials.extend(escapes::suite().trials(&run));
    trials.extend(mapping::suite().trials(&run));
    trials.extend(files::suite().trials(&run));
    trials.extend(failclosed::suite().trials(&run));
    trials.extend(writes::suite().trials(&run));
    trials.extend(net::connect::suite().trials(&run));
    trials.extend(sockets::suite().trials(&run));
    trials.extend(net::reload::suite().trials(&run));
    trials.extend(net::scale::suite().trials(&run));
    trials.extend(labels::suite().trials(&run));
    trials.extend(learn::suite().trials(&run));
    trials.extend(dns::without_daemon().trials(&run));
    trials.extend(dns::suite().trials(&run));
    trials.extend(telemetry::suite().trials(&run));
    trials.extend(telemetry::selftest::suite().trials(&run));
    trials.extend(kube::suite().trials(&run));
    let mut conclusion = libtest_mimic::run(&run.args, trials);
    if run.args.list {
        return ExitCode::SUCCESS;
    }
    // After the last suite that borrowed it, the shared daemon must stop as cleanly as every
    // suite's own.
    let retired = match harness::retire_shared() {
        Ok(false) => Ok(()),
        Ok(true) => {
            conclusion.num_passed += 1;
            run.report.record(SHARED_STOP, Ok(())).map(drop)
        }
        Err(e) => run.report.record(SHARED_STOP, Err(e.into())).map(drop),
    };
    if let Err(failed) = retired {
        println!("{SHARED_STOP}: FAILED: {failed:?}");
        conclusion.num_failed += 1;
    }
    let closing = format!(
        "linux-{}: {} passed, {} failed, {} skipped",
        kernel_release(),
        conclusion.num_passed,
        conclusion.num_failed,
        conclusion.num_ignored
    );
    println!("{closing}");
    run.report.text(&closing);
    conclusion.exit_code()
}

#[cfg(test)]
mod runner {
    use super::*;

    /// What the fixtures and tests of `suite` did, in order.
    static DONE: Mutex<Vec<&str>> = Mutex::new(Vec::new());

    fn did(what: &'static str) {
        lock(&DONE).push(what);
    }

    fn first(_: &Ctx) -> Outcome {
        did("first");
        Ok(())
    }

    fn second(_: &Ctx) -> Outcome {
        did("second");
        Err(NotPassed::Skip("not here".into()))
    }

    fn third(_: &Ctx) -> Outcome {
        did("third");
        Ok(())
    }

    fn suite() -> Suite<()> {
        Suite {
            name: "unit",
            start: |_| {
                did("start");
                Ok(())
            },
            cases: vec![case!(first), case!(second), case!(third)],
            stop: |()| {
                did("stop");
                anyhow::bail!("the daemon exited 1")
            },
            stop_test: Some("unit_daemon_stops_with_exit_0"),
        }
    }

    fn run_with(args: &[&str]) -> (libtest_mimic::Conclusion, Vec<&'static str>) {
        lock(&DONE).clear();
        let mut args = Arguments::from_iter([&"vm-guest"].into_iter().chain(args));
        args.test_threads = Some(1);
        // Its own "test result" lines would read as this run's in a log.
        args.logfile = Some("/dev/null".into());
        let run = Run {
            ctx: Arc::new(Ctx {
                actgate: "actgate".into(),
                guest: "vm-guest".into(),
                dir: "/nonexistent".into(),
                package: None,
            }),
            report: Arc::new(Report::new(None)),
            args,
        };
        let conclusion = libtest_mimic::run(&run.args, suite().trials(&run));
        (conclusion, lock(&DONE).clone())
    }

    // One test function: the cases below share DONE.
    #[test]
    fn fixtures_live_from_the_first_selected_test_to_the_last() {
        let (c, done) = run_with(&[]);
        assert_eq!(done, ["start", "first", "second", "third", "stop"]);
        assert_eq!((c.num_passed, c.num_ignored, c.num_failed), (2, 1, 1));

        // Without its stop test, the stop's failure fails the last selected test.
        let (c, done) = run_with(&["--exact", "second"]);
        assert_eq!(done, ["start", "second", "stop"]);
        assert_eq!((c.num_passed, c.num_ignored, c.num_failed), (0, 0, 1));

        let (c, done) = run_with(&["--skip", "unit_daemon", "--skip", "second"]);
        assert_eq!(done, ["start", "first", "third", "stop"]);
        assert_eq!((c.num_passed, c.num_failed, c.num_filtered_out), (1, 1, 2));

        let (c, done) = run_with(&["no-such-test"]);
        assert!(done.is_empty());
        assert_eq!(c.num_filtered_out, 4);
    }
}
