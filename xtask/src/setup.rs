//! `cargo xtask setup`: installs what is missing, and nothing when everything is present.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::run;

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

fn apt_install(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(args);
    run(&mut cmd)
}

pub fn setup() -> Result<()> {
    if !quiet_ok(Command::new("id").arg("-u")) || stdout(Command::new("id").arg("-u")).trim() != "0"
    {
        bail!("setup installs system packages and the VM tests boot kernels: run as root");
    }
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

    let backports = Path::new("/etc/apt/sources.list.d/actgate-backports.list");
    // virtme-ng builds the guest's initramfs from a static busybox.
    let need_apt = !have("qemu-system-x86_64")
        || !have("busybox")
        || matrix_kernels().len() < KERNEL_SERIES.len();
    if need_apt {
        if !backports.exists() && !bookworm_backports_configured() {
            std::fs::write(
                backports,
                "deb http://deb.debian.org/debian bookworm-backports main\n",
            )
            .with_context(|| format!("writing {}", backports.display()))?;
        }
        run(Command::new("apt-get").arg("update"))?;
        apt_install(&["qemu-system-x86", "busybox-static", "linux-image-amd64"])?;
        apt_install(&["-t", "bookworm-backports", "linux-image-amd64"])?;
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

fn bookworm_backports_configured() -> bool {
    quiet_ok(Command::new("sh").args([
        "-c",
        "grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/",
    ]))
}
