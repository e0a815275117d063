//! What the resolver tells the rest of the daemon: per label counts for the metrics, and the
//! names behind the host ids of the kernel's events.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

/// How a lookup went, as `actgate_dns_queries_total`'s `verdict` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded and answered.
    Allowed,
    /// Answered REFUSED: no rule allows the name, a rule denies it, or the label is revoked.
    Refused,
    /// Audit mode: answered, though enforce mode would have refused it.
    Audit,
    /// Not answered (SERVFAIL or no reply): the upstream failed, the query couldn't be read,
    /// or the addresses couldn't be put in the kernel.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Self::Allowed, Self::Refused, Self::Audit, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Audit => "audit",
            Self::Failed => "failed",
        }
    }
}

/// One label's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelStats {
    /// Per `Outcome`, in the order of `Outcome::ALL`.
    pub queries: [u64; 4],
    /// Answer records the rebinding guard dropped.
    pub dropped: u64,
    /// Lookups evicted to keep within the label's limits.
    pub evicted: u64,
    /// Distinct addresses the label may reach by name right now.
    pub addresses: u64,
}

/// How long a name outlives its last address, so that the events of connects judged just
/// before still find it.
const RETIRED_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Names {
    next: u32,
    by_id: HashMap<u32, String>,
    retired: VecDeque<(Instant, u32)>,
}

#[derive(Debug, Default)]
struct Inner {
    labels: BTreeMap<u32, LabelStats>,
    names: Names,
}

#[derive(Debug, Default)]
pub struct Telemetry(Mutex<Inner>);

impl Telemetry {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn count(&self, label: u32, outcome: Outcome) {
        self.with(|i| i.labels.entry(label).or_default().queries[outcome as usize] += 1);
    }

    pub fn dropped(&self, label: u32, records: u64) {
        self.with(|i| i.labels.entry(label).or_default().dropped += records);
    }

    pub fn evicted(&self, label: u32) {
        self.with(|i| i.labels.entry(label).or_default().evicted += 1);
    }

    pub fn set_addresses(&self, label: u32, addresses: u64) {
        self.with(|i| i.labels.entry(label).or_default().addresses = addresses);
    }

    pub fn stats(&self, label: u32) -> LabelStats {
        self.with(|i| i.labels.get(&label).cloned().unwrap_or_default())
    }

    /// A new id for a name (never 0, the events' "no name").
    pub fn name_id(&self, name: &str) -> u32 {
        self.with(|i| {
            let n = &mut i.names;
            n.next = n.next.checked_add(1).unwrap_or(1);
            n.by_id.insert(n.next, name.to_owned());
            n.next
        })
    }

    /// The name is no longer in the kernel's map; it is forgotten after `RETIRED_FOR`.
    pub fn retire(&self, id: u32) {
        self.with(|i| {
            let n = &mut i.names;
            let now = Instant::now();
            n.retired.push_back((now, id));
            while let Some((at, old)) = n.retired.front().copied() {
                if now.duration_since(at) < RETIRED_FOR {
                    break;
                }
                n.by_id.remove(&old);
                n.retired.pop_front();
            }
        });
    }

    /// The name behind an event's host id.
    pub fn host(&self, id: u32) -> Option<String> {
        (id != 0)
            .then(|| self.with(|i| i.names.by_id.get(&id).cloned()))
            .flatten()
    }
}
