//! The start-up self-test, with daemons of their own: it refuses to run, or runs unready,
//! when a hook doesn't deny.

use std::{
    ffi::OsStr,
    fs,
    path::PathBuf,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;

use super::{metrics::*, status::*, *};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, NotPassed, Outcome, http_get, scrape},
    tests::{Suite, mounts::Mount},
};

/// `actgate run` with the fake switch; not waited for, killed when dropped.
pub(super) struct Unverified {
    child: Child,
    log: PathBuf,
    actgate: PathBuf,
}

impl Unverified {
    fn spawn(ctx: &Ctx, extra: &[&str]) -> Result<Unverified> {
        let log = ctx.path("tele/unverified.log");
        let mut args = vec![OsStr::new("--test-fake-allow-all")];
        args.extend(extra.iter().map(OsStr::new));
        let child = harness::spawn_run(&ctx.actgate, &ctx.path("tele/policies"), &args, &log)?;
        Ok(Unverified {
            child,
            log,
            actgate: ctx.actgate.clone(),
        })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it exits within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        harness::wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Unverified {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.child);
        if let Err(e) = harness::unload(&self.actgate) {
            eprintln!("after the unverified daemon's end: {e:#}");
        }
    }
}

/// Fails unless the log names every action with the hook that let it through.
pub(super) fn expect_hooks_named(log: &str) -> Outcome {
    for (action, hook) in HOOKS {
        let phrase = format!("{action} (LSM hook {hook})");
        if !log.contains(&phrase) {
            return Err(NotPassed::Fail(format!(
                "the log doesn't name {phrase:?}:\n{log}"
            )));
        }
    }
    Ok(())
}

pub(super) fn selftest_refuses_to_start_when_hooks_allow_everything(ctx: &Ctx) -> Outcome {
    let mut d = Unverified::spawn(ctx, &[])?;
    let deadline = Instant::now() + harness::READY_WITHIN;
    let status = loop {
        if let Some(status) = d.wait(Duration::ZERO)? {
            break status;
        }
        if matches!(http_get("/readyz"), Ok((200, _))) {
            return Err(NotPassed::Fail(
                "/readyz answered 200 although every hook allows everything".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "the daemon still runs 120 s after start although its self-test must fail:\n{}",
                d.log_text()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    };
    let log = d.log_text();
    expect_eq!(
        status.code(),
        Some(1),
        "exit code when the self-test fails ({log})"
    );
    expect_hooks_named(&log)?;
    if !log.contains("refusing to run") {
        return Err(NotPassed::Fail(format!(
            "the log doesn't say it refuses to run:\n{log}"
        )));
    }
    Ok(())
}

pub(super) fn selftest_with_allow_unverified_runs_unready_and_says_so(ctx: &Ctx) -> Outcome {
    let mut d = Unverified::spawn(ctx, &["--allow-unverified"])?;
    // /healthz answers before the self-test runs; the log says when it is over.
    let deadline = Instant::now() + harness::READY_WITHIN;
    loop {
        if let Some(status) = d.wait(Duration::ZERO)? {
            return Err(NotPassed::Fail(format!(
                "the daemon exited ({status}) despite --allow-unverified:\n{}",
                d.log_text()
            )));
        }
        let healthy = matches!(http_get("/healthz"), Ok((200, _)));
        if healthy && d.log_text().contains("UNVERIFIED ENFORCEMENT") {
            break;
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "no healthy daemon reporting its failed self-test within 120 s:\n{}",
                d.log_text()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    }
    expect_hooks_named(&d.log_text())?;
    expect_eq!(http_get("/healthz")?.0, 200, "/healthz when unverified");
    expect_eq!(http_get("/readyz")?.0, 503, "/readyz when unverified");
    let body = scrape()?;
    expect_verified(&body, 0, " when unverified")?;
    let st = status_json(ctx)?;
    expect_eq!(st["ready"], Value::Bool(false), "ready in {st}");
    for a in ACTIONS {
        expect_eq!(
            st["enforcement_verified"][a].as_str(),
            Some("failed"),
            "enforcement_verified.{a} in the status when unverified"
        );
    }
    // An unready daemon must not take on workloads.
    let marker = ctx.path("tele/unverified-ran");
    let out = ctx.labelled(LABEL, &["/usr/bin/touch", &marker.display().to_string()]);
    harness::expect_refused(
        &out,
        &marker,
        "not ready",
        "a labelled run on an unverified daemon",
    )?;
    // SIGTERM still ends it cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.wait(Duration::from_secs(60))?;
    expect_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit of the unverified daemon after SIGTERM"
    );
    Ok(())
}

/// The self-test's tests, each with a daemon of its own, on the suite's files.
pub fn suite() -> Suite<Mount> {
    Suite::unchecked(
        "telemetry",
        files,
        vec![
            case!(selftest_refuses_to_start_when_hooks_allow_everything),
            case!(selftest_with_allow_unverified_runs_unready_and_says_so),
        ],
    )
}
