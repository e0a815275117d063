//! Issue 12: `actgate exec` runs the agent as an unprivileged user unless root is asked for by
//! name, and hands it no descriptor above 2.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result};

use super::Enforcing;
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, RAN},
};

const LABEL: &str = "vmusers";
/// Debian's `users` group (base-passwd fixes its gid).
const USERS_GID: u32 = 100;
/// A label that may not read the passwd and group databases.
const SEALED: &str = "vmusers-sealed";

/// Debian's `nobody`, in the guest's passwd and group databases.
const NOBODY: u32 = 65534;

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("users/{rel}")).display().to_string()
}

/// Both directories and the files to write in them are world-writable, so a denied write is the policy's doing, not the
/// permission bits'.
fn start(ctx: &Ctx) -> Result<Enforcing> {
    harness::install("/bin/true", &ctx.path("users/bin/allowed"))?;
    harness::install("/bin/true", &ctx.path("users/bin/denied"))?;
    for dir in ["users/ws", "users/elsewhere"] {
        std::fs::create_dir_all(ctx.path(dir))?;
        std::fs::set_permissions(ctx.path(dir), PermissionsExt::from_mode(0o777))?;
    }
    for file in ["users/ws/ok.txt", "users/elsewhere/no.txt"] {
        harness::write(&ctx.path(file), "")?;
        std::fs::set_permissions(ctx.path(file), PermissionsExt::from_mode(0o666))?;
    }
    let policy = format!(
        "name: vmtest-users\nlabels: [{LABEL}]\nmode: enforce\nexec:\n  default: allow\n  deny: [{}]\nfiles:\n  write:\n    default: deny\n    allow: [{}/**]\n",
        p(ctx, "bin/denied"),
        p(ctx, "ws"),
    ) + &format!(
        "---\nname: vmtest-users-sealed\nlabels: [{SEALED}]\nmode: enforce\nfiles:\n  read:\n    deny: [/etc/passwd, /etc/group]\n"
    );
    harness::write(&ctx.path("users/policies/users.yaml"), &policy)?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &ctx.path("users/policies"))?,
        mounts: vec![],
    })
}

/// `actgate exec [USER_ARGS] --label vmusers -- CMD`, with no sudo variables unless `sudo`.
fn exec_as(ctx: &Ctx, user_args: &[&str], sudo: Option<u32>, cmd: &[&str]) -> Command {
    let mut c = Command::new(&ctx.actgate);
    c.arg("exec")
        .args(user_args)
        .args(["--label", LABEL, "--"])
        .args(cmd)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .stdin(Stdio::null());
    if let Some(id) = sudo {
        c.env("SUDO_UID", id.to_string())
            .env("SUDO_GID", id.to_string());
    }
    c
}

fn output(mut cmd: Command) -> Result<Output, NotPassed> {
    cmd.output()
        .map_err(|e| NotPassed::Fail(format!("starting actgate exec: {e}")))
}

fn stdout(out: &Output) -> Result<String, NotPassed> {
    if !out.status.success() {
        return Err(NotPassed::Fail(format!(
            "actgate exec failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The real, effective, saved and fs uids and gids from /proc, then the groups, HOME, USER.
const WHO: &str = "grep -E '^(Uid|Gid):' /proc/self/status | tr -s '\\t ' ' '; id -G; echo \"$HOME $USER $LOGNAME\"";

fn who(uid: u32, gid: u32, groups: &str, home_user: &str) -> String {
    format!("Uid: {uid} {uid} {uid} {uid}\nGid: {gid} {gid} {gid} {gid}\n{groups}\n{home_user}\n")
}

/// `id -G NAME`: the groups the group database gives the user, as root sees them.
fn groups_of(name: &str) -> Result<String, NotPassed> {
    let out = Command::new("id")
        .args(["-G", name])
        .output()
        .map_err(|e| NotPassed::Fail(format!("id -G {name}: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nobody_home_user() -> String {
    "/nonexistent nobody nobody".to_string()
}

fn user_nobody_runs_with_its_ids_and_groups(ctx: &Ctx) -> Outcome {
    let groups = groups_of("nobody")?;
    let want = who(NOBODY, NOBODY, &groups, &nobody_home_user());
    for user in ["nobody", "65534"] {
        let out = output(exec_as(
            ctx,
            &["--user", user],
            None,
            &["/bin/sh", "-c", WHO],
        ))?;
        expect_eq!(
            stdout(&out)?,
            want,
            "ids of the command run with --user {user}"
        );
    }
    Ok(())
}

fn user_nobody_is_still_denied_and_allowed(ctx: &Ctx) -> Outcome {
    let guest = ctx.guest.display().to_string();
    let attempts = [
        ("exec", "bin/allowed", RAN),
        ("exec", "bin/denied", "EPERM"),
        ("open-write", "ws/ok.txt", "OK"),
        ("open-write", "elsewhere/no.txt", "EPERM"),
    ];
    for (action, rel, want) in attempts {
        let path = p(ctx, rel);
        let cmd = [guest.as_str(), "try", action, path.as_str()];
        let out = output(exec_as(ctx, &["--user", "nobody"], None, &cmd))?;
        expect_eq!(
            harness::verdict_line(&out),
            want,
            "{action} {rel} as nobody"
        );
    }
    Ok(())
}

fn root_without_user_or_sudo_is_refused(ctx: &Ctx) -> Outcome {
    let marker = p(ctx, "root-ran");
    let out = output(exec_as(ctx, &[], None, &["/usr/bin/touch", &marker]))?;
    harness::expect_refused(
        &out,
        std::path::Path::new(&marker),
        "--user root",
        "root without --user",
    )
}

fn under_sudo_runs_as_the_invoking_user(ctx: &Ctx) -> Outcome {
    let want = who(NOBODY, NOBODY, &groups_of("nobody")?, &nobody_home_user());
    let out = output(exec_as(ctx, &[], Some(NOBODY), &["/bin/sh", "-c", WHO]))?;
    expect_eq!(stdout(&out)?, want, "ids under SUDO_UID/SUDO_GID {NOBODY}");
    Ok(())
}

fn user_root_runs_as_root(ctx: &Ctx) -> Outcome {
    let want = who(0, 0, &groups_of("root")?, "/root root root");
    for user in ["root", "0"] {
        let out = output(exec_as(
            ctx,
            &["--user", user],
            Some(NOBODY),
            &["/bin/sh", "-c", WHO],
        ))?;
        expect_eq!(stdout(&out)?, want, "ids with --user {user}");
    }
    Ok(())
}

fn unknown_user_is_refused(ctx: &Ctx) -> Outcome {
    let marker = p(ctx, "unknown-ran");
    for user in ["no-such-user-actgate", "4294967000"] {
        let out = output(exec_as(
            ctx,
            &["--user", user],
            None,
            &["/usr/bin/touch", &marker],
        ))?;
        harness::expect_refused(
            &out,
            std::path::Path::new(&marker),
            user,
            &format!("exec --user {user}"),
        )?;
    }
    Ok(())
}

/// A descriptor this process leaks on purpose (no CLOEXEC, at a number no one else uses).
struct Leak(libc::c_int);

const LEAKED_FD: libc::c_int = 100;

impl Leak {
    fn open(path: &str) -> Result<Leak> {
        harness::write(std::path::Path::new(path), "leaked\n")?;
        let c = CString::new(std::ffi::OsStr::new(path).as_bytes())?;
        // SAFETY: a valid NUL-terminated path; the fd is closed by Drop.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening the leaked file");
        }
        // SAFETY: fd is ours; dup2 without O_CLOEXEC keeps the copy inheritable.
        let moved = unsafe { libc::dup2(fd, LEAKED_FD) };
        // SAFETY: fd is ours and no longer needed.
        unsafe { libc::close(fd) };
        if moved < 0 {
            return Err(std::io::Error::last_os_error()).context("moving the leaked fd");
        }
        Ok(Leak(moved))
    }
}

impl Drop for Leak {
    fn drop(&mut self) {
        // SAFETY: the fd is ours.
        unsafe { libc::close(self.0) };
    }
}

fn descriptors_above_2_are_closed(ctx: &Ctx) -> Outcome {
    let leak = Leak::open(&p(ctx, "leaked.txt"))?;
    for user in ["root", "nobody"] {
        let out = output(exec_as(
            ctx,
            &["--user", user],
            None,
            &["/bin/ls", "/proc/self/fd"],
        ))?;
        let text = stdout(&out)?;
        let fds: Vec<&str> = text.split_whitespace().collect();
        // ls itself holds one descriptor: the directory it lists.
        if fds.len() > 4
            || fds.contains(&LEAKED_FD.to_string().as_str())
            || fds[..3] != ["0", "1", "2"]
        {
            return Err(NotPassed::Fail(format!(
                "as {user} the command inherited descriptors: {fds:?}"
            )));
        }
    }
    drop(leak);
    Ok(())
}

/// The user's passwd and group entries are read before the label is joined: in a label that
/// may not read /etc/passwd or /etc/group, the agent still starts as its user, and can't read
/// them itself.
fn user_lookup_happens_before_the_label_is_joined(ctx: &Ctx) -> Outcome {
    let run = |cmd: &[&str]| {
        Command::new(&ctx.actgate)
            .args(["exec", "--user", "nobody", "--label", SEALED, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NotPassed::Fail(format!("starting actgate exec: {e}")))
    };
    // A supplementary group that only the group database knows of (the guest's /etc is its
    // own), so a lookup made from inside the label would miss it.
    let added = Command::new("usermod")
        .args(["--append", "--groups", "users", "nobody"])
        .status()
        .map_err(|e| NotPassed::Fail(format!("starting usermod: {e}")))?;
    expect_eq!(added.success(), true, "usermod -aG users nobody");
    let out = run(&["/usr/bin/id", "-u"])?;
    expect_eq!(
        stdout(&out)?.trim().to_string(),
        NOBODY.to_string(),
        "uid in a label that can't read the user databases"
    );
    let out = run(&["/usr/bin/id", "-G"])?;
    let mut groups: Vec<u32> = stdout(&out)?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort_unstable();
    expect_eq!(
        groups,
        vec![USERS_GID, NOBODY],
        "groups in a label that can't read the group database"
    );
    let out = run(&["/usr/bin/cat", "/etc/group"])?;
    expect_eq!(
        out.status.code(),
        Some(1),
        "exit of cat /etc/group in {SEALED}"
    );
    Ok(())
}

pub fn suite() -> super::Suite<Enforcing> {
    super::Suite {
        name: "users",
        start,
        cases: vec![
            case!(user_nobody_runs_with_its_ids_and_groups),
            case!(user_nobody_is_still_denied_and_allowed),
            case!(root_without_user_or_sudo_is_refused),
            case!(under_sudo_runs_as_the_invoking_user),
            case!(user_root_runs_as_root),
            case!(unknown_user_is_refused),
            case!(descriptors_above_2_are_closed),
            case!(user_lookup_happens_before_the_label_is_joined),
        ],
        stop: Enforcing::stop,
        stop_test: None,
    }
}
