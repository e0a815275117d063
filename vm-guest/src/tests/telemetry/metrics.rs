//! Reading /metrics: exact series, every decision counter of a label, and their changes.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::*;
use crate::{
    expect_eq,
    harness::{NotPassed, Outcome, decision_series, scrape},
};

/// The value of exactly this series (name and labels as the scrape writes them); an error if
/// it is missing or appears twice.
pub(super) fn sample(body: &str, series: &str) -> Result<u64> {
    let mut found = body.lines().filter_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then_some(v)
    });
    let Some(v) = found.next() else {
        bail!("{series} is missing from /metrics:\n{body}");
    };
    if found.next().is_some() {
        bail!("{series} appears more than once on /metrics");
    }
    v.parse()
        .with_context(|| format!("{series} has the value {v:?}, not a whole number"))
}

/// The sum of every series of the metric `name`, whatever their labels, so that a reading
/// stays right when the metric gains a label; an error if /metrics doesn't declare it.
pub(super) fn total(body: &str, name: &str) -> Result<u64> {
    // OpenMetrics declares a counter without its `_total` suffix.
    let family = name.strip_suffix("_total").unwrap_or(name);
    if !body
        .lines()
        .any(|l| l.starts_with(&format!("# TYPE {family} ")))
    {
        bail!("{name} is missing from /metrics:\n{body}");
    }
    let mut sum = 0;
    for line in body.lines() {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        if series == name
            || series
                .strip_prefix(name)
                .is_some_and(|l| l.starts_with('{'))
        {
            sum += v
                .parse::<u64>()
                .with_context(|| format!("{series} has the value {v:?}, not a whole number"))?;
        }
    }
    Ok(sum)
}

pub(super) type Decisions = BTreeMap<(&'static str, &'static str), u64>;

/// Every decision counter of one label in a scrape.
pub(super) fn decisions(body: &str, label: &str) -> Result<Decisions> {
    let mut out = Decisions::new();
    for a in ACTIONS {
        for v in VERDICTS {
            out.insert((a, v), sample(body, &decision_series(label, a, v))?);
        }
    }
    Ok(out)
}

pub(super) fn label_decisions(label: &str) -> Result<Decisions> {
    decisions(&scrape()?, label)
}

/// Fails unless every counter moved by exactly what `want` says (0 when not named), except
/// those in `unchecked`.
pub(super) fn expect_deltas(
    what: &str,
    before: &Decisions,
    after: &Decisions,
    want: &[(&str, &str, u64)],
    unchecked: &[(&str, &str)],
) -> Outcome {
    let mut wrong = Vec::new();
    for (&(a, v), &n) in after {
        if unchecked.contains(&(a, v)) {
            continue;
        }
        let got = n.wrapping_sub(before[&(a, v)]);
        let expected = want
            .iter()
            .find(|(wa, wv, _)| *wa == a && *wv == v)
            .map_or(0, |w| w.2);
        if got != expected {
            wrong.push(format!("{a}/{v}: expected +{expected}, got +{got}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(NotPassed::Fail(format!("{what}: {}", wrong.join("; "))))
    }
}

/// Fails unless `actgate_enforcement_verified` is `want` for every action; `when` ends the
/// failure's description.
pub(super) fn expect_verified(body: &str, want: u64, when: &str) -> Outcome {
    for a in ACTIONS {
        let series = format!("actgate_enforcement_verified{{action=\"{a}\"}}");
        expect_eq!(
            sample(body, &series)?,
            want,
            "actgate_enforcement_verified for {a}{when}"
        );
    }
    for hook in agent_common::Hook::ALL {
        let series = format!("actgate_hook_verified{{hook=\"{}\"}}", hook.name);
        // A hook this kernel lacks is attached nowhere, and nothing is claimed for it.
        if hook.optional && !body.contains(&series) {
            continue;
        }
        expect_eq!(
            sample(body, &series)?,
            want,
            "actgate_hook_verified for {}{when}",
            hook.name
        );
    }
    Ok(())
}

pub(super) fn processes_series(label: &str) -> String {
    format!("actgate_labelled_processes{{label=\"{label}\"}}")
}

/// Polls /metrics until `series` has the value `want` (or `timeout` passes); returns the
/// last value seen.
pub(super) fn wait_for_sample(series: &str, want: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = sample(&scrape()?, series)?;
        if got == want || Instant::now() > deadline {
            return Ok(got);
        }
        thread::sleep(Duration::from_millis(250));
    }
}
