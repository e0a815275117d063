//! `budgets:` and `revoke_after:`: what they parse into, what they compile into, and for every
//! kind of bad input the exact place and message `actgate check` prints.

use std::path::Path;

use agent_common::{
    Action, BREAKER_SLOT, LIMIT_MAX, LIMIT_WINDOW_MAX_MS, LIMIT_WINDOW_MIN_MS, Limit, LimitKey,
};
use agent_policy::{
    Breaker, Budget, Policy, PolicySet, compile_limits, compile_set, limit_bits, parse_str,
};

/// A policy with `rest` after its name and labels, which take lines 1 and 2.
fn parse(rest: &str) -> (Vec<Policy>, Vec<String>) {
    let text = format!("name: p\nlabels: [l]\n{rest}");
    let (policies, diags) = parse_str(Path::new("p.yaml"), &text);
    let diags = diags.iter().map(ToString::to_string).collect();
    (policies, diags)
}

fn one(rest: &str) -> Policy {
    let (mut policies, diags) = parse(rest);
    assert!(diags.is_empty(), "{diags:#?}");
    policies.remove(0)
}

/// Asserts `rest` yields exactly these problems, as `actgate check` prints them (less the
/// `p.yaml:` prefix), and no policy.
#[track_caller]
fn expect(rest: &str, expected: &[&str]) {
    let (policies, diags) = parse(rest);
    let expected: Vec<String> = expected.iter().map(|e| format!("p.yaml:{e}")).collect();
    assert_eq!(diags, expected);
    assert!(policies.is_empty());
}

const EXAMPLE: &str = "\
budgets:
  - {action: file_delete, max: 100, per: 1m, then: deny}
  - {action: connect,     max: 60,  per: 10s, then: revoke}
  - action: exec
    max: 1000000
    per: 24h
revoke_after: {denials: 20, within: 10s}
";

#[test]
fn parses_the_documented_example() {
    let p = one(EXAMPLE);
    assert_eq!(
        p.budgets,
        [
            Budget {
                action: Action::FileDelete,
                max: 100,
                per_ms: 60_000,
                revoke: false
            },
            Budget {
                action: Action::Connect,
                max: 60,
                per_ms: 10_000,
                revoke: true
            },
            Budget {
                action: Action::Exec,
                max: LIMIT_MAX,
                per_ms: LIMIT_WINDOW_MAX_MS,
                revoke: false
            },
        ]
    );
    assert_eq!(
        p.breaker,
        Some(Breaker {
            denials: 20,
            within_ms: 10_000
        })
    );
    // Limits are not rules.
    assert_eq!(p.rule_count(), 0);
}

#[test]
fn without_the_keys_there_are_no_limits() {
    let p = one("");
    assert!(p.budgets.is_empty());
    assert_eq!(p.breaker, None);
    let p = one("budgets: []\n");
    assert!(p.budgets.is_empty());
}

#[test]
fn every_budgetable_action_by_its_counter_name() {
    for (action, name) in [
        (Action::Exec, "exec"),
        (Action::FileWrite, "file_write"),
        (Action::FileRead, "file_read"),
        (Action::FileDelete, "file_delete"),
        (Action::Connect, "connect"),
        (Action::UnixConnect, "unix_connect"),
        (Action::Listen, "listen"),
    ] {
        let p = one(&format!(
            "budgets: [{{action: {name}, max: 1, per: 1500ms}}]\n"
        ));
        assert_eq!(p.budgets[0].action, action);
        assert_eq!(p.budgets[0].per_ms, 1_500);
    }
    assert_eq!(
        one("budgets: [{action: exec, max: 1, per: 1s}]\n").budgets[0].per_ms,
        LIMIT_WINDOW_MIN_MS
    );
}

#[test]
fn compiles_into_limits_keyed_by_ruleset_and_slot() {
    let p = one(EXAMPLE);
    let limit = |max, per_ms, revoke| Limit {
        max,
        per_ms,
        revoke,
        _pad: [0; 3],
    };
    let key = |slot: u32| LimitKey {
        ruleset: 9,
        slot: slot as u8,
        _pad: 0,
    };
    assert_eq!(
        compile_limits(&p, 9),
        [
            (key(Action::FileDelete as u32), limit(100, 60_000, 0)),
            (key(Action::Connect as u32), limit(60, 10_000, 1)),
            (
                key(Action::Exec as u32),
                limit(LIMIT_MAX, LIMIT_WINDOW_MAX_MS, 0)
            ),
            // The breaker always revokes.
            (key(BREAKER_SLOT), limit(20, 10_000, 1)),
        ]
    );
    assert_eq!(
        limit_bits(&p),
        1 << Action::FileDelete as u8
            | 1 << Action::Connect as u8
            | 1 << Action::Exec as u8
            | 1 << BREAKER_SLOT
    );
    let bare = one("");
    assert!(compile_limits(&bare, 9).is_empty());
    assert_eq!(limit_bits(&bare), 0);
}

#[test]
fn the_compiled_set_carries_each_rulesets_limits() {
    let (mut policies, diags) = parse_str(Path::new("a.yaml"), "name: a\nlabels: [a]\n");
    assert!(diags.is_empty(), "{diags:?}");
    policies.push(one("revoke_after: {denials: 3, within: 1m}\n"));
    let set = PolicySet {
        policies,
        ..PolicySet::default()
    };
    let c = compile_set(&set, 40..42).unwrap();
    assert!(c.rulesets[0].limits.is_empty());
    assert_eq!(c.rulesets[0].limit_bits, 0);
    assert_eq!(c.rulesets[1].limits, compile_limits(&set.policies[1], 41));
    assert_eq!(c.rulesets[1].limits[0].0.ruleset, 41);
    assert_eq!(c.rulesets[1].limit_bits, 1 << BREAKER_SLOT);
}

#[test]
fn an_unknown_action() {
    expect(
        "budgets:\n  - {action: signal, max: 1, per: 1s}\n",
        &[
            "4:14: invalid `budgets.action` `signal`: expected exec or file_write or file_read or \
           file_delete or connect or unix_connect or listen",
        ],
    );
}

#[test]
fn an_unknown_key() {
    expect(
        "budgets:\n  - {action: exec, max: 1, per: 1s, limit: 2}\n",
        &["4:37: unknown key `limit` in a budget; allowed keys: action, max, per, then"],
    );
    expect(
        "revoke_after: {denials: 1, within: 1s, then: deny}\n",
        &["3:40: unknown key `then` in `revoke_after`; allowed keys: denials, within"],
    );
}

#[test]
fn a_missing_key() {
    expect(
        "budgets:\n  - {action: exec, max: 1}\n  - per: 1s\n",
        &[
            "4:5: missing required key `per` in a budget",
            "5:5: missing required key `action` in a budget",
            "5:5: missing required key `max` in a budget",
        ],
    );
    expect(
        "revoke_after: {within: 1s}\n",
        &["3:15: missing required key `denials` in `revoke_after`"],
    );
}

#[test]
fn a_count_of_zero_over_the_bound_or_not_a_whole_number() {
    expect(
        "budgets:\n  - {action: exec, max: 0, per: 1s}\n  - {action: connect, max: 1000001, per: 1s}\n  - {action: listen, max: ten, per: 1s}\n  - {action: file_read, max: 1.5, per: 1s}\n",
        &[
            "4:25: invalid `budgets.max` `0`: out of range; expected a whole number from 1 to 1000000",
            "5:28: invalid `budgets.max` `1000001`: out of range; expected a whole number from 1 to 1000000",
            "6:27: invalid `budgets.max` `ten`: expected a whole number from 1 to 1000000",
            "7:30: invalid `budgets.max` `1.5`: expected a whole number from 1 to 1000000",
        ],
    );
    expect(
        "revoke_after: {denials: 0, within: 1s}\n",
        &[
            "3:25: invalid `revoke_after.denials` `0`: out of range; expected a whole number from 1 to 1000000",
        ],
    );
    expect(
        "budgets:\n  - {action: exec, max: [1], per: 1s}\n",
        &["4:25: expected a count for `budgets.max`, found a list"],
    );
}

#[test]
fn a_unit_that_does_not_parse() {
    let expected = "expected a whole number and a unit (ms, s, m or h), such as 10s or 1m";
    expect(
        "budgets:\n  - {action: exec, max: 1, per: 10}\n  - {action: connect, max: 1, per: 1 min}\n",
        &[
            &format!("4:33: invalid `budgets.per` `10`: {expected}"),
            &format!("5:36: invalid `budgets.per` `1 min`: {expected}"),
        ],
    );
    expect(
        "revoke_after:\n  denials: 5\n  within: 1d\n",
        &[&format!(
            "5:11: invalid `revoke_after.within` `1d`: {expected}"
        )],
    );
}

#[test]
fn an_absurd_window() {
    let expected = "out of range; a window lasts from 1s to 24h";
    expect(
        "budgets:\n  - {action: exec, max: 1, per: 500ms}\n  - {action: connect, max: 1, per: 25h}\n",
        &[
            &format!("4:33: invalid `budgets.per` `500ms`: {expected}"),
            &format!("5:36: invalid `budgets.per` `25h`: {expected}"),
        ],
    );
    expect(
        "revoke_after: {denials: 5, within: 0s}\n",
        &[&format!(
            "3:36: invalid `revoke_after.within` `0s`: {expected}"
        )],
    );
}

#[test]
fn a_duplicate_action() {
    expect(
        "budgets:\n  - {action: exec, max: 1, per: 1s}\n  - {action: connect, max: 1, per: 1s}\n  - {action: exec, max: 5, per: 1m}\n",
        &["6:14: duplicate budget for `exec`; first at 4:14"],
    );
}

#[test]
fn an_unknown_then() {
    expect(
        "budgets:\n  - {action: exec, max: 1, per: 1s, then: kill}\n",
        &["4:43: invalid `budgets.then` `kill`: expected deny or revoke"],
    );
}

#[test]
fn the_wrong_shapes() {
    expect(
        "budgets: {action: exec, max: 1, per: 1s}\nrevoke_after: 20\n",
        &[
            "3:10: expected a list of budgets for `budgets`, found a mapping",
            "4:15: expected `revoke_after` (a mapping with keys denials, within), found a string",
        ],
    );
    expect(
        "budgets: [exec]\n",
        &["3:11: expected a budget (a mapping with keys action, max, per, then), found a string"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let (_, diags) = parse(
        "budgets:\n  - {action: sleep, max: 0, per: 1y, then: maybe}\nrevoke_after: {denials: x}\n",
    );
    assert_eq!(diags.len(), 6, "{diags:#?}");
}
