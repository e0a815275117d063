//! `actgate exec [--user U] --label L -- CMD`: run CMD inside label L's cgroup, as an
//! unprivileged user unless root is asked for by name, or not at all.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};
// nix wraps the passwd and group databases (getpwnam_r and friends, with their buffer
// retries) and the id system calls; pinned in the workspace's dependencies.
use nix::unistd::{
    Gid, Uid, User, getgrouplist, getgroups, getresgid, getresuid, setgid, setgroups, setuid,
};

use crate::{cgroup, control};

/// Exit codes follow env(1)/chroot(1): 125 when actgate itself refuses or fails, 126 when CMD
/// can't be run, 127 when it isn't found.
pub const EXIT_REFUSED: i32 = 125;
pub const EXIT_CANNOT_RUN: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// Resolves who CMD runs as, joins the label's cgroup, drops to that user, closes every
/// descriptor above 2, then replaces this process with CMD. Returns only on failure, with the
/// exit code to use.
pub fn exec(
    socket: &Path,
    label: &str,
    user: Option<&str>,
    cmd: &[String],
) -> (i32, anyhow::Error) {
    // Everything that reads the passwd and group databases happens before the join: once in
    // the label, those reads are the label's, and its policy may deny them.
    let prepared = identity(user)
        .and_then(|who| who.map(|u| Ok((groups_of(&u)?, u))).transpose())
        .and_then(|who| {
            let dir = join(socket, label)?;
            if let Some((groups, user)) = &who {
                become_user(user, groups)?;
            }
            close_inherited()?;
            Ok((dir, who.map(|(_, user)| user)))
        });
    let (dir, who) = match prepared {
        Ok(p) => p,
        Err(e) => return (EXIT_REFUSED, e),
    };
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    if let Some(who) = &who {
        command
            .env("HOME", &who.dir)
            .env("USER", &who.name)
            .env("LOGNAME", &who.name);
    }
    let err = command.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
    };
    (
        code,
        anyhow::anyhow!(
            "running {:?} under label {label:?} ({}): {err}",
            cmd[0],
            dir
        ),
    )
}

/// Who CMD runs as; `None` keeps the caller's identity (a non-root caller can't change it).
pub fn identity(user: Option<&str>) -> Result<Option<User>> {
    if let Some(user) = user {
        return lookup(user).map(Some);
    }
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
        (Ok(uid), Ok(gid)) => {
            let uid: u32 = uid
                .parse()
                .with_context(|| format!("SUDO_UID {uid:?} is not a uid"))?;
            let gid: u32 = gid
                .parse()
                .with_context(|| format!("SUDO_GID {gid:?} is not a gid"))?;
            let entry = User::from_uid(Uid::from_raw(uid))
                .context("reading the passwd database")?
                .with_context(|| {
                    format!("the invoking user (SUDO_UID {uid}) has no passwd entry")
                })?;
            Ok(Some(User {
                gid: Gid::from_raw(gid),
                ..entry
            }))
        }
        _ => bail!(
            "refusing to run the agent as root: pass --user NAME to run it as that user \
             (or --user root to run it as root deliberately)"
        ),
    }
}

/// A user by name, or by numeric uid when it is all digits and no user has that name.
pub fn lookup(user: &str) -> Result<User> {
    if let Some(found) = User::from_name(user).context("reading the passwd database")? {
        return Ok(found);
    }
    if let Ok(uid) = user.parse()
        && let Some(found) =
            User::from_uid(Uid::from_raw(uid)).context("reading the passwd database")?
    {
        return Ok(found);
    }
    bail!("no such user: {user:?}")
}

/// The user's supplementary groups, as the group database lists them (its gid among them).
fn groups_of(user: &User) -> Result<Vec<Gid>> {
    let name = CString::new(user.name.as_str()).context("a user name with a NUL byte")?;
    getgrouplist(&name, user.gid).with_context(|| format!("listing the groups of {:?}", user.name))
}

/// Groups, then gid, then uid: once the uid is gone, the other two can no longer be changed.
/// Then checks that all three ids really are the target's, real, effective and saved alike.
fn become_user(user: &User, groups: &[Gid]) -> Result<()> {
    let on =
        |what: &'static str| move |e: nix::Error| anyhow!("{what} for user {:?}: {e}", user.name);
    setgroups(groups).map_err(on("setgroups"))?;
    setgid(user.gid).map_err(on("setgid"))?;
    setuid(user.uid).map_err(on("setuid"))?;
    let uids = getresuid().context("reading the process's uids")?;
    let gids = getresgid().context("reading the process's gids")?;
    let (uids, gids) = (
        [uids.real, uids.effective, uids.saved],
        [gids.real, gids.effective, gids.saved],
    );
    if uids != [user.uid; 3] || gids != [user.gid; 3] {
        bail!(
            "refusing to run: after dropping to {:?} the uids are {uids:?} and the gids {gids:?}",
            user.name
        );
    }
    let mut have = getgroups().context("getgroups")?;
    let mut want = groups.to_vec();
    for list in [&mut have, &mut want] {
        list.sort_unstable_by_key(|g| g.as_raw());
        list.dedup();
    }
    if have != want {
        bail!("refusing to run: the supplementary groups are {have:?}, not {want:?}");
    }
    Ok(())
}

/// Marks every descriptor above 2 close-on-exec, so CMD inherits none of ours (the control
/// socket's connection among them) nor any our caller leaked to us.
fn close_inherited() -> Result<()> {
    // SAFETY: close_range takes plain integers; CLOEXEC only flags descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("refusing to run: marking inherited descriptors close-on-exec");
    }
    Ok(())
}

/// The cgroup of `label`, once the daemon says it enforces the label.
pub fn label_cgroup(socket: &Path, label: &str) -> Result<PathBuf> {
    let reply = control::request(
        socket,
        &control::Request::Label {
            label: label.to_string(),
        },
    )?;
    match reply {
        control::Reply::Label(l) => Ok(l.cgroup),
        control::Reply::Error(e) => bail!("{e}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

fn join(socket: &Path, label: &str) -> Result<String> {
    let dir = label_cgroup(socket, label).context("refusing to run unconfined")?;
    cgroup::enter(&dir)?;
    // Check that the move really happened before running anything.
    let now = cgroup::current_path()?;
    let want = format!("/actgate/{label}");
    if !now.ends_with(&want) {
        bail!(
            "refusing to run unconfined: after joining {} this process is in cgroup {now}",
            dir.display()
        );
    }
    Ok(dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_by_uid() {
        let by_name = lookup("root").unwrap();
        assert!(by_name.uid.is_root() && by_name.gid.as_raw() == 0);
        assert_eq!(lookup("0").unwrap(), by_name);
    }

    #[test]
    fn an_unknown_user_is_an_error() {
        let err = lookup("no-such-user-actgate").unwrap_err();
        assert!(format!("{err:#}").contains("no such user"), "{err:#}");
        assert!(lookup("4294967000").is_err());
    }
}
