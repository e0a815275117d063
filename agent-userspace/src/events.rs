//! Events: ring buffer records → one JSON line each, appended to `--events FILE` (or stdout).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use agent_common::{Action, Event, Reason, Verdict, maps};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};
use tracing::warn;

use crate::{learning::Hub, state::State};

/// One event as written to the events file.
#[derive(Debug, Serialize)]
pub struct EventLine {
    pub time: String,
    pub label: String,
    pub policy: String,
    pub action: &'static str,
    pub verdict: &'static str,
    /// What decided: "rule", "default", "budget", "revoked", "orphaned" or "unjudged".
    pub reason: &'static str,
    pub target: String,
    /// The host name a connect was judged by, when a name spoke for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub cgroup: String,
}

pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `ip:port` for connections (`[v6]:port`), the resolved path otherwise.
fn target(e: &Event) -> String {
    match e.family {
        4 => {
            let [a, b, c, d, ..] = e.addr;
            format!("{}:{}", Ipv4Addr::new(a, b, c, d), e.port)
        }
        6 => format!("[{}]:{}", Ipv6Addr::from(e.addr), e.port),
        _ => c_str(&e.path),
    }
}

/// The binary the kernel saw the process execute under its label. A process that came into the
/// label without an exec (moved into its cgroup from outside) is looked up in /proc instead,
/// which works while it still runs.
fn exe(e: &Event) -> String {
    if e.exe[0] != 0 {
        return c_str(&e.exe);
    }
    std::fs::read_link(format!("/proc/{}/exe", e.tgid))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC now: the clock of `bpf_ktime_get_ns`.
pub fn since_boot() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock time of CLOCK_MONOTONIC zero, to turn `bpf_ktime_get_ns` into RFC 3339.
pub fn boot_time() -> SystemTime {
    SystemTime::now() - since_boot()
}

/// The JSON line of an event, or None for the self-test's own label.
fn to_line(
    e: &Event,
    state: &State,
    boot: SystemTime,
    cgroups: &mut HashMap<u64, String>,
) -> Option<EventLine> {
    let label = state.label(e.label)?;
    let cgroup = match cgroups.get(&e.cgroup_id) {
        Some(path) => path.clone(),
        None => {
            let path = state.cgroup_path(e.cgroup_id).unwrap_or_default();
            if !path.is_empty() {
                cgroups.insert(e.cgroup_id, path.clone());
            }
            path
        }
    };
    Some(EventLine {
        time: humantime::format_rfc3339_nanos(boot + Duration::from_nanos(e.time_ns)).to_string(),
        label: label.name,
        policy: label.policy,
        action: Action::from_u8(e.action).map_or("unknown", Action::as_str),
        verdict: Verdict::from_u8(e.verdict).map_or("unknown", Verdict::as_str),
        reason: Reason::from_u8(e.reason).map_or("unknown", Reason::as_str),
        target: target(e),
        host: state.dns.host(e.host),
        pid: e.tgid,
        ppid: e.ppid,
        uid: e.uid,
        comm: c_str(&e.comm),
        exe: exe(e),
        cgroup,
    })
}

/// Where event lines go. A file is opened for append and written a whole line at a time; it is
/// reopened when moved away (log rotation) or when `reopen` is set (SIGHUP).
pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        reopen: Arc<AtomicBool>,
    },
}

fn open_append(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the events file {}", path.display()))
}

impl Sink {
    pub fn open(spec: &str, reopen: Arc<AtomicBool>) -> Result<Self> {
        if spec == "-" {
            return Ok(Sink::Stdout);
        }
        let path = PathBuf::from(spec);
        Ok(Sink::File {
            file: open_append(&path)?,
            path,
            reopen,
        })
    }

    /// Reopens the file if it was moved away (log rotation) or SIGHUP asked for it. Called
    /// once per batch of events rather than per line: lines written meanwhile land in the
    /// moved file, which is where a rotation expects them.
    pub fn follow_rotation(&mut self) -> io::Result<()> {
        let Sink::File { path, file, reopen } = self else {
            return Ok(());
        };
        let asked = reopen.swap(false, Ordering::SeqCst);
        let moved = match (std::fs::metadata(&*path), file.metadata()) {
            (Ok(on_disk), Ok(open)) => on_disk.ino() != open.ino() || on_disk.dev() != open.dev(),
            _ => true,
        };
        if asked || moved {
            *file = open_append(path).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Appends one line with a single write, so a reader never sees half of it.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(text.as_bytes()),
        }
    }
}

/// Turns records into lines and hands them out: to the events file, and to a session
/// learning the label (`learning`).
struct Drain {
    state: Arc<State>,
    sink: Option<Sink>,
    hub: Arc<Hub>,
    boot: SystemTime,
    /// Cgroup id → path; cgroups are few and long-lived.
    cgroups: HashMap<u64, String>,
}

impl Drain {
    /// Hands out every record the ring buffer holds.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        if let Some(sink) = self.sink.as_mut()
            && let Err(err) = sink.follow_rotation()
        {
            warn!(error = %err, "reopening the events file failed");
        }
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event`; read_unaligned copes with the ring
            // buffer's 8-byte alignment of records.
            let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            drop(item);
            if self.sink.is_none() && !self.hub.tapped() {
                continue;
            }
            let Some(line) = to_line(&e, &self.state, self.boot, &mut self.cgroups) else {
                continue;
            };
            let text = match serde_json::to_string(&line) {
                Ok(text) => text,
                Err(err) => {
                    warn!(error = %err, "encoding an event failed");
                    continue;
                }
            };
            if let Some(sink) = self.sink.as_mut()
                && let Err(err) = sink.write_line(&text)
            {
                warn!(error = %err, "writing an event failed");
            }
            self.hub.tap(&line.label, &text);
        }
    }
}

/// Drains the ring buffer for as long as the daemon runs, and at once when a learning
/// session asks (`flushes`).
pub fn spawn(
    ebpf: &mut Ebpf,
    state: Arc<State>,
    sink: Option<Sink>,
    hub: Arc<Hub>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) -> Result<()> {
    let map = ebpf
        .take_map(maps::EVENTS)
        .with_context(|| format!("map {} is missing from the eBPF object", maps::EVENTS))?;
    let ring = RingBuf::<MapData>::try_from(map)
        .with_context(|| format!("map {} is not a ring buffer", maps::EVENTS))?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as
    // the AsyncFd that owns the ring buffer lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the EVENTS ring buffer: {e}"))?;
    let mut drain = Drain {
        state,
        sink,
        hub,
        boot: boot_time(),
        cgroups: HashMap::new(),
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                readable = fd.readable_mut() => {
                    let Ok(mut guard) = readable else {
                        warn!("the events ring buffer can no longer be read");
                        return;
                    };
                    drain.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                Some(done) = flushes.recv() => {
                    drain.drain(fd.get_mut());
                    let _ = done.send(());
                }
            }
        }
    });
    Ok(())
}
