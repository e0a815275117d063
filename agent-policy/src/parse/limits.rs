//! `budgets:` and `revoke_after:`: how often a label may act, and how many denials revoke it.

use agent_common::{Action, LIMIT_MAX, LIMIT_WINDOW_MAX_MS, LIMIT_WINDOW_MIN_MS};
use thiserror::Error;

use super::Checker;
use crate::diagnostic::Pos;
use crate::model::{Breaker, Budget};
use crate::yaml::{Node, Value};

/// The actions a budget may cap: those a runaway chain repeats. The others are denied to
/// every label already, or (`socket`) decided once per kind.
pub const BUDGET_ACTIONS: [Action; 7] = [
    Action::Exec,
    Action::FileWrite,
    Action::FileRead,
    Action::FileDelete,
    Action::Connect,
    Action::UnixConnect,
    Action::Listen,
];

const BUDGET_KEYS: &[&str] = &["action", "max", "per", "then"];
const BREAKER_KEYS: &[&str] = &["denials", "within"];

/// Units of a window, with their length in ms.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Why a count or a window is not valid. The messages follow "invalid `KEY` `TEXT`: ".
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("expected a whole number from 1 to {LIMIT_MAX}")]
    NotCount,
    #[error("out of range; expected a whole number from 1 to {LIMIT_MAX}")]
    CountRange,
    #[error("expected a whole number and a unit (ms, s, m or h), such as 10s or 1m")]
    NotDuration,
    #[error(
        "out of range; a window lasts from {} to {}",
        show_ms(LIMIT_WINDOW_MIN_MS),
        show_ms(LIMIT_WINDOW_MAX_MS)
    )]
    WindowRange,
}

/// A budget's `max` or a breaker's `denials`: 1..=`LIMIT_MAX`.
pub fn parse_count(text: &str) -> Result<u32, LimitError> {
    let n = whole(text).ok_or(LimitError::NotCount)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=LIMIT_MAX).contains(n))
        .ok_or(LimitError::CountRange)
}

/// A window such as `500ms`, `10s`, `1m` or `24h`, in ms, within the kernel's bounds. Only
/// these forms: a window is short, and one spelling of it is easier to review.
pub fn parse_duration_ms(text: &str) -> Result<u32, LimitError> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, ms)| *ms)
        .ok_or(LimitError::NotDuration)?;
    let ms = whole(number)
        .ok_or(LimitError::NotDuration)?
        .saturating_mul(scale);
    u32::try_from(ms)
        .ok()
        .filter(|ms| (LIMIT_WINDOW_MIN_MS..=LIMIT_WINDOW_MAX_MS).contains(ms))
        .ok_or(LimitError::WindowRange)
}

/// The value of a run of ASCII digits, saturated; `None` for anything else (signs, `_`,
/// fractions, exponents), which YAML would read as numbers of other kinds.
fn whole(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, so the only failure is overflow.
    Some(text.parse().unwrap_or(u64::MAX))
}

/// `ms` in the largest unit that divides it, as a policy would write it.
fn show_ms(ms: u32) -> String {
    let ms = u64::from(ms);
    let (name, scale) = UNITS
        .iter()
        .rev()
        .find(|(_, scale)| ms % scale == 0)
        .copied()
        .unwrap_or(UNITS[0]);
    format!("{}{name}", ms / scale)
}

impl Checker<'_> {
    /// `budgets:`, a list of `{action, max, per, then}`, at most one per action.
    pub(super) fn budgets(&mut self, node: &Node) -> Vec<Budget> {
        let Value::Seq(items) = &node.value else {
            self.shape_error(
                node,
                format!(
                    "expected a list of budgets for `budgets`, found {}",
                    node.kind()
                ),
            );
            return Vec::new();
        };
        let mut seen: Vec<(Action, Pos)> = Vec::new();
        items
            .iter()
            .filter_map(|item| self.budget(item, &mut seen))
            .collect()
    }

    fn budget(&mut self, node: &Node, seen: &mut Vec<(Action, Pos)>) -> Option<Budget> {
        let fields = self.fields(node, "a budget", BUDGET_KEYS)?;
        self.require(node, &fields, &["action", "max", "per"], "a budget");
        let (mut action, mut max, mut per_ms) = (None, None, None);
        let mut revoke = Some(false);
        for (key, _, value) in &fields {
            match *key {
                "action" => action = self.budget_action(value, seen),
                "max" => max = self.limit(value, "budgets.max", "a count", parse_count),
                "per" => per_ms = self.limit(value, "budgets.per", "a window", parse_duration_ms),
                "then" => {
                    let options = [("deny", false), ("revoke", true)];
                    revoke = self.choice(value, "budgets.then", &options);
                }
                _ => {}
            }
        }
        Some(Budget {
            action: action?,
            max: max?,
            per_ms: per_ms?,
            revoke: revoke?,
        })
    }

    /// A budget's action, unless an earlier budget of the policy has it: two budgets for one
    /// action would share its window in the kernel.
    fn budget_action(&mut self, node: &Node, seen: &mut Vec<(Action, Pos)>) -> Option<Action> {
        let options = BUDGET_ACTIONS.map(|a| (a.as_str(), a));
        let action = self.choice(node, "budgets.action", &options)?;
        if let Some((_, first)) = seen.iter().find(|(a, _)| *a == action) {
            let first = *first;
            self.error(
                node.pos,
                format!(
                    "duplicate budget for `{}`; first at {first}",
                    action.as_str()
                ),
            );
            return None;
        }
        seen.push((action, node.pos));
        Some(action)
    }

    /// `revoke_after: {denials, within}`.
    pub(super) fn breaker(&mut self, node: &Node) -> Option<Breaker> {
        let fields = self.fields(node, "`revoke_after`", BREAKER_KEYS)?;
        self.require(node, &fields, BREAKER_KEYS, "`revoke_after`");
        let (mut denials, mut within_ms) = (None, None);
        for (key, _, value) in &fields {
            match *key {
                "denials" => {
                    denials = self.limit(value, "revoke_after.denials", "a count", parse_count)
                }
                "within" => {
                    within_ms =
                        self.limit(value, "revoke_after.within", "a window", parse_duration_ms)
                }
                _ => {}
            }
        }
        Some(Breaker {
            denials: denials?,
            within_ms: within_ms?,
        })
    }

    /// A count or window, reported at `node` when it doesn't parse.
    fn limit(
        &mut self,
        node: &Node,
        key: &str,
        what: &str,
        parse: fn(&str) -> Result<u32, LimitError>,
    ) -> Option<u32> {
        let text = self.string(node, &format!("{what} for `{key}`"))?;
        match parse(text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(node.pos, format!("invalid `{key}` `{text}`: {e}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_one_unit_and_stay_within_bounds() {
        assert_eq!(parse_duration_ms("1500ms"), Ok(1_500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("24h"), Ok(LIMIT_WINDOW_MAX_MS));
        assert_eq!(parse_duration_ms("1s"), Ok(LIMIT_WINDOW_MIN_MS));
        for bad in [
            "", "10", "s", "10 s", "10S", "1.5s", "-1s", "+1s", "1m30s", "1d", "ms",
        ] {
            assert_eq!(
                parse_duration_ms(bad),
                Err(LimitError::NotDuration),
                "{bad}"
            );
        }
        for absurd in ["0s", "999ms", "25h", "1441m", "99999999999999999999999h"] {
            assert_eq!(
                parse_duration_ms(absurd),
                Err(LimitError::WindowRange),
                "{absurd}"
            );
        }
    }

    #[test]
    fn counts_are_whole_numbers_from_one_to_the_limit() {
        assert_eq!(parse_count("1"), Ok(1));
        assert_eq!(parse_count("007"), Ok(7));
        assert_eq!(parse_count("1000000"), Ok(LIMIT_MAX));
        for bad in ["", "ten", "1e3", "1_000", "+5", "-1", "2.0", "0x10"] {
            assert_eq!(parse_count(bad), Err(LimitError::NotCount), "{bad}");
        }
        for absurd in ["0", "1000001", "99999999999999999999999"] {
            assert_eq!(parse_count(absurd), Err(LimitError::CountRange), "{absurd}");
        }
    }

    #[test]
    fn bounds_are_shown_as_a_policy_writes_them() {
        assert_eq!(show_ms(LIMIT_WINDOW_MIN_MS), "1s");
        assert_eq!(show_ms(LIMIT_WINDOW_MAX_MS), "24h");
        assert_eq!(show_ms(90_000), "90s");
        assert_eq!(show_ms(1_500), "1500ms");
    }
}
