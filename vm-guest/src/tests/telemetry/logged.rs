//! The events file: every field, an exited process, rotation and SIGHUP, and a flood.

use std::{
    fs,
    io::Write,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{events::*, metrics::*, processes::*, *};
use crate::tests::Enforcing;
use crate::{
    expect_eq,
    harness::{self, Ctx, NotPassed, Outcome, http_get, scrape},
};

/// Labelled processes opening a read-denied file as fast as they can, all at once.
const FLOODERS: usize = 4;
const FLOOD_SECONDS: &str = "3";

pub(super) fn flood_of_denials_is_counted_exactly_and_each_event_logged_or_counted_dropped(
    ctx: &Ctx,
    fixture: &Enforcing,
) -> Outcome {
    let daemon = &fixture.daemon;
    let flood = t(ctx, "flood.txt");
    let dropped_series = "actgate_events_dropped_total{action=\"file_read\"}";
    let is_flood_event = |v: &Value| s(v, "label") == FLOOD_LABEL;
    let body = scrape()?;
    let before = decisions(&body, FLOOD_LABEL)?;
    let dropped_before = sample(&body, dropped_series)?;
    let lines_before = read_events(&daemon.events)?
        .iter()
        .filter(|v| is_flood_event(v))
        .count();
    let children = (0..FLOODERS)
        .map(|_| {
            Command::new(&ctx.actgate)
                .args(["exec", "--user", "root", "--label", FLOOD_LABEL, "--"])
                .arg(&ctx.guest)
                .args(["try", "flood-open", &flood, FLOOD_SECONDS])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting a labelled flood")
        })
        .collect::<Result<Vec<Child>>>()?;
    let mut attempts = Vec::new();
    for child in children {
        let out = child.wait_with_output().map_err(anyhow::Error::from)?;
        let said = harness::verdict_line(&out);
        match said.parse::<u64>() {
            Ok(count) if out.status.success() => attempts.push(count),
            _ => {
                return Err(NotPassed::Fail(format!(
                    "a flood didn't report a count of EPERMs: {said}"
                )));
            }
        }
    }
    let total: u64 = attempts.iter().sum();
    // The daemon drains the ring buffer behind the floods: wait for the file to settle.
    wait_until_still(
        &daemon.events,
        Duration::from_secs(5),
        Duration::from_secs(300),
    )?;
    let body = scrape()?;
    let after = decisions(&body, FLOOD_LABEL)?;
    let dropped = sample(&body, dropped_series)? - dropped_before;
    let logged: Vec<Value> = read_events(&daemon.events)?
        .into_iter()
        .filter(is_flood_event)
        .skip(lines_before)
        .collect();
    let lines = logged.len();
    let unnamed = logged
        .iter()
        .filter(|v| s(v, "exe").is_empty() || s(v, "cgroup").is_empty())
        .count();
    println!(
        "# flood on {}: attempts {attempts:?} = {total}; file_read/deny +{}; events logged \
         {lines} ({unnamed} without exe or cgroup); events dropped +{dropped}",
        agent_common::kernel_release(),
        after[&("file_read", "deny")] - before[&("file_read", "deny")]
    );
    if let Some(odd) = logged.iter().find(|v| {
        (s(v, "action"), s(v, "verdict"), s(v, "target")) != ("file_read", "deny", flood.as_str())
    }) {
        return Err(NotPassed::Fail(format!(
            "a flood event is not the denied read of {flood}: {odd}"
        )));
    }
    expect_deltas(
        "decisions of the floods",
        &before,
        &after,
        &[
            (
                "exec",
                "allow",
                FLOODERS as u64 * counters::exec_runs(&ctx.guest)?,
            ),
            ("file_read", "deny", total),
        ],
        &[("file_read", "allow")],
    )?;
    expect_eq!(
        lines as u64 + dropped,
        total,
        "events logged ({lines}) + events dropped ({dropped}) against the denials"
    );
    if lines == 0 {
        return Err(NotPassed::Fail(format!(
            "not one of {total} flood events reached the events file"
        )));
    }
    Ok(())
}

pub(super) fn events_have_every_field_exactly(ctx: &Ctx, fixture: &Enforcing) -> Outcome {
    let daemon = &fixture.daemon;
    let exe = guest_exe(ctx)?;
    let rdenied = t(ctx, "read-denied.txt");
    let denied_addr = format!("{DENIED_IP}:9");
    // Through `..` and through a symlink, so the target must be the resolved path.
    let via_dotdot = t(ctx, "bin/../bin/denied");
    let via_link = t(ctx, "link-to-read-denied");
    let (denied, wdenied) = (t(ctx, "bin/denied"), t(ctx, "write-denied.txt"));
    for (args, action, target) in [
        (["exec", via_dotdot.as_str()], "exec", &denied),
        (["open-write", &wdenied], "file_write", &wdenied),
        (["open-read", &via_link], "file_read", &rdenied),
        (["connect-tcp", &denied_addr], "connect", &denied_addr),
    ] {
        let start = unix_now();
        let probe = HeldProbe::start(ctx, LABEL, &args)?;
        let pid = probe.child.id();
        let lines = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
        let window = (start, unix_now());
        expect_eq!(probe.finish()?, "EPERM", "labelled try {}", args.join(" "));
        expect_eq!(lines.len(), 1, "events of pid {pid} ({action}): {lines:?}");
        check_event(
            &lines[0],
            &Expected {
                label: LABEL,
                policy: POLICY,
                action,
                verdict: "deny",
                reason: "rule",
                target,
                pid,
                exe: Some(&exe),
                window,
            },
        )?;
    }
    Ok(())
}

/// The usual case: a tool is denied and exits at once, before the daemon reads the event.
/// Stopping the daemon makes that order certain.
pub(super) fn event_of_exited_process_names_its_exe_and_cgroup(
    ctx: &Ctx,
    fixture: &Enforcing,
) -> Outcome {
    let daemon = &fixture.daemon;
    let rdenied = t(ctx, "read-denied.txt");
    let script = format!(
        "read go; exec {} try open-read {rdenied}",
        ctx.guest.display()
    );
    let mut child = ctx
        .spawn_labelled_sh(LABEL, &script)
        .map_err(anyhow::Error::from)?;
    let pid = child.id();
    // `actgate exec` needs the daemon; once it runs sh, the label is joined.
    let comm = format!("/proc/{pid}/comm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(&comm).unwrap_or_default().trim() != "sh" {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotPassed::Fail("the labelled sh never ran".into()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let start = unix_now();
    daemon.signal(libc::SIGSTOP);
    let ran = (|| -> Result<String> {
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        let out = child.wait_with_output()?;
        Ok(harness::verdict_line(&out))
    })();
    daemon.signal(libc::SIGCONT);
    expect_eq!(
        ran?,
        "EPERM",
        "the labelled read while the daemon was stopped"
    );
    let lines = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(lines.len(), 1, "events of pid {pid}: {lines:?}");
    expect_eq!(
        s(&lines[0], "cgroup").to_string(),
        format!("/actgate/{LABEL}"),
        "cgroup of an exited process's event"
    );
    check_event(
        &lines[0],
        &Expected {
            label: LABEL,
            policy: POLICY,
            action: "file_read",
            verdict: "deny",
            reason: "rule",
            target: &rdenied,
            pid,
            // Both come from the kernel, so they outlive the process.
            exe: Some(&guest_exe(ctx)?),
            window: (start, unix_now()),
        },
    )
}

pub(super) fn events_file_follows_rename_and_sighup(ctx: &Ctx, fixture: &Enforcing) -> Outcome {
    let daemon = &fixture.daemon;
    let rdenied = t(ctx, "read-denied.txt");
    // Rotation by renaming: the next event starts a new file.
    let rotated = daemon.events.with_extension("jsonl.1");
    fs::rename(&daemon.events, &rotated).map_err(anyhow::Error::from)?;
    let kept = read_events(&rotated)?.len();
    let (pid, got) = probe_with_pid(ctx, LABEL, &["open-read", &rdenied])?;
    expect_eq!(got, "EPERM", "labelled read after the rename");
    let fresh = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(fresh.len(), 1, "events of pid {pid} in the new events file");
    expect_eq!(
        read_events(&daemon.events)?.len(),
        1,
        "lines in the new events file"
    );
    expect_eq!(
        read_events(&rotated)?.len(),
        kept,
        "lines in the renamed file after the rename"
    );

    // SIGHUP (logrotate's postrotate): reloads the policies and reopens the file.
    let reloads = "actgate_policy_reloads_total{result=\"success\"}";
    let reloaded_before = sample(&scrape()?, reloads)?;
    let second = daemon.events.with_extension("jsonl.2");
    fs::rename(&daemon.events, &second).map_err(anyhow::Error::from)?;
    daemon.signal(libc::SIGHUP);
    expect_eq!(
        wait_for_sample(reloads, reloaded_before + 1, Duration::from_secs(30))?,
        reloaded_before + 1,
        "{reloads} after SIGHUP"
    );
    expect_eq!(http_get("/readyz")?.0, 200, "/readyz after SIGHUP");
    let (pid, got) = probe_with_pid(ctx, LABEL, &["open-read", &rdenied])?;
    expect_eq!(got, "EPERM", "labelled read after SIGHUP");
    let fresh = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(
        fresh.len(),
        1,
        "events of pid {pid} in the file reopened on SIGHUP"
    );
    expect_eq!(
        read_events(&daemon.events)?.len(),
        1,
        "lines in the file reopened on SIGHUP"
    );
    expect_eq!(
        read_events(&second)?.len(),
        1,
        "lines in the file renamed before SIGHUP"
    );
    expect_eq!(
        read_events(&rotated)?.len(),
        kept,
        "lines in the first renamed file"
    );
    Ok(())
}
