//! Resolving what a compiled policy set leaves to the host, into the entries of one generation
//! of the kernel maps: the inodes of denied files, the cgroup id of each label (creating its
//! cgroup) and each label's stable counter index.
//!
//! The host is reached only through `Host`, so a plan is built and checked without a kernel,
//! cgroupfs or the files a policy names.

use std::collections::BTreeMap;

use agent_common::{Action, InodeKey, LabelInfo, LabelKey, MAX_LABELS, NetKey, PathKey};
use agent_policy::{CompiledSet, Mode, PathPattern};
use anyhow::{Result, bail};

use crate::{cgroup::LabelRoot, inodes};

/// What the plan needs to know about the machine it runs on.
pub trait Host {
    /// Creates the label's cgroup if needed; its cgroup id.
    fn label_cgroup(&mut self, label: &str) -> Result<u64>;
    /// The inode entries of rule set `ruleset`'s denied paths.
    fn denied_inodes(&mut self, ruleset: u16, denied: &[(Action, PathPattern)]) -> Vec<InodeKey>;
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
    fn label_cgroup(&mut self, label: &str) -> Result<u64> {
        self.root.ensure_label(label)
    }

    fn denied_inodes(&mut self, ruleset: u16, denied: &[(Action, PathPattern)]) -> Vec<InodeKey> {
        inodes::denied_inodes(&self.ids, ruleset, denied)
    }
}

/// Label name → stable index. Indexes are never reused while the daemon runs, so a label
/// keeps its counters across reloads, even when a reload drops it and a later one brings it
/// back.
#[derive(Debug, Default)]
pub struct LabelIndexes(BTreeMap<String, u32>);

impl LabelIndexes {
    /// The label's index, handing out a new one for a label never seen before.
    fn index_of(&mut self, label: &str) -> Result<u32> {
        if let Some(i) = self.0.get(label) {
            return Ok(*i);
        }
        let next = self.0.len() as u32;
        if next >= MAX_LABELS {
            bail!("more than {MAX_LABELS} distinct labels since the daemon started; restart it");
        }
        self.0.insert(label.to_string(), next);
        Ok(next)
    }
}

/// What one label resolves to, for events, status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelState {
    pub name: String,
    pub policy: String,
    pub mode: Mode,
}

/// The entries of one policy, keyed by its rule set.
#[derive(Debug)]
pub struct RulesetEntries {
    /// The policy's name, for messages.
    pub policy: String,
    pub paths: Vec<(PathKey, u8)>,
    pub nets: Vec<(NetKey, u8)>,
    pub inodes: Vec<InodeKey>,
}

#[derive(Debug)]
pub struct LabelEntry {
    pub name: String,
    pub key: LabelKey,
    pub info: LabelInfo,
}

/// Every entry of one generation, and what its labels mean.
#[derive(Debug)]
pub struct Plan {
    pub generation: u32,
    pub rulesets: Vec<RulesetEntries>,
    pub labels: Vec<LabelEntry>,
    /// Label index → what it resolves to, once this plan is in force.
    pub states: BTreeMap<u32, LabelState>,
}

/// Resolves `compiled` on `host` into the entries of `generation`.
pub fn resolve(
    compiled: CompiledSet,
    generation: u32,
    indexes: &mut LabelIndexes,
    host: &mut impl Host,
) -> Result<Plan> {
    let mut labels = Vec::with_capacity(compiled.labels.len());
    let mut states = BTreeMap::new();
    for label in &compiled.labels {
        let ruleset = &compiled.rulesets[label.ruleset];
        let cgroup_id = host.label_cgroup(&label.name)?;
        let index = indexes.index_of(&label.name)?;
        labels.push(LabelEntry {
            name: label.name.clone(),
            key: LabelKey {
                cgroup_id,
                generation,
                _pad: 0,
            },
            info: LabelInfo {
                label: index,
                ruleset: ruleset.number,
                mode: label.kernel_mode(),
                _pad: 0,
                defaults: ruleset.defaults,
                has_rules: ruleset.has_rules,
                _pad2: [0; 4],
                denied_caps: ruleset.denied_caps,
            },
        });
        states.insert(
            index,
            LabelState {
                name: label.name.clone(),
                policy: ruleset.policy.clone(),
                mode: label.mode,
            },
        );
    }
    let rulesets = compiled
        .rulesets
        .into_iter()
        .map(|r| RulesetEntries {
            inodes: host.denied_inodes(r.number, &r.denied_paths),
            policy: r.policy,
            paths: r.paths,
            nets: r.nets,
        })
        .collect();
    Ok(Plan {
        generation,
        rulesets,
        labels,
        states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{MODE_AUDIT, MODE_ENFORCE};
    use agent_policy::{PolicySet, compile_set, parse_str};
    use anyhow::anyhow;

    /// A machine where every label's cgroup id is 1000 + the order it was first asked for,
    /// and every denied path is one file whose inode is its position in the rule set's list.
    #[derive(Default)]
    struct FakeHost {
        cgroups: Vec<String>,
        asked: Vec<(u16, Vec<(Action, PathPattern)>)>,
        broken_label: Option<&'static str>,
    }

    impl Host for FakeHost {
        fn label_cgroup(&mut self, label: &str) -> Result<u64> {
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
            Ok(1000 + at as u64)
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
    }

    fn set(files: &[&str]) -> PolicySet {
        let mut policies = Vec::new();
        for (i, text) in files.iter().enumerate() {
            let (mut parsed, problems) = parse_str(format!("{i}.yaml").as_ref(), text);
            assert!(problems.is_empty(), "{problems:?}");
            policies.append(&mut parsed);
        }
        PolicySet { policies }
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
        let plan = resolve(compiled, generation, indexes, &mut host).unwrap();
        (plan, host)
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
                mode: Mode::Audit
            }
        );
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
    fn a_host_failure_fails_the_plan() {
        let compiled = compile_set(&set(&[CODER]), 0..1).unwrap();
        let mut host = FakeHost {
            broken_label: Some("helper"),
            ..FakeHost::default()
        };
        let err = resolve(compiled, 0, &mut LabelIndexes::default(), &mut host).unwrap_err();
        assert!(err.to_string().contains("helper"), "{err}");
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
