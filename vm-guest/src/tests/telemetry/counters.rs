//! Decision counters that equal the actions taken, and /metrics right after start.

use std::{net::TcpListener, path::Path, time::Duration};

use super::{events::*, metrics::*, processes::*, *};
use crate::tests::{
    Enforcing,
    mapping::{all_exec_decisions, exec_decisions},
};
use crate::{
    expect_eq,
    harness::{Ctx, NotPassed, Outcome, RAN, scrape},
};

pub(super) fn metrics_after_start_show_verified_hooks_policies_build_and_processes(
    ctx: &Ctx,
) -> Outcome {
    let body = scrape()?;
    expect_eq!(
        body.lines().last(),
        Some("# EOF"),
        "the last line of the OpenMetrics scrape"
    );
    expect_verified(&body, 1, "")?;
    for a in ACTIONS {
        sample(
            &body,
            &format!("actgate_events_dropped_total{{action=\"{a}\"}}"),
        )?;
    }
    expect_eq!(
        sample(&body, "actgate_policies_loaded")?,
        POLICIES,
        "actgate_policies_loaded"
    );
    let build = format!(
        "actgate_build_info{{version=\"{}\",kernel=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        agent_common::kernel_release()
    );
    expect_eq!(sample(&body, &build)?, 1, "{build}");
    expect_eq!(
        total(&body, "actgate_kernel_errors_total")?,
        0,
        "actgate_kernel_errors_total"
    );
    // Every reason is exported, even at 0, so an alert on one has a series to watch.
    for reason in agent_common::KernelError::ALL {
        let series = format!(
            "actgate_kernel_errors_total{{reason=\"{}\"}}",
            reason.as_str()
        );
        expect_eq!(sample(&body, &series)?, 0, "{series}");
    }
    for result in ["success", "failure"] {
        expect_eq!(
            sample(
                &body,
                &format!("actgate_policy_reloads_total{{result=\"{result}\"}}")
            )?,
            0,
            "reloads ({result}) right after start"
        );
    }
    // The self-test's own label is actgate's business, not a workload's.
    if let Some(line) = body.lines().find(|l| l.contains("actgate:selftest")) {
        return Err(NotPassed::Fail(format!(
            "/metrics shows the self-test's label: {line}"
        )));
    }
    for label in LABELS {
        decisions(&body, label)?;
        expect_eq!(
            sample(&body, &processes_series(label))?,
            0,
            "labelled processes of {label} before any runs"
        );
    }

    let sleeper = Sleeper::start(ctx, LABEL)?;
    let series = processes_series(LABEL);
    expect_eq!(
        wait_for_sample(&series, 1, Duration::from_secs(30))?,
        1,
        "{series} with one labelled sleep running"
    );
    let body = scrape()?;
    for other in LABELS.into_iter().filter(|l| *l != LABEL) {
        expect_eq!(
            sample(&body, &processes_series(other))?,
            0,
            "labelled processes of {other} while only {LABEL} runs one"
        );
    }
    sleeper.stop()?;
    expect_eq!(
        wait_for_sample(&series, 0, Duration::from_secs(30))?,
        0,
        "{series} once the sleep was killed"
    );
    Ok(())
}

pub(super) fn decision_counters_equal_the_exact_actions_taken(ctx: &Ctx) -> Outcome {
    // An allowed connection that completes: the kernel finishes the handshake from the backlog.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(anyhow::Error::from)?;
    let open_port = listener
        .local_addr()
        .map_err(anyhow::Error::from)?
        .to_string();
    let denied_addr = format!("{DENIED_IP}:9");
    let (denied, allowed) = (t(ctx, "bin/denied"), t(ctx, "bin/allowed"));
    let (wdenied, wok) = (t(ctx, "write-denied.txt"), t(ctx, "write-ok.txt"));
    let rdenied = t(ctx, "read-denied.txt");
    let runs: [(&[&str], &str, u64); 7] = [
        (&["exec", &denied], "EPERM", 7),
        (&["exec", &allowed], RAN, 3),
        (&["open-write", &wdenied], "EPERM", 5),
        (&["open-write", &wok], "OK", 2),
        (&["open-read", &rdenied], "EPERM", 4),
        (&["connect-tcp", &denied_addr], "EPERM", 3),
        (&["connect-tcp", &open_port], "OK", 2),
    ];
    let before = label_decisions(LABEL)?;
    for (args, want, times) in &runs {
        for i in 0..*times {
            expect_eq!(
                ctx.attempt(Some(LABEL), args),
                *want,
                "labelled try {} (run {})",
                args.join(" "),
                i + 1
            );
        }
    }
    let after = label_decisions(LABEL)?;
    drop(listener);
    // Each run is one exec of vm-guest (actgate exec's execve) plus its action; the allowed
    // exec runs /bin/true as well. Each program's executable mappings are exec decisions too.
    // Loading a program opens its shared libraries, so file_read/allow is not a number this
    // test controls.
    let probes: u64 = runs.iter().map(|r| r.2).sum();
    let (guest, true_runs) = (exec_runs(&ctx.guest)?, exec_runs(Path::new(&allowed))?);
    expect_deltas(
        "decisions of the labelled runs",
        &before,
        &after,
        &[
            ("exec", "allow", probes * guest + 3 * true_runs),
            ("exec", "deny", 7),
            ("file_write", "allow", 2),
            ("file_write", "deny", 5),
            ("file_read", "deny", 4),
            ("connect", "allow", 2),
            ("connect", "deny", 3),
        ],
        &[("file_read", "allow")],
    )
}

/// On overlayfs the kernel opens the backing ("real") file inside the user's open and calls
/// `file_open` again for it, from the same task (on 6.12 with a path relative to a private
/// layer mount, e.g. `/actgate-vmtest/…` for `/tmp/actgate-vmtest/…`). One open(2) must still
/// be one decision, judged on the path the process opened.
pub(super) fn write_open_on_overlayfs_is_one_decision_judged_on_its_path(ctx: &Ctx) -> Outcome {
    let dir = ctx.path("tele-overlay");
    if fs_type(&dir)? != OVERLAYFS_MAGIC {
        return Err(NotPassed::Skip(format!(
            "{} is not on overlayfs here",
            dir.display()
        )));
    }
    let file = dir.join("ok.txt").display().to_string();
    let before = label_decisions(OVERLAY_LABEL)?;
    let got = ctx.attempt(Some(OVERLAY_LABEL), &["open-write", &file]);
    let after = label_decisions(OVERLAY_LABEL)?;
    expect_eq!(
        got,
        "OK",
        "labelled write-open of {file}, which the policy allows"
    );
    expect_deltas(
        "decisions of one allowed write-open on overlayfs",
        &before,
        &after,
        &[
            ("exec", "allow", exec_runs(&ctx.guest)?),
            ("file_write", "allow", 1),
        ],
        &[("file_read", "allow")],
    )
}

pub(super) fn unlabelled_actions_leave_decision_counters_alone(ctx: &Ctx) -> Outcome {
    let denied_addr = format!("{DENIED_IP}:9");
    let before = scrape()?;
    expect_eq!(
        ctx.attempt(None, &["exec", &t(ctx, "bin/denied")]),
        RAN,
        "unlabelled exec of the denied binary"
    );
    expect_eq!(
        ctx.attempt(None, &["open-write", &t(ctx, "write-denied.txt")]),
        "OK",
        "unlabelled write-open of the denied file"
    );
    expect_eq!(
        ctx.attempt(None, &["open-read", &t(ctx, "read-denied.txt")]),
        "OK",
        "unlabelled read-open of the denied file"
    );
    expect_eq!(
        ctx.attempt(None, &["connect-tcp", &denied_addr]),
        "ECONNREFUSED",
        "unlabelled connect to the denied address"
    );
    let after = scrape()?;
    for label in LABELS {
        expect_deltas(
            &format!("decisions of {label} after unlabelled actions"),
            &decisions(&before, label)?,
            &decisions(&after, label)?,
            &[],
            &[],
        )?;
    }
    Ok(())
}

pub(super) fn audit_decisions_are_allowed_counted_and_logged(
    ctx: &Ctx,
    fixture: &Enforcing,
) -> Outcome {
    let daemon = &fixture.daemon;
    // Something to connect to on the audited address, so the connection really succeeds.
    let listener = TcpListener::bind(format!("{DENIED_IP}:0")).map_err(anyhow::Error::from)?;
    let addr = listener
        .local_addr()
        .map_err(anyhow::Error::from)?
        .to_string();
    let (denied, wdenied, rdenied) = (
        t(ctx, "bin/denied"),
        t(ctx, "write-denied.txt"),
        t(ctx, "read-denied.txt"),
    );
    let before = label_decisions(AUDIT_LABEL)?;
    let mut pids = Vec::new();
    for (args, want, action, target) in [
        (["exec", denied.as_str()], RAN, "exec", &denied),
        (["open-write", &wdenied], "OK", "file_write", &wdenied),
        (["open-read", &rdenied], "OK", "file_read", &rdenied),
        (["connect-tcp", &addr], "OK", "connect", &addr),
    ] {
        let start = unix_now();
        let (pid, got) = probe_with_pid(ctx, AUDIT_LABEL, &args)?;
        expect_eq!(got, want, "audited try {}", args.join(" "));
        pids.push((pid, action, target.clone(), (start, unix_now())));
    }
    let after = label_decisions(AUDIT_LABEL)?;
    drop(listener);
    // Four runs of vm-guest; the audited exec is the fifth program but counts as audit, with
    // its own executable mappings (those of its loader and libraries are allowed).
    let guest = exec_runs(&ctx.guest)?;
    let (own, loaded) = exec_decisions(Path::new(&denied))?;
    expect_deltas(
        "decisions of the audited runs",
        &before,
        &after,
        &[
            ("exec", "allow", 4 * guest + loaded as u64),
            ("exec", "audit", own as u64),
            ("file_write", "audit", 1),
            ("file_read", "audit", 1),
            ("connect", "audit", 1),
        ],
        &[("file_read", "allow")],
    )?;
    // One event per audited decision: the exec's own (its bprm check and the loader's
    // mappings of the binary), the write, the read and the connect.
    let audited = 3 + own;
    let lines = wait_for_events(&daemon.events, audited, |v| s(v, "label") == AUDIT_LABEL)?;
    expect_eq!(
        lines.len(),
        audited,
        "events of {AUDIT_LABEL} (one per audited decision): {lines:?}"
    );
    for (pid, action, target, window) in &pids {
        let Some(line) = lines.iter().find(|v| n(v, "pid") == Some(u64::from(*pid))) else {
            return Err(NotPassed::Fail(format!(
                "no event for the audited {action} of pid {pid}: {lines:?}"
            )));
        };
        check_event(
            line,
            &Expected {
                label: AUDIT_LABEL,
                policy: AUDIT_POLICY,
                action,
                verdict: "audit",
                reason: "rule",
                target,
                pid: *pid,
                exe: None,
                window: *window,
            },
        )?;
    }
    Ok(())
}

/// The exec decisions of one run of `bin`, as a counter delta.
pub(super) fn exec_runs(bin: &Path) -> Result<u64, NotPassed> {
    Ok(all_exec_decisions(bin)? as u64)
}
