//! Resolving what a compiled policy set leaves to the host, into the entries of one generation
//! of the kernel maps: the inodes of denied files, the cgroup id of each label (creating its
//! cgroup) and of the cgroups its policy binds, the levels those sit at, each label's stable
//! counter index, and the labels and bound cgroups a reload drops while processes still run
//! under them (orphans, kept and denied everything).
//!
//! The host is reached only through `Host`, so a plan is built and checked without a kernel,
//! cgroupfs or the files a policy names.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_common::{
    Action, InodeKey, LabelInfo, LabelKey, Limit, LimitKey, MAX_LABEL_LEVEL, MAX_LABEL_LEVELS,
    MAX_LABELS, MODE_ORPHANED, NetKey, PathKey, RULE_DENY,
};
use agent_policy::{CgroupPattern, CompiledSet, Mode, PathPattern, pattern::OWN_CGROUP};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    binding,
    cgroup::{self, LabelRoot},
    inodes,
};

/// A cgroup as the kernel finds it: its id (the directory's inode number) and its level in
/// the hierarchy (the root is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub id: u64,
    pub level: u32,
}

/// A cgroup that exists without actgate, bound to a label by its policy's `cgroups:`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub label: String,
    /// Relative to the cgroup v2 mount.
    pub path: PathBuf,
    pub cgroup: Cgroup,
    /// No pattern matches it any more, but processes still run in it: the kernel denies
    /// everything they do.
    pub orphaned: bool,
}

/// What the plan needs to know about the machine it runs on.
pub trait Host {
    /// Creates the label's cgroup if needed.
    fn label_cgroup(&mut self, label: &str) -> Result<Cgroup>;
    /// The cgroups `pattern` matches now, relative to the cgroup v2 mount.
    fn bound_cgroups(&mut self, pattern: &CgroupPattern) -> Vec<(PathBuf, Cgroup)>;
    /// How many processes run in the cgroup at `path` and beneath it, 0 when it is gone or
    /// is another cgroup than `cgroup` now.
    fn running_in(&mut self, path: &Path, cgroup: Cgroup) -> usize;
    /// The inode entries of rule set `ruleset`'s denied paths.
    fn denied_inodes(&mut self, ruleset: u16, denied: &[(Action, PathPattern)]) -> Vec<InodeKey>;
    /// For a label no policy names: removes its cgroup subtree unless processes run in it,
    /// and returns how many do (0 once removed). A removed cgroup can't be joined, so an
    /// `actgate exec` racing the reload fails instead of running unconfined.
    fn release_label(&mut self, label: &str) -> usize;
}

/// The real machine: label cgroups beneath `root`, files as mounted now.
pub struct System<'a> {
    root: &'a LabelRoot,
    ids: inodes::Identities,
}

impl<'a> System<'a> {
    pub fn new(root: &'a LabelRoot) -> Self {
        Self {
            root,
            ids: inodes::Identities::load(),
        }
    }
}

impl Host for System<'_> {
    fn label_cgroup(&mut self, label: &str) -> Result<Cgroup> {
        Ok(Cgroup {
            id: self.root.ensure_label(label)?,
            level: self.root.label_level(),
        })
    }

    fn bound_cgroups(&mut self, pattern: &CgroupPattern) -> Vec<(PathBuf, Cgroup)> {
        binding::walk(&self.root.mount, pattern)
            .matched
            .into_iter()
            // `*/x` matches beneath actgate's own cgroup too, where labels are its to give.
            .filter(|path| !path.starts_with(OWN_CGROUP))
            .filter_map(|path| {
                // Gone since the walk: nothing to bind.
                let id = fs::metadata(self.root.mount.join(&path)).ok()?.ino();
                let level = self.root.level_of(&path);
                Some((path, Cgroup { id, level }))
            })
            .collect()
    }

    fn running_in(&mut self, path: &Path, cgroup: Cgroup) -> usize {
        let dir = self.root.mount.join(path);
        match fs::metadata(&dir) {
            Ok(m) if m.ino() == cgroup.id => cgroup::process_count(&dir),
            _ => 0,
        }
    }

    fn denied_inodes(&mut self, ruleset: u16, denied: &[(Action, PathPattern)]) -> Vec<InodeKey> {
        inodes::denied_inodes(&self.ids, ruleset, denied)
    }

    fn release_label(&mut self, label: &str) -> usize {
        let dir = self.root.label_dir(label);
        let running = cgroup::process_count(&dir);
        if running > 0 {
            return running;
        }
        match cgroup::remove_tree(&dir) {
            Ok(()) => 0,
            // A process joined since the count (rmdir says EBUSY): it must not go free.
            Err(_) => cgroup::process_count(&dir).max(1),
        }
    }
}

/// Label name → stable index. Indexes are never reused while actgate is loaded (the daemon
/// starts from those kept in bpffs), so a label keeps its counters across reloads and
/// restarts, even when a reload drops it and a later one brings it back.
#[derive(Debug, Default)]
pub struct LabelIndexes(BTreeMap<String, u32>);

impl LabelIndexes {
    /// The indexes handed out before, as the kernel keeps them.
    pub fn known(known: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self(known.into_iter().collect())
    }

    /// The label's index, handing out a new one for a label never seen before.
    fn index_of(&mut self, label: &str) -> Result<u32> {
        if let Some(i) = self.0.get(label) {
            return Ok(*i);
        }
        let next = self.0.values().max().map_or(0, |m| m + 1);
        if next >= MAX_LABELS {
            bail!(
                "more than {MAX_LABELS} distinct labels since actgate was loaded; `actgate \
                 unload` starts over (and resets the counters)"
            );
        }
        self.0.insert(label.to_string(), next);
        Ok(next)
    }
}

/// What one label resolves to, for events, status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelState {
    pub name: String,
    /// The policy that names the label; for an orphan, the last one that did.
    pub policy: String,
    pub mode: Mode,
    /// No policy names the label any more, but processes still run under it: the kernel
    /// denies all they do.
    pub orphaned: bool,
}

/// The rule set number of orphaned labels. They have no rules, so only a move guard's lookup
/// uses it, and `verdict` denies an orphan whatever that finds. No compiled rule set has this
/// number (a generation's range ends below it).
const ORPHAN_RULESET: u16 = u16::MAX;

/// The entries of one policy, keyed by its rule set.
#[derive(Debug)]
pub struct RulesetEntries {
    /// The policy's name, for messages.
    pub policy: String,
    pub paths: Vec<(PathKey, u8)>,
    pub nets: Vec<(NetKey, u8)>,
    pub inodes: Vec<InodeKey>,
    /// Budgets and breaker.
    pub limits: Vec<(LimitKey, Limit)>,
}

#[derive(Debug)]
pub struct LabelEntry {
    pub name: String,
    pub key: LabelKey,
    pub info: LabelInfo,
    /// The level of the cgroup `key` names.
    pub level: u32,
}

/// Every entry of one generation, and what its labels mean.
#[derive(Debug)]
pub struct Plan {
    pub generation: u32,
    pub rulesets: Vec<RulesetEntries>,
    pub labels: Vec<LabelEntry>,
    /// Label index → what it resolves to, once this plan is in force.
    pub states: BTreeMap<u32, LabelState>,
    /// The orphaned labels and how many processes each still runs.
    pub orphans: Vec<(String, usize)>,
    /// The labels dropped with no process left: nothing of theirs lasts, a revocation
    /// included.
    pub released: Vec<u32>,
    /// The cgroups bound to labels, orphaned ones included.
    pub bound: Vec<Bound>,
    /// The levels the entries' cgroups sit at, shallowest first (`Config::levels`).
    pub levels: Vec<u8>,
}

/// At most this many levels per plan: while one generation replaces another, the kernel
/// searches the levels of both.
pub const MAX_PLAN_LEVELS: usize = MAX_LABEL_LEVELS / 2;

/// Resolves `compiled` on `host` into the entries of `generation`. `in_force` and
/// `bound_in_force` are what the generation being replaced resolved to: its labels and bound
/// cgroups that `compiled` drops while processes still run under them become orphans.
pub fn resolve(
    compiled: CompiledSet,
    generation: u32,
    indexes: &mut LabelIndexes,
    in_force: &BTreeMap<u32, LabelState>,
    bound_in_force: &[Bound],
    host: &mut impl Host,
) -> Result<Plan> {
    let mut labels = Vec::with_capacity(compiled.labels.len());
    let mut states = BTreeMap::new();
    let mut bound: Vec<Bound> = Vec::new();
    let entry = |name: &str, cgroup: Cgroup, info: LabelInfo| LabelEntry {
        name: name.to_string(),
        key: LabelKey {
            cgroup_id: cgroup.id,
            generation,
            _pad: 0,
        },
        info,
        level: cgroup.level,
    };
    for label in &compiled.labels {
        let ruleset = &compiled.rulesets[label.ruleset];
        let cgroup = host.label_cgroup(&label.name)?;
        let index = indexes.index_of(&label.name)?;
        let info = LabelInfo {
            label: index,
            ruleset: ruleset.number,
            mode: label.kernel_mode(),
            flags: 0,
            defaults: ruleset.defaults,
            has_rules: ruleset.has_rules,
            limits: ruleset.limit_bits,
            _pad2: [0; 2],
            denied_caps: ruleset.denied_caps,
        };
        labels.push(entry(&label.name, cgroup, info));
        for pattern in &label.cgroups {
            for (path, cgroup) in host.bound_cgroups(pattern) {
                if let Some(other) = bound.iter().find(|b| b.cgroup.id == cgroup.id) {
                    if other.label == label.name {
                        continue;
                    }
                    bail!(
                        "cgroup {} is bound to two labels, {:?} and {:?}: a cgroup can have one \
                         label only; narrow the `cgroups` patterns",
                        path.display(),
                        other.label,
                        label.name
                    );
                }
                labels.push(entry(&label.name, cgroup, info));
                bound.push(Bound {
                    label: label.name.clone(),
                    path,
                    cgroup,
                    orphaned: false,
                });
            }
        }
        states.insert(
            index,
            LabelState {
                name: label.name.clone(),
                policy: ruleset.policy.clone(),
                mode: label.mode,
                orphaned: false,
            },
        );
    }
    let orphan_info = |index: u32| LabelInfo {
        label: index,
        ruleset: ORPHAN_RULESET,
        mode: MODE_ORPHANED,
        flags: 0,
        defaults: [RULE_DENY; Action::COUNT],
        has_rules: [0; Action::COUNT],
        limits: 0,
        _pad2: [0; 2],
        denied_caps: u64::MAX,
    };
    let mut orphans = Vec::new();
    // A bound cgroup no pattern matches any more, with processes left: kept, denied
    // everything, whether or not its label stays.
    for old in bound_in_force {
        if bound.iter().any(|b| b.cgroup.id == old.cgroup.id) {
            continue;
        }
        let running = host.running_in(&old.path, old.cgroup);
        if running == 0 {
            continue;
        }
        let index = indexes.index_of(&old.label)?;
        labels.push(entry(&old.label, old.cgroup, orphan_info(index)));
        orphans.push((
            format!("{} (cgroup {})", old.label, old.path.display()),
            running,
        ));
        bound.push(Bound {
            orphaned: true,
            ..old.clone()
        });
    }
    let mut released = Vec::new();
    for (index, old) in in_force {
        if compiled.labels.iter().any(|l| l.name == old.name) {
            continue;
        }
        let running = host.release_label(&old.name);
        let in_bound = bound.iter().any(|b| b.label == old.name);
        if running == 0 && !in_bound {
            released.push(*index);
            continue;
        }
        if running > 0 {
            let cgroup = host.label_cgroup(&old.name)?;
            labels.push(entry(&old.name, cgroup, orphan_info(*index)));
            orphans.push((old.name.clone(), running));
        }
        states.insert(
            *index,
            LabelState {
                orphaned: true,
                ..old.clone()
            },
        );
    }
    let levels = levels(&labels)?;
    let rulesets = compiled
        .rulesets
        .into_iter()
        .map(|r| RulesetEntries {
            inodes: host.denied_inodes(r.number, &r.denied_paths),
            policy: r.policy,
            paths: r.paths,
            nets: r.nets,
            limits: r.limits,
        })
        .collect();
    Ok(Plan {
        generation,
        rulesets,
        labels,
        states,
        orphans,
        released,
        bound,
        levels,
    })
}

/// The levels of the entries' cgroups, shallowest first.
fn levels(labels: &[LabelEntry]) -> Result<Vec<u8>> {
    let mut levels: Vec<u32> = labels.iter().map(|l| l.level).collect();
    levels.sort_unstable();
    levels.dedup();
    if let Some(deep) = levels.iter().find(|l| **l == 0 || **l > MAX_LABEL_LEVEL) {
        bail!(
            "a label's cgroup sits at level {deep} of the cgroup hierarchy; labels live at levels 1 to {MAX_LABEL_LEVEL}"
        );
    }
    if levels.len() > MAX_PLAN_LEVELS {
        let at: Vec<String> = levels.iter().map(u32::to_string).collect();
        bail!(
            "the labels' cgroups sit at {} different levels of the cgroup hierarchy ({}); the \
             kernel searches at most {MAX_PLAN_LEVELS}: bind cgroups at fewer depths",
            levels.len(),
            at.join(", ")
        );
    }
    Ok(levels.into_iter().map(|l| l as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{BREAKER_SLOT, MODE_AUDIT, MODE_ENFORCE};
    use agent_policy::{PolicySet, compile_set, parse_str};
    use anyhow::anyhow;

    /// A machine where every label's cgroup id is 1000 + the order it was first asked for,
    /// and every denied path is one file whose inode is its position in the rule set's list.
    #[derive(Default)]
    struct FakeHost {
        cgroups: Vec<String>,
        asked: Vec<(u16, Vec<(Action, PathPattern)>)>,
        broken_label: Option<&'static str>,
        /// Label → processes running under it (none when absent).
        running: BTreeMap<String, usize>,
        /// Labels asked to be released, in order.
        released: Vec<String>,
        /// Existing cgroups (relative path, id, level) that patterns may match.
        existing: Vec<(&'static str, u64, u32)>,
        /// Bound cgroup id → processes running in it (none when absent).
        running_in: BTreeMap<u64, usize>,
    }

    impl Host for FakeHost {
        fn bound_cgroups(&mut self, pattern: &CgroupPattern) -> Vec<(PathBuf, Cgroup)> {
            self.existing
                .iter()
                .filter(|(path, _, _)| pattern.matches(path))
                .map(|(path, id, level)| {
                    (
                        PathBuf::from(path),
                        Cgroup {
                            id: *id,
                            level: *level,
                        },
                    )
                })
                .collect()
        }

        fn running_in(&mut self, _: &Path, cgroup: Cgroup) -> usize {
            self.running_in.get(&cgroup.id).copied().unwrap_or(0)
        }

        fn label_cgroup(&mut self, label: &str) -> Result<Cgroup> {
            if self.broken_label == Some(label) {
                return Err(anyhow!("no cgroup for {label}"));
            }
            let at = match self.cgroups.iter().position(|l| l == label) {
                Some(i) => i,
                None => {
                    self.cgroups.push(label.to_string());
                    self.cgroups.len() - 1
                }
            };
            Ok(Cgroup {
                id: 1000 + at as u64,
                level: 2,
            })
        }

        fn denied_inodes(
            &mut self,
            ruleset: u16,
            denied: &[(Action, PathPattern)],
        ) -> Vec<InodeKey> {
            self.asked.push((ruleset, denied.to_vec()));
            denied
                .iter()
                .enumerate()
                .map(|(i, (action, _))| InodeKey {
                    dev: 8,
                    ino: i as u64,
                    ruleset,
                    action: *action as u8,
                    _pad: [0; 5],
                })
                .collect()
        }

        fn release_label(&mut self, label: &str) -> usize {
            self.released.push(label.to_string());
            self.running.get(label).copied().unwrap_or(0)
        }
    }

    fn set(files: &[&str]) -> PolicySet {
        let mut policies = Vec::new();
        for (i, text) in files.iter().enumerate() {
            let (mut parsed, problems) = parse_str(format!("{i}.yaml").as_ref(), text);
            assert!(problems.is_empty(), "{problems:?}");
            policies.append(&mut parsed);
        }
        PolicySet {
            policies,
            ..PolicySet::default()
        }
    }

    const CODER: &str = "\
name: coder
labels: [coding-agent, helper]
exec: { deny: [/usr/bin/nc] }
files:
  read: { deny: [/root/**] }
";
    const WATCHER: &str = "\
name: watcher
labels: [watch]
mode: audit
network:
  connect: { default: deny, allow: [10.0.0.0/8] }
";

    fn plan(files: &[&str], generation: u32, indexes: &mut LabelIndexes) -> (Plan, FakeHost) {
        let compiled = compile_set(&set(files), 40..50).unwrap();
        let mut host = FakeHost::default();
        let plan = resolve(
            compiled,
            generation,
            indexes,
            &BTreeMap::new(),
            &[],
            &mut host,
        )
        .unwrap();
        (plan, host)
    }

    /// A reload on `host` after `before` was in force.
    fn reload(
        files: &[&str],
        indexes: &mut LabelIndexes,
        before: &Plan,
        host: &mut FakeHost,
    ) -> Plan {
        let compiled = compile_set(&set(files), 40..50).unwrap();
        resolve(
            compiled,
            before.generation ^ 1,
            indexes,
            &before.states,
            &before.bound,
            host,
        )
        .unwrap()
    }

    #[test]
    fn labels_get_their_cgroup_generation_ruleset_and_mode() {
        let (plan, _) = plan(&[CODER, WATCHER], 1, &mut LabelIndexes::default());
        let got: Vec<(&str, u64, u32, u32, u16, u8)> = plan
            .labels
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.key.cgroup_id,
                    l.key.generation,
                    l.info.label,
                    l.info.ruleset,
                    l.info.mode,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("coding-agent", 1000, 1, 0, 40, MODE_ENFORCE),
                ("helper", 1001, 1, 1, 40, MODE_ENFORCE),
                ("watch", 1002, 1, 2, 41, MODE_AUDIT),
            ]
        );
        assert_eq!(
            plan.states[&2],
            LabelState {
                name: "watch".into(),
                policy: "watcher".into(),
                mode: Mode::Audit,
                orphaned: false,
            }
        );
        assert!(plan.orphans.is_empty());
    }

    #[test]
    fn defaults_and_has_rules_come_from_the_labels_policy() {
        let (plan, _) = plan(&[CODER, WATCHER], 0, &mut LabelIndexes::default());
        let watch = &plan.labels[2].info;
        assert_eq!(
            watch.defaults[Action::Connect as usize],
            agent_common::RULE_DENY
        );
        assert_ne!(watch.has_rules[Action::Connect as usize], 0);
        assert_eq!(watch.has_rules[Action::Exec as usize], 0);
        let coder = &plan.labels[0].info;
        assert_eq!(coder.has_rules[Action::Exec as usize], 1);
    }

    #[test]
    fn denied_paths_are_resolved_per_ruleset() {
        let (plan, host) = plan(&[CODER, WATCHER], 0, &mut LabelIndexes::default());
        assert_eq!(
            host.asked,
            [
                (
                    40,
                    vec![
                        (Action::Exec, PathPattern::Exact("/usr/bin/nc".into())),
                        (Action::FileRead, PathPattern::Tree("/root".into())),
                    ]
                ),
                (41, vec![]),
            ]
        );
        let coder = &plan.rulesets[0];
        assert_eq!(coder.policy, "coder");
        assert_eq!(coder.inodes.len(), 2);
        assert!(coder.inodes.iter().all(|k| k.ruleset == 40));
        assert!(!coder.paths.is_empty());
        assert!(plan.rulesets[1].inodes.is_empty());
        assert!(!plan.rulesets[1].nets.is_empty());
    }

    #[test]
    fn limits_go_with_the_ruleset_and_their_bits_with_each_label() {
        let limited = format!(
            "{CODER}budgets:\n  - {{action: file_delete, max: 100, per: 1m}}\n\
             revoke_after: {{denials: 20, within: 10s}}\n"
        );
        let (plan, _) = plan(&[&limited, WATCHER], 1, &mut LabelIndexes::default());
        let slots: Vec<(u8, u32)> = plan.rulesets[0]
            .limits
            .iter()
            .map(|(k, l)| (k.slot, l.max))
            .collect();
        assert_eq!(
            slots,
            [(Action::FileDelete as u8, 100), (BREAKER_SLOT as u8, 20)]
        );
        let bits = 1 << Action::FileDelete as u16 | 1 << BREAKER_SLOT;
        for label in &plan.labels {
            let want = if label.info.ruleset == plan.labels[0].info.ruleset {
                bits
            } else {
                0
            };
            assert_eq!(label.info.limits, want, "{}", label.name);
        }
        assert!(plan.rulesets[1].limits.is_empty());
    }

    #[test]
    fn a_label_without_processes_is_released_and_forgotten() {
        let mut indexes = LabelIndexes::default();
        let (first, _) = plan(&[CODER, WATCHER], 1, &mut indexes);
        let compiled = compile_set(&set(&[WATCHER]), 0..100).unwrap();
        let mut host = FakeHost::default();
        let next = resolve(compiled, 0, &mut indexes, &first.states, &[], &mut host).unwrap();
        // `coding-agent` and `helper` went with no process left.
        assert_eq!(next.released, [0, 1]);
        assert!(next.orphans.is_empty());
    }

    #[test]
    fn a_label_keeps_its_index_across_plans_and_new_labels_get_new_ones() {
        let mut indexes = LabelIndexes::default();
        plan(&[CODER, WATCHER], 1, &mut indexes);
        // The next load drops `helper` and `coder`; `watch` keeps index 2.
        let renamed = WATCHER.replace("[watch]", "[fresh, watch]");
        let (next, _) = plan(&[&renamed], 0, &mut indexes);
        let got: Vec<(&str, u32)> = next
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.info.label))
            .collect();
        assert_eq!(got, [("fresh", 3), ("watch", 2)]);
        assert_eq!(next.states.keys().copied().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_restarted_daemon_keeps_the_kept_indexes_and_hands_out_new_ones_above_them() {
        let mut indexes = LabelIndexes::known([("watch".to_string(), 7), ("old".to_string(), 2)]);
        let (next, _) = plan(
            &[WATCHER.replace("[watch]", "[fresh, watch]").as_str()],
            0,
            &mut indexes,
        );
        let got: Vec<(&str, u32)> = next
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.info.label))
            .collect();
        assert_eq!(got, [("fresh", 8), ("watch", 7)]);
    }

    #[test]
    fn a_dropped_label_with_processes_is_kept_orphaned_and_denied_everything() {
        let mut indexes = LabelIndexes::default();
        let mut host = FakeHost::default();
        let compiled = compile_set(&set(&[CODER, WATCHER]), 40..50).unwrap();
        let first = resolve(compiled, 1, &mut indexes, &BTreeMap::new(), &[], &mut host).unwrap();
        host.running.insert("helper".into(), 3);
        // `helper` runs 3 processes, `coding-agent` none: both lose their policy.
        let next = reload(&[WATCHER], &mut indexes, &first, &mut host);
        let orphan = next.labels.iter().find(|l| l.name == "helper").unwrap();
        assert_eq!(orphan.key.cgroup_id, first.labels[1].key.cgroup_id);
        assert_eq!(orphan.key.generation, 0);
        assert_eq!(orphan.info.label, 1);
        assert_eq!(orphan.info.mode, MODE_ORPHANED);
        assert_eq!(orphan.info.defaults, [RULE_DENY; Action::COUNT]);
        assert_eq!(orphan.info.has_rules, [0; Action::COUNT]);
        assert!(
            next.labels
                .iter()
                .all(|l| l.name == "helper" || l.info.ruleset != orphan.info.ruleset)
        );
        assert!(!next.labels.iter().any(|l| l.name == "coding-agent"));
        assert_eq!(host.released, ["coding-agent", "helper"]);
        assert_eq!(next.orphans, [("helper".to_string(), 3)]);
        assert_eq!(
            next.states[&1],
            LabelState {
                name: "helper".into(),
                policy: "coder".into(),
                mode: Mode::Enforce,
                orphaned: true,
            }
        );
        assert_eq!(next.states.keys().copied().collect::<Vec<_>>(), [1, 2]);

        // Still running at the next reload: still orphaned.
        let again = reload(&[WATCHER], &mut indexes, &next, &mut host);
        assert_eq!(again.orphans, [("helper".to_string(), 3)]);
        assert!(again.states[&1].orphaned);

        // A policy names it again: governed by that policy, under the same index.
        let named = reload(&[CODER, WATCHER], &mut indexes, &again, &mut host);
        let helper = named.labels.iter().find(|l| l.name == "helper").unwrap();
        assert_eq!((helper.info.label, helper.info.mode), (1, MODE_ENFORCE));
        assert_eq!(helper.info.ruleset, 40);
        assert!(!named.states[&1].orphaned);
        assert!(named.orphans.is_empty());
    }

    #[test]
    fn an_orphan_without_processes_left_is_dropped() {
        let mut indexes = LabelIndexes::default();
        let mut host = FakeHost::default();
        host.running.insert("helper".into(), 1);
        let compiled = compile_set(&set(&[CODER]), 40..50).unwrap();
        let first = resolve(compiled, 1, &mut indexes, &BTreeMap::new(), &[], &mut host).unwrap();
        let orphaned = reload(&[WATCHER], &mut indexes, &first, &mut host);
        assert!(orphaned.states[&1].orphaned);
        host.running.clear();
        let gone = reload(&[WATCHER], &mut indexes, &orphaned, &mut host);
        assert!(!gone.labels.iter().any(|l| l.name == "helper"));
        assert!(!gone.states.contains_key(&1));
        assert!(gone.orphans.is_empty());
    }

    #[test]
    fn a_host_failure_fails_the_plan() {
        let compiled = compile_set(&set(&[CODER]), 0..1).unwrap();
        let mut host = FakeHost {
            broken_label: Some("helper"),
            ..FakeHost::default()
        };
        let err = resolve(
            compiled,
            0,
            &mut LabelIndexes::default(),
            &BTreeMap::new(),
            &[],
            &mut host,
        )
        .unwrap_err();
        assert!(err.to_string().contains("helper"), "{err}");
    }

    const RUNNER: &str = "\
name: runner
labels: [ci-runner]
cgroups: [\"system.slice/runner.service\", \"system.slice/docker-*.scope\"]
";

    fn host_with(existing: &[(&'static str, u64, u32)]) -> FakeHost {
        FakeHost {
            existing: existing.to_vec(),
            ..FakeHost::default()
        }
    }

    /// The first plan of `files` on `host`.
    fn first(files: &[&str], indexes: &mut LabelIndexes, host: &mut FakeHost) -> Result<Plan> {
        let compiled = compile_set(&set(files), 0..files.len() as u16).unwrap();
        resolve(compiled, 1, indexes, &BTreeMap::new(), &[], host)
    }

    #[test]
    fn bound_cgroups_get_the_labels_entry_at_their_level() {
        let mut host = host_with(&[
            ("system.slice/runner.service", 7, 2),
            ("system.slice/docker-1.scope", 8, 2),
            ("system.slice/ssh.service", 9, 2),
            ("kubepods.slice/x/docker-2.scope", 10, 3),
        ]);
        let plan = first(&[RUNNER], &mut LabelIndexes::default(), &mut host).unwrap();
        let got: Vec<(u64, u32, u32)> = plan
            .labels
            .iter()
            .map(|l| (l.key.cgroup_id, l.info.label, l.level))
            .collect();
        assert_eq!(got, [(1000, 0, 2), (7, 0, 2), (8, 0, 2)]);
        assert_eq!(plan.labels[1].info, plan.labels[0].info);
        let paths: Vec<&Path> = plan.bound.iter().map(|b| b.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                Path::new("system.slice/runner.service"),
                Path::new("system.slice/docker-1.scope")
            ]
        );
        assert_eq!(plan.levels, [2]);
    }

    #[test]
    fn a_cgroup_matched_by_two_labels_fails_the_plan() {
        let other = "name: other\nlabels: [other]\ncgroups: [\"system.slice/*.service\"]\n";
        let mut host = host_with(&[("system.slice/runner.service", 7, 2)]);
        let err = first(&[RUNNER, other], &mut LabelIndexes::default(), &mut host).unwrap_err();
        assert!(err.to_string().contains("bound to two labels"), "{err}");
    }

    #[test]
    fn an_unbound_cgroup_with_processes_is_orphaned_and_an_empty_one_let_go() {
        let mut host = host_with(&[
            ("system.slice/runner.service", 7, 2),
            ("system.slice/docker-1.scope", 8, 2),
        ]);
        let mut indexes = LabelIndexes::default();
        let first = first(&[RUNNER], &mut indexes, &mut host).unwrap();
        // The pattern now names the service only; the scope still runs a process.
        host.running_in.insert(8, 1);
        let narrower =
            "name: runner\nlabels: [ci-runner]\ncgroups: [system.slice/runner.service]\n";
        let next = reload(&[narrower], &mut indexes, &first, &mut host);
        let scope = next.labels.iter().find(|l| l.key.cgroup_id == 8).unwrap();
        assert_eq!(scope.info.mode, MODE_ORPHANED);
        assert_eq!(scope.info.label, first.labels[0].info.label);
        assert!(next.bound.iter().any(|b| b.cgroup.id == 8 && b.orphaned));
        assert_eq!(
            next.orphans,
            [(
                "ci-runner (cgroup system.slice/docker-1.scope)".to_string(),
                1
            )]
        );
        // Once it is empty, it goes.
        host.running_in.clear();
        let last = reload(&[narrower], &mut indexes, &next, &mut host);
        assert!(last.labels.iter().all(|l| l.key.cgroup_id != 8));
        assert!(last.orphans.is_empty());
    }

    #[test]
    fn a_dropped_label_stays_orphaned_while_a_bound_cgroup_runs() {
        let mut host = host_with(&[("system.slice/runner.service", 7, 2)]);
        let mut indexes = LabelIndexes::default();
        let first = first(&[RUNNER], &mut indexes, &mut host).unwrap();
        host.running_in.insert(7, 2);
        let next = reload(&[WATCHER], &mut indexes, &first, &mut host);
        assert!(next.released.is_empty());
        let index = first.labels[0].info.label;
        assert!(next.states[&index].orphaned);
        let service = next.labels.iter().find(|l| l.key.cgroup_id == 7).unwrap();
        assert_eq!(service.info.mode, MODE_ORPHANED);
    }

    #[test]
    fn levels_are_sorted_and_bounded() {
        let mut host = host_with(&[
            ("a", 7, 1),
            ("b/c/d", 8, 3),
            ("e/f/g/h", 9, 4),
            ("i/j/k/l/m", 10, 5),
        ]);
        let wide = "name: wide\nlabels: [w]\ncgroups: [a, b/c/d, e/f/g/h]\n";
        let plan = first(&[wide], &mut LabelIndexes::default(), &mut host).unwrap();
        assert_eq!(plan.levels, [1, 2, 3, 4]);
        let wider = "name: wide\nlabels: [w]\ncgroups: [a, b/c/d, e/f/g/h, i/j/k/l/m]\n";
        let err = first(&[wider], &mut LabelIndexes::default(), &mut host).unwrap_err();
        assert!(err.to_string().contains("5 different levels"), "{err}");
    }

    #[test]
    fn indexes_run_out_at_the_kernels_limit() {
        let mut indexes = LabelIndexes::default();
        for i in 0..MAX_LABELS {
            indexes.index_of(&format!("l{i}")).unwrap();
        }
        assert_eq!(indexes.index_of("l0").unwrap(), 0);
        assert!(indexes.index_of("one-too-many").is_err());
    }
}
