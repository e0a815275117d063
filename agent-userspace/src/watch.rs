//! Reload when the policy directory changes, debounced so that an editor's or a deployment's
//! burst of writes becomes one reload.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use notify_debouncer_mini::{
    Debouncer, new_debouncer,
    notify::{RecommendedWatcher, RecursiveMode},
};
use tokio::sync::mpsc;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What a reload would read: each entry's name, size and modification time.
type Fingerprint = Vec<(OsString, u64, Option<SystemTime>)>;

/// A watch of the policy directory. Dropping it stops the watch.
pub struct Watch {
    _debouncer: Debouncer<RecommendedWatcher>,
    dir: PathBuf,
    /// The directory as the last reload (or the start) read it.
    seen: Arc<Mutex<Fingerprint>>,
}

/// Watches `dir`; each settled burst of changes to what a reload reads sends one message.
///
/// The watcher also reports the daemon's own reads of the files (inotify open/access events),
/// so a burst counts only when the directory's fingerprint differs from the one last seen.
pub fn watch(dir: &Path, tx: mpsc::Sender<()>) -> Result<Watch> {
    let seen = Arc::new(Mutex::new(fingerprint(dir)));
    let (watched, last) = (dir.to_path_buf(), seen.clone());
    let mut debouncer = new_debouncer(
        DEBOUNCE,
        move |res: notify_debouncer_mini::DebounceEventResult| {
            if res.is_err() {
                return;
            }
            let now = fingerprint(&watched);
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if *last != now {
                *last = now;
                // A full channel already has a reload pending, which will read the latest
                // files.
                let _ = tx.try_send(());
            }
        },
    )
    .context("starting the policy directory watcher")?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {} for changes", dir.display()))?;
    Ok(Watch {
        _debouncer: debouncer,
        dir: dir.to_path_buf(),
        seen,
    })
}

impl Watch {
    /// Records the directory as a reload not caused by the watch (SIGHUP) is about to read
    /// it, and drops the change it has already queued: that reload reads those changes, so
    /// the watch mustn't reload the same files again.
    pub fn note_reload(&self, queued: &mut mpsc::Receiver<()>) {
        // Under the lock, so the watch can't queue a change between the two steps.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while queued.try_recv().is_ok() {}
        *seen = fingerprint(&self.dir);
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let meta = e.metadata().ok();
            (
                e.file_name(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    entries.sort();
    entries
}
