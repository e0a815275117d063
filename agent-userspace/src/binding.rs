//! Cgroups that exist without actgate, bound to labels: a policy's `cgroups:` patterns (a
//! service's cgroup, a container's scope). Finding the ones that exist now, and watching
//! cgroupfs for the ones that come and go, so that a new match is bound within a second,
//! without a reload.
//!
//! A cgroup is governed from the moment the plan that binds it is in force: what its first
//! processes do before (a few milliseconds after the cgroup appears) is not judged.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_policy::{CgroupPattern, pattern::Component};
use anyhow::{Context, Result};
use notify_debouncer_mini::notify::{
    self, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::plan::Bound;

/// What walking a pattern found, as paths relative to the cgroup v2 mount.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// The cgroups the pattern matches.
    pub matched: Vec<PathBuf>,
    /// The directories where a cgroup it matches may appear or go: each that a leading part
    /// of the pattern matches ("" is the mount itself).
    pub parents: BTreeSet<PathBuf>,
}

/// Walks `pattern` beneath `mount`, one component at a time.
pub fn walk(mount: &Path, pattern: &CgroupPattern) -> Walk {
    let mut walk = Walk::default();
    let mut level = vec![PathBuf::new()];
    for component in pattern.components() {
        walk.parents.extend(level.iter().cloned());
        level = level
            .iter()
            .flat_map(|dir| children(mount, dir, component))
            .collect();
    }
    walk.matched = level;
    walk
}

/// The sub-cgroups of `dir` whose names `component` matches.
fn children(mount: &Path, dir: &Path, component: &Component) -> Vec<PathBuf> {
    if let Some(name) = component.literal() {
        let child = dir.join(name);
        return if mount.join(&child).is_dir() {
            vec![child]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = fs::read_dir(mount.join(dir)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(|n| component.matches(n)))
        .map(|e| dir.join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Watches the directories where bound cgroups may appear. Each creation or removal beneath
/// one sends a message; the daemon then walks the patterns again and, when what they match
/// changed, puts a new plan in force.
pub struct Watch {
    watcher: RecommendedWatcher,
    mount: PathBuf,
    watched: BTreeSet<PathBuf>,
    tx: mpsc::Sender<()>,
}

impl Watch {
    pub fn new(mount: &Path, tx: mpsc::Sender<()>) -> Result<Self> {
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // File changes inside a cgroup (cgroup.events, memory.events) are no news; a lost
            // event (queue overflow) may hide one.
            let news = match res {
                Ok(event) => !matches!(event.kind, EventKind::Modify(_) | EventKind::Access(_)),
                Err(_) => true,
            };
            if news {
                // A full channel already has a walk pending, which sees the latest tree.
                let _ = events.try_send(());
            }
        })
        .context("starting the cgroup watcher (inotify)")?;
        Ok(Self {
            watcher,
            mount: mount.to_path_buf(),
            watched: BTreeSet::new(),
            tx,
        })
    }

    /// Watches exactly `dirs` (relative to the mount). A cgroup may have appeared in a
    /// directory before its watch did, so a new watch asks for a walk.
    pub fn set(&mut self, dirs: &BTreeSet<PathBuf>) {
        for gone in self.watched.difference(dirs) {
            // The directory may be gone already, and its watch with it.
            let _ = self.watcher.unwatch(&self.mount.join(gone));
        }
        let mut added = false;
        let mut watched = BTreeSet::new();
        for dir in dirs {
            if self.watched.contains(dir) {
                watched.insert(dir.clone());
                continue;
            }
            let full = self.mount.join(dir);
            match self.watcher.watch(&full, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir.clone());
                    added = true;
                }
                // Removed since the walk: its parent's watch reports that.
                Err(e) if !full.exists() => drop(e),
                Err(e) => warn!(
                    "not watching {} for new cgroups ({e}): a cgroup created in it is bound at \
                     the next reload only",
                    full.display()
                ),
            }
        }
        self.watched = watched;
        if added {
            let _ = self.tx.try_send(());
        }
    }
}

/// Where the daemon keeps the bound cgroups for the daemon after it, in its runtime
/// directory: a restart must not release a cgroup that a reload would orphan.
const KEPT: &str = "bound.json";

/// Records the bound cgroups in force.
pub fn keep(runtime_dir: &Path, bound: &[Bound]) -> Result<()> {
    let path = runtime_dir.join(KEPT);
    let new = path.with_extension("json.new");
    fs::write(&new, serde_json::to_vec(bound)?)
        .with_context(|| format!("writing {}", new.display()))?;
    fs::rename(&new, &path).with_context(|| format!("replacing {}", path.display()))
}

/// The bound cgroups an earlier daemon recorded that are still there (the same cgroup, not
/// another of the same name).
pub fn kept(runtime_dir: &Path, mount: &Path) -> Vec<Bound> {
    let path = runtime_dir.join(KEPT);
    let Ok(text) = fs::read(&path) else {
        return Vec::new();
    };
    let bound: Vec<Bound> = match serde_json::from_slice(&text) {
        Ok(bound) => bound,
        Err(e) => {
            warn!("ignoring {}: {e}", path.display());
            return Vec::new();
        }
    };
    bound
        .into_iter()
        .filter(|b| fs::metadata(mount.join(&b.path)).is_ok_and(|m| m.ino() == b.cgroup.id))
        .collect()
}

/// Logs the cgroups a new plan bound and let go, against the one before.
pub fn report(before: &[Bound], after: &[Bound]) {
    let key = |b: &Bound| (b.cgroup.id, b.orphaned);
    for b in after
        .iter()
        .filter(|b| !before.iter().any(|o| key(o) == key(b)))
    {
        if b.orphaned {
            continue;
        }
        info!(label = b.label, cgroup = %b.path.display(), "cgroup bound to label {:?}", b.label);
    }
    for b in before.iter().filter(|b| !b.orphaned) {
        if !after.iter().any(|n| n.cgroup.id == b.cgroup.id) {
            info!(label = b.label, cgroup = %b.path.display(), "cgroup no longer bound (gone, empty, or no longer matched)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_policy::pattern::parse_cgroup;

    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        root
    }

    #[test]
    fn a_pattern_matches_directories_one_component_each() {
        let root = tree(&[
            "system.slice/docker-1.scope/inner",
            "system.slice/docker-2.scope",
            "system.slice/ssh.service",
            "user.slice/docker-3.scope",
        ]);
        let pattern = parse_cgroup("system.slice/docker-*.scope").unwrap();
        let walk = walk(root.path(), &pattern);
        assert_eq!(
            walk.matched,
            [
                PathBuf::from("system.slice/docker-1.scope"),
                PathBuf::from("system.slice/docker-2.scope")
            ]
        );
        assert_eq!(
            walk.parents,
            BTreeSet::from([PathBuf::new(), PathBuf::from("system.slice")])
        );
    }

    #[test]
    fn a_missing_parent_is_still_watched_for_from_above() {
        let root = tree(&["system.slice"]);
        let pattern = parse_cgroup("kubepods.slice/*/pod1.slice").unwrap();
        let walk = walk(root.path(), &pattern);
        assert!(walk.matched.is_empty());
        assert_eq!(walk.parents, BTreeSet::from([PathBuf::new()]));
    }

    #[test]
    fn kept_bindings_outlive_the_daemon_while_their_cgroup_does() {
        let mount = tree(&["system.slice/a.scope", "system.slice/b.scope"]);
        let runtime = tempfile::tempdir().unwrap();
        let bound = |path: &str| {
            let id = fs::metadata(mount.path().join(path)).unwrap().ino();
            Bound {
                label: "ci".into(),
                path: path.into(),
                cgroup: crate::plan::Cgroup { id, level: 2 },
                orphaned: false,
            }
        };
        let (a, b) = (bound("system.slice/a.scope"), bound("system.slice/b.scope"));
        keep(runtime.path(), &[a.clone(), b]).unwrap();
        fs::remove_dir(mount.path().join("system.slice/b.scope")).unwrap();
        assert_eq!(kept(runtime.path(), mount.path()), [a]);
        assert!(kept(&runtime.path().join("none"), mount.path()).is_empty());
    }
}
