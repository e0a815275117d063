//! Issue 12: a reload never releases a labelled process. Dropping a label while an agent runs
//! under it orphans the label: the agent, root or not, is denied everything until a policy
//! names the label again. And a labelled process can't use the daemon's control socket.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Suite, agent::Agent, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, eventually, scrape},
};

/// The label the reloads drop and bring back.
const LABEL: &str = "vmorphan";
/// A label every reload keeps.
const KEEP: &str = "vmorphan-keep";
const POLICY: &str = "vmtest-orphans";
const LISTEN: &str = "127.0.0.1:18301";
const NOBODY: u32 = 65534;

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("orphans/{rel}")).display().to_string()
}

/// The same rules for both labels; without `named`, no policy names `LABEL`.
fn policy_text(ctx: &Ctx, named: bool) -> String {
    let rules = format!(
        "mode: enforce
exec:
  default: allow
  deny: [{denied}]
files:
  write:
    default: deny
    allow: [{ws}/**]
  read:
    default: allow
    deny: [{secret}]
network:
  connect:
    default: deny
    allow: [127.0.0.1/32]
",
        denied = p(ctx, "bin/denied"),
        ws = p(ctx, "ws"),
        secret = p(ctx, "secret.txt"),
    );
    let keep = format!("name: {POLICY}-keep\nlabels: [{KEEP}]\n{rules}");
    if named {
        format!("name: {POLICY}\nlabels: [{LABEL}]\n{rules}---\n{keep}")
    } else {
        keep
    }
}

/// The actions that both labels' policy allows.
fn allowed(ctx: &Ctx) -> Vec<(&'static str, String)> {
    vec![
        ("exec", p(ctx, "bin/allowed")),
        ("write", p(ctx, "ws/ok.txt")),
        ("read", p(ctx, "data.txt")),
        ("connect", LISTEN.to_string()),
    ]
}

/// Directories above the deep file: more than the 40 components the kernel's path walk takes.
const DEEP: usize = 45;

/// A file `DEEP` directories beneath the workspace, which `user` may remove.
fn deep_file(ctx: &Ctx, user: &str) -> Result<String> {
    let mut dir = PathBuf::from(p(ctx, &format!("ws/deep-{user}")));
    for _ in 0..DEEP {
        dir.push("d");
    }
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
    let file = dir.join("f");
    harness::write(&file, "")?;
    Ok(file.display().to_string())
}

pub struct Orphans {
    daemon: Daemon,
    policies: PathBuf,
    _listener: TcpListener,
    _tmpfs: Mount,
}

impl Orphans {
    /// Puts the policies (naming `LABEL` or not) in force.
    fn reload(&self, ctx: &Ctx, named: bool) -> Result<()> {
        harness::replace_policies(&self.daemon, &self.policies, &policy_text(ctx, named))
    }
}

fn start(ctx: &Ctx) -> Result<Orphans> {
    let tmpfs = Mount::tmpfs(&ctx.path("orphans"))?;
    harness::install("/bin/true", Path::new(&p(ctx, "bin/allowed")))?;
    harness::install("/bin/true", Path::new(&p(ctx, "bin/denied")))?;
    fs::create_dir_all(p(ctx, "ws"))?;
    fs::set_permissions(p(ctx, "ws"), fs::Permissions::from_mode(0o777))?;
    // Writable and readable by nobody too: a denial is the policy's, never the mode bits'.
    harness::files_with_modes(&[
        (p(ctx, "ws/ok.txt"), 0o666),
        (p(ctx, "elsewhere.txt"), 0o666),
        (p(ctx, "data.txt"), 0o644),
        (p(ctx, "secret.txt"), 0o644),
    ])?;
    let listener = TcpListener::bind(LISTEN).context("listening on the probe's address")?;
    let policies = ctx.path("orphans/policies");
    harness::write(&policies.join("policies.yaml"), &policy_text(ctx, true))?;
    Ok(Orphans {
        daemon: Daemon::start(ctx, &policies, &[])?,
        policies,
        _listener: listener,
        _tmpfs: tmpfs,
    })
}

/// The status entry of `LABEL`, if the status lists it.
fn label_status(ctx: &Ctx) -> Result<Option<Value>> {
    harness::label_status(ctx, LABEL)
}

fn orphaned_gauge() -> Result<f64> {
    Ok(harness::metric(
        &scrape()?,
        &format!("actgate_label_orphaned{{label=\"{LABEL}\"}}"),
    ))
}

/// `actgate exec --user root --label LABEL` is refused while the label is orphaned (or gone),
/// naming `mention`.
fn expect_exec_refused(ctx: &Ctx, mention: &str) -> Outcome {
    let marker = p(ctx, "ws/exec-ran");
    let out = ctx.labelled(LABEL, &["/usr/bin/touch", &marker]);
    harness::expect_refused(
        &out,
        Path::new(&marker),
        mention,
        "exec into the dropped label",
    )
}

fn events(daemon: &Daemon) -> Result<Vec<Value>> {
    let text = fs::read_to_string(&daemon.events).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

/// Waits until the events file holds, for each action, a denial of `LABEL` by uid `uid` for
/// `reason`; fails naming the first action without one.
fn expect_events(daemon: &Daemon, uid: u32, reason: &str, actions: &[&str]) -> Outcome {
    let has = |lines: &[Value], action: &str| {
        lines.iter().any(|v| {
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
            s("label") == LABEL
                && s("action") == action
                && s("verdict") == "deny"
                && s("reason") == reason
                && v.get("uid").and_then(Value::as_u64) == Some(u64::from(uid))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = events(daemon)?;
        match actions.iter().find(|a| !has(&lines, a)) {
            None => return Ok(()),
            Some(missing) if Instant::now() > deadline => {
                let ours: Vec<&Value> = lines
                    .iter()
                    .filter(|v| v.get("label").and_then(Value::as_str) == Some(LABEL))
                    .collect();
                return Err(NotPassed::Fail(format!(
                    "no {missing} denial with reason {reason} for uid {uid}; {LABEL}'s events: \
                     {ours:?}"
                )));
            }
            Some(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// An agent runs as `user` under `LABEL`; a reload drops the label; every action the policy
/// allowed before is EPERM, for `orphaned`, as status, metrics and the log say; a reload that
/// names the label again restores the policy's own decisions.
fn agent_of_a_dropped_label_is_denied_until_named_again(
    ctx: &Ctx,
    fx: &mut Orphans,
    user: &'static str,
    uid: u32,
) -> Outcome {
    if !Path::new("/usr/bin/python3").exists() {
        return Err(NotPassed::Skip("the guest has no /usr/bin/python3".into()));
    }
    fx.reload(ctx, true)?;
    let mut agent = Agent::start(ctx, LABEL, user)?;
    let allowed = allowed(ctx);
    agent.expect_all(&allowed, "OK", "while a policy names the label")?;

    fx.reload(ctx, false)?;
    agent.expect_all(&allowed, "EPERM", "once the label is orphaned")?;
    // A path too deep for the kernel to name is an internal error, allowed for a label in
    // force; an orphan's action is denied all the same.
    let deep = deep_file(ctx, user)?;
    expect_eq!(
        agent.act("unlink", &deep)?,
        "EPERM",
        "unlink of a path {DEEP} directories deep by the orphaned agent"
    );
    expect_eq!(
        Path::new(&deep).exists(),
        true,
        "the deep file after the denied unlink"
    );
    expect_events(
        &fx.daemon,
        uid,
        "orphaned",
        &["exec", "file_write", "file_read", "connect"],
    )?;
    let Some(st) = label_status(ctx)? else {
        return Err(NotPassed::Fail(format!(
            "status no longer lists the orphaned label {LABEL}"
        )));
    };
    expect_eq!(
        (
            st.get("orphaned").and_then(Value::as_bool),
            st.get("mode").and_then(Value::as_str),
            st.get("processes").and_then(Value::as_u64),
        ),
        (Some(true), Some("orphaned"), Some(1)),
        "orphaned, mode and processes of {LABEL} in actgate status --json"
    );
    harness::expect_status_mode(ctx, LABEL, "ORPHANED")?;
    expect_eq!(orphaned_gauge()?, 1.0, "actgate_label_orphaned of {LABEL}");
    let log = fx.daemon.log_text();
    if !log
        .lines()
        .any(|l| l.contains("ERROR") && l.contains(LABEL) && l.contains("1 process(es) still run"))
    {
        return Err(NotPassed::Fail(format!(
            "the daemon logged no error naming {LABEL} and its process:\n{log}"
        )));
    }
    expect_exec_refused(ctx, "orphaned")?;

    fx.reload(ctx, true)?;
    agent.expect_all(&allowed, "OK", "once a policy names the label again")?;
    expect_eq!(
        agent.act("read", &p(ctx, "secret.txt"))?,
        "EPERM",
        "read of the file a rule denies, named again"
    );
    expect_eq!(
        agent.act("write", &p(ctx, "elsewhere.txt"))?,
        "EPERM",
        "write outside the workspace (the default denies), named again"
    );
    expect_events(&fx.daemon, uid, "rule", &["file_read"])?;
    expect_events(&fx.daemon, uid, "default", &["file_write"])?;
    expect_eq!(
        orphaned_gauge()?,
        0.0,
        "actgate_label_orphaned once named again"
    );
    expect_eq!(
        label_status(ctx)?.and_then(|s| s.get("orphaned").and_then(Value::as_bool)),
        Some(false),
        "orphaned of {LABEL} in status once named again"
    );
    agent.stop()?;
    Ok(())
}

fn a_dropped_labels_root_agent_is_denied_until_the_label_is_named_again(
    ctx: &Ctx,
    fx: &mut Orphans,
) -> Outcome {
    agent_of_a_dropped_label_is_denied_until_named_again(ctx, fx, "root", 0)
}

fn a_dropped_labels_unprivileged_agent_is_denied_until_the_label_is_named_again(
    ctx: &Ctx,
    fx: &mut Orphans,
) -> Outcome {
    agent_of_a_dropped_label_is_denied_until_named_again(ctx, fx, "nobody", NOBODY)
}

/// Once its last process is gone, an orphaned label goes at the next reload.
fn an_orphaned_label_without_processes_goes_at_the_next_reload(
    ctx: &Ctx,
    fx: &mut Orphans,
) -> Outcome {
    if !Path::new("/usr/bin/python3").exists() {
        return Err(NotPassed::Skip("the guest has no /usr/bin/python3".into()));
    }
    fx.reload(ctx, true)?;
    let agent = Agent::start(ctx, LABEL, "nobody")?;
    fx.reload(ctx, false)?;
    expect_eq!(
        orphaned_gauge()?,
        1.0,
        "actgate_label_orphaned with the agent running"
    );
    agent.stop()?;
    fx.reload(ctx, false)?;
    expect_eq!(
        label_status(ctx)?,
        None,
        "{LABEL} in status after a reload with no process left"
    );
    let body = scrape()?;
    if body.contains(&format!("actgate_label_orphaned{{label=\"{LABEL}\"}}")) {
        return Err(NotPassed::Fail(format!(
            "/metrics still has actgate_label_orphaned for {LABEL}"
        )));
    }
    expect_exec_refused(ctx, "no loaded policy names")?;
    // Gone with its cgroup: an `actgate exec` that raced the reload could not join it.
    let cgroup = format!("/sys/fs/cgroup/actgate/{LABEL}");
    expect_eq!(
        Path::new(&cgroup).exists(),
        false,
        "{cgroup} after the label went"
    );
    fx.reload(ctx, true)?;
    Ok(())
}

/// A root process in a label runs `actgate exec` into another label, and `actgate status`:
/// the control socket refuses both, and the command never runs.
fn actgate_exec_and_status_from_inside_a_label_are_refused(ctx: &Ctx, fx: &mut Orphans) -> Outcome {
    fx.reload(ctx, true)?;
    let actgate = ctx.actgate.display().to_string();
    let marker = p(ctx, "ws/escaped");
    let out = ctx.labelled(
        KEEP,
        &[
            &actgate,
            "exec",
            "--user",
            "root",
            "--label",
            LABEL,
            "--",
            "/usr/bin/touch",
            &marker,
        ],
    );
    harness::expect_refused(
        &out,
        Path::new(&marker),
        "does not serve labelled processes",
        "actgate exec from inside a label",
    )?;
    let out = ctx.labelled(KEEP, &[&actgate, "status", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect_eq!(
        out.status.success(),
        false,
        "actgate status from inside a label succeeded"
    );
    if !stderr.contains("does not serve labelled processes") || !out.stdout.is_empty() {
        return Err(NotPassed::Fail(format!(
            "actgate status from inside a label: stdout {:?}, stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    let warned = eventually("yes", || {
        let log = fx.daemon.log_text();
        Ok(
            if log.lines().any(|l| {
                l.contains("refused the control socket") && l.contains(KEEP) && l.contains("WARN")
            }) {
                "yes".into()
            } else {
                log
            },
        )
    })?;
    expect_eq!(
        warned,
        "yes",
        "a warning naming the label in the daemon log"
    );
    Ok(())
}

pub fn suite() -> Suite<Orphans> {
    Suite {
        name: "orphans",
        start,
        cases: vec![
            case!(
                a_dropped_labels_root_agent_is_denied_until_the_label_is_named_again,
                fixture
            ),
            case!(
                a_dropped_labels_unprivileged_agent_is_denied_until_the_label_is_named_again,
                fixture
            ),
            case!(
                an_orphaned_label_without_processes_goes_at_the_next_reload,
                fixture
            ),
            case!(
                actgate_exec_and_status_from_inside_a_label_are_refused,
                fixture
            ),
        ],
        stop: |fx| fx.daemon.stop_cleanly(),
        stop_test: Some("orphans_daemon_stops_with_exit_0"),
    }
}
