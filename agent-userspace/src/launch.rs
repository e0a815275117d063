//! `actgate exec [--user U] --label L -- CMD`: run CMD inside label L's cgroup, as an
//! unprivileged user unless root is asked for by name, or not at all.

use std::{
    ffi::{CStr, CString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

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
    let prepared = identity(user).and_then(|who| {
        let dir = join(socket, label)?;
        if let Some(who) = &who {
            become_user(who)?;
        }
        close_inherited()?;
        Ok((dir, who))
    });
    let (dir, who) = match prepared {
        Ok(p) => p,
        Err(e) => return (EXIT_REFUSED, e),
    };
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    if let Some(who) = &who {
        command
            .env("HOME", &who.home)
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

/// A passwd entry: the user CMD runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: PathBuf,
}

/// Who CMD runs as; `None` keeps the caller's identity (a non-root caller can't change it).
fn identity(user: Option<&str>) -> Result<Option<User>> {
    if let Some(user) = user {
        return lookup(user).map(Some);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
        (Ok(uid), Ok(gid)) => {
            let uid = uid
                .parse()
                .with_context(|| format!("SUDO_UID {uid:?} is not a uid"))?;
            let gid = gid
                .parse()
                .with_context(|| format!("SUDO_GID {gid:?} is not a gid"))?;
            let entry = getpw(Key::Uid(uid))?.with_context(|| {
                format!("the invoking user (SUDO_UID {uid}) has no passwd entry")
            })?;
            Ok(Some(User { gid, ..entry }))
        }
        _ => bail!(
            "refusing to run the agent as root: pass --user NAME to run it as that user \
             (or --user root to run it as root deliberately)"
        ),
    }
}

/// A user by name, or by numeric uid when it is all digits and no user has that name.
fn lookup(user: &str) -> Result<User> {
    if let Some(found) = getpw(Key::Name(user))? {
        return Ok(found);
    }
    if let Ok(uid) = user.parse()
        && let Some(found) = getpw(Key::Uid(uid))?
    {
        return Ok(found);
    }
    bail!("no such user: {user:?}")
}

enum Key<'a> {
    Name(&'a str),
    Uid(libc::uid_t),
}

fn getpw(key: Key) -> Result<Option<User>> {
    let name = match &key {
        Key::Name(n) => Some(CString::new(*n).context("a user name with a NUL byte")?),
        Key::Uid(_) => None,
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let buf_ptr = buf.as_mut_ptr().cast();
        // SAFETY: every pointer is valid for the call and buf's length is passed with it; the
        // strings the result points to live in buf, which outlives their use below.
        let rc = unsafe {
            match (&key, &name) {
                (_, Some(n)) => {
                    libc::getpwnam_r(n.as_ptr(), &mut pw, buf_ptr, buf.len(), &mut found)
                }
                (Key::Uid(uid), None) => {
                    libc::getpwuid_r(*uid, &mut pw, buf_ptr, buf.len(), &mut found)
                }
                (Key::Name(_), None) => unreachable!("a name key always has its CString"),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .context("reading the passwd database");
        }
        if found.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings inside buf.
        let (name, home) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
        return Ok(Some(User {
            name: name.to_string_lossy().into_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            home: PathBuf::from(home.to_string_lossy().into_owned()),
        }));
    }
}

/// The user's supplementary groups, as the group database lists them (`gid` among them).
fn groups_of(user: &User) -> Result<Vec<libc::gid_t>> {
    let name = CString::new(user.name.as_str()).context("a user name with a NUL byte")?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: groups holds n entries; getgrouplist writes at most n and sets n to the count.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), user.gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return Ok(groups);
        }
        if n as usize <= groups.len() || n > 1 << 16 {
            bail!("listing the groups of {:?} failed", user.name);
        }
        groups.resize(n as usize, 0);
    }
}

/// Groups, then gid, then uid: once the uid is gone, the other two can no longer be changed.
/// Then checks that all three ids really are the target's, real, effective and saved alike.
fn become_user(user: &User) -> Result<()> {
    let groups = groups_of(user)?;
    let os = |what: &str| {
        Err::<(), _>(std::io::Error::last_os_error())
            .with_context(|| format!("{what} for user {:?}", user.name))
    };
    // SAFETY: groups holds groups.len() entries.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        os("setgroups")?;
    }
    // SAFETY: setgid/setuid have no memory preconditions.
    if unsafe { libc::setgid(user.gid) } != 0 {
        os("setgid")?;
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(user.uid) } != 0 {
        os("setuid")?;
    }
    let (uids, gids) = (getres(libc::getresuid)?, getres(libc::getresgid)?);
    if uids != [user.uid; 3] || gids != [user.gid; 3] {
        bail!(
            "refusing to run: after dropping to {:?} the uids are {uids:?} and the gids {gids:?}",
            user.name
        );
    }
    let mut have = current_groups()?;
    let mut want = groups;
    have.sort_unstable();
    have.dedup();
    want.sort_unstable();
    want.dedup();
    if have != want {
        bail!("refusing to run: the supplementary groups are {have:?}, not {want:?}");
    }
    Ok(())
}

fn getres(
    f: unsafe extern "C" fn(*mut u32, *mut u32, *mut u32) -> libc::c_int,
) -> Result<[u32; 3]> {
    let mut ids = [u32::MAX; 3];
    let [r, e, s] = &mut ids;
    // SAFETY: three valid out-pointers.
    if unsafe { f(r, e, s) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the process's ids");
    }
    Ok(ids)
}

fn current_groups() -> Result<Vec<libc::gid_t>> {
    // SAFETY: a zero size only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("getgroups");
    }
    let mut groups = vec![0; n as usize];
    // SAFETY: groups holds n entries.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("getgroups");
    }
    groups.truncate(n as usize);
    Ok(groups)
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

fn join(socket: &Path, label: &str) -> Result<String> {
    let reply = control::request(
        socket,
        &control::Request::Label {
            label: label.to_string(),
        },
    )?;
    let dir = match reply {
        control::Reply::Label(l) => l.cgroup,
        control::Reply::Error(e) => bail!("refusing to run unconfined: {e}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
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
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(lookup("0").unwrap(), by_name);
    }

    #[test]
    fn an_unknown_user_is_an_error() {
        let err = lookup("no-such-user-actgate").unwrap_err();
        assert!(format!("{err:#}").contains("no such user"), "{err:#}");
        assert!(lookup("4294967000").is_err());
    }
}
