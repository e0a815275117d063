//! `actgate diff`: replays recorded events against a policy and tells which it would deny,
//! and by which rule. The decisions are agent-policy's (`Policy::decide_*`), the model the
//! compiled maps are tested against, so what diff says is what the kernel would do.
//!
//! What a replay can't know: budgets (they count over time), the host's own addresses for
//! the DNS rebinding guard, and actgate's own files (the daemon adds them at start-up). The
//! kernel's settings (`/proc/sys`, `/sys`), which every policy protects, are judged.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, process::ExitCode};

use agent_common::{Action, SocketKind, Verdict, capability_by_name};
use agent_policy::{
    DecidedBy, Decision, Fallback, Policy, PolicySet,
    decide::{refusal, refused},
    symlinks,
};
use anyhow::{Context, Result, bail};

use super::events::{self, Event};
use crate::{daemon::KERNEL_SETTINGS, dns::internal};

/// What decided an event, with the policy section it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub verdict: Verdict,
    /// Where in the policy: `files.write`, `network.connect`, ...
    pub section: String,
    pub by: Why,
}

/// What decided, beyond a policy's rules and defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    Policy(DecidedBy),
    /// actgate refuses it to every label, whatever the policy (bpf, signals to the daemon,
    /// ptrace out of the label, leaving the cgroup).
    Always,
    /// The kernel couldn't judge the action when it was recorded (its target is a file's own
    /// name), and refuses what it can't judge.
    Unjudged,
    /// The rebinding guard drops an answer of a public or wildcard-matched name that points
    /// inside (loopback, private, link-local): the workload never gets the address.
    RebindingGuard,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Policy(by) => write!(f, "{by}"),
            Why::Always => f.write_str("refused to every label whatever the policy"),
            Why::Unjudged => f.write_str("the kernel could not judge it, and refuses it"),
            Why::RebindingGuard => f.write_str(
                "the rebinding guard drops this name's answers pointing inside unless an \
                 address rule allows them",
            ),
        }
    }
}

/// The section of `policy` that judges `action`.
fn section(action: Action) -> &'static str {
    match action {
        Action::Exec => "exec",
        Action::FileWrite => "files.write",
        Action::FileRead => "files.read",
        Action::FileDelete => "files.delete",
        Action::Connect => "network.connect",
        Action::UnixConnect => "network.unix",
        Action::Listen => "network.listen",
        Action::Socket => "network",
        Action::Capability => "process.capabilities",
        Action::Namespace => "process.namespaces",
        Action::Bpf | Action::Signal | Action::Ptrace | Action::Cgroup => "actgate",
    }
}

/// A grant of `policy` (a socket kind, a capability, namespaces): allowed, or refused by the
/// default of what the policy doesn't grant.
fn granted(policy: &Policy, yes: bool) -> Decision {
    if yes {
        Decision {
            verdict: Verdict::Allow,
            by: DecidedBy::Default(Fallback::Allow),
        }
    } else {
        refused(policy.mode, DecidedBy::Default(Fallback::Deny))
    }
}

/// How `policy` judges `event`. An error for a target the action can't have.
pub fn judge(policy: &Policy, event: &Event) -> Result<Judged> {
    let at = || format!("{}:{}", event.file.display(), event.line);
    let address = || {
        event.target.parse::<SocketAddr>().with_context(|| {
            format!(
                "{}: `{}` is no address and port of a {}",
                at(),
                event.target,
                event.action.as_str()
            )
        })
    };
    let mut section = section(event.action).to_owned();
    let judged = |verdict, section: String, by| Judged {
        verdict,
        section,
        by,
    };
    if event.reason == agent_common::Reason::Unjudged.as_str() {
        return Ok(judged(refusal(policy.mode), section, Why::Unjudged));
    }
    let decision = match event.action {
        Action::Exec | Action::FileWrite | Action::FileRead | Action::FileDelete => policy
            .decide_path(event.action, &event.target)
            .with_context(|| format!("{}: not a path action", at()))?,
        Action::UnixConnect => policy.decide_unix(&event.target),
        Action::Listen => {
            let a = address()?;
            policy.decide_listen(a.ip(), a.port())
        }
        Action::Connect => {
            let a = address()?;
            let host = event.host.as_deref();
            // Only answers to a lookup the resolver didn't refuse reach the guard.
            let dropped = host.map(|h| policy.judge_name(h)).is_some_and(|j| {
                policy.mode == agent_policy::Mode::Enforce
                    && !j.refused
                    && j.guarded
                    && internal(a.ip())
                    && !policy.trusts_address(a.ip())
            });
            if dropped {
                return Ok(judged(Verdict::Deny, section, Why::RebindingGuard));
            }
            policy.decide_connect(a.ip(), a.port(), host)
        }
        Action::Socket => {
            let Some(kind) = SocketKind::ALL
                .into_iter()
                .find(|k| k.as_str() == event.target)
            else {
                bail!("{}: `{}` is no socket kind", at(), event.target);
            };
            section = format!("network.{}", kind.as_str());
            granted(policy, policy.sockets.contains(&kind))
        }
        Action::Capability => {
            let cap = capability_by_name(&event.target)
                .with_context(|| format!("{}: `{}` is no capability", at(), event.target))?;
            granted(policy, policy.process.capabilities.contains(&cap))
        }
        Action::Namespace => granted(policy, policy.process.namespaces == Fallback::Allow),
        Action::Bpf | Action::Signal | Action::Ptrace | Action::Cgroup => {
            return Ok(judged(Verdict::Deny, section, Why::Always));
        }
    };
    Ok(judged(decision.verdict, section, Why::Policy(decision.by)))
}

/// A replay's outcome.
#[derive(Debug, Default)]
pub struct Replay<'e> {
    /// Every event the policies would not allow, in order, with what decided.
    pub refused: Vec<(&'e Event, Judged)>,
    /// Events judged: of a label the policies name.
    pub judged: usize,
    /// Events of labels no policy names, by label.
    pub unlabelled: BTreeMap<&'e str, usize>,
}

/// Replays `events` against `set`: each event by the policy naming its label.
pub fn replay<'e>(set: &PolicySet, events: &'e [Event]) -> Result<Replay<'e>> {
    let mut out = Replay::default();
    for event in events {
        let Some(policy) = set
            .policies
            .iter()
            .find(|p| p.labels.contains(&event.label))
        else {
            *out.unlabelled.entry(event.label.as_str()).or_default() += 1;
            continue;
        };
        out.judged += 1;
        let judged = judge(policy, event)?;
        if judged.verdict != Verdict::Allow {
            out.refused.push((event, judged));
        }
    }
    Ok(out)
}

/// The policies at `path` as the daemon enforces them: rules naming a symlink apply to its
/// target too, and the kernel's settings are protected.
fn load(path: &Path) -> Result<PolicySet> {
    let mut set = agent_policy::load_path(path).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "the policy is invalid (`actgate check` shows the same):\n{}",
            text.join("\n")
        )
    })?;
    symlinks::follow(&mut set, symlinks::on_host);
    protect_kernel_settings(&mut set)?;
    Ok(set)
}

/// Adds the kernel's settings to what every policy's `files.write` protects, as the daemon
/// does.
fn protect_kernel_settings(set: &mut PolicySet) -> Result<()> {
    let settings = KERNEL_SETTINGS
        .iter()
        .map(|p| agent_policy::parse_path(p))
        .collect::<Result<Vec<_>, _>>()
        .context("actgate's list of the kernel's settings")?;
    for policy in &mut set.policies {
        policy.file_write.protect.extend(settings.iter().cloned());
    }
    Ok(())
}

/// ` (by EXE)`, or nothing when the binary isn't known.
fn by(exe: &str) -> String {
    if exe.is_empty() {
        String::new()
    } else {
        format!(" (by {exe})")
    }
}

/// One line per refused event: `file:line: verdict action "target" (by exe): section: why`.
pub fn render(replay: &Replay) -> String {
    let mut out = String::new();
    for (event, judged) in &replay.refused {
        let target = match &event.host {
            Some(host) => format!("{host} ({})", event.target),
            None => event.target.clone(),
        };
        out.push_str(&format!(
            "{}:{}: {} {} {target:?}{}: {}: {}\n",
            event.file.display(),
            event.line,
            judged.verdict.as_str(),
            event.action.as_str(),
            by(&event.exe),
            judged.section,
            judged.by
        ));
    }
    let mut per_action: BTreeMap<&str, usize> = BTreeMap::new();
    for (event, _) in &replay.refused {
        *per_action.entry(event.action.as_str()).or_default() += 1;
    }
    let actions: Vec<String> = per_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
    out.push_str(&format!(
        "{} of {} events would be refused",
        replay.refused.len(),
        replay.judged
    ));
    if !actions.is_empty() {
        out.push_str(&format!(" ({})", actions.join(", ")));
    }
    out.push('\n');
    for (label, n) in &replay.unlabelled {
        out.push_str(&format!(
            "{n} events of label `{label}` skipped: no policy names it\n"
        ));
    }
    out
}

/// `actgate diff`: 0 when the policy refuses none of the events, 1 when it refuses some (in
/// `mode: audit`, would report them), 2 when the events or the policy can't be read or no
/// event is of a label the policy names.
pub fn command(events_file: &Path, policy: &Path) -> ExitCode {
    let outcome = (|| {
        let set = load(policy)?;
        let events = events::read(events_file)?;
        let replay = replay(&set, &events)?;
        if replay.judged == 0 && !events.is_empty() {
            let labels: Vec<&str> = set
                .policies
                .iter()
                .flat_map(|p| p.labels.iter().map(String::as_str))
                .collect();
            bail!(
                "no event in {} is of a label the policy names ({}): pass the policy of the \
                 label that recorded them",
                events_file.display(),
                labels.join(", ")
            );
        }
        print!("{}", render(&replay));
        Ok(!replay.refused.is_empty())
    })();
    match outcome {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(e) => {
            eprintln!("actgate diff: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::learn::events::tests::{events, line};

    fn set(text: &str) -> PolicySet {
        let text = format!("name: p\nlabels: [agent]\n{text}");
        let (mut set, problems) = agent_policy::parse::parse_set(Path::new("p.yaml"), &text);
        assert_eq!(problems, vec![]);
        protect_kernel_settings(&mut set).unwrap();
        set
    }

    /// Each refused event of `replay` as `ACTION TARGET: SECTION: WHAT DECIDES`.
    pub fn why(replay: &Replay) -> Vec<String> {
        replay
            .refused
            .iter()
            .map(|(e, j)| {
                format!(
                    "{} {}: {}: {}",
                    e.action.as_str(),
                    e.target,
                    j.section,
                    j.by
                )
            })
            .collect()
    }

    #[test]
    fn refusals_name_the_rule_or_default_and_allowed_events_pass() {
        let policy = set(
            "exec:\n  default: deny\n  allow: [/usr/bin/**]\n  deny: [/usr/bin/nc]\n\
             files:\n  write:\n    default: deny\n    allow: [/w/**]\n",
        );
        let events = events(&[
            line("exec", "/usr/bin/git", None),
            line("exec", "/usr/bin/nc", None),
            line("exec", "/opt/tool", None),
            line("file_write", "/w/a", None),
            line("file_write", "/etc/passwd", None),
            line("file_read", "/etc/passwd", None),
        ]);
        let replay = replay(&policy, &events).unwrap();
        assert_eq!(replay.judged, 6);
        assert_eq!(
            why(&replay),
            [
                "exec /usr/bin/nc: exec: deny rule `/usr/bin/nc`",
                "exec /opt/tool: exec: default: deny",
                "file_write /etc/passwd: files.write: default: deny",
            ]
        );
        let text = render(&replay);
        assert!(
            text.starts_with(
                "e.jsonl:2: deny exec \"/usr/bin/nc\" (by /usr/bin/sh): exec: deny rule `/usr/bin/nc`\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("3 of 6 events would be refused (exec 2, file_write 1)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_tightened_policy_refuses_what_the_learnt_one_allowed() {
        let learnt = set(
            "network:\n  connect:\n    default: deny\n    allow: [github.com:443, \"10.0.0.0/8\"]\n",
        );
        let tight = set(
            "network:\n  connect:\n    default: deny\n    allow: [github.com:443]\n    deny: [\"10.0.0.5\"]\n",
        );
        let events = events(&[
            line("connect", "140.82.112.5:443", Some("github.com")),
            line("connect", "10.0.0.5:5432", None),
        ]);
        assert!(replay(&learnt, &events).unwrap().refused.is_empty());
        assert_eq!(
            why(&replay(&tight, &events).unwrap()),
            ["connect 10.0.0.5:5432: network.connect: deny rule `10.0.0.5`"]
        );
    }

    #[test]
    fn what_no_policy_can_allow_is_refused_and_audit_mode_reports() {
        let audit = set("mode: audit\nexec:\n  default: deny\n");
        let events = events(&[
            line("bpf", "bpf", None),
            line("exec", "/usr/bin/git", None),
            line("socket", "raw", None),
            line("capability", "CAP_SYS_ADMIN", None),
            line("namespace", "mount", None),
            line("file_write", "x", None).replace("\"default\"", "\"unjudged\""),
            line("file_write", "/proc/sys/kernel/core_pattern", None),
        ]);
        let replay = replay(&audit, &events).unwrap();
        let verdicts: Vec<&str> = replay
            .refused
            .iter()
            .map(|(_, j)| j.verdict.as_str())
            .collect();
        // bpf and the kernel's settings are refused in audit mode too.
        assert_eq!(
            verdicts,
            ["deny", "audit", "audit", "audit", "audit", "audit", "deny"]
        );
        assert_eq!(replay.refused[0].1.by, Why::Always);
        assert_eq!(replay.refused[2].1.section, "network.raw");
        assert_eq!(replay.refused[5].1.by, Why::Unjudged);
    }

    #[test]
    fn a_name_answered_inside_is_dropped_by_the_rebinding_guard() {
        let policy =
            set("network:\n  connect:\n    default: deny\n    allow: [\"*.example.com:443\"]\n");
        let events = events(&[
            line("connect", "10.1.1.1:443", Some("db.example.com")),
            line("connect", "93.184.215.14:443", Some("www.example.com")),
        ]);
        let replay = replay(&policy, &events).unwrap();
        assert_eq!(replay.refused.len(), 1);
        assert_eq!(replay.refused[0].1.by, Why::RebindingGuard);
    }

    #[test]
    fn events_of_other_labels_are_counted_apart_and_bad_targets_are_errors() {
        let policy = set("");
        let mut lines = vec![line("exec", "/usr/bin/git", None)];
        lines.push(lines[0].replace("\"agent\"", "\"other\""));
        let evs = events(&lines);
        let replay = replay(&policy, &evs).unwrap();
        assert_eq!(
            (replay.judged, replay.unlabelled.get("other")),
            (1, Some(&1))
        );
        assert!(
            render(&replay).ends_with("1 events of label `other` skipped: no policy names it\n")
        );
        let bad = events(&[line("connect", "nowhere", None)]);
        let err = super::replay(&policy, &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("e.jsonl:1: `nowhere` is no address"),
            "{err}"
        );
    }
}
