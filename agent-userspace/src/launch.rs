//! `actgate exec --label L -- CMD`: run CMD inside label L's cgroup, or not at all.

use std::{os::unix::process::CommandExt, path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{cgroup, control};

/// Exit codes follow env(1)/chroot(1): 125 when actgate itself refuses or fails, 126 when CMD
/// can't be run, 127 when it isn't found.
pub const EXIT_REFUSED: i32 = 125;
pub const EXIT_CANNOT_RUN: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// Joins the label's cgroup, then replaces this process with CMD. Returns only on failure,
/// with the exit code to use.
pub fn exec(socket: &Path, label: &str, cmd: &[String]) -> (i32, anyhow::Error) {
    let dir = match join(socket, label) {
        Ok(dir) => dir,
        Err(e) => return (EXIT_REFUSED, e),
    };
    let err = Command::new(&cmd[0]).args(&cmd[1..]).exec();
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
