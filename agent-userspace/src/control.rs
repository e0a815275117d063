//! The daemon's root-only Unix socket: `actgate exec` asks it whether a label is enforced,
//! `actgate status` asks for the state, `actgate revoke` and `restore` act on a label. One JSON
//! request line, one JSON response line; `actgate learn` keeps its connection for the events of
//! its label (see `learning`).
//! Labelled processes are refused whatever their uid: a root agent must not move itself into
//! another label, nor learn what is enforced.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream as AsyncUnixStream},
    sync::mpsc,
};
use tracing::warn;

use crate::{
    cgroup,
    counters::Counters,
    learning::{self, Hub},
    revocation::Revoked,
    state::State,
    status,
};

pub const DEFAULT_SOCKET: &str = "/run/actgate/actgate.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is `label` enforced right now, and where is its cgroup?
    Label {
        label: String,
    },
    Status,
    /// Remove everything actgate loaded and exit; refused while labelled processes run,
    /// unless `force`.
    Unload {
        force: bool,
    },
    /// Deny every action of the label's processes; with `kill`, end them too.
    Revoke {
        label: String,
        reason: String,
        kill: bool,
    },
    /// Lift the label's revocation.
    Restore {
        label: String,
    },
    /// Learn the label: `Reply::Learning`, then its events as `Reply::Event`, until the
    /// client sends a line; then `Reply::Learnt` (see `learning`).
    Learn {
        label: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LabelReply {
    pub cgroup: PathBuf,
    pub policy: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Label(LabelReply),
    Status(status::Status),
    /// The daemon removes the pins and exits.
    Unloading,
    /// The label is revoked; `already` is the revocation that was in force before, if any.
    Revoked {
        already: Option<Revoked>,
        /// Processes `cgroup.kill` ended (`kill`).
        killed: usize,
    },
    /// Whether the label was revoked before.
    Restored {
        was_revoked: bool,
    },
    /// The label runs under the learning policy; `cgroup` is its directory.
    Learning {
        cgroup: PathBuf,
    },
    /// One event of the label being learnt, as the events file has it.
    Event(serde_json::Value),
    /// Learning ended and the label's own policy is back; `dropped` events of any label were
    /// lost meanwhile (a full ring buffer).
    Learnt {
        dropped: u64,
    },
    Error(String),
}

/// Why a client may not use the socket: it runs under a label. `None` for everyone else.
///
/// The remaining race: SO_PEERCRED names the process that called connect(2), and its cgroup
/// is read afterwards from /proc/PID/cgroup. If that process exits and its pid goes to an
/// unlabelled process in between, the newcomer is judged instead, and whichever labelled
/// process still holds the connection (a child that inherited it) is served. Closing it needs
/// a pidfd of the peer (SO_PEERPIDFD, Linux 6.5; 6.1 lacks it). A connection an unlabelled
/// process hands to a labelled one is served too, but only root outside every label can do
/// that.
fn labelled_peer(stream: &AsyncUnixStream, state: &State) -> Option<String> {
    let pid = match stream.peer_cred().map(|c| c.pid()) {
        Ok(Some(pid)) if pid > 0 => pid,
        // Whoever can't be placed is not served.
        _ => return Some("a client whose pid the kernel does not give (SO_PEERCRED)".into()),
    };
    let refused = match cgroup::path_of(&pid.to_string()) {
        Ok(path) => state
            .label_of(&path)
            .map(|label| format!("process {pid} under label {label:?}")),
        Err(e) => Some(format!("process {pid}, whose cgroup is unknown ({e:#})")),
    };
    if let Some(who) = &refused {
        warn!("refused the control socket to {who}: labelled processes may not use it");
    }
    refused
}

fn answer(req: Request, state: &State, counters: &Counters, unload: &mpsc::Sender<()>) -> Reply {
    match req {
        Request::Label { label } => {
            if !state.is_ready() {
                return Reply::Error(
                    "the daemon is not ready (still starting, or its self-test failed); see its log"
                        .into(),
                );
            }
            match state.label_by_name(&label) {
                Some((_, l)) if l.orphaned => Reply::Error(format!(
                    "label {label:?} is orphaned: no policy names it any more and the kernel \
                     denies everything its remaining processes do; add it to a policy's `labels` \
                     and reload"
                )),
                Some((index, _)) if let Some(r) = counters.revocations.get(index) => {
                    Reply::Error(format!(
                        "label {label:?} is revoked ({} since {}: {}); the kernel denies \
                         everything its processes do until `actgate restore {label}`",
                        r.trigger, r.since, r.reason
                    ))
                }
                Some((_, l)) => Reply::Label(LabelReply {
                    cgroup: state.root.label_dir(&l.name),
                    policy: l.policy,
                }),
                None => unknown(&label),
            }
        }
        Request::Revoke {
            label,
            reason,
            kill,
        } => match state.label_by_name(&label) {
            Some((index, _)) => revoke(state, counters, &label, index, &reason, kill),
            None => unknown(&label),
        },
        Request::Restore { label } => match state.label_by_name(&label) {
            Some((index, _)) => match counters.revocations.restore(index) {
                Ok(was_revoked) => Reply::Restored { was_revoked },
                Err(e) => Reply::Error(format!("{e:#}")),
            },
            None => unknown(&label),
        },
        Request::Status => Reply::Status(status::collect(state, counters)),
        // Served by `learning::session`, which keeps the connection.
        Request::Learn { .. } => Reply::Error("a learning session is served apart".into()),
        Request::Unload { force } => {
            let bound: Vec<_> = state
                .bound()
                .into_iter()
                .map(|b| state.root.mount.join(b.path))
                .collect();
            match crate::unload::refuse_while_labelled(&state.root, &bound, force) {
                Err(e) => Reply::Error(format!("{e:#}")),
                // A full channel means an unload is under way already.
                Ok(()) => match unload.try_send(()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Reply::Unloading,
                    Err(e) => Reply::Error(format!("the daemon is stopping already: {e}")),
                },
            }
        }
    }
}

fn unknown(label: &str) -> Reply {
    Reply::Error(format!(
        "no loaded policy names label {label:?}; add it to a policy's `labels` and reload"
    ))
}

/// Revokes the label: once the kernel map holds it, which is before the reply, no action of
/// its processes passes. `kill` then ends them with `cgroup.kill`.
fn revoke(
    state: &State,
    counters: &Counters,
    label: &str,
    index: u32,
    reason: &str,
    kill: bool,
) -> Reply {
    let already = match counters.revocations.revoke(index, reason) {
        Ok(already) => already,
        Err(e) => return Reply::Error(format!("{e:#}")),
    };
    warn!(
        label,
        reason, "label revoked: the kernel denies every action of its processes"
    );
    let mut killed = 0;
    if kill {
        for dir in state.label_dirs(label) {
            match cgroup::kill(&dir) {
                Ok(n) => killed += n,
                Err(e) => {
                    return Reply::Error(format!(
                        "label {label:?} is revoked, but its processes were not ended: {e:#}"
                    ));
                }
            }
        }
    }
    Reply::Revoked { already, killed }
}

/// Creates the socket (mode 0600 in a 0700 directory) and serves it in the background.
/// `unload` tells the daemon to unload and exit.
pub fn serve(
    path: &Path,
    state: Arc<State>,
    counters: Arc<Counters>,
    unload: mpsc::Sender<()>,
    hub: Arc<Hub>,
) -> Result<()> {
    if UnixStream::connect(path).is_ok() {
        bail!(
            "another actgate daemon is listening on {}; stop it first or pass another --socket",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
    }
    let _ = fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (state, counters, unload) = (state.clone(), counters.clone(), unload.clone());
            let hub = hub.clone();
            tokio::spawn(async move {
                // Judged before anything is read, while the peer's pid is most likely its own.
                let refused = labelled_peer(&stream, &state);
                let (read, mut write) = stream.into_split();
                let mut read = AsyncBufReader::new(read);
                let mut line = String::new();
                if read.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match (refused, serde_json::from_str::<Request>(&line)) {
                    (Some(who), _) => Reply::Error(format!(
                        "actgate's control socket does not serve labelled processes ({who}); \
                         run actgate commands from outside every label"
                    )),
                    (None, Ok(Request::Learn { label })) => {
                        learning::session(label, read, write, state, counters, hub).await;
                        return;
                    }
                    (None, Ok(req)) => {
                        tokio::task::spawn_blocking(move || answer(req, &state, &counters, &unload))
                            .await
                            .unwrap_or_else(|e| Reply::Error(e.to_string()))
                    }
                    (None, Err(e)) => Reply::Error(format!("bad request: {e}")),
                };
                if let Ok(mut text) = serde_json::to_string(&reply) {
                    text.push('\n');
                    let _ = write.write_all(text.as_bytes()).await;
                }
            });
        }
    });
    Ok(())
}

/// Connects to the daemon and sends `req` (blocking; used by the CLI commands).
pub fn send(path: &Path, req: &Request) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "no actgate daemon is reachable at {}; start it with `actgate run --policies DIR` \
             (or pass its --socket)",
            path.display()
        )
    })?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    Ok(stream)
}

/// Reads one reply line.
pub fn reply(from: &mut impl BufRead) -> Result<Reply> {
    let mut line = String::new();
    match from.read_line(&mut line) {
        Ok(0) => bail!("the daemon closed the connection"),
        Ok(_) => {
            serde_json::from_str(&line).map_err(|e| anyhow!("the daemon's reply is not valid: {e}"))
        }
        Err(e) => Err(anyhow!(e).context("reading the daemon's reply")),
    }
}

/// Sends one request to the daemon and reads its reply (blocking).
pub fn request(path: &Path, req: &Request) -> Result<Reply> {
    let stream = send(path, req)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    reply(&mut BufReader::new(stream))
}
