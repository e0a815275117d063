//! Reading back the JSON lines `actgate run --events` writes (`crate::events::EventLine`).

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use agent_common::Action;
use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One recorded event: the fields learning and replay use, and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The file it was read from and its line (from 1), for messages.
    pub file: PathBuf,
    pub line: usize,
    pub label: String,
    pub action: Action,
    /// What decided when it was recorded: `rule`, `default`, `unjudged` and so on.
    pub reason: String,
    /// A path, `@name` for an abstract AF_UNIX socket, `ip:port`, a socket kind, a
    /// capability or a namespace operation, depending on the action.
    pub target: String,
    /// The name a connect was judged by, when the label looked one up.
    pub host: Option<String>,
    /// The binary the process last executed, to say who did it.
    pub exe: String,
}

/// The line as the daemon serializes it. Fields that `Event` doesn't keep (time, pid, ...)
/// are ignored, so lines from a daemon that adds fields still read.
#[derive(Deserialize)]
struct Line {
    label: String,
    action: String,
    reason: String,
    target: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    exe: String,
}

/// The action named `name` in events and metrics.
fn action(name: &str) -> Option<Action> {
    Action::ALL.into_iter().find(|a| a.as_str() == name)
}

/// Every event of the JSON-lines text `reader`, read from `file`. Blank lines are skipped; any
/// other line that isn't an event is an error naming `file:line`, since a policy learnt from
/// part of a run would deny the rest of it.
pub fn parse(file: &Path, reader: impl BufRead) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for (index, text) in reader.lines().enumerate() {
        let line = index + 1;
        let at = || format!("{}:{line}", file.display());
        let text = text.with_context(|| format!("{}: reading the events", at()))?;
        if text.trim().is_empty() {
            continue;
        }
        let raw: Line = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an actgate event line", at()))?;
        let Some(action) = action(&raw.action) else {
            bail!(
                "{}: unknown action `{}`: this actgate reads events of its own version",
                at(),
                raw.action
            );
        };
        events.push(Event {
            file: file.to_path_buf(),
            line,
            label: raw.label,
            action,
            reason: raw.reason,
            target: raw.target,
            host: raw.host,
            exe: raw.exe,
        });
    }
    Ok(events)
}

/// The events of the file at `path` (see `parse`).
pub fn read(path: &Path) -> Result<Vec<Event>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the events file {}", path.display()))?;
    parse(path, std::io::BufReader::new(file))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event line as the daemon writes it.
    pub(crate) fn line(action: &str, target: &str, host: Option<&str>) -> String {
        let event = crate::events::EventLine {
            time: "2026-12-03T06:00:00.000000000Z".into(),
            label: "agent".into(),
            policy: "learning".into(),
            action: super::action(action).unwrap().as_str(),
            verdict: "allow",
            reason: "default",
            target: target.into(),
            host: host.map(Into::into),
            pid: 7,
            ppid: 1,
            uid: 1000,
            comm: "sh".into(),
            exe: "/usr/bin/sh".into(),
            cgroup: "/actgate/agent".into(),
        };
        serde_json::to_string(&event).unwrap()
    }

    /// The events of `lines`, one per line.
    pub(crate) fn events(lines: &[String]) -> Vec<Event> {
        parse(Path::new("e.jsonl"), lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn lines_the_daemon_writes_read_back() {
        let text = [
            line("exec", "/usr/bin/git", None),
            String::new(),
            line("connect", "140.82.112.5:443", Some("github.com")),
        ];
        let got = events(&text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].action, Action::Exec);
        assert_eq!(got[0].target, "/usr/bin/git");
        assert_eq!(got[0].host, None);
        assert_eq!((got[1].line, got[1].action), (3, Action::Connect));
        assert_eq!(got[1].host.as_deref(), Some("github.com"));
        assert_eq!(got[1].exe, "/usr/bin/sh");
    }

    #[test]
    fn a_bad_line_is_an_error_naming_its_file_and_line() {
        let text = format!("{}\n{{\"label\": 1}}\n", line("exec", "/x", None));
        let err = parse(Path::new("e.jsonl"), text.as_bytes()).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("e.jsonl:2: not an actgate event line"),
            "{err:#}"
        );
        let text = line("exec", "/x", None).replace("\"exec\"", "\"teleport\"");
        let err = parse(Path::new("e.jsonl"), text.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("e.jsonl:1: unknown action `teleport`"),
            "{err}"
        );
    }
}
