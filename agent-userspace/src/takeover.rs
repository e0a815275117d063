//! Taking over from whatever set judged before this daemon: a new set judges only once its
//! policies are in force, and the sets before it are removed only after that, so at every
//! moment some set judges every labelled action (see `pin`). A start that fails part way puts
//! the previous set back in charge and removes its own.

use std::{
    fs::File,
    os::{
        fd::AsRawFd,
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::Path,
};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use tracing::{error, info, warn};

use crate::{pin::Pins, rcu::Barrier};

/// Held by the running daemon, and by `actgate unload` while it removes the pins: one of
/// them at a time changes the pins.
pub struct Lock {
    _held: Flock<File>,
}

impl Lock {
    /// Takes the lock in `runtime_dir`; None while a daemon holds it. The directory and the
    /// file are root's alone: anyone who could open the file could hold the lock and keep a
    /// restarted daemon from starting.
    pub fn take(runtime_dir: &Path) -> Result<Option<Self>> {
        std::fs::create_dir_all(runtime_dir)
            .with_context(|| format!("creating {}", runtime_dir.display()))?;
        std::fs::set_permissions(runtime_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", runtime_dir.display()))?;
        let path = runtime_dir.join("daemon.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(Self { _held: held })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((file, e)) => Err(e)
                .with_context(|| format!("locking {} (fd {})", path.display(), file.as_raw_fd())),
        }
    }
}

pub struct Takeover {
    pins: Pins,
    instance: u64,
    previous: Option<u64>,
    switched: bool,
    committed: bool,
}

impl Takeover {
    /// Starts taking over with the set `instance`, already attached but not yet judging.
    pub fn begin(pins: Pins, instance: u64) -> Result<Self> {
        let previous = pins.owner()?;
        match previous {
            Some(p) => info!(previous = p, instance, "taking over from the pinned set"),
            None => info!(instance, "no set was in force"),
        }
        Ok(Self {
            pins,
            instance,
            previous,
            switched: false,
            committed: false,
        })
    }

    /// Hands every decision to this set, and waits until no run of the previous one is in
    /// flight.
    pub fn switch(&mut self) -> Result<()> {
        set_owner(&self.pins, self.instance)?;
        self.switched = true;
        info!(instance = self.instance, "this daemon's programs judge");
        Ok(())
    }

    /// Removes every other set (their programs detach) and ring buffers of other builds.
    pub fn commit(mut self, events_pin: &Path) -> Result<()> {
        if !self.switched {
            bail!("a take-over can't be committed before its set judges");
        }
        self.committed = true;
        for set in self.pins.sets()? {
            if set != self.instance {
                self.pins.remove_set(set)?;
                info!(set, "removed the set this daemon took over from");
            }
        }
        self.pins.remove_other_events(events_pin)
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Back to the set that judged before, if it is still pinned; else to none, since
        // this set is about to go.
        let back = self
            .previous
            .filter(|p| self.pins.set_dir(*p).is_dir())
            .unwrap_or(0);
        if self.switched
            && let Err(e) = set_owner(&self.pins, back)
        {
            error!("handing judging back to set {back} failed: {e:#}");
        }
        if let Err(e) = self.pins.remove_set(self.instance) {
            warn!("removing this daemon's unfinished set: {e:#}");
        }
    }
}

/// Writes `OWNER`, then waits until every program run that began before has finished.
fn set_owner(pins: &Pins, instance: u64) -> Result<()> {
    pins.set_owner(instance)?;
    Barrier::new()?.wait()
}
