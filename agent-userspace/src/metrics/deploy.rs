//! The alerting rules and the dashboard under deploy/ may only use what /metrics exports: a
//! name or label that isn't there matches nothing, so the alert never fires and the panel
//! stays empty, without an error anywhere. `cargo xtask test` runs promtool on the rules
//! for their syntax; these tests check what it can't know: our metrics, labels and values.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{Action, KernelError, Trigger, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::Deserialize;

use super::{FAMILIES, RELOAD_RESULTS};
use crate::dns::telemetry::Outcome;

const RULES: &str = include_str!("../../../deploy/prometheus/actgate-rules.yaml");
const DASHBOARD: &str = include_str!("../../../deploy/grafana/actgate.json");

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// One sample of every family, encoded by prometheus-client as the daemon's collector encodes
/// them, so the series names carry the suffixes it really adds (`_total` for a counter).
#[derive(Debug)]
struct OneOfEach;

impl Collector for OneOfEach {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &FAMILIES {
            let mut m = enc.encode_descriptor(f.name, "", None, f.kind)?;
            let set: Vec<(&str, &str)> = f.labels.iter().map(|l| (*l, "x")).collect();
            let m = m.encode_family(&set)?;
            match f.kind {
                MetricType::Counter => ConstCounter::new(0u64).encode(m)?,
                MetricType::Gauge => ConstGauge::new(0i64).encode(m)?,
                other => panic!("{}: give the test a sample of a {other:?}", f.name),
            }
        }
        Ok(())
    }
}

/// Series name → (its family's name, its label names).
fn exported() -> BTreeMap<String, (&'static str, BTreeSet<&'static str>)> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(OneOfEach));
    let mut text = String::new();
    encode(&mut text, &registry).expect("encoding into a String");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let series = &l[..l.find(['{', ' ']).expect("a sample line")];
            let family = FAMILIES
                .iter()
                .filter(|f| series.starts_with(f.name))
                .max_by_key(|f| f.name.len())
                .expect("a family of the series");
            let labels = family.labels.iter().copied().collect();
            (series.to_string(), (family.name, labels))
        })
        .collect()
}

/// The values an enumerated label of a family takes, from the types the collector encodes.
fn values_of(family: &str, label: &str) -> Option<Vec<&'static str>> {
    Some(match (family, label) {
        (_, "action") => Action::ALL.iter().map(|a| a.as_str()).collect(),
        ("actgate_decisions", "verdict") => Verdict::ALL.iter().map(|v| v.as_str()).collect(),
        ("actgate_dns_queries", "verdict") => Outcome::ALL.iter().map(|o| o.as_str()).collect(),
        ("actgate_kernel_errors", "reason") => {
            KernelError::ALL.iter().map(|r| r.as_str()).collect()
        }
        ("actgate_revocations", "trigger") => Trigger::ALL.iter().map(|t| t.as_str()).collect(),
        ("actgate_policy_reloads", "result") => RELOAD_RESULTS.to_vec(),
        _ => return None,
    })
}

#[test]
fn every_family_the_collector_encodes_is_in_families() {
    let source = include_str!("../metrics.rs");
    let literals: BTreeSet<&str> = source
        .match_indices("\"actgate_")
        .map(|(i, _)| &source[i + 1..][..ident_end_str(&source[i + 1..])])
        .collect();
    let families: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
    assert_eq!(
        literals, families,
        "metrics.rs names a family FAMILIES lacks"
    );
}

/// A Prometheus duration (`model.ParseDuration`): units from the largest down, each at most
/// once, e.g. `1h30m`, `90s`, `500ms`, or `0`.
fn is_duration(s: &str) -> bool {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        match UNITS[next_unit..]
            .iter()
            .position(|u| *u == &rest[..letters])
        {
            Some(i) => next_unit += i + 1,
            None => return false,
        }
        rest = &rest[letters..];
    }
    !s.is_empty()
}

#[test]
fn durations_parse_as_prometheus_does() {
    for ok in ["0", "30s", "5m", "1h30m", "500ms", "1y2w3d4h5m6s7ms"] {
        assert!(is_duration(ok), "{ok}");
    }
    for bad in ["", "5", "m", "5min", "30m1h", "1m1m", "1.5h", "-5m", "5 m"] {
        assert!(!is_duration(bad), "{bad}");
    }
}

/// What an expression refers to, from a scan of PromQL's tokens (strings and comments
/// skipped, so a label value or a word in a comment never counts as a name).
#[derive(Debug, Default)]
struct Refs {
    /// Every `actgate_…` name.
    metrics: Vec<String>,
    /// `(metric before the braces, label, operator, value)` of every matcher.
    matchers: Vec<(Option<String>, String, String, String)>,
    /// The labels of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
    grouping: Vec<String>,
    /// The labels of `by` alone: what an aggregation keeps.
    by: Vec<String>,
    /// What is between `[` and `]`.
    ranges: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The end of the quoted string starting at `i`.
fn string_end(b: &[char], i: usize) -> Result<usize, String> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("an unterminated string at {i}"))
}

fn ident_end(b: &[char], mut i: usize) -> usize {
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    i
}

fn skip_space(b: &[char], mut i: usize) -> usize {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    i
}

fn scan(expr: &str) -> Result<Refs, String> {
    let b: Vec<char> = expr.chars().collect();
    let text = |from: usize, to: usize| b[from..to].iter().collect::<String>();
    let mut refs = Refs::default();
    // The identifier just before, for a selector's braces or a grouping's parentheses.
    let mut prev: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let mut ident = None;
        match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '"' | '\'' | '`' => i = string_end(&b, i)?,
            '#' => {
                i = b[i..]
                    .iter()
                    .position(|c| *c == '\n')
                    .map_or(b.len(), |n| i + n)
            }
            // A Grafana variable: `$__rate_interval`, `${datasource}`.
            '$' if b.get(i + 1) == Some(&'{') => {
                i += b[i..].iter().position(|c| *c == '}').ok_or("an open ${")? + 1
            }
            '$' => i = ident_end(&b, i + 1),
            '[' => {
                let end = i + b[i..].iter().position(|c| *c == ']').ok_or("an open [")?;
                refs.ranges.push(text(i + 1, end).trim().to_string());
                i = end + 1;
            }
            '{' => {
                let metric = prev.take();
                i = skip_space(&b, i + 1);
                while b.get(i) != Some(&'}') {
                    let name_end = ident_end(&b, i);
                    let label = text(i, name_end);
                    let op_start = skip_space(&b, name_end);
                    let mut op_end = op_start;
                    while op_end < b.len() && "=!~".contains(b[op_end]) {
                        op_end += 1;
                    }
                    let value_start = skip_space(&b, op_end);
                    if label.is_empty() || b.get(value_start) != Some(&'"') {
                        return Err(format!("a matcher at {i} that isn't `label op \"value\"`"));
                    }
                    let value_end = string_end(&b, value_start)?;
                    refs.matchers.push((
                        metric.clone(),
                        label,
                        text(op_start, op_end),
                        text(value_start + 1, value_end - 1),
                    ));
                    i = skip_space(&b, value_end);
                    if b.get(i) == Some(&',') {
                        i = skip_space(&b, i + 1);
                    }
                }
                i += 1;
            }
            '(' if matches!(
                prev.as_deref(),
                Some("by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
            ) =>
            {
                let end = i + b[i..].iter().position(|c| *c == ')').ok_or("an open (")?;
                let labels = text(i + 1, end);
                let labels = labels.split(',').map(str::trim).filter(|l| !l.is_empty());
                for l in labels {
                    if prev.as_deref() == Some("by") {
                        refs.by.push(l.to_string());
                    }
                    refs.grouping.push(l.to_string());
                }
                i = end + 1;
            }
            // A number or a duration (`offset 5m`).
            c if c.is_ascii_digit() || c == '.' => {
                while i < b.len() && (is_ident(b[i]) || b[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let end = ident_end(&b, i);
                let name = text(i, end);
                if name.starts_with("actgate_") {
                    refs.metrics.push(name.clone());
                }
                ident = Some(name);
                i = end;
            }
            _ => i += 1,
        }
        prev = ident;
    }
    Ok(refs)
}

/// The problems of one expression. `templates` are the texts that print its result's labels,
/// each with what precedes a label name there: `$labels.` in an annotation, `{{` in a legend.
fn check_expr(expr: &str, templates: &[(&str, &str)]) -> Vec<String> {
    let exported = exported();
    let refs = match scan(expr) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    // A typo in the prefix would escape every check below.
    let scrape = (
        Some("up".into()),
        "job".into(),
        "=".into(),
        "actgate".into(),
    );
    if refs.metrics.is_empty() && !refs.matchers.contains(&scrape) {
        problems.push("names no actgate_ metric, nor up{job=\"actgate\"}".into());
    }
    let families: Vec<_> = refs
        .metrics
        .iter()
        .filter_map(|m| exported.get(m))
        .collect();
    for m in refs.metrics.iter().filter(|m| !exported.contains_key(*m)) {
        problems.push(format!("{m} is not exported (see FAMILIES in metrics.rs)"));
    }
    let mut known: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    known.extend(
        families
            .iter()
            .flat_map(|(_, labels)| labels.iter().copied()),
    );
    for (metric, label, op, value) in &refs.matchers {
        let Some((family, labels)) = metric.as_ref().and_then(|m| exported.get(m)) else {
            continue;
        };
        if !labels.contains(label.as_str()) && !TARGET_LABELS.contains(&label.as_str()) {
            problems.push(format!("{family} has no label {label}"));
            continue;
        }
        // A regex or a Grafana variable may well be right; an exact value must be one.
        let exact = (op == "=" || op == "!=") && !value.contains('$');
        if let Some(values) = values_of(family, label).filter(|_| exact)
            && !values.contains(&value.as_str())
        {
            problems.push(format!("{family}'s {label} is never {value:?}: {values:?}"));
        }
    }
    for l in refs.grouping.iter().filter(|l| !known.contains(l.as_str())) {
        problems.push(format!("groups by {l}, which none of its metrics has"));
    }
    for r in &refs.ranges {
        let parts = r.split(':').filter(|p| !p.is_empty());
        for p in parts.filter(|p| !p.starts_with('$') && !is_duration(p)) {
            problems.push(format!("[{r}]: {p} is not a Prometheus duration"));
        }
    }
    // An aggregation keeps only its `by` labels; otherwise the series keep theirs.
    let kept: BTreeSet<&str> = if refs.by.is_empty() {
        known
    } else {
        refs.by.iter().map(String::as_str).collect()
    };
    let printed: BTreeSet<&str> = templates
        .iter()
        .flat_map(|(text, open)| text.split(open).skip(1))
        .map(|s| &s.trim_start()[..ident_end_str(s.trim_start())])
        .collect();
    for l in printed.into_iter().filter(|l| !kept.contains(l)) {
        problems.push(format!("prints label {l}, which its result doesn't have"));
    }
    problems
}

fn ident_end_str(s: &str) -> usize {
    s.find(|c: char| !is_ident(c)).unwrap_or(s.len())
}

#[test]
fn the_expression_check_passes_what_matches_and_catches_what_matches_nothing() {
    for ok in [
        r#"sum by (label) (rate(actgate_decisions_total{verdict="deny", label=~"$label"}[5m]))"#,
        "up{job=\"actgate\"} == 0",
        // A word in a string or a comment is not a name.
        "actgate_ready # actgate_nope\n",
        "actgate_ready{instance=\"actgate_nope\"}",
    ] {
        assert_eq!(check_expr(ok, &[]), Vec::<String>::new(), "{ok}");
    }
    let printed = [("{{ label }} {{action}}", "{{")];
    let by_label = "sum by (label, action) (actgate_budget_exceeded_total)";
    assert_eq!(check_expr(by_label, &printed), Vec::<String>::new());
    for (bad, why) in [
        ("rate(actgate_decisions[5m])", "not exported"),
        ("actgate_decisions_total{verdict=\"denied\"}", "never"),
        ("actgate_policy_reloads_total{result=\"failed\"}", "never"),
        ("actgate_label_revoked{hook=\"x\"}", "no label hook"),
        ("sum by (hook) (actgate_label_revoked)", "groups by hook"),
        ("rate(actgate_events_dropped_total[5min])", "duration"),
        ("actgte_ready == 0", "names no actgate_ metric"),
    ] {
        let problems = check_expr(bad, &[]).join("; ");
        assert!(problems.contains(why), "{bad}: {problems:?} lacks {why:?}");
    }
    let printed = [("{{ $labels.hook }}", "$labels.")];
    let problems = check_expr("sum by (label) (actgate_label_revoked)", &printed);
    assert!(
        problems.join("").contains("prints label hook"),
        "{problems:?}"
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[test]
fn the_alerting_rules_use_only_what_the_daemon_exports() {
    let file: RuleFile = serde_saphyr::from_str(RULES).expect("actgate-rules.yaml parses");
    assert!(!file.groups.is_empty(), "no groups");
    let mut groups = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let mut problems = Vec::new();
    for g in &file.groups {
        let mut problem = |what: String| problems.push(format!("group {:?}: {what}", g.name));
        if g.name.is_empty() || !groups.insert(&g.name) {
            problem("an empty or repeated group name".into());
        }
        if g.rules.is_empty() {
            problem("no rules".into());
        }
        if let Some(i) = g.interval.as_ref().filter(|i| !is_duration(i)) {
            problem(format!("interval {i:?} is not a Prometheus duration"));
        }
        for r in &g.rules {
            let mut problem = |what: String| problems.push(format!("alert {:?}: {what}", r.alert));
            if r.alert.is_empty() || !alerts.insert(&r.alert) {
                problem("an empty or repeated alert name".into());
            }
            if let Some(f) = r.for_.as_ref().filter(|f| !is_duration(f)) {
                problem(format!("for {f:?} is not a Prometheus duration"));
            }
            let severity = r.labels.get("severity").map(String::as_str);
            if !matches!(severity, Some("critical" | "warning" | "info")) {
                problem(format!(
                    "severity {severity:?} is not critical, warning or info"
                ));
            }
            for key in ["summary", "description"] {
                if r.annotations.get(key).is_none_or(|a| a.trim().is_empty()) {
                    problem(format!("no annotations.{key}"));
                }
            }
            let templates: Vec<_> = r
                .annotations
                .values()
                .map(|a| (a.as_str(), "$labels."))
                .collect();
            for p in check_expr(&r.expr, &templates) {
                problem(p);
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every panel, rows' collapsed panels included.
fn panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    let nested = v["panels"].as_array().into_iter().flatten();
    nested
        .flat_map(|p| std::iter::once(p).chain(panels(p)))
        .collect()
}

#[test]
fn the_dashboard_uses_only_what_the_daemon_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("actgate.json parses");
    let exported = exported();
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let all = panels(&dashboard);
    assert!(!all.is_empty(), "no panels");
    for p in all {
        let title = p["title"].as_str().unwrap_or_default();
        let id = &p["id"];
        if !id.is_u64() || !ids.insert(id.to_string()) {
            problems.push(format!("panel {title:?}: id {id} is missing or repeated"));
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            for e in check_expr(expr, &[(legend, "{{")]) {
                problems.push(format!("panel {title:?}: {expr}: {e}"));
            }
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        let query = query.unwrap_or_default();
        // label_values(METRIC{…}, LABEL)
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'));
        let Some((selector, label)) = args.and_then(|a| a.rsplit_once(',')) else {
            problems.push(format!(
                "variable {}: {query:?} isn't label_values",
                v["name"]
            ));
            continue;
        };
        let selector = selector.trim();
        let metric = &selector[..ident_end_str(selector)];
        let label = label.trim();
        match exported.get(metric) {
            Some((_, labels)) if labels.contains(label) || TARGET_LABELS.contains(&label) => {}
            _ => problems.push(format!("variable {}: {metric} has no {label}", v["name"])),
        }
        problems.extend(check_expr(selector, &[]));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
