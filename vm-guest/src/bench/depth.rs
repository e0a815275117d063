//! The depth runs' setup (issue 18): the cgroups at level 5 and the workers in them.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{Bench, Op, Who, progress, worker::Worker};

/// Cheap operations, where the label search is a large share of the cost, timed in the depth
/// runs: no hook, a file open the directory cache serves, a judged `capable` check, and a
/// `socket_create` that looks for the label and judges nothing of an AF_INET stream socket.
pub const DEPTH_OPS: [Op; 4] = [
    Op::Control,
    Op::OpenReadPlain,
    Op::CapableJudged,
    Op::Socket,
];

/// The cgroup v2 mount in the guest.
const CGROUP2: &str = "/sys/fs/cgroup";
/// The top of the depth workers' cgroups (level 1), beneath CGROUP2.
const SLICE: &str = "actgate-bench.slice";
/// The level-5 cgroup D's policy binds to the label, beneath CGROUP2.
pub const DEEP_BOUND: &str = "actgate-bench.slice/a/b/c/bound.scope";
/// A level-5 cgroup no policy binds.
const DEEP_FREE: &str = "actgate-bench.slice/a/b/c/free.scope";

impl Bench {
    /// Starts the two level-5 workers, each moving itself into its cgroup before it answers.
    /// The orchestrator is unlabelled, so the moves are allowed; the daemon's policy decides
    /// later which of the cgroups is bound.
    pub(super) fn spawn_deep_workers(&mut self, guest: &Path) -> Result<()> {
        remove_cgroups();
        for (who, rel) in [(Who::DeepBound, DEEP_BOUND), (Who::DeepFree, DEEP_FREE)] {
            let dir = Path::new(CGROUP2).join(rel);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            let mut cmd = Command::new(guest);
            cmd.arg("bench-worker").arg("--cgroup").arg(&dir);
            let w = Worker::spawn(cmd)?;
            if w.cgroup != format!("/{rel}") {
                bail!(
                    "the {} worker is in cgroup {}, not /{rel}",
                    who.name(),
                    w.cgroup
                );
            }
            progress(&format!("{} worker in cgroup {}", who.name(), w.cgroup));
            self.workers.insert(who, w);
        }
        Ok(())
    }
}

/// Removes the depth workers' cgroups, deepest first; what still holds a process stays.
pub fn remove_cgroups() {
    fn remove(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    remove(&Path::new(CGROUP2).join(SLICE));
}
