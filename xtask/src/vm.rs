//! VMs with real kernels: the host kernel refuses BPF LSM programs, so everything that
//! enforces runs inside QEMU (virtme-ng) booting the Debian kernels of the matrix.
//!
//! The guest sees the host's file system read-only, so it runs the binaries built here;
//! results come back through a writable directory (`--rwdir`).

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{root, setup::matrix_kernels};

/// A VM's whole run, boot included, must finish within this.
const VM_TIMEOUT_SECS: u32 = 1800;

fn target_dir() -> PathBuf {
    root().join("target")
}

/// Boots `vmlinuz` and runs `command` in it as root, streaming its output. KVM is off: on this
/// machine kind KVM guests hang or die on an MSR error, so QEMU emulates (TCG).
///
/// The VM's output passes through pipes of ours: QEMU reopens its stdout and stderr by path
/// (`/proc/self/fd/N`), which truncates a regular file, so a redirected log would lose what was
/// printed before the boot and keep a hole of NULs where it had been.
pub fn boot(vmlinuz: &str, rwdir: &Path, command: &str) -> Result<std::process::ExitStatus> {
    let mut cmd = Command::new("timeout");
    cmd.arg(VM_TIMEOUT_SECS.to_string())
        .args(["vng", "--disable-kvm", "--run", vmlinuz, "--user", "root"])
        .args(["--cpus", "2", "--memory", "2G"])
        .arg("--rwdir")
        .arg(rwdir)
        .args(["--exec", command])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("starting vng (virtme-ng); run `cargo xtask setup`")?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("vng started without the pipes it was given");
    };
    // A relay that fails (our own stdout closed) must not leave the VM blocked on a full pipe,
    // so each side drains to the end whatever happens to the copy.
    let errs = std::thread::spawn(move || relay(&mut err, &mut io::stderr()));
    relay(&mut out, &mut io::stdout());
    let _ = errs.join();
    child.wait().context("waiting for vng")
}

/// Copies `from` to `to` until `from` ends; once `to` fails, keeps reading and drops the rest.
fn relay(from: &mut impl Read, to: &mut impl Write) {
    if io::copy(from, to).is_err() {
        let _ = io::copy(from, &mut io::sink());
    }
    let _ = to.flush();
}

fn guest_bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// The closing line of a guest's results: "N passed, N failed, N skipped".
fn counts(results: &str) -> Option<(u32, u32, u32)> {
    let line = results.lines().rev().find(|l| l.contains(" passed, "))?;
    let tail = line.rsplit(':').next()?.trim();
    let nums: Vec<u32> = tail
        .split(", ")
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    match nums[..] {
        [p, f, s] => Some((p, f, s)),
        _ => None,
    }
}

/// Runs the integration tests in a VM per kernel; fails if any test fails or a kernel ran none.
pub fn test(only: Option<&str>) -> Result<()> {
    let kernels: Vec<_> = matrix_kernels()
        .into_iter()
        .filter(|(release, _)| only.is_none_or(|o| release.starts_with(o)))
        .collect();
    if kernels.is_empty() {
        bail!("no kernel of the matrix matches; run `cargo xtask setup`");
    }
    let out = target_dir().join("vm-test");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut summary = Vec::new();
    for (release, vmlinuz) in &kernels {
        let results = out.join(format!("{release}.txt"));
        let _ = fs::remove_file(&results);
        println!("\n=== VM tests on Linux {release} ===");
        let command = format!(
            "{} tests --actgate {} --results {}",
            guest_bin("vm-guest").display(),
            guest_bin("actgate").display(),
            results.display()
        );
        let status = boot(vmlinuz, &out, &command)?;
        let text = fs::read_to_string(&results).unwrap_or_default();
        let c = counts(&text);
        if !status.success() && c.is_none() {
            println!("the VM for {release} failed ({status}) before reporting results");
        }
        summary.push((release.clone(), c));
    }
    println!("\n=== VM test summary ===");
    let (mut tp, mut tf, mut ts) = (0, 0, 0);
    let mut ok = true;
    for (release, c) in &summary {
        match c {
            Some((p, f, s)) => {
                println!("linux-{release}: {p} passed, {f} failed, {s} skipped");
                (tp, tf, ts) = (tp + p, tf + f, ts + s);
                ok &= *f == 0 && *p > 0;
                if *p == 0 {
                    println!("linux-{release} ran no test");
                }
            }
            None => {
                println!("linux-{release}: ran no test (no results came back from the VM)");
                ok = false;
            }
        }
    }
    println!("vm-tests: {tp} passed, {tf} failed, {ts} skipped");
    if !ok {
        bail!("VM tests failed");
    }
    Ok(())
}

/// The demo: the newest kernel of the matrix, the real daemon, `policies/`, a scripted agent.
pub fn demo() -> Result<()> {
    let (release, vmlinuz) = matrix_kernels()
        .pop()
        .context("no kernel of the matrix is installed; run `cargo xtask setup`")?;
    let out = target_dir().join("demo");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!("Booting Linux {release} in QEMU (software emulation, ~20 s)…");
    let command = format!(
        "{} demo --actgate {} --policies {}",
        guest_bin("vm-guest").display(),
        guest_bin("actgate").display(),
        root().join("policies").display()
    );
    let status = boot(&vmlinuz, &out, &command)?;
    if !status.success() {
        bail!("the demo VM failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn reads_the_closing_line() {
        let text = "PASS a\nSKIP b: no\nlinux-6.1.0-56-amd64: 12 passed, 1 failed, 2 skipped\n";
        assert_eq!(counts(text), Some((12, 1, 2)));
        assert_eq!(counts("PASS a\n"), None);
    }
}
