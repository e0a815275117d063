//! `actgate learn`: the daemon puts the label under an allow-everything audit policy and
//! streams its events (`crate::learning`); this side starts the workload under the label,
//! waits for the end, and writes the policy the events call for (`observe` → `write`).

use std::{
    io::{BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime},
};

use agent_common::Action;
use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgGroup, Args};
use nix::{
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
    unistd::{Uid, User},
};

use super::{
    events,
    fold::STANDARD_TEMP_DIRS,
    observe::{Observations, Run},
    write::{LearnOptions, write_policy},
};
use crate::{
    cgroup, control,
    launch::{self, EXIT_REFUSED},
};

/// The options of `actgate learn`.
#[derive(Args)]
#[command(group(
    ArgGroup::new("end").required(true).multiple(true).args(["duration", "until_exit", "cmd"])
))]
pub struct Options {
    /// The label to learn: one a loaded policy names, or a new one.
    #[arg(long)]
    pub label: String,
    /// Run CMD as this user, as `actgate exec --user` does.
    #[arg(long)]
    pub user: Option<String>,
    /// Stop learning after this long (`90s`, `10m`); with CMD, when CMD exits if sooner.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "until_exit")]
    pub duration: Option<Duration>,
    /// Stop when CMD exits; without CMD, once processes have run under the label and none
    /// is left.
    #[arg(long)]
    pub until_exit: bool,
    /// Write the policy to FILE (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also keep the recorded events in FILE, as JSON lines like `actgate run --events`
    /// writes: `actgate diff --events FILE` replays them against an edited policy.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The command to learn and its arguments, run under the label in this directory.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// Exit status: CMD's own when it ran (the policy is written whatever it was), 0 without
/// CMD, 125 (`EXIT_REFUSED`) when nothing could be learnt.
pub fn command(opts: &Options) -> ExitCode {
    match learn(opts) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("actgate learn: nothing written: {e:#}");
            ExitCode::from(EXIT_REFUSED as u8)
        }
    }
}

fn learn(opts: &Options) -> Result<u8> {
    let mut run = facts(opts)?;
    let since = SystemTime::now();
    let stream = control::send(
        &opts.socket,
        &control::Request::Learn {
            label: opts.label.clone(),
        },
    )?;
    let mut replies = BufReader::new(stream.try_clone().context("the daemon's connection")?);
    let cgroup = match control::reply(&mut replies)? {
        control::Reply::Learning { cgroup } => cgroup,
        control::Reply::Error(e) => bail!("{e}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    eprintln!(
        "actgate learn: label {:?} runs under an allow-everything audit policy, recording",
        opts.label
    );
    let recorder = thread::spawn(move || record(replies));
    let ended = wait(opts, &cgroup);
    // Any line ends the session; the daemon then sends what is left, and the drop count.
    let _ = (&stream).write_all(b"end\n");
    let recorded = recorder
        .join()
        .map_err(|_| anyhow!("the thread reading the events panicked"))?;
    let status = ended?;
    let (lines, dropped) = recorded?;
    if let Some(path) = &opts.events {
        std::fs::write(path, &lines).with_context(|| format!("writing {}", path.display()))?;
    }
    run.dropped = dropped;
    let events = events::parse(Path::new("(the learning run)"), lines.as_bytes())?;
    run.created_dirs = created_since(&events, since);
    let mut obs = Observations::new(run);
    for event in &events {
        obs.record(event);
    }
    let policy = write_policy(&obs, &LearnOptions::new(&opts.label));
    let (_, problems) = agent_policy::parse_str(Path::new("(the learnt policy)"), &policy);
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(
            "the learnt policy does not read back (a bug of actgate's):\n{}\n{policy}",
            text.join("\n")
        );
    }
    let written = match &opts.out {
        Some(path) => {
            std::fs::write(path, &policy).with_context(|| format!("writing {}", path.display()))?;
            path.display().to_string()
        }
        None => {
            print!("{policy}");
            "stdout".to_owned()
        }
    };
    eprintln!(
        "actgate learn: {} events of label {:?}, {dropped} dropped; policy written to {written}",
        obs.events, opts.label
    );
    Ok(match status {
        Some(status) => {
            let code = exit_code(status);
            if code != 0 {
                eprintln!(
                    "actgate learn: the command failed ({status}): the policy holds what it did \
                     until then"
                );
            }
            code
        }
        None => 0,
    })
}

/// What the events don't say about the run: where it works, whose home it has, its temp
/// directories.
fn facts(opts: &Options) -> Result<Run> {
    let workdir = std::env::current_dir().context("the current directory")?;
    let user = if opts.cmd.is_empty() {
        opts.user.as_deref().map(launch::lookup).transpose()?
    } else {
        // As `actgate exec` will decide, and refuse: before anything is learnt.
        launch::identity(opts.user.as_deref())?
    };
    let user = match user {
        Some(user) => Some(user),
        None => User::from_uid(Uid::current()).context("reading the passwd database")?,
    };
    let mut temp_dirs: Vec<String> = STANDARD_TEMP_DIRS.iter().map(|d| d.to_string()).collect();
    if let Some(tmpdir) = std::env::var_os("TMPDIR") {
        let tmpdir = PathBuf::from(tmpdir);
        if tmpdir.is_absolute() {
            let tmpdir = tmpdir.canonicalize().unwrap_or(tmpdir);
            let tmpdir = tmpdir.display().to_string();
            if !temp_dirs.contains(&tmpdir) {
                temp_dirs.push(tmpdir);
            }
        }
    }
    Ok(Run {
        label: opts.label.clone(),
        workdir: workdir.display().to_string(),
        // System users have no home (`/nonexistent`): nothing of theirs to protect there.
        home: user
            .filter(|u| u.dir.is_dir())
            .map(|u| u.dir.display().to_string()),
        temp_dirs,
        ..Run::default()
    })
}

/// The event lines the daemon sends until it says learning ended, and how many events were
/// dropped meanwhile.
fn record(mut replies: BufReader<UnixStream>) -> Result<(String, u64)> {
    let mut lines = String::new();
    loop {
        match control::reply(&mut replies)? {
            control::Reply::Event(event) => {
                lines.push_str(&event.to_string());
                lines.push('\n');
            }
            control::Reply::Learnt { dropped } => return Ok((lines, dropped)),
            control::Reply::Error(e) => bail!("{e}"),
            other => bail!("unexpected reply from the daemon: {other:?}"),
        }
    }
}

/// Set by SIGINT: learning ends (CMD, in the same process group, gets it too).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs CMD under the label, if there is one, and returns when learning is to end: CMD exited
/// (its status), the duration passed, the label emptied (`--until-exit` without CMD) or
/// SIGINT came.
fn wait(opts: &Options, cgroup: &Path) -> Result<Option<ExitStatus>> {
    let handler = SigAction::new(
        SigHandler::Handler(interrupted),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic. A handler (unlike SIG_IGN) is reset
    // by exec, so CMD gets the default action.
    unsafe { sigaction(Signal::SIGINT, &handler) }.context("handling SIGINT")?;
    let mut child = (!opts.cmd.is_empty()).then(|| start(opts)).transpose()?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut seen_running = false;
    loop {
        if let Some(c) = child.as_mut()
            && let Some(status) = c.try_wait().context("waiting for the command")?
        {
            return Ok(Some(status));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || INTERRUPTED.load(Ordering::SeqCst) {
            if child.is_some() {
                eprintln!(
                    "actgate learn: learning ended while the command still runs; it is now \
                     judged by the label's own policy"
                );
            }
            return Ok(None);
        }
        if child.is_none() && opts.until_exit {
            let populated = cgroup::process_count(cgroup) > 0;
            if seen_running && !populated {
                return Ok(None);
            }
            seen_running |= populated;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// CMD under the label, started by `actgate exec` (this binary) with the same user rules.
fn start(opts: &Options) -> Result<Child> {
    let me = std::env::current_exe().context("finding actgate's own binary")?;
    let mut exec = Command::new(me);
    exec.arg("exec")
        .arg("--label")
        .arg(&opts.label)
        .arg("--socket")
        .arg(&opts.socket);
    if let Some(user) = &opts.user {
        exec.arg("--user").arg(user);
    }
    exec.arg("--").args(&opts.cmd);
    exec.spawn()
        .with_context(|| format!("starting {:?} under the label", opts.cmd[0]))
}

/// A shell's idea of an exit status: the code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

/// The directories the run wrote that were born after `since`: what is beneath one is the
/// workload's own (see `fold`). A file system that keeps no birth time says none.
fn created_since(
    events: &[events::Event],
    since: SystemTime,
) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .filter(|e| e.action == Action::FileWrite)
        .filter(|e| {
            std::fs::symlink_metadata(&e.target)
                .is_ok_and(|m| m.is_dir() && m.created().is_ok_and(|born| born >= since))
        })
        .map(|e| e.target.clone())
        .collect()
}
