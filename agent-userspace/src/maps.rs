//! Putting a compiled policy set into the kernel's maps, atomically.
//!
//! Every label and trie entry carries a generation (labels in their key, trie entries through
//! their rule set number). A reload writes the next generation beside the one in force, flips
//! `CONFIG.generation` with a single array write, waits for hooks that may still hold the old
//! generation, then deletes it. A hook therefore always judges with one whole policy set.

use std::{collections::BTreeMap, time::Duration};

use agent_common::{
    Config, InodeKey, LabelInfo, LabelKey, MAX_LABELS, MODE_AUDIT, MODE_ENFORCE, NET_KEY_DATA,
    PATH_KEY_DATA, RULE_DENY,
};
use agent_policy::{Mode, PolicySet, compile};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};

use crate::{cgroup::LabelRoot, inodes};

/// Rule set numbers of generation 1 start here; generation 0 uses 0..RULESET_SPLIT.
const RULESET_SPLIT: u16 = 1 << 15;

/// What one label resolves to, for events, status and metrics.
#[derive(Clone, Debug)]
pub struct LabelState {
    pub name: String,
    pub policy: String,
    pub mode: Mode,
}

/// Everything one generation wrote, so it can be deleted once replaced.
#[derive(Default)]
struct Written {
    labels: Vec<LabelKey>,
    paths: Vec<Key<[u8; PATH_KEY_DATA]>>,
    inodes: Vec<InodeKey>,
    nets: Vec<Key<[u8; NET_KEY_DATA]>>,
}

pub struct RuleMaps {
    config: Array<MapData, Config>,
    labels: HashMap<MapData, LabelKey, LabelInfo>,
    paths: LpmTrie<MapData, [u8; PATH_KEY_DATA], u8>,
    nets: LpmTrie<MapData, [u8; NET_KEY_DATA], u8>,
    inodes: HashMap<MapData, InodeKey, u8>,
    current: Config,
    written: Written,
    /// Label name → stable index. Indexes are never reused, so a label keeps its counters.
    indexes: BTreeMap<String, u32>,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} is missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl RuleMaps {
    pub fn new(ebpf: &mut Ebpf, events_allow: bool) -> Result<Self> {
        let mut maps = Self {
            config: take(ebpf, agent_common::maps::CONFIG)?,
            labels: take(ebpf, agent_common::maps::LABELS)?,
            paths: take(ebpf, agent_common::maps::PATH_RULES)?,
            nets: take(ebpf, agent_common::maps::NET_RULES)?,
            inodes: take(ebpf, agent_common::maps::INODE_RULES)?,
            current: Config {
                generation: 1,
                events_allow: u32::from(events_allow),
            },
            written: Written::default(),
            indexes: BTreeMap::new(),
        };
        maps.config
            .set(0, maps.current, 0)
            .context("writing CONFIG")?;
        Ok(maps)
    }

    /// The stable index of a label, handing out a new one for a label never seen before.
    fn index_of(&mut self, label: &str) -> Result<u32> {
        if let Some(i) = self.indexes.get(label) {
            return Ok(*i);
        }
        let next = self.indexes.len() as u32;
        if next >= MAX_LABELS {
            bail!("more than {MAX_LABELS} distinct labels since the daemon started; restart it");
        }
        self.indexes.insert(label.to_string(), next);
        Ok(next)
    }

    /// Puts `set` in force, replacing whatever was. On error nothing changes.
    pub fn apply(
        &mut self,
        set: &PolicySet,
        root: &LabelRoot,
    ) -> Result<BTreeMap<u32, LabelState>> {
        let generation = self.current.generation ^ 1;
        let base = if generation == 1 { RULESET_SPLIT } else { 0 };
        let mut written = Written::default();
        let result = self.write(set, root, generation, base, &mut written);
        match result {
            Ok(states) => {
                let next = Config {
                    generation,
                    ..self.current
                };
                self.config
                    .set(0, next, 0)
                    .context("switching CONFIG to the new generation")?;
                self.current = next;
                // A hook reads the generation once, then looks its label and rules up; these
                // lookups finish within microseconds, long before this grace period ends.
                std::thread::sleep(Duration::from_millis(50));
                let old = std::mem::replace(&mut self.written, written);
                self.remove(old);
                Ok(states)
            }
            Err(e) => {
                self.remove(written);
                Err(e)
            }
        }
    }

    fn write(
        &mut self,
        set: &PolicySet,
        root: &LabelRoot,
        generation: u32,
        base: u16,
        written: &mut Written,
    ) -> Result<BTreeMap<u32, LabelState>> {
        let mut states = BTreeMap::new();
        for (i, policy) in set.policies.iter().enumerate() {
            let ruleset = base
                + u16::try_from(i)
                    .ok()
                    .filter(|i| *i < RULESET_SPLIT)
                    .context("too many policies")?;
            let paths = compile::compile_paths(policy, ruleset);
            for (key, flags) in paths
                .into_iter()
                .chain(compile::compile_guards(policy, ruleset))
            {
                let key = Key::new(key.prefix_len, key.data);
                self.paths.insert(&key, flags, 0).with_context(|| {
                    format!("adding a path rule of policy {:?}: the PATH_RULES map is full; raise --max-path-rules", policy.name)
                })?;
                written.paths.push(key);
            }
            for (key, flags) in compile::compile_net(policy, ruleset) {
                let key = Key::new(key.prefix_len, key.data);
                self.nets.insert(&key, flags, 0).with_context(|| {
                    format!("adding a network rule of policy {:?}: the NET_RULES map is full; raise --max-net-rules", policy.name)
                })?;
                written.nets.push(key);
            }
            for key in inodes::denied_inodes(policy, ruleset) {
                self.inodes.insert(key, RULE_DENY, 0).with_context(|| {
                    format!(
                        "adding a denied file of policy {:?}: the INODE_RULES map is full",
                        policy.name
                    )
                })?;
                written.inodes.push(key);
            }
            for name in &policy.labels {
                let cgroup_id = root.ensure_label(name)?;
                let label = self.index_of(name)?;
                let key = LabelKey {
                    cgroup_id,
                    generation,
                    _pad: 0,
                };
                let info = LabelInfo {
                    label,
                    ruleset,
                    mode: match policy.mode {
                        Mode::Enforce => MODE_ENFORCE,
                        Mode::Audit => MODE_AUDIT,
                    },
                    _pad: 0,
                    defaults: compile::defaults(policy),
                    has_rules: compile::has_rules(policy),
                };
                self.labels
                    .insert(key, info, 0)
                    .with_context(|| format!("adding label {name:?}"))?;
                written.labels.push(key);
                states.insert(
                    label,
                    LabelState {
                        name: name.clone(),
                        policy: policy.name.clone(),
                        mode: policy.mode,
                    },
                );
            }
        }
        Ok(states)
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
    }
}
