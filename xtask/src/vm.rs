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

use crate::{package, root, setup::matrix_kernels};

/// A VM's whole run, boot included, must finish within this. The test VMs of both kernels run
/// side by side with one vCPU each, so CI (90 minutes, of which the build takes about 8) has
/// room for both to take this.
const VM_TIMEOUT_SECS: u32 = 4800;

fn target_dir() -> PathBuf {
    root().join("target")
}

/// Where a VM's output goes.
pub enum Output {
    /// Our own stdout and stderr, as it comes.
    Terminal,
    /// A log file, for VMs that run side by side.
    Log(PathBuf),
}

/// Boots `vmlinuz` with `cpus` vCPUs and runs `command` in it as root, streaming its output to
/// `output`. KVM is off: on this machine kind KVM guests hang or die on an MSR error, so QEMU
/// emulates (TCG).
///
/// The VM's output passes through pipes of ours: QEMU reopens its stdout and stderr by path
/// (`/proc/self/fd/N`), which truncates a regular file, so a redirected log would lose what was
/// printed before the boot and keep a hole of NULs where it had been.
pub fn boot(
    vmlinuz: &str,
    cpus: u32,
    rwdir: &Path,
    command: &str,
    output: &Output,
) -> Result<std::process::ExitStatus> {
    let mut cmd = Command::new("timeout");
    cmd.arg(VM_TIMEOUT_SECS.to_string())
        .args(["vng", "--disable-kvm", "--run", vmlinuz, "--user", "root"])
        .arg("--cpus")
        .arg(cpus.to_string())
        .args(["--memory", "2G"])
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
    match output {
        Output::Terminal => {
            let errs = std::thread::spawn(move || relay(&mut err, &mut io::stderr()));
            relay(&mut out, &mut io::stdout());
            let _ = errs.join();
        }
        Output::Log(path) => {
            let log =
                fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut log_err = log.try_clone().context("sharing the VM's log")?;
            let errs = std::thread::spawn(move || relay(&mut err, &mut log_err));
            relay(&mut out, &mut &log);
            let _ = errs.join();
        }
    }
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

/// What one kernel's tests came to: the guest's exit status says whether they passed, its
/// results file (a PASS, FAIL or SKIP line per test, written as each ends) what ran.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Counts {
    fn of(results: &str) -> Counts {
        let mut c = Counts::default();
        for line in results.lines() {
            let n = match line.split_once(' ').map_or(line, |(word, _)| word) {
                "PASS" => &mut c.passed,
                "FAIL" => &mut c.failed,
                "SKIP" => &mut c.skipped,
                _ => continue,
            };
            *n += 1;
        }
        c
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Runs the integration tests in a VM per kernel, the VMs side by side with one vCPU each (the
/// tests run one at a time, so a second vCPU would mostly idle); fails unless every VM exited
/// 0 (vng passes the guest command's exit status through) having run at least one test. Each
/// VM's output goes to target/vm-test/<release>.log; its results are printed as it ends.
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
    // The package isn't built here: after the debug build, `cargo xtask package` (a release
    // build of every dependency and the eBPF object again) took 12 min wall, 8.3 min CPU, on
    // this machine kind with one build job, against CI's 90-minute budget that the build and
    // the VMs already fill most of. The package's test takes the one `cargo xtask package`
    // made last, and skips without one.
    let package = match package::newest_package()? {
        Some((deb, built)) => {
            let age = built.elapsed().unwrap_or_default().as_secs() / 60;
            println!(
                "the package's VM test installs {} (built {age} min ago)",
                deb.display()
            );
            format!(" --package {}", deb.display())
        }
        None => {
            println!("no target/debian/actgate_*.deb: the package's VM test will skip");
            String::new()
        }
    };
    let runs: Vec<_> = kernels
        .into_iter()
        .map(|(release, vmlinuz)| {
            let (out, package) = (out.clone(), package.clone());
            std::thread::spawn(move || -> Result<_> {
                let results = out.join(format!("{release}.txt"));
                let log = out.join(format!("{release}.log"));
                let _ = fs::remove_file(&results);
                println!(
                    "=== VM tests on Linux {release}: output in {} ===",
                    log.display()
                );
                let command = format!(
                    "{} tests --actgate {} --results {}{package}",
                    guest_bin("vm-guest").display(),
                    guest_bin("actgate").display(),
                    results.display()
                );
                let status = boot(&vmlinuz, 1, &out, &command, &Output::Log(log))?;
                let text = fs::read_to_string(&results).unwrap_or_default();
                println!("\n=== VM tests on Linux {release} ===\n{text}");
                Ok((release, status, Counts::of(&text)))
            })
        })
        .collect();
    let mut summary = Vec::new();
    for run in runs {
        summary.push(
            run.join()
                .map_err(|_| anyhow::anyhow!("a VM's thread panicked"))??,
        );
    }
    println!("\n=== VM test summary ===");
    let mut total = Counts::default();
    let mut ok = true;
    for (release, status, c) in &summary {
        println!("linux-{release}: {c}");
        if !status.success() {
            println!("linux-{release}: the VM exited with {status}");
            ok = false;
        }
        if c.passed + c.failed == 0 {
            println!("linux-{release} ran no test");
            ok = false;
        }
        total.passed += c.passed;
        total.failed += c.failed;
        total.skipped += c.skipped;
    }
    println!("vm-tests: {total}");
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
    let status = boot(&vmlinuz, 2, &out, &command, &Output::Terminal)?;
    if !status.success() {
        bail!("the demo VM failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_each_result_line() {
        let text = "# kernel 6.12\nPASS a\nSKIP b: no ::1\nFAIL c: EPERM\nPASS d\n\
                    linux-6.12: 2 passed, 1 failed, 1 skipped\n";
        let want = Counts {
            passed: 2,
            failed: 1,
            skipped: 1,
        };
        assert_eq!(Counts::of(text), want);
        assert_eq!(want.to_string(), "2 passed, 1 failed, 1 skipped");
        assert_eq!(Counts::of(""), Counts::default());
    }
}
