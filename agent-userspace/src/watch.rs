//! Reload when the policy directory changes, debounced so that an editor's or a deployment's
//! burst of writes becomes one reload.

use std::{path::Path, time::Duration};

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
