//! Issue 2: exec enforcement end to end, plus the daemon's and `exec`'s contract.

use std::os::unix::fs::symlink;

use anyhow::Result;

use super::{Case, Enforcing, Suite, mounts::Mount, session::Session};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, RAN, http_get},
};

const LABEL: &str = "vmtest";

/// A tmpfs of the suite's own, beside the guest's /tmp (an overlayfs whose layers are on two
/// file systems): the hard-link tests run on both.
const TMPFS: &str = "tmpfs";

fn policy(ctx: &Ctx) -> String {
    format!(
        "name: vmtest-exec\nlabels: [{LABEL}]\nmode: enforce\nexec:\n  default: allow\n  deny: [{}, {}, {}/**, {}, {}/**]\n",
        ctx.path("bin/denied").display(),
        ctx.path(&format!("{TMPFS}/bin/denied")).display(),
        ctx.path("denytree").display(),
        // Rules that name symlinks: they must hold for the targets.
        ctx.path("bin/alias").display(),
        ctx.path("linkdir").display()
    )
}

/// The binaries, trees and links the tests exec, and the daemon enforcing the policy on them.
fn start(ctx: &Ctx) -> Result<Enforcing> {
    harness::install("/bin/true", &ctx.path("bin/allowed"))?;
    harness::install("/bin/true", &ctx.path("bin/denied"))?;
    let tmpfs = Mount::tmpfs(&ctx.path(TMPFS))?;
    harness::install("/bin/true", &ctx.path(&format!("{TMPFS}/bin/denied")))?;
    std::fs::create_dir_all(ctx.path(&format!("{TMPFS}/ws")))?;
    std::fs::create_dir_all(ctx.path("ws"))?;
    harness::install("/bin/true", &ctx.path("denytree/sub/tool"))?;
    symlink(ctx.path("bin/denied"), ctx.path("bin/link-to-denied"))?;
    harness::install("/bin/true", &ctx.path("bin/aliased"))?;
    symlink("aliased", ctx.path("bin/alias"))?;
    harness::install("/bin/true", &ctx.path("realdir/tool"))?;
    symlink("realdir", ctx.path("linkdir"))?;
    harness::write(&ctx.path("denytree/script.sh"), "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(
        ctx.path("denytree/script.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    harness::write(&ctx.path("policies/exec.yaml"), &policy(ctx))?;
    Ok(Enforcing {
        daemon: Daemon::start(ctx, &ctx.path("policies"), &[])?,
        mounts: vec![tmpfs],
    })
}

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(rel).display().to_string()
}

fn labelled_allowed_exec_runs(ctx: &Ctx) -> Outcome {
    expect_eq!(
        ctx.attempt(Some(LABEL), &["exec", &p(ctx, "bin/allowed")]),
        RAN,
        "allowed exec"
    );
    Ok(())
}

fn labelled_denied_exec_is_eperm(ctx: &Ctx) -> Outcome {
    expect_eq!(
        ctx.attempt(Some(LABEL), &["exec", &p(ctx, "bin/denied")]),
        "EPERM",
        "denied exec"
    );
    Ok(())
}

fn labelled_denied_exec_through_symlink_is_eperm(ctx: &Ctx) -> Outcome {
    expect_eq!(
        ctx.attempt(Some(LABEL), &["exec", &p(ctx, "bin/link-to-denied")]),
        "EPERM",
        "exec through a symlink"
    );
    Ok(())
}

/// A rule naming a symlink (an alternatives link, `/lib` on merged /usr) would never match,
/// since the kernel reports the target: `actgate check` warns, and the target is denied.
fn rules_naming_symlinks_hold_for_their_targets(ctx: &Ctx) -> Outcome {
    for target in ["bin/aliased", "realdir/tool", "linkdir/tool"] {
        expect_eq!(
            ctx.attempt(Some(LABEL), &["exec", &p(ctx, target)]),
            "EPERM",
            "exec of {target}"
        );
    }
    let out = std::process::Command::new(&ctx.actgate)
        .arg("check")
        .arg(ctx.path("policies/exec.yaml"))
        .output()
        .map_err(|e| NotPassed::Fail(format!("running actgate check: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(": warning: ")).collect();
    expect_eq!(out.status.code(), Some(0), "actgate check's exit code");
    expect_eq!(warnings.len(), 2, "warnings in {text}");
    // Each warning points at its rule: line 6, the column where the pattern starts.
    let rules = policy(ctx);
    let line = rules.lines().nth(5).unwrap_or_default();
    let file = p(ctx, "policies/exec.yaml");
    for (i, rule) in [p(ctx, "bin/alias"), format!("{}/**", p(ctx, "linkdir"))]
        .iter()
        .enumerate()
    {
        let column = line
            .find(&format!("{rule},"))
            .or(line.find(&format!("{rule}]")));
        let want = format!("{file}:6:{}: warning: `{rule}`", column.unwrap_or(0) + 1);
        expect_eq!(
            warnings.get(i).is_some_and(|w| w.starts_with(&want)),
            true,
            "warning {i} starts with {want}: {text}"
        );
    }
    Ok(())
}

fn labelled_denied_exec_through_relative_path_is_eperm(ctx: &Ctx) -> Outcome {
    let script = format!(
        "cd {} && {} try exec ./denied",
        p(ctx, "bin"),
        ctx.guest.display()
    );
    expect_eq!(ctx.labelled_sh(LABEL, &script), "EPERM", "exec of ./denied");
    let script = format!(
        "cd {} && {} try exec ../bin/denied",
        p(ctx, "denytree"),
        ctx.guest.display()
    );
    expect_eq!(
        ctx.labelled_sh(LABEL, &script),
        "EPERM",
        "exec of ../bin/denied"
    );
    Ok(())
}

fn labelled_exec_in_denied_tree_is_eperm(ctx: &Ctx) -> Outcome {
    expect_eq!(
        ctx.attempt(Some(LABEL), &["exec", &p(ctx, "denytree/sub/tool")]),
        "EPERM",
        "exec inside a denied tree"
    );
    expect_eq!(
        ctx.attempt(Some(LABEL), &["exec", &p(ctx, "denytree/script.sh")]),
        "EPERM",
        "script inside a denied tree"
    );
    Ok(())
}

/// A hard link to a binary denied by its exact path, made by an unlabelled process while the
/// daemon enforces, names the same file: the label's exec of it is denied, on the guest's
/// /tmp and on a tmpfs alike, and an unlabelled exec of it still runs.
fn labelled_exec_of_hard_link_made_while_enforcing_is_eperm(ctx: &Ctx) -> Outcome {
    for dir in [".", TMPFS] {
        let denied = p(ctx, &format!("{dir}/bin/denied"));
        let link = p(ctx, &format!("{dir}/ws/hardlink"));
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&denied, &link)
            .map_err(|e| NotPassed::Fail(format!("ln {denied} {link}: {e}")))?;
        expect_eq!(
            ctx.attempt(Some(LABEL), &["exec", &link]),
            "EPERM",
            "labelled exec of {link}, a hard link to {denied}"
        );
        expect_eq!(
            ctx.attempt(None, &["exec", &link]),
            RAN,
            "unlabelled exec of {link}"
        );
    }
    Ok(())
}

fn labelled_grandchild_denied_exec_is_eperm(ctx: &Ctx) -> Outcome {
    // `; true` keeps each shell from exec'ing its last command in place, so the probe really
    // is a grandchild of the labelled shell.
    let inner = format!(
        "{} try exec {}; true",
        ctx.guest.display(),
        p(ctx, "bin/denied")
    );
    let script = format!("/bin/sh -c '{inner}'; true");
    expect_eq!(ctx.labelled_sh(LABEL, &script), "EPERM", "grandchild exec");
    Ok(())
}

fn unlabelled_process_runs_denied_files(ctx: &Ctx) -> Outcome {
    for rel in [
        "bin/denied",
        "bin/link-to-denied",
        "denytree/sub/tool",
        "denytree/script.sh",
    ] {
        expect_eq!(
            ctx.attempt(None, &["exec", &p(ctx, rel)]),
            RAN,
            "unlabelled exec of {rel}"
        );
    }
    Ok(())
}

fn exec_with_unknown_label_is_refused(ctx: &Ctx) -> Outcome {
    let marker = ctx.path("unknown-label-ran");
    let out = ctx.labelled(
        "no-such-label",
        &["/usr/bin/touch", &marker.display().to_string()],
    );
    harness::expect_refused(&out, &marker, "no-such-label", "exec with an unknown label")
}

fn healthz_and_readyz_answer(_: &Ctx) -> Outcome {
    expect_eq!(http_get("/healthz")?.0, 200, "/healthz");
    expect_eq!(http_get("/readyz")?.0, 200, "/readyz");
    expect_eq!(
        harness::metric(&harness::scrape()?, "actgate_ready"),
        1.0,
        "actgate_ready"
    );
    Ok(())
}

fn exec_without_daemon_is_refused(ctx: &Ctx) -> Outcome {
    let marker = ctx.path("no-daemon-ran");
    let out = ctx.labelled(LABEL, &["/usr/bin/touch", &marker.display().to_string()]);
    harness::expect_refused(&out, &marker, "no actgate daemon", "exec with no daemon")
}

fn check_reports_every_problem_with_position(ctx: &Ctx) -> Outcome {
    let good = ctx.path("check/good");
    harness::write(&good.join("exec.yaml"), &policy(ctx))?;
    let bad = ctx.path("check/bad.yaml");
    harness::write(
        &bad,
        "name: x\nlabels: [x]\nexec:\n  deny: [relative/path]\n  bogus: 1\n",
    )?;
    let out = std::process::Command::new(&ctx.actgate)
        .arg("check")
        .arg(&bad)
        .output()
        .map_err(anyhow::Error::from)?;
    expect_eq!(
        out.status.code(),
        Some(1),
        "exit code of check on a bad file"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}:", bad.display());
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    expect_eq!(lines.len(), 2, "problems reported ({text})");
    let good = std::process::Command::new(&ctx.actgate)
        .arg("check")
        .arg(&good)
        .output()
        .map_err(anyhow::Error::from)?;
    expect_eq!(
        good.status.code(),
        Some(0),
        "exit code of check on a good directory"
    );
    Ok(())
}

/// `actgate attach` moves a running unlabelled tree (a shell, and the shell it started that
/// runs the commands) into the label: the denied binary that ran before is EPERM after, and
/// both shells are under the label. Attaching it again moves nothing; an unknown label or
/// pid is refused with 125.
fn attach_moves_a_running_tree_into_the_label(ctx: &Ctx) -> Outcome {
    let denied = p(ctx, "bin/denied");
    let mut tree = Session::start_unlabelled_tree()?;
    expect_eq!(tree.run(&denied)?, "OK", "{denied} before the attach");
    let pid = tree.pid().to_string();
    let attach = |label: &str, pid: &str| {
        std::process::Command::new(&ctx.actgate)
            .args(["attach", "--label", label, "--pid", pid])
            .output()
            .map_err(anyhow::Error::from)
    };
    let out = attach(LABEL, &pid)?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    expect_eq!(out.status.code(), Some(0), "attach's exit status ({said})");
    expect_eq!(
        said.contains("2 moved, 0 there already"),
        true,
        "attach moved the two shells ({said})"
    );
    let cgroup = format!("/actgate/{LABEL}");
    expect_eq!(
        tree.run(&format!("grep -qx '0::{cgroup}' /proc/$$/cgroup"))?,
        "OK",
        "the shell running the commands is in {cgroup}"
    );
    let outer = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    expect_eq!(
        outer.trim(),
        format!("0::{cgroup}"),
        "the outer shell's cgroup"
    );
    expect_eq!(tree.run(&denied)?, "EPERM", "{denied} after the attach");
    let again = attach(LABEL, &pid)?;
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    expect_eq!(
        (
            again.status.code(),
            said.contains("0 moved, 2 there already")
        ),
        (Some(0), true),
        "attaching the tree again ({said})"
    );
    for (label, pid, why) in [
        (
            "vmtest-unknown",
            pid.as_str(),
            "no loaded policy names label",
        ),
        (LABEL, "999999", "no process 999999"),
        (LABEL, "1", "never labelled"),
    ] {
        let out = attach(label, pid)?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        expect_eq!(
            (out.status.code(), err.contains(why)),
            (Some(125), true),
            "attach --label {label} --pid {pid} ({err})"
        );
    }
    Ok(())
}

/// The exec tests against one daemon, whose stop ends them. Unlabelled runs come while the
/// daemon enforces, to show they are untouched.
pub fn suite() -> Suite<Enforcing> {
    Suite {
        name: "exec",
        start,
        cases: vec![
            case!(healthz_and_readyz_answer),
            case!(labelled_allowed_exec_runs),
            case!(labelled_denied_exec_is_eperm),
            case!(rules_naming_symlinks_hold_for_their_targets),
            case!(labelled_denied_exec_through_symlink_is_eperm),
            case!(labelled_denied_exec_through_relative_path_is_eperm),
            case!(labelled_exec_in_denied_tree_is_eperm),
            case!(labelled_exec_of_hard_link_made_while_enforcing_is_eperm),
            case!(labelled_grandchild_denied_exec_is_eperm),
            case!(exec_with_unknown_label_is_refused),
            case!(attach_moves_a_running_tree_into_the_label),
            case!(unlabelled_process_runs_denied_files),
        ],
        stop: Enforcing::stop,
        stop_test: Some("sigterm_stops_the_daemon_with_exit_0"),
    }
}

/// What needs no daemon running: `actgate check`, and `actgate exec` refusing.
pub fn without_daemon() -> Suite<()> {
    let cases: Vec<Case<()>> = vec![
        case!(check_reports_every_problem_with_position),
        case!(exec_without_daemon_is_refused),
    ];
    Suite::unchecked("exec", |_| Ok(()), cases)
}
