//! Revoked labels. The kernel's `REVOKED` map is the truth: `actgate revoke` writes it (through
//! the daemon), the kernel writes it when a budget with `then: revoke` runs out or the breaker
//! trips, and every hook reads it (agent-ebpf's `revoke.rs`). It is pinned with the kept maps,
//! so a revocation outlives reloads and daemon restarts; the operator's reason is kept beside
//! it, pinned too.

use std::{path::Path, sync::Mutex, time::Duration};

use agent_common::{
    ACTION_SLOTS, Action, Revocation, Trigger, limit_index, maps, revocation_index,
};
use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use serde::{Deserialize, Serialize};

use crate::{
    events::{boot_time, c_str, since_boot},
    pin::Pins,
};

/// bpf(2)'s flag for an update that must not replace an entry (linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// Room for the operator's reason, in bytes (longer reasons are cut at a character boundary).
pub const REASON_LEN: usize = 128;
type StoredReason = [u8; REASON_LEN];

/// A revocation as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// "manual", "budget" or "breaker".
    pub trigger: String,
    /// When, RFC 3339.
    pub since: String,
    pub reason: String,
}

pub struct Revocations {
    revoked: Mutex<HashMap<MapData, u32, Revocation>>,
    counts: Mutex<Array<MapData, u64>>,
    windows: Mutex<Array<MapData, u64>>,
    reasons: Mutex<Array<MapData, StoredReason>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revocations")
    }
}

fn open<T>(path: &Path, make: impl FnOnce(MapData) -> Map) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    T::try_from(make(data)).with_context(|| format!("{} has an unexpected type", path.display()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Revocations {
    /// The revocation maps pinned under `pins` (the kernel's, once a daemon has loaded them).
    pub fn open(pins: &Pins) -> Result<Self> {
        Ok(Self {
            revoked: Mutex::new(open(&pins.map_path(maps::REVOKED), Map::HashMap)?),
            counts: Mutex::new(open(&pins.map_path(maps::REVOCATIONS), Map::Array)?),
            windows: Mutex::new(open(&pins.map_path(maps::WINDOWS), Map::Array)?),
            reasons: Mutex::new(pins.revoke_reasons()?),
        })
    }

    /// Revokes the label with index `label`. `Some` is the revocation already in force, which
    /// stands: the first revocation is the one reported.
    pub fn revoke(&self, label: u32, reason: &str) -> Result<Option<Revoked>> {
        let revocation = Revocation {
            time_ns: since_boot().as_nanos() as u64,
            trigger: Trigger::Manual as u8,
            action: 0,
            _pad: [0; 6],
        };
        let inserted = lock(&self.revoked).insert(label, revocation, BPF_NOEXIST);
        match inserted {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                return Ok(self.get(label));
            }
            Err(e) => bail!("writing the revocation of label index {label}: {e}"),
        }
        lock(&self.reasons)
            .set(label, stored(reason), 0)
            .context("recording the revocation's reason")?;
        // Only the daemon writes the manual slot; the kernel adds to the others.
        let index = revocation_index(label, Trigger::Manual);
        let mut counts = lock(&self.counts);
        let n = counts.get(&index, 0).unwrap_or(0);
        counts
            .set(index, n + 1, 0)
            .context("counting the revocation")?;
        Ok(None)
    }

    /// Lifts the label's revocation, and starts its budgets and breaker afresh. False when it
    /// wasn't revoked.
    pub fn restore(&self, label: u32) -> Result<bool> {
        let removed = match lock(&self.revoked).remove(&label) {
            Ok(()) => true,
            Err(MapError::KeyNotFound) => false,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                false
            }
            Err(e) => bail!("removing the revocation of label index {label}: {e}"),
        };
        let _ = lock(&self.reasons).set(label, [0; REASON_LEN], 0);
        let mut windows = lock(&self.windows);
        for slot in 0..ACTION_SLOTS {
            windows
                .set(limit_index(label, slot), 0, 0)
                .context("resetting the label's budgets")?;
        }
        Ok(removed)
    }

    /// The label's revocation, if it is revoked.
    pub fn get(&self, label: u32) -> Option<Revoked> {
        let r = lock(&self.revoked).get(&label, 0).ok()?;
        let trigger = Trigger::from_u8(r.trigger).unwrap_or(Trigger::Manual);
        let reason = match trigger {
            Trigger::Manual => c_str(
                &lock(&self.reasons)
                    .get(&label, 0)
                    .unwrap_or([0; REASON_LEN]),
            ),
            Trigger::Budget => format!(
                "its {} budget ran out (then: revoke)",
                Action::from_u8(r.action).map_or("unknown", Action::as_str)
            ),
            Trigger::Breaker => "the circuit breaker (revoke_after) tripped".into(),
        };
        Some(Revoked {
            trigger: trigger.as_str().into(),
            since: humantime::format_rfc3339_seconds(boot_time() + Duration::from_nanos(r.time_ns))
                .to_string(),
            reason,
        })
    }

    /// How often the label was revoked by `trigger`.
    pub fn count(&self, label: u32, trigger: Trigger) -> u64 {
        lock(&self.counts)
            .get(&revocation_index(label, trigger), 0)
            .unwrap_or(0)
    }
}

fn stored(reason: &str) -> StoredReason {
    let mut out = [0; REASON_LEN];
    let mut end = reason.len().min(REASON_LEN - 1);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let s = stored(&long);
        assert_eq!(c_str(&s).len(), 126);
        assert_eq!(c_str(&stored("why")), "why");
    }
}
