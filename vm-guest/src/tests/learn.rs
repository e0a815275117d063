//! Issue 17: `actgate learn` writes, from one run of a workload, a policy under which the same
//! run works again and nothing else does. A scripted workload (build a C program and run it,
//! write results in the workspace, read a configuration file, talk to a loopback server) is
//! learnt as root and as an unprivileged user; the learnt policy is installed, the same
//! workload runs under it, and variants that read a credential, write outside the workspace
//! or connect to another port are refused exactly there. Learning for a duration and the
//! refusals of `actgate learn` are covered too.
//!
//! The workspaces are outside /tmp and /var/tmp: a learnt policy allows those as whole trees,
//! so a write "outside the workspace" there would be allowed.

mod workload;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use self::workload::{Extra, LineServer, SCRIPT};
use super::{Enforcing, Suite, mounts::Mount, telemetry::events::read_events};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, scrape},
};

/// A tmpfs of the suite's own, holding each user's place (the unprivileged user's home).
/// /home in the VM is virtme-ng's writable overlay, so the mount point can be made there.
const LEARN_DIR: &str = "/home/actgate-learn";
/// The unprivileged user the suite adds: `nobody`'s home doesn't exist, and the credentials a
/// learnt policy denies are in the home of the run's user.
const USER_NAME: &str = "actlearn";
const USER_ID: u32 = 64017;
/// The policy that names the user's label before it is learnt: it denies every write and
/// connect, which the workload needs, so the workload only works while learning overrides it.
const PRIOR_POLICY: &str = "vmtest-learn-prior";
const IDLE: &str = "learn-idle";
/// Labels of the refusals: each must end up no label at all.
const USAGE: &str = "learn-usage";
const NO_DAEMON: &str = "learn-nodaemon";
/// A control socket no daemon listens on.
const NO_SOCKET: &str = "/nonexistent/actgate.sock";
/// How long a reload may take to show in `actgate status`.
const RELOAD_WITHIN: Duration = Duration::from_secs(60);

/// Who runs the workload, under which label, and where.
struct Who {
    user: &'static str,
    uid: u32,
    label: &'static str,
    /// A credential the learnt policy denies though the run never read it, relative to the
    /// user's place or absolute (`Path::join` keeps an absolute path as it is). Root's is the
    /// password hashes: its home, /root, is the host's and read-only in the VM.
    secret: &'static str,
    /// The policy naming the label before learning, if any.
    prior: Option<&'static str>,
}

const ROOT: Who = Who {
    user: "root",
    uid: 0,
    label: "learn-root",
    secret: "/etc/shadow",
    prior: None,
};

const USER: Who = Who {
    user: USER_NAME,
    uid: USER_ID,
    label: "learn-user",
    secret: ".ssh/id_rsa",
    prior: Some(PRIOR_POLICY),
};

impl Who {
    /// The user's directories: the unprivileged user's home, a directory of root's own.
    fn place(&self) -> PathBuf {
        Path::new(LEARN_DIR).join(self.user)
    }

    /// The workspace: the working directory of every run.
    fn ws(&self) -> PathBuf {
        self.place().join("ws")
    }

    fn config(&self) -> PathBuf {
        self.place().join(".config/tool/config.toml")
    }

    /// A file in a directory the user owns, outside the workspace.
    fn elsewhere(&self) -> PathBuf {
        self.place().join("elsewhere/note.txt")
    }

    fn secret(&self) -> PathBuf {
        self.place().join(self.secret)
    }

    /// Where `actgate learn --out` writes the policy.
    fn learnt_file(&self, ctx: &Ctx) -> PathBuf {
        ctx.path(&format!("learn/{}.yaml", self.label))
    }

    /// What `label_state` says of the label when it isn't learning.
    fn state_without_learning(&self) -> String {
        self.prior
            .map_or_else(|| NO_LABEL.to_owned(), |p| format!("{p} enforce"))
    }
}

pub struct Fixture {
    enforcing: Enforcing,
    /// The server the workload talks to, and the one a variant tries.
    allowed: LineServer,
    other: LineServer,
    /// Why the workload can't run in this VM, if it can't.
    tools: Result<(), String>,
    /// Each label's learnt policy, or why learning it failed: learnt once, by the first test
    /// that needs it.
    learnt: BTreeMap<&'static str, Result<String, String>>,
}

impl Fixture {
    fn tools(&self) -> Outcome {
        self.tools
            .clone()
            .map_err(|why| NotPassed::Skip(format!("the workload can't run in this VM: {why}")))
    }
}

fn policies(ctx: &Ctx) -> PathBuf {
    ctx.path("learn/policies")
}

fn start(ctx: &Ctx) -> Result<Fixture> {
    let mount = Mount::tmpfs(Path::new(LEARN_DIR))?;
    add_user()?;
    let (allowed, other) = (LineServer::start()?, LineServer::start()?);
    for who in [&ROOT, &USER] {
        prepare(who, allowed.port())?;
    }
    let tools = tools(ctx);
    let prior = format!(
        "name: {PRIOR_POLICY}\nlabels: [{}]\nmode: enforce\nfiles:\n  write:\n    default: deny\nnetwork:\n  connect:\n    default: deny\n",
        USER.label
    );
    harness::write(&policies(ctx).join(format!("{}.yaml", USER.label)), &prior)?;
    let daemon = Daemon::shared(ctx, &policies(ctx))?;
    Ok(Fixture {
        enforcing: Enforcing {
            daemon,
            mounts: vec![mount],
        },
        allowed,
        other,
        tools,
        learnt: BTreeMap::new(),
    })
}

/// Adds the unprivileged user to the VM's passwd and group files (virtme-ng's overlay of
/// /etc, thrown away with the VM). Not `useradd`: virtme-ng bind-mounts a generated
/// /etc/shadow, which useradd can't replace (a rename onto a mount point fails with EBUSY).
fn add_user() -> Result<()> {
    let home = USER.place();
    let entry = format!(
        "{USER_NAME}:x:{USER_ID}:{USER_ID}:actgate learn tests:{}:/bin/sh",
        home.display()
    );
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    if passwd.lines().any(|l| l == entry) {
        return Ok(());
    }
    let uid = USER_ID.to_string();
    if let Some(taken) = passwd.lines().find(|l| {
        l.starts_with(&format!("{USER_NAME}:")) || l.split(':').nth(2) == Some(uid.as_str())
    }) {
        bail!("can't add the user {USER_NAME} ({USER_ID}): /etc/passwd already has `{taken}`");
    }
    append("/etc/passwd", &entry)?;
    append("/etc/group", &format!("{USER_NAME}:x:{USER_ID}:"))
}

fn append(path: &str, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    writeln!(f, "{line}").with_context(|| format!("appending to {path}"))
}

/// The user's place, all of it the user's: the workspace with the program's source and the
/// script, the configuration, a directory outside the workspace, and the secret (0600).
fn prepare(who: &Who, port: u16) -> Result<()> {
    let place = who.place();
    let ws = who.ws();
    harness::write(&ws.join("hello.c"), workload::HELLO_C)?;
    harness::write(&ws.join(SCRIPT), &workload::script(&who.config(), port))?;
    harness::write(&who.config(), workload::CONFIG)?;
    fs::create_dir_all(who.elsewhere().parent().context("a file has a directory")?)?;
    let secret = who.secret();
    if secret.starts_with(&place) {
        harness::write(
            &secret,
            "-----BEGIN OPENSSH PRIVATE KEY-----\n(not a key: the learn suite's)\n",
        )?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
        if let Some(dir) = secret.parent() {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    let owner = format!("{0}:{0}", who.uid);
    let chown = Command::new("chown")
        .args(["-R", &owner])
        .arg(&place)
        .status()
        .context("starting chown")?;
    if !chown.success() {
        bail!("chown -R {owner} {} failed", place.display());
    }
    Ok(())
}

/// Whether this VM can run the workload: bash (its connect step) and a C compiler that
/// builds a program that runs, tried unlabelled.
fn tools(ctx: &Ctx) -> Result<(), String> {
    let dir = ctx.path("learn/cc-check");
    let src = dir.join("hello.c");
    harness::write(&src, workload::HELLO_C).map_err(|e| format!("{e:#}"))?;
    let ran = |prog: &str, args: &[&str]| match Command::new(prog)
        .args(args)
        .current_dir(&dir)
        .output()
    {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{prog} is missing ({e})")),
    };
    ran("bash", &["-c", "true"])?;
    ran("cc", &["-o", "hello", "hello.c"])?;
    let said = ran(&dir.join("hello").display().to_string(), &[])?;
    if said != "hello from build\n" {
        return Err(format!("the program cc built said {said:?}"));
    }
    Ok(())
}

/// `actgate learn --label LABEL`, for the caller to add the rest.
fn learn_cmd(ctx: &Ctx, label: &str) -> Command {
    let mut cmd = Command::new(&ctx.actgate);
    cmd.args(["learn", "--label", label]);
    cmd
}

/// What the label is in `actgate status`: `POLICY MODE`, or `NO_LABEL`.
const NO_LABEL: &str = "no label";

fn label_state(ctx: &Ctx, label: &str) -> Result<String> {
    let text = |s: &Value, key: &str| s.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
    Ok(match harness::label_status(ctx, label)? {
        Some(s) => format!("{} {}", text(&s, "policy"), text(&s, "mode")),
        None => NO_LABEL.to_owned(),
    })
}

fn expect_label_state(ctx: &Ctx, label: &str, want: &str, when: &str) -> Outcome {
    let got = harness::eventually_within(RELOAD_WITHIN, want, || label_state(ctx, label))?;
    expect_eq!(got, want, "{label} in actgate status {when}");
    Ok(())
}

/// A failure of `outcome`, with `evidence` (the policy, what a command said) after its reason.
fn with_evidence<T>(
    outcome: Result<T, NotPassed>,
    evidence: impl FnOnce() -> String,
) -> Result<T, NotPassed> {
    outcome.map_err(|e| match e {
        NotPassed::Fail(why) => NotPassed::Fail(format!("{why}\n{}", evidence())),
        skip => skip,
    })
}

/// `actgate check FILE` accepts the learnt policy, which is named after `label`, names it
/// and enforces.
fn expect_valid_policy(ctx: &Ctx, file: &Path, label: &str) -> Outcome {
    let out = Command::new(&ctx.actgate)
        .arg("check")
        .arg(file)
        .output()
        .context("running actgate check")?;
    expect_eq!(
        out.status.code(),
        Some(0),
        "exit code of actgate check {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(file).context("reading the learnt policy")?;
    for line in [
        format!("name: {label}"),
        format!("labels: [{label}]"),
        "mode: enforce".to_owned(),
    ] {
        if !text.lines().any(|l| l.trim_end() == line) {
            return Err(NotPassed::Fail(format!(
                "the learnt policy has no line `{line}`"
            )));
        }
    }
    Ok(())
}

/// The learnt policy of `who`, learnt and installed by the first test that needs it.
fn learnt(ctx: &Ctx, fx: &mut Fixture, who: &Who) -> Result<String, NotPassed> {
    if let Some(done) = fx.learnt.get(who.label) {
        return done.clone().map_err(|why| {
            NotPassed::Fail(format!(
                "learning {} failed in an earlier test (its first as {}): {}",
                who.label,
                who.user,
                why.lines().next().unwrap_or_default()
            ))
        });
    }
    let result = learn_and_install(ctx, fx, who);
    match &result {
        Ok(policy) => {
            fx.learnt.insert(who.label, Ok(policy.clone()));
        }
        Err(NotPassed::Fail(why)) => {
            fx.learnt.insert(who.label, Err(why.clone()));
        }
        Err(NotPassed::Skip(_)) => {}
    }
    result
}

/// `actgate learn --label L --user U --out FILE -- /bin/sh workload.sh` from the workspace:
/// exit 0, a policy `actgate check` accepts that lists the connect, the label back as it was;
/// then the policy installed in place of any the label had, and loaded.
fn learn_and_install(ctx: &Ctx, fx: &Fixture, who: &Who) -> Result<String, NotPassed> {
    let file = who.learnt_file(ctx);
    let _ = fs::remove_file(&file);
    reset(who)?;
    let out = workload::run(
        ctx,
        &format!("{}-learning", who.label),
        learn_cmd(ctx, who.label)
            .args(["--user", who.user, "--out"])
            .arg(&file)
            .args(["--", "/bin/sh", SCRIPT])
            .current_dir(who.ws()),
    )?;
    let policy = fs::read_to_string(&file).unwrap_or_default();
    let checked = (|| -> Outcome {
        expect_eq!(
            out.status.code(),
            Some(0),
            "exit code of actgate learn as {}",
            who.user
        );
        if policy.is_empty() {
            return Err(NotPassed::Fail(format!(
                "actgate learn wrote no policy to {}",
                file.display()
            )));
        }
        expect_valid_policy(ctx, &file, who.label)?;
        let connect = format!("127.0.0.1:{}", fx.allowed.port());
        if !policy.contains(&connect) {
            return Err(NotPassed::Fail(format!(
                "the learnt policy doesn't list the connect to {connect}"
            )));
        }
        expect_label_state(
            ctx,
            who.label,
            &who.state_without_learning(),
            "once learning ended",
        )
    })();
    with_evidence(checked, || {
        format!(
            "actgate learn: {}--- the learnt policy ---\n{policy}",
            workload::shown(&out)
        )
    })?;
    install(ctx, fx, who.label, &policy)?;
    Ok(policy)
}

/// Makes `policy` the file `LABEL.yaml` of the daemon's directory (renamed into place, so no
/// reload reads half of it), sends SIGHUP, and waits for the label to be enforced by it.
fn install(ctx: &Ctx, fx: &Fixture, label: &str, policy: &str) -> Outcome {
    let dir = &fx.enforcing.daemon.policies;
    let new = dir.join(format!("{label}.yaml.new"));
    harness::write(&new, policy)?;
    fs::rename(&new, dir.join(format!("{label}.yaml"))).context("installing the policy")?;
    let daemon = &fx.enforcing.daemon;
    daemon.signal(libc::SIGHUP);
    with_evidence(
        expect_label_state(ctx, label, &format!("{label} enforce"), "after a reload"),
        || {
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "the daemon's log ends:\n{}\n--- the learnt policy ---\n{policy}",
                tail.join("\n")
            )
        },
    )
}

/// Removes what a run of the workload leaves, so that every run does exactly what the
/// learning run did.
fn reset(who: &Who) -> Result<()> {
    for dir in ["build", "out"] {
        match fs::remove_dir_all(who.ws().join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("cleaning the workspace");
            }
            _ => {}
        }
    }
    let _ = fs::remove_file(who.elsewhere());
    Ok(())
}

/// `actgate exec --user U --label L -- /bin/sh workload.sh [EXTRA]` from the workspace.
fn run_workload(ctx: &Ctx, who: &Who, extra: Option<&Extra>) -> Result<Output> {
    reset(who)?;
    let args: Vec<String> = extra.map(|e| e.args().to_vec()).unwrap_or_default();
    let step = args.first().map_or("usual", String::as_str);
    workload::run(
        ctx,
        &format!("{}-{step}", who.label),
        ctx.labelled_command_as(who.label, who.user)
            .args(["/bin/sh", SCRIPT])
            .args(&args)
            .current_dir(who.ws()),
    )
}

/// The denials of `label` per action in a /metrics scrape.
fn denials(body: &str, label: &str) -> BTreeMap<String, f64> {
    let prefix = format!("actgate_decisions_total{{label=\"{label}\",action=\"");
    body.lines()
        .filter_map(|l| {
            let (action, rest) = l.strip_prefix(&prefix)?.split_once('"')?;
            let value = rest
                .strip_prefix(",verdict=\"deny\"}")?
                .trim()
                .parse()
                .ok()?;
            Some((action.to_owned(), value))
        })
        .collect()
}

/// The actions whose denials of `label` grew between two scrapes, and by how much.
fn new_denials(before: &str, after: &str, label: &str) -> BTreeMap<String, f64> {
    let before = denials(before, label);
    denials(after, label)
        .into_iter()
        .map(|(action, n)| {
            let grew = n - before.get(&action).copied().unwrap_or(0.0);
            (action, grew)
        })
        .filter(|(_, grew)| *grew > 0.0)
        .collect()
}

/// The denial events of `label` after the first `skip` lines of the events file, as
/// `ACTION TARGET` lines.
fn denial_events(fx: &Fixture, skip: usize, label: &str) -> String {
    let events = read_events(&fx.enforcing.daemon.events).unwrap_or_default();
    let lines: Vec<String> = events
        .iter()
        .skip(skip)
        .filter(|e| e["label"] == label && e["verdict"] == "deny")
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap_or("?"),
                e["target"].as_str().unwrap_or("?")
            )
        })
        .collect();
    lines.join("\n")
}

/// The round trip: the workload learnt, then run again under the learnt policy, works, and
/// nothing of it is denied.
fn runs_again(ctx: &Ctx, fx: &mut Fixture, who: &Who) -> Outcome {
    fx.tools()?;
    let policy = learnt(ctx, fx, who)?;
    let (body, events) = (scrape()?, read_events(&fx.enforcing.daemon.events)?.len());
    let out = run_workload(ctx, who, None)?;
    let checked = (|| -> Outcome {
        expect_eq!(
            out.status.code(),
            Some(0),
            "exit code of the workload under the learnt policy as {}",
            who.user
        );
        let said = workload::said(&who.config(), fx.allowed.port()) + "done\n";
        expect_eq!(
            String::from_utf8_lossy(&out.stdout),
            said,
            "what the workload said"
        );
        expect_eq!(
            new_denials(&body, &scrape()?, who.label),
            BTreeMap::new(),
            "denials of {} during the run",
            who.label
        );
        Ok(())
    })();
    with_evidence(checked, || {
        format!(
            "the workload: {}--- denials of {} ---\n{}\n--- the learnt policy ---\n{policy}",
            workload::shown(&out),
            who.label,
            denial_events(fx, events, who.label)
        )
    })
}

/// A variant of the workload under the learnt policy: its usual steps work, and the extra
/// one fails with EPERM, which the daemon counts as a denial of that action and of no other.
fn refuses(ctx: &Ctx, fx: &mut Fixture, who: &Who, extra: Extra) -> Outcome {
    fx.tools()?;
    let policy = learnt(ctx, fx, who)?;
    let (body, events) = (scrape()?, read_events(&fx.enforcing.daemon.events)?.len());
    let other = fx.other.accepted();
    let out = run_workload(ctx, who, Some(&extra))?;
    let checked = (|| -> Outcome {
        expect_eq!(
            out.status.code(),
            Some(1),
            "exit code of the workload with `{extra}` as {}",
            who.user
        );
        expect_eq!(
            String::from_utf8_lossy(&out.stdout),
            workload::said(&who.config(), fx.allowed.port()),
            "what the workload said (its usual steps all work)"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        expect_eq!(
            stderr.lines().last().unwrap_or_default(),
            extra.failed(),
            "the workload's last line on stderr"
        );
        let named = extra.named();
        if !stderr
            .lines()
            .any(|l| l.contains(&named) && l.ends_with(": Operation not permitted"))
        {
            return Err(NotPassed::Fail(format!(
                "no error `…{named}…: Operation not permitted` on the workload's stderr"
            )));
        }
        let grew = new_denials(&body, &scrape()?, who.label);
        let actions: Vec<&str> = grew.keys().map(String::as_str).collect();
        expect_eq!(
            actions,
            vec![extra.action()],
            "actions of {} whose denials grew during the run ({grew:?})",
            who.label
        );
        match &extra {
            Extra::Write(path) => expect_eq!(path.exists(), false, "{} written", path.display()),
            Extra::Connect(port) => expect_eq!(
                fx.other.accepted(),
                other,
                "connections the server on port {port} accepted"
            ),
            Extra::Read(_) => {}
        }
        Ok(())
    })();
    with_evidence(checked, || {
        format!(
            "the workload: {}--- denials of {} ---\n{}\n--- the learnt policy ---\n{policy}",
            workload::shown(&out),
            who.label,
            denial_events(fx, events, who.label)
        )
    })
}

fn learn_without_command_or_duration_is_refused(ctx: &Ctx) -> Outcome {
    let file = ctx.path("learn/usage.yaml");
    let _ = fs::remove_file(&file);
    let out = workload::run(ctx, "usage", learn_cmd(ctx, USAGE).arg("--out").arg(&file))?;
    let checked = (|| -> Outcome {
        let code = out.status.code();
        if !matches!(code, Some(2 | 125)) {
            return Err(NotPassed::Fail(format!(
                "exit code of actgate learn without a command or --duration: expected 2 (a usage \
                 error) or 125, got {code:?}"
            )));
        }
        expect_eq!(file.exists(), false, "{} written", file.display());
        if !String::from_utf8_lossy(&out.stderr).contains("--duration") {
            return Err(NotPassed::Fail(
                "the refusal doesn't name --duration, which would make it work".into(),
            ));
        }
        expect_label_state(ctx, USAGE, NO_LABEL, "after the refusal")
    })();
    with_evidence(checked, || {
        format!("actgate learn: {}", workload::shown(&out))
    })
}

fn learn_without_a_reachable_daemon_exits_125_and_writes_nothing(ctx: &Ctx) -> Outcome {
    let file = ctx.path("learn/no-daemon.yaml");
    let marker = ctx.path("learn/no-daemon-ran");
    let touch = marker.display().to_string();
    let tails: [(&str, Vec<&str>); 2] = [
        (
            "with a command",
            vec!["--user", "root", "--", "/usr/bin/touch", &touch],
        ),
        ("for a duration", vec!["--duration", "1s"]),
    ];
    for (what, tail) in tails {
        let _ = fs::remove_file(&file);
        let out = workload::run(
            ctx,
            "no-daemon",
            learn_cmd(ctx, NO_DAEMON)
                .args(["--socket", NO_SOCKET, "--out"])
                .arg(&file)
                .args(&tail),
        )?;
        let what = format!("actgate learn --socket {NO_SOCKET} {what}");
        harness::expect_refused(&out, &marker, NO_SOCKET, &what)?;
        expect_eq!(file.exists(), false, "{} written by {what}", file.display());
    }
    Ok(())
}

fn learn_for_a_duration_with_nothing_labelled_writes_a_policy_check_accepts(ctx: &Ctx) -> Outcome {
    let started = Instant::now();
    let out = workload::run(ctx, "idle", learn_cmd(ctx, IDLE).args(["--duration", "3s"]))?;
    let took = started.elapsed();
    // Without --out the policy is on stdout, and only the policy: the summary is on stderr.
    let file = ctx.path("learn/idle.yaml");
    harness::write(&file, &String::from_utf8_lossy(&out.stdout))?;
    let checked = (|| -> Outcome {
        expect_eq!(
            out.status.code(),
            Some(0),
            "exit code of actgate learn --duration 3s"
        );
        if took < Duration::from_secs(3) {
            return Err(NotPassed::Fail(format!(
                "actgate learn --duration 3s ended after {took:?}"
            )));
        }
        expect_valid_policy(ctx, &file, IDLE)?;
        expect_label_state(ctx, IDLE, NO_LABEL, "once learning ended")
    })();
    with_evidence(checked, || {
        format!("actgate learn: {}", workload::shown(&out))
    })
}

fn learnt_policy_as_root_runs_the_same_workload_again(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    runs_again(ctx, fx, &ROOT)
}

fn learnt_policy_as_root_denies_reading_a_secret(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    refuses(ctx, fx, &ROOT, Extra::Read(ROOT.secret()))
}

fn learnt_policy_as_root_denies_writing_outside_the_workspace(
    ctx: &Ctx,
    fx: &mut Fixture,
) -> Outcome {
    refuses(ctx, fx, &ROOT, Extra::Write(ROOT.elsewhere()))
}

fn learnt_policy_as_root_denies_connecting_to_another_port(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    let port = fx.other.port();
    refuses(ctx, fx, &ROOT, Extra::Connect(port))
}

/// The user's label is named by a policy that would break the workload: learning overrides
/// it, and the label goes back to it afterwards (see `learn_and_install`).
fn learnt_policy_as_user_runs_the_same_workload_again(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    runs_again(ctx, fx, &USER)
}

fn learnt_policy_as_user_denies_reading_a_secret(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    refuses(ctx, fx, &USER, Extra::Read(USER.secret()))
}

fn learnt_policy_as_user_denies_writing_outside_the_workspace(
    ctx: &Ctx,
    fx: &mut Fixture,
) -> Outcome {
    refuses(ctx, fx, &USER, Extra::Write(USER.elsewhere()))
}

fn learnt_policy_as_user_denies_connecting_to_another_port(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    let port = fx.other.port();
    refuses(ctx, fx, &USER, Extra::Connect(port))
}

/// One daemon for the suite. The refusals come first: they are quick, and say at once when
/// `actgate learn` isn't there at all.
pub fn suite() -> Suite<Fixture> {
    Suite {
        name: "learn",
        start,
        cases: vec![
            case!(learn_without_command_or_duration_is_refused),
            case!(learn_without_a_reachable_daemon_exits_125_and_writes_nothing),
            case!(learn_for_a_duration_with_nothing_labelled_writes_a_policy_check_accepts),
            case!(learnt_policy_as_root_runs_the_same_workload_again, fixture),
            case!(learnt_policy_as_root_denies_reading_a_secret, fixture),
            case!(
                learnt_policy_as_root_denies_writing_outside_the_workspace,
                fixture
            ),
            case!(
                learnt_policy_as_root_denies_connecting_to_another_port,
                fixture
            ),
            case!(learnt_policy_as_user_runs_the_same_workload_again, fixture),
            case!(learnt_policy_as_user_denies_reading_a_secret, fixture),
            case!(
                learnt_policy_as_user_denies_writing_outside_the_workspace,
                fixture
            ),
            case!(
                learnt_policy_as_user_denies_connecting_to_another_port,
                fixture
            ),
        ],
        stop: |fx| {
            let Fixture {
                enforcing,
                allowed,
                other,
                ..
            } = fx;
            let stopped = enforcing.stop();
            drop((allowed, other));
            stopped
        },
        stop_test: Some("learn_daemon_stops_with_exit_0"),
    }
}
