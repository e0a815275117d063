//! `actgate unload`: the one way enforcement ends. The programs are pinned, so a daemon that
//! exits leaves them in force; removing them is an administrator's explicit act, refused
//! while labelled processes run unless forced, since those would run unconfined afterwards.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    binding,
    cgroup::{self, LabelRoot},
    control::{self, Reply, Request},
    pin::Pins,
    takeover::Lock,
};

/// How long a running daemon may take to unload and exit.
const DAEMON_EXIT: Duration = Duration::from_secs(30);

/// Refuses while processes run beneath any label (actgate's cgroups and the `bound` ones),
/// unless `force`.
pub fn refuse_while_labelled(root: &LabelRoot, bound: &[PathBuf], force: bool) -> Result<()> {
    let running: usize = std::iter::once(&root.dir)
        .chain(bound)
        .map(|d| cgroup::process_count(d))
        .sum();
    if running > 0 && !force {
        bail!(
            "{running} labelled process(es) still run beneath {}{}; they would run unconfined \
             once actgate is unloaded. Stop them first, or pass --force",
            root.dir.display(),
            if bound.is_empty() {
                ""
            } else {
                " and the cgroups bound to labels"
            }
        );
    }
    Ok(())
}

/// Unloads, through the running daemon if there is one; what happened, for the user.
pub fn unload(socket: &Path, pin_dir: &Path, force: bool) -> Result<String> {
    let runtime_dir = socket.parent().unwrap_or(Path::new("/run/actgate"));
    let Some(lock) = Lock::take(runtime_dir)? else {
        // A daemon runs: it holds the links open, so only it can let them go.
        match control::request(socket, &Request::Unload { force })? {
            Reply::Unloading => {}
            Reply::Error(e) => bail!("{e}"),
            other => bail!("unexpected reply from the daemon: {other:?}"),
        }
        let start = Instant::now();
        while Lock::take(runtime_dir)?.is_none() {
            if start.elapsed() > DAEMON_EXIT {
                bail!(
                    "the daemon accepted the unload but is still running after {}s",
                    DAEMON_EXIT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        return Ok("unloaded: the daemon removed its programs and exited".into());
    };
    let Some(pins) = Pins::existing(pin_dir) else {
        return Ok(format!(
            "nothing to unload: nothing is pinned at {}",
            pin_dir.display()
        ));
    };
    let root = LabelRoot::discover()?;
    let bound: Vec<PathBuf> = binding::kept(runtime_dir, &root.mount)
        .into_iter()
        .map(|b| root.mount.join(b.path))
        .collect();
    refuse_while_labelled(&root, &bound, force)?;
    pins.remove_all()?;
    drop(lock);
    Ok(format!(
        "unloaded: removed {}; labelled workloads are no longer governed",
        pin_dir.display()
    ))
}
