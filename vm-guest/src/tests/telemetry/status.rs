//! `actgate status`, as JSON and as a table, against /metrics.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{events::*, metrics::*, processes::*, *};
use crate::{
    expect_eq,
    harness::{Ctx, NotPassed, Outcome, scrape},
};

pub(super) fn status(ctx: &Ctx, json: bool) -> Result<String> {
    let mut cmd = Command::new(&ctx.actgate);
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running actgate status")?;
    if !out.status.success() {
        bail!(
            "actgate status{} exited with {}: {}",
            if json { " --json" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn status_json(ctx: &Ctx) -> Result<Value> {
    let text = status(ctx, true)?;
    serde_json::from_str(&text).with_context(|| format!("actgate status --json said: {text}"))
}

pub(super) fn status_label<'a>(st: &'a Value, label: &str) -> Result<&'a Value> {
    st.get("labels")
        .and_then(Value::as_array)
        .and_then(|ls| ls.iter().find(|l| s(l, "label") == label))
        .with_context(|| format!("label {label} is missing from the status: {st}"))
}

pub(super) fn status_json_and_table_match_the_running_daemon(ctx: &Ctx) -> Outcome {
    let sleeper = Sleeper::start(ctx, LABEL)?;
    sleeper.wait_idle(LABEL)?;
    expect_eq!(
        wait_for_sample(&processes_series(LABEL), 1, Duration::from_secs(30))?,
        1,
        "labelled processes of {LABEL} with one sleep running"
    );
    // Nothing labelled acts meanwhile (the sleep sleeps), so the three readings agree.
    let before = scrape()?;
    let st = status_json(ctx)?;
    let after = scrape()?;
    let table = status(ctx, false)?;
    sleeper.stop()?;

    expect_eq!(st["ready"], Value::Bool(true), "ready in {st}");
    expect_eq!(
        s(&st, "kernel"),
        agent_common::kernel_release(),
        "kernel in the status"
    );
    expect_eq!(
        n(&st, "policies_loaded"),
        Some(POLICIES),
        "policies_loaded in the status"
    );
    for a in ACTIONS {
        expect_eq!(
            st["enforcement_verified"][a].as_str(),
            Some("verified"),
            "enforcement_verified.{a} in the status"
        );
        expect_eq!(
            n(&st["events_dropped"], a),
            Some(sample(
                &before,
                &format!("actgate_events_dropped_total{{action=\"{a}\"}}")
            )?),
            "events_dropped.{a}: status against /metrics"
        );
    }
    expect_eq!(
        n(&st, "kernel_errors"),
        Some(total(&before, "actgate_kernel_errors_total")?),
        "kernel_errors: status against /metrics"
    );
    let mut names: Vec<&str> = st["labels"]
        .as_array()
        .map(|ls| ls.iter().map(|l| s(l, "label")).collect())
        .unwrap_or_default();
    names.sort_unstable();
    let mut want = LABELS.to_vec();
    want.sort_unstable();
    expect_eq!(names, want, "the labels in the status");
    for (label, policy, mode, procs) in [
        (LABEL, POLICY, "enforce", 1),
        (AUDIT_LABEL, AUDIT_POLICY, "audit", 0),
        (FLOOD_LABEL, FLOOD_POLICY, "enforce", 0),
        (OVERLAY_LABEL, OVERLAY_POLICY, "enforce", 0),
    ] {
        let l = status_label(&st, label)?;
        expect_eq!(s(l, "policy"), policy, "policy of {label} in the status");
        expect_eq!(s(l, "mode"), mode, "mode of {label} in the status");
        let cgroup = s(l, "cgroup");
        if !cgroup.ends_with(&format!("/actgate/{label}")) || !Path::new(cgroup).is_dir() {
            return Err(NotPassed::Fail(format!(
                "cgroup of {label} in the status is {cgroup:?}, not an existing …/actgate/{label}"
            )));
        }
        expect_eq!(
            n(l, "processes"),
            Some(procs),
            "processes of {label} in the status"
        );
        let m1 = decisions(&before, label)?;
        let m2 = decisions(&after, label)?;
        expect_eq!(m1, m2, "/metrics of {label} before and after the status");
        for ((a, v), count) in &m1 {
            expect_eq!(
                n(&l["decisions"][a], v),
                Some(*count),
                "decisions.{a}.{v} of {label}: status against /metrics"
            );
        }
        // The table: the label's row and its counters, as the JSON gives them (compared
        // word by word, so column widths are free).
        let mut rows = vec![vec![
            label.to_string(),
            policy.to_string(),
            mode.to_string(),
            procs.to_string(),
            cgroup.to_string(),
        ]];
        for a in ACTIONS {
            let mut row = vec![label.to_string(), a.to_string()];
            row.extend(VERDICTS.iter().map(|v| m1[&(a, *v)].to_string()));
            rows.push(row);
        }
        for row in rows {
            if !table
                .lines()
                .any(|line| line.split_whitespace().eq(row.iter().map(String::as_str)))
            {
                return Err(NotPassed::Fail(format!(
                    "the status table has no row {:?}:\n{table}",
                    row.join(" ")
                )));
            }
        }
    }
    if !table.starts_with("actgate: ready, enforcing") {
        return Err(NotPassed::Fail(format!(
            "the status table doesn't open with \"actgate: ready, enforcing\":\n{table}"
        )));
    }
    Ok(())
}
