//! `cargo xtask setup`: installs what is missing, and nothing when everything is present.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{apt, run};

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn stdout(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn have(program: &str) -> bool {
    quiet_ok(Command::new("sh").args(["-c", &format!("command -v {program}")]))
}

/// The benchmark's workloads run Debian's own tools, from /usr/bin and /bin only (see
/// vm-guest's `bench/workloads.rs`): the program each needs, and its package. tar and grep are
/// essential packages, always there.
const WORKLOAD_TOOLS: [(&str, &str); 4] = [
    ("git", "git"),
    ("make", "make"),
    ("gcc", "gcc"),
    ("python3", "python3"),
];

/// Where a workload's compile finds libc's headers and start files.
const LIBC_DEV_HEADER: &str = "/usr/include/stdio.h";

/// The packages of the workloads' tools that aren't installed yet.
fn missing_workload_packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> = WORKLOAD_TOOLS
        .iter()
        .filter(|(program, _)| {
            !["/usr/bin", "/bin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(program).is_file())
        })
        .map(|(_, package)| *package)
        .collect();
    if !std::path::Path::new(LIBC_DEV_HEADER).is_file() {
        packages.push("libc6-dev");
    }
    packages
}

/// The kernels of the test matrix: Debian bookworm (6.1) and bookworm-backports (6.12).
pub const KERNEL_SERIES: [&str; 2] = ["6.1.", "6.12."];

/// Newest /boot/vmlinuz-<release> per series of the matrix.
pub fn matrix_kernels() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/boot") else {
        return found;
    };
    let mut releases: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    releases.sort_by_key(|r| natural(r));
    for series in KERNEL_SERIES {
        if let Some(r) = releases.iter().rev().find(|r| r.starts_with(series)) {
            found.push((r.clone(), format!("/boot/vmlinuz-{r}")));
        }
    }
    found
}

/// Sort key comparing the numeric parts of a release as numbers.
fn natural(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// cargo-deb, which `cargo xtask package` runs. Pinned: its output is what ships, and its
/// `[package.metadata.deb]` keys (systemd-units) change between releases.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where setup puts promtool, which checks the alerting rules.
pub const PROMTOOL: &str = "/usr/local/bin/promtool";

pub fn setup() -> Result<()> {
    if !quiet_ok(Command::new("id").arg("-u")) || stdout(Command::new("id").arg("-u")).trim() != "0"
    {
        bail!("setup installs system packages and the VM tests boot kernels: run as root");
    }
    build_tools()?;
    vm_tools()
}

/// What building actgate and its package needs, none of it from apt: nightly with rust-src,
/// bpf-linker and cargo-deb. `cargo xtask package` needs no more than this.
pub fn build_tools() -> Result<()> {
    // Nightly with rust-src builds the eBPF crate (-Z build-std=core); clippy lints it. Adding
    // components never moves the nightly to a newer date, which bpf-linker's LLVM must match.
    let components = stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    let have_component = |c: &str| components.lines().any(|l| l.starts_with(c));
    if !stdout(Command::new("rustup").args(["toolchain", "list"])).contains("nightly") {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
        ]))?;
    } else if !have_component("rust-src") || !have_component("clippy") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "clippy",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // bpf-linker 0.10 uses the nightly's own LLVM; newer ones want a system LLVM 21+, which
    // Debian 12 doesn't ship.
    let linker = stdout(Command::new("bpf-linker").arg("--version"));
    if !linker.contains(" 0.10.") {
        run(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            "0.10.4",
            "--locked",
        ]))?;
    }
    let deb = stdout(Command::new("cargo").args(["deb", "--version"]));
    if !deb.contains(&format!(" {CARGO_DEB_VERSION}")) {
        run(Command::new("cargo").args([
            "install",
            "--locked",
            &format!("cargo-deb@={CARGO_DEB_VERSION}"),
        ]))?;
    }
    Ok(())
}

/// What the VM tests and the checks of `cargo xtask test` need, from apt and pip: QEMU,
/// virtme-ng, the Debian kernels of the matrix, the benchmark's tools and promtool.
fn vm_tools() -> Result<()> {
    let need_promtool = !Path::new(PROMTOOL).exists();
    // virtme-ng builds the guest's initramfs from a static busybox.
    let need_qemu = !have("qemu-system-x86_64");
    let need_busybox = !have("busybox");
    let need_kernels = matrix_kernels().len() < KERNEL_SERIES.len();
    let workload_packages = missing_workload_packages();
    if need_qemu || need_busybox || need_kernels || need_promtool || !workload_packages.is_empty() {
        let codename = apt::codename()?;
        let backports = format!("{codename}-backports");
        apt::ensure_suite(&codename, &backports)?;
        run(Command::new("apt-get").arg("update"))?;
        if need_qemu {
            // QEMU's packages must come from one suite: a machine that already has a backported
            // qemu-utils can't take the release's own qemu-system-x86 (apt exits 100).
            let suite = apt::installed_backport("qemu-").then_some(backports.as_str());
            apt::install(suite, &["qemu-system-x86"])?;
        }
        if need_busybox {
            apt::install(None, &["busybox-static"])?;
        }
        if !workload_packages.is_empty() {
            apt::install(None, &workload_packages)?;
        }
        if need_promtool {
            // Only the checker: installing the package would also install (and on a systemd
            // host start) a Prometheus server.
            apt::extract("prometheus", "usr/bin/promtool", Path::new(PROMTOOL))?;
        }
        if need_kernels {
            // The matrix: the release's kernel (6.1) and the backported one (6.12).
            apt::install(None, &["linux-image-amd64"])?;
            apt::install(Some(&backports), &["linux-image-amd64"])?;
        }
    }
    let kernels = matrix_kernels();
    if kernels.len() < KERNEL_SERIES.len() {
        bail!(
            "the test matrix needs kernels {KERNEL_SERIES:?} in /boot but found {kernels:?}; \
             install Debian's linux-image-amd64 from bookworm and bookworm-backports"
        );
    }
    if !have("vng") {
        run(Command::new("pip").args(["install", "--quiet", "virtme-ng"]))?;
    }
    println!(
        "setup: ready (kernels: {})",
        kernels
            .iter()
            .map(|k| k.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
