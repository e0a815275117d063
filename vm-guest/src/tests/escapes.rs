//! Issue 12, point 3: root in a label is not root over actgate. Each route out from under the
//! policy is tried as root and as `nobody` and must be refused; afterwards the daemon still
//! runs and the policy still holds (a denied exec denied, an allowed one allowed).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use super::{Enforcing, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, RAN, scrape},
};

const LABEL: &str = "vmesc";
/// Granted CAP_NET_RAW and user namespaces by its policy.
const GRANTED: &str = "vmesc-granted";
/// Another label, whose cgroup a process of `LABEL` tries to move into.
const OTHER: &str = "vmesc-other";
/// The cgroup v2 mount in the guest.
const CGROUP2: &str = "/sys/fs/cgroup";
const USERS: [&str; 2] = ["root", "nobody"];

fn p(ctx: &Ctx, rel: &str) -> PathBuf {
    ctx.path(&format!("esc/{rel}"))
}

fn start(ctx: &Ctx) -> Result<Enforcing> {
    harness::install("/bin/true", &p(ctx, "bin/allowed"))?;
    harness::install("/bin/true", &p(ctx, "bin/denied"))?;
    let mnt = p(ctx, "mnt");
    fs::create_dir_all(&mnt)?;
    fs::set_permissions(&mnt, PermissionsExt::from_mode(0o777))?;
    // A bpffs of the test's own, outside every label, holding a pinned map and a directory.
    let bpffs = Mount::bpffs(&p(ctx, "bpffs"))?;
    pin_map(&p(ctx, "bpffs/pinned"))?;
    fs::create_dir(p(ctx, "bpffs/dir"))?;
    let policy = format!(
        // Raw sockets are allowed, so the raw-socket probe reaches the capability check.
        "name: vmtest-esc\nlabels: [{LABEL}]\nexec:\n  deny: [{}]\nnetwork:\n  raw: allow\n---\n\
         name: vmtest-esc-granted\nlabels: [{GRANTED}]\nnetwork:\n  raw: allow\nprocess:\n  capabilities: [CAP_NET_RAW]\n  namespaces: allow\n---\n\
         name: vmtest-esc-other\nlabels: [{OTHER}]\n",
        p(ctx, "bin/denied").display()
    );
    harness::write(&p(ctx, "policies/esc.yaml"), &policy)?;
    Ok(Enforcing {
        daemon: Daemon::start(ctx, &p(ctx, "policies"), &[])?,
        mounts: vec![bpffs],
    })
}

/// Pins a new one-element array map at `path` (as the unlabelled test itself).
fn pin_map(path: &Path) -> Result<()> {
    use agent_common::sys;
    use aya_obj::generated::bpf_map_type;
    use std::os::fd::AsFd;
    let map =
        sys::create_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, None).context("creating a map to pin")?;
    sys::pin(map.as_fd(), path).with_context(|| format!("pinning a map at {}", path.display()))
}

/// `vm-guest try ARGS` run by `actgate exec --user USER --label LABEL`; its verdict line.
fn attempt(ctx: &Ctx, user: &str, label: &str, args: &[&str]) -> String {
    let out = Command::new(&ctx.actgate)
        .args(["exec", "--user", user, "--label", label, "--"])
        .arg(&ctx.guest)
        .arg("try")
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => harness::verdict_line(&out),
        Err(e) => format!("(actgate exec did not start: {e})"),
    }
}

/// Fails unless ARGS meet `want` for every user in `LABEL`.
fn expect_all(ctx: &Ctx, label: &str, args: &[&str], want: &str) -> Outcome {
    for user in USERS {
        expect_eq!(
            attempt(ctx, user, label, args),
            want,
            "`try {}` as {user} in {label}",
            args.join(" ")
        );
    }
    Ok(())
}

/// The daemon still runs and is ready, and the policy still holds for every user.
fn still_in_force(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    expect_eq!(
        Path::new(&format!("/proc/{}", daemon.pid())).exists(),
        true,
        "the daemon (pid {}) still runs",
        daemon.pid()
    );
    expect_eq!(
        harness::http_get("/readyz").map(|(code, _)| code).ok(),
        Some(200),
        "/readyz afterwards"
    );
    let (denied, allowed) = (p(ctx, "bin/denied"), p(ctx, "bin/allowed"));
    expect_all(
        ctx,
        LABEL,
        &["exec", &denied.display().to_string()],
        "EPERM",
    )?;
    expect_all(ctx, LABEL, &["exec", &allowed.display().to_string()], RAN)
}

/// The change of one of `LABEL`'s decision counters while `f` runs.
fn counted(action: &str, verdict: &str, f: impl FnOnce() -> Outcome) -> Result<f64, NotPassed> {
    let before = scrape()?;
    f()?;
    let after = scrape()?;
    Ok(harness::decisions(&after, LABEL, action, verdict)
        - harness::decisions(&before, LABEL, action, verdict))
}

fn signals_to_the_daemon_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let pid = f.daemon.pid().to_string();
    // As root only actgate stands in the way; nobody is refused by the kernel's own check.
    let denied = counted("signal", "deny", || {
        for signal in ["15", "9"] {
            expect_all(ctx, LABEL, &["kill", &pid, signal], "EPERM")?;
        }
        Ok(())
    })?;
    expect_eq!(
        denied,
        2.0,
        "signal denials counted for root's kill -TERM and kill -9"
    );
    still_in_force(ctx, &f.daemon)
}

fn ptrace_and_the_daemons_memory_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let pid = f.daemon.pid().to_string();
    expect_all(ctx, LABEL, &["ptrace-attach", &pid], "EPERM")?;
    // The kernel reports a refused ptrace_may_access on /proc/PID/mem as EACCES (mm_access).
    let mem = format!("/proc/{pid}/mem");
    expect_all(ctx, LABEL, &["open-rdwr", &mem], "EACCES")?;
    still_in_force(ctx, &f.daemon)
}

fn bpf_syscall_is_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    expect_all(ctx, LABEL, &["bpf-map-create"], "EPERM")?;
    still_in_force(ctx, &f.daemon)
}

fn denied_capabilities_are_refused_even_to_root(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let mnt = p(ctx, "mnt").display().to_string();
    let denied = counted("capability", "deny", || {
        for fstype in ["tmpfs", "cgroup2", "bpf"] {
            expect_all(ctx, LABEL, &["mount", fstype, &mnt], "EPERM")?;
        }
        expect_all(ctx, LABEL, &["raw-socket"], "EPERM")
    })?;
    // nobody lacks the capabilities to begin with; root's four attempts each meet actgate.
    expect_eq!(
        denied,
        4.0,
        "capability denials counted for root's attempts"
    );
    still_in_force(ctx, &f.daemon)
}

fn a_capability_and_namespaces_granted_by_policy_work(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["raw-socket"]),
        "OK",
        "a raw socket as root where the policy grants CAP_NET_RAW"
    );
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["unshare-user"]),
        "OK",
        "unshare -U where the policy allows namespaces"
    );
    let mnt = p(ctx, "mnt").display().to_string();
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["mount", "tmpfs", &mnt]),
        "EPERM",
        "mount (CAP_SYS_ADMIN, not granted) as root in {GRANTED}"
    );
    still_in_force(ctx, &f.daemon)
}

fn user_namespaces_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let denied = counted("namespace", "deny", || {
        expect_eq!(
            attempt(ctx, "root", LABEL, &["unshare-user"]),
            "EPERM",
            "unshare -U as root"
        );
        Ok(())
    })?;
    expect_eq!(
        denied,
        1.0,
        "namespace denials counted for root's unshare -U"
    );
    expect_eq!(
        attempt(ctx, "nobody", LABEL, &["unshare-user"]),
        "EPERM",
        "unshare -U as nobody"
    );
    still_in_force(ctx, &f.daemon)
}

/// Makes cgroup.procs files writable by everyone for the test, so only actgate refuses, and
/// puts their modes back when dropped.
struct Writable(Vec<(PathBuf, u32)>);

impl Writable {
    fn new(files: &[PathBuf]) -> Result<Writable> {
        let mut modes = Writable(Vec::new());
        for f in files {
            let mode = fs::metadata(f)
                .with_context(|| format!("reading {}", f.display()))?
                .permissions()
                .mode();
            fs::set_permissions(f, PermissionsExt::from_mode(0o666))?;
            modes.0.push((f.clone(), mode));
        }
        Ok(modes)
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        for (f, mode) in &self.0 {
            let _ = fs::set_permissions(f, PermissionsExt::from_mode(*mode));
        }
    }
}

fn cgroup_procs_writes_are_refused_anywhere(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let targets = [
        PathBuf::from(CGROUP2).join("cgroup.procs"),
        PathBuf::from(CGROUP2)
            .join("actgate")
            .join(OTHER)
            .join("cgroup.procs"),
    ];
    if !targets.iter().all(|t| t.exists()) {
        return Err(NotPassed::Skip(format!(
            "skipping test – no cgroup v2 at {CGROUP2} with actgate's labels"
        )));
    }
    let _writable = Writable::new(&targets)?;
    let denied = counted("file_write", "deny", || {
        for t in &targets {
            expect_all(
                ctx,
                LABEL,
                &["open-write", &t.display().to_string()],
                "EPERM",
            )?;
        }
        Ok(())
    })?;
    expect_eq!(
        denied,
        4.0,
        "file_write denials counted for the cgroup.procs opens"
    );
    still_in_force(ctx, &f.daemon)
}

fn clone_into_another_cgroup_is_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let other = PathBuf::from(CGROUP2).join("actgate").join(OTHER);
    if !other.exists() {
        return Err(NotPassed::Skip(format!(
            "skipping test – no label cgroup at {}",
            other.display()
        )));
    }
    let denied = counted("cgroup", "deny", || {
        expect_all(
            ctx,
            LABEL,
            &["clone-into-cgroup", &other.display().to_string()],
            "EPERM",
        )
    })?;
    expect_eq!(
        denied,
        2.0,
        "cgroup denials counted for clone3(CLONE_INTO_CGROUP)"
    );
    still_in_force(ctx, &f.daemon)
}

fn bpffs_entries_cannot_be_removed_or_added(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let (pinned, dir, new) = (
        p(ctx, "bpffs/pinned"),
        p(ctx, "bpffs/dir"),
        p(ctx, "bpffs/new"),
    );
    let s = |p: &PathBuf| p.display().to_string();
    expect_all(ctx, LABEL, &["unlink", &s(&pinned)], "EPERM")?;
    expect_all(ctx, LABEL, &["rmdir", &s(&dir)], "EPERM")?;
    expect_all(ctx, LABEL, &["mkdir", &s(&new)], "EPERM")?;
    expect_all(ctx, LABEL, &["rename", &s(&pinned), &s(&new)], "EPERM")?;
    expect_eq!(
        pinned.exists() && dir.exists(),
        true,
        "the pinned map and the directory remain"
    );
    still_in_force(ctx, &f.daemon)
}

pub fn suite() -> super::Suite<Enforcing> {
    super::Suite {
        name: "escapes",
        start,
        cases: vec![
            case!(ptrace_and_the_daemons_memory_are_refused, fixture),
            case!(bpf_syscall_is_refused, fixture),
            case!(denied_capabilities_are_refused_even_to_root, fixture),
            case!(a_capability_and_namespaces_granted_by_policy_work, fixture),
            case!(user_namespaces_are_refused, fixture),
            case!(cgroup_procs_writes_are_refused_anywhere, fixture),
            case!(clone_into_another_cgroup_is_refused, fixture),
            case!(bpffs_entries_cannot_be_removed_or_added, fixture),
            // Last: if a signal got through, the daemon would be gone for the others.
            case!(signals_to_the_daemon_are_refused, fixture),
        ],
        stop: Enforcing::stop,
        stop_test: None,
    }
}
