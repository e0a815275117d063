//! A whole policy set compiled into everything the kernel needs that doesn't depend on the host.
//!
//! What does depend on the host (which inodes the denied paths name, which cgroup id a label
//! has, which counter index a label keeps across reloads) is resolved later, by the daemon's
//! plan step; this value tells it what to resolve.

use std::ops::Range;

use agent_common::{Action, Limit, LimitKey, MODE_AUDIT, MODE_ENFORCE, NetKey, PathKey};
use thiserror::Error;

use crate::{
    CgroupPattern,
    compile::{
        compile_below_marks, compile_guards, compile_limits, compile_net, compile_paths, defaults,
        denied_capabilities, has_rules, limit_bits,
    },
    model::{Mode, PathPattern, PolicySet},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "{policies} policies need more rule set numbers than the {available} one generation has"
    )]
    TooManyPolicies { policies: usize, available: usize },
}

/// One policy's entries, under its rule set number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRuleset {
    /// The policy's name, for messages.
    pub policy: String,
    /// The first bytes of every trie and inode key of this rule set.
    pub number: u16,
    /// Path trie entries: the exec, file-write, file-read, file-delete and unix rules, their
    /// "below" marks (`agent_common::PATH_KEY_BELOW`), then the move guards.
    pub paths: Vec<(PathKey, u8)>,
    /// Network trie entries of the connect rules.
    pub nets: Vec<(NetKey, u8)>,
    /// Per action: the verdict bits when no rule matches.
    pub defaults: [u8; Action::COUNT],
    /// Per action: which lookups can match at all.
    pub has_rules: [u8; Action::COUNT],
    /// Bit n set: capability n is denied.
    pub denied_caps: u64,
    /// The deny patterns whose files are also denied by inode (see the daemon's `inodes`).
    pub denied_paths: Vec<(Action, PathPattern)>,
    /// `LIMITS` entries: one per budget (slot: the action), one for the breaker (slot
    /// `BREAKER_SLOT`), keyed by `number`.
    pub limits: Vec<(LimitKey, Limit)>,
    /// `LabelInfo::limits` of the rule set's labels: which slots of `limits` are there.
    pub limit_bits: u16,
}

/// One label: the rule set it is judged by, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledLabel {
    pub name: String,
    /// Index into `CompiledSet::rulesets`.
    pub ruleset: usize,
    pub mode: Mode,
    /// The cgroups its policy binds to it, besides its own.
    pub cgroups: Vec<CgroupPattern>,
}

impl CompiledLabel {
    /// The mode as the kernel's `LabelInfo::mode` stores it.
    pub fn kernel_mode(&self) -> u8 {
        match self.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledSet {
    /// One per policy, in the set's order.
    pub rulesets: Vec<CompiledRuleset>,
    /// Every label of every policy, in the set's order.
    pub labels: Vec<CompiledLabel>,
}

/// Compiles every policy of `set`, numbering their rule sets from `numbers.start` on.
///
/// `numbers` is the range one generation of the kernel maps may use, so two generations
/// never share a key.
pub fn compile_set(set: &PolicySet, numbers: Range<u16>) -> Result<CompiledSet, CompileError> {
    let available = numbers.len();
    if set.policies.len() > available {
        return Err(CompileError::TooManyPolicies {
            policies: set.policies.len(),
            available,
        });
    }
    let mut compiled = CompiledSet::default();
    for (index, (policy, number)) in set.policies.iter().zip(numbers).enumerate() {
        let mut paths = compile_paths(policy, number);
        let marks = compile_below_marks(&paths);
        paths.extend(marks);
        paths.extend(compile_guards(policy, number));
        // Not `file_delete`: inode rules catch another hard link reaching a denied file's
        // data, but a delete removes a name, and removing another link of a denied file leaves
        // it whole under the name the rule protects.
        let denied_paths = [
            (Action::Exec, &policy.exec),
            (Action::FileWrite, &policy.file_write),
            (Action::FileRead, &policy.file_read),
        ]
        .into_iter()
        .flat_map(|(action, rules)| rules.denials().map(move |p| (action, p.clone())))
        .collect();
        compiled.rulesets.push(CompiledRuleset {
            policy: policy.name.clone(),
            number,
            paths,
            nets: compile_net(policy, number),
            defaults: defaults(policy),
            has_rules: has_rules(policy),
            denied_caps: denied_capabilities(policy),
            denied_paths,
            limits: compile_limits(policy, number),
            limit_bits: limit_bits(policy),
        });
        compiled
            .labels
            .extend(policy.labels.iter().map(|name| CompiledLabel {
                name: name.clone(),
                ruleset: index,
                mode: policy.mode,
                cgroups: policy.cgroups.clone(),
            }));
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Fallback, NetPattern, Policy, Rules},
        parse_str,
    };
    use agent_common::{PATH_KEY_HEADER, RULE_ALLOW, RULE_DENY};

    const CODER: &str = "\
name: coder
labels: [coding-agent, helper]
files:
  write: { default: deny, allow: [/work/**], deny: [/work/.git/**] }
";
    const WATCHER: &str = "\
name: watcher
labels: [watch]
mode: audit
exec: { deny: [/usr/bin/nc] }
network:
  connect: { default: deny, allow: [10.0.0.0/8] }
";

    fn two() -> PolicySet {
        let mut policies = Vec::new();
        for (file, text) in [("coder.yaml", CODER), ("watcher.yaml", WATCHER)] {
            let (mut parsed, problems) = parse_str(file.as_ref(), text);
            assert!(problems.is_empty(), "{problems:?}");
            policies.append(&mut parsed);
        }
        PolicySet {
            policies,
            ..PolicySet::default()
        }
    }

    #[test]
    fn each_policy_gets_the_next_number_of_the_range() {
        let c = compile_set(&two(), 100..200).unwrap();
        let numbers: Vec<u16> = c.rulesets.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [100, 101]);
        for r in &c.rulesets {
            for (key, _) in &r.paths {
                assert_eq!(key.data[..2], r.number.to_be_bytes(), "{}", r.policy);
            }
            for (key, _) in &r.nets {
                assert_eq!(key.data[..2], r.number.to_be_bytes(), "{}", r.policy);
            }
        }
    }

    #[test]
    fn labels_point_at_their_policys_ruleset_and_mode() {
        let c = compile_set(&two(), 0..10).unwrap();
        let labels: Vec<(&str, usize, u8)> = c
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.ruleset, l.kernel_mode()))
            .collect();
        assert_eq!(
            labels,
            [
                ("coding-agent", 0, MODE_ENFORCE),
                ("helper", 0, MODE_ENFORCE),
                ("watch", 1, MODE_AUDIT),
            ]
        );
    }

    #[test]
    fn a_ruleset_holds_what_the_single_policy_compilers_give() {
        let s = two();
        let c = compile_set(&s, 7..9).unwrap();
        let (coder, watcher) = (&s.policies[0], &s.policies[1]);
        let mut paths = compile_paths(coder, 7);
        let marks = compile_below_marks(&paths);
        assert!(!marks.is_empty());
        paths.extend(marks);
        paths.extend(compile_guards(coder, 7));
        assert_eq!(c.rulesets[0].paths, paths);
        assert_eq!(c.rulesets[1].nets, compile_net(watcher, 8));
        assert_eq!(c.rulesets[0].defaults, defaults(coder));
        assert_eq!(c.rulesets[1].has_rules, has_rules(watcher));
        // The guards of the deny rule are exact keys of the guard action, after the rules.
        let guard = c.rulesets[0].paths.last().unwrap();
        assert_eq!(guard.1, RULE_DENY);
        assert_eq!(guard.0.data[2], agent_common::GUARD_ACTION);
        assert!(guard.0.prefix_len as usize > 8 * PATH_KEY_HEADER);
    }

    #[test]
    fn denied_paths_name_each_deny_pattern_with_its_action() {
        let c = compile_set(&two(), 0..2).unwrap();
        assert_eq!(
            c.rulesets[0].denied_paths,
            [(Action::FileWrite, PathPattern::Tree("/work/.git".into()))]
        );
        assert_eq!(
            c.rulesets[1].denied_paths,
            [(Action::Exec, PathPattern::Exact("/usr/bin/nc".into()))]
        );
    }

    #[test]
    fn delete_rules_are_keyed_guarded_and_defaulted_but_not_denied_by_inode() {
        let text = "name: d\nlabels: [d]\nfiles:\n  delete:\n    default: deny\n    \
                    allow: [/w/**]\n    deny: [/w/keep]\n";
        let (policies, problems) = parse_str("d.yaml".as_ref(), text);
        assert!(problems.is_empty(), "{problems:?}");
        let set = PolicySet {
            policies,
            ..PolicySet::default()
        };
        let r = &compile_set(&set, 3..4).unwrap().rulesets[0];
        let entry = |action: u8, bytes: &[u8]| {
            r.paths.iter().find_map(|(k, flags)| {
                let len = k.prefix_len as usize / 8;
                let rule = k.data[2] == action && k.data[3] == 0;
                (rule && &k.data[PATH_KEY_HEADER..len] == bytes).then_some(*flags)
            })
        };
        let delete = Action::FileDelete as u8;
        assert_eq!(entry(delete, b"/w/"), Some(RULE_ALLOW));
        assert_eq!(entry(delete, b"/w/keep\0"), Some(RULE_ALLOW | RULE_DENY));
        // The deny rule's name can't be moved away or replaced by a tree of the agent's own.
        let guard = agent_common::GUARD_ACTION;
        assert_eq!(entry(guard, b"/w\0"), Some(RULE_DENY));
        assert_eq!(entry(guard, b"/w/keep\0"), Some(RULE_DENY));
        assert_eq!(r.defaults[Action::FileDelete as usize], RULE_DENY);
        assert_eq!(r.has_rules[Action::FileDelete as usize], 1);
        assert!(r.denied_paths.is_empty(), "{:?}", r.denied_paths);
        // Without the section, deletes are left to `files.write` alone.
        let bare = &compile_set(&two(), 0..2).unwrap().rulesets[0];
        assert_eq!(bare.defaults[Action::FileDelete as usize], RULE_ALLOW);
        assert_eq!(bare.has_rules[Action::FileDelete as usize], 0);
        assert!(bare.paths.iter().all(|(k, _)| k.data[2] != delete));
    }

    #[test]
    fn more_policies_than_numbers_is_an_error() {
        assert_eq!(
            compile_set(&two(), 5..6),
            Err(CompileError::TooManyPolicies {
                policies: 2,
                available: 1
            })
        );
    }

    #[test]
    fn an_empty_set_compiles_to_nothing() {
        assert_eq!(
            compile_set(&PolicySet::default(), 0..0),
            Ok(CompiledSet::default())
        );
    }

    #[test]
    fn a_policy_without_rules_still_has_its_defaults() {
        let p = Policy {
            name: "bare".into(),
            labels: vec!["l".into()],
            cgroups: Vec::new(),
            mode: Mode::Enforce,
            exec: Rules::default(),
            anonymous_exec: None,
            file_write: Rules {
                default: Fallback::Deny,
                ..Rules::default()
            },
            file_read: Rules::default(),
            file_delete: Rules::default(),
            connect: Rules::<NetPattern>::default(),
            hosts: Default::default(),
            unix: Rules::default(),
            listen: Rules::default(),
            sockets: Vec::new(),
            process: Default::default(),
            budgets: Vec::new(),
            breaker: None,
            file: "t.yaml".into(),
            line: 1,
        };
        let c = compile_set(
            &PolicySet {
                policies: vec![p],
                ..PolicySet::default()
            },
            0..1,
        )
        .unwrap();
        let r = &c.rulesets[0];
        assert!(r.paths.is_empty() && r.nets.is_empty() && r.denied_paths.is_empty());
        assert!(r.limits.is_empty());
        assert_eq!(r.limit_bits, 0);
        assert_eq!(
            r.defaults,
            [
                RULE_ALLOW, RULE_DENY, RULE_ALLOW, RULE_ALLOW, RULE_DENY, RULE_DENY, RULE_DENY,
                RULE_DENY, RULE_DENY, RULE_DENY, RULE_ALLOW, RULE_ALLOW, RULE_DENY, RULE_ALLOW
            ]
        );
        assert_eq!(r.denied_caps, agent_common::DENIED_CAPABILITIES);
        assert_eq!(r.has_rules, [0; Action::COUNT]);
    }
}
