//! Runs inside the test VMs (see xtask/src/vm.rs): the integration tests, the demo, and the
//! small probes (`try …`) that a labelled process runs to report exactly which errno an action
//! met.

mod bench;
mod demo;
mod dns_server;
mod harness;
mod probe;
mod tests;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the integration tests against the real daemon (standard test flags: --list,
    /// --exact, --skip, FILTER).
    Tests {
        /// The actgate binary under test.
        #[arg(long, required_unless_present = "list")]
        actgate: Option<PathBuf>,
        /// Where to write PASS/FAIL/SKIP lines and the closing count.
        #[arg(long, required_unless_present = "list")]
        results: Option<PathBuf>,
        /// The Debian package to install and start (`cargo xtask package` builds it); without
        /// it the package's tests skip.
        #[arg(long)]
        package: Option<PathBuf>,
        /// Only tests whose name contains this: the same as FILTER.
        #[arg(long = "filter", value_name = "SUBSTRING", conflicts_with = "filter")]
        substring: Option<String>,
        #[command(flatten)]
        libtest: libtest_mimic::Arguments,
    },
    /// The scripted agent demo.
    Demo {
        #[arg(long)]
        actgate: PathBuf,
        #[arg(long)]
        policies: PathBuf,
    },
    /// Measure what enforcement costs (`cargo xtask bench` runs this in a VM).
    Bench {
        #[arg(long)]
        actgate: PathBuf,
        /// Where to write the results as JSON (a table goes next to it as .txt).
        #[arg(long)]
        out: PathBuf,
        /// Pairs of runs with the daemon stopped (A) and enforcing (B).
        #[arg(long, default_value_t = 4)]
        rounds: u32,
        /// Seconds each operation is timed per run.
        #[arg(long, default_value_t = 1.5)]
        secs: f64,
        /// Times each workload runs per run.
        #[arg(long, default_value_t = 2)]
        reps: u32,
        /// Only the label search's depth runs (B's daemon and D, issue 18).
        #[arg(long)]
        only_depth: bool,
    },
    /// Internal: the benchmark's worker, driven over stdin/stdout.
    #[command(hide = true)]
    BenchWorker {
        /// A cgroup directory to move into first.
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// Attempt one action and print `OK` or the errno name (e.g. `EPERM`).
    Try {
        #[command(subcommand)]
        action: probe::Action,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Tests {
            actgate,
            results,
            package,
            substring,
            mut libtest,
        } => {
            libtest.filter = substring.or(libtest.filter);
            tests::run(
                actgate.as_deref(),
                results.as_deref(),
                package.as_deref(),
                libtest,
            )
        }
        Cmd::Demo { actgate, policies } => match demo::run(&actgate, &policies) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Bench {
            actgate,
            out,
            rounds,
            secs,
            reps,
            only_depth,
        } => {
            let opts = bench::Options {
                actgate,
                out,
                rounds,
                secs,
                reps,
                only_depth,
            };
            match bench::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchWorker { cgroup } => bench::worker(cgroup.as_deref()),
        Cmd::Try { action } => probe::run(action),
    }
}
