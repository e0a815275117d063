//! What a label did during a learning run: each action's targets with how often each was
//! used, and the facts about the run that folding needs.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{Action, Reason};

use super::{events::Event, fold};

/// The facts about a learning run that events don't carry. The caller knows them: it
/// started the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// The label learnt; events of other labels are ignored.
    pub label: String,
    /// The workload's working directory: writes below it may be folded.
    pub workdir: String,
    /// The home directory of the user the workload ran as, when it has one: never folded, and
    /// where the sensitive locations (`~/.ssh`, ...) are.
    pub home: Option<String>,
    /// The temp directories (`/tmp`, `/var/tmp`, `$TMPDIR`): writes below them may be folded,
    /// never into the directory itself.
    pub temp_dirs: Vec<String>,
    /// Directories the workload created: what is beneath one is the workload's own, so it is
    /// folded into one tree. Events can't tell a `mkdir` from another write, so the caller
    /// says which directories didn't exist before the run.
    pub created_dirs: BTreeSet<String>,
    /// Events the kernel dropped during the run (`actgate_events_dropped_total`): what they
    /// recorded is missing here.
    pub dropped: u64,
}

/// One target of an action, and the host name a connect was judged by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub target: String,
    pub host: Option<String>,
}

/// Every action of one label during a run, counted per target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observations {
    pub run: Run,
    /// Indexed by `Action as usize`.
    uses: Vec<BTreeMap<Seen, u64>>,
    /// Actions the kernel could not judge (reason `unjudged`), per action: their target is
    /// a file's own name, not a path a rule could name.
    unjudged: BTreeMap<&'static str, u64>,
    /// Events of the label.
    pub events: u64,
}

impl Observations {
    pub fn new(run: Run) -> Self {
        Observations {
            run,
            uses: vec![BTreeMap::new(); Action::COUNT],
            unjudged: BTreeMap::new(),
            events: 0,
        }
    }

    /// Counts one event, unless it is another label's.
    pub fn record(&mut self, event: &Event) {
        if event.label != self.run.label {
            return;
        }
        self.events += 1;
        if event.reason == Reason::Unjudged.as_str() {
            *self.unjudged.entry(event.action.as_str()).or_default() += 1;
            return;
        }
        // Names are matched without regard to case, and so are counted that way.
        let host = event
            .host
            .as_ref()
            .map(|h| h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase());
        let seen = Seen {
            target: event.target.clone(),
            host,
        };
        *self.uses[event.action as usize].entry(seen).or_default() += 1;
    }

    /// The targets of `action` and how often each was used.
    pub fn uses(&self, action: Action) -> &BTreeMap<Seen, u64> {
        &self.uses[action as usize]
    }

    /// The targets of `action` (path actions: no host) and their uses.
    pub fn targets(&self, action: Action) -> BTreeMap<&str, u64> {
        let mut out: BTreeMap<&str, u64> = BTreeMap::new();
        for (seen, n) in self.uses(action) {
            *out.entry(seen.target.as_str()).or_default() += n;
        }
        out
    }

    /// Unjudged actions by action name.
    pub fn unjudged(&self) -> &BTreeMap<&'static str, u64> {
        &self.unjudged
    }

    /// Every sensitive path (see `fold::sensitive`) any path action used: no tree is folded
    /// over one.
    pub fn sensitive_paths(&self) -> BTreeSet<&str> {
        [
            Action::Exec,
            Action::FileWrite,
            Action::FileRead,
            Action::FileDelete,
        ]
        .into_iter()
        .flat_map(|a| self.uses(a).keys())
        .map(|s| s.target.as_str())
        .filter(|t| fold::sensitive(t, self.run.home.as_deref()).is_some())
        .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::learn::events::tests::{events, line};

    /// The run the tests of `fold` and `write` learn from.
    pub fn run() -> Run {
        Run {
            label: "agent".into(),
            workdir: "/home/u/proj".into(),
            home: Some("/home/u".into()),
            temp_dirs: vec!["/tmp".into(), "/var/tmp".into()],
            ..Run::default()
        }
    }

    #[test]
    fn uses_are_counted_per_target_and_label() {
        let mut text = vec![
            line("file_write", "/w/a", None),
            line("file_write", "/w/a", None),
            line("connect", "140.82.112.5:443", Some("GitHub.com.")),
            line("file_read", "/home/u/.ssh/id_rsa", None),
        ];
        text.push(text[0].replace("\"agent\"", "\"other\""));
        text.push(
            line("file_write", "a", None)
                .replace("\"reason\":\"default\"", "\"reason\":\"unjudged\""),
        );
        let mut obs = Observations::new(Run {
            label: "agent".into(),
            home: Some("/home/u".into()),
            ..Run::default()
        });
        for e in events(&text) {
            obs.record(&e);
        }
        assert_eq!(obs.events, 5);
        assert_eq!(
            obs.targets(Action::FileWrite),
            BTreeMap::from([("/w/a", 2)])
        );
        let connect: Vec<_> = obs.uses(Action::Connect).iter().collect();
        assert_eq!(connect[0].0.host.as_deref(), Some("github.com"));
        assert_eq!(obs.unjudged(), &BTreeMap::from([("file_write", 1)]));
        assert_eq!(
            obs.sensitive_paths(),
            BTreeSet::from(["/home/u/.ssh/id_rsa"])
        );
    }
}
