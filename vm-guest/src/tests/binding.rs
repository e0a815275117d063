//! Issue 18: cgroups that exist without actgate (a service's, a container's scope), bound to a
//! label by a policy's `cgroups:` patterns. A process already running in a matching cgroup
//! when the daemon starts is governed, root or not; so is everything beneath it, at any depth;
//! it can't leave (cgroup.procs, clone3 into another cgroup, renaming or removing cgroups:
//! EPERM although its policy allows cgroupfs writes); a matching cgroup made later is bound
//! within a second; a cgroup no pattern matches any
//! more keeps its processes denied everything; `revoke --kill` ends the bound cgroups'
//! processes too.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Suite, mounts::Mount, session::Session};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome},
};

const LABEL: &str = "vmbind";
const POLICY: &str = "vmtest-binding";
/// The cgroup v2 mount in the guest.
const CGROUP2: &str = "/sys/fs/cgroup";
/// The slice the tests' cgroups live in, beneath the mount.
const SLICE: &str = "vmbind.slice";
const NOBODY: u32 = 65534;
/// What the tests allow for a cgroup to be bound after it appears.
const BIND_WITHIN: Duration = Duration::from_secs(1);

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("binding/{rel}")).display().to_string()
}

/// A cgroup beneath the slice, as a full path.
fn cgroup(rel: &str) -> PathBuf {
    Path::new(CGROUP2).join(SLICE).join(rel)
}

/// The policy: `patterns` bound to `LABEL`, an exec denied, writes only to the workspace and
/// cgroupfs. The policy allows cgroupfs so that what keeps a bound process in its cgroup is
/// shown to be actgate's own refusal, which no policy lifts.
fn policy_text(ctx: &Ctx, patterns: &[&str]) -> String {
    let cgroups: Vec<String> = patterns
        .iter()
        .map(|c| format!("\"{SLICE}/{c}\""))
        .collect();
    format!(
        "name: {POLICY}
labels: [{LABEL}]
cgroups: [{cgroups}]
exec:
  default: allow
  deny: [{denied}]
files:
  write:
    default: deny
    allow: [{ws}/**, {CGROUP2}/**]
",
        cgroups = cgroups.join(", "),
        denied = p(ctx, "bin/denied"),
        ws = p(ctx, "ws"),
    )
}

/// Both kinds of job scope, the second three levels deeper (level 5).
const PATTERNS: &[&str] = &["job-*.scope", "deep.slice/a/b/job-*.scope"];

pub struct Binding {
    /// None only while a test restarts it.
    daemon: Option<Daemon>,
    policies: PathBuf,
    /// Started before the daemon, in `job-pre.scope`: as root, then as nobody.
    root_job: Session,
    nobody_job: Session,
    _tmpfs: Mount,
}

fn start(ctx: &Ctx) -> Result<Binding> {
    if !Path::new(CGROUP2).join("cgroup.procs").exists() {
        bail!("no cgroup v2 hierarchy at {CGROUP2}");
    }
    let tmpfs = Mount::tmpfs(&ctx.path("binding"))?;
    harness::install("/bin/true", Path::new(&p(ctx, "bin/allowed")))?;
    harness::install("/bin/true", Path::new(&p(ctx, "bin/denied")))?;
    fs::create_dir_all(p(ctx, "ws"))?;
    fs::set_permissions(p(ctx, "ws"), fs::Permissions::from_mode(0o777))?;
    harness::files_with_modes(&[(p(ctx, "elsewhere.txt"), 0o666)])?;
    // A stale tree of an earlier run would be bound as it is.
    remove_slice();
    for dir in [
        "job-pre.scope",
        "job-nobody.scope",
        "other.scope",
        "staging.scope",
    ] {
        fs::create_dir_all(cgroup(dir)).with_context(|| format!("creating cgroup {dir}"))?;
    }
    let root_job = Session::start_in_cgroup(&cgroup("job-pre.scope"), 0)?;
    let nobody_job = Session::start_in_cgroup(&cgroup("job-nobody.scope"), NOBODY)?;
    let policies = ctx.path("binding/policies");
    harness::write(&policies.join("policies.yaml"), &policy_text(ctx, PATTERNS))?;
    Ok(Binding {
        daemon: Some(Daemon::start(ctx, &policies, &[])?),
        policies,
        root_job,
        nobody_job,
        _tmpfs: tmpfs,
    })
}

/// Ends what runs in the slice and removes it.
fn remove_slice() {
    let slice = Path::new(CGROUP2).join(SLICE);
    if slice.is_dir() {
        let _ = fs::write(slice.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if cgroup_empty(&slice) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = remove_tree(&slice);
    }
}

fn cgroup_empty(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|e| e.contains("populated 0"))
        .unwrap_or(true)
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// The session's verdicts for: the denied exec, the allowed exec, a write to the workspace,
/// a write elsewhere.
fn verdicts(ctx: &Ctx, s: &mut Session, tag: &str) -> Result<[String; 4]> {
    Ok([
        s.run(&p(ctx, "bin/denied"))?,
        s.run(&p(ctx, "bin/allowed"))?,
        s.run(&format!(
            "echo {tag} > {}",
            p(ctx, &format!("ws/{tag}.txt"))
        ))?,
        s.run(&format!("echo {tag} > {}", p(ctx, "elsewhere.txt")))?,
    ])
}

const GOVERNED: [&str; 4] = ["EPERM", "OK", "OK", "EPERM"];
const FREE: [&str; 4] = ["OK", "OK", "OK", "OK"];

/// Processes that ran in matching cgroups before the daemon started, as root and as nobody,
/// are governed once it is ready; a process in a cgroup no pattern matches is not. Status
/// counts them under the label.
fn processes_in_a_cgroup_bound_by_pattern_are_governed(ctx: &Ctx, fx: &mut Binding) -> Outcome {
    expect_eq!(
        verdicts(ctx, &mut fx.root_job, "root")?,
        GOVERNED,
        "root's verdicts in job-pre.scope"
    );
    expect_eq!(
        verdicts(ctx, &mut fx.nobody_job, "nobody")?,
        GOVERNED,
        "nobody's verdicts in job-nobody.scope"
    );
    let mut other = Session::start_in_cgroup(&cgroup("other.scope"), 0)?;
    expect_eq!(
        verdicts(ctx, &mut other, "other")?,
        FREE,
        "verdicts in other.scope, which no pattern matches"
    );
    let status = harness::label_status(ctx, LABEL)?.context("status lists no vmbind")?;
    expect_eq!(
        status.get("processes").and_then(|v| v.as_u64()),
        Some(2),
        "processes status counts under {LABEL} ({status})"
    );
    Ok(())
}

/// A bound process can't leave: moving itself to the root cgroup or into an unbound cgroup is
/// EPERM, as root. A cgroup made beneath a bound one (by root outside the label) is governed
/// with no binding of its own.
fn a_bound_process_stays_and_its_sub_cgroups_are_governed(ctx: &Ctx, fx: &mut Binding) -> Outcome {
    for to in [Path::new(CGROUP2).to_path_buf(), cgroup("other.scope")] {
        let procs = to.join("cgroup.procs");
        expect_eq!(
            fx.root_job.run(&format!("echo $$ > {}", procs.display()))?,
            "EPERM",
            "the bound root shell moving itself to {}",
            to.display()
        );
    }
    let sub = cgroup("job-pre.scope/worker");
    fs::create_dir_all(&sub).context("creating job-pre.scope/worker")?;
    let mut worker = Session::start_in_cgroup(&sub, NOBODY)?;
    expect_eq!(
        verdicts(ctx, &mut worker, "worker")?,
        GOVERNED,
        "verdicts in job-pre.scope/worker"
    );
    Ok(())
}

/// No other route out of a bound cgroup, as root and as nobody: clone3(CLONE_INTO_CGROUP)
/// into an unbound cgroup, renaming its own cgroup to a name no pattern matches, removing a
/// cgroup beneath its own or making one: each is EPERM, and the cgroup stays bound.
fn a_bound_process_cannot_clone_rename_or_remove_its_way_out(
    ctx: &Ctx,
    fx: &mut Binding,
) -> Outcome {
    let empty = cgroup("job-pre.scope/empty");
    fs::create_dir_all(&empty).context("creating job-pre.scope/empty")?;
    let guest = ctx.guest.display();
    for (job, scope) in [
        (&mut fx.root_job, "job-pre.scope"),
        (&mut fx.nobody_job, "job-nobody.scope"),
    ] {
        let own = cgroup(scope);
        let probes = [
            format!("clone-into-cgroup {}", cgroup("other.scope").display()),
            format!(
                "rename {} {}",
                own.display(),
                cgroup("renamed.scope").display()
            ),
            format!("rmdir {}", empty.display()),
            format!("mkdir {}", own.join("made").display()),
        ];
        for probe in &probes {
            expect_eq!(
                job.run(&format!("{guest} try {probe}"))?,
                "EPERM",
                "`{probe}` from {scope}"
            );
        }
        expect_eq!(
            (own.is_dir(), empty.is_dir(), own.join("made").exists()),
            (true, true, false),
            "{scope}, job-pre.scope/empty and {scope}/made after the refusals"
        );
        expect_eq!(
            // A file of each user's own: root's would refuse nobody's write.
            verdicts(ctx, job, &format!("stayed-{scope}"))?,
            GOVERNED,
            "verdicts in {scope} after the refusals"
        );
    }
    Ok(())
}

/// A matching cgroup made while the daemon runs is bound within a second, three levels
/// deeper than the others too. A shell started beforehand in an unbound cgroup is moved into
/// it right after the mkdir, and the time is measured from the mkdir to its first EPERM. Each
/// try is a shell redirection to a file the policy denies (one open(2), no fork), so the
/// measure's own grain stays far below the second.
fn a_cgroup_made_after_the_start_is_bound_within_a_second(ctx: &Ctx, _: &mut Binding) -> Outcome {
    let staging = cgroup("staging.scope");
    fs::create_dir_all(&staging).context("creating staging.scope")?;
    for rel in ["job-new.scope", "deep.slice/a/b/job-new.scope"] {
        let mut job = Session::start_in_cgroup(&staging, NOBODY)?;
        let probe = format!("echo try > {}", p(ctx, "elsewhere.txt"));
        expect_eq!(
            job.run(&probe)?,
            "OK",
            "the denied write before {rel} exists"
        );
        let dir = cgroup(rel);
        let made = Instant::now();
        fs::create_dir_all(&dir).with_context(|| format!("creating {rel}"))?;
        fs::write(dir.join("cgroup.procs"), job.pid().to_string())
            .with_context(|| format!("moving the shell into {rel}"))?;
        let bound_after = loop {
            if job.run(&probe)? == "EPERM" {
                break made.elapsed();
            }
            if made.elapsed() > Duration::from_secs(10) {
                return Err(NotPassed::Fail(format!(
                    "{rel} is not bound 10 s after it was made"
                )));
            }
        };
        println!("{rel}: bound {} ms after mkdir", bound_after.as_millis());
        expect_eq!(
            bound_after <= BIND_WITHIN,
            true,
            "{rel} bound within {BIND_WITHIN:?} (took {bound_after:?})"
        );
        expect_eq!(
            verdicts(ctx, &mut job, "new")?,
            GOVERNED,
            "verdicts in {rel}"
        );
    }
    Ok(())
}

/// A reload whose patterns no longer match job-pre.scope leaves its running processes denied
/// everything (even the exec the policy allows), never free; naming it again gives the
/// policy back.
fn a_cgroup_no_longer_matched_stays_denied_while_it_runs(ctx: &Ctx, fx: &mut Binding) -> Outcome {
    let daemon = fx.daemon.as_ref().context("no daemon")?;
    harness::replace_policies(
        daemon,
        &fx.policies,
        &policy_text(ctx, &["job-nobody.scope"]),
    )?;
    expect_eq!(
        verdicts(ctx, &mut fx.root_job, "orphan")?,
        ["EPERM", "EPERM", "EPERM", "EPERM"],
        "root's verdicts in job-pre.scope once no pattern matches it"
    );
    expect_eq!(
        verdicts(ctx, &mut fx.nobody_job, "kept")?,
        GOVERNED,
        "nobody's verdicts in job-nobody.scope, still matched"
    );
    harness::replace_policies(daemon, &fx.policies, &policy_text(ctx, PATTERNS))?;
    expect_eq!(
        verdicts(ctx, &mut fx.root_job, "back")?,
        GOVERNED,
        "root's verdicts in job-pre.scope matched again"
    );
    Ok(())
}

/// The same across a restart: a daemon whose policies no longer match job-pre.scope, taking
/// over from one that bound it, keeps its processes denied everything.
fn a_restart_keeps_a_cgroup_no_longer_matched_denied(ctx: &Ctx, fx: &mut Binding) -> Outcome {
    let mut before = fx.daemon.take().context("no daemon")?;
    before.keep_enforcement();
    before.stop_cleanly()?;
    harness::write(
        &fx.policies.join("policies.yaml"),
        &policy_text(ctx, &["job-nobody.scope"]),
    )?;
    fx.daemon = Some(Daemon::start(ctx, &fx.policies, &[])?);
    expect_eq!(
        verdicts(ctx, &mut fx.root_job, "restarted")?,
        ["EPERM", "EPERM", "EPERM", "EPERM"],
        "root's verdicts in job-pre.scope after a restart that no longer matches it"
    );
    let daemon = fx.daemon.as_ref().context("no daemon")?;
    harness::replace_policies(daemon, &fx.policies, &policy_text(ctx, PATTERNS))?;
    expect_eq!(
        verdicts(ctx, &mut fx.root_job, "again")?,
        GOVERNED,
        "root's verdicts in job-pre.scope matched again"
    );
    Ok(())
}

/// `actgate revoke --kill` ends the processes of the bound cgroups too.
fn revoke_kill_ends_the_bound_cgroups_processes(ctx: &Ctx, _: &mut Binding) -> Outcome {
    let out = std::process::Command::new(&ctx.actgate)
        .args(["revoke", LABEL, "--kill"])
        .output()
        .context("running actgate revoke")?;
    expect_eq!(
        out.status.code(),
        Some(0),
        "revoke --kill ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in ["job-pre.scope", "job-nobody.scope"] {
        let procs = fs::read_to_string(cgroup(dir).join("cgroup.procs")).context("cgroup.procs")?;
        expect_eq!(
            procs.trim(),
            "",
            "processes left in {dir} after revoke --kill"
        );
    }
    let restore = std::process::Command::new(&ctx.actgate)
        .args(["restore", LABEL])
        .output()
        .context("running actgate restore")?;
    expect_eq!(restore.status.code(), Some(0), "restore");
    Ok(())
}

fn stop(fx: Binding) -> Result<()> {
    drop((fx.root_job, fx.nobody_job));
    let stopped = fx
        .daemon
        .context("no daemon")
        .and_then(Daemon::stop_cleanly);
    remove_slice();
    stopped
}

pub fn suite() -> Suite<Binding> {
    Suite {
        name: "binding",
        start,
        cases: vec![
            case!(processes_in_a_cgroup_bound_by_pattern_are_governed, fixture),
            case!(
                a_bound_process_stays_and_its_sub_cgroups_are_governed,
                fixture
            ),
            case!(
                a_bound_process_cannot_clone_rename_or_remove_its_way_out,
                fixture
            ),
            case!(
                a_cgroup_made_after_the_start_is_bound_within_a_second,
                fixture
            ),
            case!(
                a_cgroup_no_longer_matched_stays_denied_while_it_runs,
                fixture
            ),
            case!(a_restart_keeps_a_cgroup_no_longer_matched_denied, fixture),
            case!(revoke_kill_ends_the_bound_cgroups_processes, fixture),
        ],
        stop,
        stop_test: Some("binding_daemon_stops_with_exit_0"),
    }
}
