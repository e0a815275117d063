//! Putting a plan into the kernel's maps, atomically.
//!
//! Every label and trie entry carries a generation (labels in their key, trie entries through
//! their rule set number). A reload writes the next generation beside the one in force, flips
//! `CONFIG.generation` with a single array write, waits until no hook can still be using the
//! old generation (see `rcu`), then deletes it. A hook therefore always judges with one whole
//! policy set.

use std::{
    collections::BTreeMap,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use agent_common::{
    Config, InodeKey, LabelInfo, LabelKey, Limit, LimitKey, MAX_LABEL_LEVELS, NET_KEY_DATA,
    PATH_KEY_DATA, RULE_DENY,
};
use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use tracing::warn;

use crate::{
    pin::LabelNames,
    plan::{LabelEntry, LabelState, MAX_PLAN_LEVELS, Plan},
    rcu::Barrier,
    revocation::Revocations,
};

/// `Config::levels` for `plan` (at most `MAX_PLAN_LEVELS`, sorted).
fn levels(plan: &[u8]) -> [u8; MAX_LABEL_LEVELS] {
    let mut out = [0; MAX_LABEL_LEVELS];
    for (slot, level) in out.iter_mut().zip(plan) {
        *slot = *level;
    }
    out
}

/// The levels of `now` and of `plan` together, shallowest first. Both hold at most
/// `MAX_PLAN_LEVELS`, so all fit.
fn union_levels(now: &[u8; MAX_LABEL_LEVELS], plan: &[u8]) -> [u8; MAX_LABEL_LEVELS] {
    let mut all: Vec<u8> = now
        .iter()
        .chain(plan)
        .copied()
        .filter(|l| *l != 0)
        .collect();
    all.sort_unstable();
    all.dedup();
    levels(&all)
}

/// Rule set numbers of generation 1 start here; generation 0 uses 0..RULESET_SPLIT.
const RULESET_SPLIT: u16 = 1 << 15;

/// Everything one generation wrote, so it can be deleted once replaced.
#[derive(Default)]
struct Written {
    labels: Vec<LabelKey>,
    paths: Vec<Key<[u8; PATH_KEY_DATA]>>,
    inodes: Vec<InodeKey>,
    nets: Vec<Key<[u8; NET_KEY_DATA]>>,
    limits: Vec<LimitKey>,
}

impl Written {
    fn is_empty(&self) -> bool {
        self.labels.is_empty()
            && self.paths.is_empty()
            && self.inodes.is_empty()
            && self.nets.is_empty()
            && self.limits.is_empty()
    }
}

/// The generation a plan must be built for: its number, and the rule set numbers it may use.
pub struct Generation {
    pub number: u32,
    pub rulesets: Range<u16>,
}

pub struct RuleMaps {
    config: Array<MapData, Config>,
    labels: HashMap<MapData, LabelKey, LabelInfo>,
    paths: LpmTrie<MapData, [u8; PATH_KEY_DATA], u8>,
    nets: LpmTrie<MapData, [u8; NET_KEY_DATA], u8>,
    inodes: HashMap<MapData, InodeKey, u8>,
    limits: HashMap<MapData, LimitKey, Limit>,
    current: Config,
    /// The entries of the generation in force.
    written: Written,
    /// The entries of the generation before it, when waiting for its last readers failed.
    retired: Written,
    barrier: Barrier,
    /// Label index → name, in bpffs, for the next daemon.
    names: LabelNames,
    /// The generation in force, for the watchdog to compare with `CONFIG`.
    in_force: Arc<AtomicU32>,
    /// Cleared for the labels a plan releases.
    revocations: Revocations,
}

/// The map `name` of the object, as the map type `T`.
pub fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} is missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl RuleMaps {
    pub fn new(
        ebpf: &mut Ebpf,
        events_allow: bool,
        names: LabelNames,
        in_force: Arc<AtomicU32>,
        revocations: Revocations,
    ) -> Result<Self> {
        let mut maps = Self {
            config: take(ebpf, agent_common::maps::CONFIG)?,
            labels: take(ebpf, agent_common::maps::LABELS)?,
            paths: take(ebpf, agent_common::maps::PATH_RULES)?,
            nets: take(ebpf, agent_common::maps::NET_RULES)?,
            inodes: take(ebpf, agent_common::maps::INODE_RULES)?,
            limits: take(ebpf, agent_common::maps::LIMITS)?,
            current: Config {
                generation: 1,
                events_allow: u32::from(events_allow),
                daemon_tgid: std::process::id(),
                levels: [0; MAX_LABEL_LEVELS],
            },
            written: Written::default(),
            retired: Written::default(),
            barrier: Barrier::new()?,
            names,
            in_force,
            revocations,
        };
        maps.config
            .set(0, maps.current, 0)
            .context("writing CONFIG")?;
        maps.in_force
            .store(maps.current.generation, Ordering::SeqCst);
        Ok(maps)
    }

    /// The generation the next plan is for.
    pub fn next(&self) -> Generation {
        let number = self.current.generation ^ 1;
        // A Range can't reach u16::MAX itself; the one number lost is far beyond MAX_POLICIES.
        let rulesets = if number == 1 {
            RULESET_SPLIT..u16::MAX
        } else {
            0..RULESET_SPLIT
        };
        Generation { number, rulesets }
    }

    /// Puts `plan` in force, replacing whatever was. On error nothing changes.
    pub fn apply(&mut self, plan: Plan) -> Result<BTreeMap<u32, LabelState>> {
        ensure!(
            plan.generation == self.next().number,
            "a plan for generation {} can't replace generation {}",
            plan.generation,
            self.current.generation
        );
        // The next generation reuses the keys of the one before the current one.
        self.retire()
            .context("removing the entries of an earlier generation")?;
        let mut written = Written::default();
        if let Err(e) = self.write(&plan, &mut written) {
            // Never in force: no hook reads this generation, so no wait is needed.
            self.remove(written);
            return Err(e);
        }
        // A hook may read the generation of one write and the levels of another: while the
        // generation changes, the levels are both generations', so that neither misses a
        // label. The new ones alone follow.
        let both = Config {
            levels: union_levels(&self.current.levels, &plan.levels),
            ..self.current
        };
        let switched = Config {
            generation: plan.generation,
            ..both
        };
        let next = Config {
            levels: levels(&plan.levels),
            ..switched
        };
        let switch = [both, switched]
            .into_iter()
            .try_for_each(|config| self.config.set(0, config, 0));
        if let Err(e) = switch {
            // Back to what was: the entries of the new generation go, unused.
            let _ = self.config.set(0, self.current, 0);
            self.remove(written);
            return Err(e).context("switching CONFIG to the new generation");
        }
        self.current = match self.config.set(0, next, 0) {
            Ok(()) => next,
            Err(e) => {
                // Both generations' levels stay searched: the new labels are all found.
                warn!("CONFIG keeps the previous generation's levels too: {e}");
                switched
            }
        };
        self.in_force.store(plan.generation, Ordering::SeqCst);
        for label in &plan.released {
            if let Err(e) = self.revocations.restore(*label) {
                warn!("label index {label} is gone, but its revocation stays: {e:#}");
            }
        }
        self.retired = std::mem::replace(&mut self.written, written);
        if let Err(e) = self.retire() {
            // The new policies are in force; the old entries go at the next reload.
            warn!("keeping the previous generation's entries until the next reload: {e:#}");
        }
        Ok(plan.states)
    }

    /// Adds label entries to the generation in force: cgroups bound since it was put in force
    /// (see `binding`), judged as their labels' other cgroups from the moment their entry is
    /// in. A level not yet searched is added to `CONFIG` after the entries; until then a hook
    /// may miss the new cgroup, as it did before. On error the entries written stay, unused
    /// until the next generation removes them.
    pub fn add_labels(&mut self, entries: &[LabelEntry]) -> Result<()> {
        let mut levels: Vec<u8> = self
            .current
            .levels
            .iter()
            .copied()
            .filter(|l| *l != 0)
            .collect();
        levels.extend(entries.iter().map(|e| e.level as u8));
        levels.sort_unstable();
        levels.dedup();
        ensure!(
            levels.len() <= MAX_PLAN_LEVELS,
            "the new cgroups would make {} levels to search",
            levels.len()
        );
        for entry in entries {
            ensure!(
                entry.key.generation == self.current.generation,
                "an entry for generation {} added to generation {}",
                entry.key.generation,
                self.current.generation
            );
            self.labels
                .insert(entry.key, entry.info, 0)
                .with_context(|| format!("adding a cgroup of label {:?}", entry.name))?;
            self.written.labels.push(entry.key);
        }
        let next = Config {
            levels: self::levels(&levels),
            ..self.current
        };
        if next != self.current {
            self.config
                .set(0, next, 0)
                .context("adding a level to CONFIG")?;
            self.current = next;
        }
        Ok(())
    }

    /// The generation in force.
    pub fn generation(&self) -> u32 {
        self.current.generation
    }

    /// Deletes the retired generation's entries once no hook can be reading them.
    fn retire(&mut self) -> Result<()> {
        if self.retired.is_empty() {
            return Ok(());
        }
        self.barrier.wait()?;
        let old = std::mem::take(&mut self.retired);
        self.remove(old);
        Ok(())
    }

    fn write(&mut self, plan: &Plan, written: &mut Written) -> Result<()> {
        for ruleset in &plan.rulesets {
            let policy = &ruleset.policy;
            for (key, flags) in &ruleset.paths {
                let key = Key::new(key.prefix_len, key.data);
                self.paths.insert(&key, flags, 0).with_context(|| {
                    format!("adding a path rule of policy {policy:?}: the PATH_RULES map is full; raise --max-path-rules")
                })?;
                written.paths.push(key);
            }
            for (key, flags) in &ruleset.nets {
                let key = Key::new(key.prefix_len, key.data);
                self.nets.insert(&key, flags, 0).with_context(|| {
                    format!("adding a network rule of policy {policy:?}: the NET_RULES map is full; raise --max-net-rules")
                })?;
                written.nets.push(key);
            }
            for key in &ruleset.inodes {
                self.inodes.insert(key, RULE_DENY, 0).with_context(|| {
                    format!(
                        "adding a denied file of policy {policy:?}: the INODE_RULES map is full"
                    )
                })?;
                written.inodes.push(*key);
            }
            for (key, limit) in &ruleset.limits {
                self.limits.insert(key, limit, 0).with_context(|| {
                    format!("adding a budget of policy {policy:?}: the LIMITS map is full")
                })?;
                written.limits.push(*key);
            }
        }
        for label in &plan.labels {
            self.names.write(label.info.label, &label.name)?;
            self.labels
                .insert(label.key, label.info, 0)
                .with_context(|| format!("adding label {:?}", label.name))?;
            written.labels.push(label.key);
        }
        Ok(())
    }

    /// Deletes entries of a generation no longer in force. A failure here leaves unused
    /// entries behind; it can't change a decision, so it is ignored.
    fn remove(&mut self, w: Written) {
        for k in w.labels {
            let _ = self.labels.remove(&k);
        }
        for k in w.paths {
            let _ = self.paths.remove(&k);
        }
        for k in w.nets {
            let _ = self.nets.remove(&k);
        }
        for k in w.inodes {
            let _ = self.inodes.remove(&k);
        }
        for k in w.limits {
            let _ = self.limits.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_searches_the_levels_of_both_generations() {
        assert_eq!(levels(&[2, 5]), [2, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            union_levels(&levels(&[2, 5]), &[1, 2, 3, 4]),
            [1, 2, 3, 4, 5, 0, 0, 0]
        );
        assert_eq!(
            union_levels(&levels(&[5, 6, 7, 8]), &[1, 2, 3, 4]),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }
}
