//! Reload when the policy directory changes, debounced so that an editor's or a deployment's
//! burst of writes becomes one reload.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use notify_debouncer_mini::{
    Debouncer, new_debouncer,
    notify::{RecommendedWatcher, RecursiveMode},
};
use tokio::sync::mpsc;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches `dir`; each settled burst of changes sends one message. Keep the returned value:
/// dropping it stops the watch.
pub fn watch(dir: &Path, tx: mpsc::Sender<()>) -> Result<Debouncer<RecommendedWatcher>> {
    let mut debouncer = new_debouncer(
        DEBOUNCE,
        move |res: notify_debouncer_mini::DebounceEventResult| {
            if res.is_ok() {
                // A full channel already has a reload pending, which will read the latest files.
                let _ = tx.try_send(());
            }
        },
    )
    .context("starting the policy directory watcher")?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {} for changes", dir.display()))?;
    Ok(debouncer)
}

/// What a reload would read: each entry's name, size and modification time. The watcher also
/// reports the daemon's own reads of the files (inotify open/access events), so a reload
/// happens only when this changed.
pub fn fingerprint(dir: &Path) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
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
