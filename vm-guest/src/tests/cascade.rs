//! Issue 14: revocation and cascade control. An operator revokes a label at once and restores
//! it; deletion is an action of its own; budgets stop a runaway chain at an exact count, from
//! one process or several; the breaker revokes a label that keeps being denied. The agents run
//! as `nobody`.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Suite, agent::Agent, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, scrape},
};

const REVOKE: &str = "vmrevoke";
const DELETE: &str = "vmdelete";
const BUDGET: &str = "vmbudget";
const BUDGET4: &str = "vmbudget4";
const BREAKER: &str = "vmbreaker";
const BUDGET_REVOKE: &str = "vmbudgetrev";
const LISTEN: &str = "127.0.0.1:18401";
const USER: &str = "nobody";
const NOBODY: u64 = 65534;

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("cascade/{rel}")).display().to_string()
}

/// One policy per label: the same rules, with `files.delete` rules for `DELETE` and limits for
/// the others.
fn policy_text(ctx: &Ctx) -> String {
    let ws = p(ctx, "ws");
    let policy = |name: &str, delete: &str, limits: &str| {
        format!(
            "name: {name}
labels: [{name}]
mode: enforce
exec:
  default: allow
files:
  write:
    default: deny
    allow: [{ws}/**, /dev/null]
  read:
    default: allow
    deny: [{secret}]
{delete}network:
  connect:
    default: deny
    allow: [127.0.0.1/32]
{limits}",
            secret = p(ctx, "secret.txt"),
        )
    };
    let budget = "budgets:\n  - {action: file_delete, max: 100, per: 10m}\n";
    [
        policy(REVOKE, "", ""),
        policy(
            DELETE,
            &format!("  delete:\n    deny: [{ws}/keep/**]\n"),
            "",
        ),
        policy(BUDGET, "", budget),
        policy(BUDGET4, "", budget),
        policy(BREAKER, "", "revoke_after: {denials: 5, within: 10m}\n"),
        policy(
            BUDGET_REVOKE,
            "",
            "budgets:\n  - {action: connect, max: 3, per: 10m, then: revoke}\n",
        ),
    ]
    .join("---\n")
}

pub struct Cascade {
    daemon: Option<Daemon>,
    policies: PathBuf,
    _listener: TcpListener,
    _tmpfs: Mount,
}

impl Cascade {
    fn daemon(&self) -> Result<&Daemon> {
        self.daemon.as_ref().context("no daemon runs")
    }
}

fn start(ctx: &Ctx) -> Result<Cascade> {
    let tmpfs = Mount::tmpfs(&ctx.path("cascade"))?;
    harness::install("/bin/true", Path::new(&p(ctx, "bin/allowed")))?;
    for dir in ["ws", "ws/keep"] {
        fs::create_dir_all(p(ctx, dir))?;
        fs::set_permissions(p(ctx, dir), fs::Permissions::from_mode(0o777))?;
    }
    harness::files_with_modes(&[
        (p(ctx, "ws/ok.txt"), 0o666),
        (p(ctx, "data.txt"), 0o644),
        (p(ctx, "secret.txt"), 0o644),
    ])?;
    let listener = TcpListener::bind(LISTEN).context("listening on the agents' address")?;
    let policies = ctx.path("cascade/policies");
    harness::write(&policies.join("policies.yaml"), &policy_text(ctx))?;
    Ok(Cascade {
        daemon: Some(Daemon::start(ctx, &policies, &[])?),
        policies,
        _listener: listener,
        _tmpfs: tmpfs,
    })
}

/// `actgate ARGS…`, its exit code and stdout and stderr together.
fn actgate(ctx: &Ctx, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = Command::new(&ctx.actgate)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running actgate {args:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), text))
}

/// `actgate ARGS…`, which must exit 0.
fn actgate_ok(ctx: &Ctx, args: &[&str]) -> Result<String, NotPassed> {
    let (code, text) = actgate(ctx, args)?;
    expect_eq!(code, Some(0), "exit code of actgate {args:?} ({text})");
    Ok(text)
}

/// `vm-guest try ARGS…` as `USER` in `label`: the probe's verdict line.
fn attempt(ctx: &Ctx, label: &str, args: &[&str]) -> String {
    ctx.attempt_as(label, USER, args)
}

/// The trigger and reason of the label's revocation in status, or `None`.
fn revocation(ctx: &Ctx, label: &str) -> Result<Option<(String, String)>> {
    let l = harness::label_status(ctx, label)?
        .with_context(|| format!("actgate status lists no label {label}"))?;
    let r = l.get("revoked").filter(|r| !r.is_null());
    Ok(r.map(|r| {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        (s("trigger"), s("reason"))
    }))
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn revoked_gauge(body: &str, label: &str) -> f64 {
    harness::metric(body, &series("actgate_label_revoked", &[("label", label)]))
}

fn revocations(body: &str, label: &str, trigger: &str) -> f64 {
    harness::metric(
        body,
        &series(
            "actgate_revocations_total",
            &[("label", label), ("trigger", trigger)],
        ),
    )
}

/// What the revoke tests' agent does, all allowed by its policy.
fn allowed(ctx: &Ctx) -> Vec<(&'static str, String)> {
    vec![
        ("exec", p(ctx, "bin/allowed")),
        ("write", p(ctx, "ws/ok.txt")),
        ("read", p(ctx, "data.txt")),
        ("connect", LISTEN.to_string()),
    ]
}

fn file_len(path: &str) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `path` grows beyond `than` (the loop runs), up to 30 s.
fn grows(path: &str, than: u64, what: &str) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(30);
    while file_len(path) <= than {
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "{path} did not grow beyond {than} bytes within 30 s: {what}"
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An agent runs as nobody and a labelled loop appends to a file, a hundred times a second. Once
/// `actgate revoke` returns, no action of the label succeeds: the loop's file stops growing
/// (one append whose open was judged before may still land), the agent's exec, write, read and
/// connect get EPERM, and a new `actgate exec` into the label is refused. Status, metrics and
/// events say so. `actgate restore` brings the loop and the agent back.
fn revoke_stops_a_running_loop_and_restore_brings_it_back(ctx: &Ctx) -> Outcome {
    let mut agent = Agent::start(ctx, REVOKE, USER)?;
    agent.expect_all(&allowed(ctx), "OK", "before the revocation")?;
    let file = p(ctx, "ws/loop.txt");
    // A hundred appends a second, each its own open: a loop that spins faster, once revoked,
    // floods the emulated VM's one CPU with denials and events.
    let script = format!(
        "import os, time\nwhile True:\n    try:\n        fd = os.open({file:?}, \
         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)\n        os.write(fd, b'x\\n')\n        \
         os.close(fd)\n    except OSError:\n        pass\n    time.sleep(0.01)\n"
    );
    let looping = harness::Reaped(
        ctx.labelled_command_as(REVOKE, USER)
            .args(["/usr/bin/python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the loop")?,
    );
    grows(&file, 0, "the loop runs before the revocation")?;

    let out = actgate_ok(ctx, &["revoke", REVOKE, "--reason", "test: runaway loop"])?;
    let at_return = file_len(&file);
    if !out.contains("revoked") {
        return Err(NotPassed::Fail(format!("actgate revoke said: {out}")));
    }
    thread::sleep(Duration::from_millis(500));
    let settled = file_len(&file);
    if settled > at_return + 2 {
        return Err(NotPassed::Fail(format!(
            "the loop appended {} bytes after actgate revoke returned",
            settled - at_return
        )));
    }
    thread::sleep(Duration::from_secs(1));
    expect_eq!(file_len(&file), settled, "the loop's file a second later");
    agent.expect_all(&allowed(ctx), "EPERM", "while the label is revoked")?;

    let marker = p(ctx, "exec-while-revoked");
    let out = ctx.labelled(REVOKE, &["/usr/bin/touch", &marker]);
    harness::expect_refused(
        &out,
        Path::new(&marker),
        "revoked",
        "actgate exec into a revoked label",
    )?;
    expect_eq!(
        revocation(ctx, REVOKE)?,
        Some(("manual".to_string(), "test: runaway loop".to_string())),
        "the revocation in actgate status --json"
    );
    harness::expect_status_mode(ctx, REVOKE, "REVOKED")?;
    let body = scrape()?;
    expect_eq!(revoked_gauge(&body, REVOKE), 1.0, "actgate_label_revoked");
    expect_eq!(
        revocations(&body, REVOKE, "manual"),
        1.0,
        "actgate_revocations_total, manual"
    );
    expect_denial_event(ctx, REVOKE, "revoked")?;

    let out = actgate_ok(ctx, &["restore", REVOKE])?;
    if !out.contains("restored") {
        return Err(NotPassed::Fail(format!("actgate restore said: {out}")));
    }
    agent.expect_all(&allowed(ctx), "OK", "after actgate restore")?;
    grows(&file, settled, "the loop runs again after actgate restore")?;
    expect_eq!(
        revoked_gauge(&scrape()?, REVOKE),
        0.0,
        "actgate_label_revoked after restore"
    );
    expect_eq!(revocation(ctx, REVOKE)?, None, "status after restore");
    drop(looping);
    agent.stop()?;
    Ok(())
}

/// Waits up to 10 s for a denial event of `label`'s nobody with `reason`.
fn expect_denial_event(ctx: &Ctx, label: &str, reason: &str) -> Outcome {
    let events = ctx.path("events.jsonl");
    let found = || {
        fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v.get("label").and_then(Value::as_str) == Some(label)
                    && v.get("verdict").and_then(Value::as_str) == Some("deny")
                    && v.get("reason").and_then(Value::as_str) == Some(reason)
                    && v.get("uid").and_then(Value::as_u64) == Some(NOBODY)
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !found() {
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "no denial of {label} with reason {reason} for uid {NOBODY} in {}",
                events.display()
            )));
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// A revocation holds across a reload and a daemon restart (and while no daemon runs), until
/// `actgate restore`.
fn revocation_outlasts_reload_and_restart(ctx: &Ctx, f: &mut Cascade) -> Outcome {
    let mut agent = Agent::start(ctx, REVOKE, USER)?;
    let before = revocations(&scrape()?, REVOKE, "manual");
    actgate_ok(ctx, &["revoke", REVOKE, "--reason", "across restarts"])?;
    agent.expect_all(&allowed(ctx), "EPERM", "after revoke")?;

    reload(f)?;
    agent.expect_all(&allowed(ctx), "EPERM", "after a reload")?;

    let mut old = f.daemon.take().context("no daemon runs")?;
    old.keep_enforcement();
    let status = old.stop()?;
    expect_eq!(status.code(), Some(0), "exit code of the daemon on SIGTERM");
    agent.expect_all(&allowed(ctx), "EPERM", "while no daemon runs")?;
    f.daemon = Some(Daemon::adopt(
        &ctx.actgate,
        &f.policies,
        &ctx.path("events.jsonl"),
        &ctx.path("daemon.log"),
        &[],
        harness::READY_WITHIN,
    )?);
    agent.expect_all(&allowed(ctx), "EPERM", "after a daemon restart")?;
    expect_eq!(
        revocation(ctx, REVOKE)?,
        Some(("manual".to_string(), "across restarts".to_string())),
        "the revocation in status after the restart"
    );
    let body = scrape()?;
    expect_eq!(revoked_gauge(&body, REVOKE), 1.0, "actgate_label_revoked");
    expect_eq!(
        revocations(&body, REVOKE, "manual"),
        before + 1.0,
        "actgate_revocations_total, manual, after the restart"
    );
    actgate_ok(ctx, &["restore", REVOKE])?;
    agent.expect_all(&allowed(ctx), "OK", "after restore")?;
    agent.stop()?;
    Ok(())
}

/// Rewrites the policy file unchanged, sends SIGHUP and waits for the reload to succeed.
fn reload(f: &Cascade) -> Outcome {
    let (ok, failed) = harness::reloads()?;
    f.daemon()?.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now_ok, now_failed) = harness::reloads()?;
        expect_eq!(now_failed, failed, "failed reloads");
        if now_ok > ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail("no reload within 60 s of SIGHUP".into()));
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// `actgate revoke --kill` ends the label's processes; an unknown label is an error.
fn revoke_kill_ends_the_labels_processes(ctx: &Ctx) -> Outcome {
    let mut sleeper = harness::Reaped(
        ctx.spawn_labelled_sh_as(REVOKE, USER, "sleep 600")
            .context("starting a labelled sleep")?,
    );
    let cgroup = format!("/sys/fs/cgroup/actgate/{REVOKE}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_count(&cgroup) == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let out = actgate_ok(ctx, &["revoke", REVOKE, "--kill"])?;
    if !out.contains("ended") {
        return Err(NotPassed::Fail(format!(
            "actgate revoke --kill said: {out}"
        )));
    }
    let exited = harness::wait_exit(&mut sleeper.0, Duration::from_secs(10))?;
    expect_eq!(exited.is_some(), true, "the labelled sleep ended");
    expect_eq!(process_count(&cgroup), 0, "processes left in {cgroup}");
    actgate_ok(ctx, &["restore", REVOKE])?;
    let (code, text) = actgate(ctx, &["revoke", "no-such-label"])?;
    expect_eq!(
        code,
        Some(1),
        "exit code of revoking an unknown label ({text})"
    );
    Ok(())
}

/// Makes `n` files under `dir`, writable by all.
fn make_files(dir: &str, n: usize) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
    for i in 0..n {
        fs::write(format!("{dir}/f{i:04}"), "x")?;
    }
    Ok(())
}

/// Every directory of the tree at `dir`, `dir` included.
fn tree(dir: &str) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(dir)];
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        i += 1;
    }
    dirs
}

/// Files (not directories) in the tree at `dir`.
fn count_files(dir: &str) -> usize {
    tree(dir)
        .iter()
        .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .count()
}

/// Processes in the cgroup tree at `dir`.
fn process_count(dir: &str) -> usize {
    tree(dir)
        .iter()
        .map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .map(|s| s.lines().count())
                .unwrap_or(0)
        })
        .sum()
}

/// `files.delete` denies removing names under `ws/keep/**`: unlink, rmdir, renaming a file
/// away and renaming onto an existing file there are EPERM and change nothing, while the same
/// operations elsewhere in the writable workspace, and a rename to a new name under keep/,
/// still work. Each refusal is counted as `file_delete`.
fn files_delete_rules_hold(ctx: &Ctx) -> Outcome {
    let keep = |n: &str| p(ctx, &format!("ws/keep/{n}"));
    let ws = |n: &str| p(ctx, &format!("ws/{n}"));
    let setup = || -> Result<()> {
        for f in ["a", "b", "c"] {
            for (path, text) in [(keep(f), "keep\n"), (ws(f), "ws\n")] {
                harness::write(Path::new(&path), text)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
            }
        }
        for path in [keep("d"), ws("d")] {
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o777))?;
        }
        Ok(())
    };
    setup()?;
    let body = scrape()?;
    let before = harness::decisions(&body, DELETE, "file_delete", "deny");
    let cases: [(&[&str], &str); 8] = [
        (&["unlink", &keep("a")], "EPERM"),
        (&["rmdir", &keep("d")], "EPERM"),
        (&["rename", &keep("b"), &ws("moved")], "EPERM"),
        (&["rename", &ws("a"), &keep("c")], "EPERM"),
        (&["unlink", &ws("b")], "OK"),
        (&["rmdir", &ws("d")], "OK"),
        (&["rename", &ws("c"), &keep("new")], "OK"),
        (&["rename", &ws("a"), &ws("renamed")], "OK"),
    ];
    for (args, want) in cases {
        expect_eq!(attempt(ctx, DELETE, args), want, "{args:?} as {USER}");
    }
    for f in ["a", "b", "c"] {
        expect_eq!(
            fs::read_to_string(keep(f)).unwrap_or_default(),
            "keep\n",
            "contents of keep/{f}"
        );
    }
    expect_eq!(
        Path::new(&keep("d")).is_dir(),
        true,
        "keep/d is still there"
    );
    expect_eq!(
        harness::decisions(&scrape()?, DELETE, "file_delete", "deny") - before,
        4.0,
        "file_delete denials counted"
    );
    Ok(())
}

/// The budget's counts: allowed and denied deletions and over-budget refusals of `label`.
fn delete_counts(label: &str) -> Result<(f64, f64, f64)> {
    let body = scrape()?;
    Ok((
        harness::decisions(&body, label, "file_delete", "allow"),
        harness::decisions(&body, label, "file_delete", "deny"),
        harness::metric(
            &body,
            &series(
                "actgate_budget_exceeded_total",
                &[("label", label), ("action", "file_delete")],
            ),
        ),
    ))
}

/// Runs `procs` labelled `rm -rf` at once over `procs` trees that hold 1,000 files between them,
/// against a budget of 100 deletions: exactly 100 files go, 900 stay, 100 deletions are counted
/// allowed, and every refused one is counted over budget.
fn budget_stops_rm_rf(ctx: &Ctx, label: &str, procs: usize) -> Outcome {
    let root = p(ctx, &format!("ws/tree-{label}"));
    for i in 0..procs {
        make_files(&format!("{root}/t{i}"), 1000 / procs)?;
    }
    let (allow0, deny0, over0) = delete_counts(label)?;
    let mut children = Vec::new();
    for i in 0..procs {
        children.push(harness::Reaped(
            ctx.spawn_labelled_sh_as(label, USER, &format!("rm -rf {root}/t{i} 2>/dev/null"))
                .context("starting rm -rf")?,
        ));
    }
    for mut child in children {
        if harness::wait_exit(&mut child.0, Duration::from_secs(300))?.is_none() {
            return Err(NotPassed::Fail("rm -rf did not finish within 300 s".into()));
        }
    }
    expect_eq!(
        count_files(&root),
        900,
        "files left of 1,000 ({procs} rm -rf)"
    );
    let (allow, deny, over) = delete_counts(label)?;
    expect_eq!(
        allow - allow0,
        100.0,
        "file_delete allowed ({procs} rm -rf)"
    );
    expect_eq!(
        over - over0,
        deny - deny0,
        "over-budget refusals against file_delete denials ({procs} rm -rf)"
    );
    if over - over0 < 900.0 {
        return Err(NotPassed::Fail(format!(
            "only {} deletions were refused over budget; 900 files were left",
            over - over0
        )));
    }
    expect_denial_event(ctx, label, "budget")?;
    Ok(())
}

fn budget_of_100_deletions_stops_rm_rf_of_1000_files(ctx: &Ctx) -> Outcome {
    budget_stops_rm_rf(ctx, BUDGET, 1)
}

fn budget_holds_exactly_for_4_processes_at_once(ctx: &Ctx) -> Outcome {
    budget_stops_rm_rf(ctx, BUDGET4, 4)
}

/// `revoke_after: {denials: 5}`: four denials leave the label working, the fifth revokes it
/// (trigger breaker), and `actgate restore` lifts that.
fn breaker_trips_exactly_at_its_threshold(ctx: &Ctx) -> Outcome {
    let mut agent = Agent::start(ctx, BREAKER, USER)?;
    let secret = p(ctx, "secret.txt");
    for i in 1..=4 {
        expect_eq!(agent.act("read", &secret)?, "EPERM", "denied read {i}");
        expect_eq!(
            agent.act("read", &p(ctx, "data.txt"))?,
            "OK",
            "an allowed read after {i} denials"
        );
    }
    expect_eq!(revocation(ctx, BREAKER)?, None, "status after 4 denials");
    expect_eq!(agent.act("read", &secret)?, "EPERM", "denied read 5");
    revoked_until_restored(ctx, agent, BREAKER, "breaker")
}

/// The agent of `label` is revoked by `trigger`, as its actions, status and metrics show, until
/// `actgate restore`.
fn revoked_until_restored(ctx: &Ctx, mut agent: Agent, label: &str, trigger: &str) -> Outcome {
    agent.expect_all(
        &allowed(ctx),
        "EPERM",
        &format!("once {trigger} revoked the label"),
    )?;
    let (by, _) = revocation(ctx, label)?.context("status shows no revocation")?;
    expect_eq!(by, trigger, "the revocation's trigger");
    let body = scrape()?;
    expect_eq!(
        revocations(&body, label, trigger),
        1.0,
        "{trigger} revocations"
    );
    expect_eq!(revoked_gauge(&body, label), 1.0, "actgate_label_revoked");
    actgate_ok(ctx, &["restore", label])?;
    agent.expect_all(&allowed(ctx), "OK", "after restore")?;
    agent.stop()?;
    Ok(())
}

/// A connect budget of 3 with `then: revoke`: the fourth connect is refused and revokes the
/// label (trigger budget).
fn budget_then_revoke_revokes_the_label(ctx: &Ctx) -> Outcome {
    let mut agent = Agent::start(ctx, BUDGET_REVOKE, USER)?;
    for i in 1..=3 {
        expect_eq!(agent.act("connect", LISTEN)?, "OK", "connect {i}");
    }
    expect_eq!(agent.act("connect", LISTEN)?, "EPERM", "connect 4");
    revoked_until_restored(ctx, agent, BUDGET_REVOKE, "budget")
}

/// `actgate check` reports each kind of bad budget or breaker input at its line and column.
fn check_rejects_bad_budgets(ctx: &Ctx) -> Outcome {
    let bad = ctx.path("cascade/bad.yaml");
    harness::write(
        &bad,
        "name: bad
labels: [bad]
budgets:
  - {action: signal, max: 1, per: 1m}
  - {action: exec, max: 0, per: 1m}
  - {action: connect, max: 5, per: 10}
  - {action: file_read, max: 5, per: 48h}
  - {action: listen, max: 5, per: 1m, then: kill}
  - {action: file_delete, max: 5, per: 1m, limit: 3}
revoke_after: {denials: 5, within: 500ms}
",
    )?;
    let (code, text) = actgate(ctx, &["check", &bad.display().to_string()])?;
    expect_eq!(code, Some(1), "exit code of check on bad budgets");
    let file = bad.display().to_string();
    for (pos, says) in [
        ("4:14", "`signal`"),
        ("5:25", "`0`"),
        ("6:36", "`10`"),
        ("7:38", "`48h`"),
        ("8:45", "`kill`"),
        ("9:44", "`limit`"),
        ("10:36", "`500ms`"),
    ] {
        let prefix = format!("{file}:{pos}:");
        if !text
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(says))
        {
            return Err(NotPassed::Fail(format!(
                "no problem at {pos} naming {says}:\n{text}"
            )));
        }
    }
    Ok(())
}

fn stop(f: Cascade) -> Result<()> {
    match f.daemon {
        Some(d) => d.stop_cleanly(),
        None => Ok(()),
    }
}

pub fn suite() -> Suite<Cascade> {
    Suite {
        name: "cascade",
        start,
        cases: vec![
            case!(revoke_stops_a_running_loop_and_restore_brings_it_back),
            case!(revocation_outlasts_reload_and_restart, fixture),
            case!(revoke_kill_ends_the_labels_processes),
            case!(files_delete_rules_hold),
            case!(budget_of_100_deletions_stops_rm_rf_of_1000_files),
            case!(budget_holds_exactly_for_4_processes_at_once),
            case!(breaker_trips_exactly_at_its_threshold),
            case!(budget_then_revoke_revokes_the_label),
            case!(check_rejects_bad_budgets),
        ],
        stop,
        stop_test: Some("cascade_daemon_stops_cleanly"),
    }
}
