//! The daemon's side of `actgate learn`. While a client learns a label, the label is judged by
//! an allow-everything audit policy whose allow decisions are recorded too (the kernel's
//! `LABEL_EVENTS_ALLOW` flag of the label), and every event of the label goes to that client
//! as well as to the events file. The session ends when the client says so or goes away: the
//! label is then judged by its own policy again (or, if none names it, is no label any more).
//!
//! What the kernel records is what the client gets: the session drains the ring buffer before
//! it ends, and the events the kernel dropped meanwhile (a full ring buffer) are counted and
//! told to the client.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use agent_common::{Action, LABEL_EVENTS_ALLOW, MODE_ORPHANED};
use agent_policy::{HostName, HostPattern, Policy, PolicySet};
use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{control::Reply, counters::Counters, plan::Plan, state::State};

/// What a session asks of the daemon's main loop, which owns the policies in force.
#[derive(Debug)]
pub enum Change {
    /// Judge the label by the learning policy.
    Start(String),
    /// Judge it by its own policy again.
    Stop(String),
}

/// A change and where its result goes.
pub type ChangeRequest = (Change, oneshot::Sender<Result<()>>);

/// Where the sessions, the events task and the main loop meet.
pub struct Hub {
    /// Label name → the session learning it.
    taps: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    changes: mpsc::Sender<ChangeRequest>,
    /// Asks the events task to drain the ring buffer now; it answers when it has.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
}

/// The ends of the hub's channels: the main loop takes `changes`, the events task `flushes`.
pub struct Receivers {
    pub changes: mpsc::Receiver<ChangeRequest>,
    pub flushes: mpsc::Receiver<oneshot::Sender<()>>,
}

impl Hub {
    pub fn new() -> (Arc<Hub>, Receivers) {
        let (changes, changes_rx) = mpsc::channel(4);
        let (flushes, flushes_rx) = mpsc::channel(4);
        let hub = Hub {
            taps: Mutex::default(),
            changes,
            flushes,
        };
        let receivers = Receivers {
            changes: changes_rx,
            flushes: flushes_rx,
        };
        (Arc::new(hub), receivers)
    }

    fn taps(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<String>>> {
        self.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a label is being learnt: the events task must then make event lines even
    /// without an events file.
    pub fn tapped(&self) -> bool {
        !self.taps().is_empty()
    }

    /// Gives the event line `text` of `label` to the session learning it, if any. The channel
    /// is unbounded: the kernel already bounds what arrives, and a line lost here would be
    /// an action missing from the learnt policy.
    pub fn tap(&self, label: &str, text: &str) {
        if let Some(session) = self.taps().get(label) {
            let _ = session.send(text.to_owned());
        }
    }

    fn open(&self, label: &str) -> Result<mpsc::UnboundedReceiver<String>> {
        let mut taps = self.taps();
        if taps.contains_key(label) {
            bail!("label {label:?} is being learnt already (another `actgate learn` runs)");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        taps.insert(label.to_owned(), tx);
        Ok(rx)
    }

    fn close(&self, label: &str) {
        self.taps().remove(label);
    }

    async fn change(&self, change: Change) -> Result<()> {
        let (done, result) = oneshot::channel();
        self.changes
            .send((change, done))
            .await
            .map_err(|_| anyhow!("the daemon is stopping"))?;
        result
            .await
            .map_err(|_| anyhow!("the daemon is stopping"))?
    }

    /// Returns once every event the kernel had recorded so far has been handed out.
    async fn flush(&self) {
        let (done, drained) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = drained.await;
        }
    }
}

/// The policy a label is learnt under: audit mode, so that nothing is denied, every default
/// allow, and a name rule that matches every name, so that the resolver records the names
/// the label looks up and its connects to their addresses carry the name.
fn learning_policy(label: &str) -> Result<Policy> {
    // JSON strings are YAML scalars: the label is quoted whatever it holds, and the parser
    // validates it as it would any policy's.
    let name = serde_json::to_string(&format!("learning.{label}"))?;
    let label = serde_json::to_string(label)?;
    let text = format!(
        "name: {name}\nlabels: [{label}]\nmode: audit\nexec: {{default: allow}}\n\
         files: {{read: {{default: allow}}, write: {{default: allow}}, delete: {{default: allow}}}}\n\
         network: {{connect: {{default: allow}}, unix: {{default: allow}}, listen: {{default: allow}}}}\n"
    );
    let (mut policies, problems) = agent_policy::parse_str(Path::new("(learning)"), &text);
    if let Some(problem) = problems.first() {
        bail!("cannot learn label {label}: {}", problem.message);
    }
    let mut policy = policies
        .pop()
        .context("the learning policy did not parse")?;
    policy.hosts.allow.push(HostPattern {
        name: HostName::Any,
        port: None,
    });
    Ok(policy)
}

/// `set` with each of `labels` taken from the policy that names it and given the learning
/// policy instead. A policy left without labels is left out.
pub fn with_learning(set: &PolicySet, labels: &BTreeSet<String>) -> Result<PolicySet> {
    let mut out = set.clone();
    if labels.is_empty() {
        return Ok(out);
    }
    for policy in &mut out.policies {
        policy.labels.retain(|l| !labels.contains(l));
    }
    out.policies.retain(|p| !p.labels.is_empty());
    for label in labels {
        let mut learning = learning_policy(label)?;
        // The cgroups bound to the label stay bound: their processes are the ones learnt.
        learning.cgroups = set
            .policies
            .iter()
            .filter(|p| p.labels.contains(label))
            .flat_map(|p| p.cgroups.iter().cloned())
            .collect();
        out.policies.push(learning);
    }
    Ok(out)
}

/// Sets the kernel flag that records the allow decisions of the labels being learnt.
pub fn flag(plan: &mut Plan, labels: &BTreeSet<String>) {
    for entry in &mut plan.labels {
        if labels.contains(&entry.name) && entry.info.mode != MODE_ORPHANED {
            entry.info.flags |= LABEL_EVENTS_ALLOW;
        }
    }
}

/// Every event the kernel dropped so far, of any label: drops are counted per action only.
fn dropped(counters: &Counters) -> u64 {
    Action::ALL.iter().map(|a| counters.dropped(*a)).sum()
}

async fn send(to: &mut OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_string(reply).map_err(std::io::Error::other)?;
    text.push('\n');
    to.write_all(text.as_bytes()).await
}

/// Puts the label under the learning policy, with its events tapped.
async fn start(
    label: &str,
    state: &State,
    counters: &Counters,
    hub: &Hub,
) -> Result<mpsc::UnboundedReceiver<String>> {
    if !state.is_ready() {
        bail!("the daemon is not ready (still starting, or its self-test failed); see its log");
    }
    if let Some((index, _)) = state.label_by_name(label)
        && let Some(r) = counters.revocations.get(index)
    {
        bail!(
            "label {label:?} is revoked ({}: {}); `actgate restore {label}` first",
            r.trigger,
            r.reason
        );
    }
    let events = hub.open(label)?;
    if let Err(e) = hub.change(Change::Start(label.to_owned())).await {
        hub.close(label);
        return Err(e.context(format!("putting label {label:?} under the learning policy")));
    }
    info!(
        label,
        "learning: the label runs under an allow-everything audit policy"
    );
    Ok(events)
}

/// Serves one `actgate learn` client: `Reply::Learning`, then a `Reply::Event` per event of
/// the label, until the client sends a line or goes away; then the rest of the events and
/// `Reply::Learnt`.
pub async fn session(
    label: String,
    mut from: BufReader<OwnedReadHalf>,
    mut to: OwnedWriteHalf,
    state: Arc<State>,
    counters: Arc<Counters>,
    hub: Arc<Hub>,
) {
    let dropped_before = dropped(&counters);
    let mut events = match start(&label, &state, &counters, &hub).await {
        Ok(events) => events,
        Err(e) => {
            let _ = send(&mut to, &Reply::Error(format!("{e:#}"))).await;
            return;
        }
    };
    let cgroup = state.root.label_dir(&label);
    let mut client = send(&mut to, &Reply::Learning { cgroup }).await.is_ok();
    let mut line = String::new();
    while client {
        tokio::select! {
            // A line (the client's end) or the connection's end.
            _ = from.read_line(&mut line) => break,
            Some(text) = events.recv() => client = send(&mut to, &event(&text)).await.is_ok(),
        }
    }
    // The workload's actions are all in the kernel's ring buffer by now: drain it.
    hub.flush().await;
    hub.close(&label);
    while let Ok(text) = events.try_recv() {
        if client {
            client = send(&mut to, &event(&text)).await.is_ok();
        }
    }
    let dropped = dropped(&counters) - dropped_before;
    let reply = match hub.change(Change::Stop(label.clone())).await {
        Ok(()) => {
            info!(
                label,
                dropped, "learning ended: the label's own policy is in force"
            );
            Reply::Learnt { dropped }
        }
        Err(e) => Reply::Error(format!("{:#}", revoke(&label, &state, &counters, e))),
    };
    if client {
        let _ = send(&mut to, &reply).await;
    }
}

fn event(text: &str) -> Reply {
    match serde_json::from_str(text) {
        Ok(value) => Reply::Event(value),
        Err(e) => Reply::Error(format!("an event line is not JSON: {e}")),
    }
}

/// The learning policy could not be taken away: the label would stay allowed everything, so
/// it is revoked instead until an operator looks.
fn revoke(label: &str, state: &State, counters: &Counters, why: anyhow::Error) -> anyhow::Error {
    let why = why.context(format!(
        "ending the learning of label {label:?}: its own policy could not be put back"
    ));
    error!("{why:#}; revoking the label");
    let revoked = state
        .label_by_name(label)
        .context("the label is gone")
        .and_then(|(index, _)| {
            counters
                .revocations
                .revoke(index, "learning could not end (see the daemon's log)")
        });
    match revoked {
        Ok(_) => why.context(format!(
            "label {label:?} is revoked until `actgate restore`"
        )),
        Err(e) => {
            warn!("revoking label {label:?} failed too: {e:#}");
            why
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> PolicySet {
        let (policies, problems) = agent_policy::parse_str(Path::new("p.yaml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        PolicySet {
            policies,
            sites: Vec::new(),
        }
    }

    #[test]
    fn a_learnt_label_leaves_its_policy_for_the_learning_one() {
        let user =
            set("name: p\nlabels: [a, b]\nexec: {default: deny}\n---\nname: q\nlabels: [c]\n");
        let learning = BTreeSet::from(["a".to_owned(), "c".to_owned(), "new".to_owned()]);
        let out = with_learning(&user, &learning).unwrap();
        let names: Vec<(&str, &[String])> = out
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.labels.as_slice()))
            .collect();
        assert_eq!(
            names,
            [
                ("p", &["b".to_owned()][..]),
                ("learning.a", &["a".to_owned()][..]),
                ("learning.c", &["c".to_owned()][..]),
                ("learning.new", &["new".to_owned()][..]),
            ]
        );
        let learnt = &out.policies[1];
        assert_eq!(learnt.mode, agent_policy::Mode::Audit);
        assert_eq!(learnt.exec.default, agent_policy::Fallback::Allow);
        assert_eq!(learnt.connect.default, agent_policy::Fallback::Allow);
        // Every name is recorded, and guarded as an exact rule for it would be.
        for (name, guarded) in [("github.com", true), ("db.internal", false)] {
            let j = learnt.judge_name(name);
            assert!(!j.refused && j.allow == [None], "{name}: {j:?}");
            assert_eq!(j.guarded, guarded, "{name}");
        }
        assert_eq!(with_learning(&user, &BTreeSet::new()).unwrap(), user);
    }

    #[test]
    fn a_bad_label_is_refused_as_a_policy_would_be() {
        let err =
            with_learning(&PolicySet::default(), &BTreeSet::from(["a/b".to_owned()])).unwrap_err();
        assert!(format!("{err:#}").contains("cannot learn label"), "{err:#}");
    }
}
