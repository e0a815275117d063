//! The integration tests. Each drives the real `actgate` binary on the VM's real kernel and
//! asserts what a user would observe: exit codes, errno names, file contents, metric values.

mod exec;
mod files;
mod labels;
mod net;
mod telemetry;

use std::{fs, io::Write, path::Path, process::ExitCode};

use crate::harness::{Ctx, NotPassed, Outcome};

pub type Test = (&'static str, fn(&Ctx) -> Outcome);

/// A suite runs the selected tests of one area with the daemons it needs.
type Suite = fn(&Ctx, &dyn Fn(&str) -> bool) -> Vec<(&'static str, Outcome)>;

/// Writes each result as it comes, so a VM that dies midway still reports what ran.
struct Report {
    file: Option<fs::File>,
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Report {
    fn line(&mut self, text: &str) {
        println!("{text}");
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{text}");
            let _ = f.flush();
        }
    }

    fn record(&mut self, name: &str, outcome: Outcome) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                self.line(&format!("PASS {name}"));
            }
            Err(NotPassed::Fail(why)) => {
                self.failed += 1;
                self.line(&format!("FAIL {name}: {why}"));
            }
            Err(NotPassed::Skip(why)) => {
                self.skipped += 1;
                self.line(&format!("SKIP {name}: {why}"));
            }
        }
    }
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run_all(actgate: &Path, results: &Path, filter: Option<&str>) -> ExitCode {
    let mut report = Report {
        file: fs::File::create(results).ok(),
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    let ctx = Ctx {
        actgate: actgate.to_path_buf(),
        guest: std::env::current_exe().unwrap_or_else(|_| "vm-guest".into()),
        dir: "/tmp/actgate-vmtest".into(),
    };
    let _ = fs::remove_dir_all(&ctx.dir);
    report.line(&format!("# kernel {}", kernel()));
    let selected = |name: &str| filter.is_none_or(|f| name.contains(f));
    // Each suite stops its daemons before the next starts: they share the metrics port and
    // the control socket.
    let suites: [Suite; 5] = [
        exec::suite,
        files::suite,
        net::suite,
        labels::suite,
        telemetry::suite,
    ];
    for suite in suites {
        for (name, outcome) in suite(&ctx, &selected) {
            report.record(name, outcome);
        }
    }
    let kernel = kernel();
    report.line(&format!(
        "linux-{kernel}: {} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    ));
    if report.failed == 0 && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
