//! actgate's task runner: `cargo xtask setup|build|test|vm-test|demo|bench|package`.
//!
//! Everything CI does goes through here, in Rust, so that the README's two commands
//! (`cargo xtask demo`, `cargo xtask test`) are all a newcomer or CI needs.

mod apt;
mod bench;
mod package;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): nightly rust-src, bpf-linker,
    /// cargo-deb, QEMU, virtme-ng and the Debian kernels of the test matrix.
    Setup,
    /// Build actgate and the VM test runner.
    Build,
    /// Everything CI checks: fmt, clippy (eBPF crate too), unit tests, promtool on the alerting
    /// rules, VM tests.
    Test,
    /// The integration tests, in a VM per kernel of the matrix. The package's test installs
    /// the newest target/debian/actgate_*.deb, and is skipped when there is none.
    VmTest {
        /// Only kernels whose release starts with this (e.g. 6.12).
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Boot a VM, start the daemon with policies/, and watch a scripted agent get governed.
    Demo,
    /// Measure what enforcement costs, in one VM boot; writes target/bench/results.json.
    /// Not part of `test`: it never asserts a timing.
    Bench {
        /// The kernel series to boot (6.12 or 6.1).
        #[arg(long, default_value = bench::DEFAULT_KERNEL)]
        kernel: String,
        /// Pairs of runs with the daemon stopped and enforcing (default 4).
        #[arg(long)]
        rounds: Option<u32>,
        /// Seconds each operation is timed per run (default 1.5).
        #[arg(long)]
        secs: Option<f64>,
        /// Times each workload runs per run (default 2).
        #[arg(long)]
        reps: Option<u32>,
        /// Only the label search's depth runs: labels at level 2, then at levels 2 and 5
        /// (issue 18); the other figures of results.json are null.
        #[arg(long)]
        only_depth: bool,
    },
    /// Build the Debian package (target/debian/actgate_*.deb): the release binary, the systemd
    /// unit, the example policies as conffiles, man pages and shell completions.
    Package,
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    println!("$ {shown}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Debug builds of `actgate` and `vm-guest`; the eBPF object is always built optimised.
pub fn build() -> Result<()> {
    run(cargo().args([
        "build",
        "--package",
        "agent-userspace",
        "--package",
        "vm-guest",
        "--bins",
    ]))
}

/// Optimised builds of `actgate` and `vm-guest`, for the benchmark.
pub fn build_release() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "agent-userspace",
        "--package",
        "vm-guest",
        "--bins",
    ]))
}

fn lint_and_unit_tests() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // Without --workspace: the default members, i.e. all but the eBPF crate, which only
    // builds for the BPF target (linted next, with nightly).
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "agent-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test"]))?;
    // The syntax and semantics of the alerting rules, as Prometheus reads them; the unit
    // tests check their metric and label names against what the daemon exports.
    run(Command::new(setup::PROMTOOL).args([
        "check",
        "rules",
        "deploy/prometheus/actgate-rules.yaml",
    ]))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            build()
        }
        Task::Test => {
            setup::setup()?;
            lint_and_unit_tests()?;
            build()?;
            vm::test(None)
        }
        Task::VmTest { kernel } => {
            setup::setup()?;
            build()?;
            vm::test(kernel.as_deref())
        }
        Task::Demo => {
            setup::setup()?;
            build()?;
            vm::demo()
        }
        Task::Bench {
            kernel,
            rounds,
            secs,
            reps,
            only_depth,
        } => {
            setup::setup()?;
            build_release()?;
            bench::bench(&kernel, rounds, secs, reps, only_depth)
        }
        Task::Package => {
            setup::build_tools()?;
            package::package().map(|_| ())
        }
    }
}
